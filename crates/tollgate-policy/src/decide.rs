//! One decision: a pure function of (pack version, grant, call, context). The steps run in a
//! fixed order and the first that says no decides: the tool's class, its arguments against the
//! schema, the resources they name, the grant, then Cedar over the policies whose scope can
//! apply to this tool and action (forbid wins, no permit denies, an evaluation error denies).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, Request, RestrictedExpression,
};
use serde_json::{Map, Value};

use crate::{
    catalog::{ActionClass, Risk},
    clock::{LocalTime, UtcOffset},
    grant::{Charge, Grant, Usage},
    pack::{CLASSES, CONTEXT_FIELDS, Pack, TYPES, ToolPlan, one_line, uid},
    resource::{PathView, Resource, bind_seen},
    tool::ToolFacts,
};

/// The three outcomes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
    NeedsApproval,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::NeedsApproval => "needs_approval",
        }
    }
}

/// Ids of the steps before Cedar, used where a policy id would be.
pub mod step {
    pub const ARGUMENTS: &str = "tollgate:arguments";
    pub const RESOURCES: &str = "tollgate:resources";
    pub const GRANT: &str = "tollgate:grant";
    pub const PURPOSE: &str = "tollgate:purpose";
    pub const DEFAULT_DENY: &str = "tollgate:default-deny";
    pub const EVALUATION: &str = "tollgate:evaluation-error";
}

/// How one policy went for a call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum PolicyOutcome {
    /// Its scope and conditions hold for this call.
    Satisfied,
    NotSatisfied,
    /// It failed to evaluate (which denies the call).
    Errored(String),
    /// The call could not be put to Cedar at all.
    NotEvaluated(String),
}

/// One policy in an explanation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyVerdict {
    pub id: String,
    pub file: String,
    pub permit: bool,
    pub needs_approval: bool,
    pub reason: Option<String>,
    /// It is among the policies that determined the decision.
    pub determining: bool,
    #[serde(flatten)]
    pub outcome: PolicyOutcome,
}

/// A decision with every policy that could apply to the call and how each went.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub decision: Decision,
    pub class: ActionClass,
    /// The policies whose scope can match this tool and action, by id.
    pub considered: Vec<PolicyVerdict>,
    /// How many policies of the pack cannot apply to this tool and action at all.
    pub out_of_scope: usize,
}

/// A decision and what determined it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub effect: Effect,
    /// The policies (or steps) that determined it.
    pub policies: Vec<String>,
    /// Texts a person (and the agent) can read. Never policy text or another session's data.
    pub reasons: Vec<String>,
    /// The pack version that decided.
    pub version: String,
    pub class: ActionClass,
    pub risk: Risk,
    /// The resources the call touches.
    pub resources: Vec<Resource>,
    /// The paths the filesystem resolved to something other than their lexical form
    /// (lexical, resolved), for the record replay reads.
    pub resolved: Vec<(String, String)>,
    /// What an allowed call adds to its grant's limits.
    pub charges: Vec<Charge>,
    /// For the operator's log only, never the agent: why evaluation failed.
    pub detail: Option<String>,
    /// The labels the session picks up if the call goes ahead (from the catalog).
    pub taints: Vec<String>,
    /// For a call that needs approval: the groups the gating policies name (`@approvers`);
    /// empty when any approver may decide.
    pub approvers: Vec<String>,
    /// A `@quarantine` forbid denied the call: the session is to be held for review.
    pub quarantine: bool,
    /// For a call that needs approval: every gating policy says `@in_band`, so the user at
    /// the agent may approve it too (where configuration allows it for the call's class).
    pub in_band: bool,
    /// The arguments a reviewer sees redacted (from the catalog).
    pub redact: Vec<String>,
    /// The arguments that say where the side effect goes (from the catalog).
    pub targets: Vec<String>,
}

