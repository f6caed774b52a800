//! The trail as written and as checked: a clean trail verifies; an edited, deleted, reordered
//! or cut record is found at its record number; a rewritten chain fails its checkpoint; a
//! restart after a crash continues the chain; rotation keeps it; a trail that cannot be
//! written refuses what is appended.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tollgate_audit::{
    Audit, CheckpointSigner, CheckpointVerifier, Definition, Durability, LAZY_SYNC, Report,
    Settings, line_hash, verify_files,
};

/// A keyed hash standing in for Tollgate's signature in these tests (the proxy uses its
/// Ed25519 key): only the holder of `key` can make it.
struct TestKey(&'static str);

impl TestKey {
    fn mac(&self, message: &[u8]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.0.as_bytes());
        hasher.update(message);
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl CheckpointSigner for TestKey {
    fn kid(&self) -> String {
        "test".into()
    }
    fn sign(&self, message: &[u8]) -> String {
        self.mac(message)
    }
}

impl CheckpointVerifier for TestKey {
    fn kid(&self) -> String {
        "test".into()
    }
    fn verify(&self, message: &[u8], signature: &str) -> bool {
        self.mac(message) == signature
    }
}

fn record(n: u64) -> Map<String, Value> {
    json!({"kind": "decision", "tool": "add", "n": n})
        .as_object()
        .cloned()
        .unwrap()
}

fn settings(dir: &std::path::Path) -> Settings {
    Settings {
        checkpoint_every: 4,
        ..Settings::new(dir.to_owned())
    }
}

/// A closed trail of `n` records in a fresh folder.
async fn trail(n: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = Audit::open(settings(&dir), Arc::new(TestKey("k"))).unwrap();
    for i in 0..n {
        audit.append(record(i)).durable().await.unwrap();
    }
    audit.close();
    (tmp, dir)
}

fn check(dir: &PathBuf) -> Report {
    verify_files(std::slice::from_ref(dir), &TestKey("k"), false).unwrap()
}

/// The one trail file in `dir` (beside it are only the lanes' lock files).
fn only_file(dir: &PathBuf) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

fn lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The line holding record `seq`.
fn index_of(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| serde_json::from_str::<Value>(l).unwrap()["seq"] == seq)
        .unwrap()
}

fn write_lines(path: &PathBuf, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn a_clean_trail_verifies_with_its_checkpoints() {
    let (_tmp, dir) = trail(10).await;
    let report = check(&dir);
    assert!(report.ok(), "{:?}", report.problems);
    // The opening record, ten, a checkpoint after every four, and the closing one.
    assert_eq!(report.records, 1 + 10 + 2 + 1);
    assert_eq!(report.checkpoints, 3);
    let lines = lines(&only_file(&dir));
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        (first["seq"].clone(), first["prev"].clone()),
        (json!(0), json!("genesis"))
    );
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["prev"], line_hash(lines[0].as_bytes()));
    // Another key does not vouch for it.
    let forged = verify_files(&[dir], &TestKey("other"), false).unwrap();
    assert_eq!(forged.problems.len(), 3, "{:?}", forged.problems);
}

#[tokio::test]
async fn an_edited_record_is_found_at_its_number() {
    let (_tmp, dir) = trail(10).await;
    let file = only_file(&dir);
    let mut all = lines(&file);
    let at = index_of(&all, 7);
    let edited = all[at].replace(r#""tool":"add""#, r#""tool":"transfer""#);
    assert_ne!(edited, all[at]);
    all[at] = edited;
    write_lines(&file, &all);
    let report = check(&dir);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].record, Some(7));
    assert!(report.problems[0].what.contains("altered"));
}

#[tokio::test]
async fn a_deleted_record_is_found_at_its_number() {
    let (_tmp, dir) = trail(10).await;
    let file = only_file(&dir);
    let mut all = lines(&file);
    all.remove(index_of(&all, 5));
    write_lines(&file, &all);
    let report = check(&dir);
    assert_eq!(report.problems[0].record, Some(5), "{:?}", report.problems);
    assert!(report.problems[0].what.contains("missing"));
}

