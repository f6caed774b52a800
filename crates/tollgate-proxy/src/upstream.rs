//! Upstreams: one MCP client connection per configured tool server, kept alive by a
//! supervisor that restarts it with backoff, plus the table of calls in flight on it that
//! routes progress and server→client requests back to the agent session that caused them.

mod child;
mod handler;
pub(crate) mod http_lane;
mod ordered;
pub(crate) mod stdio_link;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, Instant},
};

use rmcp::{
    RoleClient, RoleServer,
    model::{ClientRequest, ProgressToken, ProtocolVersion, RequestId, ServerResult},
    service::{
        ClientLifecycleMode, Peer, PeerRequestOptions, RunningService,
        serve_client_with_lifecycle_and_ct,
    },
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::{
    ProxyError,
    config::{UpstreamConfig, UpstreamProtocol, UpstreamTransport},
    names::UpstreamLists,
    session::SessionId,
};

pub(crate) use handler::{UpstreamHandler, answer_server_request, ask_agent, deliver_log};

/// Which of an upstream's lists changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
    Tools,
    Prompts,
    Resources,
}

/// What an upstream's connection needs of whoever holds the upstreams: the sessions its own
/// messages go to, the upstream itself by index, and a way to say its lists changed.
pub(crate) trait Host: Send + Sync {
    fn sessions(&self) -> &crate::session::Sessions;
    fn upstream(&self, index: usize) -> Option<&Arc<Upstream>>;
    /// Fetches `kinds` of upstream `index`'s lists again and tells the sessions what changed.
    fn lists_changed<'a>(
        &'a self,
        index: usize,
        kinds: &'a [ListKind],
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// Every list an upstream has.
pub(crate) const ALL_LISTS: &[ListKind] =
    &[ListKind::Tools, ListKind::Prompts, ListKind::Resources];

/// The fast path's way to an upstream.
#[derive(Debug, Clone)]
pub(crate) enum Lane {
    Stdio(Arc<stdio_link::RawLane>),
    Http(Arc<http_lane::HttpLane>),
}

/// Longest a response waits for the progress notifications that preceded it to be relayed.
const PROGRESS_DRAIN_LIMIT: Duration = Duration::from_millis(250);

/// Where a call in flight came from, so that what the upstream sends about it reaches the
/// right agent.
#[derive(Debug, Clone)]
pub(crate) struct CallRoute {
    pub session: SessionId,
    pub agent: Peer<RoleServer>,
    pub agent_request: RequestId,
    pub agent_progress: Option<ProgressToken>,
    /// What the agent declared it can answer (sampling, elicitation, roots).
    pub capabilities: Option<rmcp::model::ClientCapabilities>,
    /// For an agent that cannot receive server→client requests (2026-07-28): where such a
    /// request is handed over to become an input request.
    pub input: Option<tokio::sync::mpsc::Sender<crate::suspend::InputAsk>>,
    /// For an HTTP agent on the fast path: the response stream of its call.
    pub direct: Option<crate::agent::DirectAgent>,
}

#[derive(Debug, Default)]
struct Inflight {
    next: u64,
    calls: HashMap<u64, CallRoute>,
    by_progress: HashMap<ProgressToken, u64>,
    /// Sessions whose calls ended lately, newest last: a server may send a call's last
    /// messages just after its answer.
    ended: std::collections::VecDeque<(Instant, SessionId)>,
}

/// How long after a call ends the upstream's unattributed messages still count as the call's.
const ENDED_CALL_WINDOW: Duration = Duration::from_millis(250);

/// Connection state published to waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    Starting,
    Up,
    Down,
}