impl Decision {
    /// A denial no step has determined yet, of a call of `class` and `risk` under pack
    /// `version`: where every decision starts (deny is the default).
    pub fn undecided(version: impl Into<String>, class: ActionClass, risk: Risk) -> Self {
        Self {
            effect: Effect::Deny,
            policies: Vec::new(),
            reasons: Vec::new(),
            version: version.into(),
            class,
            risk,
            resources: Vec::new(),
            resolved: Vec::new(),
            charges: Vec::new(),
            detail: None,
            taints: Vec::new(),
            approvers: Vec::new(),
            quarantine: false,
            in_band: false,
            redact: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// `arguments` as a person reviewing the call may see them: the catalog's redacted
    /// arguments replaced, wherever they are nested.
    pub fn redacted<'v>(&self, arguments: &'v Value) -> std::borrow::Cow<'v, Value> {
        fn walk(value: &Value, names: &[String]) -> Value {
            match value {
                Value::Object(map) => Value::Object(
                    map.iter()
                        .map(|(k, v)| {
                            let shown = if names.contains(k) {
                                Value::String(crate::catalog::REDACTED.to_owned())
                            } else {
                                walk(v, names)
                            };
                            (k.clone(), shown)
                        })
                        .collect(),
                ),
                Value::Array(items) => Value::Array(items.iter().map(|v| walk(v, names)).collect()),
                other => other.clone(),
            }
        }
        if self.redact.is_empty() {
            std::borrow::Cow::Borrowed(arguments)
        } else {
            std::borrow::Cow::Owned(walk(arguments, &self.redact))
        }
    }
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        self.effect == Effect::Allow
    }

    /// The reasons as one line for the agent.
    pub fn reason_text(&self) -> String {
        self.reasons.join("; ")
    }
}

/// The deployment the engine runs in.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The operator's label (`dev`, `prod`, …).
    pub label: String,
    pub offset: UtcOffset,
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            label: "dev".to_owned(),
            offset: UtcOffset::UTC,
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, Default)]
pub struct SessionFacts {
    pub id: String,
    /// `stdio` or `http`.
    pub transport: String,
    /// The peer address for HTTP.
    pub address: String,
}

/// What the session did before this call. A decision record keeps it as it is, with
/// `by_class` as a map of the classes with calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionStats {
    pub calls: u64,
    pub calls_last_minute: u64,
    pub denials: u64,
    /// Denied calls in the minute before this one: a session probing its limits.
    pub denials_last_minute: u64,
    /// Calls in the ten seconds before this one: with `per_minute`, a burst.
    pub calls_last_10s: u64,
    /// The session's own average rate: calls per minute over its life (at least a minute).
    pub per_minute: u64,
    /// Allowed calls by class, in [`CLASSES`] order.
    #[serde(with = "by_class")]
    pub by_class: [u64; 8],
}

/// One call to decide.
#[derive(Debug, Clone, Copy)]
pub struct CallInput<'a> {
    pub session: &'a SessionFacts,
    /// `None` for an anonymous session.
    pub grant: Option<&'a Grant>,
    pub tool: &'a ToolFacts,
    pub arguments: Option<&'a Map<String, Value>>,
    /// The agent's `_meta` justification for this call (untrusted).
    pub justification: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
    pub env: &'a Environment,
    pub stats: &'a SessionStats,
    pub usage: &'a Usage,
    pub taint: &'a [String],
    /// The tool's definition is the one pinned in the lock file.
    pub pinned: bool,
    /// How the upstream's filesystem resolves paths; `None` binds them lexically only.
    pub paths: Option<&'a dyn PathView>,
    /// Where each argument's value came from; `None` where nothing was looked up (every
    /// argument then reads as `unseen`).
    pub provenance: Option<&'a crate::provenance::Provenance>,
}

