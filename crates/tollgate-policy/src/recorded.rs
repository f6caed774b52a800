//! Decisions as the audit trail keeps them, and their replay under another policy pack.
//!
//! The engine is a pure function of its input, so a decision record that carries that input
//! can be decided again, exactly, by a candidate pack. The trail holds three kinds of records
//! for this:
//!
//! - `tool`: one tool's definition as the engine saw it (names, annotations, root, input
//!   schema), written once per trail file before the first decision that names it;
//! - `grant`: a grant's claims (never its signature), written the same way;
//! - `decision`: the decision, with an `input` that names the two above and holds the rest
//!   (the time, environment, session statistics, usage, taint and pin state) and the engine's
//!   own answer before approvals, limits and credentials had their say.
//!
//! The arguments are the ones the record keeps: those the catalog marks `redact` are
//! `"[redacted]"` there, so a call that carried them is replayed with the placeholder and is
//! marked inexact, never passed off as exact.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    hash::BuildHasher,
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    args::SchemaCache,
    clock::UtcOffset,
    decide::{CallInput, Decision, Effect, Environment, Explanation, SessionFacts, SessionStats},
    grant::{Grant, Usage},
    pack::Pack,
    tool::ToolFacts,
};

/// What an argument the catalog marks `redact` reads as in a record.
pub use crate::catalog::REDACTED;
/// The one key of the arguments a record does not keep because they are too large.
pub const NOT_KEPT: &str = "[not kept]";

/// A string of a record: borrowed from the line it was read from when the line holds it
/// without escapes, copied otherwise. Replay reads most of a record's strings only to look
/// something up, and need not copy them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl From<String> for Text<'_> {
    fn from(text: String) -> Self {
        Self(Cow::Owned(text))
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                text: &'de str,
            ) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// Whether `arguments`, as a record keeps them, may differ from the call's: a value hidden as
/// [`REDACTED`] anywhere, or arguments not kept at all. A replay of such a record is not
/// exact. (An argument that really was the placeholder text counts too: a false "inexact" is
/// the safe mistake.)
pub fn kept_whole(arguments: Option<&Map<String, Value>>) -> bool {
    fn clean(value: &Value) -> bool {
        match value {
            Value::String(s) => s != REDACTED,
            Value::Array(items) => items.iter().all(clean),
            Value::Object(map) => map.values().all(clean),
            _ => true,
        }
    }
    arguments.is_none_or(|map| !map.contains_key(NOT_KEPT) && map.values().all(clean))
}

pub use crate::tool::{TOOL_KIND, ToolEntry, ToolRecord};

/// The `kind` of a grant record.
pub const GRANT_KIND: &str = "grant";
/// The `kind` of a decision record.
pub const DECISION_KIND: &str = "decision";

/// What a grant record's key puts before the grant's id.
const GRANT_KEY_PREFIX: &str = "grant:";

/// The key a grant's record is named by.
pub fn grant_key(grant: &Grant) -> String {
    format!("{GRANT_KEY_PREFIX}{}", grant.id)
}

/// The effect a record's `decision` names, if it is one.
fn effect(text: &str) -> Option<Effect> {
    [Effect::Allow, Effect::Deny, Effect::NeedsApproval]
        .into_iter()
        .find(|effect| effect.as_str() == text)
}

/// The grant id a grant record's key names.
fn grant_id(key: &str) -> &str {
    key.strip_prefix(GRANT_KEY_PREFIX).unwrap_or(key)
}

/// A grant's record: its claims, which are not a credential (the signature is not kept).
pub fn grant_entry(grant: &Grant) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert("kind".into(), Value::from(GRANT_KIND));
    record.insert("key".into(), Value::from(grant_key(grant)));
    record.insert(
        "claims".into(),
        serde_json::to_value(grant).unwrap_or(Value::Null),
    );
    record
}

/// One grant limit's use before a call: `(grant id, limit key, amount)`.
pub type UsedRecord = (String, String, f64);