#[tokio::test]
async fn reordered_records_are_found_at_their_numbers() {
    let (_tmp, dir) = trail(10).await;
    let file = only_file(&dir);
    let mut all = lines(&file);
    let at = index_of(&all, 5);
    all.swap(at, at + 1);
    write_lines(&file, &all);
    let report = check(&dir);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.record == Some(5) && p.what.contains("out of order")),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn a_cut_tail_is_found_whether_mid_record_or_whole_records() {
    let (_tmp, dir) = trail(10).await;
    let file = only_file(&dir);
    let bytes = std::fs::read(&file).unwrap();
    // Mid-record.
    std::fs::write(&file, &bytes[..bytes.len() - 20]).unwrap();
    let report = check(&dir);
    let last = report
        .problems
        .iter()
        .find(|p| p.what.contains("truncated"));
    assert!(last.is_some(), "{:?}", report.problems);
    assert_eq!(last.unwrap().record, Some(report.last.unwrap() + 1));
    // Whole records, closing checkpoint included.
    let mut all = lines(&file);
    all.truncate(all.len() - 3);
    write_lines(&file, &all);
    let report = check(&dir);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0]
            .what
            .contains("without a closing checkpoint")
    );
    assert_eq!(report.problems[0].record, report.last);
    // A file still being written may end so.
    assert!(verify_files(&[dir], &TestKey("k"), true).unwrap().ok());
}

#[tokio::test]
async fn a_rewritten_chain_fails_its_checkpoints() {
    let (_tmp, dir) = trail(10).await;
    let file = only_file(&dir);
    let mut all = lines(&file);
    // Edit record 2 and recompute every link after it, as someone without the key would.
    let at = index_of(&all, 2);
    let edited = all[at].replace(r#""tool":"add""#, r#""tool":"transfer""#);
    assert_ne!(edited, all[at]);
    all[at] = edited;
    for i in at + 1..all.len() {
        let mut value: Value = serde_json::from_str(&all[i]).unwrap();
        value["prev"] = json!(line_hash(all[i - 1].as_bytes()));
        all[i] = serde_json::to_string(&value).unwrap();
    }
    write_lines(&file, &all);
    let report = check(&dir);
    assert!(!report.ok());
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.what.contains("signature does not verify")),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn a_restart_after_a_crash_continues_the_chain_and_says_so() {
    let (_tmp, dir) = trail(3).await;
    // As if killed: the closing checkpoint never made it.
    let file = only_file(&dir);
    let mut all = lines(&file);
    all.pop();
    write_lines(&file, &all);
    let audit = Audit::open(settings(&dir), Arc::new(TestKey("k"))).unwrap();
    let seq = audit.append(record(99)).durable().await.unwrap().unwrap();
    audit.close();
    let report = check(&dir);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.files, 2);
    assert!(
        report.notices.iter().any(|n| n.contains("started again")),
        "{:?}",
        report.notices
    );
    assert_eq!(report.last, Some(seq + 1), "the closing checkpoint follows");
    // Cutting the old file now breaks the link the new one carries.
    let mut cut = lines(&file);
    cut.pop();
    write_lines(&file, &cut);
    let report = check(&dir);
    assert!(!report.ok());
}

#[tokio::test]
async fn a_file_has_room_ahead_while_open_and_none_once_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = Audit::open(settings(&dir), Arc::new(TestKey("k"))).unwrap();
    for i in 0..5 {
        audit.append(record(i)).durable().await.unwrap();
    }
    let file = only_file(&dir);
    let open = std::fs::read(&file).unwrap();
    let records = tollgate_audit::records_of(&open).len();
    // Its length is set ahead, so that a sync need not write a new size each time.
    assert!(open.len() > records + 1_000_000, "{} bytes", open.len());
    assert!(open.get(records..).unwrap().iter().all(|b| *b == 0));
    // As it is after a crash: the room stays. It verifies as an open trail, and a Tollgate
    // started again continues the chain from its last record.
    let report = verify_files(std::slice::from_ref(&dir), &TestKey("k"), true).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(
        report.records,
        5 + 1 + 1,
        "opening, five, a checkpoint after four"
    );
    let crashed = std::fs::read(&file).unwrap();
    // The folder as a killed process leaves it (its writer stops here, holding its lane; a
    // dead process's lock is released by the OS): the files as they are, in a folder of their
    // own.
    std::mem::forget(audit);
    let dir = tmp.path().join("after-crash");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join(file.file_name().unwrap());
    std::fs::write(&file, &crashed).unwrap();
    let again = Audit::open(settings(&dir), Arc::new(TestKey("k"))).unwrap();
    again.append(record(99)).durable().await.unwrap();
    again.close();
    let report = check(&dir);
    assert!(report.ok(), "{:?}", report.problems);
    assert!(
        report.notices.iter().any(|n| n.contains("started again")),
        "{:?}",
        report.notices
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        crashed,
        "the old file is left as it was"
    );
    // The new file, closed, ends with its last record.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let closed = std::fs::read(files.last().unwrap()).unwrap();
    assert_eq!(closed.last(), Some(&b'\n'));
    assert_eq!(tollgate_audit::records_of(&closed).len(), closed.len());
}

