//! Grants: what one session may do, stated once by whoever starts the task and signed
//! elsewhere (the mint holds the key). Here a grant is plain data: its claims, the check of
//! one call against them, and narrowing into a child that can do no more than its parent.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod constraint;

pub use constraint::{Constraint, ConstraintSyntax, Each, Problem, Rule};

use crate::{
    catalog::ActionClass,
    clock::utc_text,
    pattern::{ResourcePattern, glob_covers, glob_match},
    resource::Resource,
};

/// The claims of a grant token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `g-` and 24 hex digits.
    #[serde(rename = "jti")]
    pub id: String,
    /// Who signed it; always `tollgate`.
    pub iss: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// The ids of the grants this one was narrowed from, root first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// The intent's label, from the policy pack's vocabulary.
    pub purpose: String,
    /// The task in words, as the person or orchestrator that started it wrote it.
    #[serde(default)]
    pub task: String,
    /// The agent this grant is for, if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The user the agent acts for, if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The resources the task concerns.
    #[serde(default)]
    pub resources: BTreeSet<ResourcePattern>,
    /// Resources the task concerns whose calls wait for a person even where policy allows
    /// them; a resource both here and in `resources` waits.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub approve: BTreeSet<ResourcePattern>,
    /// The action classes allowed.
    pub actions: BTreeSet<ActionClass>,
    /// Globs over exposed tool names.
    pub tools: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
}

/// A count or a sum kept across every call of a grant and its children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// The grant whose calls (its own and its children's) count against this limit.
    pub scope: String,
    /// The tools it counts; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(flatten)]
    pub kind: LimitKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// At most this many allowed calls.
    MaxCalls(u64),
    /// The allowed calls' values of `argument` sum to at most `max_total`.
    Budget { argument: String, max_total: f64 },
}

impl Limit {
    /// The key its usage is kept under, together with its scope.
    pub fn key(&self) -> String {
        let tool = self.tool.as_deref().unwrap_or("*");
        match &self.kind {
            LimitKind::MaxCalls(_) => format!("calls:{tool}"),
            LimitKind::Budget { argument, .. } => format!("budget:{tool}:{argument}"),
        }
    }

    fn applies_to(&self, tool: &str) -> bool {
        self.tool.as_deref().is_none_or(|p| glob_match(p, tool))
    }
}

/// What an allowed call adds to a limit's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub scope: String,
    pub key: String,
    pub amount: f64,
}

/// Usage so far, by (scope, key). Kept by the proxy; the engine only reads it.
pub type Usage = BTreeMap<(String, String), f64>;

/// Why a call falls outside its grant. The text is what the agent reads.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrantDenial {
    #[error("grant {grant} expired at {at}")]
    Expired { grant: String, at: String },
    #[error("grant {grant} is not valid before {at}")]
    NotYetValid { grant: String, at: String },
    #[error("`{tool}` is not among the tools of grant {grant}")]
    Tool { tool: String, grant: String },
    #[error("`{class}` calls are not among the actions of grant {grant}")]
    Action { class: ActionClass, grant: String },
    #[error("{resource} is outside grant {grant}")]
    Resource { resource: String, grant: String },
    #[error("argument `{argument}` of `{tool}` {problem} (grant {grant})")]
    Constraint {
        tool: String,
        argument: String,
        problem: String,
        grant: String,
    },
    #[error("grant {grant} allows at most {max} calls{of}")]
    Calls { grant: String, max: u64, of: String },
    #[error("grant {grant} allows `{argument}` to total at most {max_total}{of}; {spent} is spent")]
    Budget {
        grant: String,
        argument: String,
        max_total: f64,
        spent: f64,
        of: String,
    },
}

/// What a call within its grant adds to the grant's limits, and which of the grant's resource
/// entries its resources fell under.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Admitted {
    pub charges: Vec<Charge>,
    pub matched: Matched,
}

/// Which of the grant's resource entries a call's resources fell under, and how: what Cedar
/// reads as `context.grant.matched`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matched {
    /// The entries that decided, as the grant writes them, sorted.
    pub entries: Vec<String>,
    /// The call touches resources and the grant names every one of them exactly.
    pub exact: bool,
    /// The entries among them that say `approve`: the call waits for a person.
    pub held: Vec<String>,
}

