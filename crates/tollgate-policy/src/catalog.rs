//! The tool catalog: what each tool does to the world (its action class), how risky it is, and
//! which of its arguments name resources. The operator writes it; MCP annotations are only
//! defaults, and nothing an upstream says can make a tool less restricted than the catalog.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    pattern::glob_match,
    provenance::{FieldPattern, OutputTrust, Trust},
    resource::ResourceKind,
};

/// What an argument the catalog marks `redact` reads as in a record.
pub const REDACTED: &str = "[redacted]";

/// What a tool does to the world, from least to most restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionClass {
    Read,
    Write,
    Egress,
    Execute,
    Payment,
    Approve,
    Revoke,
    Admin,
}

impl ActionClass {
    /// The class of a tool nothing is known about.
    pub const MOST_RESTRICTED: Self = Self::Admin;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Egress => "egress",
            Self::Execute => "execute",
            Self::Payment => "payment",
            Self::Approve => "approve",
            Self::Revoke => "revoke",
            Self::Admin => "admin",
        }
    }

    /// The risk a class carries when the catalog names none.
    pub fn default_risk(self) -> Risk {
        match self {
            Self::Read => Risk::Low,
            Self::Write | Self::Egress => Risk::Medium,
            Self::Execute | Self::Payment => Risk::High,
            Self::Approve | Self::Revoke | Self::Admin => Risk::Critical,
        }
    }
}

impl std::str::FromStr for ActionClass {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        [
            Self::Read,
            Self::Write,
            Self::Egress,
            Self::Execute,
            Self::Payment,
            Self::Approve,
            Self::Revoke,
            Self::Admin,
        ]
        .into_iter()
        .find(|class| class.as_str() == s)
        .ok_or(())
    }
}

impl std::fmt::Display for ActionClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much harm a wrong call can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// The MCP annotations an upstream declared for a tool: untrusted hints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub open_world: Option<bool>,
}

impl Hints {
    /// The class the hints suggest, if they suggest any.
    fn implied_class(&self) -> Option<ActionClass> {
        let mut class = None;
        let mut raise =
            |c: ActionClass| class = Some(class.map_or(c, |old: ActionClass| old.max(c)));
        if self.read_only == Some(true) {
            raise(ActionClass::Read);
        }
        if self.read_only == Some(false) || self.destructive == Some(true) {
            raise(ActionClass::Write);
        }
        if self.open_world == Some(true) {
            raise(ActionClass::Egress);
        }
        class
    }
}

/// One catalog entry as the operator writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    /// The tool's exposed name, or a glob over names (`fs.read_*`; `*` any run, `?` one
    /// character).
    pub tool: String,
    pub class: ActionClass,
    #[serde(default)]
    pub risk: Option<Risk>,
    /// Which arguments name resources, and of what kind (`path`, `url`, or a name such as
    /// `customer` or `repo`).
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceKind>,
    /// Labels a session picks up once it calls this tool, which later decisions see as
    /// `context.taint`: `untrusted_content` for what reads the outside world (web pages,
    /// mail, issues), `secret_read` for credential stores.
    #[serde(default)]
    pub taints: Vec<String>,
    /// Arguments whose values a person reviewing the call never sees (card numbers, message
    /// bodies): `[redacted]` in the trail, in logs and to approvers.
    #[serde(default)]
    pub redact: Vec<String>,
    /// Of the `redact` arguments, those an approver deciding a held call sees in full (a
    /// payee's account number): still `[redacted]` in the trail and everywhere else. Where two
    /// entries take a tool, an argument is shown only if every entry that redacts it says so.
    #[serde(default)]
    pub shown_to_approvers: Vec<String>,
    /// Arguments that say where the call's side effect goes (payee, recipient, URL, path
    /// written): policies see where their values came from as `context.provenance.targets`.
    #[serde(default)]
    pub targets: Vec<String>,
    /// How far what the tool returns is trusted as the source of a later call's values:
    /// `untrusted` (the default: mail, messages, web pages) or `trusted`.
    #[serde(default)]
    pub output: Option<OutputLevel>,
    /// Fields of the output (JSON pointers into its structured content; `*` one key or index,
    /// `**` any depth) trusted whatever `output` says: a transaction's counterparty as the bank
    /// records it.
    #[serde(default)]
    pub trusted_fields: Vec<String>,
    /// Fields never trusted whatever `output` or `trusted_fields` say: a transaction's free-text
    /// subject, a message body.
    #[serde(default)]
    pub untrusted_fields: Vec<String>,
}

