//! Tollgate's MCP relay: fronts towards the agent (stdio, streamable HTTP), upstream tool
//! servers (child processes, streamable HTTP), the merged catalog, the session table, and the
//! one interception point every `tools/call` passes (the guard plugs in there).

mod agent;
pub mod api;
pub mod approvals;
pub mod config;
mod deadline;
mod error;
mod fast;
pub mod front;
#[doc(hidden)]
pub mod fuzzing;
mod hub;
pub mod intercept;
pub mod names;
pub mod paths;
pub mod pins;
mod relay;
pub mod sandbox;
mod screen;
mod scrub;
pub mod session;
mod suspend;
mod upstream;
mod wire;

use std::{sync::Arc, time::Duration};

use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Fault, ProxyError};
pub use front::http::HttpServer;
pub use intercept::Caller;
pub use relay::AgentSession;

/// The HTTP client of every request Tollgate makes itself (HTTP upstreams, API tools, token
/// exchange, telemetry): redirects are never followed, because the configured URL is the one
/// the operator approved and a redirect would carry the request, and its credential,
/// elsewhere; Nagle is off and idle connections are kept a minute. `timeout` bounds each
/// whole request.
pub fn http_client(timeout: Option<std::time::Duration>) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none());
    match timeout {
        Some(timeout) => builder.timeout(timeout),
        None => builder,
    }
    .build()
    .map_err(|e| format!("cannot make an HTTP client: {e}"))
}

use crate::{config::HttpFront, hub::Hub, intercept::Interceptor};

/// Longest Tollgate waits for upstreams before it serves agents.
const START_WAIT: Duration = Duration::from_secs(10);

/// A running Tollgate: upstreams connected and supervised, ready to serve fronts.
#[derive(Debug)]
pub struct Proxy {
    hub: Arc<Hub>,
    /// What the HTTP front keeps of its sessions.
    http: Arc<front::http::HttpSessions>,
    shutdown: CancellationToken,
    supervisors: Vec<tokio::task::JoinHandle<()>>,
}

/// A name collision or an upstream that did not come up, as seen at start.
#[derive(Debug, Clone)]
pub struct StartReport {
    pub connected: Vec<String>,
    pub failed: Vec<String>,
    pub collisions: Vec<String>,
    pub tools: usize,
}

impl Proxy {
    /// Starts every upstream and waits until each has connected or failed once, or at most
    /// `START_WAIT`: a slow upstream joins the catalog (with `list_changed`) when it is ready.
    /// `interceptor` sees every tool call (the guard, or [`intercept::AllowAll`]).
    pub async fn start_with(mut config: Config, interceptor: Arc<dyn Interceptor>) -> Self {
        config.settle_sandboxes();
        let settle = config.limits.request_timeout.min(START_WAIT);
        let http = Arc::new(front::http::HttpSessions::new(config.fronts.http.as_ref()));
        let hub = Arc::new(Hub::new(config, interceptor));
        let shutdown = CancellationToken::new();
        let host: std::sync::Weak<dyn upstream::Host> = Arc::downgrade(&hub) as _;
        let supervisors = hub
            .upstreams
            .iter()
            .map(|u| tokio::spawn(u.clone().supervise(host.clone(), shutdown.clone())))
            .collect();
        let settled = futures::future::join_all(hub.upstreams.iter().map(|u| u.settled()));
        let _ = tokio::time::timeout(settle, settled).await;
        Self {
            hub,
            http,
            shutdown,
            supervisors,
        }
    }

    /// What came up and what collided.
    pub fn report(&self) -> StartReport {
        let merged = self.hub.merged();
        let (connected, failed) = self
            .hub
            .upstreams
            .iter()
            .partition::<Vec<_>, _>(|u| u.state() == upstream::LinkState::Up);
        StartReport {
            connected: connected.iter().map(|u| u.name.clone()).collect(),
            failed: failed.iter().map(|u| u.name.clone()).collect(),
            collisions: merged.collisions.iter().map(ToString::to_string).collect(),
            tools: merged.tools.len(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.hub.config
    }

    /// Every tool each connected upstream lists, under its upstream's name and its own name
    /// (not the exposed one): what `tollgate pin` records.
    pub fn tool_definitions(&self) -> Vec<(String, rmcp::model::Tool)> {
        self.hub
            .upstreams
            .iter()
            .flat_map(|u| {
                let lists = u.lists();
                lists
                    .tools
                    .iter()
                    .map(|t| (u.name.clone(), t.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Number of agent sessions currently connected.
    pub fn session_count(&self) -> usize {
        self.hub.sessions.len()
    }

    /// HTTP sessions whose idle clock is running.
    pub fn http_sessions_tracked(&self) -> usize {
        self.http.tracked()
    }

    /// Fast-path HTTP event streams kept for resumption (a stream read to its end is not kept).
    pub fn resumable_streams(&self) -> usize {
        self.http.kept_streams()
    }

    /// A new agent session, to serve over any rmcp transport.
    pub fn session(&self) -> AgentSession {
        AgentSession::new(self.hub.clone(), None, Some(self.http.fast_paths().clone()))
    }

    /// Serves the agent on this process's stdin/stdout until stdin closes.
    pub async fn serve_stdio(&self, caller: Caller) -> std::io::Result<()> {
        let (read, write) = rmcp::transport::stdio_pipes();
        self.serve_lines(read, write, caller).await
    }

    /// Serves one agent over newline-delimited JSON-RPC on any byte streams, as the stdio
    /// front does: size limit, error answers, and the fast path for tool calls.
    pub async fn serve_lines<R, W>(&self, read: R, write: W, caller: Caller) -> std::io::Result<()>
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let caller = Arc::new(caller);
        let session = AgentSession::new(self.hub.clone(), Some(caller.clone()), None);
        let transport =
            front::stdio::LineTransport::new(read, write, self.hub.config.limits.max_message_bytes);
        let fast = Arc::new(fast::FastPath::new(
            self.hub.clone(),
            session.id(),
            Some(transport.writer()),
            Some(caller),
        ));
        let transport = transport.with_fast_path(fast);
        let service = session
            .serve_with_ct(transport, self.shutdown.child_token())
            .await
            .map_err(std::io::Error::other)?;
        service.waiting().await.map_err(std::io::Error::other)?;
        Ok(())
    }

    /// Binds and serves the streamable-HTTP front.
    pub async fn serve_http(&self, front: &HttpFront) -> std::io::Result<HttpServer> {
        front::http::serve(
            self.hub.clone(),
            self.http.clone(),
            front,
            self.hub.config.limits.max_message_bytes,
            self.shutdown.child_token(),
        )
        .await
    }

    /// A token cancelled when Tollgate shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops serving, closes every upstream and ends their child processes.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.supervisors {
            let _ = task.await;
        }
        self.hub.interceptor.shutdown();
    }
}