impl Matched {
    /// Some entry that decided says the call waits for a person.
    pub fn approve(&self) -> bool {
        !self.held.is_empty()
    }
}

/// The entries that take one resource.
struct EntryFit<'g> {
    /// The entries that decide, and whether each says `approve`.
    patterns: Vec<(&'g ResourcePattern, bool)>,
    exact: bool,
}

impl EntryFit<'_> {
    fn approve(&self) -> bool {
        self.patterns.iter().any(|(_, approve)| *approve)
    }
}

/// Does the host entry `pattern` take the URL `resource`? A URL is judged by its host, bound
/// from the same argument: grants name hosts.
fn takes_by_host(pattern: &ResourcePattern, resource: &Resource, all: &[Resource]) -> bool {
    resource.kind == "url"
        && all.iter().any(|r| {
            r.kind == "host"
                && pattern.matches(r)
                && url_host(&resource.value).is_some_and(|h| h == r.value)
        })
}

/// The parts of a call a grant judges.
#[derive(Debug, Clone, Copy)]
pub struct CallScope<'a> {
    pub tool: &'a str,
    pub class: ActionClass,
    pub resources: &'a [Resource],
    pub arguments: Option<&'a Map<String, Value>>,
    /// Where the call's values came from: what a `kind:from(…)` entry takes.
    pub provenance: Option<&'a crate::provenance::Provenance>,
}

impl Grant {
    /// A root grant (not narrowed from another) for `purpose` allowing `actions` on every tool,
    /// from `now` for `ttl_secs`, naming no resources, constraints or limits: the caller adds
    /// what the task needs.
    pub fn root(
        id: String,
        purpose: impl Into<String>,
        actions: impl IntoIterator<Item = ActionClass>,
        now: i64,
        ttl_secs: i64,
    ) -> Self {
        Self {
            id,
            iss: "tollgate".to_owned(),
            iat: now,
            exp: now.saturating_add(ttl_secs),
            chain: Vec::new(),
            purpose: purpose.into(),
            task: String::new(),
            agent: None,
            user: None,
            resources: BTreeSet::new(),
            approve: BTreeSet::new(),
            actions: actions.into_iter().collect(),
            tools: BTreeSet::from(["*".to_owned()]),
            constraints: Vec::new(),
            limits: Vec::new(),
        }
    }

    /// The grant is usable at `now`.
    pub fn check_time(&self, now: i64) -> Result<(), GrantDenial> {
        if now >= self.exp {
            return Err(GrantDenial::Expired {
                grant: self.id.clone(),
                at: utc_text(self.exp),
            });
        }
        // A minute of clock skew between the issuer and this host is tolerated.
        if now + 60 < self.iat {
            return Err(GrantDenial::NotYetValid {
                grant: self.id.clone(),
                at: utc_text(self.iat),
            });
        }
        Ok(())
    }

    /// May this session see and call `tool` of `class` at all, whatever its arguments?
    pub fn admits_tool(&self, tool: &str, class: ActionClass) -> Result<(), GrantDenial> {
        if !self.tools.iter().any(|p| glob_match(p, tool)) {
            return Err(GrantDenial::Tool {
                tool: tool.to_owned(),
                grant: self.id.clone(),
            });
        }
        if !self.actions.contains(&class) {
            return Err(GrantDenial::Action {
                class,
                grant: self.id.clone(),
            });
        }
        Ok(())
    }

