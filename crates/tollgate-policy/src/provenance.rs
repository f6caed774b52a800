//! Where a call's values came from. Every result a session receives is indexed: each value it
//! carries (whole short strings, numbers, and the URLs, hosts, e-mail addresses, account-like
//! codes, paths and numbers inside text), with the tool and field it came from, when, and how
//! far the catalog trusts that field. A call's arguments are then looked up: an argument's
//! **trust** is `intent` (the grant names it), `trusted` (a field the catalog trusts carried
//! it), `untrusted` (only content the catalog does not trust carried it) or `unseen`.
//!
//! Pure and synchronous like the rest of the engine: the guard keeps each session's
//! [`Index`] in its store, looks a call's [`Probes`] up in one read and hands the engine the
//! [`Provenance`] it computed, which the decision record keeps for replay.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod tokens;

pub use tokens::{Kind, ValueKey};

pub use crate::pattern::FieldPattern;
use crate::pattern::Step;

/// How far a value can be trusted, by where it came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// No result of this session carried it and the grant does not name it.
    #[default]
    Unseen,
    /// Content the catalog does not trust carried it (a message body, a web page).
    Untrusted,
    /// A field the catalog trusts carried it (a transaction's counterparty as the bank keeps it).
    Trusted,
    /// The grant names it: its resources or its task text.
    Intent,
}

impl Trust {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unseen => "unseen",
            Self::Untrusted => "untrusted",
            Self::Trusted => "trusted",
            Self::Intent => "intent",
        }
    }

    /// How safe a value of this trust is as where a side effect goes, lowest first: what
    /// untrusted content carried is worse than what nothing carried (the agent may have it
    /// from its user).
    fn safety(self) -> u8 {
        match self {
            Self::Untrusted => 0,
            Self::Unseen => 1,
            Self::Trusted => 2,
            Self::Intent => 3,
        }
    }

    /// The less safe of two.
    pub fn weaker(self, other: Self) -> Self {
        if other.safety() < self.safety() {
            other
        } else {
            self
        }
    }
}

/// How far the catalog trusts what a tool returns: a default for the whole result, and
/// fields that differ from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTrust {
    /// `Trusted` or `Untrusted`: what every field not named below is.
    pub default: Trust,
    pub trusted: Vec<FieldPattern>,
    pub untrusted: Vec<FieldPattern>,
}

impl Default for OutputTrust {
    /// Nothing a tool returns is trusted unless the catalog says so.
    fn default() -> Self {
        Self {
            default: Trust::Untrusted,
            trusted: Vec::new(),
            untrusted: Vec::new(),
        }
    }
}

impl OutputTrust {
    /// The trust of the field at `path`: an `untrusted` pattern wins over a `trusted` one, so
    /// two catalog entries can only make a field less trusted.
    fn of(&self, path: &[Step<'_>]) -> Trust {
        if self.untrusted.iter().any(|p| p.matches(path)) {
            Trust::Untrusted
        } else if self.trusted.iter().any(|p| p.matches(path)) {
            Trust::Trusted
        } else {
            self.default
        }
    }
}

/// Where a value was seen: the tool, the field (a JSON pointer into the result, or a text
/// block and the byte range in it), when (Unix seconds) and with what trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    pub tool: String,
    pub field: String,
    pub at: i64,
    pub trust: Trust,
}

/// One value a result carried: its key, where in the result (an index into
/// [`Observed::fields`], and for text the byte range), and how far it is trusted there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub key: ValueKey,
    pub field: u32,
    pub span: Option<(u32, u32)>,
    pub trust: Trust,
}

/// What one result carried, and whether some of it was left out (past the per-result bound).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub tool: String,
    /// When the result came (Unix seconds).
    pub at: i64,
    /// The fields values were found in (JSON pointers, or `content/<n>/text`), each once.
    pub fields: Vec<String>,
    pub values: Vec<Observation>,
    /// Labels the tool gives what it returns (from the catalog's `taints`: `secret_read`).
    pub labels: Vec<String>,
    pub truncated: bool,
}

