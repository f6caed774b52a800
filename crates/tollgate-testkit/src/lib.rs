//! MCP peers for Tollgate's tests, demo and benchmarks: a fixture server that answers the
//! official conformance scenarios and exercises every relay path, and small demo services.

#![expect(
    deprecated,
    reason = "the fixture exercises sampling, roots, logging and subscriptions, which clients still use"
)]

pub mod demo;
pub mod fixture;

use rmcp::{
    ServiceExt,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use std::{net::SocketAddr, sync::Arc};
use tokio_util::sync::CancellationToken;

/// Decodes JSON the fixture wrote itself; a failure is a bug in the fixture, reported as an
/// internal error rather than a panic.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, rmcp::ErrorData> {
    serde_json::from_value(value)
        .map_err(|e| rmcp::ErrorData::internal_error(format!("fixture json: {e}"), None))
}

/// Nanoseconds on CPU so far of every thread of `process` (`self`, or a pid), from the
/// kernel's per-thread accounting; 0 for a process that is gone.
pub fn cpu_ns(process: impl std::fmt::Display) -> u64 {
    std::fs::read_dir(format!("/proc/{process}/task"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Request headers an HTTP test server received, in order.
pub type HeaderLog = Arc<std::sync::Mutex<Vec<http::HeaderMap>>>;

/// Serves `factory`'s handlers over streamable HTTP on `addr` (port 0 picks one) until
/// `shutdown`; returns the bound address.
pub async fn serve_http<S, F>(
    addr: SocketAddr,
    factory: F,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr>
where
    S: rmcp::ServerHandler + Send + 'static,
    F: Fn() -> S + Send + Sync + 'static,
{
    serve_http_recording(addr, factory, shutdown, None).await
}

/// Like [`serve_http`], recording every request's headers into `log`.
pub async fn serve_http_recording<S, F>(
    addr: SocketAddr,
    factory: F,
    shutdown: CancellationToken,
    log: Option<HeaderLog>,
) -> std::io::Result<SocketAddr>
where
    S: rmcp::ServerHandler + Send + 'static,
    F: Fn() -> S + Send + Sync + 'static,
{
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown.clone())
        .with_allowed_hosts(["localhost", "127.0.0.1", "::1", "[::1]"]);
    let service = StreamableHttpService::new(
        move || Ok(factory()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let mut app = axum::Router::new().route_service("/mcp", service);
    if let Some(log) = log {
        app = app.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                log.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(request.headers().clone());
                next.run(request)
            },
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(local)
}

/// Serves one handler over this process's stdin/stdout until the peer closes it.
pub async fn serve_stdio<S: rmcp::ServerHandler + Send + 'static>(
    handler: S,
) -> std::io::Result<()> {
    let service = handler
        .serve(rmcp::transport::stdio_pipes())
        .await
        .map_err(std::io::Error::other)?;
    service.waiting().await.map_err(std::io::Error::other)?;
    Ok(())
}
