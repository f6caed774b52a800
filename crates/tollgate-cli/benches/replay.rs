//! Replay against the engine: a trail of 20,000 decisions written by the guard itself (the
//! default-shaped rules, reads inside and outside the grant), then, interleaved in rounds,
//! (a) the engine deciding the same calls from inputs already in memory, and (b) `policy
//! replay`'s whole path: reading each line, rebuilding the call and deciding it again. The
//! ratio of their rates is what parsing the trail costs.
//!
//!     cargo bench -p tollgate-cli --bench replay
//!
//! With `TOLLGATE_BENCH_PROFILE=1` it runs replays alone after writing the trail, for a
//! profiler.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::{sync::Arc, time::Instant};

use rmcp::model::RequestMetaObject;
use serde_json::{Map, Value, json};
use tollgate_guard::guard::PolicyGuard;
use tollgate_policy::{
    Pack,
    recorded::{DecisionRecord, Definitions, Replay},
};
use tollgate_proxy::intercept::Interceptor;

const DECISIONS: u64 = 20_000;
const ROUNDS: usize = 5;

fn main() {
    // The guard answers through futures (its store may be remote); this one answers at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let pack_dir = dir.path().join("pack");
    common::history_pack(
        &pack_dir,
        r#"@id("long-reads") forbid (principal, action, resource) when { context.args has head && context.args.head > 900 };"#,
    );
    let config = common::fs_config(&pack_dir, &state, "sync_within_ms = 50", "");
    let caller = common::reader(&state, "path:/srv/app/docs/**");
    let guard = Arc::new(PolicyGuard::new(&config).unwrap());
    let facts = common::read_text_file();
    let meta = RequestMetaObject::new();
    for n in 0..DECISIONS {
        // Mostly reads inside the grant; every seventh outside it.
        let folder = if n % 7 == 0 { "etc" } else { "docs" };
        let arguments = json!({"path": format!("{folder}/file-{n}.md"), "head": n % 1000})
            .as_object()
            .cloned()
            .unwrap();
        runtime.block_on(guard.before_call(&common::read_call(
            n % 16,
            n,
            &arguments,
            &meta,
            &caller,
            &facts,
        )));
    }
    guard.shutdown();
    let mut trail = String::new();
    for file in tollgate_audit::trail_paths(&[state.join("audit")]).unwrap() {
        trail.push_str(&std::fs::read_to_string(file).unwrap());
    }
    let lines: Vec<&str> = trail.lines().collect();
    println!(
        "trail: {} lines, {:.1} MiB",
        lines.len(),
        trail.len() as f64 / (1 << 20) as f64
    );

    // The candidate: the same rules with the long-read bound lowered, so that some calls flip.
    std::fs::write(
        pack_dir.join("rules.cedar"),
        std::fs::read_to_string(pack_dir.join("rules.cedar"))
            .unwrap()
            .replace("> 900", "> 500"),
    )
    .unwrap();
    let source = tollgate_guard::pack_files::with_tools(
        tollgate_guard::pack_files::read_pack(&pack_dir).unwrap(),
        &config.policy.tools,
    );
    let pack = Pack::compile(&source).unwrap();

    // The engine's raw rate: the same calls, already built.
    let mut known = Definitions::default();
    let mut records: Vec<DecisionRecord> = Vec::new();
    for line in &lines {
        let record: Map<String, Value> = serde_json::from_str(line).unwrap();
        let kind = record["kind"].as_str().unwrap().to_owned();
        if !known.learn(&kind, &record).unwrap() && kind == "decision" {
            records.push(serde_json::from_str(line).unwrap());
        }
    }
    let recalled: Vec<_> = records
        .into_iter()
        .map(|r| known.recall(r).unwrap())
        .collect();
    assert_eq!(recalled.len() as u64, DECISIONS);

    if std::env::var_os("TOLLGATE_BENCH_PROFILE").is_some() {
        for _ in 0..10 {
            let mut replay = Replay::new(&pack);
            for line in &lines {
                replay.line(line);
            }
            std::hint::black_box(replay.finish());
        }
        return;
    }
    let (mut raw, mut replayed) = (Vec::new(), Vec::new());
    let mut changed = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut denied = 0u64;
        for r in &recalled {
            if !pack.decide(&r.call()).is_allow() {
                denied += 1;
            }
        }
        raw.push(DECISIONS as f64 / started.elapsed().as_secs_f64());
        std::hint::black_box(denied);

        let started = Instant::now();
        let mut replay = Replay::new(&pack);
        for line in &lines {
            replay.line(line);
        }
        let summary = replay.finish();
        replayed.push(DECISIONS as f64 / started.elapsed().as_secs_f64());
        assert_eq!(summary.replayed, DECISIONS);
        changed = summary.changed;
    }
    // What reading the lines alone costs, of the replay's time.
    let started = Instant::now();
    for line in &lines {
        std::hint::black_box(serde_json::from_str::<DecisionRecord>(line).is_ok());
    }
    let parse = started.elapsed().as_secs_f64() * 1e6 / lines.len() as f64;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios: Vec<f64> = replayed.iter().zip(&raw).map(|(r, e)| r / e).collect();
    let (raw, replayed, ratio) = (median(raw), median(replayed), median(ratios));
    println!(
        "{ROUNDS} interleaved rounds of {DECISIONS} decisions ({changed} flip under the candidate):"
    );
    println!("  engine, inputs in memory:          {raw:>9.0} decisions/s");
    println!(
        "  replay, from the trail's lines:    {replayed:>9.0} decisions/s  ({ratio:.2}× the engine)"
    );
    println!(
        "  of a replayed decision's {:.1} µs, reading its line takes {parse:.1} µs",
        1e6 / replayed
    );
}
