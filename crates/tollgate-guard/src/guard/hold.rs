//! The hold stage: a call a policy holds for approval becomes a request bound to exactly that
//! call (session, grant, tool, the arguments' digest, the pack version), shown to the approvers
//! and, where every gating policy and the configuration allow it and the agent can be asked, to
//! the user at the agent; a call nobody who may approve it can be reached for is denied.

use std::sync::Arc;

use tollgate_proxy::{
    approvals::{Approvals, InBand, Request, State},
    config::ApprovalsConfig,
    intercept::Verdict,
};
use tracing::info;

use tollgate_policy::{Decision, Effect, Grant};
use tollgate_proxy::{approvals::Binding, intercept::ToolCall, session::SessionId};

use crate::store::Standing;

use super::{
    CallArguments,
    credential::Credentials,
    record::{Recorded, Trail},
    refusal,
};

/// A call a policy holds for approval: the request approvers and the user at the agent see,
/// or a denial when nobody who may approve it can be reached.
pub(crate) fn hold(
    settings: &ApprovalsConfig,
    approvals: &Arc<Approvals>,
    trail: &Trail,
    credentials: &Credentials,
    recorded: &Recorded<'_>,
    provenance: Vec<String>,
    now: i64,
) -> Verdict {
    let Recorded {
        call,
        arguments,
        history,
        grant,
        decision,
        justification,
        ..
    } = *recorded;
    // The user at the agent may answer only where every gating policy says so, the
    // configuration allows it for this class, and the agent can be asked.
    let at_agent = if !decision.in_band {
        Err("policy does not let the user at the agent approve it".to_owned())
    } else if !settings.in_band {
        Err("approval at the agent is turned off here".to_owned())
    } else if settings.never_in_band.contains(&decision.class) {
        Err(format!(
            "`{}` calls are never approved at the agent",
            decision.class
        ))
    } else if !call.can_ask {
        Err("the agent did not declare elicitation, so the user at it cannot be asked".to_owned())
    } else {
        Ok(())
    };
    let out_of_band = !settings.approvers.is_empty();
    if let (Err(why), false) = (&at_agent, out_of_band) {
        drop(trail.decision(recorded, None, Some(why)));
        return Verdict::Refuse(refusal(format!(
            "needs approval: {}; no approvers are configured on this Tollgate and {why}, so the call is denied",
            decision.reason_text()
        )));
    }
    let Ok(id) = tollgate_mint::new_id("ap") else {
        return Verdict::Refuse(refusal(
            "needs approval, and no approval request could be made; denied".to_owned(),
        ));
    };
    info!(approval = %id, session = call.session, tool = call.exposed_name, approvers = ?decision.approvers, in_band = at_agent.is_ok(), "approval requested");
    let timeout = i64::try_from(settings.timeout.as_secs()).unwrap_or(300);
    let credential = credentials.preview(call, decision, arguments.value(), arguments.digest());
    let request = Request {
        id,
        created: now,
        expires: now + timeout,
        session: history.to_string(),
        grant: grant.map(|g| g.id.clone()),
        agent: grant.and_then(|g| g.agent.clone()),
        user: grant.and_then(|g| g.user.clone()),
        upstream: call.upstream.to_owned(),
        tool: call.tool.to_owned(),
        class: decision.class.to_string(),
        resources: decision.resources.iter().map(ToString::to_string).collect(),
        arguments: decision.for_approvers(arguments.value()).into_owned(),
        arguments_sha256: arguments.digest().to_owned(),
        policy_version: decision.version.clone(),
        policies: decision.policies.clone(),
        reasons: decision.reasons.clone(),
        approvers: decision.approvers.clone(),
        justification: justification.map(str::to_owned),
        task: grant.map(|g| g.task.clone()).filter(|t| !t.is_empty()),
        provenance,
        credential,
        state: State::Pending,
    };
    drop(trail.decision(recorded, Some(&request.id), None));
    let in_band = at_agent.is_ok().then(|| InBand {
        message: request.summary(),
        who: format!(
            "{} (at the agent)",
            grant.and_then(|g| g.user.as_deref()).unwrap_or("the user")
        ),
    });
    Verdict::AwaitApproval(approvals.open(request, in_band, out_of_band, settings.progress_every))
}