impl Observed {
    /// Where `observation` was seen, in full.
    pub fn sighting(&self, observation: &Observation) -> Sighting {
        let field = usize::try_from(observation.field)
            .ok()
            .and_then(|n| self.fields.get(n))
            .map_or("", String::as_str);
        Sighting {
            tool: self.tool.clone(),
            field: match observation.span {
                Some((start, end)) => format!("{field} [{start}..{end}]"),
                None => field.to_owned(),
            },
            at: self.at,
            trust: observation.trust,
        }
    }
}

/// Values one result may add to the index; the rest are dropped and the index says so.
pub const PER_RESULT: usize = 4096;

/// The values `result` (a `tools/call` result: `content`, `structuredContent`) carries, as
/// `output` says to trust them. Text blocks that hold JSON are read as structure (the pointer
/// is then into that JSON, as into `structuredContent`); other text is searched for values.
pub fn observe(
    result: &Value,
    tool: &str,
    output: &OutputTrust,
    labels: &[String],
    at: i64,
) -> Observed {
    let mut walker = Walker {
        output,
        pointer: String::new(),
        found: Observed {
            tool: tool.to_owned(),
            at,
            labels: labels.to_vec(),
            ..Observed::default()
        },
    };
    let structured = result.get("structuredContent").filter(|v| !v.is_null());
    if let Some(structured) = structured {
        walker.walk(structured, &mut Vec::new());
    }
    // The structured content as written out, made once when a text block may be it.
    let mut written: Option<Option<String>> = None;
    if let Some(Value::Array(blocks)) = result.get("content") {
        for (n, block) in blocks.iter().enumerate() {
            let text = block
                .get("text")
                .or_else(|| block.get("resource").and_then(|r| r.get("text")))
                .and_then(Value::as_str);
            if let Some(text) = text {
                let trimmed = text.trim_start();
                let json = trimmed.starts_with('{') || trimmed.starts_with('[');
                // The structured content written out as it came is the same JSON, read faster
                // by comparing the text than by parsing it.
                let same = json
                    && written
                        .get_or_insert_with(|| {
                            structured.and_then(|s| serde_json::to_string(s).ok())
                        })
                        .as_deref()
                        == Some(text);
                let parsed = (json && !same)
                    .then(|| serde_json::from_str::<Value>(text).ok())
                    .flatten();
                match parsed {
                    _ if same => {}
                    // The same JSON as `structuredContent` (as most servers send it) adds
                    // nothing.
                    Some(parsed) if structured == Some(&parsed) => {}
                    Some(parsed) => walker.walk(&parsed, &mut Vec::new()),
                    None => {
                        let field = walker.field(format!("content/{n}/text"));
                        walker.text(text, field, output.default, true);
                    }
                }
            }
            if let Some(uri) = block.get("uri").and_then(Value::as_str) {
                let field = walker.field(format!("content/{n}/uri"));
                walker.text(uri, field, output.default, false);
            }
        }
    }
    walker.found
}

struct Walker<'a> {
    output: &'a OutputTrust,
    /// The JSON pointer of where the walk is, kept as it goes.
    pointer: String,
    found: Observed,
}

