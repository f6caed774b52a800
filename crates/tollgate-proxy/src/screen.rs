//! The relay's side of the interception point: a call is screened (the interceptor's verdict
//! asked for, an approval waited for while the agent is told of progress and may be asked
//! itself, a pending credential awaited) and settled into what the relay does with it.

use rmcp::model::CallToolResult;

use crate::{
    intercept::{Credential, Interceptor, Outcome, ToolCall, Verdict, refused},
    suspend::{APPROVE_FIELD, approval_question},
};

/// How a call's agent is reached while the call is held for approval: where its progress goes,
/// how the user at it is asked, and when it gives up.
pub(crate) struct AgentLink<'a> {
    /// The agent, its request, its progress token, its capabilities and, on the fast path for
    /// HTTP, the response stream of its call.
    pub route: &'a crate::upstream::CallRoute,
    /// Raw lines to the agent (the fast path); none: through rmcp.
    pub raw: Option<&'a crate::agent::AgentOut>,
    /// Cancelled when the agent withdraws the call.
    pub cancel: &'a tokio_util::sync::CancellationToken,
    /// The agent takes input requests instead of server→client requests (2026-07-28).
    pub modern: bool,
}

/// Passes `call` through `interceptor` before forwarding and records the verdict on the
/// current span. A refusal is the call's whole outcome: it is reported to `after_call` here and
/// returned as the answer. A call held for approval waits here (asking the user at the agent
/// where policy allows), except that a 2026-07-28 agent asked in band gets the question back as
/// an input request: [`Screened::Park`].
pub(crate) async fn screen(
    interceptor: &dyn Interceptor,
    call: &ToolCall<'_>,
    link: &AgentLink<'_>,
) -> Screened {
    let verdict = match interceptor.before_call(call).await {
        Verdict::AwaitApproval(waiting) => {
            tracing::Span::current().record("verdict", "await-approval");
            if link.modern && waiting.in_band.is_some() {
                return Screened::Park(waiting);
            }
            match hold(interceptor, call, waiting, None, link).await {
                Some(verdict) => verdict,
                None => return Screened::Cancelled,
            }
        }
        other => other,
    };
    settle(interceptor, call, verdict).await
}

/// A 2026-07-28 agent's retry carrying its answer to the approval question of a parked call.
pub(crate) async fn screen_answered(
    interceptor: &dyn Interceptor,
    call: &ToolCall<'_>,
    waiting: crate::approvals::Waiting,
    answer: Result<rmcp::model::ElicitResult, rmcp::ErrorData>,
    link: &AgentLink<'_>,
) -> Screened {
    tracing::Span::current().record("verdict", "await-approval");
    match hold(interceptor, call, waiting, Some(answer), link).await {
        Some(verdict) => settle(interceptor, call, verdict).await,
        None => Screened::Cancelled,
    }
}

/// Waits for the answer to a held call: from an approver out of band, or from the user at the
/// agent (asked here, or `answered` already). Tells the agent it still waits if it asked for
/// progress. The verdict once answered; none if the agent gave up, which withdraws the request.
async fn hold(
    interceptor: &dyn Interceptor,
    call: &ToolCall<'_>,
    mut waiting: crate::approvals::Waiting,
    answered: Option<Result<rmcp::model::ElicitResult, rmcp::ErrorData>>,
    link: &AgentLink<'_>,
) -> Option<Verdict> {
    let id = waiting.id.clone();
    let mut asking = match (answered, &waiting.in_band) {
        (Some(answer), _) => {
            take_answer(&waiting, answer);
            None
        }
        (None, Some(in_band)) if !link.modern => Some(Box::pin(ask_at_agent(
            link,
            approval_question(&in_band.message),
        ))),
        (None, _) => None,
    };
    let every = waiting.progress_every;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let progress = link.route.agent_progress.clone();
    let mut reported = 0u32;
    let state = loop {
        tokio::select! {
            state = waiting.answered() => break state,
            Some(answer) = async {
                match asking.as_mut() {
                    Some(question) => Some(question.await),
                    None => None,
                }
            }, if asking.is_some() => {
                asking = None;
                take_answer(&waiting, answer);
            }
            _ = ticks.tick(), if progress.is_some() => {
                reported += 1;
                if let Some(token) = &progress {
                    let message = format!(
                        "waiting for approval {id} ({} s left)",
                        waiting.seconds_left()
                    );
                    report_progress(link, token, reported, message).await;
                }
            }
            () = link.cancel.cancelled() => {
                tracing::info!(approval = %id, "the agent withdrew the call; approval request withdrawn");
                return None;
            }
        }
    };
    use crate::approvals::State;
    Some(match state {
        State::Approved { by, .. } => match interceptor.resume(call, &id, &by).await {
            // An approved call is decided once more, never held twice.
            Verdict::AwaitApproval(_) => Verdict::Refuse(refused(
                "denied: the call still needs approval after it was approved",
            )),
            other => other,
        },
        State::Denied { by, reason, .. } => Verdict::Refuse(refused(&format!(
            "denied by approver {by}: {reason} (approval {id})"
        ))),
        State::Expired { .. } => Verdict::Refuse(refused(&format!(
            "denied: no approval arrived in time (approval {id})"
        ))),
        State::Withdrawn { .. } | State::Pending => Verdict::Refuse(refused(&format!(
            "denied: the approval request was withdrawn (approval {id})"
        ))),
    })
}