/// How far a tool's output is trusted, as the catalog says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputLevel {
    Trusted,
    Untrusted,
}

/// Why a catalog cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog entry {index}: `tool` must not be empty")]
    EmptyPattern { index: usize },
    #[error("catalog entry {index} (`{tool}`): argument name `{argument}` is not a plain name")]
    BadArgument {
        index: usize,
        tool: String,
        argument: String,
    },
    #[error(
        "catalog entry {index} (`{tool}`): field `{field}` is not a JSON pointer (it starts with `/`: `/transactions/*/counterparty`)"
    )]
    BadField {
        index: usize,
        tool: String,
        field: String,
    },
    #[error("catalog entry {index} (`{tool}`): taint `{taint}` is not a plain label (a-z 0-9 _ -)")]
    BadTaint {
        index: usize,
        tool: String,
        taint: String,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    pattern: String,
    class: ActionClass,
    risk: Risk,
    resources: Vec<(String, ResourceKind)>,
    taints: Vec<String>,
    redact: Vec<String>,
    shown_to_approvers: Vec<String>,
    targets: Vec<String>,
    output: Option<OutputLevel>,
    trusted_fields: Vec<FieldPattern>,
    untrusted_fields: Vec<FieldPattern>,
}

/// What the catalog says of one tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub class: ActionClass,
    pub risk: Risk,
    pub source: Source,
    /// Argument name → the kind of resource it names.
    pub resources: Vec<(String, ResourceKind)>,
    /// The labels a call of this tool gives its session, sorted.
    pub taints: Vec<String>,
    /// The arguments the trail, logs and reviewers see redacted, sorted.
    pub redact: Vec<String>,
    /// Of those, the arguments an approver of a held call sees in full, sorted.
    pub shown_to_approvers: Vec<String>,
    /// The arguments that say where the side effect goes, sorted.
    pub targets: Vec<String>,
    /// How far what the tool returns is trusted.
    pub output: std::sync::Arc<OutputTrust>,
}

/// Where a classification came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The catalog entries whose patterns matched.
    Catalog { patterns: Vec<String> },
    /// No entry matched; the upstream's annotations, trusted as defaults by configuration.
    Annotations,
    /// Nothing known: the most restricted class.
    Unknown,
}

/// The operator's catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: Vec<Entry>,
    trust_annotations: bool,
}

