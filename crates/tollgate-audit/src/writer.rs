//! The writing side: one thread owns the open file; callers queue records and, when they need
//! to, wait until theirs is durable.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::chain::{CheckpointSigner, GENESIS, checkpoint_message, line_hash};

/// How long after it is written a record is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A record is acknowledged once the batch holding it is synced (`fdatasync`): a crash of
    /// the machine loses no acknowledged record. Records queued together share one sync.
    Synced,
    /// A record is acknowledged once written to the file (a killed process loses nothing); the
    /// file is synced at least this often, which bounds what a machine crash may lose.
    Within(Duration),
}

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
}

impl Settings {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            durability: Durability::Synced,
            rotate_bytes: 64 << 20,
            rotate_after: Duration::from_secs(24 * 3600),
            checkpoint_every: 1000,
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
}

enum Job {
    Record(
        Map<String, Value>,
        Option<oneshot::Sender<Result<u64, AuditError>>>,
    ),
    Close(mpsc::Sender<()>),
}

/// The acknowledgement of one record: its sequence number once it is as durable as configured.
#[derive(Debug)]
pub struct Ticket(TicketInner);

#[derive(Debug)]
enum TicketInner {
    Waiting(oneshot::Receiver<Result<u64, AuditError>>),
    Failed(AuditError),
}

impl Ticket {
    /// Waits until the record is durable.
    pub async fn durable(self) -> Result<u64, AuditError> {
        match self.0 {
            TicketInner::Waiting(receiver) => receiver.await.unwrap_or(Err(AuditError::Closed)),
            TicketInner::Failed(e) => Err(e),
        }
    }
}

/// The audit trail of one Tollgate.
pub struct Audit {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
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
        let fail = |reason: String| AuditError::Failed {
            dir: dir.display().to_string(),
            reason,
        };
        fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot create the folder: {e}")))?;
        let (seq, prev, previous_closed) = last_record(&dir).map_err(fail)?;
        let mut state = State {
            settings,
            signer,
            file: None,
            path: PathBuf::new(),
            seq,
            prev,
            bytes: 0,
            opened: Instant::now(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_sync: Instant::now(),
            unsynced: false,
        };
        let mut opening = Map::new();
        opening.insert("kind".into(), Value::from("open"));
        opening.insert("previous_closed".into(), Value::from(previous_closed));
        state.begin_file(opening).map_err(fail)?;
        let (sender, receiver) = mpsc::channel();
        let failed = Arc::new(OnceLock::new());
        let thread = {
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("tollgate-audit".into())
                .spawn(move || state.run(&receiver, &failed))
                .map_err(|e| fail(format!("cannot start the writer: {e}")))?
        };
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            failed,
            thread: Mutex::new(Some(thread)),
            dir,
        })
    }

    /// Why the trail can no longer be written, once it cannot.
    pub fn failure(&self) -> Option<&AuditError> {
        self.failed.get()
    }

    /// Queues `record` (its `seq` and `prev` are the trail's); the ticket says when it is
    /// durable.
    pub fn append(&self, record: Map<String, Value>) -> Ticket {
        if let Some(e) = self.failed.get() {
            return Ticket(TicketInner::Failed(e.clone()));
        }
        let (ack, receiver) = oneshot::channel();
        let sent = self
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|s| s.send(Job::Record(record, Some(ack))).is_ok());
        if sent {
            Ticket(TicketInner::Waiting(receiver))
        } else {
            Ticket(TicketInner::Failed(AuditError::Closed))
        }
    }

    /// Writes a closing checkpoint, syncs and stops the writer. Later appends fail.
    pub fn close(&self) {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let (ack, done) = mpsc::channel();
            if sender.send(Job::Close(ack)).is_ok() {
                let _ = done.recv();
            }
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
    file: Option<File>,
    path: PathBuf,
    /// The sequence number of the next record.
    seq: u64,
    /// The hash of the last record written.
    prev: String,
    bytes: u64,
    opened: Instant,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    last_sync: Instant,
    unsynced: bool,
}

