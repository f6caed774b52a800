//! The writing side: one thread owns the open file; callers queue records and, when they need
//! to, wait until theirs is durable.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, OnceLock, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::chain::{CheckpointSigner, GENESIS, checkpoint_message, line_hash, write_line_hash};

/// When a record is acknowledged, and how long after that it is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A record is acknowledged once the batch holding it is written to the file and synced
    /// (`fdatasync`): a power loss loses no acknowledged record. Records queued together share
    /// one sync. A record queued with [`Audit::note`] (nobody waits on it) is written at once
    /// and synced with the next record someone waits on, or within [`LAZY_SYNC`].
    Synced,
    /// A record is acknowledged once it is written to the file (handed to the OS, so that it
    /// survives the process being killed) and synced by group commit before this much time
    /// has passed since it was written: only a power loss or a crash of the machine may lose
    /// the records of that last stretch. Records nobody waits on are gathered for half this
    /// time (at most [`MAX_GATHER`]) before they are written.
    Within(Duration),
}

impl Durability {
    /// The default: written before its call goes ahead, synced within 20 ms.
    pub const DEFAULT: Self = Self::Within(DEFAULT_SYNC_WITHIN);
}

/// How long a written record may stay unsynced by default.
pub const DEFAULT_SYNC_WITHIN: Duration = Duration::from_millis(20);

/// Where the trail goes and how it is cut.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub durability: Durability,
    /// A file is closed and the next one begun past this size…
    pub rotate_bytes: u64,
    /// …or this age.
    pub rotate_after: Duration,
    /// A signed checkpoint after this many records…
    pub checkpoint_every: u64,
    /// …or this long after the last one, whichever comes first.
    pub checkpoint_after: Duration,
    /// Where a copy of every line goes for log shippers, if anywhere. The trail's own files
    /// stay the record: a copy that cannot be written is logged and skipped.
    pub copy: Option<Copy>,
}

/// A copy of the trail for log shippers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copy {
    /// Standard output (never where the MCP stream is).
    Stdout,
    /// `tollgate-audit-YYYY-MM-DD.jsonl` in this folder, a file per UTC day.
    Daily(PathBuf),
}

impl Settings {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            durability: Durability::DEFAULT,
            rotate_bytes: 64 << 20,
            rotate_after: Duration::from_secs(24 * 3600),
            checkpoint_every: 1000,
            copy: None,
            checkpoint_after: Duration::from_secs(60),
        }
    }
}

/// Why the trail cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail in {dir} cannot be written: {reason}")]
    Failed { dir: String, reason: String },
    #[error("the audit trail is closed")]
    Closed,
    /// One record could not be made; the trail itself is fine.
    #[error("an audit record could not be made: {0}")]
    Unrecordable(String),
}

/// A record as a caller hands it over: a map, or a JSON object it serialized (without
/// `seq`, `prev` and `time`, which the writer adds).
enum Handed<'a> {
    Map(Map<String, Value>),
    Line(&'a [u8]),
}

/// A record as it waits: a map, or the length of a serialized object whose bytes are the next
/// ones in the queue's `lines` (copied there as it was queued, so that no record is an
/// allocation of its own that the writer's thread frees).
enum Body {
    Map(Map<String, Value>),
    Line(usize),
}

enum Job {
    /// A record, and how many of the next definitions in the queue's `definitions` it names.
    Record(Body, Ack, usize),
    Close(mpsc::Sender<()>),
}

impl Job {
    /// The bytes in `lines` and the definitions this job accounts for.
    fn holds(&self) -> (usize, usize) {
        match self {
            Self::Record(Body::Line(len), _, named) => (*len, *named),
            Self::Record(Body::Map(_), _, named) => (0, *named),
            Self::Close(_) => (0, 0),
        }
    }
}

/// Who a record answers once it is written.
enum Ack {
    /// A caller waiting until the record is durable.
    Waiting(oneshot::Sender<Result<u64, AuditError>>),
    /// Nobody, and no sync either: a record written after what it reports went ahead (an
    /// outcome). It is synced with the next record someone waits on, or within [`LAZY_SYNC`].
    Lazy,
}

impl Ack {
    fn waiting(self) -> Option<oneshot::Sender<Result<u64, AuditError>>> {
        match self {
            Self::Waiting(sender) => Some(sender),
            Self::Lazy => None,
        }
    }
}