#[tokio::test]
async fn rotation_keeps_one_chain_across_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = Audit::open(
        Settings {
            rotate_bytes: 600,
            ..settings(&dir)
        },
        Arc::new(TestKey("k")),
    )
    .unwrap();
    for i in 0..40 {
        audit.append(record(i)).durable().await.unwrap();
    }
    audit.close();
    let report = check(&dir);
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report.files > 3, "{}", report.files);
    // A file taken out of the middle shows.
    let middle = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .nth(1)
        .unwrap();
    std::fs::remove_file(middle).unwrap();
    assert!(!check(&dir).ok());
}

#[tokio::test]
async fn a_definition_is_written_once_per_file_before_what_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = Audit::open(
        Settings {
            rotate_bytes: 600,
            ..settings(&dir)
        },
        Arc::new(TestKey("k")),
    )
    .unwrap();
    let definition: Definition = Arc::new((
        "tool:add".to_owned(),
        json!({"kind": "tool", "key": "tool:add"})
            .as_object()
            .cloned()
            .unwrap(),
    ));
    for i in 0..40 {
        audit
            .append_after(vec![definition.clone()], record(i))
            .durable()
            .await
            .unwrap();
    }
    audit.close();
    assert!(check(&dir).ok());
    let files: std::collections::BTreeSet<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() > 3, "{files:?}");
    for file in &files {
        let kinds: Vec<String> = lines(file)
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let tools = kinds.iter().filter(|k| *k == "tool").count();
        let first_decision = kinds.iter().position(|k| k == "decision");
        match first_decision {
            // Each file can be read alone: the definition comes before the first record that
            // names it, and only once.
            Some(first) => {
                assert_eq!(tools, 1, "{file:?}: {kinds:?}");
                assert!(kinds[..first].contains(&"tool".to_owned()), "{kinds:?}");
            }
            None => assert_eq!(tools, 0, "{file:?}: {kinds:?}"),
        }
    }
}

#[tokio::test]
async fn records_queued_together_keep_their_own_bytes_and_definitions_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = Audit::open(
        Settings {
            checkpoint_every: 1_000,
            durability: Durability::Within(Duration::from_millis(200)),
            ..Settings::new(dir.clone())
        },
        Arc::new(TestKey("k")),
    )
    .unwrap();
    let tool = |name: &str| -> Definition {
        Arc::new((
            format!("tool:{name}"),
            json!({"kind": "tool", "key": format!("tool:{name}")})
                .as_object()
                .cloned()
                .unwrap(),
        ))
    };
    let (add, sub) = (tool("add"), tool("sub"));
    // One buffer reused for every line, as callers do: the trail keeps its own copy.
    let mut bytes = Vec::new();
    for n in 0..600u64 {
        bytes.clear();
        let named = if n % 3 == 0 { &sub } else { &add };
        let key = if n % 3 == 0 { "tool:sub" } else { "tool:add" };
        serde_json::to_writer(
            &mut bytes,
            &json!({"kind": "decision", "n": n, "tool": key, "pad": "x".repeat((n % 7) as usize)}),
        )
        .unwrap();
        match n % 4 {
            0 => drop(audit.append_line_after([named.clone()], &bytes)),
            1 => audit.note_line(&bytes),
            2 => drop(
                audit.append_after(
                    [named.clone()],
                    json!({"kind": "decision", "n": n, "tool": key})
                        .as_object()
                        .cloned()
                        .unwrap(),
                ),
            ),
            _ => drop(audit.append_line_after(None, &bytes)),
        }
    }
    audit.close();
    assert!(check(&dir).ok(), "{:?}", check(&dir).problems);
    let records: Vec<Value> = lines(&only_file(&dir))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decisions: Vec<&Value> = records.iter().filter(|r| r["kind"] == "decision").collect();
    let ns: Vec<u64> = decisions.iter().map(|r| r["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..600).collect::<Vec<_>>());
    for r in &decisions {
        let n = r["n"].as_u64().unwrap();
        if n % 4 != 2 {
            assert_eq!(r["pad"], "x".repeat((n % 7) as usize), "{r}");
        }
    }
    // Each definition once, before the first record that names it.
    let position = |pred: &dyn Fn(&Value) -> bool| records.iter().position(pred).unwrap();
    for key in ["tool:add", "tool:sub"] {
        let defined: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r["kind"] == "tool" && r["key"] == key)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(defined.len(), 1, "{key}");
        let first_use = position(&|r: &Value| {
            r["kind"] == "decision"
                && r["tool"] == key
                && [0, 2].contains(&(r["n"].as_u64().unwrap() % 4))
        });
        assert!(defined[0] < first_use, "{key}");
    }
}