impl Pack {
    /// Decides one call.
    pub fn decide(&self, call: &CallInput<'_>) -> Decision {
        let plan = self.plan(call.tool);
        let mut decision = Decision {
            taints: plan.classification.taints.clone(),
            redact: plan.classification.redact.clone(),
            targets: plan.classification.targets.clone(),
            ..Decision::undecided(
                self.version(),
                plan.classification.class,
                plan.classification.risk,
            )
        };
        let deny = |mut d: Decision, step: &str, reason: String| {
            d.effect = Effect::Deny;
            d.policies = vec![step.to_owned()];
            d.reasons = vec![reason];
            d
        };
        if let Err(e) = call.tool.validate(call.arguments) {
            return deny(decision, step::ARGUMENTS, e.to_string());
        }
        match bind_seen(
            call.arguments,
            &plan.classification.resources,
            call.tool.root(),
            call.paths,
        ) {
            Ok(bound) => {
                decision.resources = bound.resources;
                decision.resolved = bound.resolved;
            }
            Err(e) => return deny(decision, step::RESOURCES, e.to_string()),
        }
        if let Some(grant) = call.grant {
            if !self.purposes().contains(&grant.purpose) {
                let reason = format!(
                    "grant {} declares purpose `{}`, which this policy pack does not know",
                    grant.id, grant.purpose
                );
                return deny(decision, step::PURPOSE, reason);
            }
            let scope = crate::grant::CallScope {
                tool: call.tool.name(),
                class: plan.classification.class,
                resources: &decision.resources,
                arguments: call.arguments,
            };
            match grant
                .admits(&scope, call.now)
                .and_then(|charges| grant.check_limits(call.usage, &charges).map(|()| charges))
            {
                Ok(charges) => decision.charges = charges,
                Err(e) => return deny(decision, step::GRANT, e.to_string()),
            }
        }
        self.judge(&plan, call, decision)
    }

    /// How far what `tool` returns is trusted, and the labels its results carry (the catalog's
    /// `taints`): what indexing its results needs.
    pub fn output_of(
        &self,
        tool: &ToolFacts,
    ) -> (std::sync::Arc<crate::provenance::OutputTrust>, Vec<String>) {
        let plan = self.plan(tool);
        (
            std::sync::Arc::clone(&plan.classification.output),
            plan.classification.taints.clone(),
        )
    }

    /// Could this session ever be allowed to call `tool`? Used to filter `tools/list`: a tool
    /// that the grant or the policies exclude whatever the arguments is not shown.
    pub fn visible(&self, grant: Option<&Grant>, tool: &ToolFacts, now: i64) -> bool {
        let plan = self.plan(tool);
        if let Some(grant) = grant
            && (!self.purposes().contains(&grant.purpose)
                || grant.check_time(now).is_err()
                || grant
                    .admits_tool(tool.name(), plan.classification.class)
                    .is_err())
        {
            return false;
        }
        plan.may_allow
    }

    /// The Cedar request and entities for `call`, with `resources` bound.
    fn request(
        &self,
        plan: &ToolPlan,
        call: &CallInput<'_>,
        resources: &[Resource],
    ) -> Result<(Request, Arc<Entities>), String> {
        self.context(plan, call, resources)
            .and_then(|context| {
                Request::new(
                    session_uid(call),
                    plan.action.clone(),
                    plan.tool_uid.clone(),
                    context,
                    None,
                )
                .map_err(|e| one_line(&e))
            })
            .and_then(|request| {
                self.entities(plan, call)
                    .map(|entities| (request, entities))
            })
    }

