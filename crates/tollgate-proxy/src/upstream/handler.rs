//! What Tollgate does with messages an upstream sends on its own: progress, logging and list
//! changes go to the sessions they concern; sampling, elicitation and roots requests go to the
//! agent whose call caused them.

#![expect(
    deprecated,
    reason = "sampling, roots, logging and resource subscriptions are deprecated upstream but clients still use them; a faithful relay carries them"
)]

use std::sync::{Arc, Weak};

use rmcp::{
    ClientHandler, ErrorData as McpError, RoleClient, RoleServer,
    model::{
        ClientCapabilities, ClientConfig, ClientResult, CreateMessageRequest,
        CreateMessageRequestParams, CreateMessageResult, ElicitRequest, ElicitRequestParams,
        ElicitResult, GetExtensions, Implementation, ListRootsRequest, ListRootsResult,
        LoggingMessageNotificationParam, ProgressNotificationParam,
        ResourceUpdatedNotificationParam, ServerRequest,
    },
    service::{
        NotificationContext, OriginatingRequestId, Peer, PeerRequestOptions, RequestContext,
    },
};

use tokio_util::sync::CancellationToken;

use super::{CallRoute, Host, ListKind, RouteError, Upstream};
use crate::session::Sessions;

fn shutting_down() -> McpError {
    McpError::internal_error("tollgate is shutting down", None)
}

/// The client side of one upstream connection.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamHandler {
    hub: Weak<dyn Host>,
    index: usize,
}

impl UpstreamHandler {
    pub(crate) fn new(hub: Weak<dyn Host>, index: usize) -> Self {
        Self { hub, index }
    }

    fn upstream(&self) -> Option<(Arc<dyn Host>, Arc<Upstream>)> {
        let hub = self.hub.upgrade()?;
        let upstream = hub.upstream(self.index)?.clone();
        Some((hub, upstream))
    }
}

/// The agent a server→client request from `upstream` goes to, or why none can take it.
fn route(upstream: &Upstream) -> Result<CallRoute, McpError> {
    upstream.route_for_server_request().map_err(|e| {
        tracing::warn!(upstream = %upstream.name, error = %e, "server request refused");
        match e {
            RouteError::NoCall | RouteError::Ambiguous { .. } => {
                McpError::invalid_request(e.to_string(), None)
            }
        }
    })
}

/// Relays one server→client request to the agent of `route` through rmcp, bound to the agent
/// request that caused it (so an HTTP agent receives it on that request's stream), and relays
/// the upstream's cancellation of it.
async fn relay(
    route: &CallRoute,
    mut request: ServerRequest,
    cancel: &CancellationToken,
) -> Result<ClientResult, McpError> {
    request
        .extensions_mut()
        .insert(OriginatingRequestId(route.agent_request.clone()));
    let agent: Peer<RoleServer> = route.agent.clone();
    let cancel = cancel.clone();
    // Sent from a spawned task so rmcp does not bind it to the upstream's request id.
    let task = tokio::spawn(async move {
        let handle = agent
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await?;
        let id = handle.id.clone();
        tokio::select! {
            answer = handle.await_response() => answer,
            () = cancel.cancelled() => {
                let _ = agent
                    .notify_cancelled(rmcp::model::CancelledNotificationParam::new(
                        Some(id),
                        Some("cancelled by the tool server".to_owned()),
                    ))
                    .await;
                Err(rmcp::service::ServiceError::Cancelled { reason: None })
            }
        }
    });
    match task.await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(rmcp::service::ServiceError::McpError(e))) => Err(e),
        Ok(Err(e)) => Err(McpError::internal_error(
            format!("the agent did not answer: {e}"),
            None,
        )),
        Err(_) => Err(McpError::internal_error("relay task failed", None)),
    }
}

/// Sends a server→client request to the agent of `route`, on the response stream of its
/// fast-path HTTP call or through rmcp, and waits for the answer.
pub(crate) async fn ask_agent(
    route: &CallRoute,
    request: ServerRequest,
    cancel: &CancellationToken,
) -> Result<ClientResult, McpError> {
    match &route.direct {
        Some(direct) => direct.ask(request, cancel).await,
        None => relay(route, request, cancel).await,
    }
}