#[tokio::test]
async fn records_serialized_by_the_caller_are_chained_like_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = Audit::open(settings(&dir), Arc::new(TestKey("k"))).unwrap();
    audit.append(record(0)).durable().await.unwrap();
    let seq = audit
        .append_line_after(None, br#"{"kind":"decision","n":1}"#)
        .durable()
        .await
        .unwrap();
    audit
        .append_line_after(None, b"{}")
        .durable()
        .await
        .unwrap();
    // Not one object on one line: recorded as such, never spliced into the chain.
    audit
        .append_line_after(None, b"{\"a\":1}\n{\"b\":2}")
        .durable()
        .await
        .unwrap();
    audit.close();
    assert!(check(&dir).ok(), "{:?}", check(&dir).problems);
    let records: Vec<Value> = lines(&only_file(&dir))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |n: u64| records.iter().find(|r| r["seq"] == n).unwrap().clone();
    let one = at(seq.unwrap());
    assert_eq!(
        (one["kind"].clone(), one["n"].clone()),
        (json!("decision"), json!(1))
    );
    assert!(one["time"].as_u64().is_some() && one["prev"].as_str().is_some());
    assert!(at(seq.unwrap() + 1)["prev"].as_str().is_some());
    assert_eq!(at(seq.unwrap() + 2)["kind"], "unwritable");
}

/// The lines of `dir`'s only file that carry an `n`, in order.
fn numbers(dir: &PathBuf) -> Vec<u64> {
    let file = std::fs::read(only_file(dir)).unwrap();
    std::str::from_utf8(tollgate_audit::records_of(&file))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["n"].as_u64())
        .collect()
}

/// A trail in `dir` at `durability`.
fn open_at(dir: &std::path::Path, durability: Durability) -> Audit {
    Audit::open(
        Settings {
            durability,
            ..settings(dir)
        },
        Arc::new(TestKey("k")),
    )
    .unwrap()
}

fn syncs(audit: &Audit) -> u64 {
    audit
        .stats()
        .syncs
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn by_default_a_record_is_in_the_file_when_acknowledged_and_synced_by_group_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    assert_eq!(
        Settings::new(dir.clone()).durability,
        Durability::Within(Duration::from_millis(20)),
        "the default: written first, synced within 20 ms"
    );
    let audit = Arc::new(
        Audit::open(
            Settings {
                durability: Durability::Within(Duration::from_millis(50)),
                ..settings(&dir)
            },
            Arc::new(TestKey("k")),
        )
        .unwrap(),
    );
    // Let the opening line's own sync pass.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..20 {
        let seq = audit.append(record(i)).durable().await.unwrap();
        assert!(seq.is_some(), "acknowledged once written, with its number");
        // Already in the file (handed to the OS): it survives the process being killed.
        assert_eq!(numbers(&dir).last(), Some(&i), "record {i} not written yet");
    }
    // Not one sync each: records written one after the other share the syncs their bound
    // allows in the time they took (one per 7/8 of the bound at most).
    let before = syncs(&audit);
    let started = std::time::Instant::now();
    for i in 20..200 {
        assert!(audit.append(record(i)).durable().await.unwrap().is_some());
    }
    let during = syncs(&audit) - before;
    let allowed = started.elapsed().as_millis() / 43 + 1;
    assert!(
        u128::from(during) <= allowed,
        "{during} syncs for 180 records in {:?}",
        started.elapsed()
    );
    // Synced within the bound, without anyone waiting for it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(syncs(&audit) > before, "never synced");
    // A caller the writer is not busy for writes its record itself: settled when appended.
    let tickets: Vec<_> = (200..400).map(|i| audit.append(record(i))).collect();
    for ticket in tickets {
        assert!(ticket.is_settled(), "written by its caller");
        assert!(ticket.durable().await.unwrap().is_some());
    }
    assert_eq!(
        numbers(&dir),
        (0..400).collect::<Vec<_>>(),
        "all of them, in order"
    );
    audit.close();
    assert!(check(&dir).ok());
}

