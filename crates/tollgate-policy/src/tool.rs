//! What the engine knows of one tool: its names, its untrusted annotations, the root its
//! relative paths resolve against and its compiled input schema. Built once per tool
//! definition by whoever lists the tools, then shared by every call.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{
    args::{ArgumentError, SchemaCache, check},
    catalog::Hints,
};

#[derive(Debug, Clone)]
pub struct ToolFacts {
    name: String,
    upstream: String,
    hints: Hints,
    root: Option<String>,
    schema: Result<Arc<jsonschema::Validator>, String>,
    plan_key: String,
    /// The tool's name at its upstream and the digest of its definition, for pinning.
    definition: Option<(String, String)>,
    /// The record of this definition the audit trail keeps, and its key.
    entry: Option<ToolEntry>,
}

impl ToolFacts {
    /// `name` is the exposed name (the one the catalog and the agent use); `schema` is the
    /// compiled `inputSchema`, or why it could not be compiled (then every call is refused).
    pub fn new(
        name: impl Into<String>,
        upstream: impl Into<String>,
        hints: Hints,
        root: Option<String>,
        schema: Result<Arc<jsonschema::Validator>, String>,
    ) -> Self {
        let name = name.into();
        let upstream = upstream.into();
        let plan_key = format!(
            "{name}\u{0}{upstream}\u{0}{:?}{:?}{:?}",
            hints.read_only, hints.destructive, hints.open_world
        );
        Self {
            name,
            upstream,
            hints,
            root,
            schema,
            plan_key,
            definition: None,
            entry: None,
        }
    }

    /// The tool's name at its upstream and the digest of its definition (see the proxy's
    /// pins), which the lock file is checked against.
    #[must_use]
    pub fn with_definition(
        mut self,
        original: impl Into<String>,
        digest: impl Into<String>,
    ) -> Self {
        self.definition = Some((original.into(), digest.into()));
        self
    }

    /// Keeps the record of this definition (with `input_schema`, the one compiled) that audit
    /// trails hold, so that decisions naming it can be replayed.
    #[must_use]
    pub fn with_entry(mut self, input_schema: &Map<String, Value>) -> Self {
        let entry = ToolRecord::of(&self, input_schema).entry();
        self.entry = Some(Arc::new(entry));
        self
    }

    /// The trail's record of this definition and its key, when kept.
    pub fn entry(&self) -> Option<&ToolEntry> {
        self.entry.as_ref()
    }

    /// The tool's name at its upstream and its definition's digest, when known.
    pub fn definition(&self) -> Option<(&str, &str)> {
        self.definition
            .as_ref()
            .map(|(name, digest)| (name.as_str(), digest.as_str()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn hints(&self) -> &Hints {
        &self.hints
    }

    pub fn root(&self) -> Option<&str> {
        self.root.as_deref()
    }

    pub(crate) fn plan_key(&self) -> &str {
        &self.plan_key
    }

    /// Checks `arguments` against the tool's input schema.
    pub fn validate(&self, arguments: Option<&Map<String, Value>>) -> Result<(), ArgumentError> {
        check(&self.name, self.schema.as_deref(), arguments)
    }
}

/// The `kind` of a tool definition record.
pub const TOOL_KIND: &str = "tool";

/// One tool's definition as the engine saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRecord {
    /// The exposed name.
    pub name: String,
    pub upstream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world: Option<bool>,
    pub input_schema: Map<String, Value>,
}

impl ToolRecord {
    pub fn of(facts: &ToolFacts, input_schema: &Map<String, Value>) -> Self {
        let hints = facts.hints();
        Self {
            name: facts.name().to_owned(),
            upstream: facts.upstream().to_owned(),
            root: facts.root().map(str::to_owned),
            read_only: hints.read_only,
            destructive: hints.destructive,
            open_world: hints.open_world,
            input_schema: input_schema.clone(),
        }
    }

    /// The facts this record describes, its schema compiled through `schemas`.
    pub fn facts(&self, schemas: &SchemaCache) -> ToolFacts {
        ToolFacts::new(
            self.name.clone(),
            self.upstream.clone(),
            Hints {
                read_only: self.read_only,
                destructive: self.destructive,
                open_world: self.open_world,
            },
            self.root.clone(),
            schemas.compile(&self.input_schema),
        )
    }

    /// The record as the trail writes it, and the key decisions name it by: `tool:` and the
    /// SHA-256 of its JSON.
    pub fn entry(&self) -> (String, Map<String, Value>) {
        let mut record = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let digest = Sha256::digest(Value::Object(record.clone()).to_string().as_bytes());
        let key = format!("tool:{}", hex(&digest));
        record.insert("kind".into(), Value::from(TOOL_KIND));
        record.insert("key".into(), Value::from(key.clone()));
        (key, record)
    }
}

/// Keeps a [`ToolFacts`]' record beside it: built once per definition, named by its key.
pub type ToolEntry = Arc<(String, Map<String, Value>)>;

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