/// Sends a server→client request from `upstream` to the agent whose call caused it: through
/// rmcp, through the response stream of a fast-path HTTP call, or, for an agent that takes
/// input requests instead, through the call that is waiting on it. The agent must have
/// declared the capability the request needs.
pub(crate) async fn answer_server_request(
    upstream: &Upstream,
    request: ServerRequest,
    cancel: &CancellationToken,
) -> Result<ClientResult, McpError> {
    let route = route(upstream)?;
    let declared = route.capabilities.as_ref().is_some_and(|c| match &request {
        ServerRequest::CreateMessageRequest(_) => c.sampling.is_some(),
        ServerRequest::ElicitRequest(_) => c.elicitation.is_some(),
        ServerRequest::ListRootsRequest(_) => c.roots.is_some(),
        _ => false,
    });
    if !declared {
        return Err(match &request {
            ServerRequest::CreateMessageRequest(_) => {
                McpError::method_not_found::<rmcp::model::CreateMessageRequestMethod>()
            }
            ServerRequest::ElicitRequest(_) => {
                McpError::method_not_found::<rmcp::model::ElicitationCreateRequestMethod>()
            }
            _ => McpError::method_not_found::<rmcp::model::ListRootsRequestMethod>(),
        });
    }
    let Some(input) = &route.input else {
        return ask_agent(&route, request, cancel).await;
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    input
        .send(crate::suspend::InputAsk { request, answer })
        .await
        .map_err(|_| McpError::internal_error("the call asking for input has ended", None))?;
    tokio::select! {
        answer = answered => answer.map_err(|_| McpError::internal_error("the agent did not answer the input request", None))?,
        () = cancel.cancelled() => Err(McpError::internal_error("cancelled by the tool server", None)),
    }
}

/// Delivers a log message from `upstream` to the sessions it concerns: those with calls on it
/// in flight or just ended. A message no call can be attributed to is the shared server's own:
/// it goes to the only session if there is one, and otherwise only to Tollgate's log, so that
/// one session's output never reaches another; each session's own level applies.
pub(crate) fn deliver_log(
    sessions: &Sessions,
    upstream: &Upstream,
    params: &LoggingMessageNotificationParam,
) {
    let scrubbed;
    let params = if upstream.config.scrub.is_empty() {
        params
    } else {
        match crate::scrub::value(params.clone(), &upstream.config.scrub) {
            Ok(cleaned) => {
                scrubbed = cleaned;
                &scrubbed
            }
            Err(_) => {
                tracing::warn!(upstream = %upstream.name, "an upstream log message held a secret that could not be removed; dropped");
                return;
            }
        }
    };
    let mut concerned = upstream.sessions_concerned();
    if concerned.is_empty() {
        let everyone = sessions.ids();
        match everyone.as_slice() {
            [only] => {
                concerned.insert(*only);
            }
            _ => {
                tracing::info!(upstream = %upstream.name, level = ?params.level, data = %params.data, "upstream log not attributable to one session");
                return;
            }
        }
    }
    for peer in sessions.log_receivers(Some(&concerned), params) {
        let params = params.clone();
        tokio::spawn(async move {
            let _ = peer.notify_logging_message(params).await;
        });
    }
}

impl ClientHandler for UpstreamHandler {
    fn get_info(&self) -> ClientConfig {
        // Tollgate declares what it can relay; whether a given agent can answer is checked
        // per request.
        let capabilities = ClientCapabilities::builder()
            .enable_sampling()
            .enable_elicitation()
            .enable_roots()
            .build();
        ClientConfig::new(
            capabilities,
            Implementation::new("tollgate", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        let (_, upstream) = self.upstream().ok_or_else(shutting_down)?;
        let request = ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params));
        match answer_server_request(&upstream, request, &context.ct).await? {
            ClientResult::CreateMessageResult(r) => Ok(*r),
            _ => Err(McpError::internal_error(
                "the agent answered sampling with another result",
                None,
            )),
        }
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        let (_, upstream) = self.upstream().ok_or_else(shutting_down)?;
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        match answer_server_request(&upstream, request, &context.ct).await? {
            ClientResult::ElicitResult(r) => Ok(r),
            _ => Err(McpError::internal_error(
                "the agent answered elicitation with another result",
                None,
            )),
        }
    }

    async fn list_roots(
        &self,
        context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, McpError> {
        let (_, upstream) = self.upstream().ok_or_else(shutting_down)?;
        let request = ServerRequest::ListRootsRequest(ListRootsRequest::default());
        match answer_server_request(&upstream, request, &context.ct).await? {
            ClientResult::ListRootsResult(r) => Ok(r),
            _ => Err(McpError::internal_error(
                "the agent answered roots/list with another result",
                None,
            )),
        }
    }

    async fn on_progress(
        &self,
        mut params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let Some((_, upstream)) = self.upstream() else {
            return;
        };
        let upstream_token = params.progress_token.clone();
        // The call is registered right after it is sent; a progress notification can overtake
        // that by a scheduler tick, so look again briefly before dropping it.
        let mut route = upstream.progress_route(&upstream_token);
        for _ in 0..20 {
            if route.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            route = upstream.progress_route(&upstream_token);
        }
        if let Some((agent, token)) = route.and_then(|r| r.agent_progress.map(|t| (r.agent, t))) {
            params.progress_token = token;
            let _ = agent.notify_progress(params).await;
        }
        upstream.pending_progress.relayed(&upstream_token);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some((hub, upstream)) = self.upstream() {
            deliver_log(hub.sessions(), &upstream, &params);
        }
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let Some((hub, _)) = self.upstream() else {
            return;
        };
        for peer in hub.sessions().subscribers(&params.uri) {
            let params = params.clone();
            tokio::spawn(async move {
                let _ = peer.notify_resource_updated(params).await;
            });
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(hub) = self.hub.upgrade() {
            hub.lists_changed(self.index, &[ListKind::Tools]).await;
        }
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(hub) = self.hub.upgrade() {
            hub.lists_changed(self.index, &[ListKind::Prompts]).await;
        }
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(hub) = self.hub.upgrade() {
            hub.lists_changed(self.index, &[ListKind::Resources]).await;
        }
    }
}
