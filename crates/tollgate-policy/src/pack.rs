//! A policy pack compiled into one immutable version: the Cedar schema and policies (validated
//! strictly against it), the catalog and the purpose vocabulary. Nothing here reads files: the
//! caller hands in the texts, so a version is a pure function of them and its id is their
//! digest.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    str::FromStr,
    sync::{Arc, Mutex},
};

use cedar_policy::{
    ActionConstraint, Effect, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, PrincipalConstraint, ResourceConstraint, RestrictedExpression, Schema,
    ValidationMode, Validator,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{
    catalog::{ActionClass, Catalog, Classification, EntryConfig, Source},
    tool::ToolFacts,
};

/// The schema every pack is checked against unless it brings its own.
pub const DEFAULT_SCHEMA: &str = include_str!("../../../policies/tollgate.cedarschema");

/// The context's top-level fields, as the schema declares them.
pub(crate) const CONTEXT_FIELDS: [&str; 12] = [
    "args",
    "resources",
    "intent",
    "grant",
    "time",
    "environment",
    "client",
    "stats",
    "taint",
    "pinned",
    "path_labels",
    "provenance",
];

/// Every action class, least restricted first.
pub const CLASSES: [ActionClass; 8] = [
    ActionClass::Read,
    ActionClass::Write,
    ActionClass::Egress,
    ActionClass::Execute,
    ActionClass::Payment,
    ActionClass::Approve,
    ActionClass::Revoke,
    ActionClass::Admin,
];

/// The texts a pack is made of.
#[derive(Debug, Clone, Default)]
pub struct PackSource {
    /// The pack's name (its folder's name).
    pub name: String,
    /// `pack.toml`: the purpose vocabulary and the catalog.
    pub manifest: String,
    /// `tollgate.cedarschema` when the pack has its own; the default otherwise.
    pub schema: Option<String>,
    /// `(file name, text)` of each `.cedar` file, in name order.
    pub policies: Vec<(String, String)>,
    /// Catalog entries the deployment adds to the pack's own.
    pub extra_tools: Vec<EntryConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    /// The purposes a grant may declare under this pack.
    purposes: BTreeSet<String>,
    /// Let a tool with no catalog entry take the class its MCP annotations suggest.
    #[serde(default)]
    trust_annotations: bool,
    #[serde(default, rename = "tool")]
    tools: Vec<EntryConfig>,
    /// Limits on every session, whatever its grant.
    #[serde(default, rename = "limit")]
    limits: Vec<crate::session_limit::SessionLimit>,
    /// Labels for the paths a call touches, which policies read as `context.path_labels`.
    #[serde(default, rename = "path_label")]
    path_labels: Vec<PathLabel>,
}

/// `[[path_label]]`: a label every bound path matching one of `paths` gets. Matched against
/// the path as bound (normalized, and resolved where the filesystem is seen), so a rule on a
/// label holds whichever argument named the path and however it was spelled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathLabel {
    pub label: String,
    /// Patterns over absolute paths: `*` within a segment, `**` any number of segments
    /// (`**/.env`, `**/.git/**`); case is ignored.
    pub paths: Vec<String>,
}

impl PathLabel {
    fn validate(&self) -> Result<(), String> {
        let name_ok = !self.label.is_empty()
            && self.label.len() <= 64
            && self
                .label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !name_ok {
            return Err(format!(
                "path label `{}`: a name of lowercase letters, digits, `_` and `-`",
                self.label
            ));
        }
        if self.paths.is_empty() {
            return Err(format!("path label `{}`: `paths` is empty", self.label));
        }
        for pattern in &self.paths {
            if !(pattern.starts_with('/') || pattern.starts_with("**")) {
                return Err(format!(
                    "path label `{}`: `{pattern}` must start with `/` or `**`",
                    self.label
                ));
            }
        }
        Ok(())
    }

    /// Does some path among `resources` carry this label?
    fn marks(&self, resources: &[crate::resource::Resource]) -> bool {
        resources.iter().any(|r| {
            r.kind == "path"
                && self
                    .paths
                    .iter()
                    .any(|p| crate::pattern::label_match(p, &r.value))
        })
    }
}

/// Why a pack version cannot be used. The old version keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("`pack.toml`: {0}")]
    Manifest(String),
    #[error("schema: {0}")]
    Schema(String),
    #[error("`{file}`: {message}")]
    Parse { file: String, message: String },
    #[error("`{file}`: policy id `{id}` is used twice")]
    DuplicateId { file: String, id: String },
    #[error("`{file}`: templates are not supported; write static policies")]
    Template { file: String },
    #[error("the policies do not fit the schema:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("the pack has no policies: every call would be denied")]
    Empty,
}