/// A record that later records name (a tool's definition, a grant), which each file holds
/// once, before the first record that names it, so that every file can be read on its own.
///
/// A definition is shared, not built per record: a caller hands the writer a clone of an
/// `Arc` it keeps, and the record itself is made on the writer thread, only when a file does
/// not hold it yet.
pub trait Define: Send + Sync {
    /// The key later records name it by.
    fn key(&self) -> &str;
    /// The record, with its `kind` and `key` (the writer adds `seq`, `prev` and `time`).
    fn record(&self) -> Map<String, Value>;
}

/// A key and the record it names.
impl Define for (String, Map<String, Value>) {
    fn key(&self) -> &str {
        &self.0
    }

    fn record(&self) -> Map<String, Value> {
        self.1.clone()
    }
}

/// A definition as it is handed to the writer.
pub type Definition = Arc<dyn Define>;

/// The acknowledgement of one record: its sequence number once it is as durable as configured.
#[derive(Debug)]
pub struct Ticket(TicketInner);

#[derive(Debug)]
enum TicketInner {
    Waiting(oneshot::Receiver<Result<u64, AuditError>>),
    /// Nothing to wait on: a record nobody waits on (an outcome).
    Queued,
    /// Already as durable as configured: written by the caller's own thread.
    Written(u64),
    Failed(AuditError),
}

impl Ticket {
    /// A ticket for a record that could not be made: the call it covers is refused.
    pub fn unrecordable(reason: String) -> Self {
        Self(TicketInner::Failed(AuditError::Unrecordable(reason)))
    }

    /// A ticket answered by `answer` (for what waits on tickets, and its tests).
    pub fn from_receiver(answer: oneshot::Receiver<Result<u64, AuditError>>) -> Self {
        Self(TicketInner::Waiting(answer))
    }

    /// Whether there is nothing to wait for: the record was acknowledged as it was queued.
    pub fn is_settled(&self) -> bool {
        matches!(self.0, TicketInner::Queued | TicketInner::Written(_))
    }

    /// Waits until the record is as durable as configured: its sequence number once the writer
    /// wrote (and synced) it; none when the durability acknowledges records as they are queued.
    pub async fn durable(self) -> Result<Option<u64>, AuditError> {
        match self.0 {
            TicketInner::Waiting(receiver) => {
                receiver.await.unwrap_or(Err(AuditError::Closed)).map(Some)
            }
            TicketInner::Queued => Ok(None),
            TicketInner::Written(seq) => Ok(Some(seq)),
            TicketInner::Failed(e) => Err(e),
        }
    }
}

/// What callers hand the writer. The writer is woken only when it must be: for a record
/// someone waits on, when it sleeps with nothing to do, or when much has piled up; otherwise it
/// collects for a short window, so that under load one wake-up and one write serve many calls.
#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// The serialized records of `jobs`, one after the other, in their order.
    lines: Vec<u8>,
    /// The definitions `jobs` name, in their order.
    definitions: Vec<Definition>,
    /// When the first of `jobs` was queued.
    first_queued: Option<Instant>,
    /// Someone waits on one of `jobs` (a record to be synced, or the close).
    urgent: bool,
    /// The writer sleeps with nothing queued: the next record wakes it.
    idle: bool,
    /// No more jobs are taken.
    closed: bool,
}

/// Queued jobs past which the writer is woken whatever the durability.
const WAKE_AT: usize = 256;
/// How long the writer collects records nobody waits on before it writes them
/// (`Durability::Within`): half the bound, and never longer than this.
pub const MAX_GATHER: Duration = Duration::from_millis(10);
/// At the default durability, how long a record that nobody waits on (an outcome) may stay
/// unsynced: it is written at once and synced with the next decision, or by then.
pub const LAZY_SYNC: Duration = Duration::from_millis(20);

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The open file and the chain. The writer thread takes it for each batch; a caller that
    /// waits on its record takes it when it is free and nothing is queued ahead of it, and
    /// writes the record (with whatever was queued) itself, sparing two thread wake-ups.
    /// Taken after `queue`, never before it.
    state: Mutex<State>,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `record`, copying what it is made of into the queue's buffers; false once the
    /// trail is closed.
    fn push_record(
        &self,
        record: Handed<'_>,
        ack: Ack,
        definitions: impl IntoIterator<Item = Definition>,
    ) -> bool {
        let urgent = matches!(ack, Ack::Waiting(_));
        let mut queue = self.queue();
        if queue.closed {
            return false;
        }
        let before = queue.definitions.len();
        queue.definitions.extend(definitions);
        let named = queue.definitions.len() - before;
        let body = match record {
            Handed::Map(record) => Body::Map(record),
            Handed::Line(object) => {
                queue.lines.extend_from_slice(object);
                Body::Line(object.len())
            }
        };
        queue.jobs.push(Job::Record(body, ack, named));
        self.queued(queue, urgent);
        true
    }

    /// Queues the close; false once the trail is closed.
    fn push_close(&self, ack: mpsc::Sender<()>) -> bool {
        let mut queue = self.queue();
        if queue.closed {
            return false;
        }
        queue.closed = true;
        queue.jobs.push(Job::Close(ack));
        self.queued(queue, true);
        true
    }

    /// Wakes the writer for what was just queued, if it must be woken.
    fn queued(&self, mut queue: std::sync::MutexGuard<'_, Queue>, urgent: bool) {
        queue.first_queued.get_or_insert_with(Instant::now);
        queue.urgent |= urgent;
        let wake = urgent || queue.idle || queue.jobs.len() >= WAKE_AT;
        drop(queue);
        if wake {
            self.wake.notify_one();
        }
    }
}

