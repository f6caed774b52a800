//! One decision: a pure function of (pack version, grant, call, context). The steps run in a
//! fixed order and the first that says no decides: the tool's class, its arguments against the
//! schema, the resources they name, the grant, then Cedar over the policies whose scope can
//! apply to this tool and action (forbid wins, no permit denies, an evaluation error denies).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use cedar_policy::{
    Authorizer, Decision as CedarDecision, Entities, Entity, Request, RestrictedExpression,
};
use serde_json::{Map, Value};

use crate::{
    catalog::{ActionClass, Risk},
    clock::UtcOffset,
    grant::{Charge, Grant, Matched, Usage},
    pack::{Pack, TYPES, ToolPlan, one_line, uid},
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
    /// An allowed call on a resource the grant says waits for a person.
    pub const GRANT_APPROVE: &str = "tollgate:grant-approve";
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
    /// The arguments the trail and a reviewer see redacted (from the catalog).
    pub redact: Vec<String>,
    /// Of those, the arguments an approver of this call sees in full (from the catalog).
    pub shown_to_approvers: Vec<String>,
    /// The arguments that say where the side effect goes (from the catalog).
    pub targets: Vec<String>,
    /// Which of the grant's resource entries the call's resources fell under.
    pub matched: Matched,
    /// Every argument of the call is fixed by the grant.
    pub pinned: bool,
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
            shown_to_approvers: Vec::new(),
            targets: Vec::new(),
            matched: Matched::default(),
            pinned: false,
        }
    }

    /// `arguments` as the trail keeps them and a person reviewing the call may see them: the
    /// catalog's redacted arguments replaced, wherever they are nested.
    pub fn redacted<'v>(&self, arguments: &'v Value) -> std::borrow::Cow<'v, Value> {
        hidden(arguments, |name| self.redact.iter().any(|r| r == name))
    }

    /// `arguments` as the approver of this held call sees them: redacted but for those the
    /// catalog shows to approvers.
    pub fn for_approvers<'v>(&self, arguments: &'v Value) -> std::borrow::Cow<'v, Value> {
        hidden(arguments, |name| self.hidden_from_approvers(name))
    }

    /// An approver does not see the value of argument `name`.
    pub fn hidden_from_approvers(&self, name: &str) -> bool {
        self.redact.iter().any(|r| r == name) && !self.shown_to_approvers.iter().any(|r| r == name)
    }
}

/// `arguments` with the value of every key `hide` names replaced, wherever it is nested.
fn hidden<'v>(arguments: &'v Value, hide: impl Fn(&str) -> bool) -> std::borrow::Cow<'v, Value> {
    fn walk(value: &Value, hide: &dyn Fn(&str) -> bool) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let shown = if hide(k) {
                            Value::String(crate::catalog::REDACTED.to_owned())
                        } else {
                            walk(v, hide)
                        };
                        (k.clone(), shown)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| walk(v, hide)).collect()),
            other => other.clone(),
        }
    }
    fn any_hidden(value: &Value, hide: &dyn Fn(&str) -> bool) -> bool {
        match value {
            Value::Object(map) => map.iter().any(|(k, v)| hide(k) || any_hidden(v, hide)),
            Value::Array(items) => items.iter().any(|v| any_hidden(v, hide)),
            _ => false,
        }
    }
    if any_hidden(arguments, &hide) {
        std::borrow::Cow::Owned(walk(arguments, &hide))
    } else {
        std::borrow::Cow::Borrowed(arguments)
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
            shown_to_approvers: plan.classification.shown_to_approvers.clone(),
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
                provenance: call.provenance,
            };
            match grant.admits(&scope, call.now).and_then(|admitted| {
                grant
                    .check_limits(call.usage, &admitted.charges)
                    .map(|()| admitted)
            }) {
                Ok(admitted) => {
                    decision.charges = admitted.charges;
                    decision.matched = admitted.matched;
                }
                Err(e) => return deny(decision, step::GRANT, e.to_string()),
            }
            decision.pinned = grant.pins(call.tool.name(), call.arguments, call.provenance);
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
        decision: &Decision,
    ) -> Result<(Request, Arc<Entities>), String> {
        self.context(plan, call, decision)
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
        let evaluated = self.request(&plan, call, &decision);
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
        let (request, entities) = match self.request(plan, call, &decision) {
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
                if gated.is_empty() && !decision.matched.approve() {
                    decision.effect = Effect::Allow;
                    decision.reasons = determining.iter().filter_map(reason_of).collect();
                } else {
                    decision.effect = Effect::NeedsApproval;
                    // One gate that wants a named approver keeps the call out of the agent's
                    // hands; the grant's own hold lets the user at the agent answer where
                    // configuration allows it.
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
                    if decision.matched.approve() {
                        decision.reasons.push(format!(
                            "grant {} says calls on {} wait for a person",
                            call.grant.map_or("", |g| g.id.as_str()),
                            decision
                                .matched
                                .held
                                .iter()
                                .map(|e| format!("`{e}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        determining.insert(0, step::GRANT_APPROVE.to_owned());
                    }
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
}

fn session_uid(call: &CallInput<'_>) -> cedar_policy::EntityUid {
    uid(&TYPES.session, &call.session.id)
}

/// Callers whose entities a tool plan keeps.
const ENTITY_CACHE: usize = 1024;

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
mod tests;

mod context;
