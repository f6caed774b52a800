//! The agent side of the relay: one [`AgentSession`] per agent connection answers from the
//! merged catalog and forwards everything else to the upstream that owns it. Every
//! `tools/call` goes through [`AgentSession::guarded_call`], the interception point.

#![expect(
    deprecated,
    reason = "sampling, roots, logging and resource subscriptions are deprecated upstream but clients still use them; a faithful relay carries them"
)]

use std::{sync::Arc, time::Instant};

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    model::{
        CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest,
        CompleteRequest, CompleteRequestParams, CompleteResult, GetExtensions, GetPromptRequest,
        GetPromptRequestParams, GetPromptResponse, Implementation, InputRequest, InputRequests,
        InputResponses, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
        ListToolsResult, PaginatedRequestParams, ProtocolVersion, ReadResourceRequest,
        ReadResourceRequestParams, ReadResourceResponse, Reference, RequestMetaObject,
        ServerCapabilities, ServerConfig, ServerRequest, ServerResult, SetLevelRequestParams,
        SubscribeRequest, SubscribeRequestParams, Tool, UnsubscribeRequest,
        UnsubscribeRequestParams,
    },
    service::{NotificationContext, Peer, RequestContext},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field};

use crate::{
    ProxyError,
    fast::{FastPath, FastPaths},
    hub::Hub,
    intercept::{Caller, Outcome, ToolCall},
    names::page,
    screen::Screened,
    session::SessionId,
    upstream::{CallRoute, Upstream},
};

/// Most input rounds Tollgate drives for an agent that cannot take `InputRequiredResult`.
const MAX_INPUT_ROUNDS: usize = 10;

/// One agent connection.
#[derive(Debug, Clone)]
pub struct AgentSession {
    id: SessionId,
    hub: Arc<Hub>,
    guard: Arc<SessionGuard>,
    /// The caller of a stdio session, fixed when it starts; an HTTP session's caller comes
    /// with each request.
    caller: Option<Arc<Caller>>,
}

/// Removes the session from the tables when its last handle goes.
#[derive(Debug)]
struct SessionGuard {
    id: SessionId,
    hub: Arc<Hub>,
    /// The HTTP front's table of fast paths, for a session served over HTTP.
    fast_paths: Option<Arc<FastPaths>>,
    /// The `Mcp-Session-Id` of a 2025-11-25 HTTP session, once seen.
    http_session: std::sync::OnceLock<String>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.hub.sessions.remove(self.id);
        self.hub.interceptor.session_ended(self.id);
        if let (Some(header), Some(fast_paths)) = (self.http_session.get(), &self.fast_paths) {
            fast_paths.remove(header);
        }
    }
}

fn is_modern(version: Option<&ProtocolVersion>) -> bool {
    version.is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
}

impl AgentSession {
    /// A new session; `fast_paths` is where a session the HTTP front serves opens its fast
    /// path.
    pub(crate) fn new(
        hub: Arc<Hub>,
        caller: Option<Arc<Caller>>,
        fast_paths: Option<Arc<FastPaths>>,
    ) -> Self {
        let id = hub.sessions.allocate();
        Self {
            id,
            guard: Arc::new(SessionGuard {
                id,
                hub: hub.clone(),
                fast_paths,
                http_session: std::sync::OnceLock::new(),
            }),
            hub,
            caller,
        }
    }

    /// Who sent the request in `context`.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Arc<Caller> {
        if let Some(caller) = &self.caller {
            return caller.clone();
        }
        match context.extensions.get::<http::request::Parts>() {
            Some(parts) => Arc::new(Caller::from_http(parts)),
            None => Arc::new(Caller::default()),
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Records the session's peer and, for a 2025-11-25 HTTP session, opens its fast path.
    fn register(&self, peer: &Peer<RoleServer>, extensions: &rmcp::model::Extensions) {
        self.hub.sessions.register(self.id, peer);
        let Some(fast_paths) = &self.guard.fast_paths else {
            return;
        };
        if self.guard.http_session.get().is_some() {
            return;
        }
        let Some(header) = extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.headers.get("mcp-session-id"))
            .and_then(|value| value.to_str().ok())
        else {
            return;
        };
        if self.guard.http_session.set(header.to_owned()).is_ok() {
            let fast = Arc::new(FastPath::new(self.hub.clone(), self.id, None, None));
            fast_paths.insert(header, fast);
        }
    }

