//! The fast path for `tools/call` between a 2025-11-25 agent and a 2025-11-25 upstream: the
//! call is read from its envelope, passes the same interception point, and goes upstream with
//! an id and progress token of Tollgate's own (`"tg-<n>"`) and its arguments and result as raw
//! bytes, never built into typed messages. Agents on stdio and on HTTP sessions, upstreams on
//! stdio and on HTTP. Everything else, and every call the fast path cannot serve exactly, goes
//! through rmcp.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use rmcp::{
    ErrorData as McpError,
    model::{
        JsonObject, NumberOrString, ProtocolVersion, RequestId, RequestMetaObject,
        ServerJsonRpcMessage,
    },
};
use serde::Deserialize;
use serde_json::{Value, value::RawValue};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field};

use crate::{
    ProxyError,
    agent::{AgentLine, AgentOut, DirectAgent},
    hub::Hub,
    intercept::{Caller, Outcome, ToolCall},
    screen::Screened,
    session::SessionId,
    upstream::{
        CallRoute, Lane, Upstream,
        stdio_link::{ProgressSink, RAW_PREFIX},
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

/// The fast path of each 2025-11-25 HTTP session, by its `Mcp-Session-Id`.
#[derive(Debug, Default)]
pub(crate) struct FastPaths(Mutex<HashMap<String, Arc<FastPath>>>);

impl FastPaths {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<FastPath>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, session: &str, fast: Arc<FastPath>) {
        self.table().insert(session.to_owned(), fast);
    }

    pub(crate) fn get(&self, session: &str) -> Option<Arc<FastPath>> {
        self.table().get(session).cloned()
    }

    pub(crate) fn remove(&self, session: &str) {
        self.table().remove(session);
    }
}

/// One agent session's fast path.
#[derive(Debug)]
pub(crate) struct FastPath {
    hub: Arc<Hub>,
    session: SessionId,
    /// The agent's stdio stream; none for an HTTP session, whose calls answer on their own
    /// response streams.
    line_out: Option<LineWriter>,
    /// Calls in flight, by the agent's request id as written on the wire.
    calls: Mutex<HashMap<String, CancellationToken>>,
    /// The caller of a stdio session; an HTTP call brings its own.
    caller: Option<Arc<Caller>>,
}

impl FastPath {
    pub(crate) fn new(
        hub: Arc<Hub>,
        session: SessionId,
        line_out: Option<LineWriter>,
        caller: Option<Arc<Caller>>,
    ) -> Self {
        Self {
            hub,
            session,
            line_out,
            calls: Mutex::new(HashMap::new()),
            caller,
        }
    }

    pub(crate) fn session(&self) -> SessionId {
        self.session
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stdio: takes `line` if it is a call the fast path serves or a cancellation of one.
    pub(crate) fn try_take(self: &Arc<Self>, line: &[u8]) -> bool {
        let Some(out) = &self.line_out else {
            return false;
        };
        let Ok(envelope) = Envelope::parse(line) else {
            return false;
        };
        if envelope.jsonrpc.as_deref() != Some("2.0") {
            return false;
        }
        match envelope.method.as_deref() {
            Some("tools/call") => {
                let caller = self.caller.clone().unwrap_or_default();
                self.try_call(&envelope, AgentOut::Line(out.clone()), None, caller)
            }
            Some("notifications/cancelled") => self.try_cancel(&envelope),
            _ => false,
        }
    }

    /// HTTP: starts the call if the fast path serves it; its messages come on the receiver,
    /// the answer last.
    pub(crate) fn try_call_http(
        self: &Arc<Self>,
        envelope: &Envelope<'_>,
        caller: Arc<Caller>,
    ) -> Option<mpsc::Receiver<AgentLine>> {
        let (out, messages) = mpsc::channel(64);
        let direct = DirectAgent::new(self.session, out.clone(), self.hub.agent_answers.clone());
        self.try_call(envelope, AgentOut::Events(out), Some(direct), caller)
            .then_some(messages)
    }

    /// Cancels the fast-path call `envelope` names; false if it names none.
    pub(crate) fn try_cancel(&self, envelope: &Envelope<'_>) -> bool {
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

    fn try_call(
        self: &Arc<Self>,
        envelope: &Envelope<'_>,
        out: AgentOut,
        direct: Option<DirectAgent>,
        caller: Arc<Caller>,
    ) -> bool {
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
        // A tool this caller may not see is answered by rmcp's path, as an unknown tool.
        let Some(facts) = merged.facts.get(call.name.as_ref()).cloned() else {
            return false;
        };
        if !self.hub.interceptor.visible(self.session, &caller, &facts) {
            return false;
        }
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
            out,
            direct,
            caller,
            facts,
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
                job.out
                    .finish(crate::scrub::bytes(line, &job.upstream.config.scrub))
                    .await;
            }
        }
        .instrument(span)
        .await;
        self.calls().remove(&key);
    }

    /// The line the agent receives, or none when the agent cancelled the call.
    async fn call(&self, job: &Job) -> Option<Vec<u8>> {
        let span = tracing::Span::current();
        let agent_progress = job.meta.get_progress_token();
        // Where what the upstream (or the approval gate) sends about this call goes.
        let agent_route = CallRoute {
            session: self.session,
            agent: job.agent.clone(),
            agent_request: RequestId::from(job.request_id.clone()),
            agent_progress: agent_progress.clone(),
            capabilities: job.agent.peer_info().map(|i| i.capabilities.clone()),
            input: None,
            direct: job.direct.clone(),
        };
        let call = ToolCall {
            session: self.session,
            upstream: &job.upstream.name,
            tool: &job.tool,
            exposed_name: &job.exposed,
            arguments: job.arguments.as_ref(),
            meta: &job.meta,
            caller: &job.caller,
            facts: Some(&job.facts),
            can_ask: crate::intercept::can_ask(agent_route.capabilities.as_ref()),
            number: crate::intercept::next_call_number(),
        };
        let link = crate::screen::AgentLink {
            route: &agent_route,
            raw: Some(&job.out),
            cancel: &job.cancel,
            modern: false,
        };
        let credential =
            match crate::screen::screen(self.hub.interceptor.as_ref(), &call, &link).await {
                Screened::Forward(credential) => credential,
                Screened::Cancelled => return None,
                // The fast path serves 2025-11-25 agents only, which are asked during the call.
                Screened::Park(_) => {
                    return Some(error_line(
                        &job.agent_id,
                        i64::from(rmcp::model::ErrorCode::INTERNAL_ERROR.0),
                        "the call was held in a way this path cannot serve; it is denied",
                    ));
                }
                Screened::Answer(result) => {
                    let result = serde_json::to_string(&result).unwrap_or_else(|_| "{}".to_owned());
                    return Some(
                        format!(
                            r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#,
                            job.agent_id.get()
                        )
                        .into_bytes(),
                    );
                }
                Screened::Unknown => {
                    let error = ProxyError::UnknownTool {
                        name: job.exposed.clone(),
                    }
                    .into_mcp();
                    return Some(error_line(
                        &job.agent_id,
                        i64::from(error.code.0),
                        &error.message,
                    ));
                }
                Screened::Rejected(reason) => {
                    let error = ProxyError::GrantRefused { reason }.into_mcp();
                    return Some(error_line(
                        &job.agent_id,
                        i64::from(error.code.0),
                        &error.message,
                    ));
                }
            };

        let agent_token = agent_progress
            .as_ref()
            .and_then(|t| serde_json::value::to_raw_value(t).ok());
        let (n, answered) = match &job.lane {
            Lane::Stdio(lane) => {
                let sink = agent_token.clone().map(|token| ProgressSink {
                    token,
                    out: job.out.clone(),
                });
                let (n, answered) = lane.register(sink);
                (n, Some(answered))
            }
            Lane::Http(lane) => (lane.next_call(), None),
        };
        let upstream_token = format!("{RAW_PREFIX}{n}");
        // What the answer must not echo back to the agent, nor the trail keep.
        let echo =
            crate::scrub::for_call(&job.upstream.config.scrub, credential.as_ref()).into_owned();
        // A stdio upstream finds the credential in `_meta`; an HTTP one in its header.
        let (meta_credential, bearer) = match &job.lane {
            Lane::Stdio(_) => (credential, None),
            Lane::Http(_) => (None, credential),
        };
        let request = upstream_request(
            job,
            &upstream_token,
            agent_progress.is_some(),
            meta_credential.as_ref(),
        );

        // Server→client requests the upstream sends meanwhile find this session through the
        // same in-flight table as rmcp-path calls.
        let _tracked = job.upstream.track(
            agent_route.clone(),
            rmcp::model::ProgressToken(NumberOrString::String(upstream_token.clone().into())),
        );

        let failed = |error: ProxyError| {
            self.hub.interceptor.after_call(
                &call,
                &Outcome::Failed(&crate::scrub::text(&error.to_string(), &echo)),
            );
            span.record("outcome", "failed");
            let body = serde_json::json!({
                "jsonrpc": "2.0",
                "id": serde_json::from_str::<Value>(job.agent_id.get()).unwrap_or(Value::Null),
                "error": error.into_mcp(),
            });
            Some(body.to_string().into_bytes())
        };
        let timeout = job.upstream.config.call_timeout;
        let answer = async {
            match (&job.lane, answered) {
                (Lane::Stdio(lane), Some(answered)) => {
                    if lane.send(request).await.is_err() {
                        lane.forget(n);
                        return Err(ProxyError::UpstreamClosed {
                            upstream: job.upstream.name.clone(),
                        });
                    }
                    answered.await.map_err(|_| ProxyError::UpstreamClosed {
                        upstream: job.upstream.name.clone(),
                    })
                }
                (Lane::Http(lane), _) => {
                    let side = SideChannel {
                        hub: self.hub.clone(),
                        upstream: job.upstream.clone(),
                        lane: lane.clone(),
                        out: job.out.clone(),
                        agent_token: agent_token.clone(),
                        upstream_token: upstream_token.clone(),
                        cancel: job.cancel.clone(),
                    };
                    lane.call(request, &upstream_token, bearer.as_ref(), move |message| {
                        side.handle(message)
                    })
                    .await
                }
                (Lane::Stdio(_), None) => Err(ProxyError::UpstreamClosed {
                    upstream: job.upstream.name.clone(),
                }),
            }
        };
        let cancel_upstream = |reason: &str| {
            let notice = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": upstream_token, "reason": reason}});
            let lane = job.lane.clone();
            async move {
                match lane {
                    Lane::Stdio(lane) => {
                        lane.forget(n);
                        let _ = lane.send(notice.to_string().into_bytes()).await;
                    }
                    Lane::Http(lane) => {
                        let _ = lane.deliver(notice.to_string().into_bytes()).await;
                    }
                }
            }
        };
        let deadline = self.hub.deadlines.arm(timeout);
        tokio::select! {
            answer = answer => match answer {
                Ok(line) => Some(self.answer(job, &call, &crate::scrub::bytes(line, &echo)).await),
                Err(error) => failed(error),
            },
            () = deadline.expired() => {
                cancel_upstream("request timeout").await;
                failed(ProxyError::UpstreamTimeout { upstream: job.upstream.name.clone(), timeout_ms: timeout.as_millis() })
            }
            () = job.cancel.cancelled() => {
                cancel_upstream("cancelled by the agent").await;
                self.hub.interceptor.after_call(&call, &Outcome::Failed(&ProxyError::Cancelled.to_string()));
                span.record("outcome", "cancelled");
                None
            }
        }
    }

    /// The upstream's answer with the agent's id in place of the raw call's.
    async fn answer(&self, job: &Job, call: &ToolCall<'_>, line: &[u8]) -> Vec<u8> {
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
            let interceptor = &self.hub.interceptor;
            if interceptor.wants_results()
                && let Err(reason) = interceptor
                    .note_result(
                        call,
                        crate::intercept::ResultJson::Text(result.get().into()),
                    )
                    .await
            {
                span.record("outcome", "failed");
                interceptor.after_call(call, &Outcome::Failed(&reason));
                return error_line(&job.agent_id, -32603, &reason);
            }
            span.record("outcome", if is_error { "tool_error" } else { "ok" });
            interceptor.after_call(call, &Outcome::Completed { is_error });
            return format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{}}}"#, result.get())
                .into_bytes();
        }
        let error = envelope
            .error
            .map(|e| e.get().to_owned())
            .unwrap_or_else(|| {
                r#"{"code":-32603,"message":"the upstream answered without a result"}"#.to_owned()
            });
        let relayed = serde_json::from_str::<McpError>(&error)
            .map(ProxyError::Relayed)
            .unwrap_or(ProxyError::UpstreamFailed {
                upstream: job.upstream.name.clone(),
                message: "malformed error".to_owned(),
            });
        span.record("outcome", "failed");
        self.hub
            .interceptor
            .after_call(call, &Outcome::Failed(&relayed.to_string()));
        format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#).into_bytes()
    }
}