#[tokio::test]
async fn a_synced_record_is_synced_before_it_is_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = open_at(&dir, Durability::Synced);
    for i in 0..20 {
        let before = syncs(&audit);
        audit.append(record(i)).durable().await.unwrap();
        assert!(syncs(&audit) > before, "record {i} acknowledged unsynced");
    }
    audit.close();
    assert!(check(&dir).ok());
}

#[tokio::test]
async fn a_written_record_is_synced_within_its_bound_counted_from_when_it_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let bound = Duration::from_millis(500);
    let audit = open_at(&dir, Durability::Within(bound));
    // The file's opening line is synced by its own bound first.
    let opened = std::time::Instant::now();
    while syncs(&audit) == 0 {
        assert!(
            opened.elapsed() < bound * 10,
            "the opening line is never synced"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = syncs(&audit);
    let queued = std::time::Instant::now();
    assert!(audit.append(record(1)).durable().await.unwrap().is_some());
    assert_eq!(numbers(&dir), [1], "written when acknowledged");
    assert_eq!(syncs(&audit), before, "but not synced yet");
    // Synced before its bound runs out, with nobody waiting on it.
    while syncs(&audit) == before {
        assert!(queued.elapsed() < bound * 10, "never synced");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let synced_after = queued.elapsed();
    assert!(
        synced_after < bound,
        "synced {synced_after:?} after it was written, past its bound of {bound:?}"
    );
    assert_eq!(syncs(&audit), before + 1, "one sync for it");
    // An outcome (nobody waits on it) is gathered a while (here 10 ms) before it is written.
    audit.note(serde_json::Map::from_iter([(
        "n".to_owned(),
        Value::from(2),
    )]));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(numbers(&dir), [1], "gathered, not written at once");
    let noted = std::time::Instant::now();
    while numbers(&dir).len() < 2 {
        assert!(noted.elapsed() < bound * 10, "never written");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    audit.close();
    assert!(check(&dir).ok());
}

#[tokio::test]
async fn an_outcome_rides_on_the_next_sync_or_is_synced_within_the_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = open_at(&dir, Durability::Synced);
    let syncs = || {
        audit
            .stats()
            .syncs
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    audit.append(record(0)).durable().await.unwrap();
    // An outcome (nobody waits on it), then the next decision: the decision's sync covers both,
    // so a call does not wait for the sync of the outcome before it. Were outcomes synced on
    // their own, these rounds would take twice as many syncs.
    let before = syncs();
    for i in 0..50 {
        audit.note(record(1000 + i));
        // Time for the writer to take the outcome on its own, as it does between calls.
        tokio::time::sleep(Duration::from_millis(2)).await;
        audit.append(record(i + 1)).durable().await.unwrap();
    }
    let added = syncs() - before;
    assert!(
        (50..=60).contains(&added),
        "{added} syncs for 50 decisions and 50 outcomes"
    );
    // An outcome alone is synced within the bound, with nobody waiting for it.
    let before = syncs();
    audit.note(record(9999));
    tokio::time::sleep(LAZY_SYNC * 10).await;
    assert_eq!(syncs(), before + 1, "one sync, by the bound");
    let file = std::fs::read_to_string(only_file(&dir)).unwrap();
    assert!(file.lines().any(|l| l.contains("\"n\":9999")));
    audit.close();
    assert!(check(&dir).ok());
}

#[tokio::test]
async fn a_trail_that_cannot_be_written_refuses_what_is_appended() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = Audit::open(
        Settings {
            rotate_bytes: 300,
            ..settings(&dir)
        },
        Arc::new(TestKey("k")),
    )
    .unwrap();
    audit.append(record(0)).durable().await.unwrap();
    // The folder disappears: the next file cannot be made.
    std::fs::remove_dir_all(&dir).unwrap();
    let mut refused = None;
    for i in 1..20 {
        if let Err(e) = audit.append(record(i)).durable().await {
            refused = Some(e);
            break;
        }
    }
    let error = refused.expect("a write fails once the folder is gone");
    assert!(error.to_string().contains("cannot be written"), "{error}");
    assert!(audit.failure().is_some());
    assert!(
        audit.append(record(99)).durable().await.is_err(),
        "and stays failed"
    );
}

#[tokio::test]
async fn writers_on_one_folder_at_once_each_keep_a_chain_and_a_restart_continues_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let first = Audit::open(settings(&dir), Arc::new(TestKey("k"))).unwrap();
    let second = Audit::open(settings(&dir), Arc::new(TestKey("k"))).unwrap();
    for i in 0..10 {
        first.append(record(i)).durable().await.unwrap();
        second.append(record(100 + i)).durable().await.unwrap();
    }
    let names = |dir: &PathBuf| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".jsonl"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&dir),
        [
            "audit-0000000000000000.jsonl",
            "audit-lane1-0000000000000000.jsonl"
        ]
    );
    // The first process ends; one started now takes its lane and continues that chain.
    first.close();
    let third = Audit::open(settings(&dir), Arc::new(TestKey("k"))).unwrap();
    third.append(record(200)).durable().await.unwrap();
    third.close();
    second.close();
    let report = check(&dir);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.chains, 2);
    assert_eq!(report.files, 3, "{:?}", names(&dir));
    assert!(
        names(&dir)
            .iter()
            .any(|n| n.starts_with("audit-00") && n != "audit-0000000000000000.jsonl"),
        "the restart continued lane 0: {:?}",
        names(&dir)
    );
}