/// One upstream and its live connection.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub index: usize,
    pub name: String,
    pub config: UpstreamConfig,
    max_message_bytes: usize,
    pub request_timeout: Duration,
    peer: RwLock<Option<Peer<RoleClient>>>,
    lists: RwLock<Arc<UpstreamLists>>,
    inflight: Mutex<Inflight>,
    pub(crate) pending_progress: Arc<ordered::PendingProgress>,
    /// Held while this upstream's lists are fetched.
    pub(crate) refreshing: tokio::sync::Mutex<()>,
    /// The fast path's lane over the current link, when it speaks 2025-11-25.
    raw: RwLock<Option<Lane>>,
    state: watch::Sender<LinkState>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Upstream {
    pub fn new(
        index: usize,
        config: UpstreamConfig,
        max_message_bytes: usize,
        request_timeout: Duration,
    ) -> Self {
        Self {
            index,
            name: config.name.clone(),
            config,
            max_message_bytes,
            request_timeout,
            peer: RwLock::new(None),
            lists: RwLock::new(Arc::new(UpstreamLists::default())),
            inflight: Mutex::new(Inflight::default()),
            pending_progress: Arc::default(),
            refreshing: tokio::sync::Mutex::new(()),
            raw: RwLock::new(None),
            state: watch::channel(LinkState::Starting).0,
        }
    }

    pub fn lists(&self) -> Arc<UpstreamLists> {
        self.lists
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_lists(&self, lists: UpstreamLists) {
        *self
            .lists
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(lists);
    }

    pub fn peer(&self) -> Result<Peer<RoleClient>, ProxyError> {
        self.peer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| ProxyError::UpstreamDown {
                upstream: self.name.clone(),
            })
    }

    /// The fast path's way to this upstream, when there is one.
    pub(crate) fn raw_lane(&self) -> Option<Lane> {
        self.raw
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_raw_lane(&self, lane: Option<Lane>) {
        *self
            .raw
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lane;
    }

    fn set_peer(&self, peer: Option<Peer<RoleClient>>) {
        *self
            .peer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = peer;
    }

    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    /// Waits until the first connection attempt has ended, one way or the other.
    pub async fn settled(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| *s != LinkState::Starting).await;
    }

    /// Sends one request and waits for its answer, its timeout, or the agent's cancellation.
    /// With a `route`, progress and server→client requests the upstream sends meanwhile are
    /// delivered to that agent session.
    pub async fn request(
        &self,
        request: ClientRequest,
        route: Option<CallRoute>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<ServerResult, ProxyError> {
        let peer = self.peer()?;
        let handle = peer
            .send_request_with_option(request, PeerRequestOptions::with_timeout(timeout))
            .await
            .map_err(|e| ProxyError::from_service(&self.name, e))?;
        let id = handle.id.clone();
        let token = handle.progress_token.clone();
        let _tracked = route.map(|route| self.track(route, token.clone()));
        tokio::select! {
            answer = handle.await_response() => {
                // Progress read before the answer goes out before the answer.
                self.pending_progress.drain(&token, PROGRESS_DRAIN_LIMIT).await;
                answer.map_err(|e| ProxyError::from_service(&self.name, e))
            }
            () = cancel.cancelled() => {
                let _ = peer
                    .notify_cancelled(rmcp::model::CancelledNotificationParam::new(
                        Some(id),
                        Some("cancelled by the agent".to_owned()),
                    ))
                    .await;
                Err(ProxyError::Cancelled)
            }
        }
    }

    pub(crate) fn track(&self, route: CallRoute, progress: ProgressToken) -> Tracked<'_> {
        let mut inflight = lock(&self.inflight);
        inflight.next += 1;
        let key = inflight.next;
        inflight.calls.insert(key, route);
        inflight.by_progress.insert(progress.clone(), key);
        Tracked {
            upstream: self,
            key,
            progress,
        }
    }

    /// The agent route for an upstream progress token.
    pub(crate) fn progress_route(&self, token: &ProgressToken) -> Option<CallRoute> {
        let inflight = lock(&self.inflight);
        let key = inflight.by_progress.get(token)?;
        inflight.calls.get(key).cloned()
    }

    /// The agent a server→client request belongs to. Unambiguous only while every call in
    /// flight on this upstream comes from one session: the wire does not say which call a
    /// request belongs to, so with several sessions in flight the request is refused rather
    /// than risk showing one user's prompt to another.
    pub(crate) fn route_for_server_request(&self) -> Result<CallRoute, RouteError> {
        let inflight = lock(&self.inflight);
        let sessions: HashSet<SessionId> = inflight.calls.values().map(|c| c.session).collect();
        match sessions.len() {
            0 => Err(RouteError::NoCall),
            1 => inflight
                .calls
                .iter()
                .max_by_key(|(k, _)| **k)
                .map(|(_, c)| c.clone())
                .ok_or(RouteError::NoCall),
            n => Err(RouteError::Ambiguous { sessions: n }),
        }
    }

    /// The sessions a message from this upstream that names no call concerns: those with a
    /// call in flight, else those whose call ended within the last moments. Empty when no call
    /// is near.
    pub(crate) fn sessions_concerned(&self) -> HashSet<SessionId> {
        let inflight = lock(&self.inflight);
        let busy: HashSet<SessionId> = inflight.calls.values().map(|c| c.session).collect();
        if !busy.is_empty() {
            return busy;
        }
        let now = Instant::now();
        inflight
            .ended
            .iter()
            .filter(|(at, _)| now.duration_since(*at) <= ENDED_CALL_WINDOW)
            .map(|(_, session)| *session)
            .collect()
    }

    /// Keeps this upstream connected until `shutdown`, restarting it with backoff.
    pub async fn supervise(self: Arc<Self>, hub: Weak<dyn Host>, shutdown: CancellationToken) {
        let span = tracing::info_span!("upstream", upstream = %self.name);
        async move {
            let policy = self.config.restart;
            let mut backoff = policy.initial_backoff;
            loop {
                let started = Instant::now();
                match self.connect(hub.clone(), shutdown.child_token()).await {
                    Ok(mut link) => {
                        info!("connected");
                        self.set_peer(Some(link.peer.clone()));
                        let legacy = link.peer.peer_info().is_some_and(|info| {
                            info.protocol_version.as_str() < ProtocolVersion::V_2026_07_28.as_str()
                        });
                        if legacy {
                            self.set_raw_lane(link.raw.clone());
                        }
                        // Lists first, so that nobody waiting for `Up` sees an empty catalog.
                        if let Some(hub) = hub.upgrade() {
                            hub.lists_changed(self.index, ALL_LISTS).await;
                        }
                        self.state.send_replace(LinkState::Up);
                        let ended = tokio::select! {
                            biased;
                            () = shutdown.cancelled() => None,
                            reason = link.wait() => Some(reason),
                        };
                        self.set_peer(None);
                        self.set_raw_lane(None);
                        self.state.send_replace(LinkState::Down);
                        // A link also ends because shutdown cancelled it: that is no failure.
                        if shutdown.is_cancelled() {
                            link.shutdown().await;
                            info!("stopped");
                            return;
                        }
                        if let Some(reason) = ended {
                            warn!(%reason, "connection ended; in-flight calls fail");
                        }
                        if started.elapsed() > policy.max_backoff {
                            backoff = policy.initial_backoff;
                        }
                    }
                    Err(error) => {
                        self.state.send_replace(LinkState::Down);
                        warn!(%error, "cannot connect");
                    }
                }
                info!(
                    backoff_ms = backoff.as_millis() as u64,
                    "restarting after backoff"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(policy.max_backoff);
            }
        }
        .instrument(span)
        .await;
    }

    async fn connect(&self, hub: Weak<dyn Host>, stop: CancellationToken) -> Result<Link, String> {
        let handler = UpstreamHandler::new(hub, self.index);
        let lifecycle = match self.config.protocol {
            UpstreamProtocol::Legacy => ClientLifecycleMode::Initialize,
            UpstreamProtocol::Modern => ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
            UpstreamProtocol::Auto => ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                legacy_version: Some(ProtocolVersion::V_2025_11_25),
            },
        };
        match &self.config.transport {
            UpstreamTransport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                // A sandboxed server starts through `tollgate sandbox-exec`, which confines
                // itself and then becomes the server.
                let (program, argv): (std::ffi::OsString, Vec<std::ffi::OsString>) =
                    match &self.config.confinement {
                        Some(confinement) => confinement
                            .launcher(command, args)
                            .map(|(exe, argv)| (exe.into_os_string(), argv))
                            .map_err(|e| format!("cannot start `{command}` in its sandbox: {e}"))?,
                        None => (command.into(), args.iter().map(Into::into).collect()),
                    };
                let mut child = child::spawn(&self.name, &program, &argv, env, cwd.as_deref())
                    .map_err(|e| format!("cannot start `{command}`: {e}"))?;
                let (stdout, stdin) = child.take_pipes().ok_or("child pipes missing")?;
                let link =
                    stdio_link::StdioLink::new(&self.name, stdout, stdin, self.max_message_bytes);
                let raw = link.lane();
                let transport = ordered::Ordered::new(link, self.pending_progress.clone());
                let started = tokio::time::timeout(
                    self.request_timeout,
                    serve_client_with_lifecycle_and_ct(handler, transport, lifecycle, stop.clone()),
                )
                .await;
                match started {
                    Ok(Ok(service)) => Ok(Link::new(
                        service,
                        stop,
                        Some(child),
                        Some(Lane::Stdio(raw)),
                    )),
                    Ok(Err(e)) => {
                        child.terminate().await;
                        Err(format!("initialization failed: {e}"))
                    }
                    Err(_) => {
                        child.terminate().await;
                        Err(format!(
                            "no answer to initialization within {} ms",
                            self.request_timeout.as_millis()
                        ))
                    }
                }
            }
            UpstreamTransport::Http { url, headers } => {
                let mut custom = HashMap::new();
                for (name, value) in headers {
                    let name = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("invalid header name `{name}`"))?;
                    let mut value = http::HeaderValue::from_str(value.expose())
                        .map_err(|_| format!("invalid value for header `{name}`"))?;
                    value.set_sensitive(true);
                    custom.insert(name, value);
                }
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(custom)
                    .max_concurrent_requests(256)
                    .max_sse_event_size(self.max_message_bytes);
                let client = crate::http_client(None)?;
                let session = http_lane::SessionSlot::default();
                let tap = http_lane::SessionTap {
                    inner: client.clone(),
                    session: session.clone(),
                };
                let transport = ordered::Ordered::new(
                    StreamableHttpClientTransport::with_client(tap, config),
                    self.pending_progress.clone(),
                );
                let service = tokio::time::timeout(
                    self.request_timeout,
                    serve_client_with_lifecycle_and_ct(handler, transport, lifecycle, stop.clone()),
                )
                .await
                .map_err(|_| {
                    format!(
                        "no answer to initialization within {} ms",
                        self.request_timeout.as_millis()
                    )
                })?
                .map_err(|e| format!("initialization failed: {e}"))?;
                let protocol_version = service
                    .peer()
                    .peer_info()
                    .map(|info| info.protocol_version.to_string())
                    .unwrap_or_else(|| ProtocolVersion::V_2025_11_25.to_string());
                let mut static_headers = http::HeaderMap::new();
                for (name, value) in headers {
                    if let (Ok(name), Ok(mut value)) = (
                        http::HeaderName::from_bytes(name.as_bytes()),
                        http::HeaderValue::from_str(value.expose()),
                    ) {
                        value.set_sensitive(true);
                        static_headers.insert(name, value);
                    }
                }
                let lane = http_lane::HttpLane::new(
                    client,
                    url.clone(),
                    static_headers,
                    session,
                    protocol_version,
                    self.name.clone(),
                    self.max_message_bytes,
                );
                Ok(Link::new(
                    service,
                    stop,
                    None,
                    Some(Lane::Http(Arc::new(lane))),
                ))
            }
            UpstreamTransport::Api(spec) => {
                use rmcp::ServiceExt;
                // The API's tools are served in process, over an in-memory pipe.
                let server =
                    crate::api::ApiServer::new(&self.name, spec.clone(), self.config.call_timeout)?;
                let (near, far) = tokio::io::duplex(self.max_message_bytes.min(1 << 20));
                let (far_read, far_write) = tokio::io::split(far);
                let (near_read, near_write) = tokio::io::split(near);
                let server_stop = stop.clone();
                let name = self.name.clone();
                // The server side completes its handshake only once the client below starts.
                tokio::spawn(async move {
                    match server
                        .serve_with_ct((far_read, far_write), server_stop)
                        .await
                    {
                        Ok(serving) => {
                            let _ = serving.waiting().await;
                        }
                        Err(e) => warn!(upstream = %name, error = %e, "the API tools stopped"),
                    }
                });
                let transport = ordered::Ordered::new(
                    rmcp::transport::async_rw::AsyncRwTransport::new_client(near_read, near_write),
                    self.pending_progress.clone(),
                );
                let service = tokio::time::timeout(
                    self.request_timeout,
                    serve_client_with_lifecycle_and_ct(
                        handler,
                        transport,
                        ClientLifecycleMode::Initialize,
                        stop.clone(),
                    ),
                )
                .await
                .map_err(|_| "the API tools did not start in time".to_owned())?
                .map_err(|e| format!("initialization failed: {e}"))?;
                Ok(Link::new(service, stop, None, None))
            }
        }
    }
}

