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

/// The writer thread's state.
struct State {
    settings: Settings,
    signer: Arc<dyn CheckpointSigner>,
    /// The chain this process writes: lane 0 is `audit-<seq>.jsonl`, lane k
    /// `audit-lane<k>-<seq>.jsonl`. Held by the lock below for the life of the process.
    lane: u32,
    /// The lane's lock, held while the file is open (the OS lets go when the process dies);
    /// let go when the trail is closed, so that a trail opened next in this process takes
    /// the lane again.
    lock: Option<File>,
    file: Option<File>,
    path: PathBuf,
    /// The sequence number of the next record.
    seq: u64,
    /// The hash of the last record written.
    prev: String,
    /// Bytes of records in the current file.
    bytes: u64,
    /// The current file's length: its records, then zero bytes not written yet.
    allocated: u64,
    opened: Instant,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    unsynced: bool,
    /// When what is written and not yet synced must be synced by: a little before its bound
    /// (counted from when it was queued) runs out.
    sync_due: Option<Instant>,
    /// Where the syncs are counted: each one before what it covers is acknowledged, so a
    /// caller that was answered sees its sync counted.
    stats: Arc<WriterStats>,
    /// The buffer batches are framed in, kept between them.
    out: Vec<u8>,
    /// The keys of the `Once` records the current file holds.
    defined: std::collections::HashSet<String>,
}

/// Records written in one go at most.
const MAX_BATCH: usize = 4096;
/// How far ahead of its records a file is given its length.
const PREALLOCATE: u64 = 4 << 20;
/// The batch buffer kept between batches, at most: a busy second's batches fit, so that the
/// buffer is not grown again (into fresh pages) batch after batch.
const KEPT_BUFFER: usize = 4 << 20;
/// What the writer adds to a record: its `seq`, `prev` and `time`, and the end of the line.
const FRAMING: usize = 96;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The writer thread: writes what is queued (gathered a while when nobody waits on it), syncs
/// and checkpoints when due, until the trail is closed.
fn run(shared: &Shared, failed: &OnceLock<AuditError>) {
    // Records nobody waits on are gathered a while before they are written: under load, one
    // wake-up and one write serve many calls.
    let gather = match shared.state().settings.durability {
        Durability::Within(d) => (d / 2).min(MAX_GATHER),
        Durability::Synced => Duration::ZERO,
    };
    let mut batch = Taken::default();
    loop {
        let first_queued = {
            let mut queue = shared.queue();
            loop {
                let wait = shared.state().wait(&queue, gather, Instant::now());
                if wait.is_zero() {
                    break;
                }
                queue.idle = queue.jobs.is_empty();
                queue = shared
                    .wake
                    .wait_timeout(queue, wait)
                    .map(|(q, _)| q)
                    .unwrap_or_else(|e| e.into_inner().0);
                queue.idle = false;
            }
            batch.take(&mut queue)
        };
        if let Some(e) = failed.get() {
            let closing = batch.jobs.iter().any(|j| matches!(j, Job::Close(_)));
            if closing {
                let mut state = shared.state();
                state.file = None;
                state.lock = None;
            }
            refuse_all(batch.jobs.drain(..), e);
            batch.clear();
            if closing {
                return;
            }
            continue;
        }
        let mut state = shared.state();
        if let Some(closed) = state.commit(&mut batch, first_queued, failed) {
            // The state outlives the writer (callers share it): the file and the lane go now.
            state.file = None;
            state.lock = None;
            drop(state);
            let _ = closed.send(());
            return;
        }
    }
}