/// The input of one decision, less what the decision record holds itself (the session, the
/// grant, the arguments and the justification, and the decision and its policies where the
/// engine's stood).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRecord<'a> {
    /// The key of the tool's record.
    #[serde(borrow)]
    pub tool: Text<'a>,
    /// The key of the grant's record. Written by older trails only: the record's own `grant`
    /// names it now.
    #[serde(default, borrow, skip_serializing)]
    pub grant: Option<Text<'a>>,
    pub transport: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Unix seconds.
    pub now: i64,
    pub env: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub utc_offset_minutes: i32,
    pub stats: SessionStats,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<UsedRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taint: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub pinned: bool,
    /// The paths the upstream's filesystem resolved to something else (lexical, resolved):
    /// replay sees the filesystem as the call did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<(String, String)>,
    /// Where each argument's value came from, as the session's index said at the time:
    /// replay decides on it as the call did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::provenance::Provenance>,
    /// What the engine decided, where an approval, a limit or a credential changed it; absent
    /// where the record's `decision` is the engine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided: Option<Effect>,
    /// The policies that determined the engine's decision, where they are not the record's
    /// `policies`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<Text<'a>>>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl<'a> InputRecord<'a> {
    /// The input of `call`, whose tool is recorded under `tool`, and what the engine made of it.
    pub fn of(call: &CallInput<'_>, tool: &'a str, decision: &Decision) -> Self {
        Self {
            tool: Text(Cow::Borrowed(tool)),
            grant: None,
            transport: call.session.transport.clone(),
            address: call.session.address.clone(),
            now: call.now,
            env: call.env.label.clone(),
            utc_offset_minutes: call.env.offset.minutes(),
            stats: call.stats.clone(),
            usage: call
                .usage
                .iter()
                .map(|((scope, key), amount)| (scope.clone(), key.clone(), *amount))
                .collect(),
            taint: call.taint.to_vec(),
            pinned: call.pinned,
            resolved: decision.resolved.clone(),
            provenance: call.provenance.cloned(),
            decided: Some(decision.effect),
            policies: Some(decision.policies.iter().cloned().map(Text::from).collect()),
        }
    }

    /// Leaves out what `settled` (the decision as recorded) says already: the engine's effect
    /// and policies where nothing after the engine changed them.
    pub fn settle(&mut self, settled: &Decision) {
        if self.decided == Some(settled.effect) {
            self.decided = None;
        }
        if self.policies.as_deref().is_some_and(|engine| {
            engine
                .iter()
                .map(Text::as_str)
                .eq(settled.policies.iter().map(String::as_str))
        }) {
            self.policies = None;
        }
    }
}

/// A recorded decision made whole again: everything a [`CallInput`] borrows.
#[derive(Debug)]
pub struct Recalled<'r> {
    /// What the engine decided when the call was made.
    pub decided: Effect,
    /// The policies that determined it.
    pub policies: Vec<Text<'r>>,
    pub tool: &'r ToolFacts,
    pub grant: Option<&'r Grant>,
    session: SessionFacts,
    arguments: Option<Map<String, Value>>,
    justification: Option<String>,
    env: Environment,
    stats: SessionStats,
    usage: Usage,
    now: i64,
    taint: Vec<String>,
    pinned: bool,
    paths: RecordedPaths,
    provenance: Option<crate::provenance::Provenance>,
}

/// The filesystem as a record saw it: the resolutions it kept, every other path as written.
#[derive(Debug, Default)]
struct RecordedPaths(HashMap<String, String>);

impl crate::resource::PathView for RecordedPaths {
    fn resolve(&self, lexical: &str) -> Result<String, String> {
        Ok(self
            .0
            .get(lexical)
            .cloned()
            .unwrap_or_else(|| lexical.to_owned()))
    }
}