    /// The decision on `call` and how each policy that could apply to it went: for a reviewer,
    /// never on the hot path (each policy is evaluated on its own).
    pub fn explain(&self, call: &CallInput<'_>) -> Explanation {
        let decision = self.decide(call);
        let plan = self.plan(call.tool);
        let mut considered = Vec::new();
        let evaluated = self.request(&plan, call, &decision.resources);
        for policy in plan.slice.policies() {
            let id = policy.id().to_string();
            let permit = policy.effect() == cedar_policy::Effect::Permit;
            let outcome = match &evaluated {
                Err(detail) => PolicyOutcome::NotEvaluated(detail.clone()),
                Ok((request, entities)) => {
                    match cedar_policy::PolicySet::from_policies([policy.clone()]) {
                        Err(e) => PolicyOutcome::NotEvaluated(one_line(&e)),
                        Ok(single) => {
                            let response =
                                Authorizer::new().is_authorized(request, &single, entities);
                            let errors: Vec<String> = response
                                .diagnostics()
                                .errors()
                                .map(|e| one_line(e))
                                .collect();
                            if !errors.is_empty() {
                                PolicyOutcome::Errored(errors.join("; "))
                            } else if response.diagnostics().reason().next().is_some() {
                                PolicyOutcome::Satisfied
                            } else {
                                PolicyOutcome::NotSatisfied
                            }
                        }
                    }
                }
            };
            let meta = self.meta().get(&id);
            considered.push(PolicyVerdict {
                determining: decision.policies.contains(&id),
                permit,
                reason: meta.and_then(|m| m.reason.clone()),
                needs_approval: meta.is_some_and(|m| m.needs_approval),
                file: meta.map(|m| m.file.clone()).unwrap_or_default(),
                id,
                outcome,
            });
        }
        considered.sort_by(|a, b| a.id.cmp(&b.id));
        Explanation {
            out_of_scope: self.meta().len().saturating_sub(considered.len()),
            class: plan.classification.class,
            decision,
            considered,
        }
    }