/// The upstream request line: the upstream's tool name, the agent's arguments as they came,
/// and the agent's `_meta` minus the hop's fields, with Tollgate's progress token if the agent
/// asked for progress.
fn upstream_request(
    job: &Job,
    upstream_token: &str,
    wants_progress: bool,
    credential: Option<&crate::intercept::Credential>,
) -> Vec<u8> {
    let mut meta = crate::upstream::forwardable_meta(&job.meta).unwrap_or_default();
    if let Some(credential) = credential {
        meta.0.0.insert(
            crate::intercept::CREDENTIAL_META_KEY.to_owned(),
            Value::String(credential.expose().to_owned()),
        );
    }
    if wants_progress {
        meta.0.0.insert(
            "progressToken".to_owned(),
            Value::String(upstream_token.to_owned()),
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
    format!(
        r#"{{"jsonrpc":"2.0","id":"{upstream_token}","method":"tools/call","params":{params}}}"#
    )
    .into_bytes()
}

/// What a raw HTTP call needs to handle the messages its upstream sends on the call's stream
/// besides the answer.
struct SideChannel {
    hub: Arc<Hub>,
    upstream: Arc<Upstream>,
    lane: Arc<crate::upstream::http_lane::HttpLane>,
    out: AgentOut,
    agent_token: Option<Box<RawValue>>,
    upstream_token: String,
    cancel: CancellationToken,
}

impl SideChannel {
    /// Progress goes to the agent under its own token, log messages to the sessions they
    /// concern, server→client requests to the agent and their answers back upstream.
    fn handle(&self, message: &[u8]) {
        let Self {
            hub,
            upstream,
            lane,
            out,
            agent_token,
            upstream_token,
            cancel,
        } = self;
        let agent_token = agent_token.as_deref();
        let Ok(message) = serde_json::from_slice::<ServerJsonRpcMessage>(message) else {
            return;
        };
        match message {
            ServerJsonRpcMessage::Notification(n) => match n.notification {
                rmcp::model::ServerNotification::ProgressNotification(mut p) => {
                    let ours = matches!(&p.params.progress_token.0, NumberOrString::String(s) if s.as_ref() == upstream_token);
                    let Some(token) = agent_token.filter(|_| ours) else {
                        return;
                    };
                    let Ok(token) = serde_json::from_str(token.get()) else {
                        return;
                    };
                    p.params.progress_token = token;
                    let note = ServerJsonRpcMessage::notification(
                        rmcp::model::ServerNotification::ProgressNotification(p),
                    );
                    if let Ok(line) = serde_json::to_vec(&note) {
                        out.note(crate::scrub::bytes(line, &upstream.config.scrub));
                    }
                }
                rmcp::model::ServerNotification::LoggingMessageNotification(l) => {
                    crate::upstream::deliver_log(&hub.sessions, upstream, &l.params);
                }
                _ => {}
            },
            ServerJsonRpcMessage::Request(request) => {
                let (id, request) = (request.id, request.request);
                let upstream = upstream.clone();
                let lane = lane.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let answer =
                        crate::upstream::answer_server_request(&upstream, request, &cancel).await;
                    let message = match answer {
                        Ok(result) => rmcp::model::ClientJsonRpcMessage::response(result, id),
                        Err(error) => rmcp::model::ClientJsonRpcMessage::error(error, Some(id)),
                    };
                    if let Ok(body) = serde_json::to_vec(&message) {
                        let _ = lane.deliver(body).await;
                    }
                });
            }
            _ => {}
        }
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
    lane: Lane,
    cancel: CancellationToken,
    out: AgentOut,
    direct: Option<DirectAgent>,
    caller: Arc<Caller>,
    facts: Arc<tollgate_policy::ToolFacts>,
}
