//! The trail's files: lanes and their locks, file names, and where a file's records end.

use super::*;

/// `YYYY-MM-DD` of a Unix time, in UTC.
pub(super) fn utc_date(unix_secs: u64) -> String {
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

/// Lanes a folder may hold: as many processes may write in it at once.
pub(super) const MAX_LANES: u32 = 256;

/// The first lane in `dir` no other process holds, and its lock.
pub(super) fn take_lane(dir: &Path) -> Result<(u32, File), String> {
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
pub(super) fn file_name(lane: u32, seq: u64) -> String {
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
pub(super) fn data_end(file: &mut File, len: u64) -> std::io::Result<u64> {
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
pub(super) fn last_record(dir: &Path, lane: u32) -> Result<(u64, String, bool), String> {
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
