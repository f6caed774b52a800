//! The streamable-HTTP front: rmcp's session-aware service (`Mcp-Session-Id`, `Origin` and
//! `Host` checks, `MCP-Protocol-Version`), mounted at the configured path.

use std::{net::SocketAddr, sync::Arc};

use rmcp::transport::{
    StreamableHttpServerConfig, StreamableHttpService,
    streamable_http_server::session::local::LocalSessionManager,
};
use tokio_util::sync::CancellationToken;

use crate::{config::HttpFront, hub::Hub, relay::AgentSession};

/// The axum router serving MCP at `front.path`.
pub(crate) fn router(
    hub: Arc<Hub>,
    front: &HttpFront,
    max_body: usize,
    shutdown: CancellationToken,
) -> axum::Router {
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(front.allowed_hosts.clone())
        .with_allowed_origins(front.allowed_origins.clone())
        // An Origin header that is not listed is refused, even with an empty list: browsers
        // send it, and no page should reach the guard unless the operator said so.
        .enforce_origin_validation()
        .with_legacy_session_mode(front.sessions)
        .with_max_request_body_bytes(max_body)
        .with_cancellation_token(shutdown);
    let service = StreamableHttpService::new(
        move || Ok(AgentSession::new(hub.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new().route_service(&front.path, service)
}

/// A running HTTP front.
#[derive(Debug)]
pub struct HttpServer {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub(crate) async fn serve(
    hub: Arc<Hub>,
    front: &HttpFront,
    max_body: usize,
    shutdown: CancellationToken,
) -> std::io::Result<HttpServer> {
    let listener = tokio::net::TcpListener::bind(front.listen).await?;
    let local_addr = listener.local_addr()?;
    let app = router(hub, front, max_body, shutdown.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok(HttpServer { local_addr, task })
}