impl Walker<'_> {
    fn field(&mut self, field: String) -> u32 {
        self.found.fields.push(field);
        u32::try_from(self.found.fields.len() - 1).unwrap_or(u32::MAX)
    }

    fn push(&mut self, key: ValueKey, field: u32, span: Option<(u32, u32)>, trust: Trust) {
        if self.found.values.len() >= PER_RESULT {
            self.found.truncated = true;
            return;
        }
        self.found.values.push(Observation {
            key,
            field,
            span,
            trust,
        });
    }

    fn step(&mut self, step: Step<'_>) {
        use std::fmt::Write;
        self.pointer.push('/');
        match step {
            Step::Key(key) if key.contains(['~', '/']) => {
                self.pointer
                    .push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Step::Key(key) => self.pointer.push_str(key),
            Step::Index(n) => {
                let _ = write!(self.pointer, "{n}");
            }
        }
    }

    fn walk<'v>(&mut self, value: &'v Value, path: &mut Vec<Step<'v>>) {
        if self.found.truncated {
            return;
        }
        let depth = self.pointer.len();
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    path.push(Step::Key(key));
                    self.step(Step::Key(key));
                    self.walk(value, path);
                    self.pointer.truncate(depth);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (n, value) in items.iter().enumerate() {
                    path.push(Step::Index(n));
                    self.step(Step::Index(n));
                    self.walk(value, path);
                    self.pointer.truncate(depth);
                    path.pop();
                }
            }
            Value::String(text) => {
                let trust = self.output.of(path);
                let field = self.field(self.pointer.clone());
                if let Some(key) = tokens::whole(text) {
                    self.push(key, field, None, trust);
                }
                self.text(text, field, trust, false);
            }
            Value::Number(n) => {
                if let Some(key) = n.as_f64().and_then(tokens::number) {
                    let trust = self.output.of(path);
                    let field = self.field(self.pointer.clone());
                    self.push(key, field, None, trust);
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn text(&mut self, text: &str, field: u32, trust: Trust, spans: bool) {
        for (key, range) in tokens::tokens(text) {
            let span = spans.then(|| {
                let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                (at(range.start), at(range.end))
            });
            self.push(key, field, span, trust);
        }
    }
}

/// A field of one tool's results that carried a value, where the catalog trusts that field:
/// what a grant's `kind:from(TOOL.FIELD)` entry is matched against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub tool: String,
    /// A JSON pointer into the result.
    pub field: String,
    /// Which result of the session it was (counted by the index), so that two values can be
    /// told to have come in the same object of the same result.
    pub result: u64,
}

impl Source {
    /// Came `self` and `other` in two fields of one object of one result?
    fn beside(&self, other: &Source) -> bool {
        let object = |field: &str| field.rsplit_once('/').map(|(object, _)| object.to_owned());
        self.result == other.result
            && self.tool == other.tool
            && self.field != other.field
            && object(&self.field).is_some_and(|o| object(&other.field) == Some(o))
    }
}

/// Trusted fields kept per value.
const SOURCES_KEPT: usize = 8;

/// What the index knows of one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The first sighting with the best trust the value was seen with.
    pub best: Sighting,
    /// The tools that returned it (the first few).
    pub tools: Vec<String>,
    /// The labels of the results that carried it (`secret_read`).
    pub labels: Vec<String>,
    /// How many times results carried it.
    pub count: u32,
    /// The trusted fields that carried it (the first few).
    pub sources: Vec<Source>,
}

/// Tools kept per value.
const TOOLS_KEPT: usize = 4;

#[derive(Debug, Clone)]
struct Slot {
    seen: Seen,
    touched: u64,
}

/// One session's values and where they came from, bounded. Past `capacity` values, those used
/// least recently leave the detailed table, trusted ones first; each leaves behind an 8-byte
/// fingerprint (the first 8 bytes of its key's SHA-256), so a value untrusted content carried
/// is still known as untrusted (and a trusted one as trusted) once its details are gone. Only
/// when the fingerprints too must go (past `16 × capacity` of them) does an untrusted value
/// become unknown, and then the index is no longer [`Index::complete`]: policies can treat
/// every unseen value as untrusted. Dropping what is trusted only ever makes a later call look
/// less safe.
#[derive(Debug, Clone)]
pub struct Index {
    values: HashMap<ValueKey, Slot, Hasher>,
    capacity: usize,
    tick: u64,
    /// Results added so far.
    results: u64,
    complete: bool,
    /// Fingerprints of values whose details were let go, by the best trust they had.
    gone_untrusted: std::collections::HashSet<u64, Hasher>,
    gone_trusted: std::collections::HashSet<u64, Hasher>,
    /// The labels (`secret_read`) of values let go that had any: those go last.
    gone_labels: HashMap<u64, Vec<String>, Hasher>,
}

/// Seeded at random once per process: what a result holds cannot be chosen to collide.
type Hasher = foldhash::quality::RandomState;

/// Values a session's index keeps in detail by default (their fingerprints, sixteen times as
/// many, are kept beyond).
pub const INDEX_CAPACITY: usize = 2048;

