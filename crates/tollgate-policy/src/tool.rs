//! What the engine knows of one tool: its names, its untrusted annotations, the root its
//! relative paths resolve against and its compiled input schema. Built once per tool
//! definition by whoever lists the tools, then shared by every call.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::{
    args::{ArgumentError, check},
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
    entry: Option<crate::recorded::ToolEntry>,
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
        let entry = crate::recorded::ToolRecord::of(&self, input_schema).entry();
        self.entry = Some(Arc::new(entry));
        self
    }

    /// The trail's record of this definition and its key, when kept.
    pub fn entry(&self) -> Option<&crate::recorded::ToolEntry> {
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
