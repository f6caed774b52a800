//! Event streams of fast-path HTTP calls, kept for resumption (SEP-1699): every event carries
//! an id, the stream opens with a priming event, and a client that lost the stream can GET it
//! again with `Last-Event-ID` and receive what it missed, then the rest as it comes.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::body::Bytes;
use tokio::sync::{Notify, mpsc};

use crate::agent::AgentLine;

pub use crate::config::{
    DEFAULT_RESUME_KEEP as KEEP_AFTER_END, DEFAULT_RESUME_STREAMS as MAX_KEPT,
};
/// Streams kept before a new one first lets the expired go.
const SWEEP_FROM: usize = 256;
/// The reconnection delay a client is told to use.
const RETRY: Duration = Duration::from_secs(3);
/// Prefix of the stream ids Tollgate issues.
const STREAM_PREFIX: &str = "tg-";

#[derive(Debug)]
struct StreamLog {
    session: String,
    events: Mutex<Vec<Bytes>>,
    done: AtomicBool,
    /// When the call's answer was recorded: a stream not read to its end is kept for
    /// [`KEEP_AFTER_END`] from then.
    finished: OnceLock<Instant>,
    grown: Notify,
}

impl StreamLog {
    fn expired(&self, now: Instant, keep: Duration) -> bool {
        self.finished
            .get()
            .is_some_and(|at| now.duration_since(*at) >= keep)
    }
}

impl StreamLog {
    fn events(&self) -> std::sync::MutexGuard<'_, Vec<Bytes>> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Every fast-path stream still open or recently finished.
#[derive(Debug)]
pub(crate) struct Streams {
    next: AtomicU64,
    logs: Mutex<HashMap<String, Arc<StreamLog>>>,
    /// How long a finished stream stays resumable, and how many are kept at most.
    keep: Duration,
    max_kept: usize,
}

impl Default for Streams {
    fn default() -> Self {
        Self::new(KEEP_AFTER_END, MAX_KEPT)
    }
}

impl Streams {
    pub(crate) fn new(keep: Duration, max_kept: usize) -> Self {
        Self {
            next: AtomicU64::new(0),
            logs: Mutex::new(HashMap::new()),
            keep,
            max_kept,
        }
    }