impl Recalled<'_> {
    /// The call as the engine was handed it.
    pub fn call(&self) -> CallInput<'_> {
        CallInput {
            session: &self.session,
            grant: self.grant,
            tool: self.tool,
            arguments: self.arguments.as_ref(),
            justification: self.justification.as_deref(),
            now: self.now,
            env: &self.env,
            stats: &self.stats,
            usage: &self.usage,
            taint: &self.taint,
            pinned: self.pinned,
            paths: (!self.paths.0.is_empty()).then_some(&self.paths as _),
            provenance: self.provenance.as_ref(),
        }
    }

    pub fn arguments(&self) -> Option<&Map<String, Value>> {
        self.arguments.as_ref()
    }
}

/// The tool definitions and grants read so far from a trail, which its decisions name.
#[derive(Debug, Default)]
pub struct Definitions {
    schemas: SchemaCache,
    tools: HashMap<String, ToolFacts>,
    /// By grant id.
    grants: HashMap<String, Grant>,
}

impl Definitions {
    /// Learns `record` if it is a tool or a grant; true if it was.
    pub fn learn(&mut self, kind: &str, record: &Map<String, Value>) -> Result<bool, String> {
        let key = || {
            record
                .get("key")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("a `{kind}` record without a `key`"))
        };
        match kind {
            TOOL_KIND => {
                if let std::collections::hash_map::Entry::Vacant(slot) = self.tools.entry(key()?) {
                    let mut fields = record.clone();
                    for meta in ["kind", "key", "seq", "prev", "time"] {
                        fields.remove(meta);
                    }
                    let tool: ToolRecord = serde_json::from_value(Value::Object(fields))
                        .map_err(|e| format!("tool record {}: {e}", slot.key()))?;
                    slot.insert(tool.facts(&self.schemas));
                }
                Ok(true)
            }
            GRANT_KIND => {
                let id = grant_id(&key()?).to_owned();
                if let std::collections::hash_map::Entry::Vacant(slot) = self.grants.entry(id) {
                    let claims = record
                        .get("claims")
                        .cloned()
                        .ok_or_else(|| format!("grant record {} without `claims`", slot.key()))?;
                    let grant: Grant = serde_json::from_value(claims)
                        .map_err(|e| format!("grant record {}: {e}", slot.key()))?;
                    slot.insert(grant);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The decision record `record` as a call to decide again, or why it cannot be.
    pub fn recall<'r>(&'r self, record: DecisionRecord<'r>) -> Result<Recalled<'r>, Skip> {
        let input = record.input.ok_or(Skip::NoInput)?;
        let tool = self.tools.get(input.tool.as_str()).ok_or(Skip::NoTool)?;
        // Older trails name the grant in the input; newer ones by the record's own `grant`.
        let grant = input
            .grant
            .as_deref()
            .map(grant_id)
            .or(record.grant.as_deref())
            .map(|id| self.grants.get(id).ok_or(Skip::NoGrant))
            .transpose()?;
        // The engine's decision and policies are the record's own unless the input says not.
        let decided = match (input.decided, &record.decision) {
            (Some(decided), _) => decided,
            (None, Some(recorded)) => effect(recorded).ok_or_else(|| {
                Skip::Unreadable(format!("its `decision` `{}`", recorded.as_str()))
            })?,
            (None, None) => return Err(Skip::Unreadable("it has no `decision`".into())),
        };
        let offset = UtcOffset::from_minutes(input.utc_offset_minutes)
            .map_err(|e| Skip::Unreadable(format!("its `utc_offset_minutes`: {e}")))?;
        // Everything the call borrows is moved out of the record, not copied.
        let InputRecord {
            stats,
            transport,
            address,
            env,
            usage,
            taint,
            now,
            pinned,
            policies,
            resolved,
            provenance,
            ..
        } = input;
        Ok(Recalled {
            decided,
            policies: policies.or(record.policies).unwrap_or_default(),
            session: SessionFacts {
                id: record.session.unwrap_or_default(),
                transport,
                address,
            },
            env: Environment { label: env, offset },
            stats,
            usage: usage
                .into_iter()
                .map(|(scope, key, amount)| ((scope, key), amount))
                .collect(),
            arguments: record.arguments,
            justification: record.justification,
            tool,
            grant,
            now,
            taint,
            pinned,
            paths: RecordedPaths(resolved.into_iter().collect()),
            provenance,
        })
    }
}

/// What replay reads of a decision record; the rest of the line is skipped unread, and what
/// is only looked up is borrowed from the line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DecisionRecord<'a> {
    #[serde(borrow)]
    pub kind: Text<'a>,
    pub seq: Option<u64>,
    #[serde(borrow)]
    pub decision_id: Option<Text<'a>>,
    pub session: Option<String>,
    /// The grant's id; none for an anonymous session.
    #[serde(borrow)]
    pub grant: Option<Text<'a>>,
    /// Unix milliseconds.
    pub time: Option<u64>,
    /// The decision as recorded: an [`Effect`], or what the engine never decided (`hide`).
    #[serde(borrow)]
    pub decision: Option<Text<'a>>,
    /// The policies that determined it.
    #[serde(borrow)]
    pub policies: Option<Vec<Text<'a>>>,
    /// The pack version that decided.
    #[serde(borrow)]
    pub version: Option<Text<'a>>,
    pub arguments: Option<Map<String, Value>>,
    pub justification: Option<String>,
    /// The reasons given, read only when the decision is shown.
    #[serde(borrow)]
    pub reasons: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    pub input: Option<InputRecord<'a>>,
}

/// Why a decision record is not replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Recorded without its input: a refusal the engine did not make (a hidden tool), or a
    /// trail written before inputs were kept.
    NoInput,
    /// Its tool's definition is in an earlier file than those given.
    NoTool,
    /// Its grant is in an earlier file than those given.
    NoGrant,
    Unreadable(String),
}

impl Skip {
    pub fn label(&self) -> String {
        match self {
            Self::NoInput => {
                "recorded without a decision input (a hidden tool, or an older trail)".into()
            }
            Self::NoTool => {
                "its tool's definition is not in the files given (add the earlier files)".into()
            }
            Self::NoGrant => "its grant is not in the files given (add the earlier files)".into(),
            Self::Unreadable(why) => format!("unreadable: {why}"),
        }
    }
}

/// One decision as recorded or as decided again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub decision: Effect,
    pub policies: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// A recorded call whose decision changes.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// As the record keeps them.
    pub arguments: Value,
    /// False when the replay used placeholders for arguments the record does not keep.
    pub exact: bool,
    pub before: Side,
    pub after: Side,
}