/// Fingerprints kept per detailed value.
const FINGERPRINTS_PER_VALUE: usize = 16;

impl Default for Index {
    fn default() -> Self {
        Self::new(INDEX_CAPACITY)
    }
}

fn fingerprint(key: &ValueKey) -> u64 {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update([key.kind as u8]);
    hash.update(key.value.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    for (to, from) in first.iter_mut().zip(digest.iter()) {
        *to = *from;
    }
    u64::from_le_bytes(first)
}

impl Index {
    pub fn new(capacity: usize) -> Self {
        Self {
            values: HashMap::default(),
            capacity: capacity.max(16),
            tick: 0,
            results: 0,
            complete: true,
            gone_untrusted: std::collections::HashSet::default(),
            gone_trusted: std::collections::HashSet::default(),
            gone_labels: HashMap::default(),
        }
    }

    /// Values known in detail.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Values known only by their fingerprint.
    pub fn fingerprints(&self) -> usize {
        self.gone_untrusted.len() + self.gone_trusted.len() + self.gone_labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.fingerprints() == 0
    }

    /// No untrusted value was ever forgotten: a value the index does not know was never carried
    /// by untrusted content.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Adds what a result carried.
    pub fn add(&mut self, observed: &Observed) {
        self.results += 1;
        if observed.truncated {
            self.complete = false;
        }
        for observation in &observed.values {
            self.tick += 1;
            let tick = self.tick;
            let slot = match self.values.get_mut(&observation.key) {
                Some(slot) => slot,
                None => self
                    .values
                    .entry(observation.key.clone())
                    .or_insert_with(|| Slot {
                        seen: Seen {
                            best: observed.sighting(observation),
                            tools: Vec::new(),
                            labels: Vec::new(),
                            count: 0,
                            sources: Vec::new(),
                        },
                        touched: tick,
                    }),
            };
            slot.touched = tick;
            let seen = &mut slot.seen;
            seen.count = seen.count.saturating_add(1);
            if observation.trust > seen.best.trust {
                seen.best = observed.sighting(observation);
            }
            if seen.tools.len() < TOOLS_KEPT && !seen.tools.contains(&observed.tool) {
                seen.tools.push(observed.tool.clone());
            }
            // A trusted field of structured content (not a span of prose) is a source a grant
            // can name.
            let field = usize::try_from(observation.field)
                .ok()
                .and_then(|n| observed.fields.get(n))
                .filter(|f| f.starts_with('/'));
            if let Some(field) = field
                && observation.trust == Trust::Trusted
                && observation.span.is_none()
                && seen.sources.len() < SOURCES_KEPT
                && !seen
                    .sources
                    .iter()
                    .any(|s| s.tool == observed.tool && s.field == *field)
            {
                seen.sources.push(Source {
                    tool: observed.tool.clone(),
                    field: field.clone(),
                    result: self.results,
                });
            }
            for label in &observed.labels {
                if let Err(at) = seen.labels.binary_search(label) {
                    seen.labels.insert(at, label.clone());
                }
            }
        }
        if self.values.len() > self.capacity {
            self.shrink();
        }
    }

    /// Down to seven eighths of the capacity: trusted values first, then untrusted ones, values
    /// with labels last, least recently used first; each leaves its fingerprint.
    fn shrink(&mut self) {
        let keep = self.capacity - self.capacity / 8;
        let mut order: Vec<(bool, bool, u64, ValueKey)> = self
            .values
            .iter()
            .map(|(k, s)| {
                let labelled = !s.seen.labels.is_empty();
                let untrusted = s.seen.best.trust == Trust::Untrusted;
                (labelled, untrusted, s.touched, k.clone())
            })
            .collect();
        order.sort();
        let drop = self.values.len().saturating_sub(keep);
        for (labelled, untrusted, _, key) in order.into_iter().take(drop) {
            let print = fingerprint(&key);
            if let Some(slot) = self.values.remove(&key).filter(|_| labelled) {
                self.gone_labels.insert(print, slot.seen.labels);
            }
            if untrusted {
                self.gone_untrusted.insert(print);
            } else {
                self.gone_trusted.insert(print);
            }
        }
        let bound = self.capacity * FINGERPRINTS_PER_VALUE;
        if self.fingerprints() > bound {
            // Trusted fingerprints go first; past that, untrusted values become unknown.
            self.gone_trusted.clear();
            if self.fingerprints() > bound {
                self.gone_untrusted.clear();
                self.complete = false;
            }
            if self.fingerprints() > bound {
                self.gone_labels.clear();
            }
        }
    }

    /// What the index knows of each of `keys`, in order; looking a value up counts as using it.
    /// A value known only by its fingerprint comes back with its trust and no details.
    pub fn look_up(&mut self, keys: &[ValueKey]) -> Vec<Option<Seen>> {
        let remembered = self.fingerprints() > 0;
        keys.iter()
            .map(|key| {
                self.tick += 1;
                let tick = self.tick;
                if let Some(slot) = self.values.get_mut(key) {
                    slot.touched = tick;
                    return Some(slot.seen.clone());
                }
                if !remembered {
                    return None;
                }
                let print = fingerprint(key);
                let trust = if self.gone_trusted.contains(&print) {
                    Trust::Trusted
                } else if self.gone_untrusted.contains(&print) {
                    Trust::Untrusted
                } else {
                    return None;
                };
                Some(Seen {
                    best: Sighting {
                        tool: String::new(),
                        field: String::new(),
                        at: 0,
                        trust,
                    },
                    tools: Vec::new(),
                    labels: self.gone_labels.get(&print).cloned().unwrap_or_default(),
                    count: 0,
                    sources: Vec::new(),
                })
            })
            .collect()
    }
}

/// One string or number inside an argument, as keys to look up.
#[derive(Debug, Clone, Default)]
struct Leaf {
    /// The value as the call gives it, when it is short enough to name a resource.
    text: Option<String>,
    /// The whole value (and the one value it consists of, when it is just that).
    whole: Vec<usize>,
    /// The values found inside it.
    inside: Vec<usize>,
}

/// The longest argument value kept as written: a named resource is at most this long.
const LEAF_TEXT: usize = 256;

/// A call's arguments as the values to look up: every key once, and for each argument its
/// leaves.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    pub keys: Vec<ValueKey>,
    args: Vec<(String, Vec<Leaf>)>,
    /// The grant's exact names looked up too (entry, index into `keys`): an id that came beside
    /// one of them is bound to it.
    names: Vec<(String, usize)>,
}