    /// What a read resource carried (as the agent may see it), handed to the interceptor to
    /// note before the agent sees it; a result that cannot be read or handed over is withheld.
    async fn note_read(
        &self,
        context: &RequestContext<RoleServer>,
        upstream: &Arc<Upstream>,
        uri: &str,
        result: &rmcp::model::ReadResourceResult,
    ) -> Result<(), McpError> {
        let scrub = crate::scrub::for_call(&upstream.config.scrub, None);
        let cleaned = serde_json::to_value(result)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                crate::scrub::value(v, scrub.as_ref()).map_err(|_| "it held a secret".to_owned())
            })
            .map_err(|e| format!("the resource could not be read: {e}"));
        let caller = self.caller(context);
        let noted = match cleaned {
            Ok(value) => {
                self.hub
                    .interceptor
                    .note_read(self.id, &caller, uri, value)
                    .await
            }
            Err(e) => Err(e),
        };
        noted.map_err(|reason| McpError::internal_error(reason, None))
    }

    fn upstream(&self, index: usize) -> Result<&Arc<Upstream>, McpError> {
        self.hub
            .upstreams
            .get(index)
            .ok_or_else(|| McpError::internal_error("route to a missing upstream", None))
    }

    fn route(&self, context: &RequestContext<RoleServer>) -> CallRoute {
        CallRoute {
            session: self.id,
            agent: context.peer.clone(),
            agent_request: context.id.clone(),
            agent_progress: context.meta.get_progress_token(),
            capabilities: context.meta.client_capabilities().or_else(|| {
                context
                    .peer
                    .peer_info()
                    .map(|info| info.capabilities.clone())
            }),
            input: None,
            direct: None,
        }
    }

    /// Who may resume a call this request suspends.
    fn binding(&self, context: &RequestContext<RoleServer>) -> crate::suspend::Binding {
        use std::hash::BuildHasher;
        let Some(parts) = context.extensions.get::<http::request::Parts>() else {
            return crate::suspend::Binding::Session(self.id);
        };
        if parts.headers.contains_key("mcp-session-id") {
            return crate::suspend::Binding::Session(self.id);
        }
        let credentials = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|value| self.hub.fingerprint_key.hash_one(value.as_bytes()));
        crate::suspend::Binding::Stateless { credentials }
    }

    /// Sends `request` to `upstream` on behalf of the agent request in `context`.
    async fn forward(
        &self,
        upstream: &Upstream,
        request: ClientRequest,
        context: &RequestContext<RoleServer>,
        timeout: std::time::Duration,
    ) -> Result<ServerResult, ProxyError> {
        upstream
            .request(request, Some(self.route(context)), timeout, &context.ct)
            .await
    }

    /// The interception point: every tool call passes here before and after forwarding.
    async fn guarded_call(
        &self,
        params: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let merged = self.hub.merged();
        let route = merged
            .tool(&params.name)
            .map_err(ProxyError::into_mcp)?
            .clone();
        let upstream = self.upstream(route.upstream)?.clone();
        let span = tracing::info_span!(
            "tools/call",
            session = self.id,
            upstream = %upstream.name,
            tool = %route.name,
            verdict = field::Empty,
            outcome = field::Empty,
            latency_us = field::Empty,
        );
        let caller = self.caller(&context);
        async move {
            let started = Instant::now();
            let modern = is_modern(context.protocol_version().as_ref());
            let agent_route = self.route(&context);
            let link = crate::screen::AgentLink {
                route: &agent_route,
                raw: None,
                cancel: &context.ct,
                modern,
            };
            let call = ToolCall {
                session: self.id,
                upstream: &upstream.name,
                tool: &route.name,
                exposed_name: &params.name,
                arguments: params.arguments.as_ref(),
                meta: &context.meta,
                caller: &caller,
                facts: merged.facts.get(params.name.as_ref()).map(AsRef::as_ref),
                can_ask: crate::intercept::can_ask(agent_route.capabilities.as_ref()),
                number: crate::intercept::next_call_number(),
            };
            let span = tracing::Span::current();
            // A 2026-07-28 agent's retry may answer the approval question of a held call.
            let parked = if modern {
                self.hub
                    .suspended
                    .take_approval(
                        self.binding(&context),
                        params.name.as_ref(),
                        params.request_state.as_deref(),
                        params.input_responses.as_ref(),
                    )
                    .map_err(ProxyError::into_mcp)?
            } else {
                None
            };
            let answers_approval = parked.is_some();
            let interceptor = self.hub.interceptor.as_ref();
            let screened = match parked {
                Some((waiting, answer)) => {
                    crate::screen::screen_answered(interceptor, &call, waiting, answer, &link).await
                }
                None => crate::screen::screen(interceptor, &call, &link).await,
            };
            let credential = match screened {
                Screened::Forward(credential) => credential,
                Screened::Answer(result) => return Ok(CallToolResponse::Complete(result)),
                Screened::Park(waiting) => {
                    return self
                        .hub
                        .suspended
                        .park_approval(self.binding(&context), params.name.as_ref(), waiting)
                        .map(CallToolResponse::InputRequired)
                        .map_err(ProxyError::into_mcp);
                }
                Screened::Cancelled => return Err(ProxyError::Cancelled.into_mcp()),
                Screened::Unknown => {
                    return Err(ProxyError::UnknownTool {
                        name: params.name.to_string(),
                    }
                    .into_mcp());
                }
                Screened::Rejected(reason) => {
                    return Err(ProxyError::GrantRefused { reason }.into_mcp());
                }
            };

            let mut upstream_params = CallToolRequestParams::new(route.name.clone());
            upstream_params.arguments = params.arguments.clone();
            upstream_params.meta = crate::upstream::forwardable_meta(&context.meta);
            if let Some(credential) = &credential {
                upstream_params
                    .meta
                    .get_or_insert_with(RequestMetaObject::new)
                    .0
                    .0
                    .insert(
                        crate::intercept::CREDENTIAL_META_KEY.to_owned(),
                        serde_json::Value::String(credential.expose().to_owned()),
                    );
            }
            // The answer to Tollgate's own question is Tollgate's; the upstream never sees it.
            if !answers_approval {
                upstream_params.input_responses = params.input_responses.clone();
                upstream_params.request_state = params.request_state.clone();
            }

            let answer = self
                .call_upstream(&upstream, upstream_params, &context)
                .await;
            let scrub = crate::scrub::for_call(&upstream.config.scrub, credential.as_ref());
            let scrub = scrub.as_ref();
            let mut answer = answer;
            if self.hub.interceptor.wants_results()
                && let Ok(CallToolResponse::Complete(r)) = &answer
            {
                // What is remembered of a result is what the agent may see of it.
                let cleaned = serde_json::to_value(r)
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        crate::scrub::value(v, scrub).map_err(|_| "it held a secret".to_owned())
                    });
                let noted = match cleaned {
                    Ok(value) => {
                        self.hub
                            .interceptor
                            .note_result(&call, crate::intercept::ResultJson::Value(value))
                            .await
                    }
                    Err(e) => Err(format!("the result could not be read: {e}")),
                };
                if let Err(reason) = noted {
                    answer = Err(ProxyError::UpstreamFailed {
                        upstream: upstream.name.clone(),
                        message: reason,
                    });
                }
            }
            let failure;
            let outcome = match &answer {
                Ok(CallToolResponse::Complete(r)) => {
                    let is_error = r.is_error == Some(true);
                    span.record("outcome", if is_error { "tool_error" } else { "ok" });
                    Outcome::Completed { is_error }
                }
                Ok(_) => {
                    span.record("outcome", "pending");
                    Outcome::Pending
                }
                Err(e) => {
                    span.record("outcome", "failed");
                    failure = crate::scrub::text(&e.to_string(), scrub).into_owned();
                    Outcome::Failed(&failure)
                }
            };
            self.hub.interceptor.after_call(&call, &outcome);
            span.record("latency_us", started.elapsed().as_micros() as u64);
            // An answer that held a secret and cannot be cleaned is withheld, never passed on.
            let withheld = || {
                ProxyError::UpstreamFailed {
                    upstream: upstream.name.clone(),
                    message:
                        "its answer held a secret that could not be removed, so it was withheld"
                            .to_owned(),
                }
                .into_mcp()
            };
            match answer {
                Ok(CallToolResponse::Complete(result)) => crate::scrub::value(result, scrub)
                    .map(CallToolResponse::Complete)
                    .map_err(|_| withheld()),
                Ok(other) => Ok(other),
                Err(e) => {
                    Err(crate::scrub::value(e.into_mcp(), scrub).unwrap_or_else(|_| withheld()))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Forwards one call and answers in the agent's protocol revision: input rounds are driven
    /// here for a 2025-11-25 agent, and turned into input requests for a 2026-07-28 agent.
    async fn call_upstream(
        &self,
        upstream: &Arc<Upstream>,
        params: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ProxyError> {
        if is_modern(context.protocol_version().as_ref()) {
            self.call_for_modern_agent(upstream, params, context).await
        } else {
            self.call_for_legacy_agent(upstream, params, context).await
        }
    }

    async fn call_for_legacy_agent(
        &self,
        upstream: &Upstream,
        params: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ProxyError> {
        let answer = self
            .with_input_rounds(
                upstream,
                context,
                upstream.config.call_timeout,
                false,
                |input| {
                    let mut params = params.clone();
                    if let Some((responses, state)) = input {
                        params.input_responses = Some(responses);
                        params.request_state = state;
                    }
                    ClientRequest::CallToolRequest(CallToolRequest::new(params))
                },
            )
            .await?;
        call_response(&upstream.name, answer)
    }

    /// Sends a request an upstream may answer with input requests. A 2026-07-28 agent
    /// (`pass_input`) gets them to answer itself; for a 2025-11-25 agent Tollgate asks it with
    /// ordinary server→client requests and retries, up to `MAX_INPUT_ROUNDS` times. `build`
    /// makes the request, given the previous round's answers and state.
    async fn with_input_rounds(
        &self,
        upstream: &Upstream,
        context: &RequestContext<RoleServer>,
        timeout: std::time::Duration,
        pass_input: bool,
        build: impl Fn(Option<(InputResponses, Option<String>)>) -> ClientRequest,
    ) -> Result<ServerResult, ProxyError> {
        let mut input = None;
        for _ in 0..MAX_INPUT_ROUNDS {
            let answer = self
                .forward(upstream, build(input.take()), context, timeout)
                .await?;
            match answer {
                ServerResult::InputRequiredResult(ir) if !pass_input => {
                    let requests = ir.input_requests.unwrap_or_default();
                    let responses = self.fulfil(&upstream.name, requests, context).await?;
                    input = Some((responses, ir.request_state));
                }
                other => return Ok(other),
            }
        }
        Err(ProxyError::UpstreamFailed {
            upstream: upstream.name.clone(),
            message: format!("asked for input more than {MAX_INPUT_ROUNDS} times"),
        })
    }

    /// A 2026-07-28 agent: a retry carrying a `requestState` Tollgate issued resumes the
    /// suspended call; anything else is a new call, run on its own task so that it can wait for
    /// the agent's input across requests.
    async fn call_for_modern_agent(
        &self,
        upstream: &Arc<Upstream>,
        params: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ProxyError> {
        let mut running = match params.request_state.as_deref() {
            Some(state) if state.starts_with(crate::suspend::STATE_PREFIX) => {
                self.hub.suspended.resume(
                    self.binding(context),
                    params.name.as_ref(),
                    state,
                    params.input_responses.as_ref(),
                )?
            }
            _ => {
                let (input, asks) = tokio::sync::mpsc::channel(1);
                let mut route = self.route(context);
                route.input = Some(input);
                let cancel = CancellationToken::new();
                let request = ClientRequest::CallToolRequest(CallToolRequest::new(params.clone()));
                let task = {
                    let upstream = upstream.clone();
                    let cancel = cancel.clone();
                    tokio::spawn(async move {
                        upstream
                            .request(request, Some(route), upstream.config.call_timeout, &cancel)
                            .await
                    })
                };
                crate::suspend::Running { task, asks, cancel }
            }
        };
        let ask = tokio::select! {
            joined = &mut running.task => {
                let answer = joined.map_err(|_| ProxyError::UpstreamFailed {
                    upstream: upstream.name.clone(),
                    message: "the forwarding task failed".into(),
                })??;
                return call_response(&upstream.name, answer);
            }
            ask = running.asks.recv() => ask,
            () = context.ct.cancelled() => {
                running.stop();
                return Err(ProxyError::Cancelled);
            }
        };
        match ask {
            Some(ask) => self
                .hub
                .suspended
                .suspend(
                    self.binding(context),
                    params.name.as_ref(),
                    running,
                    ask,
                    upstream.config.call_timeout,
                )
                .map(CallToolResponse::InputRequired),
            // The sender lives as long as the call; without it, only the answer is left.
            None => {
                let answer = running
                    .task
                    .await
                    .map_err(|_| ProxyError::UpstreamFailed {
                        upstream: upstream.name.clone(),
                        message: "the forwarding task failed".into(),
                    })??;
                call_response(&upstream.name, answer)
            }
        }
    }

    /// Answers an upstream's input requests by asking this session's agent with ordinary
    /// server→client requests (2025-11-25), and returns the responses for the retry.
    async fn fulfil(
        &self,
        upstream: &str,
        requests: InputRequests,
        context: &RequestContext<RoleServer>,
    ) -> Result<InputResponses, ProxyError> {
        let mut responses = InputResponses::new();
        for (key, request) in requests {
            let mut request = match request {
                InputRequest::CreateMessage(r) => ServerRequest::CreateMessageRequest(r),
                InputRequest::Elicitation(r) => ServerRequest::ElicitRequest(r),
                InputRequest::ListRoots(r) => ServerRequest::ListRootsRequest(r),
                _ => {
                    return Err(ProxyError::UpstreamFailed {
                        upstream: upstream.to_owned(),
                        message: format!("asked for an unknown kind of input `{key}`"),
                    });
                }
            };
            request
                .extensions_mut()
                .insert(rmcp::service::OriginatingRequestId(context.id.clone()));
            let answer = send_to_agent(&context.peer, request, &context.ct)
                .await
                .map_err(ProxyError::Relayed)?;
            let value = serde_json::to_value(&answer).map_err(|e| ProxyError::UpstreamFailed {
                upstream: upstream.to_owned(),
                message: format!("cannot encode the agent's answer: {e}"),
            })?;
            responses.insert(key, value);
        }
        Ok(responses)
    }
}

/// Sends a request to the agent from a task of its own, so it stays bound to the agent request
/// named in its extensions rather than to whatever request the current task serves.
async fn send_to_agent(
    agent: &Peer<RoleServer>,
    request: ServerRequest,
    cancel: &CancellationToken,
) -> Result<rmcp::model::ClientResult, McpError> {
    let agent = agent.clone();
    let cancel = cancel.clone();
    let task = tokio::spawn(async move {
        let handle = agent
            .send_request_with_option(request, rmcp::service::PeerRequestOptions::no_options())
            .await
            .map_err(|e| McpError::internal_error(format!("cannot reach the agent: {e}"), None))?;
        tokio::select! {
            answer = handle.await_response() => answer.map_err(|e| match e {
                rmcp::service::ServiceError::McpError(e) => e,
                other => McpError::internal_error(format!("the agent did not answer: {other}"), None),
            }),
            () = cancel.cancelled() => Err(McpError::internal_error("the request was cancelled", None)),
        }
    });
    task.await
        .map_err(|_| McpError::internal_error("relay task failed", None))?
}

/// An upstream's answer to `tools/call` as the response the agent gets.
fn call_response(upstream: &str, answer: ServerResult) -> Result<CallToolResponse, ProxyError> {
    match answer {
        ServerResult::CallToolResult(r) => Ok(CallToolResponse::Complete(r)),
        ServerResult::CreateTaskResult(t) => Ok(CallToolResponse::Task(t)),
        ServerResult::InputRequiredResult(ir) => Ok(CallToolResponse::InputRequired(ir)),
        ServerResult::EmptyResult(_) => {
            Ok(CallToolResponse::Complete(CallToolResult::success(vec![])))
        }
        _ => Err(ProxyError::UpstreamFailed {
            upstream: upstream.to_owned(),
            message: "answered tools/call with another kind of result".into(),
        }),
    }
}

fn internal(e: ProxyError) -> McpError {
    e.into_mcp()
}

impl ServerHandler for AgentSession {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_resources_subscribe()
            .enable_logging()
            .enable_completions()
            .build();
        let mut info = ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("tollgate", env!("CARGO_PKG_VERSION")));
        info.instructions = self.hub.merged().instructions.clone();
        info
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.register(&context.peer, &context.extensions);
    }

    async fn on_roots_list_changed(&self, _context: NotificationContext<RoleServer>) {
        for upstream in &self.hub.upstreams {
            if let Ok(peer) = upstream.peer() {
                let _ = peer.notify_roots_list_changed().await;
            }
        }
    }

    async fn list_tools(
        &self,
        params: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.register(&context.peer, &context.extensions);
        let merged = self.hub.merged();
        let cursor = params.and_then(|p| p.cursor);
        let caller = self.caller(&context);
        // Only what this session could ever call is shown.
        let visible: Vec<Tool> = merged
            .tools
            .iter()
            .filter(|tool| {
                merged
                    .facts
                    .get(tool.name.as_ref() as &str)
                    .is_some_and(|facts| self.hub.interceptor.visible(self.id, &caller, facts))
            })
            .cloned()
            .collect();
        let (tools, next) = page(&visible, merged.version, cursor.as_deref()).map_err(internal)?;
        let mut result = ListToolsResult::with_all_items(tools);
        result.next_cursor = next;
        Ok(result)
    }

    async fn call_tool(
        &self,
        params: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.register(&context.peer, &context.extensions);
        self.guarded_call(params, context).await
    }

    async fn list_prompts(
        &self,
        params: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        self.register(&context.peer, &context.extensions);
        let merged = self.hub.merged();
        let cursor = params.and_then(|p| p.cursor);
        let (prompts, next) =
            page(&merged.prompts, merged.version, cursor.as_deref()).map_err(internal)?;
        let mut result = ListPromptsResult::with_all_items(prompts);
        result.next_cursor = next;
        Ok(result)
    }

    async fn get_prompt(
        &self,
        params: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        self.register(&context.peer, &context.extensions);
        let merged = self.hub.merged();
        let route = merged.prompt(&params.name).map_err(internal)?.clone();
        let upstream = self.upstream(route.upstream)?.clone();
        let mut forwarded = params;
        forwarded.name = route.name.clone();
        forwarded.meta = crate::upstream::forwardable_meta(&context.meta);
        let modern_agent = is_modern(context.protocol_version().as_ref());
        let answer = self
            .with_input_rounds(
                &upstream,
                &context,
                upstream.request_timeout,
                modern_agent,
                |input| {
                    let mut params = forwarded.clone();
                    if let Some((responses, state)) = input {
                        params.input_responses = Some(responses);
                        params.request_state = state;
                    }
                    ClientRequest::GetPromptRequest(GetPromptRequest::new(params))
                },
            )
            .await
            .map_err(internal)?;
        match answer {
            ServerResult::GetPromptResult(r) => Ok(GetPromptResponse::Complete(r)),
            ServerResult::InputRequiredResult(ir) => Ok(GetPromptResponse::InputRequired(ir)),
            _ => Err(McpError::internal_error(
                "unexpected answer to prompts/get",
                None,
            )),
        }
    }

    async fn list_resources(
        &self,
        params: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        self.register(&context.peer, &context.extensions);
        let merged = self.hub.merged();
        let cursor = params.and_then(|p| p.cursor);
        let (resources, next) =
            page(&merged.resources, merged.version, cursor.as_deref()).map_err(internal)?;
        let mut result = ListResourcesResult::with_all_items(resources);
        result.next_cursor = next;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        params: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        self.register(&context.peer, &context.extensions);
        let merged = self.hub.merged();
        let cursor = params.and_then(|p| p.cursor);
        let (templates, next) =
            page(&merged.templates, merged.version, cursor.as_deref()).map_err(internal)?;
        let mut result = ListResourceTemplatesResult::with_all_items(templates);
        result.next_cursor = next;
        Ok(result)
    }

    async fn read_resource(
        &self,
        params: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        self.register(&context.peer, &context.extensions);
        let merged = self.hub.merged();
        let index = merged
            .resource_upstream(&params.uri, self.hub.upstreams.len())
            .map_err(internal)?;
        let upstream = self.upstream(index)?.clone();
        let params_uri = params.uri.clone();
        let mut forwarded = params;
        forwarded.meta = crate::upstream::forwardable_meta(&context.meta);
        let modern_agent = is_modern(context.protocol_version().as_ref());
        let answer = self
            .with_input_rounds(
                &upstream,
                &context,
                upstream.request_timeout,
                modern_agent,
                |input| {
                    let mut params = forwarded.clone();
                    if let Some((responses, state)) = input {
                        params.input_responses = Some(responses);
                        params.request_state = state;
                    }
                    ClientRequest::ReadResourceRequest(ReadResourceRequest::new(params))
                },
            )
            .await
            .map_err(internal)?;
        match answer {
            ServerResult::ReadResourceResult(r) => {
                if self.hub.interceptor.wants_results() {
                    self.note_read(&context, &upstream, &params_uri, &r).await?;
                }
                Ok(ReadResourceResponse::Complete(r))
            }
            ServerResult::InputRequiredResult(ir) => Ok(ReadResourceResponse::InputRequired(ir)),
            _ => Err(McpError::internal_error(
                "unexpected answer to resources/read",
                None,
            )),
        }
    }

    async fn subscribe(
        &self,
        params: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.register(&context.peer, &context.extensions);
        let index = self
            .hub
            .merged()
            .resource_upstream(&params.uri, self.hub.upstreams.len())
            .map_err(internal)?;
        let upstream = self.upstream(index)?.clone();
        // Recorded first: an upstream may send the first update before it answers.
        self.hub.sessions.subscribe(self.id, &params.uri);
        let request = ClientRequest::SubscribeRequest(SubscribeRequest::new(params.clone()));
        if let Err(e) = self
            .forward(&upstream, request, &context, upstream.request_timeout)
            .await
        {
            self.hub.sessions.unsubscribe(self.id, &params.uri);
            return Err(internal(e));
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        params: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.register(&context.peer, &context.extensions);
        self.hub.sessions.unsubscribe(self.id, &params.uri);
        // Other sessions may still want updates for this URI from the shared upstream.
        if !self.hub.sessions.subscribers(&params.uri).is_empty() {
            return Ok(());
        }
        let index = self
            .hub
            .merged()
            .resource_upstream(&params.uri, self.hub.upstreams.len())
            .map_err(internal)?;
        let upstream = self.upstream(index)?.clone();
        let request = ClientRequest::UnsubscribeRequest(UnsubscribeRequest::new(params));
        self.forward(&upstream, request, &context, upstream.request_timeout)
            .await
            .map_err(internal)?;
        Ok(())
    }

    async fn complete(
        &self,
        params: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        self.register(&context.peer, &context.extensions);
        let merged = self.hub.merged();
        let mut forwarded = params.clone();
        let index = match &mut forwarded.r#ref {
            Reference::Prompt(prompt) => {
                let route = merged.prompt(&prompt.name).map_err(internal)?;
                prompt.name = route.name.clone();
                route.upstream
            }
            Reference::Resource(template) => match merged.template_upstream(&template.uri) {
                Some(index) => index,
                None => merged
                    .resource_upstream(&template.uri, self.hub.upstreams.len())
                    .map_err(internal)?,
            },
            _ => {
                return Err(McpError::invalid_params(
                    "unknown completion reference type",
                    None,
                ));
            }
        };
        let upstream = self.upstream(index)?.clone();
        let request = ClientRequest::CompleteRequest(CompleteRequest::new(forwarded));
        match self
            .forward(&upstream, request, &context, upstream.request_timeout)
            .await
            .map_err(internal)?
        {
            ServerResult::CompleteResult(r) => Ok(r),
            _ => Err(McpError::internal_error(
                "unexpected answer to completion/complete",
                None,
            )),
        }
    }

    async fn set_level(
        &self,
        params: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.register(&context.peer, &context.extensions);
        self.hub.sessions.set_log_level(self.id, params.level);
        // Upstreams are shared: they log at the most verbose level any session wants, and
        // each session's own level filters what it receives.
        let level = self
            .hub
            .sessions
            .most_verbose_level()
            .unwrap_or(params.level);
        let mut forwarded = params.clone();
        forwarded.level = level;
        for upstream in &self.hub.upstreams {
            if let Ok(peer) = upstream.peer() {
                let _ = peer.set_level(forwarded.clone()).await;
            }
        }
        Ok(())
    }
}