/// Calls of one tool whose decision changes the same way, for the same policies.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub from: Effect,
    pub to: Effect,
    pub tool: String,
    /// The policies that determined the recorded decision.
    pub before: Vec<String>,
    /// The policies that determine it now.
    pub after: Vec<String>,
    pub count: u64,
    /// How many of them were replayed with placeholders.
    pub inexact: u64,
    pub examples: Vec<Example>,
}

/// Examples kept per group of changes.
const EXAMPLES: usize = 3;

/// What a replay found.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The candidate pack's version.
    pub policies: String,
    /// Decision records read.
    pub decisions: u64,
    pub replayed: u64,
    pub unchanged: u64,
    pub changed: u64,
    /// Replayed with placeholders for arguments the record does not keep.
    pub inexact: u64,
    /// Decision records not replayed, by why.
    pub skipped: BTreeMap<String, u64>,
    /// Lines that are not records at all (a torn last line after a crash, say).
    pub unreadable_lines: u64,
    /// `allow → deny` and the like, with counts.
    pub transitions: BTreeMap<String, u64>,
    /// Largest first.
    pub changes: Vec<Change>,
    /// Decisions of the same pack version that came out differently: their input was not
    /// kept whole. Should be zero for complete records.
    pub same_version_differences: u64,
}