/// Records what the user at the agent answered: only an accepted form with `approve` set
/// approves. When the agent could not be asked, approvers out of band may still answer;
/// without them the call is denied.
fn take_answer(
    waiting: &crate::approvals::Waiting,
    answer: Result<rmcp::model::ElicitResult, rmcp::ErrorData>,
) {
    use rmcp::model::ElicitationAction;
    let reason = match answer {
        Ok(result) => match result.action {
            ElicitationAction::Accept
                if result
                    .content
                    .as_ref()
                    .and_then(|c| c.get(APPROVE_FIELD))
                    .and_then(serde_json::Value::as_bool)
                    == Some(true) =>
            {
                waiting.answer_at_agent(true, "");
                return;
            }
            ElicitationAction::Accept => "not approved at the agent".to_owned(),
            ElicitationAction::Decline => "declined at the agent".to_owned(),
            _ => "dismissed at the agent".to_owned(),
        },
        Err(e) if waiting.out_of_band => {
            tracing::warn!(approval = %waiting.id, error = %e.message, "the user at the agent could not be asked; waiting for an approver");
            return;
        }
        Err(e) => format!("the user at the agent could not be asked ({})", e.message),
    };
    waiting.answer_at_agent(false, &reason);
}

/// Asks the user at the agent with an elicitation request bound to the agent's call.
async fn ask_at_agent(
    link: &AgentLink<'_>,
    question: rmcp::model::ElicitRequest,
) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
    match crate::upstream::ask_agent(
        link.route,
        rmcp::model::ServerRequest::ElicitRequest(question),
        link.cancel,
    )
    .await?
    {
        rmcp::model::ClientResult::ElicitResult(result) => Ok(result),
        _ => Err(rmcp::ErrorData::invalid_params(
            "the agent answered the approval question with something else",
            None,
        )),
    }
}

/// Tells the agent the call still waits: a progress notification on its token.
async fn report_progress(
    link: &AgentLink<'_>,
    token: &rmcp::model::ProgressToken,
    progress: u32,
    message: String,
) {
    let params = rmcp::model::ProgressNotificationParam::new(token.clone(), f64::from(progress))
        .with_message(message);
    match link.raw {
        Some(out) => {
            let notification = serde_json::json!({
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": params,
            });
            // Advisory: dropped rather than waited for if the agent is not reading.
            let _ = out.note(notification.to_string().into_bytes());
        }
        None => {
            let _ = link.route.agent.notify_progress(params).await;
        }
    }
}

async fn settle(interceptor: &dyn Interceptor, call: &ToolCall<'_>, verdict: Verdict) -> Screened {
    let span = tracing::Span::current();
    match verdict {
        Verdict::ForwardAfter(pending) => match pending.0.await {
            Ok(credential) => {
                span.record("verdict", "forward");
                Screened::Forward(credential)
            }
            Err(reason) => {
                span.record("verdict", "refuse");
                tracing::warn!(tool = call.exposed_name, %reason, "the call could not be made ready; denied");
                let result = refused(&format!("denied: {reason}"));
                interceptor.after_call(call, &Outcome::Completed { is_error: true });
                Screened::Answer(result)
            }
        },
        Verdict::Forward => {
            span.record("verdict", "forward");
            Screened::Forward(None)
        }
        Verdict::ForwardWith(credential) => {
            span.record("verdict", "forward");
            Screened::Forward(Some(credential))
        }
        Verdict::Refuse(result) => {
            span.record("verdict", "refuse");
            interceptor.after_call(
                call,
                &Outcome::Completed {
                    is_error: result.is_error == Some(true),
                },
            );
            Screened::Answer(result)
        }
        Verdict::Hide => {
            span.record("verdict", "hide");
            Screened::Unknown
        }
        Verdict::Reject(message) => {
            span.record("verdict", "reject");
            Screened::Rejected(message)
        }
        Verdict::AwaitApproval(_) => {
            span.record("verdict", "refuse");
            Screened::Answer(refused("denied: the call needs approval"))
        }
    }
}

/// What the relay does with a screened call.
#[derive(Debug)]
pub(crate) enum Screened {
    /// Held for the user at a 2026-07-28 agent: answer with the approval question as an input
    /// request, and keep the request until the agent's retry answers it.
    Park(crate::approvals::Waiting),
    /// The agent withdrew the call while it waited: answer nothing.
    Cancelled,
    Forward(Option<Credential>),
    Answer(CallToolResult),
    /// Answer as to an unknown tool.
    Unknown,
    /// Answer with a [`GRANT_REFUSED`] error.
    Rejected(String),
}