    fn judge(&self, plan: &ToolPlan, call: &CallInput<'_>, mut decision: Decision) -> Decision {
        let (request, entities) = match self.request(plan, call, &decision.resources) {
            Ok(parts) => parts,
            Err(detail) => {
                decision.detail = Some(detail);
                decision.policies = vec![step::EVALUATION.to_owned()];
                decision.reasons =
                    vec!["the call could not be evaluated against policy; it is denied".to_owned()];
                return decision;
            }
        };
        let response = Authorizer::new().is_authorized(&request, &plan.slice, &entities);
        // Cedar reports in no fixed order; a decision must replay identically.
        let mut errored: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                    e.policy_id().to_string()
                }
            })
            .collect();
        errored.sort();
        errored.dedup();
        if !errored.is_empty() {
            decision.detail = Some(
                response
                    .diagnostics()
                    .errors()
                    .map(|e| one_line(e))
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            decision.effect = Effect::Deny;
            decision.policies = errored;
            decision.policies.insert(0, step::EVALUATION.to_owned());
            decision.reasons =
                vec!["a policy could not be evaluated for this call; it is denied".to_owned()];
            return decision;
        }
        let mut determining: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        determining.sort();
        let reason_of = |id: &String| self.meta().get(id).and_then(|m| m.reason.clone());
        match response.decision() {
            CedarDecision::Deny if determining.is_empty() => {
                decision.policies = vec![step::DEFAULT_DENY.to_owned()];
                decision.reasons = vec![format!(
                    "no policy allows `{}` calls of `{}`",
                    plan.classification.class,
                    call.tool.name()
                )];
            }
            CedarDecision::Deny => {
                decision.quarantine = determining
                    .iter()
                    .any(|id| self.meta().get(id).is_some_and(|m| m.quarantine));
                decision.reasons = determining
                    .iter()
                    .map(|id| reason_of(id).unwrap_or_else(|| "denied by policy".to_owned()))
                    .collect();
                decision.reasons.dedup();
                decision.policies = determining;
            }
            CedarDecision::Allow => {
                let gated: Vec<&String> = determining
                    .iter()
                    .filter(|id| self.meta().get(*id).is_some_and(|m| m.needs_approval))
                    .collect();
                if gated.is_empty() {
                    decision.effect = Effect::Allow;
                    decision.reasons = determining.iter().filter_map(reason_of).collect();
                } else {
                    decision.effect = Effect::NeedsApproval;
                    // One gate that wants a named approver keeps the call out of the agent's
                    // hands.
                    decision.in_band = gated
                        .iter()
                        .all(|id| self.meta().get(*id).is_some_and(|m| m.in_band));
                    decision.approvers = gated
                        .iter()
                        .filter_map(|id| self.meta().get(*id).and_then(|m| m.approvers.clone()))
                        .collect();
                    decision.approvers.sort();
                    decision.approvers.dedup();
                    decision.reasons = gated
                        .iter()
                        .map(|id| {
                            reason_of(id)
                                .unwrap_or_else(|| "this call needs a person's approval".to_owned())
                        })
                        .collect();
                }
                decision.policies = determining;
            }
        }
        decision
    }

    /// The call's entities: the actions, the session in its agent and user, the tool in its
    /// upstream. They change only with the caller, so they are built once per caller and tool.
    fn entities(&self, plan: &ToolPlan, call: &CallInput<'_>) -> Result<Arc<Entities>, String> {
        let agent_name = call.grant.and_then(|g| g.agent.as_deref()).unwrap_or("");
        let user_name = call.grant.and_then(|g| g.user.as_deref()).unwrap_or("");
        let mut key = String::with_capacity(
            call.session.id.len()
                + call.session.transport.len()
                + agent_name.len()
                + user_name.len()
                + 3,
        );
        for part in [
            call.session.id.as_str(),
            call.session.transport.as_str(),
            agent_name,
            user_name,
        ] {
            key.push_str(part);
            key.push('\0');
        }
        let mut cache = plan
            .entities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = cache.get(&key) {
            return Ok(Arc::clone(found));
        }
        let agent = uid(&TYPES.agent, agent_name);
        let user = uid(&TYPES.user, user_name);
        let session = Entity::new(
            session_uid(call),
            HashMap::from([(
                "transport".to_owned(),
                RestrictedExpression::new_string(call.session.transport.clone()),
            )]),
            HashSet::from([agent.clone(), user.clone()]),
        )
        .map_err(|e| one_line(&e))?;
        let entities = self.action_entities().iter().cloned().chain([
            session,
            Entity::new_no_attrs(agent, HashSet::new()),
            Entity::new_no_attrs(user, HashSet::new()),
            plan.tool.clone(),
            plan.upstream.clone(),
        ]);
        let entities = Arc::new(Entities::from_entities(entities, None).map_err(|e| one_line(&e))?);
        // Sessions come and go; a plan keeps the callers of the recent ones only.
        if cache.len() >= ENTITY_CACHE {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&entities));
        Ok(entities)
    }

    /// The call's context, with only the fields a policy of the plan's slice can read: every
    /// value costs a few hundred nanoseconds to build and Cedar then evaluates it again.
    fn context(
        &self,
        plan: &ToolPlan,
        call: &CallInput<'_>,
        resources: &[Resource],
    ) -> Result<Context, String> {
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
        let record = |pairs: Vec<(&str, RestrictedExpression)>| {
            RestrictedExpression::new_record(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)))
                .map_err(|e| one_line(&e))
        };
        let mut pairs: Vec<(String, RestrictedExpression)> =
            Vec::with_capacity(CONTEXT_FIELDS.len());
        for field in CONTEXT_FIELDS {
            if !plan.reads(field) {
                continue;
            }
            let value = match field {
                "args" => match call.arguments {
                    Some(arguments) => json_record(arguments)?,
                    None => record(Vec::new())?,
                },
                "resources" => {
                    RestrictedExpression::new_set(resources.iter().map(|r| string(&r.to_string())))
                }
                "intent" => record(vec![
                    (
                        "purpose",
                        string(call.grant.map_or("", |g| g.purpose.as_str())),
                    ),
                    ("task", string(call.grant.map_or("", |g| g.task.as_str()))),
                    ("justification", string(call.justification.unwrap_or(""))),
                ])?,
                "grant" => record(vec![
                    (
                        "present",
                        RestrictedExpression::new_bool(call.grant.is_some()),
                    ),
                    ("id", string(call.grant.map_or("", |g| g.id.as_str()))),
                    (
                        "expires_in",
                        RestrictedExpression::new_long(call.grant.map_or(0, |g| g.exp - call.now)),
                    ),
                ])?,
                "time" => {
                    let local = LocalTime::at(call.now, call.env.offset);
                    // A whole number of seconds rather than a `datetime`, whose construction
                    // alone costs more than a microsecond.
                    record(vec![
                        ("instant", RestrictedExpression::new_long(call.now)),
                        ("hour", long(u64::from(local.hour))),
                        ("weekday", string(local.weekday_name())),
                    ])?
                }
                "environment" => string(&call.env.label),
                "client" => record(vec![
                    ("transport", string(&call.session.transport)),
                    ("address", string(&call.session.address)),
                ])?,
                "stats" => {
                    let mut stats = vec![
                        ("calls", long(call.stats.calls)),
                        ("calls_last_minute", long(call.stats.calls_last_minute)),
                        ("denials", long(call.stats.denials)),
                        ("denials_last_minute", long(call.stats.denials_last_minute)),
                        ("calls_last_10s", long(call.stats.calls_last_10s)),
                        ("per_minute", long(call.stats.per_minute)),
                        (
                            "first_of_class",
                            RestrictedExpression::new_bool(
                                CLASSES
                                    .iter()
                                    .position(|c| *c == plan.classification.class)
                                    .and_then(|i| call.stats.by_class.get(i))
                                    .is_none_or(|n| *n == 0),
                            ),
                        ),
                    ];
                    for (class, count) in CLASSES.iter().zip(call.stats.by_class) {
                        stats.push((class.as_str(), long(count)));
                    }
                    record(stats)?
                }
                "taint" => RestrictedExpression::new_set(call.taint.iter().map(|t| string(t))),
                "path_labels" => RestrictedExpression::new_set(
                    self.path_labels(resources).into_iter().map(string),
                ),
                "pinned" => RestrictedExpression::new_bool(call.pinned),
                "provenance" => provenance_record(
                    call.provenance,
                    call.arguments,
                    &plan.classification.targets,
                )?,
                _ => continue,
            };
            pairs.push((field.to_owned(), value));
        }
        Context::from_pairs(pairs).map_err(|e| one_line(&e))
    }
}

