//! The streamable-HTTP front: rmcp's session-aware service (`Mcp-Session-Id`, `Origin` and
//! `Host` checks, `MCP-Protocol-Version`), mounted at the configured path.

use std::{net::SocketAddr, sync::Arc};

use rmcp::transport::{
    StreamableHttpServerConfig, StreamableHttpService,
    streamable_http_server::session::local::LocalSessionManager,
};
use tokio_util::sync::CancellationToken;

use crate::{config::HttpFront, fast::FastPaths, hub::Hub, relay::AgentSession};

use super::replay::Streams;

/// What the HTTP front keeps of its sessions besides rmcp's own: when each was last heard
/// from, its fast path, and the event streams of its fast-path calls, kept for resumption.
#[derive(Debug)]
pub(crate) struct HttpSessions {
    /// When each 2025-11-25 HTTP session was last heard from, by its `Mcp-Session-Id`.
    seen: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    fast: Arc<FastPaths>,
    streams: Arc<Streams>,
}

impl HttpSessions {
    /// The tables of a front configured as `front` (the defaults without one).
    pub(crate) fn new(front: Option<&HttpFront>) -> Self {
        Self {
            seen: std::sync::Mutex::default(),
            fast: Arc::default(),
            streams: match front {
                Some(front) => Arc::new(Streams::new(front.resume_keep, front.resume_streams)),
                None => Arc::default(),
            },
        }
    }

    pub(crate) fn fast_paths(&self) -> &Arc<FastPaths> {
        &self.fast
    }

    fn seen(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::time::Instant>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sessions whose idle clock is running.
    pub(crate) fn tracked(&self) -> usize {
        self.seen().len()
    }

    /// Event streams kept for resumption.
    pub(crate) fn kept_streams(&self) -> usize {
        self.streams.kept()
    }
}

/// The axum router serving MCP at `front.path`.
pub(crate) fn router(
    hub: Arc<Hub>,
    tables: Arc<HttpSessions>,
    front: &HttpFront,
    local: SocketAddr,
    max_body: usize,
    shutdown: CancellationToken,
    sessions: Arc<LocalSessionManager>,
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
    let fast_paths = tables.fast.clone();
    let screen = Arc::new(Screen {
        hub: hub.clone(),
        tables,
        max_body,
        body_timeout: front.connections.body_timeout,
        allowed_hosts: front.allowed_hosts.clone(),
        allowed_origins: allowed_origins(front, local),
    });
    let service = StreamableHttpService::new(
        move || {
            Ok(AgentSession::new(
                hub.clone(),
                None,
                Some(fast_paths.clone()),
            ))
        },
        sessions,
        config,
    );
    axum::Router::new()
        .route_service(&front.path, service)
        .layer(axum::middleware::from_fn(move |request, next| {
            screen_body(request, next, screen.clone())
        }))
}

/// What the screening layer needs: the shared state, the size limit, and the Host and Origin
/// allow-lists, which the fast path applies exactly as rmcp's service does for everything else.
#[derive(Debug)]
struct Screen {
    hub: Arc<Hub>,
    tables: Arc<HttpSessions>,
    max_body: usize,
    /// A body that has not arrived whole by then is refused (408).
    body_timeout: std::time::Duration,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
}

/// Protocol revisions the fast path serves (those with sessions).
const SESSION_REVISIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

impl Screen {
    /// Whether a request may be served here rather than by rmcp: its Host and Origin are
    /// allowed and its protocol revision has sessions. A request that fails goes on to rmcp,
    /// which refuses it with the right status.
    fn may_take(&self, parts: &http::request::Parts) -> bool {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let host_ok = self.allowed_hosts.is_empty()
            || header("host").is_some_and(|host| host_allowed(host, &self.allowed_hosts));
        let origin_ok =
            header("origin").is_none_or(|origin| origin_allowed(origin, &self.allowed_origins));
        let version_ok =
            header("mcp-protocol-version").is_none_or(|v| SESSION_REVISIONS.contains(&v));
        host_ok && origin_ok && version_ok
    }
}

/// `host[:port]` split, with IPv6 brackets kept on the host.
fn split_authority(authority: &str) -> (String, Option<&str>) {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (
            format!("[{}]", host.to_ascii_lowercase()),
            after.strip_prefix(':'),
        );
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host.to_ascii_lowercase(), Some(port)),
        _ => (authority.to_ascii_lowercase(), None),
    }
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let (name, port) = split_authority(host);
    allowed.iter().any(|entry| {
        let entry =
            if entry.contains(':') && !entry.starts_with('[') && entry.matches(':').count() > 1 {
                format!("[{entry}]")
            } else {
                entry.clone()
            };
        let (entry_name, entry_port) = split_authority(&entry);
        entry_name == name && entry_port.is_none_or(|p| Some(p) == port)
    })
}

fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    if origin == "null" {
        return allowed.iter().any(|a| a == "null");
    }
    let parse = |value: &str| -> Option<(String, String, Option<String>)> {
        let (scheme, rest) = value.split_once("://")?;
        let (host, port) = split_authority(rest.trim_end_matches('/'));
        let port = port.map(str::to_owned).or_else(|| match scheme {
            "http" => Some("80".to_owned()),
            "https" => Some("443".to_owned()),
            _ => None,
        });
        Some((scheme.to_ascii_lowercase(), host, port))
    };
    let Some((scheme, host, port)) = parse(origin) else {
        return false;
    };
    allowed.iter().any(|entry| {
        let Some((entry_scheme, entry_rest)) = entry.split_once("://") else {
            return false;
        };
        let (entry_host, entry_port) = split_authority(entry_rest.trim_end_matches('/'));
        entry_scheme.eq_ignore_ascii_case(&scheme)
            && entry_host == host
            && match entry_port {
                Some("*") | None => true,
                Some(p) => port.as_deref() == Some(p),
            }
    })
}

/// Serves the POST on the fast path when it can: a tool call of a 2025-11-25 session to a
/// 2025-11-25 upstream, a cancellation of one, or an agent's answer to a request the fast path
/// sent it. Anything else returns `None` and goes to rmcp.
async fn fast_path(
    hub: &Hub,
    tables: &HttpSessions,
    parts: &http::request::Parts,
    body: &[u8],
) -> Option<axum::response::Response> {
    let session = parts.headers.get("mcp-session-id")?.to_str().ok()?;
    let fast = tables.fast.get(session)?;
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
            let caller = Arc::new(crate::intercept::Caller::from_http(parts));
            let messages = fast.try_call_http(&envelope, caller)?;
            Some(event_stream(tables.streams.open(session, messages)))
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
fn resume_stream(
    tables: &HttpSessions,
    parts: &http::request::Parts,
) -> Option<axum::response::Response> {
    let session = parts.headers.get("mcp-session-id")?.to_str().ok()?;
    let last = parts.headers.get("last-event-id")?.to_str().ok()?;
    tables.streams.resume(session, last).map(event_stream)
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
    screen: Arc<Screen>,
) -> axum::response::Response {
    let hub = &screen.hub;
    let tables = &screen.tables;
    let max_body = screen.max_body;
    touch(tables, request.headers());
    if request.method() == http::Method::GET {
        let (parts, body) = request.into_parts();
        if screen.may_take(&parts)
            && let Some(response) = resume_stream(tables, &parts)
        {
            return response;
        }
        return next
            .run(axum::extract::Request::from_parts(parts, body))
            .await;
    }
    if request.method() == http::Method::DELETE {
        // The session ends now for the fast path too, before rmcp has finished tearing it down.
        let (parts, body) = request.into_parts();
        if screen.may_take(&parts)
            && let Some(session) = parts
                .headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            tables.fast.remove(session);
            tables.seen().remove(session);
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
    let bytes =
        match tokio::time::timeout(screen.body_timeout, axum::body::to_bytes(body, max_body)).await
        {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => return too_large(),
            Err(_) => {
                let mut response = jsonrpc_error(
                    http::StatusCode::REQUEST_TIMEOUT,
                    serde_json::Value::Null,
                    -32600,
                    format!(
                        "the request body did not arrive within {} ms",
                        screen.body_timeout.as_millis()
                    ),
                );
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                return response;
            }
        };
    let bad_request = |id: serde_json::Value, code: i64, message: String| {
        jsonrpc_error(http::StatusCode::BAD_REQUEST, id, code, message)
    };
    if !crate::wire::is_object(&bytes) {
        // No batches since 2025-06-18, and a struct must never be read from an array.
        return bad_request(
            serde_json::Value::Null,
            crate::wire::not_an_object_code(&bytes),
            "a message is one JSON object (arrays and batches are not taken)".to_owned(),
        );
    }
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
            if envelope.method.as_deref() == Some("tools/call")
                && let Some((_, problem)) = crate::wire::call_problem(&bytes)
            {
                return bad_request(id, -32602, format!("invalid params: {problem}"));
            }
            if screen.may_take(&parts)
                && let Some(response) = fast_path(hub, tables, &parts, &bytes).await
            {
                return response;
            }
            // What the fast path did not take, rmcp builds whole: a value it cannot build
            // (a lone surrogate, a number out of range, nesting past the limit) is answered
            // here, with the request's id.
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                return bad_request(id, -32600, format!("invalid request: {e}"));
            }
        }
        Err(e) if e.is_syntax() || e.is_eof() => {
            // Valid JSON by RFC 8259 that serde will not build is a request Tollgate cannot
            // take, and its id is answered; only what is not JSON at all is -32700.
            let salvaged = crate::wire::salvage(&bytes);
            let id = salvaged
                .id
                .and_then(|id| serde_json::from_str(id.get()).ok())
                .unwrap_or(serde_json::Value::Null);
            let (code, what) = if salvaged.whole {
                (-32600, "invalid request")
            } else {
                (-32700, "parse error")
            };
            return bad_request(id, code, format!("{what}: {e}"));
        }
        Err(e) => {
            let id = crate::wire::salvage(&bytes)
                .id
                .and_then(|id| serde_json::from_str(id.get()).ok())
                .unwrap_or(serde_json::Value::Null);
            return bad_request(id, -32600, format!("invalid request: {e}"));
        }
    }
    let response = next
        .run(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(bytes),
        ))
        .await;
    // A new session (the answer to `initialize`) starts its idle clock now.
    start_clock(tables, response.headers());
    response
}

