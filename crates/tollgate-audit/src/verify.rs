//! Checking a trail: every link, every checkpoint's signature, and how each file ends.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chain::{CheckpointVerifier, GENESIS, checkpoint_message, line_hash};

/// One thing wrong with a trail, at the record where it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// The line in that file, from 1.
    pub line: usize,
    /// The record number concerned, when it is known.
    pub record: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.record {
            Some(n) => write!(
                f,
                "{}:{}: record {n}: {}",
                self.file.display(),
                self.line,
                self.what
            ),
            None => write!(f, "{}:{}: {}", self.file.display(), self.line, self.what),
        }
    }
}

/// What checking a trail found.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    pub checkpoints: u64,
    /// The last record number read (of the last chain checked).
    pub last: Option<u64>,
    /// The chains checked: one per process that wrote in the folder at once (its lane).
    pub chains: usize,
    pub problems: Vec<Problem>,
    /// Facts that are not faults: a restart after a crash.
    pub notices: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Line<'a> {
    number: usize,
    bytes: &'a [u8],
    value: Option<Value>,
}

/// The files `paths` name, in order: a file stands for itself, a folder for its
/// `audit-*.jsonl` files in order.
pub fn trail_paths(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(crate::writer::trail_files(path)?);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// What of a trail file's bytes holds records: all of it, less the zero bytes that follow the
/// records in a file Tollgate did not close (room made ahead for records never written).
pub fn records_of(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |at| at + 1);
    bytes.get(..end).unwrap_or_default()
}

/// Checks `files`, in the order given (a folder stands for its `audit-*.jsonl` files in
/// order). Each process writing in a folder at once keeps a chain of its own (a lane:
/// `audit-<seq>.jsonl`, `audit-lane<k>-<seq>.jsonl`), and each lane is checked as one trail.
/// `open`: the last file of each lane is still being written, so its records after the last
/// checkpoint are not yet covered by a signature and that is not a fault.
pub fn verify_files(
    files: &[PathBuf],
    verifier: &dyn CheckpointVerifier,
    open: bool,
) -> std::io::Result<Report> {
    let paths = trail_paths(files)?;
    let mut lanes: Vec<(u32, Vec<PathBuf>)> = Vec::new();
    for path in paths {
        let lane = crate::writer::lane_of(&path);
        match lanes.iter_mut().find(|(l, _)| *l == lane) {
            Some((_, files)) => files.push(path),
            None => lanes.push((lane, vec![path])),
        }
    }
    let mut report = Report::default();
    for (_, files) in &lanes {
        verify_chain(files, verifier, open, &mut report)?;
    }
    report.chains = lanes.len();
    Ok(report)
}

/// Checks `paths` as one chain, adding to `report`.
fn verify_chain(
    paths: &[PathBuf],
    verifier: &dyn CheckpointVerifier,
    open: bool,
    report: &mut Report,
) -> std::io::Result<()> {
    report.files += paths.len();
    // What the next record must carry.
    let mut expected: Option<(u64, String)> = None;
    // How the file before ended: cleanly closed or not.
    let mut previous_closed = true;
    let count = paths.len();
    for (index, path) in paths.iter().enumerate() {
        let read = std::fs::read(path)?;
        let bytes = records_of(&read);
        let last_file = index + 1 == count;
        let closed = check_file(
            path,
            bytes,
            verifier,
            &mut expected,
            report,
            previous_closed,
        );
        // A file before the last that was not closed is explained by the next one (Tollgate
        // started again after a crash); the last one must be closed unless still being written.
        if last_file && !closed && !open {
            report.problems.push(Problem {
                file: path.clone(),
                line: bytes.split(|b| *b == b'\n').count(),
                record: report.last,
                what: "the trail ends without a closing checkpoint: records after this one may have been cut off (if Tollgate is still writing it, check with --open)".into(),
            });
        }
        previous_closed = closed;
    }
    Ok(())
}