/// Removes a call from the in-flight table when it ends, however it ends.
pub(crate) struct Tracked<'a> {
    upstream: &'a Upstream,
    key: u64,
    progress: ProgressToken,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        let mut inflight = lock(&self.upstream.inflight);
        if let Some(call) = inflight.calls.remove(&self.key) {
            let now = Instant::now();
            while inflight
                .ended
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > ENDED_CALL_WINDOW)
            {
                inflight.ended.pop_front();
            }
            inflight.ended.push_back((now, call.session));
        }
        inflight.by_progress.remove(&self.progress);
    }
}

/// Why a server→client request could not be routed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("no agent call is in progress on this upstream")]
    NoCall,
    #[error(
        "calls from {sessions} agent sessions are in progress on this upstream; the request cannot be attributed to one"
    )]
    Ambiguous { sessions: usize },
}

/// A live connection and the child process behind it, if any.
struct Link {
    peer: Peer<RoleClient>,
    raw: Option<Lane>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<Result<rmcp::service::QuitReason, tokio::task::JoinError>>,
    child: Option<child::Child>,
}

impl Link {
    fn new(
        service: RunningService<RoleClient, UpstreamHandler>,
        stop: CancellationToken,
        child: Option<child::Child>,
        raw: Option<Lane>,
    ) -> Self {
        let peer = service.peer().clone();
        Self {
            peer,
            raw,
            stop,
            done: tokio::spawn(service.waiting()),
            child,
        }
    }