    /// Checks one call against everything the grant says except its limits' usage, and
    /// returns what the call would add to the limits and which entries its resources fell
    /// under.
    pub fn admits(&self, call: &CallScope<'_>, now: i64) -> Result<Admitted, GrantDenial> {
        self.check_time(now)?;
        self.admits_tool(call.tool, call.class)?;
        let mut matched = Matched {
            exact: !call.resources.is_empty(),
            ..Matched::default()
        };
        for resource in call.resources {
            let Some(entry) = self.entry_for(resource, call.resources, call.provenance) else {
                return Err(GrantDenial::Resource {
                    resource: resource.to_string(),
                    grant: self.id.clone(),
                });
            };
            matched.exact &= entry.exact;
            for (pattern, approve) in entry.patterns {
                let text = pattern.to_string();
                if approve && let Err(at) = matched.held.binary_search(&text) {
                    matched.held.insert(at, text.clone());
                }
                if let Err(at) = matched.entries.binary_search(&text) {
                    matched.entries.insert(at, text);
                }
            }
        }
        for constraint in self
            .constraints
            .iter()
            .filter(|c| glob_match(&c.tool, call.tool))
        {
            if let Some(Problem { at, problem }) = constraint.problem(call.arguments) {
                return Err(GrantDenial::Constraint {
                    tool: call.tool.to_owned(),
                    argument: at,
                    problem,
                    grant: self.id.clone(),
                });
            }
        }
        let mut charges = Vec::new();
        for limit in self.limits.iter().filter(|l| l.applies_to(call.tool)) {
            let amount = match &limit.kind {
                LimitKind::MaxCalls(_) => 1.0,
                LimitKind::Budget { argument, .. } => {
                    match call
                        .arguments
                        .and_then(|a| a.get(argument))
                        .and_then(Value::as_f64)
                    {
                        Some(n) if n.is_finite() && n >= 0.0 => n,
                        _ => {
                            return Err(GrantDenial::Constraint {
                                tool: call.tool.to_owned(),
                                argument: argument.clone(),
                                problem:
                                    "must be a non-negative number: it counts against a budget"
                                        .to_owned(),
                                grant: self.id.clone(),
                            });
                        }
                    }
                }
            };
            charges.push(Charge {
                scope: limit.scope.clone(),
                key: limit.key(),
                amount,
            });
        }
        Ok(Admitted { charges, matched })
    }

