//! The writer thread: the open file, its chain, group commit and checkpoints.

use super::{files::*, *};

/// The writer thread's state.
pub(super) struct State {
    pub(super) settings: Settings,
    pub(super) signer: Arc<dyn CheckpointSigner>,
    /// The chain this process writes: lane 0 is `audit-<seq>.jsonl`, lane k
    /// `audit-lane<k>-<seq>.jsonl`. Held by the lock below for the life of the process.
    pub(super) lane: u32,
    /// The lane's lock, held while the file is open (the OS lets go when the process dies);
    /// let go when the trail is closed, so that a trail opened next in this process takes
    /// the lane again.
    pub(super) lock: Option<File>,
    pub(super) file: Option<File>,
    pub(super) path: PathBuf,
    /// The sequence number of the next record.
    pub(super) seq: u64,
    /// The hash of the last record written.
    pub(super) prev: String,
    /// Bytes of records in the current file.
    pub(super) bytes: u64,
    /// The current file's length: its records, then zero bytes not written yet.
    pub(super) allocated: u64,
    pub(super) opened: Instant,
    pub(super) since_checkpoint: u64,
    pub(super) last_checkpoint: Instant,
    pub(super) unsynced: bool,
    /// When what is written and not yet synced must be synced by: a little before its bound
    /// (counted from when it was queued) runs out.
    pub(super) sync_due: Option<Instant>,
    /// Where the syncs are counted: each one before what it covers is acknowledged, so a
    /// caller that was answered sees its sync counted.
    pub(super) stats: Arc<WriterStats>,
    /// The buffer batches are framed in, kept between them.
    pub(super) out: Vec<u8>,
    /// The keys of the `Once` records the current file holds.
    pub(super) defined: std::collections::HashSet<String>,
}

/// Records written in one go at most.
pub(super) const MAX_BATCH: usize = 4096;
/// How far ahead of its records a file is given its length.
pub(super) const PREALLOCATE: u64 = 4 << 20;
/// The batch buffer kept between batches, at most: a busy second's batches fit, so that the
/// buffer is not grown again (into fresh pages) batch after batch.
pub(super) const KEPT_BUFFER: usize = 4 << 20;
/// What the writer adds to a record: its `seq`, `prev` and `time`, and the end of the line.
pub(super) const FRAMING: usize = 96;

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The writer thread: writes what is queued (gathered a while when nobody waits on it), syncs
/// and checkpoints when due, until the trail is closed.
pub(super) fn run(shared: &Shared, failed: &OnceLock<AuditError>) {
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
    pub(super) fn commit(
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
    pub(super) fn wait(&self, queue: &Queue, gather: Duration, now: Instant) -> Duration {
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
    pub(super) fn write_batch(
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
    pub(super) fn encode(&mut self, mut record: Map<String, Value>, buffer: &mut Vec<u8>) -> u64 {
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
    pub(super) fn encode_line(&mut self, object: &[u8], buffer: &mut Vec<u8>) -> u64 {
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
    pub(super) fn seal(&mut self, start: usize, buffer: &mut Vec<u8>) {
        self.prev.clear();
        write_line_hash(buffer.get(start..).unwrap_or_default(), &mut self.prev);
        self.seq += 1;
        buffer.push(b'\n');
    }

    pub(super) fn encode_checkpoint(&mut self, closing: bool, buffer: &mut Vec<u8>) {
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

    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
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
    pub(super) fn copy(&mut self, bytes: &[u8]) {
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
    pub(super) fn trim(&mut self) -> Result<(), String> {
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
    pub(super) fn due(&self, queued: Instant) -> Instant {
        let bound = match self.settings.durability {
            Durability::Synced => LAZY_SYNC,
            Durability::Within(d) => d,
        };
        // A bound too far to count to is due at once: never later than it should be.
        queued.checked_add(bound - bound / 8).unwrap_or(queued)
    }

    pub(super) fn sync(&mut self) -> Result<(), String> {
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
    pub(super) fn begin_file(&mut self, first: Map<String, Value>) -> Result<(), String> {
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
    pub(super) fn finish(&mut self) -> Result<(), String> {
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

pub(super) fn refuse_all(jobs: impl IntoIterator<Item = Job>, error: &AuditError) {
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