/// Closes HTTP sessions nobody has used for `idle`.
async fn reap_idle_sessions(
    tables: std::sync::Weak<HttpSessions>,
    manager: Arc<LocalSessionManager>,
    idle: std::time::Duration,
    shutdown: CancellationToken,
) {
    use rmcp::transport::streamable_http_server::SessionManager;
    let period = (idle / 4).clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(15),
    );
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => return,
        }
        let Some(tables) = tables.upgrade() else {
            return;
        };
        let now = std::time::Instant::now();
        let expired: Vec<String> = {
            let mut seen = tables.seen();
            let expired: Vec<String> = seen
                .iter()
                .filter(|(_, at)| now.duration_since(**at) > idle)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                seen.remove(id);
            }
            expired
        };
        for id in expired {
            tables.fast.remove(&id);
            let _ = manager.close_session(&Arc::from(id.as_str())).await;
            tracing::info!(session = %id, "idle HTTP session closed");
        }
    }
}

/// Notes that a known session named in `headers` was heard from. Only sessions rmcp created
/// (see `start_clock`) are tracked, so made-up session ids cannot grow the table.
fn touch(tables: &HttpSessions, headers: &http::HeaderMap) {
    if let Some(id) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok())
        && let Some(at) = tables.seen().get_mut(id)
    {
        *at = std::time::Instant::now();
    }
}

/// Starts the idle clock of a session rmcp just created (named in its `initialize` answer).
fn start_clock(tables: &HttpSessions, response_headers: &http::HeaderMap) {
    if let Some(id) = response_headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        tables
            .seen()
            .entry(id.to_owned())
            .or_insert_with(std::time::Instant::now);
    }
}

/// A running HTTP front.
#[derive(Debug)]
pub struct HttpServer {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub(crate) async fn serve(
    hub: Arc<Hub>,
    tables: Arc<HttpSessions>,
    front: &HttpFront,
    max_body: usize,
    shutdown: CancellationToken,
) -> std::io::Result<HttpServer> {
    let listener = tokio::net::TcpListener::bind(front.listen).await?;
    let local_addr = listener.local_addr()?;
    // Sessions idle out by Tollgate's clock, which also counts fast-path calls that rmcp's own
    // keep-alive never sees.
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = None;
    let manager = Arc::new(manager);
    tokio::spawn(reap_idle_sessions(
        Arc::downgrade(&tables),
        manager.clone(),
        front.session_idle_timeout,
        shutdown.clone(),
    ));
    let app = router(
        hub,
        tables,
        front,
        local_addr,
        max_body,
        shutdown.clone(),
        manager,
    );
    let task = tokio::spawn(super::listen::serve(
        listener,
        app,
        front.connections,
        shutdown,
    ));
    Ok(HttpServer { local_addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn hosts_match_with_and_without_ports() {
        let allowed = list(&["localhost", "127.0.0.1", "::1", "api.example.com:8443"]);
        assert!(host_allowed("localhost:8080", &allowed));
        assert!(host_allowed("127.0.0.1", &allowed));
        assert!(host_allowed("[::1]:9000", &allowed));
        assert!(host_allowed("API.example.com:8443", &allowed));
        assert!(!host_allowed("api.example.com:443", &allowed));
        assert!(!host_allowed("evil.example:8080", &allowed));
        assert!(!host_allowed("localhost.evil.example", &allowed));
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        let allowed = list(&[
            "http://127.0.0.1:3000",
            "https://app.example.com",
            "http://localhost:*",
        ]);
        assert!(origin_allowed("http://127.0.0.1:3000", &allowed));
        assert!(!origin_allowed("http://127.0.0.1:3001", &allowed));
        assert!(!origin_allowed("https://127.0.0.1:3000", &allowed));
        assert!(origin_allowed("https://app.example.com", &allowed));
        assert!(origin_allowed("http://localhost:1234", &allowed));
        assert!(!origin_allowed("https://evil.example", &allowed));
        assert!(!origin_allowed("null", &allowed));
        assert!(!origin_allowed("garbage", &allowed));
    }
}
