//! Policy test cases as data: tools, grants and calls with the decision expected of a pack.
//! `tollgate policy test` runs them; so does each pack's test in CI. A file is TOML:
//!
//! ```toml
//! now = "2026-11-27T10:00:00Z"          # optional; the default for every case
//!
//! [[tool]]
//! name = "fs.read_text_file"
//! upstream = "fs"
//! root = "/srv/app"
//! input_schema = { type = "object", properties = { path = { type = "string" } } }
//!
//! [grant.reader]
//! purpose = "maintenance"
//! actions = ["read"]
//! tools = ["fs.*"]
//! resources = ["path:/srv/app/**"]
//!
//! [[case]]
//! name = "a read inside the grant is allowed"
//! tool = "fs.read_text_file"
//! grant = "reader"
//! arguments = { path = "/srv/app/README.md" }
//! expect = "allow"
//! policies = ["read-within-grant"]
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    args::SchemaCache,
    catalog::ActionClass,
    decide::{CallInput, Effect, Environment, SessionFacts, SessionStats},
    grant::{Constraint, Grant, Limit, Usage},
    pack::{CLASSES, Pack},
    pattern::ResourcePattern,
    recorded::ToolRecord,
    tool::ToolFacts,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    now: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default, rename = "tool")]
    tools: Vec<ToolSpec>,
    #[serde(default, rename = "grant")]
    grants: BTreeMap<String, GrantSpec>,
    #[serde(rename = "case")]
    cases: Vec<CaseSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolSpec {
    name: String,
    #[serde(default = "default_upstream")]
    upstream: String,
    #[serde(default)]
    root: Option<String>,
    #[serde(default)]
    read_only: Option<bool>,
    #[serde(default)]
    destructive: Option<bool>,
    #[serde(default)]
    open_world: Option<bool>,
    #[serde(default)]
    input_schema: Option<Map<String, Value>>,
}

fn pinned_by_default() -> bool {
    true
}

fn default_upstream() -> String {
    "upstream".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantSpec {
    #[serde(default)]
    id: Option<String>,
    purpose: String,
    #[serde(default)]
    task: String,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    resources: BTreeSet<ResourcePattern>,
    #[serde(default)]
    approve: BTreeSet<ResourcePattern>,
    actions: BTreeSet<ActionClass>,
    #[serde(default = "all_tools")]
    tools: BTreeSet<String>,
    #[serde(default)]
    constraints: Vec<Constraint>,
    #[serde(default)]
    limits: Vec<Limit>,
    #[serde(default)]
    chain: Vec<String>,
    /// Seconds from the case's `now`; negative for a grant that has expired.
    #[serde(default = "default_expires_in")]
    expires_in: i64,
}

fn all_tools() -> BTreeSet<String> {
    BTreeSet::from(["*".to_owned()])
}

fn default_expires_in() -> i64 {
    3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: String,
    tool: String,
    #[serde(default)]
    grant: Option<String>,
    #[serde(default)]
    arguments: Option<Map<String, Value>>,
    #[serde(default)]
    justification: Option<String>,
    #[serde(default)]
    now: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    transport: Option<String>,
    #[serde(default)]
    stats: StatsSpec,
    #[serde(default)]
    taint: Vec<String>,
    /// The tool's definition matches its pin (default: true, as after `tollgate pin`).
    #[serde(default = "pinned_by_default")]
    pinned: bool,
    /// `(scope, key) = amount` as `"g-…/budget:*:amount" = 450`.
    #[serde(default)]
    usage: BTreeMap<String, f64>,
    /// Results the session received before this call, oldest first: where the call's values
    /// came from is decided on them as the guard would.
    #[serde(default)]
    history: Vec<PriorResult>,
    expect: Effect,
    #[serde(default)]
    policies: Option<Vec<String>>,
    #[serde(default)]
    reason_contains: Option<String>,
}

/// One result a case's session received: from `tool` (declared in the file), its
/// `structuredContent` and/or its text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriorResult {
    tool: String,
    #[serde(default)]
    structured: Option<Value>,
    #[serde(default)]
    text: Option<String>,
    /// When it came (RFC 3339); the case's `now` by default.
    #[serde(default)]
    at: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsSpec {
    #[serde(default)]
    calls: u64,
    #[serde(default)]
    calls_last_minute: u64,
    #[serde(default)]
    denials: u64,
    #[serde(default)]
    denials_last_minute: u64,
    #[serde(default)]
    calls_last_10s: u64,
    #[serde(default)]
    per_minute: u64,
    #[serde(default)]
    by_class: BTreeMap<ActionClass, u64>,
}

/// One case's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    /// `None` when it passed; what differed otherwise.
    pub failure: Option<String>,
}

