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

use super::{CallRoute, RouteError, Upstream};
use crate::hub::{Hub, ListKind};

/// The client side of one upstream connection.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamHandler {
    hub: Weak<Hub>,
    index: usize,
}

impl UpstreamHandler {
    pub(crate) fn new(hub: Weak<Hub>, index: usize) -> Self {
        Self { hub, index }
    }

    fn upstream(&self) -> Option<(Arc<Hub>, Arc<Upstream>)> {
        let hub = self.hub.upgrade()?;
        let upstream = hub.upstreams.get(self.index)?.clone();
        Some((hub, upstream))
    }

    fn route(&self) -> Result<CallRoute, McpError> {
        let (_, upstream) = self
            .upstream()
            .ok_or_else(|| McpError::internal_error("tollgate is shutting down", None))?;
        upstream.route_for_server_request().map_err(|e| {
            tracing::warn!(upstream = %upstream.name, error = %e, "server request refused");
            match e {
                RouteError::NoCall | RouteError::Ambiguous { .. } => {
                    McpError::invalid_request(e.to_string(), None)
                }
            }
        })
    }

    /// Relays one server→client request to the agent of `route`, bound to the agent request
    /// that caused it (so an HTTP agent receives it on that request's stream), and relays the
    /// upstream's cancellation of it.
    async fn relay(
        &self,
        route: &CallRoute,
        mut request: ServerRequest,
        context: &RequestContext<RoleClient>,
    ) -> Result<ClientResult, McpError> {
        request
            .extensions_mut()
            .insert(OriginatingRequestId(route.agent_request.clone()));
        let agent: Peer<RoleServer> = route.agent.clone();
        let cancel = context.ct.clone();
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

    fn agent_declares(route: &CallRoute, check: impl Fn(&ClientCapabilities) -> bool) -> bool {
        route.capabilities.as_ref().is_some_and(check)
    }

    /// Sends a server→client request to the agent of `route`: directly, or, for an agent that
    /// takes input requests instead, through the call that is waiting on it.
    async fn ask(
        &self,
        route: &CallRoute,
        request: ServerRequest,
        context: &RequestContext<RoleClient>,
    ) -> Result<ClientResult, McpError> {
        let Some(input) = &route.input else {
            return self.relay(route, request, context).await;
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        input
            .send(crate::suspend::InputAsk { request, answer })
            .await
            .map_err(|_| McpError::internal_error("the call asking for input has ended", None))?;
        tokio::select! {
            answer = answered => answer.map_err(|_| McpError::internal_error("the agent did not answer the input request", None))?,
            () = context.ct.cancelled() => Err(McpError::internal_error("cancelled by the tool server", None)),
        }
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
        let route = self.route()?;
        if !Self::agent_declares(&route, |c| c.sampling.is_some()) {
            return Err(McpError::method_not_found::<
                rmcp::model::CreateMessageRequestMethod,
            >());
        }
        let request = ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params));
        match self.ask(&route, request, &context).await? {
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
        let route = self.route()?;
        if !Self::agent_declares(&route, |c| c.elicitation.is_some()) {
            return Err(McpError::method_not_found::<
                rmcp::model::ElicitationCreateRequestMethod,
            >());
        }
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        match self.ask(&route, request, &context).await? {
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
        let route = self.route()?;
        if !Self::agent_declares(&route, |c| c.roots.is_some()) {
            return Err(McpError::method_not_found::<
                rmcp::model::ListRootsRequestMethod,
            >());
        }
        let request = ServerRequest::ListRootsRequest(ListRootsRequest::default());
        match self.ask(&route, request, &context).await? {
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
        let Some((hub, upstream)) = self.upstream() else {
            return;
        };
        // A log line during calls concerns the sessions making them; otherwise it is the
        // shared server's own news and every session sees it.
        let busy = upstream.sessions_in_flight();
        let receivers = hub
            .sessions
            .log_receivers((!busy.is_empty()).then_some(&busy), &params);
        for peer in receivers {
            let params = params.clone();
            tokio::spawn(async move {
                let _ = peer.notify_logging_message(params).await;
            });
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
        for peer in hub.sessions.subscribers(&params.uri) {
            let params = params.clone();
            tokio::spawn(async move {
                let _ = peer.notify_resource_updated(params).await;
            });
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(hub) = self.hub.upgrade() {
            hub.refresh(self.index, ListKind::Tools).await;
        }
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(hub) = self.hub.upgrade() {
            hub.refresh(self.index, ListKind::Prompts).await;
        }
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        if let Some(hub) = self.hub.upgrade() {
            hub.refresh(self.index, ListKind::Resources).await;
        }
    }
}
