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

/// A forwarded call's result as the upstream sent it (already cleaned of secrets), handed over
/// whole so that it can be noted after the agent has it: its JSON text where the relay did not
/// parse it, or the parsed value.
#[derive(Debug, Clone)]
pub enum ResultJson {
    Text(Box<str>),
    Value(serde_json::Value),
}

/// A result being taken note of; an error withholds the result from the agent (what it
/// carries could not be remembered, and what is not remembered cannot be judged later).
pub type PendingNote<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// The hook every tool call passes through.
pub trait Interceptor: Send + Sync + 'static {
    /// Called before forwarding; the default path forwards.
    fn before_call<'a>(&'a self, call: &'a ToolCall<'a>) -> PendingVerdict<'a>;
    /// Called once the call has ended, whatever the outcome.
    fn after_call(&self, call: &ToolCall<'_>, outcome: &Outcome<'_>);
    /// Whether [`Interceptor::note_result`] wants results: where nothing does, the relay does
    /// not hand them over.
    fn wants_results(&self) -> bool {
        false
    }
    /// Called with a forwarded call's result before the agent sees it (and before
    /// [`Interceptor::after_call`]); when it fails, the agent gets an error instead. An
    /// interceptor may finish noting after the agent has the result, provided every later
    /// decision that could act on it waits for the note (and refuses when the note failed).
    fn note_result<'a>(&'a self, _call: &'a ToolCall<'a>, _result: ResultJson) -> PendingNote<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// Called with a `resources/read` result (scrubbed, as the agent will see it) before the
    /// agent sees it; when it fails, the agent gets an error instead. It may be noted later on
    /// the terms of [`Interceptor::note_result`].
    fn note_read<'a>(
        &'a self,
        _session: SessionId,
        _caller: &'a Caller,
        _uri: &'a str,
        _result: serde_json::Value,
    ) -> PendingNote<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
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

/// A refusal the agent reads as the tool's error.
pub(crate) fn refused(text: &str) -> CallToolResult {
    CallToolResult::error(vec![rmcp::model::ContentBlock::text(text.to_owned())])
}
