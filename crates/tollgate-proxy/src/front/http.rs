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
    local: SocketAddr,
    max_body: usize,
    shutdown: CancellationToken,
) -> axum::Router {
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(front.allowed_hosts.clone())
        .with_allowed_origins(allowed_origins(front, local))
        // An Origin header that is not listed is refused, even with an empty list: browsers
        // send it, and no page should reach the guard unless the operator said so.
        .enforce_origin_validation()
        .with_legacy_session_mode(front.sessions)
        .with_max_request_body_bytes(max_body)
        .with_cancellation_token(shutdown);
    let screening_hub = hub.clone();
    let service = StreamableHttpService::new(
        move || Ok(AgentSession::new(hub.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new()
        .route_service(&front.path, service)
        .layer(axum::middleware::from_fn(move |request, next| {
            screen_body(request, next, max_body, screening_hub.clone())
        }))
}

/// Serves the POST on the fast path when it can: a tool call of a 2025-11-25 session to a
/// 2025-11-25 upstream, a cancellation of one, or an agent's answer to a request the fast path
/// sent it. Anything else returns `None` and goes to rmcp.
async fn fast_path(
    hub: &Hub,
    parts: &http::request::Parts,
    body: &[u8],
) -> Option<axum::response::Response> {
    let session = parts.headers.get("mcp-session-id")?.to_str().ok()?;
    let fast = hub
        .http_fast
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(session)?
        .clone();
    let envelope = crate::wire::Envelope::parse(body).ok()?;
    let accepted = || {
        let mut response = axum::response::Response::new(axum::body::Body::empty());
        *response.status_mut() = http::StatusCode::ACCEPTED;
        response
    };
    match envelope.method.as_deref() {
        Some("tools/call") => {
            // The answer comes as an event stream (resumable, like rmcp's own); a client that
            // takes only JSON is served by rmcp.
            let takes_events = parts
                .headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("text/event-stream"));
            if !takes_events {
                return None;
            }
            let messages = fast.try_call_http(&envelope)?;
            Some(event_stream(hub.streams.open(session, messages)))
        }
        Some("notifications/cancelled") => fast.try_cancel(&envelope).then(accepted),
        Some(_) => None,
        None => {
            let id = envelope.id?;
            let answer = match (envelope.result, envelope.error) {
                (Some(result), _) => Ok(serde_json::from_str(result.get()).ok()?),
                (None, Some(error)) => Err(serde_json::from_str(error.get()).ok()?),
                (None, None) => return None,
            };
            hub.agent_answers
                .deliver(fast.session(), id, answer)
                .then(accepted)
        }
    }
}

/// A GET that resumes a fast-path event stream (`Last-Event-ID` of one Tollgate issued, for the
/// session that owns it).
fn resume_stream(hub: &Hub, parts: &http::request::Parts) -> Option<axum::response::Response> {
    let session = parts.headers.get("mcp-session-id")?.to_str().ok()?;
    let last = parts.headers.get("last-event-id")?.to_str().ok()?;
    hub.streams.resume(session, last).map(event_stream)
}

/// An event-stream response.
fn event_stream(
    events: impl futures::Stream<Item = Result<axum::body::Bytes, std::convert::Infallible>>
    + Send
    + 'static,
) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    response
}

/// The origins a browser page may call from: the operator's list, or else only this front's own
/// origin (a page Tollgate itself serves), never another site.
fn allowed_origins(front: &HttpFront, local: SocketAddr) -> Vec<String> {
    if !front.allowed_origins.is_empty() {
        return front.allowed_origins.clone();
    }
    let port = local.port();
    let mut origins = vec![format!("http://{local}")];
    if local.ip().is_loopback() {
        origins.extend([
            format!("http://localhost:{port}"),
            format!("http://127.0.0.1:{port}"),
            format!("http://[::1]:{port}"),
        ]);
    }
    origins.dedup();
    origins
}

/// The fields of a JSON-RPC message Tollgate checks before rmcp sees it; everything else is
/// skipped without being built.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Option<std::borrow::Cow<'a, str>>,
    id: Option<serde_json::Value>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    result: Option<serde::de::IgnoredAny>,
    error: Option<serde::de::IgnoredAny>,
}

fn jsonrpc_error(
    status: http::StatusCode,
    id: serde_json::Value,
    code: i64,
    message: String,
) -> axum::response::Response {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    let mut response = axum::response::Response::new(axum::body::Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Answers bodies that are too large, not JSON, or not a JSON-RPC message with a JSON-RPC
/// error, reading at most `max_body + 1` bytes; well-formed messages pass on untouched.
async fn screen_body(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    max_body: usize,
    hub: Arc<Hub>,
) -> axum::response::Response {
    if request.method() == http::Method::GET {
        let (parts, body) = request.into_parts();
        if let Some(response) = resume_stream(&hub, &parts) {
            return response;
        }
        return next
            .run(axum::extract::Request::from_parts(parts, body))
            .await;
    }
    if request.method() != http::Method::POST {
        return next.run(request).await;
    }
    let too_large = || {
        jsonrpc_error(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            serde_json::Value::Null,
            -32600,
            format!("message exceeds the limit of {max_body} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, max_body).await else {
        return too_large();
    };
    match serde_json::from_slice::<Envelope<'_>>(&bytes) {
        Ok(envelope) => {
            let id = match envelope.id {
                Some(id @ (serde_json::Value::String(_) | serde_json::Value::Number(_))) => id,
                _ => serde_json::Value::Null,
            };
            let shaped = envelope.jsonrpc.as_deref() == Some("2.0")
                && (envelope.method.is_some()
                    || envelope.result.is_some()
                    || envelope.error.is_some());
            if !shaped {
                return jsonrpc_error(
                    http::StatusCode::BAD_REQUEST,
                    id,
                    -32600,
                    "invalid request: expected a JSON-RPC 2.0 message with `jsonrpc: \"2.0\"` and a `method`".to_owned(),
                );
            }
            if let Some(response) = fast_path(&hub, &parts, &bytes).await {
                return response;
            }
        }
        Err(e) if e.is_syntax() || e.is_eof() => {
            return jsonrpc_error(
                http::StatusCode::BAD_REQUEST,
                serde_json::Value::Null,
                -32700,
                format!("parse error: {e}"),
            );
        }
        Err(e) => {
            return jsonrpc_error(
                http::StatusCode::BAD_REQUEST,
                serde_json::Value::Null,
                -32600,
                format!("invalid request: {e}"),
            );
        }
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
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
    let app = router(hub, front, local_addr, max_body, shutdown.clone());
    // Small JSON-RPC messages must not wait for Nagle.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok(HttpServer { local_addr, task })
}