impl Probes {
    /// The values in `arguments` (each argument's strings and numbers, however nested).
    pub fn of(arguments: Option<&Map<String, Value>>) -> Self {
        let mut probes = Self::default();
        let mut at: HashMap<ValueKey, usize> = HashMap::new();
        for (name, value) in arguments.into_iter().flatten() {
            let mut leaves = Vec::new();
            probes.leaves(value, &mut leaves, &mut at, 0);
            probes.args.push((name.clone(), leaves));
        }
        probes
    }

    /// These probes, with the names `intent` holds looked up as well.
    #[must_use]
    pub fn naming(mut self, intent: &Intent) -> Self {
        for (entry, key) in &intent.names {
            let index = match self.keys.iter().position(|k| k == key) {
                Some(index) => index,
                None => {
                    self.keys.push(key.clone());
                    self.keys.len() - 1
                }
            };
            self.names.push((entry.clone(), index));
        }
        self
    }

    fn key(&mut self, key: ValueKey, at: &mut HashMap<ValueKey, usize>) -> usize {
        *at.entry(key).or_insert_with_key(|key| {
            self.keys.push(key.clone());
            self.keys.len() - 1
        })
    }

    fn leaves(
        &mut self,
        value: &Value,
        leaves: &mut Vec<Leaf>,
        at: &mut HashMap<ValueKey, usize>,
        depth: usize,
    ) {
        // Arguments are validated against the tool's schema before this; the bound is for a
        // schema that allows anything.
        if depth > 32 || leaves.len() > 256 {
            return;
        }
        match value {
            Value::String(text) => {
                let mut leaf = Leaf {
                    text: (text.len() <= LEAF_TEXT).then(|| text.clone()),
                    ..Leaf::default()
                };
                let found = tokens::tokens(text);
                if let Some(key) = tokens::whole(text) {
                    leaf.whole.push(self.key(key, at));
                }
                let trimmed = text.trim();
                let mut whole_token = false;
                for (key, range) in found {
                    let index = self.key(key, at);
                    // A value that is just one URL, address or code is that value as a whole;
                    // a URL's host is inside it.
                    if !whole_token && range.len() + (text.len() - trimmed.len()) >= text.len() {
                        whole_token = true;
                        leaf.whole.push(index);
                    } else {
                        leaf.inside.push(index);
                    }
                }
                leaves.push(leaf);
            }
            Value::Number(n) => {
                if let Some(key) = n.as_f64().and_then(tokens::number) {
                    let index = self.key(key, at);
                    leaves.push(Leaf {
                        text: Some(n.to_string()),
                        whole: vec![index],
                        inside: Vec::new(),
                    });
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.leaves(item, leaves, at, depth + 1);
                }
            }
            Value::Object(map) => {
                for item in map.values() {
                    self.leaves(item, leaves, at, depth + 1);
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }
}

/// The values a grant names: its exact resources (`account:GB29…`, `path:/srv/a.txt`) and the
/// values in its task text. Patterns name no value.
#[derive(Debug, Clone, Default)]
pub struct Intent {
    keys: std::collections::HashSet<ValueKey>,
    /// The grant's `kind:from(…)` entries: the entry as written, its tool glob and field.
    sources: Vec<(String, String, FieldPattern)>,
    /// The grant's exact entries of named kinds (`event:dentist appointment`), with the key of
    /// the name: what an id can be bound to.
    names: Vec<(String, ValueKey)>,
}

impl Intent {
    pub fn of(grant: Option<&crate::Grant>) -> Self {
        let mut keys = std::collections::HashSet::new();
        let mut sources = Vec::new();
        let mut names = Vec::new();
        let Some(grant) = grant else {
            return Self {
                keys,
                sources,
                names,
            };
        };
        for resource in grant.resources.iter().chain(&grant.approve) {
            if let Some((tool, field)) = resource.source() {
                sources.push((resource.to_string(), tool.to_owned(), field));
                continue;
            }
            let text = resource.to_string();
            let Some((kind, value)) = text.split_once(':') else {
                continue;
            };
            if value.contains('*') || value.contains('?') {
                continue;
            }
            if let Some(key) = tokens::whole(value) {
                if !matches!(kind, "path" | "host") {
                    names.push((text.clone(), key.clone()));
                }
                keys.insert(key);
            }
            match kind {
                "path" => keys.extend(tokens::path_key(value)),
                "url" => {
                    if let Some((url, host)) = tokens::url_key(value) {
                        keys.insert(url);
                        keys.extend(host);
                    }
                }
                "host" => {
                    keys.insert(ValueKey {
                        kind: Kind::Host,
                        value: value.trim_end_matches('.').to_ascii_lowercase().into(),
                    });
                }
                _ => {}
            }
            keys.extend(tokens::tokens(value).into_iter().map(|(k, _)| k));
        }
        keys.extend(tokens::tokens(&grant.task).into_iter().map(|(k, _)| k));
        Self {
            keys,
            sources,
            names,
        }
    }

    /// The source entries of the grant that `seen`'s trusted fields fall under.
    fn entries_for<'i>(&'i self, seen: &'i Seen) -> impl Iterator<Item = &'i str> {
        self.sources
            .iter()
            .filter(|(_, tool, field)| {
                seen.sources.iter().any(|s| {
                    crate::pattern::glob_match(tool, &s.tool) && field.matches_pointer(&s.field)
                })
            })
            .map(|(entry, _, _)| entry.as_str())
    }

    pub fn contains(&self, key: &ValueKey) -> bool {
        self.keys.contains(key)
    }
}

/// Where one argument's value came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// The value's trust: the best source of the value as a whole; when nothing carried it
    /// whole, the weakest of the values found inside it; `unseen` when neither. For an
    /// argument of several values (an array), the weakest of them.
    pub trust: Trust,
    /// The weakest trust of the values found inside it, when it holds any that were seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<Trust>,
    /// The tools whose results carried it (or what is inside it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// The labels of those results (`secret_read`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Where the value that decided `trust` was first seen with that trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<Sighting>,
}

/// One value of a call that a grant's source entry takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sourced {
    /// The entry, as the grant writes it: `payee:from(bank.list_transactions.counterparty)`.
    pub entry: String,
    /// The value as the call gives it.
    pub value: String,
}

/// A call's arguments' origins, as the decision sees and the record keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// By argument name, in the arguments' order.
    pub args: Vec<(String, Origin)>,
    /// Values of the call (as it gives them) that a grant's entry takes for where they came
    /// from, with that entry: a field a `kind:from(…)` entry names carried them, or they came
    /// beside a name an exact entry holds, in trusted fields of one object of one result (the
    /// `id` of the event whose title is the `event:…` the grant names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sourced: Vec<Sourced>,
    /// The session's index dropped no untrusted value.
    pub complete: bool,
}