/// What the engine knows of one policy beyond its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMeta {
    pub id: String,
    pub file: String,
    pub effect: Effect,
    /// `@reason("…")`: the text the agent reads when this policy decides.
    pub reason: Option<String>,
    /// `@needs_approval`: a permit that only allows once a person approves.
    pub needs_approval: bool,
    /// `@approvers("finance")`: the group whose members may approve what this policy gates.
    pub approvers: Option<String>,
    /// `@quarantine`: a forbid that, when it denies, holds the whole session for review.
    pub quarantine: bool,
    /// `@in_band`: the user at the agent may approve what this policy gates (MCP
    /// elicitation), besides the approvers out of band.
    pub in_band: bool,
}

/// The policies and entities a call of one tool is judged with, built once per version.
#[derive(Debug)]
pub(crate) struct ToolPlan {
    pub classification: Classification,
    pub slice: PolicySet,
    pub tool: Entity,
    pub upstream: Entity,
    pub tool_uid: EntityUid,
    pub action: EntityUid,
    /// The slice holds a permit, and no forbid that holds whatever the call.
    pub may_allow: bool,
    /// The entities of a call of this tool, by caller: built once per session, not per call.
    pub entities: Mutex<HashMap<String, Arc<cedar_policy::Entities>>>,
    /// Which of the context's top-level fields some policy of the slice names.
    reads: [bool; CONTEXT_FIELDS.len()],
}

impl ToolPlan {
    /// Can a policy of this plan's slice read context field `field`?
    pub(crate) fn reads(&self, field: &str) -> bool {
        CONTEXT_FIELDS
            .iter()
            .zip(self.reads)
            .any(|(f, read)| *f == field && read)
    }
}

/// One compiled, immutable version of a pack.
pub struct Pack {
    name: String,
    version: String,
    schema: Schema,
    policies: PolicySet,
    meta: BTreeMap<String, PolicyMeta>,
    catalog: Catalog,
    purposes: BTreeSet<String>,
    limits: Vec<crate::session_limit::SessionLimit>,
    path_labels: Vec<PathLabel>,
    actions: Vec<Entity>,
    /// Each class's action and the groups it is in.
    action_lineage: BTreeMap<ActionClass, HashSet<EntityUid>>,
    warnings: Vec<String>,
    plans: Mutex<HashMap<String, Arc<ToolPlan>>>,
}

impl std::fmt::Debug for Pack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pack")
            .field("version", &self.version)
            .field("policies", &self.meta.len())
            .finish_non_exhaustive()
    }
}

/// The entity types calls are made of, parsed once: parsing a name costs more than the rest
/// of building a request.
pub(crate) struct Types {
    pub session: EntityTypeName,
    pub agent: EntityTypeName,
    pub user: EntityTypeName,
    pub tool: EntityTypeName,
    pub upstream: EntityTypeName,
    pub action: EntityTypeName,
}

pub(crate) static TYPES: std::sync::LazyLock<Types> = std::sync::LazyLock::new(|| Types {
    session: type_name("Session"),
    agent: type_name("Agent"),
    user: type_name("User"),
    tool: type_name("Tool"),
    upstream: type_name("Upstream"),
    action: type_name("Action"),
});

#[expect(
    clippy::expect_used,
    reason = "only called with the schema's own identifiers, which always parse"
)]
fn type_name(kind: &'static str) -> EntityTypeName {
    EntityTypeName::from_str(kind).expect("a plain identifier is a type name")
}

/// The uid of entity `id` of type `kind`.
pub(crate) fn uid(kind: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
}