/// Decides recorded calls again under one pack and collects what changes.
#[derive(Debug)]
pub struct Replay<'p> {
    pack: &'p Pack,
    known: Definitions,
    summary: Summary,
    transitions: BTreeMap<(Effect, Effect), u64>,
    /// The groups of changes, in the order first seen, and an index into them by the hash of
    /// what groups them (from, to, the tool, the policies before and now). A flip into a group
    /// that exists allocates nothing.
    changes: Vec<Change>,
    groups: HashMap<u64, Vec<usize>>,
    hasher: std::hash::RandomState,
}

impl<'p> Replay<'p> {
    pub fn new(pack: &'p Pack) -> Self {
        Self {
            pack,
            known: Definitions::default(),
            summary: Summary {
                policies: pack.version().to_owned(),
                decisions: 0,
                replayed: 0,
                unchanged: 0,
                changed: 0,
                inexact: 0,
                skipped: BTreeMap::new(),
                unreadable_lines: 0,
                transitions: BTreeMap::new(),
                changes: Vec::new(),
                same_version_differences: 0,
            },
            transitions: BTreeMap::new(),
            changes: Vec::new(),
            groups: HashMap::new(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Reads one line of a trail as it is stored: a line that is not UTF-8 is not a record.
    pub fn bytes(&mut self, line: &[u8]) {
        match std::str::from_utf8(line) {
            Ok(line) => self.line(line),
            Err(_) => self.summary.unreadable_lines += 1,
        }
    }

    /// Reads one line of a trail.
    pub fn line(&mut self, line: &str) {
        // Blank, or the zero bytes a trail file not closed keeps after its records.
        if line
            .trim_matches(|c: char| c.is_whitespace() || c == '\0')
            .is_empty()
        {
            return;
        }
        let Ok(record) = serde_json::from_str::<DecisionRecord>(line) else {
            self.summary.unreadable_lines += 1;
            return;
        };
        if record.kind.as_str() == DECISION_KIND {
            self.decision(record);
            return;
        }
        // A definition (rare): read whole.
        match serde_json::from_str::<Map<String, Value>>(line) {
            Ok(whole) => {
                if let Err(why) = self.known.learn(&record.kind, &whole) {
                    *self.summary.skipped.entry(why).or_default() += 1;
                }
            }
            Err(_) => self.summary.unreadable_lines += 1,
        }
    }

    /// Decides one decision record again.
    pub fn decision(&mut self, mut record: DecisionRecord<'_>) {
        self.summary.decisions += 1;
        let (seq, time) = (record.seq, record.time);
        let decision_id = record.decision_id.take();
        let version = record.version.take();
        let recorded_reasons = record.reasons.take();
        let recalled = match self.known.recall(record) {
            Ok(recalled) => recalled,
            Err(skip) => {
                *self.summary.skipped.entry(skip.label()).or_default() += 1;
                return;
            }
        };
        let decision = self.pack.decide(&recalled.call());
        let summary = &mut self.summary;
        summary.replayed += 1;
        let exact = kept_whole(recalled.arguments());
        if !exact {
            summary.inexact += 1;
        }
        let same_policies = |policies: &[String]| {
            policies
                .iter()
                .map(String::as_str)
                .eq(recalled.policies.iter().map(Text::as_str))
        };
        if decision.effect == recalled.decided && same_policies(&decision.policies) {
            summary.unchanged += 1;
            return;
        }
        if version.as_deref() == Some(self.pack.version()) {
            summary.same_version_differences += 1;
        }
        if decision.effect == recalled.decided {
            // The same outcome for other reasons: not a flip.
            summary.unchanged += 1;
            return;
        }
        summary.changed += 1;
        *self
            .transitions
            .entry((recalled.decided, decision.effect))
            .or_default() += 1;
        let tool = recalled.tool.name();
        let hash = self.hasher.hash_one((
            recalled.decided,
            decision.effect,
            tool,
            &recalled.policies,
            &decision.policies,
        ));
        let group = self.groups.entry(hash).or_default();
        let found = group.iter().copied().find(|&at| {
            self.changes.get(at).is_some_and(|c| {
                c.from == recalled.decided
                    && c.to == decision.effect
                    && c.tool == tool
                    && same_policies(&c.before)
                    && c.after == decision.policies
            })
        });
        let at = found.unwrap_or_else(|| {
            group.push(self.changes.len());
            self.changes.push(Change {
                from: recalled.decided,
                to: decision.effect,
                tool: tool.to_owned(),
                before: owned(&recalled.policies),
                after: decision.policies.clone(),
                count: 0,
                inexact: 0,
                examples: Vec::new(),
            });
            self.changes.len() - 1
        });
        let Some(change) = self.changes.get_mut(at) else {
            return;
        };
        change.count += 1;
        if !exact {
            change.inexact += 1;
        }
        if change.examples.len() < EXAMPLES {
            change.examples.push(Example {
                seq,
                decision_id: decision_id.map(Text::into_owned),
                session: Some(recalled.session.id.clone()),
                time,
                arguments: recalled
                    .arguments()
                    .map_or(Value::Null, |a| Value::Object(a.clone())),
                exact,
                before: Side {
                    decision: recalled.decided,
                    policies: owned(&recalled.policies),
                    reasons: recorded_reasons
                        .and_then(|raw| serde_json::from_str(raw.get()).ok())
                        .unwrap_or_default(),
                },
                after: Side {
                    decision: decision.effect,
                    policies: decision.policies,
                    reasons: decision.reasons,
                },
            });
        }
    }

    pub fn finish(self) -> Summary {
        let mut summary = self.summary;
        summary.transitions = self
            .transitions
            .into_iter()
            .map(|((from, to), n)| (format!("{} → {}", from.as_str(), to.as_str()), n))
            .collect();
        let mut changes = self.changes;
        // Largest first; groups of one size in a fixed order, whatever the hasher.
        changes.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (a.from, a.to, &a.tool, &a.before, &a.after)
                    .cmp(&(b.from, b.to, &b.tool, &b.before, &b.after))
            })
        });
        summary.changes = changes;
        summary
    }
}