impl Provenance {
    /// Each argument's origin, from what the index knew of each of `probes.keys` (`seen`, in
    /// order) and what the grant names.
    pub fn of(probes: &Probes, seen: &[Option<Seen>], intent: &Intent, complete: bool) -> Self {
        let trust_of = |index: usize| -> (Trust, Option<&Seen>) {
            let key = probes.keys.get(index);
            if key.is_some_and(|k| intent.contains(k)) {
                return (Trust::Intent, None);
            }
            match seen.get(index).and_then(Option::as_ref) {
                Some(seen) => (seen.best.trust, Some(seen)),
                None => (Trust::Unseen, None),
            }
        };
        let mut args = Vec::with_capacity(probes.args.len());
        let mut sourced: Vec<Sourced> = Vec::new();
        for (name, leaves) in &probes.args {
            let mut origin: Option<Origin> = None;
            for leaf in leaves {
                if let Some(text) = &leaf.text
                    && !(intent.sources.is_empty() && probes.names.is_empty())
                {
                    let whole = leaf
                        .whole
                        .iter()
                        .filter_map(|&i| seen.get(i).and_then(Option::as_ref));
                    for value in whole {
                        // Named by a source entry, or beside a name the grant holds.
                        let bound = probes.names.iter().filter_map(|(entry, index)| {
                            let name = seen.get(*index).and_then(Option::as_ref)?;
                            let beside = value
                                .sources
                                .iter()
                                .any(|v| name.sources.iter().any(|n| v.beside(n)));
                            beside.then_some(entry.as_str())
                        });
                        for entry in intent.entries_for(value).chain(bound) {
                            let found = Sourced {
                                entry: entry.to_owned(),
                                value: text.clone(),
                            };
                            if !sourced.contains(&found) {
                                sourced.push(found);
                            }
                        }
                    }
                }
                let mut leaf_origin = Origin::default();
                let mut whole: Option<(Trust, Option<&Seen>)> = None;
                for &index in &leaf.whole {
                    let (trust, seen) = trust_of(index);
                    if whole.is_none_or(|(best, _)| trust > best) {
                        whole = Some((trust, seen));
                    }
                    note(&mut leaf_origin, seen);
                }
                let mut embedded: Option<(Trust, Option<&Seen>)> = None;
                for &index in &leaf.inside {
                    let (trust, seen) = trust_of(index);
                    if trust == Trust::Unseen {
                        continue;
                    }
                    if embedded.is_none_or(|(weakest, _)| trust.weaker(weakest) != weakest) {
                        embedded = Some((trust, seen));
                    }
                    note(&mut leaf_origin, seen);
                }
                leaf_origin.embedded = embedded.map(|(t, _)| t);
                let deciding = match (whole, embedded) {
                    (Some((trust, seen)), _) if trust != Trust::Unseen => (trust, seen),
                    (_, Some(found)) => found,
                    _ => (Trust::Unseen, None),
                };
                leaf_origin.trust = deciding.0;
                leaf_origin.first = deciding.1.map(|s| s.best.clone());
                origin = Some(match origin {
                    None => leaf_origin,
                    Some(mut so_far) => {
                        if leaf_origin.trust.weaker(so_far.trust) != so_far.trust {
                            so_far.trust = leaf_origin.trust;
                            so_far.first = leaf_origin.first.clone();
                        }
                        so_far.embedded = match (so_far.embedded, leaf_origin.embedded) {
                            (Some(a), Some(b)) => Some(a.weaker(b)),
                            (a, b) => a.or(b),
                        };
                        merge(&mut so_far.tools, &leaf_origin.tools);
                        merge(&mut so_far.labels, &leaf_origin.labels);
                        so_far
                    }
                });
            }
            args.push((name.clone(), origin.unwrap_or_default()));
        }
        Self {
            args,
            sourced,
            complete,
        }
    }