    /// Would `charges` overrun a limit given `usage`? Checked again, atomically, by whoever
    /// keeps the usage.
    pub fn check_limits(&self, usage: &Usage, charges: &[Charge]) -> Result<(), GrantDenial> {
        for limit in &self.limits {
            let key = limit.key();
            let Some(charge) = charges
                .iter()
                .find(|c| c.scope == limit.scope && c.key == key)
            else {
                continue;
            };
            let spent = usage
                .get(&(limit.scope.clone(), key.clone()))
                .copied()
                .unwrap_or(0.0);
            let of = limit
                .tool
                .as_ref()
                .map(|t| format!(" of `{t}`"))
                .unwrap_or_default();
            match &limit.kind {
                LimitKind::MaxCalls(max) => {
                    if spent + charge.amount > *max as f64 {
                        return Err(GrantDenial::Calls {
                            grant: limit.scope.clone(),
                            max: *max,
                            of,
                        });
                    }
                }
                LimitKind::Budget {
                    argument,
                    max_total,
                } => {
                    if spent + charge.amount > *max_total {
                        return Err(GrantDenial::Budget {
                            grant: limit.scope.clone(),
                            argument: argument.clone(),
                            max_total: *max_total,
                            spent,
                            of,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The entries `resource` falls under. Where the grant names it exactly, those entries
    /// decide (a recipient named by itself is not held because a pattern that also takes it is);
    /// otherwise every pattern that takes it, and one that says `approve` holds it.
    fn entry_for(
        &self,
        resource: &Resource,
        all: &[Resource],
        provenance: Option<&crate::provenance::Provenance>,
    ) -> Option<EntryFit<'_>> {
        let entries = self
            .resources
            .iter()
            .map(|p| (p, false))
            .chain(self.approve.iter().map(|p| (p, true)));
        // A source entry takes a value a field it names carried this session; an exact entry,
        // an id that came beside its name (as the call gives them).
        let sourced = |p: &ResourcePattern| {
            (p.source().is_some() || p.is_exact())
                && p.kind() == resource.kind
                && provenance.is_some_and(|pv| pv.sourced(&p.to_string(), &resource.value))
        };
        let taking: Vec<(&ResourcePattern, bool)> = entries
            .filter(|(p, _)| p.matches(resource) || takes_by_host(p, resource, all) || sourced(p))
            .collect();
        if taking.is_empty() {
            return None;
        }
        // A URL is taken by its host's entry, which names the host, not the URL; an id bound to
        // a name the grant holds exactly is as good as the name.
        let named_exactly =
            |p: &ResourcePattern| p.is_exact() && (p.matches(resource) || sourced(p));
        let exact = taking.iter().any(|(p, _)| named_exactly(p));
        let deciding: Vec<(&ResourcePattern, bool)> = taking
            .into_iter()
            .filter(|(p, _)| !exact || named_exactly(p))
            .collect();
        Some(EntryFit {
            exact,
            patterns: deciding,
        })
    }

    /// Might a call on something `entry` takes wait for a person under this grant? Exact for
    /// an exact entry; for a pattern or a source, any `approve` entry of its kind that may
    /// overlap it counts (sound, not complete: a rare `true` only refuses a narrowing that was
    /// safe).
    fn may_hold(&self, entry: &ResourcePattern) -> bool {
        if let Some(resource) = entry.as_resource() {
            return self
                .entry_for(&resource, std::slice::from_ref(&resource), None)
                .is_some_and(|fit| fit.approve());
        }
        // A source entry may take any value of its kind, the held ones included.
        let any_value = entry.source().is_some();
        self.approve.iter().any(|held| {
            held.kind() == entry.kind()
                && (any_value
                    || held
                        .as_resource()
                        .is_none_or(|resource| entry.matches(&resource)))
        })
    }

    /// Is every argument of this call fixed by the grant: one of the values a `one_of`
    /// constraint on it lists, or a value the grant names exactly (its resources, its task's
    /// words) as a whole? A call with no arguments is not pinned.
    pub fn pins(
        &self,
        tool: &str,
        arguments: Option<&Map<String, Value>>,
        provenance: Option<&crate::provenance::Provenance>,
    ) -> bool {
        let mut given = arguments
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_null())
            .peekable();
        if given.peek().is_none() {
            return false;
        }
        given.all(|(name, value)| {
            let listed = self.constraints.iter().any(|c| {
                c.argument == *name
                    && c.each.is_none()
                    && glob_match(&c.tool, tool)
                    && c.rule.values().is_some_and(|values| values.contains(value))
            });
            let named = provenance.and_then(|p| p.arg(name)).is_some_and(|origin| {
                origin.trust == crate::provenance::Trust::Intent && origin.embedded.is_none()
            });
            listed || named
        })
    }

    /// Makes a child of this grant from `request`. Refused unless the child is a subset.
    pub fn narrow(
        &self,
        request: NarrowRequest,
        now: i64,
        id: String,
    ) -> Result<Grant, NarrowError> {
        self.check_time(now)
            .map_err(|e| NarrowError::Parent(e.to_string()))?;
        let exp = match request.ttl_secs {
            Some(ttl) => now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
            None => self.exp,
        };
        let actions = request.actions.unwrap_or_else(|| self.actions.clone());
        let tools = request.tools.unwrap_or_else(|| self.tools.clone());
        let resources = request.resources.unwrap_or_else(|| self.resources.clone());
        let approve = request.approve.unwrap_or_else(|| self.approve.clone());
        let mut constraints = self.constraints.clone();
        constraints.extend(request.constraints);
        let mut limits = self.limits.clone();
        for mut limit in request.limits {
            limit.scope = id.clone();
            limits.push(limit);
        }
        let mut chain = self.chain.clone();
        chain.push(self.id.clone());
        let child = Grant {
            id,
            iss: self.iss.clone(),
            iat: now,
            exp,
            chain,
            purpose: self.purpose.clone(),
            task: request.task.unwrap_or_else(|| self.task.clone()),
            agent: self.agent.clone().or(request.agent),
            user: self.user.clone(),
            resources,
            approve,
            actions,
            tools,
            constraints,
            limits,
        };
        self.check_subset(&child)?;
        Ok(child)
    }

    /// Is `child` a subset of this grant? Every field is checked, so a child made any way at
    /// all, not only by [`Grant::narrow`], is judged the same.
    pub fn check_subset(&self, child: &Grant) -> Result<(), NarrowError> {
        if child.exp > self.exp {
            return Err(NarrowError::Widens(format!(
                "the child would expire at {}, after its parent ({})",
                utc_text(child.exp),
                utc_text(self.exp)
            )));
        }
        if child.purpose != self.purpose {
            return Err(NarrowError::Widens("the purpose cannot change".to_owned()));
        }
        if self.agent.is_some() && child.agent != self.agent {
            return Err(NarrowError::Widens("the agent cannot change".to_owned()));
        }
        if child.user != self.user {
            return Err(NarrowError::Widens("the user cannot change".to_owned()));
        }
        if let Some(extra) = child.actions.difference(&self.actions).next() {
            return Err(NarrowError::Widens(format!(
                "action `{extra}` is not in the parent"
            )));
        }
        for tool in &child.tools {
            if !self.tools.iter().any(|p| glob_covers(p, tool)) {
                return Err(NarrowError::Widens(format!(
                    "tools `{tool}` are not all among the parent's"
                )));
            }
        }
        // A child entry lies within a parent entry that does not wait for a person, or it
        // waits itself: narrowing never takes a hold away.
        let plain = child.resources.iter().map(|r| (r, false));
        for (resource, held) in plain.chain(child.approve.iter().map(|r| (r, true))) {
            let within = |p: &&ResourcePattern| p.covers(resource);
            if !self
                .resources
                .iter()
                .chain(&self.approve)
                .any(|p| within(&p))
            {
                return Err(NarrowError::Widens(format!(
                    "resources `{resource}` are not all within the parent's"
                )));
            }
            let held_by_parent = !held && self.may_hold(resource);
            if held_by_parent {
                return Err(NarrowError::Widens(format!(
                    "calls on `{resource}` wait for a person under the parent; the child must say `approve` too"
                )));
            }
        }
        if let Some(missing) = self
            .constraints
            .iter()
            .find(|c| !child.constraints.contains(c))
        {
            return Err(NarrowError::Widens(format!(
                "the parent's constraint on `{}` of `{}` is missing",
                missing.argument, missing.tool
            )));
        }
        if let Some(missing) = self.limits.iter().find(|l| !child.limits.contains(l)) {
            return Err(NarrowError::Widens(format!(
                "the parent's limit `{}` is missing",
                missing.key()
            )));
        }
        let mut expected_chain = self.chain.clone();
        expected_chain.push(self.id.clone());
        if child.chain != expected_chain {
            return Err(NarrowError::Widens(
                "the child does not name its parent".to_owned(),
            ));
        }
        Ok(())
    }

    /// This grant and every grant it was narrowed from.
    pub fn lineage(&self) -> impl Iterator<Item = &str> {
        self.chain
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.id.as_str()))
    }

    /// Checks the claims are well formed, whoever made them.
    pub fn check_shape(&self) -> Result<(), String> {
        if !is_grant_id(&self.id) {
            return Err(format!(
                "`jti`: expected a grant id such as `g-…`, not `{}`",
                self.id
            ));
        }
        if let Some(bad) = self.chain.iter().find(|id| !is_grant_id(id)) {
            return Err(format!("`chain`: `{bad}` is not a grant id"));
        }
        if self.iss != "tollgate" {
            return Err(format!("`iss`: expected `tollgate`, not `{}`", self.iss));
        }
        if self.exp <= self.iat {
            return Err("`exp` must come after `iat`".to_owned());
        }
        if self.purpose.is_empty() {
            return Err("`purpose` must not be empty".to_owned());
        }
        if self.actions.is_empty() {
            return Err("`actions` must name at least one action class".to_owned());
        }
        Ok(())
    }
}

/// `g-` followed by 8 to 64 lowercase hex digits.
pub fn is_grant_id(id: &str) -> bool {
    id.strip_prefix("g-").is_some_and(|hex| {
        (8..=64).contains(&hex.len())
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

fn url_host(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
}

/// What to change when narrowing; `None` keeps the parent's.
#[derive(Debug, Clone, Default)]
pub struct NarrowRequest {
    pub ttl_secs: Option<u64>,
    pub task: Option<String>,
    pub agent: Option<String>,
    pub actions: Option<BTreeSet<ActionClass>>,
    pub tools: Option<BTreeSet<String>>,
    pub resources: Option<BTreeSet<ResourcePattern>>,
    pub approve: Option<BTreeSet<ResourcePattern>>,
    /// Added to the parent's.
    pub constraints: Vec<Constraint>,
    /// Added to the parent's, counted against the child.
    pub limits: Vec<Limit>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NarrowError {
    #[error("the parent grant cannot be narrowed: {0}")]
    Parent(String),
    #[error("a narrowed grant can only take away: {0}")]
    Widens(String),
}