/// Runs every case of one file against `pack`. A file that cannot be read as cases is an
/// error, not a pass.
pub fn run_file(pack: &Pack, text: &str) -> Result<Vec<CaseResult>, String> {
    let (file, tools, default_now) = read_file(text)?;
    let mut results = Vec::new();
    for case in &file.cases {
        let failure = run_case(pack, &file, &tools, case, default_now).err();
        results.push(CaseResult {
            name: case.name.clone(),
            failure,
        });
    }
    Ok(results)
}

/// The decision on case `name` of a cases file, with how each policy that could apply went:
/// what `tollgate policy explain` prints.
pub fn explain_case(
    pack: &Pack,
    text: &str,
    name: &str,
) -> Result<crate::decide::Explanation, String> {
    let (file, tools, default_now) = read_file(text)?;
    let case = file.cases.iter().find(|c| c.name == name).ok_or_else(|| {
        format!(
            "no case named {name:?}; the file has: {}",
            file.cases
                .iter()
                .map(|c| format!("{:?}", c.name))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    with_input(pack, &file, &tools, case, default_now, |call| {
        pack.explain(call)
    })
}

/// A parsed cases file, its tools compiled, and its default time.
fn read_file(text: &str) -> Result<(CaseFile, BTreeMap<String, ToolFacts>, i64), String> {
    let file: CaseFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let default_now = match &file.now {
        Some(t) => parse_time(t)?,
        None => 1_795_773_600, // 2026-11-27T10:00:00Z, a Friday morning
    };
    let schemas = SchemaCache::default();
    let mut tools = BTreeMap::new();
    for spec in &file.tools {
        let schema = spec.input_schema.clone().unwrap_or_else(|| {
            let mut open = Map::new();
            open.insert("type".to_owned(), Value::String("object".to_owned()));
            open
        });
        let facts = ToolRecord {
            name: spec.name.clone(),
            upstream: spec.upstream.clone(),
            root: spec.root.clone(),
            read_only: spec.read_only,
            destructive: spec.destructive,
            open_world: spec.open_world,
            input_schema: schema,
        }
        .facts(&schemas);
        tools.insert(spec.name.clone(), facts);
    }
    Ok((file, tools, default_now))
}

fn run_case(
    pack: &Pack,
    file: &CaseFile,
    tools: &BTreeMap<String, ToolFacts>,
    case: &CaseSpec,
    default_now: i64,
) -> Result<(), String> {
    let decision = with_input(pack, file, tools, case, default_now, |call| {
        pack.decide(call)
    })?;
    let mut problems = Vec::new();
    if decision.effect != case.expect {
        problems.push(format!(
            "expected {}, got {} ({})",
            case.expect.as_str(),
            decision.effect.as_str(),
            decision.reason_text()
        ));
    }
    if let Some(expected) = &case.policies
        && *expected != decision.policies
    {
        problems.push(format!(
            "expected determining policies {expected:?}, got {:?}",
            decision.policies
        ));
    }
    if let Some(needle) = &case.reason_contains
        && !decision.reason_text().contains(needle.as_str())
    {
        problems.push(format!(
            "expected a reason containing {needle:?}, got {:?}",
            decision.reason_text()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Builds the call `case` describes and hands it to `judge`.
fn with_input<T>(
    pack: &Pack,
    file: &CaseFile,
    tools: &BTreeMap<String, ToolFacts>,
    case: &CaseSpec,
    default_now: i64,
    judge: impl FnOnce(&CallInput<'_>) -> T,
) -> Result<T, String> {
    let now = match &case.now {
        Some(t) => parse_time(t)?,
        None => default_now,
    };
    let tool = tools
        .get(&case.tool)
        .ok_or_else(|| format!("tool `{}` is not declared in this file", case.tool))?;
    let grant = match &case.grant {
        None => None,
        Some(name) => {
            let spec = file
                .grants
                .get(name)
                .ok_or_else(|| format!("grant `{name}` is not declared in this file"))?;
            Some(make_grant(name, spec, now))
        }
    };
    let env = Environment {
        label: case
            .environment
            .clone()
            .or_else(|| file.environment.clone())
            .unwrap_or_else(|| "dev".to_owned()),
        ..Environment::default()
    };
    let session = SessionFacts {
        id: "case".to_owned(),
        transport: case.transport.clone().unwrap_or_else(|| "stdio".to_owned()),
        address: String::new(),
    };
    let mut by_class = [0u64; 8];
    for (slot, class) in by_class.iter_mut().zip(CLASSES) {
        *slot = case.stats.by_class.get(&class).copied().unwrap_or(0);
    }
    let stats = SessionStats {
        calls: case.stats.calls,
        calls_last_minute: case.stats.calls_last_minute,
        denials: case.stats.denials,
        denials_last_minute: case.stats.denials_last_minute,
        calls_last_10s: case.stats.calls_last_10s,
        per_minute: case.stats.per_minute,
        by_class,
    };
    let mut usage = Usage::new();
    for (key, amount) in &case.usage {
        let (scope, key) = key
            .split_once('/')
            .ok_or_else(|| format!("usage key `{key}`: expected `<grant id>/<limit key>`"))?;
        usage.insert((scope.to_owned(), key.to_owned()), *amount);
    }
    // Where the arguments came from: the history's results and what the grant names.
    let provenance = {
        let mut index = crate::provenance::Index::default();
        for prior in &case.history {
            let from = tools.get(&prior.tool).ok_or_else(|| {
                format!(
                    "history: tool `{}` is not declared in this file",
                    prior.tool
                )
            })?;
            let at = match &prior.at {
                Some(t) => parse_time(t)?,
                None => now,
            };
            let mut result = Map::new();
            if let Some(structured) = &prior.structured {
                result.insert("structuredContent".into(), structured.clone());
            }
            let text = prior
                .text
                .clone()
                .or_else(|| prior.structured.as_ref().map(Value::to_string))
                .unwrap_or_default();
            result.insert(
                "content".into(),
                serde_json::json!([{"type": "text", "text": text}]),
            );
            let (output, labels) = pack.output_of(from);
            index.add(&crate::provenance::observe(
                &Value::Object(result),
                from.name(),
                &output,
                &labels,
                at,
            ));
        }
        let intent = crate::provenance::Intent::of(grant.as_ref());
        let probes = crate::provenance::Probes::of(case.arguments.as_ref()).naming(&intent);
        let seen = index.look_up(&probes.keys);
        Some(crate::provenance::Provenance::of(
            &probes,
            &seen,
            &intent,
            index.complete(),
        ))
    };
    Ok(judge(&CallInput {
        session: &session,
        grant: grant.as_ref(),
        tool,
        arguments: case.arguments.as_ref(),
        justification: case.justification.as_deref(),
        now,
        env: &env,
        stats: &stats,
        usage: &usage,
        taint: &case.taint,
        pinned: case.pinned,
        paths: None,
        provenance: provenance.as_ref(),
    }))
}

fn make_grant(name: &str, spec: &GrantSpec, now: i64) -> Grant {
    let id = spec.id.clone().unwrap_or_else(|| {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("g-{:0<16}", hex.chars().take(24).collect::<String>())
    });
    Grant {
        id,
        iss: "tollgate".to_owned(),
        iat: now - 60,
        exp: now + spec.expires_in,
        chain: spec.chain.clone(),
        purpose: spec.purpose.clone(),
        task: spec.task.clone(),
        agent: spec.agent.clone(),
        user: spec.user.clone(),
        resources: spec.resources.clone(),
        approve: spec.approve.clone(),
        actions: spec.actions.clone(),
        tools: spec.tools.clone(),
        constraints: spec.constraints.clone(),
        limits: spec.limits.clone(),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` to Unix seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let bad = || format!("a time such as `2026-11-27T10:00:00Z`, not `{text}`");
    let t = text.strip_suffix('Z').ok_or_else(bad)?;
    let (date, clock) = t.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let c: Vec<i64> = clock
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), c.as_slice()) else {
        return Err(bad());
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *hh > 23 || *mm > 59 || *ss > 60 {
        return Err(bad());
    }
    // Days from civil, the inverse of the clock module's conversion.
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_time("2026-11-27T23:56:15Z").unwrap(), 1_795_823_775);
        assert_eq!(parse_time("2026-11-27T10:00:00Z").unwrap(), 1_795_773_600);
        assert!(parse_time("2026-13-01T00:00:00Z").is_err());
        assert!(parse_time("yesterday").is_err());
    }
}

/// What one purpose gets for one tool's example call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReviewCell {
    pub purpose: String,
    pub decision: Effect,
    pub policies: Vec<String>,
    pub reasons: Vec<String>,
}

/// One tool of a pack's cases, as a reviewer reads it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolReview {
    pub tool: String,
    pub upstream: String,
    pub class: ActionClass,
    pub risk: String,
    /// The case whose call stands for the tool, and its arguments.
    pub example: String,
    pub arguments: Value,
    /// The resources the example call binds.
    pub resources: Vec<String>,
    /// One per purpose of the pack, in its order.
    pub cells: Vec<ReviewCell>,
    /// The policies whose scope can match the tool and its class: `(id, effect, reason)`.
    pub policies: Vec<(String, String, Option<String>)>,
}

/// For every tool the cases files in `files` declare and call: what a session of each of the
/// pack's purposes gets for the tool's first case's call, with a grant that allows the tool's
/// class and the resources the call binds (so what decides is the pack, not a narrow grant),
/// no history and no taint.
pub fn review(pack: &Pack, files: &[(String, String)]) -> Result<Vec<ToolReview>, String> {
    let mut reviews: Vec<ToolReview> = Vec::new();
    for (name, text) in files {
        let (file, tools, default_now) = read_file(text).map_err(|e| format!("{name}: {e}"))?;
        for spec in &file.tools {
            if reviews.iter().any(|r| r.tool == spec.name) {
                continue;
            }
            let Some(case) = file.cases.iter().find(|c| c.tool == spec.name) else {
                continue;
            };
            let Some(tool) = tools.get(&spec.name) else {
                continue;
            };
            // The example call, to learn the class and the resources it binds.
            let decide_as = |purpose: &str, resources: &BTreeSet<ResourcePattern>| {
                let probe = CaseSpec {
                    grant: Some("reviewer".to_owned()),
                    ..case.clone()
                };
                let grants = BTreeMap::from([(
                    "reviewer".to_owned(),
                    GrantSpec {
                        id: Some("g-review".to_owned()),
                        purpose: purpose.to_owned(),
                        task: String::new(),
                        agent: None,
                        user: None,
                        resources: resources.clone(),
                        approve: BTreeSet::new(),
                        actions: CLASSES.into_iter().collect(),
                        tools: all_tools(),
                        constraints: Vec::new(),
                        limits: Vec::new(),
                        chain: Vec::new(),
                        expires_in: default_expires_in(),
                    },
                )]);
                let reviewing = CaseFile {
                    now: file.now.clone(),
                    environment: file.environment.clone(),
                    tools: Vec::new(),
                    grants,
                    cases: Vec::new(),
                };
                with_input(pack, &reviewing, &tools, &probe, default_now, |call| {
                    pack.explain(call)
                })
            };
            let first_purpose = pack.purposes().iter().next().cloned().unwrap_or_default();
            let bound =
                decide_as(&first_purpose, &BTreeSet::new()).map_err(|e| format!("{name}: {e}"))?;
            let resources: BTreeSet<ResourcePattern> = bound
                .decision
                .resources
                .iter()
                .filter_map(|r| r.to_string().parse().ok())
                .collect();
            let mut cells = Vec::new();
            let mut policies = Vec::new();
            for purpose in pack.purposes() {
                let explained =
                    decide_as(purpose, &resources).map_err(|e| format!("{name}: {e}"))?;
                if policies.is_empty() {
                    policies = explained
                        .considered
                        .iter()
                        .map(|p| {
                            let effect = match (p.permit, p.needs_approval) {
                                (true, true) => "permit, needs approval",
                                (true, false) => "permit",
                                (false, _) => "forbid",
                            };
                            (p.id.clone(), effect.to_owned(), p.reason.clone())
                        })
                        .collect();
                }
                cells.push(ReviewCell {
                    purpose: purpose.clone(),
                    decision: explained.decision.effect,
                    policies: explained.decision.policies,
                    reasons: explained.decision.reasons,
                });
            }
            reviews.push(ToolReview {
                tool: spec.name.clone(),
                upstream: tool.upstream().to_owned(),
                class: bound.class,
                risk: bound.decision.risk.as_str().to_owned(),
                example: case.name.clone(),
                arguments: case.arguments.clone().map_or(Value::Null, Value::Object),
                resources: bound
                    .decision
                    .resources
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                cells,
                policies,
            });
        }
    }
    Ok(reviews)
}