impl Pack {
    /// Compiles and validates `source`. Any problem rejects the whole version.
    pub fn compile(source: &PackSource) -> Result<Self, PackError> {
        let manifest: Manifest = toml::from_str(&source.manifest)
            .map_err(|e| PackError::Manifest(e.message().to_owned()))?;
        if manifest.purposes.is_empty() {
            return Err(PackError::Manifest(
                "`purposes` must name at least one purpose".to_owned(),
            ));
        }
        for (i, limit) in manifest.limits.iter().enumerate() {
            limit.validate().map_err(PackError::Manifest)?;
            if manifest.limits.iter().take(i).any(|l| l.id == limit.id) {
                return Err(PackError::Manifest(format!(
                    "limit `{}` is defined twice",
                    limit.id
                )));
            }
        }
        for label in &manifest.path_labels {
            label.validate().map_err(PackError::Manifest)?;
        }
        let mut tools = manifest.tools;
        tools.extend(source.extra_tools.iter().cloned());
        let catalog = Catalog::new(tools, manifest.trust_annotations)
            .map_err(|e| PackError::Manifest(e.to_string()))?;
        let schema_text = source.schema.as_deref().unwrap_or(DEFAULT_SCHEMA);
        let (schema, _) = Schema::from_cedarschema_str(schema_text)
            .map_err(|e| PackError::Schema(one_line(&e)))?;

        let mut policies = PolicySet::new();
        let mut meta = BTreeMap::new();
        for (file, text) in &source.policies {
            let parsed = PolicySet::from_str(text).map_err(|e| PackError::Parse {
                file: file.clone(),
                message: one_line(&e),
            })?;
            if parsed.templates().next().is_some() {
                return Err(PackError::Template { file: file.clone() });
            }
            let stem = file.trim_end_matches(".cedar");
            for (index, policy) in parsed.policies().enumerate() {
                let id = policy
                    .annotation("id")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{stem}#{index}"));
                let renamed = policy.new_id(PolicyId::new(&id));
                if meta.contains_key(&id) {
                    return Err(PackError::DuplicateId {
                        file: file.clone(),
                        id,
                    });
                }
                meta.insert(
                    id.clone(),
                    PolicyMeta {
                        id: id.clone(),
                        file: file.clone(),
                        effect: renamed.effect(),
                        reason: renamed.annotation("reason").map(str::to_owned),
                        needs_approval: renamed
                            .annotation("needs_approval")
                            .is_some_and(|v| v != "false"),
                        quarantine: renamed
                            .annotation("quarantine")
                            .is_some_and(|v| v != "false"),
                        in_band: renamed.annotation("in_band").is_some_and(|v| v != "false"),
                        approvers: renamed
                            .annotation("approvers")
                            .filter(|g| !g.is_empty())
                            .map(str::to_owned),
                    },
                );
                policies.add(renamed).map_err(|e| PackError::DuplicateId {
                    file: file.clone(),
                    id: format!("{id} ({})", one_line(&e)),
                })?;
            }
        }
        if meta.is_empty() {
            return Err(PackError::Empty);
        }
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        let errors: Vec<String> = validation
            .validation_errors()
            .map(|e| format!("  {}: {}", e.policy_id(), one_line(e)))
            .collect();
        if !errors.is_empty() {
            return Err(PackError::Invalid(errors));
        }
        let warnings = validation
            .validation_warnings()
            .map(|w| format!("{}: {}", w.policy_id(), one_line(w)))
            .collect();

        let action_entities = schema
            .action_entities()
            .map_err(|e| PackError::Schema(one_line(&e)))?;
        let mut action_lineage = BTreeMap::new();
        for class in CLASSES {
            let action = uid(&TYPES.action, class.as_str());
            let Some(ancestors) = action_entities.ancestors(&action) else {
                return Err(PackError::Schema(format!(
                    "the schema declares no action `{class}`"
                )));
            };
            let mut lineage: HashSet<EntityUid> = ancestors.cloned().collect();
            lineage.insert(action);
            action_lineage.insert(class, lineage);
        }
        let actions = action_entities.iter().cloned().collect();

        let mut digest = Sha256::new();
        let extra = format!("{:?}", source.extra_tools);
        for part in [source.manifest.as_str(), schema_text, extra.as_str()] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part.as_bytes());
        }
        for (file, text) in &source.policies {
            for part in [file, text] {
                digest.update((part.len() as u64).to_le_bytes());
                digest.update(part.as_bytes());
            }
        }
        let hash = digest.finalize();
        let short: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();

        Ok(Self {
            name: source.name.clone(),
            version: format!("{}@{short}", source.name),
            schema,
            policies,
            meta,
            catalog,
            purposes: manifest.purposes,
            limits: manifest.limits,
            path_labels: manifest.path_labels,
            actions,
            action_lineage,
            warnings,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// `name@digest`: names this exact version in every decision.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    pub fn meta(&self) -> &BTreeMap<String, PolicyMeta> {
        &self.meta
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn purposes(&self) -> &BTreeSet<String> {
        &self.purposes
    }

    /// The labels of the paths among `resources`, in the pack's order, each once.
    pub fn path_labels(&self, resources: &[crate::resource::Resource]) -> Vec<&str> {
        let mut labels: Vec<&str> = Vec::new();
        for label in &self.path_labels {
            if !labels.contains(&label.label.as_str()) && label.marks(resources) {
                labels.push(&label.label);
            }
        }
        labels
    }

    /// The `[[limit]]`s every session is held to.
    pub fn session_limits(&self) -> &[crate::session_limit::SessionLimit] {
        &self.limits
    }

    /// The validator's warnings (policies that are always false, for instance).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub(crate) fn action_entities(&self) -> &[Entity] {
        &self.actions
    }

    /// The plan for calls of `tool`, made on first use and kept for this version.
    pub(crate) fn plan(&self, tool: &ToolFacts) -> Arc<ToolPlan> {
        let key = tool.plan_key();
        let mut plans = self
            .plans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(plan) = plans.get(key) {
            return Arc::clone(plan);
        }
        let plan = Arc::new(self.make_plan(tool));
        plans.insert(key.to_owned(), Arc::clone(&plan));
        plan
    }

    fn make_plan(&self, tool: &ToolFacts) -> ToolPlan {
        let classification = self.catalog.classify(tool.name(), tool.hints());
        let class = classification.class;
        let tool_uid = uid(&TYPES.tool, tool.name());
        let upstream_uid = uid(&TYPES.upstream, tool.upstream());
        let action = uid(&TYPES.action, class.as_str());
        let lineage = self.action_lineage.get(&class).cloned().unwrap_or_default();
        let resource_lineage: HashSet<EntityUid> = [tool_uid.clone(), upstream_uid.clone()]
            .into_iter()
            .collect();
        let resource_admits =
            |policy: &Policy| resource_admits(policy, &tool_uid, &resource_lineage);

        let mut slice = PolicySet::new();
        // A field no policy of the slice names cannot change its decision, so it is left out of
        // the context. A policy can only reach a field by writing its name (Cedar computes no
        // attribute names), and strict validation refuses comparing the whole context or one of
        // its records with a record of another shape; so a name search is a sound test.
        let mut reads = [false; CONTEXT_FIELDS.len()];
        let mut has_permit = false;
        let mut unconditional_forbid = false;
        for policy in self.policies.policies() {
            if !action_admits(policy, &lineage) || !resource_admits(policy) {
                continue;
            }
            match policy.effect() {
                Effect::Permit => has_permit = true,
                Effect::Forbid => {
                    if !policy.has_non_scope_constraint()
                        && matches!(policy.principal_constraint(), PrincipalConstraint::Any)
                    {
                        unconditional_forbid = true;
                    }
                }
            }
            let text = policy.to_string();
            for (read, field) in reads.iter_mut().zip(CONTEXT_FIELDS) {
                *read = *read || text.contains(field);
            }
            // Ids are unique in the full set, so they are in any part of it.
            let _ = slice.add(policy.clone());
        }

        let source = match &classification.source {
            Source::Catalog { .. } => "catalog",
            Source::Annotations => "annotations",
            Source::Unknown => "unknown",
        };
        let attrs: HashMap<String, RestrictedExpression> = [
            ("name", tool.name()),
            ("upstream", tool.upstream()),
            ("class", class.as_str()),
            ("risk", classification.risk.as_str()),
            ("classified_by", source),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), RestrictedExpression::new_string(v.to_owned())))
        .collect();
        let tool_entity = Entity::new(tool_uid.clone(), attrs, [upstream_uid.clone()].into())
            .unwrap_or_else(|_| {
                Entity::new_no_attrs(tool_uid.clone(), [upstream_uid.clone()].into())
            });
        ToolPlan {
            classification,
            slice,
            tool: tool_entity,
            upstream: Entity::new_no_attrs(upstream_uid, HashSet::new()),
            tool_uid,
            action,
            may_allow: has_permit && !unconditional_forbid,
            entities: Mutex::new(HashMap::new()),
            reads,
        }
    }
}

fn action_admits(policy: &Policy, lineage: &HashSet<EntityUid>) -> bool {
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => lineage.contains(&a),
        ActionConstraint::In(list) => list.iter().any(|a| lineage.contains(a)),
    }
}

fn resource_admits(policy: &Policy, tool: &EntityUid, lineage: &HashSet<EntityUid>) -> bool {
    let is_tool = |t: &EntityTypeName| t.to_string() == "Tool";
    match policy.resource_constraint() {
        ResourceConstraint::Any => true,
        ResourceConstraint::Eq(r) => r == *tool,
        ResourceConstraint::In(r) => lineage.contains(&r),
        ResourceConstraint::Is(t) => is_tool(&t),
        ResourceConstraint::IsIn(t, r) => is_tool(&t) && lineage.contains(&r),
    }
}

/// An error's text on one line, for messages.
pub(crate) fn one_line(error: &dyn std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