impl State {
    /// Writes `batch` (queued from `first_queued` on) and settles what it owes: the
    /// acknowledgements, the writer's statistics, and on a write error the trail's failure.
    /// The close's acknowledgement, when the batch closed the trail.
    fn commit(
        &mut self,
        batch: &mut Taken,
        first_queued: Option<Instant>,
        failed: &OnceLock<AuditError>,
    ) -> Option<mpsc::Sender<()>> {
        let stats = self.stats.clone();
        let records = batch
            .jobs
            .iter()
            .filter(|j| matches!(j, Job::Record(..)))
            .count() as u64;
        let started = Instant::now();
        let before = self.seq;
        let written = self.write_batch(batch, first_queued);
        batch.clear();
        if records > 0 {
            stats.batch.observe(started.elapsed());
        }
        if written.is_ok() {
            // Every line: records, the definitions they name, checkpoints.
            stats.records.fetch_add(
                self.seq.saturating_sub(before),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        match written {
            Ok(closed) => closed,
            Err((reason, acks)) => {
                let error = AuditError::Failed {
                    dir: self.settings.dir.display().to_string(),
                    reason,
                };
                tracing::error!(%error, "audit trail failed: every call is refused from now on");
                let _ = failed.set(error.clone());
                // Nothing is written again: no sync or checkpoint is due, and the writer
                // only waits for jobs to refuse.
                self.sync_due = None;
                self.since_checkpoint = 0;
                for ack in acks.into_iter().flatten() {
                    let _ = ack.send(Err(error.clone()));
                }
                None
            }
        }
    }

    /// How long the writer may sleep with `queue` as it is.
    fn wait(&self, queue: &Queue, gather: Duration, now: Instant) -> Duration {
        let wait = if queue.urgent || queue.jobs.len() >= WAKE_AT {
            Duration::ZERO
        } else if !queue.jobs.is_empty() {
            // Gathered from the first one on; records that come meanwhile do not wake the
            // writer.
            gather.saturating_sub(
                queue
                    .first_queued
                    .map_or(Duration::ZERO, |first| now.saturating_duration_since(first)),
            )
        } else if self.since_checkpoint > 0 {
            // Nothing queued: until a checkpoint is due, or a record comes.
            self.settings
                .checkpoint_after
                .saturating_sub(self.last_checkpoint.elapsed())
        } else {
            self.settings.checkpoint_after
        };
        // Never past when what is written must be synced.
        self.sync_due
            .map_or(wait, |due| wait.min(due.saturating_duration_since(now)))
    }

    /// Writes `batch` (queued from `first_queued` on), leaving its jobs empty, syncs as
    /// configured and acknowledges; on failure, the reason and the acknowledgements still owed.
    #[allow(clippy::type_complexity)]
    fn write_batch(
        &mut self,
        batch: &mut Taken,
        first_queued: Option<Instant>,
    ) -> Result<
        Option<mpsc::Sender<()>>,
        (
            String,
            Vec<Option<oneshot::Sender<Result<u64, AuditError>>>>,
        ),
    > {
        // The lines of the batch, in the buffer the last batch left.
        let mut buffer = std::mem::take(&mut self.out);
        buffer.clear();
        // Room for the whole batch at once, rather than growing as it is framed.
        buffer.reserve(
            batch
                .jobs
                .iter()
                .map(|job| match job {
                    Job::Record(Body::Line(len), ..) => len + FRAMING,
                    Job::Record(Body::Map(_), ..) => 512,
                    Job::Close(_) => 0,
                })
                .sum(),
        );
        // One per record, whether someone waits on it or not.
        let mut acks = Vec::with_capacity(batch.jobs.len());
        let mut closing = None;
        let mut lines = batch.lines.as_slice();
        let mut definitions = batch.definitions.drain(..);
        for job in batch.jobs.drain(..) {
            match job {
                Job::Record(record, ack, named) => {
                    let ack = ack.waiting();
                    for definition in definitions.by_ref().take(named) {
                        if !self.defined.contains(definition.key()) {
                            self.defined.insert(definition.key().to_owned());
                            self.encode(definition.record(), &mut buffer);
                            self.since_checkpoint += 1;
                        }
                    }
                    let seq = match record {
                        Body::Map(record) => self.encode(record, &mut buffer),
                        Body::Line(len) => {
                            let (object, rest) =
                                lines.split_at_checked(len).unwrap_or((lines, &[]));
                            lines = rest;
                            self.encode_line(object, &mut buffer)
                        }
                    };
                    acks.push(ack.map(|a| (a, seq)));
                    self.since_checkpoint += 1;
                    if self.since_checkpoint >= self.settings.checkpoint_every {
                        self.encode_checkpoint(false, &mut buffer);
                    }
                }
                Job::Close(ack) => closing = Some(ack),
            }
        }
        if self.since_checkpoint > 0
            && self.last_checkpoint.elapsed() >= self.settings.checkpoint_after
        {
            self.encode_checkpoint(false, &mut buffer);
        }
        let owed = |acks: Vec<Option<(oneshot::Sender<Result<u64, AuditError>>, u64)>>| {
            acks.into_iter().map(|a| a.map(|(s, _)| s)).collect()
        };
        if let Err(e) = self.write(&buffer) {
            return Err((e, owed(acks)));
        }
        buffer.clear();
        buffer.shrink_to(KEPT_BUFFER);
        self.out = buffer;
        // Synced: when someone waits, or when what nobody waits on is due, counted from when
        // it was queued.
        if !acks.is_empty()
            && let Some(first) = first_queued
        {
            let due = self.due(first);
            self.sync_due = Some(self.sync_due.map_or(due, |d| d.min(due)));
        }
        // Someone waiting makes the sync now only when records are acknowledged synced;
        // otherwise the batch is acknowledged as written and synced by its bound.
        let waited_on = acks.iter().any(Option::is_some)
            && matches!(self.settings.durability, Durability::Synced);
        let must_sync =
            self.unsynced && (waited_on || self.sync_due.is_some_and(|due| due <= Instant::now()));
        if must_sync && let Err(e) = self.sync() {
            return Err((e, owed(acks)));
        }
        for (ack, seq) in acks.into_iter().flatten() {
            let _ = ack.send(Ok(seq));
        }
        if let Some(closed) = closing {
            if let Err(e) = self.finish() {
                tracing::error!(reason = %e, "the audit trail could not be closed cleanly");
            }
            return Ok(Some(closed));
        }
        if self.bytes >= self.settings.rotate_bytes
            || self.opened.elapsed() >= self.settings.rotate_after
        {
            let mut closing = Vec::new();
            self.encode_checkpoint(true, &mut closing);
            self.write(&closing).map_err(|e| (e, Vec::new()))?;
            self.trim().map_err(|e| (e, Vec::new()))?;
            self.sync().map_err(|e| (e, Vec::new()))?;
            let mut next = Map::new();
            next.insert("kind".into(), Value::from("continue"));
            self.begin_file(next).map_err(|e| (e, Vec::new()))?;
        }
        Ok(None)
    }

    /// Appends `record` as the next line of `buffer`; its sequence number.
    fn encode(&mut self, mut record: Map<String, Value>, buffer: &mut Vec<u8>) -> u64 {
        let seq = self.seq;
        record.insert("seq".into(), Value::from(seq));
        record.insert("prev".into(), Value::from(self.prev.clone()));
        record
            .entry("time")
            .or_insert_with(|| Value::from(unix_ms()));
        let start = buffer.len();
        if serde_json::to_writer(&mut *buffer, &Value::Object(record)).is_err() {
            // A map of JSON values always serializes; should one not, the chain stays readable.
            buffer.truncate(start);
            return self.encode_line(br#"{"kind":"unwritable"}"#, buffer);
        }
        self.seal(start, buffer);
        seq
    }

    /// Appends the object the caller serialized, closed with its `seq`, `prev` and `time`, as
    /// the next line of `buffer`; its sequence number. Anything but one JSON object on one line
    /// is written as a record saying so, so that the chain stays readable.
    fn encode_line(&mut self, object: &[u8], buffer: &mut Vec<u8>) -> u64 {
        let open = match object {
            [b'{', .., b'}'] if !object.contains(&b'\n') => object.get(..object.len() - 1),
            _ => None,
        };
        let Some(open) = open else {
            let mut record = Map::new();
            record.insert("kind".into(), Value::from("unwritable"));
            record.insert("bytes".into(), Value::from(object.len()));
            return self.encode(record, buffer);
        };
        let seq = self.seq;
        // Framed in place, at the end of the batch's buffer: no copy of its own.
        let start = buffer.len();
        buffer.extend_from_slice(open);
        if open.len() > 1 {
            buffer.push(b',');
        }
        // Writing into a `Vec` cannot fail.
        let _ = write!(
            buffer,
            "\"seq\":{seq},\"prev\":\"{}\",\"time\":{}}}",
            self.prev,
            unix_ms()
        );
        self.seal(start, buffer);
        seq
    }

    /// Chains the line that `buffer` holds from `start` and ends it.
    fn seal(&mut self, start: usize, buffer: &mut Vec<u8>) {
        self.prev.clear();
        write_line_hash(buffer.get(start..).unwrap_or_default(), &mut self.prev);
        self.seq += 1;
        buffer.push(b'\n');
    }

    fn encode_checkpoint(&mut self, closing: bool, buffer: &mut Vec<u8>) {
        let mut record = Map::new();
        record.insert("kind".into(), Value::from("checkpoint"));
        record.insert("closing".into(), Value::from(closing));
        record.insert("kid".into(), Value::from(self.signer.kid()));
        record.insert(
            "sig".into(),
            Value::from(self.signer.sign(&checkpoint_message(self.seq, &self.prev))),
        );
        self.encode(record, buffer);
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        use std::os::unix::fs::FileExt;

        if bytes.is_empty() {
            return Ok(());
        }
        let file = self.file.as_ref().ok_or("no file is open")?;
        let end = self.bytes + bytes.len() as u64;
        if end > self.allocated {
            // The file is given its length ahead of the records, so that a sync writes the
            // records alone and not the file's new size each time. What is not written yet
            // reads as zero bytes, which readers skip; closing the file trims it.
            let allocated = end + PREALLOCATE;
            file.set_len(allocated)
                .map_err(|e| format!("extending {}: {e}", self.path.display()))?;
            self.allocated = allocated;
        }
        file.write_all_at(bytes, self.bytes)
            .map_err(|e| format!("writing {}: {e}", self.path.display()))?;
        self.bytes = end;
        self.unsynced = true;
        if self.sync_due.is_none() {
            self.sync_due = Some(self.due(Instant::now()));
        }
        self.copy(bytes);
        Ok(())
    }

    /// Writes `bytes` to the copy for log shippers, if there is one.
    fn copy(&mut self, bytes: &[u8]) {
        let written = match &self.settings.copy {
            None => return,
            Some(Copy::Stdout) => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            Some(Copy::Daily(dir)) => {
                let path = dir.join(format!(
                    "tollgate-audit-{}.jsonl",
                    utc_date(unix_ms() / 1000)
                ));
                fs::create_dir_all(dir)
                    .and_then(|()| OpenOptions::new().create(true).append(true).open(&path))
                    .and_then(|mut f| f.write_all(bytes))
            }
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "the audit trail's copy could not be written; the trail itself was");
        }
    }

    /// Cuts the current file to its records: a closed file has no room left after them.
    fn trim(&mut self) -> Result<(), String> {
        if let Some(file) = &self.file
            && self.allocated > self.bytes
        {
            file.set_len(self.bytes)
                .map_err(|e| format!("trimming {}: {e}", self.path.display()))?;
            self.allocated = self.bytes;
        }
        Ok(())
    }

    /// When what was queued at `queued` and nobody waits on must be synced by: within its
    /// bound, leaving an eighth of it for the write and the sync themselves.
    fn due(&self, queued: Instant) -> Instant {
        let bound = match self.settings.durability {
            Durability::Synced => LAZY_SYNC,
            Durability::Within(d) => d,
        };
        // A bound too far to count to is due at once: never later than it should be.
        queued.checked_add(bound - bound / 8).unwrap_or(queued)
    }

    fn sync(&mut self) -> Result<(), String> {
        if let Some(file) = &self.file {
            file.sync_data()
                .map_err(|e| format!("syncing {}: {e}", self.path.display()))?;
        }
        self.unsynced = false;
        self.sync_due = None;
        self.stats
            .syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Opens the next file, named after the sequence number of its first record, which is
    /// `first` (what the file continues from is in its `prev`).
    fn begin_file(&mut self, first: Map<String, Value>) -> Result<(), String> {
        let path = self.settings.dir.join(file_name(self.lane, self.seq));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        self.file = Some(file);
        self.path = path;
        self.bytes = 0;
        self.allocated = 0;
        self.opened = Instant::now();
        self.defined.clear();
        let mut buffer = Vec::new();
        self.encode(first, &mut buffer);
        self.write(&buffer)?;
        self.sync()?;
        // The folder entry of the new file must survive a crash too.
        if let Ok(dir) = File::open(&self.settings.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Closes the current file with a closing checkpoint.
    fn finish(&mut self) -> Result<(), String> {
        if self.file.is_none() {
            return Ok(());
        }
        let mut closing = Vec::new();
        self.encode_checkpoint(true, &mut closing);
        self.write(&closing)?;
        self.trim()?;
        self.sync()?;
        self.file = None;
        Ok(())
    }
}

/// `YYYY-MM-DD` of a Unix time, in UTC.
fn utc_date(unix_secs: u64) -> String {
    // Days to civil date (H. Hinnant's algorithm), for days since 1970-01-01.
    let z = i64::try_from(unix_secs / 86_400).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn refuse_all(jobs: impl IntoIterator<Item = Job>, error: &AuditError) {
    for job in jobs {
        match job {
            Job::Record(_, ack, _) => {
                if let Some(ack) = ack.waiting() {
                    let _ = ack.send(Err(error.clone()));
                }
            }
            Job::Close(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

/// Lanes a folder may hold: as many processes may write in it at once.
const MAX_LANES: u32 = 256;

/// The first lane in `dir` no other process holds, and its lock.
fn take_lane(dir: &Path) -> Result<(u32, File), String> {
    for lane in 0..MAX_LANES {
        let path = dir.join(format!(".lane-{lane}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match lock.try_lock() {
            Ok(()) => return Ok((lane, lock)),
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
    }
    Err(format!(
        "{MAX_LANES} processes already write in this folder; give this one an `audit.dir` of its own"
    ))
}

/// The name of lane `lane`'s file whose first record is `seq`.
fn file_name(lane: u32, seq: u64) -> String {
    if lane == 0 {
        format!("audit-{seq:016}.jsonl")
    } else {
        format!("audit-lane{lane}-{seq:016}.jsonl")
    }
}

/// The lane of a trail file's name: `audit-<seq>.jsonl` is lane 0.
pub(crate) fn lane_of(path: &Path) -> u32 {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("audit-lane"))
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(lane, _)| lane.parse().ok())
        .unwrap_or(0)
}

/// The trail's files in `dir`, in order.
pub(crate) fn trail_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Where the records of a file of `len` bytes end: before the zero bytes that a file not
/// closed keeps after them.
fn data_end(file: &mut File, len: u64) -> std::io::Result<u64> {
    const BLOCK: u64 = 64 << 10;
    let mut end = len;
    let mut block = vec![0u8; BLOCK as usize];
    while end > 0 {
        let from = end.saturating_sub(BLOCK);
        let block = block.get_mut(..(end - from) as usize).unwrap_or_default();
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(block)?;
        let records = crate::records_of(block).len();
        if records > 0 {
            return Ok(from + records as u64);
        }
        end = from;
    }
    Ok(0)
}

/// The next sequence number, the hash to continue from, and whether the newest file was
/// closed cleanly, from the last complete record of lane `lane` in `dir`.
fn last_record(dir: &Path, lane: u32) -> Result<(u64, String, bool), String> {
    let files = trail_files(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let Some(newest) = files.iter().rfind(|f| lane_of(f) == lane) else {
        return Ok((0, GENESIS.to_owned(), true));
    };
    let mut file =
        File::open(newest).map_err(|e| format!("cannot read {}: {e}", newest.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A file Tollgate did not close keeps the room made for records not written yet.
    let len =
        data_end(&mut file, len).map_err(|e| format!("cannot read {}: {e}", newest.display()))?;
    // Records are small: the tail holds the last one, else read it all.
    let mut tail = Vec::new();
    let from = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(from))
        .and_then(|_| (&mut file).take(len - from).read_to_end(&mut tail))
        .map_err(|e| format!("cannot read {}: {e}", newest.display()))?;
    let complete = match tail.iter().rposition(|b| *b == b'\n') {
        Some(end) => tail.get(..end).unwrap_or_default(),
        None => &[],
    };
    let line = complete
        .rsplit(|b| *b == b'\n')
        .next()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            format!(
                "{} holds no complete record: move it aside after keeping it as evidence",
                newest.display()
            )
        })?;
    let record: Value = serde_json::from_slice(line).map_err(|e| {
        format!(
            "the last record of {} is not JSON ({e}): verify the trail (`tollgate audit verify`)",
            newest.display()
        )
    })?;
    let seq = record
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("the last record of {} has no `seq`", newest.display()))?;
    let closed = record.get("kind").and_then(Value::as_str) == Some("checkpoint")
        && record.get("closing").and_then(Value::as_bool) == Some(true)
        && complete.len() + 1 == tail.len();
    Ok((seq + 1, line_hash(line), closed))
}

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
        assert_eq!(super::utc_date(0), "1970-01-01");
        assert_eq!(super::utc_date(951_782_400), "2000-02-29");
        assert_eq!(super::utc_date(1_796_083_200), "2026-12-01");
        assert_eq!(super::utc_date(1_796_083_199), "2026-11-30");
    }
}