    fn logs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<StreamLog>>> {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Streams currently kept for resumption.
    pub(crate) fn kept(&self) -> usize {
        self.logs().len()
    }

    /// Starts recording a call's messages for `session` and returns the events to send from
    /// the beginning.
    pub(crate) fn open(
        self: &Arc<Self>,
        session: &str,
        mut messages: mpsc::Receiver<AgentLine>,
    ) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + use<> {
        let id = format!(
            "{STREAM_PREFIX}{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let priming = format!("id: {id}:0\nretry: {}\ndata: \n\n", RETRY.as_millis());
        let log = Arc::new(StreamLog {
            session: session.to_owned(),
            events: Mutex::new(vec![Bytes::from(priming)]),
            done: AtomicBool::new(false),
            finished: OnceLock::new(),
            grown: Notify::new(),
        });
        {
            let mut logs = self.logs();
            // Finished streams nobody came back for are let go here, as new ones arrive: no
            // task waits out each one's time, so what is kept never grows with the call rate.
            if logs.len() >= SWEEP_FROM.min(self.max_kept) {
                sweep(&mut logs, Instant::now(), self.keep);
            }
            if logs.len() < self.max_kept {
                logs.insert(id.clone(), log.clone());
            }
        }
        let pump_log = log.clone();
        let stream_id = id.clone();
        tokio::spawn(async move {
            while let Some(message) = messages.recv().await {
                let (AgentLine::Note(line) | AgentLine::Final(line)) = &message;
                {
                    let mut events = pump_log.events();
                    let k = events.len();
                    let mut event = Vec::with_capacity(line.len() + stream_id.len() + 32);
                    event.extend_from_slice(
                        format!("id: {stream_id}:{k}\nevent: message\ndata: ").as_bytes(),
                    );
                    event.extend_from_slice(line);
                    event.extend_from_slice(b"\n\n");
                    events.push(Bytes::from(event));
                }
                pump_log.grown.notify_waiters();
                if matches!(message, AgentLine::Final(_)) {
                    break;
                }
            }
            let _ = pump_log.finished.set(Instant::now());
            pump_log.done.store(true, Ordering::SeqCst);
            pump_log.grown.notify_waiters();
        });
        read_from(log, 0, Some((Arc::downgrade(self), id)))
    }

    /// The rest of a stream after `last_event_id`, for the session that owns it.
    pub(crate) fn resume(
        self: &Arc<Self>,
        session: &str,
        last_event_id: &str,
    ) -> Option<impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + use<>> {
        let (stream, k) = last_event_id.rsplit_once(':')?;
        if !stream.starts_with(STREAM_PREFIX) {
            return None;
        }
        let k: usize = k.parse().ok()?;
        let log = self.logs().get(stream)?.clone();
        (log.session == session && !log.expired(Instant::now(), self.keep))
            .then(|| read_from(log, k + 1, Some((Arc::downgrade(self), stream.to_owned()))))
    }
}

/// Lets go of the finished streams whose time to be resumed is over at `now`.
fn sweep(logs: &mut HashMap<String, Arc<StreamLog>>, now: Instant, keep: Duration) {
    logs.retain(|_, log| !log.expired(now, keep));
}

/// The events of `log` from index `from` on, waiting for new ones until the stream is done;
/// a reader that reaches the end forgets the stream (nothing is left to resume).
fn read_from(
    log: Arc<StreamLog>,
    from: usize,
    owner: Option<(std::sync::Weak<Streams>, String)>,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures::stream::unfold((log, from, owner), |(log, next, owner)| async move {
        loop {
            let event = {
                let grown = log.grown.notified();
                tokio::pin!(grown);
                // Registered before looking, so a push between the look and the wait wakes us.
                grown.as_mut().enable();
                if let Some(event) = log.events().get(next).cloned() {
                    Some(event)
                } else if log.done.load(Ordering::SeqCst) {
                    if let Some((streams, id)) = &owner
                        && let Some(streams) = streams.upgrade()
                    {
                        streams.logs().remove(id);
                    }
                    return None;
                } else {
                    grown.await;
                    None
                }
            };
            if let Some(event) = event {
                return Some((Ok(event), (log, next + 1, owner)));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn text(events: &[Result<Bytes, std::convert::Infallible>]) -> String {
        events
            .iter()
            .map(|e| String::from_utf8_lossy(e.as_ref().unwrap()).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_stream_read_to_its_end_is_forgotten() {
        let streams = Arc::new(Streams::default());
        let (tx, rx) = mpsc::channel(4);
        let events = streams.open("s1", rx);
        tx.send(AgentLine::Note(b"{\"n\":1}".to_vec()))
            .await
            .unwrap();
        tx.send(AgentLine::Final(b"{\"n\":2}".to_vec()))
            .await
            .unwrap();
        let all: Vec<_> = events.collect().await;
        let shown = text(&all);
        assert!(
            shown.starts_with("id: tg-0:0\nretry: 3000\ndata: \n\n"),
            "{shown}"
        );
        assert!(
            shown.contains("id: tg-0:1\nevent: message\ndata: {\"n\":1}"),
            "{shown}"
        );
        assert!(
            shown.contains("id: tg-0:2\nevent: message\ndata: {\"n\":2}"),
            "{shown}"
        );
        assert!(streams.logs().is_empty(), "nothing left to resume");
    }

    #[tokio::test]
    async fn finished_streams_nobody_resumed_are_let_go_once_their_time_is_over() {
        let streams = Arc::new(Streams::default());
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = mpsc::channel(4);
            // Read only the priming event: the client went away before the answer.
            let mut events = Box::pin(streams.open("s1", rx));
            let _priming = events.next().await;
            tx.send(AgentLine::Final(b"{}".to_vec())).await.unwrap();
            readers.push(events);
        }
        // The pumps record the answers and end; the logs stay, for resumption.
        for _ in 0..100 {
            if streams
                .logs()
                .values()
                .all(|log| log.finished.get().is_some())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(streams.kept(), 3);
        assert!(streams.resume("s1", "tg-1:0").is_some());
        sweep(&mut streams.logs(), Instant::now(), KEEP_AFTER_END);
        assert_eq!(streams.kept(), 3, "not before their time");
        sweep(
            &mut streams.logs(),
            Instant::now() + KEEP_AFTER_END,
            KEEP_AFTER_END,
        );
        assert_eq!(streams.kept(), 0);
        assert!(streams.resume("s1", "tg-1:0").is_none());
    }

    #[tokio::test]
    async fn the_configured_bounds_hold() {
        let streams = Arc::new(Streams::new(Duration::from_millis(1), 2));
        let mut open = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = mpsc::channel(4);
            open.push((tx, streams.open("s1", rx)));
        }
        assert_eq!(streams.kept(), 2, "the third is not kept for resumption");
    }

    #[tokio::test]
    async fn an_unfinished_stream_resumes_for_its_session_only() {
        let streams = Arc::new(Streams::default());
        let (tx, rx) = mpsc::channel(4);
        let mut first = Box::pin(streams.open("s1", rx));
        tx.send(AgentLine::Note(b"{\"n\":1}".to_vec()))
            .await
            .unwrap();
        let _priming = first.next().await;
        let _one = first.next().await;
        drop(first);
        assert!(streams.resume("s2", "tg-0:1").is_none(), "another session");
        assert!(streams.resume("s1", "other:1").is_none(), "not our stream");
        let rest = streams.resume("s1", "tg-0:1").unwrap();
        tx.send(AgentLine::Final(b"{\"n\":2}".to_vec()))
            .await
            .unwrap();
        let rest: Vec<_> = rest.collect().await;
        let shown = text(&rest);
        assert!(
            !shown.contains("\"n\":1") && shown.contains("\"n\":2"),
            "{shown}"
        );
    }
}
