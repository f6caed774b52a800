//! The fast path for `tools/call` between a 2025-11-25 stdio agent and a 2025-11-25 stdio
//! upstream: the call is read from its envelope, decided at the same interception point, and
//! forwarded with its arguments and result as raw bytes, never built into typed messages.
//! Everything else (and every call the fast path cannot serve exactly) goes through rmcp.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use rmcp::model::{JsonObject, NumberOrString, ProtocolVersion, RequestId, RequestMetaObject};
use serde::Deserialize;
use serde_json::{Value, value::RawValue};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field};

use crate::{
    ProxyError,
    hub::Hub,
    intercept::{Outcome, ToolCall, Verdict},
    session::SessionId,
    upstream::{
        CallRoute, Upstream,
        stdio_link::{ProgressSink, RAW_PREFIX, RawLane},
    },
    wire::{Envelope, LineWriter, error_line},
};

/// The parameters of a `tools/call` the fast path serves; any other field sends the call
/// through rmcp instead.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

/// One agent connection's fast path.
#[derive(Debug)]
pub(crate) struct FastPath {
    hub: Arc<Hub>,
    session: SessionId,
    out: LineWriter,
    /// Calls in flight, by the agent's request id as written on the wire.
    calls: Mutex<HashMap<String, CancellationToken>>,
}