/// Records written in one go at most.
const MAX_BATCH: usize = 4096;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl State {
    fn run(mut self, jobs: &mpsc::Receiver<Job>, failed: &OnceLock<AuditError>) {
        let tick = match self.settings.durability {
            Durability::Within(d) => d.min(self.settings.checkpoint_after),
            Durability::Synced => self.settings.checkpoint_after,
        }
        .max(Duration::from_millis(1));
        loop {
            let first = match jobs.recv_timeout(tick) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.finish();
                    return;
                }
            };
            let mut batch: Vec<Job> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if let Some(e) = failed.get() {
                refuse_all(batch, e);
                continue;
            }
            match self.write_batch(batch) {
                Ok(Some(closed)) => {
                    let _ = closed.send(());
                    return;
                }
                Ok(None) => {}
                Err((reason, acks)) => {
                    let error = AuditError::Failed {
                        dir: self.settings.dir.display().to_string(),
                        reason,
                    };
                    tracing::error!(%error, "audit trail failed: every call is refused from now on");
                    let _ = failed.set(error.clone());
                    for ack in acks.into_iter().flatten() {
                        let _ = ack.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// Writes `batch`, syncs as configured and acknowledges; on failure, the reason and the
    /// acknowledgements still owed.
    #[allow(clippy::type_complexity)]
    fn write_batch(
        &mut self,
        batch: Vec<Job>,
    ) -> Result<
        Option<mpsc::Sender<()>>,
        (
            String,
            Vec<Option<oneshot::Sender<Result<u64, AuditError>>>>,
        ),
    > {
        let mut buffer = Vec::new();
        let mut acks = Vec::with_capacity(batch.len());
        let mut closing = None;
        for job in batch {
            match job {
                Job::Record(record, ack) => {
                    let seq = self.encode(record, &mut buffer);
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
        let must_sync = match self.settings.durability {
            Durability::Synced => self.unsynced,
            Durability::Within(d) => self.unsynced && self.last_sync.elapsed() >= d,
        };
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
        let line = serde_json::to_vec(&Value::Object(record)).unwrap_or_default();
        self.prev = line_hash(&line);
        self.seq += 1;
        buffer.extend_from_slice(&line);
        buffer.push(b'\n');
        seq
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
        if bytes.is_empty() {
            return Ok(());
        }
        let file = self.file.as_mut().ok_or("no file is open")?;
        file.write_all(bytes)
            .map_err(|e| format!("writing {}: {e}", self.path.display()))?;
        self.bytes += bytes.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), String> {
        if let Some(file) = &self.file {
            file.sync_data()
                .map_err(|e| format!("syncing {}: {e}", self.path.display()))?;
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Opens the next file, named after the sequence number of its first record, which is
    /// `first` (what the file continues from is in its `prev`).
    fn begin_file(&mut self, first: Map<String, Value>) -> Result<(), String> {
        let path = self
            .settings
            .dir
            .join(format!("audit-{:016}.jsonl", self.seq));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        self.file = Some(file);
        self.path = path;
        self.bytes = 0;
        self.opened = Instant::now();
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
        self.sync()?;
        self.file = None;
        Ok(())
    }
}

fn refuse_all(batch: Vec<Job>, error: &AuditError) {
    for job in batch {
        match job {
            Job::Record(_, Some(ack)) => {
                let _ = ack.send(Err(error.clone()));
            }
            Job::Record(_, None) => {}
            Job::Close(ack) => {
                let _ = ack.send(());
            }
        }
    }
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

/// The next sequence number, the hash to continue from, and whether the newest file was
/// closed cleanly, from the last complete record in `dir`.
fn last_record(dir: &Path) -> Result<(u64, String, bool), String> {
    let files = trail_files(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let Some(newest) = files.last() else {
        return Ok((0, GENESIS.to_owned(), true));
    };
    let mut file =
        File::open(newest).map_err(|e| format!("cannot read {}: {e}", newest.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Records are small: the tail holds the last one, else read it all.
    let mut tail = Vec::new();
    let from = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(from))
        .and_then(|_| file.read_to_end(&mut tail))
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
