//! The interception point: every `tools/call` passes here with its session, upstream, tool,
//! arguments and `_meta` before it is forwarded, and again with its outcome.
//!
//! Decisions, credentials and audit plug in behind [`Interceptor`]; the relay itself never
//! decides anything.

use rmcp::model::{CallToolResult, JsonObject, RequestMetaObject};

use crate::session::SessionId;

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
}

/// What happens to a call before it is forwarded.
#[derive(Debug)]
pub enum Verdict {
    /// Forward the call to its upstream.
    Forward,
    /// Answer the agent with this result and forward nothing.
    Refuse(CallToolResult),
}

/// How a forwarded call ended.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// The call returned a result; `is_error` when the tool reported a failure.
    Completed { is_error: bool },
    /// The upstream asked for more input (2026-07-28 `InputRequiredResult`) or made a task.
    Pending,
    /// The call failed on the way (upstream down, timeout, cancellation, protocol error).
    Failed(&'a crate::ProxyError),
}

/// The hook every tool call passes through.
pub trait Interceptor: Send + Sync + 'static {
    /// Called before forwarding; the default path forwards.
    fn before_call(&self, call: &ToolCall<'_>) -> Verdict;
    /// Called once the call has ended, whatever the outcome.
    fn after_call(&self, call: &ToolCall<'_>, outcome: &Outcome<'_>);
}

/// Forwards everything. The relay's behaviour until a decision engine is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Interceptor for AllowAll {
    fn before_call(&self, _call: &ToolCall<'_>) -> Verdict {
        Verdict::Forward
    }

    fn after_call(&self, _call: &ToolCall<'_>, _outcome: &Outcome<'_>) {}
}

/// Passes `call` through `interceptor` before forwarding and records the verdict on the
/// current span. A refusal is the call's whole outcome: it is reported to `after_call` here and
/// returned as the answer.
pub(crate) fn screen(interceptor: &dyn Interceptor, call: &ToolCall<'_>) -> Option<CallToolResult> {
    let span = tracing::Span::current();
    match interceptor.before_call(call) {
        Verdict::Forward => {
            span.record("verdict", "forward");
            None
        }
        Verdict::Refuse(result) => {
            span.record("verdict", "refuse");
            interceptor.after_call(
                call,
                &Outcome::Completed {
                    is_error: result.is_error == Some(true),
                },
            );
            Some(result)
        }
    }
}