fn owned(texts: &[Text<'_>]) -> Vec<String> {
    texts.iter().map(|t| t.as_str().to_owned()).collect()
}

/// Finds the decision `wanted` (its `decision_id`, or its `seq`) in `lines` and explains it
/// under `pack`, with the recorded decision beside it.
pub fn explain_recorded<'a>(
    pack: &Pack,
    lines: impl IntoIterator<Item = &'a str>,
    wanted: &str,
) -> Result<(Map<String, Value>, Explanation), String> {
    let mut known = Definitions::default();
    for line in lines {
        let Ok(record) = serde_json::from_str::<Map<String, Value>>(line) else {
            continue;
        };
        let kind = record.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != DECISION_KIND {
            known.learn(kind, &record)?;
            continue;
        }
        let matches = record.get("decision_id").and_then(Value::as_str) == Some(wanted)
            || record
                .get("seq")
                .and_then(Value::as_u64)
                .is_some_and(|seq| seq.to_string() == wanted);
        if !matches {
            continue;
        }
        let typed: DecisionRecord<'_> = serde_json::from_str(line)
            .map_err(|e| format!("decision {wanted} cannot be read: {e}"))?;
        let recalled = known
            .recall(typed)
            .map_err(|skip| format!("decision {wanted} cannot be explained: {}", skip.label()))?;
        let explanation = pack.explain(&recalled.call());
        return Ok((record, explanation));
    }
    Err(format!("no decision {wanted} in the trail given"))
}

#[cfg(test)]
mod tests;
