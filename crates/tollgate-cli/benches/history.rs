//! What a session's history costs a decision: `PolicyGuard::before_call` (the whole guard
//! path: the grant from its cache, the revocation list's freshness, the history, the pack)
//! for a session that made 1,000 calls and picked up a taint, against new sessions with fewer
//! than 50 calls behind them, interleaved in rounds so the machine's drift hits both alike. Then the guard's own memory
//! per idle session.
//!
//!     cargo bench -p tollgate-cli --bench history

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::{sync::Arc, time::Instant};

use rmcp::model::RequestMetaObject;
use serde_json::json;
use tollgate_guard::guard::PolicyGuard;
use tollgate_proxy::intercept::{Interceptor, Verdict};

const ROUNDS: usize = 1_000;
const PER_ROUND: usize = 50;

fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

fn main() {
    // The guard answers through futures (its store may be remote); this one answers at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A pack whose policies read the session's statistics and taints (the default pack's
    // rules, with a rate limit no benchmark reaches), and a catalog entry that makes the
    // benchmarked read taint the session.
    let pack = dir.path().join("pack");
    common::history_pack(
        &pack,
        r#"@id("denials") forbid (principal, action, resource) when { context.stats.denials >= 50 };"#,
    );
    // The trail's cost is measured on its own (benches/audit.rs): here, the decision alone.
    let config = common::fs_config(
        &pack,
        &state,
        "enabled = false",
        "taints = [\"untrusted_content\"]",
    );
    let caller = common::reader(&state, "path:/srv/app/**");
    let guard = Arc::new(PolicyGuard::new(&config).unwrap());
    let facts = common::read_text_file();
    let arguments = json!({"path": "docs/README.md", "head": 20})
        .as_object()
        .cloned()
        .unwrap();
    let meta = RequestMetaObject::new();
    let call =
        |session: u64| common::read_call(session, session, &arguments, &meta, &caller, &facts);
    let decide = |session: u64| {
        let started = Instant::now();
        let verdict = runtime.block_on(guard.before_call(&call(session)));
        let elapsed = started.elapsed().as_secs_f64() * 1e6;
        assert!(matches!(verdict, Verdict::Forward), "{verdict:?}");
        elapsed
    };
    // The long session: 1,000 calls before any is measured.
    const LONG: u64 = 1;
    for _ in 0..1_000 {
        decide(LONG);
    }
    let mut fresh_session = 1_000_000u64;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            with.push(decide(LONG));
        }
        // A new session, its first call (which builds what is cached per caller) unmeasured:
        // what is measured is a session with fewer than 50 calls behind it.
        fresh_session += 1;
        decide(fresh_session);
        for _ in 0..PER_ROUND {
            without.push(decide(fresh_session));
        }
        guard.session_ended(fresh_session);
    }
    let (with50, with99) = percentiles(with);
    let (without50, without99) = percentiles(without);
    println!("decision through the guard, {ROUNDS} interleaved rounds of {PER_ROUND}:");
    println!("  under 50 calls behind it:     p50 {without50:>6.1} µs  p99 {without99:>6.1} µs");
    println!(
        "  after 1,000 calls and a taint: p50 {with50:>6.1} µs  p99 {with99:>6.1} µs  ({:.2}× p50)",
        with50 / without50
    );

    // Memory: the guard's state for 10,000 idle sessions of 100 calls each.
    let before = rss_kib();
    for session in 10_000_000..10_010_000u64 {
        for _ in 0..100 {
            runtime.block_on(guard.before_call(&call(session)));
        }
    }
    let after = rss_kib();
    println!(
        "guard state per idle session (10,000 sessions of 100 calls): {:.2} KiB (RSS {} → {} KiB)",
        (after - before) as f64 / 10_000.0,
        before,
        after
    );
}

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