    /// Does the grant's source entry `entry` take `value`, as the call gives it?
    pub fn sourced(&self, entry: &str, value: &str) -> bool {
        self.sourced
            .iter()
            .any(|s| s.entry == entry && s.value == value)
    }

    /// The origin of argument `name`.
    pub fn arg(&self, name: &str) -> Option<&Origin> {
        self.args.iter().find(|(n, _)| n == name).map(|(_, o)| o)
    }

    /// The labels of every result any argument came from.
    pub fn labels(&self) -> Vec<String> {
        let mut labels = Vec::new();
        for (_, origin) in &self.args {
            merge(&mut labels, &origin.labels);
        }
        labels
    }
}

fn note(origin: &mut Origin, seen: Option<&Seen>) {
    if let Some(seen) = seen {
        merge(&mut origin.tools, &seen.tools);
        merge(&mut origin.labels, &seen.labels);
    }
}

/// `from` added to the sorted, distinct `into`.
fn merge(into: &mut Vec<String>, from: &[String]) {
    for item in from {
        if let Err(at) = into.binary_search(item) {
            into.insert(at, item.clone());
        }
    }
}

/// A sentence a person reviewing the call can judge: where the value of `name` came from.
pub fn describe(name: &str, value: &str, origin: &Origin, offset: crate::UtcOffset) -> String {
    let shown = shorten(value);
    match (&origin.first, origin.trust) {
        (_, Trust::Intent) => {
            format!("{name} `{shown}` is named by the grant (the task as issued)")
        }
        (Some(first), trust) if first.tool.is_empty() => format!(
            "{name} `{shown}` appeared earlier in this session in {} (the details were let go to keep the session's memory bounded)",
            match trust {
                Trust::Trusted => "a field the catalog trusts",
                _ => "content the catalog does not trust",
            }
        ),
        (Some(first), trust) => {
            let time = crate::LocalTime::at(first.at, offset);
            let whose = match trust {
                Trust::Trusted => "a field the catalog trusts",
                Trust::Untrusted => "content the catalog does not trust",
                Trust::Intent | Trust::Unseen => "a result",
            };
            format!(
                "{name} `{shown}` first appeared in {} of {}'s result, {whose}, {:02}:{:02}",
                field_words(&first.field),
                first.tool,
                time.hour,
                time.minute
            )
        }
        (None, _) => format!(
            "{name} `{shown}` appeared in no result this session has seen, and the grant does not name it"
        ),
    }
}

fn field_words(field: &str) -> String {
    if field.starts_with("content/") {
        return format!("the text `{field}`");
    }
    let last = field
        .rsplit('/')
        .find(|s| s.parse::<usize>().is_err())
        .unwrap_or(field);
    format!("`{last}` (`{field}`)")
}

fn shorten(value: &str) -> String {
    const SHOWN: usize = 48;
    if value.chars().count() <= SHOWN {
        return value.to_owned();
    }
    let mut shown: String = value.chars().take(SHOWN).collect();
    shown.push('…');
    shown
}

#[cfg(test)]
mod tests;
