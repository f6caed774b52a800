//! The audit trail's cost on the guarded path, without transport: `PolicyGuard::before_call`
//! (decide, record), waiting until the record is as durable as configured, and
//! `after_call` (the outcome), in process, for a guard without a trail, with one synced per
//! call, and with one at the default durability (written first, synced within 20 ms), in
//! interleaved rounds.
//!
//!     cargo bench -p tollgate-cli --bench audit
//!
//! Reported per call: wall time (p50, p99), and CPU time of the whole process (every thread,
//! the trail's writer included), read from the kernel's per-thread accounting. With
//! `TOLLGATE_BENCH_PROFILE=1` it runs the default trail alone, for a profiler.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rmcp::model::RequestMetaObject;
use serde_json::{Map, Value, json};
use tollgate_guard::guard::PolicyGuard;
use tollgate_proxy::intercept::{Interceptor, Outcome, Verdict};
use tollgate_testkit::cpu_ns;

const CALLS_PER_ROUND: u64 = 4_000;
const ROUNDS: usize = 5;

struct Setup {
    label: &'static str,
    guard: Arc<PolicyGuard>,
    caller: tollgate_proxy::Caller,
    _dir: tempfile::TempDir,
    latencies: Vec<Duration>,
    cpu: Duration,
    calls: u64,
}

fn setup(label: &'static str, audit: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let pack = dir.path().join("pack");
    common::history_pack(&pack, "");
    let config = common::fs_config(&pack, &state, audit, "");
    let caller = common::reader(&state, "path:/srv/app/docs/**");
    Setup {
        label,
        guard: Arc::new(PolicyGuard::new(&config).unwrap()),
        caller,
        _dir: dir,
        latencies: Vec::new(),
        cpu: Duration::ZERO,
        calls: 0,
    }
}

async fn round(s: &mut Setup, facts: &tollgate_policy::ToolFacts, first: u64) {
    let meta = RequestMetaObject::new();
    let arguments: Vec<Map<String, Value>> = (first..first + CALLS_PER_ROUND)
        .map(|n| {
            json!({"path": format!("docs/file-{n}.md"), "head": n % 1000})
                .as_object()
                .cloned()
                .unwrap()
        })
        .collect();
    let cpu = cpu_ns("self");
    for (n, arguments) in (first..).zip(&arguments) {
        let call = common::read_call(n % 16, n, arguments, &meta, &s.caller, facts);
        let started = Instant::now();
        match s.guard.before_call(&call).await {
            Verdict::Forward | Verdict::ForwardWith(_) => {}
            Verdict::ForwardAfter(pending) => {
                pending.0.await.unwrap();
            }
            other => panic!("{other:?}"),
        }
        s.guard
            .after_call(&call, &Outcome::Completed { is_error: false });
        s.latencies.push(started.elapsed());
    }
    s.cpu += Duration::from_nanos(cpu_ns("self").saturating_sub(cpu));
    s.calls += CALLS_PER_ROUND;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let facts = common::read_text_file();
    // `TOLLGATE_BENCH_PROFILE=1`: the default trail alone, for a profiler.
    let profile = std::env::var_os("TOLLGATE_BENCH_PROFILE").is_some();
    let mut setups = if profile {
        vec![setup("written (default)", "")]
    } else {
        vec![
            setup("no trail", "enabled = false"),
            setup("synced", "durability = \"synced\""),
            setup("written (default)", ""),
        ]
    };
    runtime.block_on(async {
        // Warm-up: the grant's cache, the trail's definitions.
        for s in &mut setups {
            round(s, &facts, 0).await;
            s.latencies.clear();
            s.cpu = Duration::ZERO;
            s.calls = 0;
        }
        for r in 0..ROUNDS {
            for s in &mut setups {
                round(s, &facts, (r as u64 + 1) * CALLS_PER_ROUND).await;
            }
        }
    });
    let figures: Vec<(f64, f64, f64)> = setups
        .iter_mut()
        .map(|s| {
            s.latencies.sort();
            let pick = |q: f64| {
                s.latencies[((s.latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6
            };
            (
                pick(0.5),
                pick(0.99),
                s.cpu.as_secs_f64() * 1e6 / s.calls as f64,
            )
        })
        .collect();
    let (base_p50, _, base_cpu) = figures[0];
    println!(
        "{ROUNDS} interleaved rounds of {CALLS_PER_ROUND} calls (decide, record, outcome), in process:"
    );
    println!("| trail | p50 µs | p99 µs | CPU µs per call | p50 added | CPU added |");
    println!("|---|---|---|---|---|---|");
    for (s, (p50, p99, cpu)) in setups.iter().zip(&figures) {
        println!(
            "| {} | {p50:.1} | {p99:.1} | {cpu:.1} | {:+.1} µs | {:+.1} µs |",
            s.label,
            p50 - base_p50,
            cpu - base_cpu
        );
    }
    for s in &setups {
        s.guard.shutdown();
    }
}