/// Checks one file, continuing from `expected`; whether it ends with a closing checkpoint.
fn check_file(
    path: &Path,
    bytes: &[u8],
    verifier: &dyn CheckpointVerifier,
    expected: &mut Option<(u64, String)>,
    report: &mut Report,
    previous_closed: bool,
) -> bool {
    let problem = |line: usize, record: Option<u64>, what: String| Problem {
        file: path.to_owned(),
        line,
        record,
        what,
    };
    let mut parts: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // After the last newline: empty when the file ends cleanly, a cut record otherwise.
    let tail = parts.pop().unwrap_or_default();
    let lines: Vec<Line<'_>> = parts
        .iter()
        .enumerate()
        .map(|(i, bytes)| Line {
            number: i + 1,
            bytes,
            value: serde_json::from_slice::<Value>(bytes).ok(),
        })
        .collect();
    let seq_of = |line: &Line<'_>| line.value.as_ref().and_then(|v| v.get("seq")?.as_u64());
    let mut closed = false;
    for (i, line) in lines.iter().enumerate() {
        closed = false;
        let Some(value) = &line.value else {
            let after = expected.as_ref().map(|(n, _)| *n);
            report.problems.push(problem(
                line.number,
                after,
                "not a JSON record: it was altered or damaged".into(),
            ));
            *expected = None;
            continue;
        };
        let (Some(seq), Some(prev)) = (seq_of(line), value.get("prev").and_then(Value::as_str))
        else {
            report.problems.push(problem(
                line.number,
                None,
                "a record without `seq` and `prev`: it was altered".into(),
            ));
            *expected = None;
            continue;
        };
        report.records += 1;
        let kind = value.get("kind").and_then(Value::as_str);
        match expected.as_ref() {
            None if report.records == 1 => {
                if seq == 0 && prev != GENESIS {
                    report.problems.push(problem(
                        line.number,
                        Some(seq),
                        "the first record does not start the chain".into(),
                    ));
                } else if seq > 0 {
                    report
                        .notices
                        .push(format!("the trail checked starts at record {seq}"));
                }
            }
            None => {}
            Some((want, _)) if seq > *want => {
                // Deleted, or moved further down this file.
                let moved = lines.iter().skip(i + 1).any(|l| seq_of(l) == Some(*want));
                report.problems.push(problem(
                    line.number,
                    Some(*want),
                    if moved {
                        format!("out of order: record {seq} stands where record {want} belongs")
                    } else {
                        format!("missing: the record after {} is {seq}", want - 1)
                    },
                ));
            }
            Some((want, _)) if seq < *want => {
                report.problems.push(problem(
                    line.number,
                    Some(seq),
                    format!("out of order or repeated: found after record {}", want - 1),
                ));
                // Out of the chain's way: the records after it are checked against the one
                // before it.
                continue;
            }
            Some((_, want_prev)) if prev != want_prev => {
                let altered = seq.saturating_sub(1);
                report.problems.push(problem(
                    line.number.saturating_sub(1).max(1),
                    Some(altered),
                    format!(
                        "altered: record {seq} carries a hash that record {altered} no longer has"
                    ),
                ));
            }
            Some(_) => {}
        }
        if i == 0 && kind == Some("open") && !previous_closed {
            report.notices.push(format!(
                "{}: Tollgate started again at record {seq} after the file before ended without closing (a crash or a kill)",
                path.display()
            ));
        }
        if kind == Some("checkpoint") {
            report.checkpoints += 1;
            let signed = value.get("sig").and_then(Value::as_str).is_some_and(|sig| {
                value.get("kid").and_then(Value::as_str) == Some(verifier.kid().as_str())
                    && verifier.verify(&checkpoint_message(seq, prev), sig)
            });
            if !signed {
                report.problems.push(problem(
                    line.number,
                    Some(seq),
                    "the checkpoint's signature does not verify with this key: the chain before it was rewritten, or another key signed it".into(),
                ));
            }
            closed = value.get("closing").and_then(Value::as_bool) == Some(true);
        }
        report.last = Some(seq);
        *expected = Some((seq + 1, line_hash(line.bytes)));
    }
    if !tail.is_empty() {
        let record = expected.as_ref().map(|(n, _)| *n);
        report.problems.push(problem(
            lines.len() + 1,
            record,
            "truncated: the file ends in the middle of a record".into(),
        ));
        closed = false;
    }
    closed
}
