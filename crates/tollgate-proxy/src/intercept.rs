//! The interception point: every `tools/call` passes here with its session, upstream, tool,
//! arguments and `_meta` before it is forwarded, and again with its outcome.
//!
//! Decisions, credentials and audit plug in behind [`Interceptor`]; the relay itself never
//! decides anything.

use std::sync::Arc;

use rmcp::model::{CallToolResult, JsonObject, RequestMetaObject};
use tollgate_policy::ToolFacts;

use crate::session::SessionId;

/// Who sent a request: the front it came through and the grant it presented.
#[derive(Clone, Default)]
pub struct Caller {
    /// `stdio` or `http`.
    pub transport: &'static str,
    /// The peer's address for HTTP.
    pub address: Option<String>,
    /// The grant token as presented (a bearer token over HTTP, `--grant` over stdio). Never
    /// printed.
    pub grant: Option<Arc<str>>,
    /// An HTTP request outside any MCP session (a 2026-07-28 stateless request): each request
    /// is a session of its own, so what a session remembers is kept per grant instead.
    pub stateless: bool,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("transport", &self.transport)
            .field("address", &self.address)
            .field("grant", &self.grant.as_ref().map(|_| "***"))
            .field("stateless", &self.stateless)
            .finish()
    }
}

impl Caller {
    pub fn stdio(grant: Option<String>) -> Self {
        Self {
            transport: "stdio",
            address: None,
            grant: grant.map(Arc::from),
            stateless: false,
        }
    }

    /// The caller of one HTTP request: its `Authorization: Bearer` grant and peer address.
    pub fn from_http(parts: &http::request::Parts) -> Self {
        let grant = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .map(Arc::from);
        let address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip().to_string());
        Self {
            transport: "http",
            address,
            grant,
            stateless: !parts.headers.contains_key("mcp-session-id"),
        }
    }
}

/// One tool invocation as the interceptor sees it.
#[derive(Debug)]
pub struct ToolCall<'a> {
    /// The agent session that sent it.
    pub session: SessionId,
    /// The upstream that serves the tool.
    pub upstream: &'a str,
    /// The tool's name at the upstream.
    pub tool: &'a str,
    /// The name the agent used (with the upstream prefix when there is one).
    pub exposed_name: &'a str,
    /// The arguments as the agent sent them.
    pub arguments: Option<&'a JsonObject>,
    /// The request's `_meta` as the agent sent it (untrusted).
    pub meta: &'a RequestMetaObject,
    /// Who sent it.
    pub caller: &'a Caller,
    /// What is known of the tool: annotations, root, compiled input schema.
    pub facts: Option<&'a ToolFacts>,
    /// The user at the agent can be asked during the call: the agent declared form
    /// elicitation (in its capabilities, or in the request's `_meta` for 2026-07-28).
    pub can_ask: bool,
    /// This call's number in this process (from [`next_call_number`]): what ties its outcome to
    /// its decision.
    pub number: u64,
}

/// A number no other call of this process has.
pub fn next_call_number() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Whether `capabilities` let the user at the agent be asked with a form.
pub fn can_ask(capabilities: Option<&rmcp::model::ClientCapabilities>) -> bool {
    capabilities
        .and_then(|c| c.elicitation.as_ref())
        // An empty `elicitation` object is the form mode of earlier revisions.
        .is_some_and(|e| e.form.is_some() || e.url.is_none())
}

/// The `_meta` key a stdio upstream finds its per-call credential under. Over HTTP the
/// credential travels as `Authorization: Bearer` instead and this key is removed.
pub const CREDENTIAL_META_KEY: &str = "io.tollgate/credential";

/// A credential for one forwarded call. Never printed, never shown to the agent.
#[derive(Clone)]
pub struct Credential(Arc<str>);

impl Credential {
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Self(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(***)")
    }
}

/// What must happen before a call is forwarded (its decision made durable in the audit
/// trail, a token exchanged): it yields the credential the call carries, if any, or the reason
/// the call is refused.
pub struct PendingCredential(
    pub  std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<Credential>, String>> + Send>,
    >,
);

impl std::fmt::Debug for PendingCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingCredential")
    }
}