#[tokio::test]
async fn a_written_record_is_written_by_its_caller_behind_what_was_queued_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = open_at(&dir, Durability::Within(Duration::from_millis(500)));
    // Let the opening line's own sync pass, so that none is due.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let batches = audit.stats().batch.snapshot().count;
    // An outcome waits in the queue (gathered), then a decision comes.
    audit.note(serde_json::Map::from_iter([(
        "n".to_owned(),
        Value::from(1),
    )]));
    let ticket = audit.append(record(2));
    assert!(
        ticket.is_settled(),
        "written on the caller's thread: nothing left to wait for"
    );
    assert_eq!(numbers(&dir), [1, 2], "the queued outcome first, in order");
    assert_eq!(ticket.durable().await.unwrap(), Some(2), "its own number");
    assert_eq!(
        audit.stats().batch.snapshot().count,
        batches + 1,
        "one batch, written by the caller"
    );
    audit.close();
    assert!(check(&dir).ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_writing_at_once_and_the_writer_keep_one_intact_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let audit = Arc::new(open_at(&dir, Durability::Within(Duration::from_millis(5))));
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let audit = audit.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    let n = t * 1000 + i;
                    if i % 3 == 0 {
                        // Outcomes go through the queue, to the writer thread.
                        audit.note(serde_json::Map::from_iter([(
                            "n".to_owned(),
                            Value::from(n),
                        )]));
                    } else {
                        assert!(audit.append(record(n)).durable().await.unwrap().is_some());
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    audit.close();
    let report = check(&dir);
    assert!(report.ok(), "{:?}", report.problems);
    let mut written: Vec<u64> = numbers(&dir);
    let in_file = written.len();
    written.sort_unstable();
    written.dedup();
    assert_eq!(written.len(), in_file, "no record twice");
    assert_eq!(in_file, 1600, "every record, outcomes included");
    // Each caller's records in its own order.
    for t in 0..8u64 {
        let own: Vec<u64> = numbers(&dir)
            .into_iter()
            .filter(|n| n / 1000 == t)
            .collect();
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "caller {t} out of order"
        );
    }
}