impl FastPath {
    pub(crate) fn new(hub: Arc<Hub>, session: SessionId, out: LineWriter) -> Self {
        Self {
            hub,
            session,
            out,
            calls: Mutex::new(HashMap::new()),
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `line` if it is a call the fast path serves or a cancellation of one.
    pub(crate) fn try_take(self: &Arc<Self>, line: &[u8]) -> bool {
        let Ok(envelope) = Envelope::parse(line) else {
            return false;
        };
        if envelope.jsonrpc.as_deref() != Some("2.0") {
            return false;
        }
        match envelope.method.as_deref() {
            Some("tools/call") => self.try_call(&envelope),
            Some("notifications/cancelled") => self.try_cancel(&envelope),
            _ => false,
        }
    }

    fn try_cancel(&self, envelope: &Envelope<'_>) -> bool {
        #[derive(Deserialize)]
        struct Cancelled<'a> {
            #[serde(borrow, rename = "requestId")]
            request_id: Option<&'a RawValue>,
        }
        let Some(id) = envelope
            .params
            .and_then(|p| serde_json::from_str::<Cancelled<'_>>(p.get()).ok())
            .and_then(|c| c.request_id)
        else {
            return false;
        };
        match self.calls().remove(id.get()) {
            Some(cancel) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    fn try_call(self: &Arc<Self>, envelope: &Envelope<'_>) -> bool {
        let (Some(id), Some(params)) = (envelope.id, envelope.params) else {
            return false;
        };
        let Some(agent) = self.hub.sessions.peer(self.session) else {
            return false;
        };
        let legacy_agent = agent.peer_info().is_some_and(|info| {
            info.protocol_version.as_str() < ProtocolVersion::V_2026_07_28.as_str()
        });
        if !legacy_agent || self.calls().contains_key(id.get()) {
            return false;
        }
        let Ok(call) = serde_json::from_str::<CallParams<'_>>(params.get()) else {
            return false;
        };
        let merged = self.hub.merged();
        let Ok(route) = merged.tool(&call.name) else {
            return false;
        };
        let Some(upstream) = self.hub.upstreams.get(route.upstream).cloned() else {
            return false;
        };
        let Some(lane) = upstream.raw_lane() else {
            return false;
        };
        let arguments = match call
            .arguments
            .map(|a| serde_json::from_str::<Value>(a.get()))
        {
            None => None,
            Some(Ok(Value::Object(map))) => Some(map),
            // Not an object: rmcp answers with the precise error.
            Some(_) => return false,
        };
        let meta = match call
            .meta
            .map(|m| serde_json::from_str::<RequestMetaObject>(m.get()))
        {
            None => RequestMetaObject::new(),
            Some(Ok(meta)) => meta,
            Some(Err(_)) => return false,
        };
        let Ok(request_id) = serde_json::from_str::<NumberOrString>(id.get()) else {
            return false;
        };
        let cancel = CancellationToken::new();
        self.calls().insert(id.get().to_owned(), cancel.clone());
        let job = Job {
            agent_id: id.to_owned(),
            request_id,
            exposed: call.name.into_owned(),
            tool: route.name.clone(),
            arguments_raw: call.arguments.map(ToOwned::to_owned),
            arguments,
            meta,
            agent,
            upstream,
            lane,
            cancel,
        };
        let fast = self.clone();
        tokio::spawn(async move { fast.run(job).await });
        true
    }

    async fn run(self: Arc<Self>, job: Job) {
        let span = tracing::info_span!(
            "tools/call",
            session = self.session,
            upstream = %job.upstream.name,
            tool = %job.tool,
            verdict = field::Empty,
            outcome = field::Empty,
            latency_us = field::Empty,
        );
        let key = job.agent_id.get().to_owned();
        async {
            let started = Instant::now();
            let line = self.call(&job).await;
            tracing::Span::current().record("latency_us", started.elapsed().as_micros() as u64);
            if let Some(line) = line {
                let _ = self.out.write_line(line).await;
            }
        }
        .instrument(span)
        .await;
        self.calls().remove(&key);
    }

    /// The line the agent receives, or none when the agent cancelled the call.
    async fn call(&self, job: &Job) -> Option<Vec<u8>> {
        let span = tracing::Span::current();
        let call = ToolCall {
            session: self.session,
            upstream: &job.upstream.name,
            tool: &job.tool,
            exposed_name: &job.exposed,
            arguments: job.arguments.as_ref(),
            meta: &job.meta,
        };
        if let Verdict::Refuse(result) = self.hub.interceptor.before_call(&call) {
            span.record("verdict", "refuse");
            self.hub.interceptor.after_call(
                &call,
                &Outcome::Completed {
                    is_error: result.is_error == Some(true),
                },
            );
            let result = serde_json::to_string(&result).unwrap_or_else(|_| "{}".to_owned());
            return Some(
                format!(
                    r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#,
                    job.agent_id.get()
                )
                .into_bytes(),
            );
        }
        span.record("verdict", "forward");

        let agent_progress = job.meta.get_progress_token();
        let progress = agent_progress
            .as_ref()
            .and_then(|t| serde_json::value::to_raw_value(t).ok())
            .map(|token| ProgressSink {
                token,
                out: self.out.clone(),
            });
        let (n, answered) = job.lane.register(progress);
        let upstream_token = format!("{RAW_PREFIX}{n}");
        let mut meta = crate::relay::forwardable_meta(&job.meta).unwrap_or_default();
        if agent_progress.is_some() {
            meta.0.0.insert(
                "progressToken".to_owned(),
                Value::String(upstream_token.clone()),
            );
        }
        let mut params = format!(
            r#"{{"name":{}"#,
            serde_json::to_string(&job.tool).unwrap_or_default()
        );
        if let Some(arguments) = &job.arguments_raw {
            params.push_str(r#","arguments":"#);
            params.push_str(arguments.get());
        }
        if !meta.0.0.is_empty() {
            params.push_str(r#","_meta":"#);
            params.push_str(&serde_json::to_string(&meta.0.0).unwrap_or_else(|_| "{}".to_owned()));
        }
        params.push('}');
        let request = format!(
            r#"{{"jsonrpc":"2.0","id":"{upstream_token}","method":"tools/call","params":{params}}}"#
        );

        // Server→client requests the upstream sends meanwhile find this session through the
        // same in-flight table as rmcp-path calls.
        let _tracked = job.upstream.track(
            CallRoute {
                session: self.session,
                agent: job.agent.clone(),
                agent_request: RequestId::from(job.request_id.clone()),
                agent_progress,
                capabilities: job.agent.peer_info().map(|i| i.capabilities.clone()),
                input: None,
            },
            rmcp::model::ProgressToken(NumberOrString::String(upstream_token.clone().into())),
        );

        let failed = |error: ProxyError| {
            self.hub
                .interceptor
                .after_call(&call, &Outcome::Failed(&error));
            span.record("outcome", "failed");
            let mcp = error.into_mcp();
            let body = serde_json::json!({"jsonrpc": "2.0", "id": serde_json::from_str::<Value>(job.agent_id.get()).unwrap_or(Value::Null), "error": mcp});
            Some(body.to_string().into_bytes())
        };
        if job.lane.send(request.into_bytes()).await.is_err() {
            job.lane.forget(n);
            return failed(ProxyError::UpstreamClosed {
                upstream: job.upstream.name.clone(),
            });
        }
        let timeout = job.upstream.config.call_timeout;
        let cancel_upstream = |reason: &str| {
            let notice = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": upstream_token, "reason": reason}});
            job.lane.forget(n);
            let lane = job.lane.clone();
            async move {
                let _ = lane.send(notice.to_string().into_bytes()).await;
            }
        };
        tokio::select! {
            answer = answered => match answer {
                Ok(line) => Some(self.answer(job, &call, &line)),
                Err(_) => failed(ProxyError::UpstreamClosed { upstream: job.upstream.name.clone() }),
            },
            () = tokio::time::sleep(timeout) => {
                cancel_upstream("request timeout").await;
                failed(ProxyError::UpstreamTimeout { upstream: job.upstream.name.clone(), timeout_ms: timeout.as_millis() })
            }
            () = job.cancel.cancelled() => {
                cancel_upstream("cancelled by the agent").await;
                self.hub.interceptor.after_call(&call, &Outcome::Failed(&ProxyError::Cancelled));
                span.record("outcome", "cancelled");
                None
            }
        }
    }

    /// The upstream's answer with the agent's id in place of the raw call's.
    fn answer(&self, job: &Job, call: &ToolCall<'_>, line: &[u8]) -> Vec<u8> {
        #[derive(Deserialize)]
        struct ResultFlags {
            #[serde(rename = "isError", default)]
            is_error: Option<bool>,
        }
        let span = tracing::Span::current();
        let envelope = match Envelope::parse(line) {
            Ok(envelope) => envelope,
            Err(_) => {
                return error_line(
                    &job.agent_id,
                    -32603,
                    "the upstream answered with malformed JSON",
                );
            }
        };
        let id = job.agent_id.get();
        if let Some(result) = envelope.result {
            let is_error = serde_json::from_str::<ResultFlags>(result.get())
                .ok()
                .and_then(|f| f.is_error)
                == Some(true);
            span.record("outcome", if is_error { "tool_error" } else { "ok" });
            self.hub
                .interceptor
                .after_call(call, &Outcome::Completed { is_error });
            return format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{}}}"#, result.get())
                .into_bytes();
        }
        let error = envelope
            .error
            .map(|e| e.get().to_owned())
            .unwrap_or_else(|| {
                r#"{"code":-32603,"message":"the upstream answered without a result"}"#.to_owned()
            });
        let relayed = serde_json::from_str::<rmcp::ErrorData>(&error)
            .map(ProxyError::Relayed)
            .unwrap_or(ProxyError::UpstreamFailed {
                upstream: job.upstream.name.clone(),
                message: "malformed error".to_owned(),
            });
        span.record("outcome", "failed");
        self.hub
            .interceptor
            .after_call(call, &Outcome::Failed(&relayed));
        format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#).into_bytes()
    }
}

#[derive(Debug)]
struct Job {
    agent_id: Box<RawValue>,
    request_id: NumberOrString,
    exposed: String,
    tool: String,
    arguments_raw: Option<Box<RawValue>>,
    arguments: Option<JsonObject>,
    meta: RequestMetaObject,
    agent: rmcp::service::Peer<rmcp::RoleServer>,
    upstream: Arc<Upstream>,
    lane: Arc<RawLane>,
    cancel: CancellationToken,
}