/// `context.provenance`: each argument's origin, the trusts of the target arguments the call
/// has, the labels of every result an argument came from, and whether the index is complete.
fn provenance_record(
    provenance: Option<&crate::provenance::Provenance>,
    arguments: Option<&Map<String, Value>>,
    targets: &[String],
) -> Result<RestrictedExpression, String> {
    use crate::provenance::{Origin, Trust};
    let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
    let strings = |items: &[String]| RestrictedExpression::new_set(items.iter().map(|s| string(s)));
    let origin_record = |origin: &Origin| {
        RestrictedExpression::new_record([
            ("trust".to_owned(), string(origin.trust.as_str())),
            (
                "embedded".to_owned(),
                string(origin.embedded.map_or("none", Trust::as_str)),
            ),
            ("tools".to_owned(), strings(&origin.tools)),
            ("labels".to_owned(), strings(&origin.labels)),
        ])
        .map_err(|e| one_line(&e))
    };
    let unseen = Origin::default();
    let origin_of = |name: &str| provenance.and_then(|p| p.arg(name)).unwrap_or(&unseen);
    let mut args = Vec::new();
    for name in arguments.into_iter().flat_map(Map::keys) {
        args.push((name.clone(), origin_record(origin_of(name))?));
    }
    let mut trusts: Vec<&str> = targets
        .iter()
        .filter(|t| arguments.is_some_and(|a| a.get(t.as_str()).is_some_and(|v| !v.is_null())))
        .map(|t| origin_of(t).trust.as_str())
        .collect();
    let has_targets = !trusts.is_empty();
    trusts.sort_unstable();
    trusts.dedup();
    RestrictedExpression::new_record([
        (
            "args".to_owned(),
            RestrictedExpression::new_record(args).map_err(|e| one_line(&e))?,
        ),
        (
            "targets".to_owned(),
            RestrictedExpression::new_set(trusts.into_iter().map(string)),
        ),
        (
            "has_targets".to_owned(),
            RestrictedExpression::new_bool(has_targets),
        ),
        (
            "labels".to_owned(),
            strings(&provenance.map(|p| p.labels()).unwrap_or_default()),
        ),
        (
            "complete".to_owned(),
            RestrictedExpression::new_bool(provenance.is_none_or(|p| p.complete)),
        ),
    ])
    .map_err(|e| one_line(&e))
}

