//! One byte stream's writer, shared by every task that writes whole lines to it.
//!
//! A line is written by the caller itself when the stream is free and nothing is queued ahead
//! of it: one non-blocking write, no hand-off to another task. What the stream does not take
//! at once, and every line that arrives while the stream is busy, goes to a queue that a task
//! owning the stream drains in order. Lines are never interleaved, and a caller dropped
//! mid-way can never leave half a line on the wire: the caller's own write never waits, and
//! what it could not write is queued before it returns.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::{Notify, oneshot},
};

/// Lines a writer queues before senders wait (or, for `try_write_line`, give up).
const WRITE_QUEUE: usize = 1024;
/// Most bytes the task gathers into one write.
const BATCH: usize = 256 * 1024;

type Stream = Box<dyn AsyncWrite + Send + Unpin>;

#[derive(Debug)]
enum Queued {
    Line(Vec<u8>),
    /// Answered once everything queued before it is written and flushed.
    Flush(oneshot::Sender<()>),
}

struct State {
    /// The stream while nobody writes on it; `None` while the task or a caller holds it.
    idle: Option<Stream>,
    queue: VecDeque<Queued>,
    /// A caller wrote without its flush completing: the task flushes before it rests.
    unflushed: bool,
    /// The stream failed or every writer is gone: nothing more is written.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the task: something is queued, or the last writer went.
    work: Notify,
    /// Wakes callers waiting for room in the queue.
    room: Notify,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held only by writers: when the last one goes, the task writes what is queued and ends.
struct Writers(Arc<Shared>);

impl Drop for Writers {
    fn drop(&mut self) {
        self.0.state().closed = true;
        self.0.work.notify_one();
    }
}

#[derive(Clone)]
pub(crate) struct LineWriter {
    writers: Arc<Writers>,
}

impl std::fmt::Debug for LineWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineWriter")
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed")
}

/// Writes as much of `line` as `stream` takes without waiting; the bytes it did not take.
fn write_now(stream: &mut Stream, line: &[u8]) -> std::io::Result<usize> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut written = 0;
    while let Some(rest) = line.get(written..).filter(|rest| !rest.is_empty()) {
        match Pin::new(&mut *stream).poll_write(&mut cx, rest) {
            Poll::Ready(Ok(0)) => return Err(closed()),
            Poll::Ready(Ok(n)) => written += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(written)
}

impl LineWriter {
    pub(crate) fn new(write: impl AsyncWrite + Send + Unpin + 'static) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                idle: Some(Box::new(write)),
                queue: VecDeque::new(),
                unflushed: false,
                closed: false,
            }),
            work: Notify::new(),
            room: Notify::new(),
        });
        tokio::spawn(drain(shared.clone()));
        Self {
            writers: Arc::new(Writers(shared)),
        }
    }

    fn shared(&self) -> &Shared {
        &self.writers.0
    }

    /// Writes `line` (a `\n` is added) at once if the stream is free, else queues it, waiting
    /// while the queue is full.
    pub(crate) async fn write_line(&self, mut line: Vec<u8>) -> std::io::Result<()> {
        line.push(b'\n');
        loop {
            let room = self.shared().room.notified();
            match self.offer(line) {
                Ok(()) => return Ok(()),
                Err(Some(back)) => line = back,
                Err(None) => return Err(closed()),
            }
            room.await;
        }
    }

    /// Writes or queues `line` unless the queue is full; never waits (safe inside a
    /// cancellable read).
    pub(crate) fn try_write_line(&self, mut line: Vec<u8>) -> bool {
        line.push(b'\n');
        self.offer(line).is_ok()
    }

    /// Writes `line` now or queues it; gives it back if the queue is full, `None` once the
    /// stream is closed.
    fn offer(&self, line: Vec<u8>) -> Result<(), Option<Vec<u8>>> {
        let shared = self.shared();
        let mut state = shared.state();
        if state.closed {
            return Err(None);
        }
        if state.queue.is_empty()
            && let Some(mut stream) = state.idle.take()
        {
            drop(state);
            let written = write_now(&mut stream, &line);
            let flushed = matches!(written, Ok(n) if n == line.len())
                && matches!(
                    Pin::new(&mut stream).poll_flush(&mut Context::from_waker(Waker::noop())),
                    Poll::Ready(Ok(()))
                );
            let mut state = shared.state();
            state.idle = Some(stream);
            match written {
                Ok(n) if n == line.len() => {
                    state.unflushed |= !flushed;
                    if state.unflushed || !state.queue.is_empty() {
                        shared.work.notify_one();
                    }
                }
                Ok(n) => {
                    // What the stream did not take goes first: anything queued meanwhile
                    // came after this line.
                    let mut rest = line;
                    rest.drain(..n);
                    state.queue.push_front(Queued::Line(rest));
                    shared.work.notify_one();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a line stream failed");
                    state.closed = true;
                    state.queue.clear();
                    shared.work.notify_one();
                    shared.room.notify_waiters();
                    return Err(None);
                }
            }
            return Ok(());
        }
        if state.queue.len() >= WRITE_QUEUE {
            return Err(Some(line));
        }
        state.queue.push_back(Queued::Line(line));
        shared.work.notify_one();
        Ok(())
    }

    /// Waits until everything written or queued so far is on the stream.
    pub(crate) async fn flush(&self) -> std::io::Result<()> {
        let (done, flushed) = oneshot::channel();
        {
            let mut state = self.shared().state();
            if state.closed {
                return Err(closed());
            }
            state.queue.push_back(Queued::Flush(done));
        }
        self.shared().work.notify_one();
        flushed.await.map_err(|_| closed())
    }
}