/// What happens to a call before it is forwarded.
#[derive(Debug)]
pub enum Verdict {
    /// Forward the call to its upstream.
    Forward,
    /// Forward the call carrying this credential.
    ForwardWith(Credential),
    /// Forward the call once this is done, carrying the credential it yields (the decision
    /// recorded, a token exchanged); when it fails the call is refused with its reason.
    ForwardAfter(PendingCredential),
    /// Hold the call until a person answers its approval request; approved, the call is
    /// decided again by [`Interceptor::resume`].
    AwaitApproval(crate::approvals::Waiting),
    /// Answer the agent with this result and forward nothing.
    Refuse(CallToolResult),
    /// Answer as if the tool did not exist: this session may never call it.
    Hide,
    /// Answer with a JSON-RPC error (the session's grant is not accepted) and forward nothing.
    Reject(String),
}

/// The JSON-RPC error code of a refused grant.
pub const GRANT_REFUSED: i32 = -32001;

/// How a forwarded call ended.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// The call returned a result; `is_error` when the tool reported a failure.
    Completed { is_error: bool },
    /// The upstream asked for more input (2026-07-28 `InputRequiredResult`) or made a task.
    Pending,
    /// The call failed on the way (upstream down, timeout, cancellation, protocol error): what
    /// the error says, already cleaned of the upstream's secrets and the call's credential.
    Failed(&'a str),
}

/// A verdict being reached: what decides may ask a store a network hop away.
pub type PendingVerdict<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send + 'a>>;

/// The hook every tool call passes through.
pub trait Interceptor: Send + Sync + 'static {
    /// Called before forwarding; the default path forwards.
    fn before_call<'a>(&'a self, call: &'a ToolCall<'a>) -> PendingVerdict<'a>;
    /// Called once the call has ended, whatever the outcome.
    fn after_call(&self, call: &ToolCall<'_>, outcome: &Outcome<'_>);
    /// Called when approval `approval` of this call was given by `approver`: the verdict now.
    fn resume<'a>(
        &'a self,
        _call: &'a ToolCall<'a>,
        _approval: &'a str,
        _approver: &'a str,
    ) -> PendingVerdict<'a> {
        Box::pin(std::future::ready(Verdict::Refuse(refused(
            "denied: approvals are not handled here",
        ))))
    }
    /// Whether `tools/list` shows `tool` to this caller.
    fn visible(&self, _session: SessionId, _caller: &Caller, _tool: &ToolFacts) -> bool {
        true
    }
    /// The session has ended; forget what was kept for it.
    fn session_ended(&self, _session: SessionId) {}
    /// Tollgate is stopping: finish what must be finished (the audit trail's closing record).
    fn shutdown(&self) {}
}

/// Forwards everything. The relay's behaviour until a decision engine is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Interceptor for AllowAll {
    fn before_call<'a>(&'a self, _call: &'a ToolCall<'a>) -> PendingVerdict<'a> {
        Box::pin(std::future::ready(Verdict::Forward))
    }

    fn after_call(&self, _call: &ToolCall<'_>, _outcome: &Outcome<'_>) {}
}

/// How a call's agent is reached while the call is held for approval: where its progress goes,
/// how the user at it is asked, and when it gives up.
pub(crate) struct AgentLink<'a> {
    /// The agent, its request, its progress token, its capabilities and, on the fast path for
    /// HTTP, the response stream of its call.
    pub route: &'a crate::upstream::CallRoute,
    /// Raw lines to the agent (the fast path); none: through rmcp.
    pub raw: Option<&'a crate::fast::AgentOut>,
    /// Cancelled when the agent withdraws the call.
    pub cancel: &'a tokio_util::sync::CancellationToken,
    /// The agent takes input requests instead of server→client requests (2026-07-28).
    pub modern: bool,
}

/// The key of the approval question in an input request Tollgate issues.
pub(crate) const APPROVAL_INPUT_KEY: &str = "tollgate-approval";
/// The field of the approval form the user sets to approve.
const APPROVE_FIELD: &str = "approve";

/// The question the user at the agent is asked: the request's summary, and one yes/no field.
pub(crate) fn approval_question(message: &str) -> rmcp::model::ElicitRequest {
    let schema = rmcp::model::ElicitationSchema::builder()
        .required_bool_with(APPROVE_FIELD, |b| {
            b.title("Approve this call")
                .description("Yes lets this one call go ahead exactly as shown; no denies it.")
                .with_default(false)
        })
        .title("Tollgate approval")
        .build()
        .unwrap_or_else(|_| rmcp::model::ElicitationSchema::new(Default::default()));
    rmcp::model::ElicitRequest::new(rmcp::model::ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: message.to_owned(),
        requested_schema: schema,
    })
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

fn refused(text: &str) -> CallToolResult {
    CallToolResult::error(vec![rmcp::model::ContentBlock::text(text.to_owned())])
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