impl Catalog {
    /// Checks the entries once. `trust_annotations` lets a tool with no entry take the class its
    /// MCP annotations suggest instead of the most restricted one.
    pub fn new(entries: Vec<EntryConfig>, trust_annotations: bool) -> Result<Self, CatalogError> {
        let mut checked = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            if entry.tool.trim().is_empty() {
                return Err(CatalogError::EmptyPattern { index });
            }
            for (argument, kind) in &entry.resources {
                let plain = |name: &str| {
                    !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                };
                // `owner/repo` joins two arguments into one named resource (`repo:acme/web`).
                let composite = matches!(kind, ResourceKind::Named(_))
                    && argument.contains('/')
                    && argument.split('/').all(plain);
                if !plain(argument) && !composite {
                    return Err(CatalogError::BadArgument {
                        index,
                        tool: entry.tool.clone(),
                        argument: argument.clone(),
                    });
                }
            }
            if let Some(taint) = entry.taints.iter().find(|t| {
                t.is_empty()
                    || !t.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
            }) {
                return Err(CatalogError::BadTaint {
                    index,
                    tool: entry.tool.clone(),
                    taint: taint.clone(),
                });
            }
            if let Some(argument) = entry.targets.iter().find(|a| {
                a.is_empty()
                    || !a
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            }) {
                return Err(CatalogError::BadArgument {
                    index,
                    tool: entry.tool.clone(),
                    argument: argument.clone(),
                });
            }
            let fields = |list: &[String]| {
                list.iter()
                    .map(|field| {
                        FieldPattern::parse(field).ok_or_else(|| CatalogError::BadField {
                            index,
                            tool: entry.tool.clone(),
                            field: field.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let trusted_fields = fields(&entry.trusted_fields)?;
            let untrusted_fields = fields(&entry.untrusted_fields)?;
            checked.push(Entry {
                targets: entry.targets,
                output: entry.output,
                trusted_fields,
                untrusted_fields,
                redact: entry.redact,
                shown_to_approvers: entry.shown_to_approvers,
                taints: entry.taints,
                risk: entry.risk.unwrap_or_else(|| entry.class.default_risk()),
                pattern: entry.tool,
                class: entry.class,
                resources: entry.resources.into_iter().collect(),
            });
        }
        Ok(Self {
            entries: checked,
            trust_annotations,
        })
    }

    /// Each entry's pattern and class, in the order written.
    pub fn entries(&self) -> impl Iterator<Item = (&str, ActionClass)> {
        self.entries.iter().map(|e| (e.pattern.as_str(), e.class))
    }

    /// `(tool pattern, argument, kind)` of every argument an entry binds as a resource.
    pub fn bindings(&self) -> impl Iterator<Item = (&str, &str, &ResourceKind)> {
        self.entries.iter().flat_map(|e| {
            e.resources
                .iter()
                .map(move |(argument, kind)| (e.pattern.as_str(), argument.as_str(), kind))
        })
    }

    /// Classifies `tool`. Every matching entry counts and the most restricted class and highest
    /// risk win, so the order of entries can never widen access; the annotations can raise a
    /// class but never lower it.
    pub fn classify(&self, tool: &str, hints: &Hints) -> Classification {
        let matching: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| glob_match(&e.pattern, tool))
            .collect();
        if let Some(first) = matching.first() {
            let mut class = first.class;
            let mut risk = first.risk;
            let mut resources: Vec<(String, ResourceKind)> = Vec::new();
            let mut taints: Vec<String> = Vec::new();
            let mut redact: Vec<String> = Vec::new();
            // Redacted by some entry that does not show it to approvers.
            let mut hidden: Vec<&String> = Vec::new();
            let mut targets: Vec<String> = Vec::new();
            // Two entries can only make an output less trusted: the whole of it is trusted
            // only if one says so and none says otherwise.
            let mut output = OutputTrust::default();
            let levels: Vec<OutputLevel> = matching.iter().filter_map(|e| e.output).collect();
            if !levels.is_empty() && levels.iter().all(|l| *l == OutputLevel::Trusted) {
                output.default = Trust::Trusted;
            }
            for entry in &matching {
                taints.extend(entry.taints.iter().cloned());
                redact.extend(entry.redact.iter().cloned());
                hidden.extend(
                    entry
                        .redact
                        .iter()
                        .filter(|r| !entry.shown_to_approvers.contains(r)),
                );
                targets.extend(entry.targets.iter().cloned());
                output.trusted.extend(entry.trusted_fields.iter().cloned());
                output
                    .untrusted
                    .extend(entry.untrusted_fields.iter().cloned());
                class = class.max(entry.class);
                risk = risk.max(entry.risk);
                for binding in &entry.resources {
                    if !resources.contains(binding) {
                        resources.push(binding.clone());
                    }
                }
            }
            if let Some(implied) = hints.implied_class()
                && implied > class
            {
                class = implied;
                risk = risk.max(implied.default_risk());
            }
            return Classification {
                class,
                risk,
                source: Source::Catalog {
                    patterns: matching.iter().map(|e| e.pattern.clone()).collect(),
                },
                resources,
                taints: {
                    taints.sort();
                    taints.dedup();
                    taints
                },
                shown_to_approvers: {
                    let mut shown: Vec<String> = redact
                        .iter()
                        .filter(|r| !hidden.contains(r))
                        .cloned()
                        .collect();
                    shown.sort();
                    shown.dedup();
                    shown
                },
                redact: {
                    redact.sort();
                    redact.dedup();
                    redact
                },
                targets: {
                    targets.sort();
                    targets.dedup();
                    targets
                },
                output: std::sync::Arc::new(output),
            };
        }
        match hints.implied_class().filter(|_| self.trust_annotations) {
            Some(class) => Classification {
                class,
                risk: class.default_risk(),
                source: Source::Annotations,
                resources: Vec::new(),
                taints: Vec::new(),
                redact: Vec::new(),
                shown_to_approvers: Vec::new(),
                targets: Vec::new(),
                output: std::sync::Arc::default(),
            },
            None => Classification {
                class: ActionClass::MOST_RESTRICTED,
                risk: ActionClass::MOST_RESTRICTED.default_risk(),
                source: Source::Unknown,
                resources: Vec::new(),
                taints: Vec::new(),
                redact: Vec::new(),
                shown_to_approvers: Vec::new(),
                targets: Vec::new(),
                output: std::sync::Arc::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tool: &str, class: ActionClass) -> EntryConfig {
        EntryConfig {
            tool: tool.into(),
            class,
            risk: None,
            resources: BTreeMap::new(),
            taints: Vec::new(),
            redact: Vec::new(),
            shown_to_approvers: Vec::new(),
            targets: Vec::new(),
            output: None,
            trusted_fields: Vec::new(),
            untrusted_fields: Vec::new(),
        }
    }

    #[test]
    fn most_restricted_matching_entry_wins_whatever_the_order() {
        let catalog = Catalog::new(
            vec![
                entry("fs.*", ActionClass::Read),
                entry("fs.write_*", ActionClass::Write),
            ],
            false,
        )
        .unwrap();
        let c = catalog.classify("fs.write_file", &Hints::default());
        assert_eq!(c.class, ActionClass::Write);
        assert_eq!(
            catalog.classify("fs.read_file", &Hints::default()).class,
            ActionClass::Read
        );
    }

    #[test]
    fn annotations_never_widen_a_catalog_entry_but_may_narrow_it() {
        let catalog = Catalog::new(vec![entry("tool", ActionClass::Write)], true).unwrap();
        let read_only = Hints {
            read_only: Some(true),
            ..Hints::default()
        };
        assert_eq!(
            catalog.classify("tool", &read_only).class,
            ActionClass::Write
        );
        let open_world = Hints {
            open_world: Some(true),
            ..Hints::default()
        };
        assert_eq!(
            catalog.classify("tool", &open_world).class,
            ActionClass::Egress
        );
    }

    #[test]
    fn unknown_tools_are_most_restricted_unless_annotations_are_trusted() {
        let hints = Hints {
            read_only: Some(true),
            ..Hints::default()
        };
        let strict = Catalog::new(vec![], false).unwrap();
        let c = strict.classify("mystery", &hints);
        assert_eq!((c.class, c.source), (ActionClass::Admin, Source::Unknown));
        let trusting = Catalog::new(vec![], true).unwrap();
        let c = trusting.classify("mystery", &hints);
        assert_eq!(
            (c.class, c.source),
            (ActionClass::Read, Source::Annotations)
        );
        assert_eq!(
            trusting.classify("mystery", &Hints::default()).class,
            ActionClass::Admin
        );
    }

    #[test]
    fn catalog_rejects_bad_entries() {
        assert!(Catalog::new(vec![entry(" ", ActionClass::Read)], false).is_err());
        let mut bad = entry("t", ActionClass::Read);
        bad.resources.insert("a.b".into(), ResourceKind::Path);
        assert!(Catalog::new(vec![bad], false).is_err());
    }
}