/// What one round of the writer takes out of the queue: its jobs, their serialized records
/// and the definitions they name.
#[derive(Default)]
struct Taken {
    jobs: Vec<Job>,
    lines: Vec<u8>,
    definitions: Vec<Definition>,
}

impl Taken {
    /// Takes at most `MAX_BATCH` jobs from `queue` into `self` (empty), with what they hold;
    /// when from `queue`'s first job, `queue`'s buffers are swapped with `self`'s, so that each
    /// keeps its room. Returns when the first job left queued was queued, or none.
    fn take(&mut self, queue: &mut Queue) -> Option<Instant> {
        if queue.jobs.len() <= MAX_BATCH {
            std::mem::swap(&mut queue.jobs, &mut self.jobs);
            std::mem::swap(&mut queue.lines, &mut self.lines);
            std::mem::swap(&mut queue.definitions, &mut self.definitions);
            queue.urgent = false;
            return queue.first_queued.take();
        }
        // The rest stays queued, as urgent and as old as it was.
        self.jobs.extend(queue.jobs.drain(..MAX_BATCH));
        let (bytes, named) = self
            .jobs
            .iter()
            .map(Job::holds)
            .fold((0, 0), |(b, n), (len, d)| (b + len, n + d));
        self.lines
            .extend(queue.lines.drain(..bytes.min(queue.lines.len())));
        self.definitions.extend(
            queue
                .definitions
                .drain(..named.min(queue.definitions.len())),
        );
        queue.first_queued
    }

    fn clear(&mut self) {
        self.jobs.clear();
        self.lines.clear();
        self.lines.shrink_to(KEPT_BUFFER);
        self.definitions.clear();
    }
}

/// What the writer has done, for metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// How long each batch took to write (and sync, when it was synced).
    pub batch: crate::histogram::Histogram,
    /// Lines written: records, the definitions they name, checkpoints.
    pub records: std::sync::atomic::AtomicU64,
    /// Syncs (`fdatasync`) made.
    pub syncs: std::sync::atomic::AtomicU64,
}