fn session_uid(call: &CallInput<'_>) -> cedar_policy::EntityUid {
    uid(&TYPES.session, &call.session.id)
}

/// Callers whose entities a tool plan keeps.
const ENTITY_CACHE: usize = 1024;

/// Arguments as a Cedar record. Whole numbers are `Long`, numbers with up to four decimals
/// `decimal`, any other number a string (so a policy that reads it as a number fails, and the
/// call is denied rather than judged on a rounded value); `null` is left out, as if absent.
fn json_record(object: &Map<String, Value>) -> Result<RestrictedExpression, String> {
    let mut fields = Vec::with_capacity(object.len());
    for (key, value) in object {
        if let Some(expr) = json_value(value)? {
            fields.push((key.clone(), expr));
        }
    }
    RestrictedExpression::new_record(fields).map_err(|e| one_line(&e))
}

fn json_value(value: &Value) -> Result<Option<RestrictedExpression>, String> {
    Ok(Some(match value {
        Value::Null => return Ok(None),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => match n.as_f64().and_then(decimal_text) {
                Some(text) => RestrictedExpression::new_decimal(text),
                None => RestrictedExpression::new_string(n.to_string()),
            },
        },
        Value::Array(items) => {
            let mut set = Vec::with_capacity(items.len());
            for item in items {
                if let Some(expr) = json_value(item)? {
                    set.push(expr);
                }
            }
            RestrictedExpression::new_set(set)
        }
        Value::Object(object) => json_record(object)?,
    }))
}

/// `n` as Cedar decimal text when it has at most four decimals and fits.
fn decimal_text(n: f64) -> Option<String> {
    let scaled = n * 10_000.0;
    if !scaled.is_finite() || scaled.abs() >= 9.2e18 || scaled.fract() != 0.0 {
        return None;
    }
    Some(format!("{n:.4}"))
}

/// `SessionStats::by_class` as a record writes it: a map of the classes with calls.
pub(crate) mod by_class {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::{catalog::ActionClass, pack::CLASSES};

