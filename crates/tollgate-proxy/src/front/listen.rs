//! The HTTP front's accept loop. Every connection is held to the front's limits: headers
//! within `header_timeout`, no request in flight for `idle_timeout` closes it, and past
//! `max_connections` in all (or `max_per_peer` from one address) the connection idle longest
//! is closed to make room; when every one is busy, the newcomer is answered 503 at once.
//! Nothing an idle, slow or numerous client does can keep a new agent out.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{io::AsyncWriteExt, net::TcpListener};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::config::ConnectionLimits;

/// What a newcomer gets when every connection is busy.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 108\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32000,\"message\":\"Tollgate is at its connection limit; retry\"}}";

/// How long connections get to finish their requests once the front shuts down.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown`, then lets connections finish (at most
/// [`DRAIN`]).
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry::new(limits));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors (or a connection reset before it was taken): wait a
                // little rather than spin; idle connections close meanwhile.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(admitted) = registry.admit(peer.ip()) else {
            tracing::warn!(%peer, "connection refused: every connection is busy");
            tracker.spawn(async move {
                let mut tcp = tcp;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = tcp.write_all(FULL).await;
                    let _ = tcp.shutdown().await;
                })
                .await;
            });
            continue;
        };
        tracker.spawn(connection(
            tcp,
            peer,
            app.clone(),
            limits,
            admitted,
            registry.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    tracker.close();
    let _ = tokio::time::timeout(DRAIN, tracker.wait()).await;
    Ok(())
}

/// Serves one connection until it ends, is evicted, idles out, or the front shuts down.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    limits: ConnectionLimits,
    admitted: Admitted,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let activity = admitted.activity.clone();
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let mut app = app.clone();
            let busy = Busy::start(activity.clone());
            async move {
                let mut request = request.map(axum::body::Body::new);
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let response = tower::Service::call(&mut app, request).await?;
                // The request counts as in flight until its body (an event stream, perhaps) ends.
                Ok::<_, Infallible>(response.map(|body| {
                    axum::body::Body::new(Tracked {
                        inner: body,
                        _busy: busy,
                    })
                }))
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(20)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                break;
            }
            () = admitted.evicted.cancelled() => break,
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                if admitted.activity.idle_for() >= limits.idle_timeout {
                    tracing::debug!(%peer, "idle connection closed");
                    break;
                }
            }
        }
    }
    registry.leave(admitted.id);
}

/// A connection's requests in flight and when it last did anything.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch`.
    last: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    /// Zero while a request is in flight; else the time since the last one ended.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last()))
    }
}

/// One request in flight on a connection; its end is the connection's latest activity.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until it is done or dropped.
struct Tracked {
    inner: axum::body::Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection let in: its id, its activity, and the token that closes it for a newcomer.
struct Admitted {
    id: u64,
    activity: Arc<Activity>,
    evicted: CancellationToken,
}

struct Open {
    peer: IpAddr,
    activity: Arc<Activity>,
    evicted: CancellationToken,
}

/// The open connections, by id and by peer.
struct Registry {
    limits: ConnectionLimits,
    epoch: Instant,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    open: HashMap<u64, Open>,
    per_peer: HashMap<IpAddr, usize>,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Open> {
        let open = self.open.remove(&id)?;
        if let Some(count) = self.per_peer.get_mut(&open.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_peer.remove(&open.peer);
            }
        }
        Some(open)
    }
}

impl Registry {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets a connection from `peer` in, closing the connection idle longest where a limit
    /// is reached (one of `peer`'s own where only its limit is); None when none is idle.
    fn admit(&self, peer: IpAddr) -> Option<Admitted> {
        let mut inner = self.inner();
        loop {
            let all_full = inner.open.len() >= self.limits.max_connections;
            let peer_full =
                inner.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.max_per_peer;
            if !all_full && !peer_full {
                break;
            }
            let victim = inner
                .open
                .iter()
                .filter(|(_, open)| open.activity.in_flight.load(Ordering::Relaxed) == 0)
                .filter(|(_, open)| all_full || open.peer == peer)
                .min_by_key(|(_, open)| open.activity.last())
                .map(|(id, _)| *id)?;
            if let Some(open) = inner.remove(victim) {
                open.evicted.cancel();
            }
        }
        let id = inner.next;
        inner.next += 1;
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            epoch: self.epoch,
        });
        activity.touch();
        let evicted = CancellationToken::new();
        inner.open.insert(
            id,
            Open {
                peer,
                activity: activity.clone(),
                evicted: evicted.clone(),
            },
        );
        *inner.per_peer.entry(peer).or_default() += 1;
        Some(Admitted {
            id,
            activity,
            evicted,
        })
    }

    fn leave(&self, id: u64) {
        self.inner().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(all: usize, per_peer: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: all,
            max_per_peer: per_peer,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn a_newcomer_takes_the_place_of_the_connection_idle_longest() {
        let registry = Registry::new(limits(2, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = registry.admit(a).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let second = registry.admit(a).unwrap();
        let third = registry.admit(a).unwrap();
        assert!(
            first.evicted.is_cancelled(),
            "the oldest idle one made room"
        );
        assert!(!second.evicted.is_cancelled());
        assert_eq!(registry.inner().open.len(), 2);
        // Busy connections are never closed for a newcomer: the front is then full.
        let _busy_second = Busy::start(second.activity.clone());
        let _busy_third = Busy::start(third.activity.clone());
        assert!(registry.admit(a).is_none());
        registry.leave(third.id);
        assert!(registry.admit(a).is_some());
    }

    #[test]
    fn one_peer_at_its_limit_makes_room_among_its_own() {
        let registry = Registry::new(limits(10, 1));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let from_b = registry.admit(b).unwrap();
        let from_a = registry.admit(a).unwrap();
        let again_a = registry.admit(a).unwrap();
        assert!(from_a.evicted.is_cancelled());
        assert!(
            !from_b.evicted.is_cancelled(),
            "another peer's connection stays"
        );
        let _busy = Busy::start(again_a.activity.clone());
        assert!(registry.admit(a).is_none());
        assert!(registry.admit(b).is_some());
    }
}