/// The audit trail of one Tollgate.
pub struct Audit {
    durability: Durability,
    stats: Arc<WriterStats>,
    shared: Arc<Shared>,
    failed: Arc<OnceLock<AuditError>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("dir", &self.dir)
            .field("failed", &self.failed.get())
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Opens the trail in `settings.dir`: a new file that continues the chain from the last
    /// complete record found there (or starts it).
    pub fn open(settings: Settings, signer: Arc<dyn CheckpointSigner>) -> Result<Self, AuditError> {
        let dir = settings.dir.clone();
        let durability = settings.durability;
        let fail = |reason: String| AuditError::Failed {
            dir: dir.display().to_string(),
            reason,
        };
        // Owner-only, like every folder of Tollgate's state.
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)
            .map_err(|e| fail(format!("cannot create the folder: {e}")))?;
        // Another process writing in this folder holds its own lane: each chain has one writer.
        let (lane, lock) = take_lane(&dir).map_err(fail)?;
        let (seq, prev, previous_closed) = last_record(&dir, lane).map_err(fail)?;
        let stats = Arc::new(WriterStats::default());
        let mut state = State {
            settings,
            signer,
            lane,
            lock: Some(lock),
            file: None,
            path: PathBuf::new(),
            seq,
            prev,
            bytes: 0,
            allocated: 0,
            opened: Instant::now(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            unsynced: false,
            sync_due: None,
            stats: stats.clone(),
            out: Vec::new(),
            defined: std::collections::HashSet::new(),
        };
        let mut opening = Map::new();
        opening.insert("kind".into(), Value::from("open"));
        opening.insert("previous_closed".into(), Value::from(previous_closed));
        state.begin_file(opening).map_err(fail)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            state: Mutex::new(state),
        });
        let failed = Arc::new(OnceLock::new());
        let thread = {
            let (failed, shared) = (failed.clone(), shared.clone());
            std::thread::Builder::new()
                .name("tollgate-audit".into())
                .spawn(move || run(&shared, &failed))
                .map_err(|e| fail(format!("cannot start the writer: {e}")))?
        };
        Ok(Self {
            durability,
            stats,
            shared,
            failed,
            thread: Mutex::new(Some(thread)),
            dir,
        })
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Why the trail can no longer be written, once it cannot.
    pub fn failure(&self) -> Option<&AuditError> {
        self.failed.get()
    }

    /// Queues `record` (its `seq` and `prev` are the trail's); the ticket says when it is
    /// durable.
    pub fn append(&self, record: Map<String, Value>) -> Ticket {
        self.push(None, Handed::Map(record), false)
    }

    /// Like [`Audit::append`], with the definitions `record` names written before it in the
    /// same file, each unless that file already holds it.
    pub fn append_after(
        &self,
        definitions: impl IntoIterator<Item = Definition>,
        record: Map<String, Value>,
    ) -> Ticket {
        self.push(definitions, Handed::Map(record), false)
    }

    /// Like [`Audit::append_after`], for a record the caller serialized: one JSON object, on
    /// one line, without `seq`, `prev` or `time`. Serializing on the caller's thread keeps the
    /// writer's share of each record to framing, hashing and writing; the bytes are copied
    /// into the queue, so the caller may serialize every record into the same buffer.
    pub fn append_line_after(
        &self,
        definitions: impl IntoIterator<Item = Definition>,
        object: &[u8],
    ) -> Ticket {
        self.push(definitions, Handed::Line(object), false)
    }

    /// Queues a record that nobody waits on and no decision hangs on: what happened to a call
    /// that already went ahead. It is written with the next batch; at the default durability
    /// it is synced with the next record someone waits on, or within [`LAZY_SYNC`], so that a
    /// call in flight does not wait for the sync of its predecessor's outcome.
    pub fn note(&self, record: Map<String, Value>) {
        drop(self.push(None, Handed::Map(record), true));
    }

    /// Like [`Audit::note`], for a record the caller serialized (as for
    /// [`Audit::append_line_after`]).
    pub fn note_line(&self, object: &[u8]) {
        drop(self.push(None, Handed::Line(object), true));
    }

    fn push(
        &self,
        definitions: impl IntoIterator<Item = Definition>,
        record: Handed<'_>,
        lazy: bool,
    ) -> Ticket {
        if let Some(e) = self.failed.get() {
            return Ticket(TicketInner::Failed(e.clone()));
        }
        let definitions = definitions.into_iter();
        if matches!(self.durability, Durability::Within(_)) && !lazy {
            match self.write_now(definitions, record) {
                Ok(ticket) => return ticket,
                Err((definitions, record)) => return self.queue(definitions, record, lazy),
            }
        }
        self.queue(definitions, record, lazy)
    }

    /// Writes a record someone waits on at the written durability on the caller's thread,
    /// with whatever is queued before it, when the file is free and no sync is due: what the
    /// writer thread would do, without waking it or being woken by it. Hands the record back
    /// when it must go through the queue.
    #[allow(clippy::type_complexity)]
    fn write_now<'r, D: Iterator<Item = Definition>>(
        &self,
        definitions: D,
        record: Handed<'r>,
    ) -> Result<Ticket, (D, Handed<'r>)> {
        let mut queue = self.shared.queue();
        if queue.closed || queue.jobs.len() >= MAX_BATCH {
            return Err((definitions, record));
        }
        // The writer is writing: the record goes behind what it writes.
        let Ok(mut state) = self.shared.state.try_lock() else {
            return Err((definitions, record));
        };
        // A sync due now is the writer thread's to make, not this call's.
        let now = Instant::now();
        if state.sync_due.is_some_and(|due| due <= now) {
            return Err((definitions, record));
        }
        let mut batch = Taken::default();
        let first_queued = batch.take(&mut queue).unwrap_or(now);
        let before = batch.definitions.len();
        batch.definitions.extend(definitions);
        let named = batch.definitions.len() - before;
        let body = match record {
            Handed::Map(record) => Body::Map(record),
            Handed::Line(object) => {
                batch.lines.extend_from_slice(object);
                Body::Line(object.len())
            }
        };
        let (ack, mut written) = oneshot::channel();
        batch.jobs.push(Job::Record(body, Ack::Waiting(ack), named));
        let had_sync_due = state.sync_due.is_some();
        // The queue was not closed, so neither is the trail by this batch.
        let _ = state.commit(&mut batch, Some(first_queued), &self.failed);
        // The writer sleeps until what it knew was due: it must learn of a new sync.
        let wake = !had_sync_due && state.sync_due.is_some();
        drop(state);
        drop(queue);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(Ticket(match written.try_recv() {
            Ok(Ok(seq)) => TicketInner::Written(seq),
            Ok(Err(e)) => TicketInner::Failed(e),
            Err(_) => TicketInner::Failed(AuditError::Closed),
        }))
    }

    fn queue(
        &self,
        definitions: impl IntoIterator<Item = Definition>,
        record: Handed<'_>,
        lazy: bool,
    ) -> Ticket {
        let (ack, ticket) = match (self.durability, lazy) {
            (Durability::Synced, false) => {
                let (ack, receiver) = oneshot::channel();
                (Ack::Waiting(ack), TicketInner::Waiting(receiver))
            }
            (Durability::Within(_), false) => {
                let (ack, receiver) = oneshot::channel();
                (Ack::Waiting(ack), TicketInner::Waiting(receiver))
            }
            (_, true) => (Ack::Lazy, TicketInner::Queued),
        };
        if self.shared.push_record(record, ack, definitions) {
            Ticket(ticket)
        } else {
            Ticket(TicketInner::Failed(AuditError::Closed))
        }
    }

    /// Writes a closing checkpoint, syncs and stops the writer. Later appends fail.
    pub fn close(&self) {
        let (ack, done) = mpsc::channel();
        if self.shared.push_close(ack) {
            let _ = done.recv();
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.close();
    }
}