    /// Resolves when the connection or the child process ends.
    async fn wait(&mut self) -> String {
        let closed = async {
            let _ = (&mut self.done).await;
            "the connection closed".to_owned()
        };
        match &mut self.child {
            Some(child) => tokio::select! {
                status = child.wait() => status,
                reason = closed => reason,
            },
            None => closed.await,
        }
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.done).await;
        if let Some(mut child) = self.child.take() {
            child.terminate().await;
        }
    }
}

/// The agent's `_meta` minus what belongs to the hop (progress token, protocol fields), which
/// Tollgate sets itself towards the upstream.
pub(crate) fn forwardable_meta(
    meta: &rmcp::model::RequestMetaObject,
) -> Option<rmcp::model::RequestMetaObject> {
    let mut out = rmcp::model::RequestMetaObject::new();
    for (key, value) in meta.0.0.iter() {
        // `tollgate/…` is what the agent tells Tollgate (its justification); it is recorded
        // here and is no business of the tool's. `io.tollgate/…` is Tollgate's own to the
        // tool (the per-call credential): an agent cannot put one there.
        if key == "progressToken"
            || key.starts_with("io.modelcontextprotocol/")
            || key.starts_with("tollgate/")
            || key.starts_with("io.tollgate/")
        {
            continue;
        }
        out.0.0.insert(key.clone(), value.clone());
    }
    (!out.0.0.is_empty()).then_some(out)
}