/// A session (or the grant it runs under) held for review since a quarantining denial is
/// refused until an approver releases it.
pub(crate) fn not_held(standing: &Standing) -> Result<(), Box<Verdict>> {
    match &standing.held {
        None => Ok(()),
        Some(held) => Err(Box::new(Verdict::Refuse(refusal(format!(
            "denied: this session is held for review ({}); an approver can release it",
            held.reason
        ))))),
    }
}

/// A call decided again once `approval` was given: the approval counts only for exactly the
/// call it was asked for, under the same policy version (a newer pack that denies has denied
/// already); anything else denies.
pub(crate) fn approved(
    approvals: &Approvals,
    approval: Option<(&str, &str)>,
    history: SessionId,
    grant: Option<&Grant>,
    call: &ToolCall<'_>,
    arguments: &CallArguments<'_>,
    decision: &mut Decision,
) {
    let (Some((id, approver)), Effect::NeedsApproval) = (approval, decision.effect) else {
        return;
    };
    let session = history.to_string();
    let approved = approvals.approved_for(
        id,
        &Binding {
            session: &session,
            grant: grant.map(|g| g.id.as_str()),
            upstream: call.upstream,
            tool: call.tool,
            arguments_sha256: arguments.digest(),
            policy_version: &decision.version,
        },
    );
    if approved.as_deref() == Some(approver) {
        decision.effect = Effect::Allow;
        decision
            .reasons
            .push(format!("approved by {approver} ({id})"));
    } else {
        decision.effect = Effect::Deny;
        decision.policies = vec!["tollgate:approval".to_owned()];
        decision.reasons = vec![format!(
            "approval {id} does not match this call or the policy deciding it now"
        )];
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::RequestMetaObject;
    use tollgate_policy::{ActionClass, Risk};
    use tollgate_proxy::intercept::Caller;

    use super::*;
    use crate::store::Quarantine;

    #[test]
    fn a_held_history_is_refused_with_its_reason() {
        assert!(not_held(&Standing::default()).is_ok());
        let held = Standing {
            held: Some(Quarantine {
                session: "1".to_owned(),
                grant: None,
                since: 0,
                policies: vec!["probe".to_owned()],
                reason: "probing for secrets".to_owned(),
            }),
            ..Standing::default()
        };
        match not_held(&held).map_err(|v| *v) {
            Err(Verdict::Refuse(result)) => {
                let text = serde_json::to_string(&result).unwrap();
                assert!(text.contains("probing for secrets"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_approval_that_is_not_this_calls_denies_and_none_leaves_the_decision() {
        let approvals = Approvals::default();
        let (meta, caller) = (RequestMetaObject::new(), Caller::stdio(None));
        let call = ToolCall {
            session: 1,
            upstream: "u",
            tool: "t",
            exposed_name: "t",
            arguments: None,
            meta: &meta,
            caller: &caller,
            facts: None,
            can_ask: false,
            number: 1,
        };
        let arguments = CallArguments::new(None);
        let held = || Decision {
            effect: Effect::NeedsApproval,
            policies: vec!["large-refunds".to_owned()],
            reasons: vec!["needs approval".to_owned()],
            approvers: vec!["finance".to_owned()],
            ..Decision::undecided("v", ActionClass::Payment, Risk::High)
        };
        let mut first = held();
        approved(&approvals, None, 1, None, &call, &arguments, &mut first);
        assert_eq!(first, held(), "no approval given: still held");
        let mut forged = held();
        approved(
            &approvals,
            Some(("ap-unknown", "mallory")),
            1,
            None,
            &call,
            &arguments,
            &mut forged,
        );
        assert_eq!(forged.effect, Effect::Deny);
        assert_eq!(forged.policies, ["tollgate:approval"]);
    }
}