mod files;
mod state;

pub(crate) use files::{lane_of, trail_files};
use files::{last_record, take_lane};
use state::{KEPT_BUFFER, MAX_BATCH, State, run};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_past_the_most_it_writes_at_once_takes_its_own_bytes_and_leaves_the_rest() {
        let mut queue = Queue::default();
        let tool: Definition = Arc::new(("tool:t".to_owned(), Map::new()));
        let jobs = MAX_BATCH + 10;
        for n in 0..jobs {
            let object = format!("{{\"n\":{n}}}");
            queue.lines.extend_from_slice(object.as_bytes());
            // Every third record names a definition; every fifth is a map.
            let named = usize::from(n % 3 == 0);
            if named == 1 {
                queue.definitions.push(tool.clone());
            }
            let body = if n % 5 == 0 {
                queue.lines.truncate(queue.lines.len() - object.len());
                Body::Map(Map::new())
            } else {
                Body::Line(object.len())
            };
            queue.jobs.push(Job::Record(body, Ack::Lazy, named));
        }
        let first = Instant::now();
        queue.first_queued = Some(first);
        let mut taken = Taken::default();
        assert_eq!(
            taken.take(&mut queue),
            Some(first),
            "the rest is as old as it was"
        );
        assert_eq!(taken.jobs.len(), MAX_BATCH);
        assert_eq!(queue.jobs.len(), 10);
        let texts = |range: std::ops::Range<usize>| -> String {
            range
                .filter(|n| n % 5 != 0)
                .map(|n| format!("{{\"n\":{n}}}"))
                .collect()
        };
        assert_eq!(String::from_utf8_lossy(&taken.lines), texts(0..MAX_BATCH));
        assert_eq!(
            String::from_utf8_lossy(&queue.lines),
            texts(MAX_BATCH..jobs)
        );
        let named = |range: std::ops::Range<usize>| range.filter(|n| n % 3 == 0).count();
        assert_eq!(taken.definitions.len(), named(0..MAX_BATCH));
        assert_eq!(queue.definitions.len(), named(MAX_BATCH..jobs));
        // The next round takes the rest whole, swapping buffers.
        taken.clear();
        assert_eq!(taken.take(&mut queue), Some(first));
        assert_eq!(taken.jobs.len(), 10);
        assert_eq!(
            String::from_utf8_lossy(&taken.lines),
            texts(MAX_BATCH..jobs)
        );
        assert!(queue.jobs.is_empty() && queue.lines.is_empty() && queue.first_queued.is_none());
    }

    #[test]
    fn days_are_named_in_utc() {
        assert_eq!(super::files::utc_date(0), "1970-01-01");
        assert_eq!(super::files::utc_date(951_782_400), "2000-02-29");
        assert_eq!(super::files::utc_date(1_796_083_200), "2026-12-01");
        assert_eq!(super::files::utc_date(1_796_083_199), "2026-11-30");
    }
}