    /// The classes with calls, in [`CLASSES`] order (which is the classes' own order), written
    /// straight from the counts.
    pub fn serialize<S: Serializer>(counts: &[u64; 8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(CLASSES.iter().zip(counts).filter(|(_, n)| **n > 0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u64; 8], D::Error> {
        let recorded = BTreeMap::<ActionClass, u64>::deserialize(deserializer)?;
        let mut counts = [0u64; 8];
        for (slot, class) in counts.iter_mut().zip(CLASSES) {
            *slot = recorded.get(&class).copied().unwrap_or(0);
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::{PackSource, SchemaCache, catalog::Hints};

    fn pack(policies: &str) -> Pack {
        Pack::compile(&PackSource {
            name: "t".into(),
            manifest: "purposes = [\"p\"]\n[[tool]]\ntool = \"*\"\nclass = \"read\"\n".into(),
            schema: None,
            policies: vec![("t.cedar".into(), policies.into())],
            extra_tools: Vec::new(),
        })
        .unwrap()
    }

    fn tool(name: &str) -> ToolFacts {
        let open = json!({"type": "object"}).as_object().cloned().unwrap();
        ToolFacts::new(
            name,
            "up",
            Hints::default(),
            None,
            SchemaCache::default().compile(&open),
        )
    }

    /// A grant for `read` calls of any tool until t=10,000.
    fn reader() -> Grant {
        Grant {
            id: "g-00000000000000000000aaaa".into(),
            iss: "tollgate".into(),
            iat: 0,
            exp: 10_000,
            chain: Vec::new(),
            purpose: "p".into(),
            task: String::new(),
            agent: None,
            user: None,
            resources: BTreeSet::new(),
            actions: BTreeSet::from([ActionClass::Read]),
            tools: BTreeSet::from(["*".to_owned()]),
            constraints: Vec::new(),
            limits: Vec::new(),
        }
    }

    fn decide(pack: &Pack, tool: &ToolFacts, stats: &SessionStats) -> Decision {
        let grant = reader();
        pack.decide(&CallInput {
            session: &SessionFacts::default(),
            grant: Some(&grant),
            tool,
            arguments: None,
            justification: None,
            now: 100,
            env: &Environment::default(),
            stats,
            usage: &Usage::new(),
            taint: &[],
            pinned: false,
            paths: None,
            provenance: None,
        })
    }

    #[test]
    fn only_fields_the_slice_names_are_built_and_the_rest_still_decide() {
        let pack = pack(
            r#"
            @id("all") permit (principal, action, resource);
            @id("busy") forbid (principal, action, resource == Tool::"b")
              when { context.stats.calls_last_minute > 5 };
            "#,
        );
        let (a, b) = (tool("a"), tool("b"));
        let a_plan = pack.plan(&a);
        let b_plan = pack.plan(&b);
        assert!(!a_plan.reads("stats") && !a_plan.reads("args"));
        assert!(b_plan.reads("stats"));
        let busy = SessionStats {
            calls_last_minute: 9,
            ..SessionStats::default()
        };
        assert_eq!(decide(&pack, &a, &busy).effect, Effect::Allow);
        let d = decide(&pack, &b, &busy);
        assert_eq!(
            (d.effect, d.policies.as_slice()),
            (Effect::Deny, ["busy".to_owned()].as_slice())
        );
        assert_eq!(
            decide(&pack, &b, &SessionStats::default()).effect,
            Effect::Allow
        );
    }

    #[test]
    fn the_user_at_the_agent_may_approve_only_when_every_gate_says_so() {
        let open = pack(
            r#"
            @id("gate") @needs_approval @in_band permit (principal, action, resource);
            "#,
        );
        let d = decide(&open, &tool("a"), &SessionStats::default());
        assert_eq!((d.effect, d.in_band), (Effect::NeedsApproval, true));
        let mixed = pack(
            r#"
            @id("gate") @needs_approval @in_band permit (principal, action, resource);
            @id("finance") @needs_approval @approvers("finance") permit (principal, action, resource == Tool::"b");
            "#,
        );
        let a = decide(&mixed, &tool("a"), &SessionStats::default());
        assert!(a.in_band, "only the in-band gate holds `a`");
        let b = decide(&mixed, &tool("b"), &SessionStats::default());
        assert_eq!(
            (b.effect, b.in_band, b.approvers.as_slice()),
            (
                Effect::NeedsApproval,
                false,
                ["finance".to_owned()].as_slice()
            ),
            "a gate naming approvers keeps the call out of the agent's hands"
        );
        let plain = pack(r#"@id("all") permit (principal, action, resource);"#);
        assert!(!decide(&plain, &tool("a"), &SessionStats::default()).in_band);
    }

    #[test]
    fn an_evaluation_error_denies_even_when_a_permit_holds() {
        // `context.args.amount` is a string here, so `<` fails to evaluate.
        let pack = pack(
            r#"
            @id("all") permit (principal, action, resource);
            @id("cap") forbid (principal, action, resource)
              when { context.args has amount && context.args.amount > 100 };
            "#,
        );
        let t = tool("t");
        let grant_args = json!({"amount": "lots"}).as_object().cloned().unwrap();
        let grant = reader();
        let d = pack.decide(&CallInput {
            session: &SessionFacts::default(),
            grant: Some(&grant),
            tool: &t,
            arguments: Some(&grant_args),
            justification: None,
            now: 100,
            env: &Environment::default(),
            stats: &SessionStats::default(),
            usage: &Usage::new(),
            taint: &[],
            pinned: false,
            paths: None,
            provenance: None,
        });
        assert_eq!(d.effect, Effect::Deny);
        assert_eq!(d.policies, ["tollgate:evaluation-error", "cap"]);
        assert!(d.detail.is_some());
        assert!(
            !d.reason_text().contains("context"),
            "no policy text reaches the agent"
        );
    }
}