/// The task that owns the stream while the queue has anything in it.
async fn drain(shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut waiting = Vec::new();
    loop {
        let work = shared.work.notified();
        let taken = {
            let mut state = shared.state();
            let ending = state.closed;
            let pending = !state.queue.is_empty() || state.unflushed;
            // A caller writing at this moment holds the stream; it wakes the task once it puts
            // it back with something left to do.
            match state.idle.take() {
                Some(stream) if pending || ending => {
                    batch.clear();
                    while batch.len() < BATCH {
                        match state.queue.pop_front() {
                            Some(Queued::Line(line)) => batch.extend_from_slice(&line),
                            Some(Queued::Flush(done)) => waiting.push(done),
                            None => break,
                        }
                    }
                    let flush = std::mem::take(&mut state.unflushed) || !waiting.is_empty();
                    Some((stream, ending && state.queue.is_empty(), flush))
                }
                other => {
                    state.idle = other;
                    None
                }
            }
        };
        let Some((mut stream, ending, flush)) = taken else {
            work.await;
            continue;
        };
        shared.room.notify_waiters();
        let wrote =
            stream.write_all(&batch).await.is_ok() && (!flush || stream.flush().await.is_ok());
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        if !wrote {
            {
                let mut state = shared.state();
                state.closed = true;
                state.queue.clear();
            }
            shared.room.notify_waiters();
            let _ = stream.shutdown().await;
            return;
        }
        if ending {
            let _ = stream.shutdown().await;
            return;
        }
        shared.state().idle = Some(stream);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncRead, AsyncReadExt};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_keep_their_order_when_the_stream_is_slow_to_take_them() {
        // A pipe of 64 bytes: most lines cannot be written at once and queue behind the rest
        // of the one before.
        let (write, mut read) = tokio::io::duplex(64);
        let writer = LineWriter::new(write);
        let writers: Vec<_> = (0..8)
            .map(|task| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for n in 0..50 {
                        let line = format!("{task}:{n}:{}", "x".repeat(n * 3));
                        writer.write_line(line.into_bytes()).await.unwrap();
                    }
                })
            })
            .collect();
        let reading = tokio::spawn(async move {
            let mut all = String::new();
            read.read_to_string(&mut all).await.unwrap();
            all
        });
        for w in writers {
            w.await.unwrap();
        }
        writer.flush().await.unwrap();
        drop(writer);
        let all = reading.await.unwrap();
        let mut next = [0usize; 8];
        for line in all.lines() {
            let mut parts = line.splitn(3, ':');
            let task: usize = parts.next().unwrap().parse().unwrap();
            let n: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(
                parts.next().unwrap(),
                "x".repeat(n * 3),
                "a line was torn: {line}"
            );
            assert_eq!(n, next[task], "task {task}'s lines out of order");
            next[task] += 1;
        }
        assert_eq!(next, [50; 8], "every line arrived");
    }

    #[tokio::test]
    async fn a_line_written_at_once_needs_no_task() {
        let (write, mut read) = tokio::io::duplex(1024);
        let writer = LineWriter::new(write);
        assert!(writer.try_write_line(b"now".to_vec()));
        // Nothing has yielded since: on this one-thread runtime the writer's task has not run,
        // so the line is there only if the caller wrote it itself.
        let mut got = [0u8; 8];
        let mut buf = tokio::io::ReadBuf::new(&mut got);
        let polled =
            Pin::new(&mut read).poll_read(&mut Context::from_waker(Waker::noop()), &mut buf);
        assert!(matches!(polled, Poll::Ready(Ok(()))), "{polled:?}");
        assert_eq!(buf.filled(), b"now\n");
    }

    #[tokio::test]
    async fn a_closed_stream_refuses_lines() {
        let (write, read) = tokio::io::duplex(16);
        drop(read);
        let writer = LineWriter::new(write);
        assert!(writer.write_line(b"lost".to_vec()).await.is_err());
        assert!(!writer.try_write_line(b"lost".to_vec()));
    }

    #[tokio::test]
    async fn a_full_queue_turns_try_away_and_makes_write_wait() {
        let (write, mut read) = tokio::io::duplex(8);
        let writer = LineWriter::new(write);
        // Eight bytes go at once; the rest is queued, and the task takes it and waits on the
        // full stream.
        assert!(writer.try_write_line(b"0123456789".to_vec()));
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let mut queued = 0;
        while writer.try_write_line(b"0123456789".to_vec()) {
            queued += 1;
            assert!(queued <= WRITE_QUEUE, "the queue has no bound");
        }
        assert_eq!(queued, WRITE_QUEUE);
        let waiting = tokio::spawn({
            let writer = writer.clone();
            async move { writer.write_line(b"last".to_vec()).await }
        });
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "a write into a full queue waits");
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            read.read_to_end(&mut all).await.unwrap();
            all
        });
        waiting.await.unwrap().unwrap();
        writer.flush().await.unwrap();
        drop(writer);
        let all = reading.await.unwrap();
        assert!(all.ends_with(b"last\n"));
        assert_eq!(all.len(), (queued + 1) * 11 + 5);
    }
}
