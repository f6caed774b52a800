//! Decision latency: schema validation, resource binding, grant checks and Cedar for one
//! `tools/call`, with packs of 10, 100, 1,000 and 10,000 policies, beside one bare stdio round
//! trip (a line to a child process that echoes it) measured in the same run.
//!
//!     cargo bench -p tollgate-cli --bench decide
//!
//! The packs are shaped like real ones: a handful of policies that apply to every tool (rate
//! limits, secrets, business hours) and the rest scoped to one tool or upstream each. A second
//! series puts every policy in the unscoped group, the worst case for the slicing by scope.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::Arc,
    time::Instant,
};

use serde_json::json;
use tollgate_policy::{
    ActionClass, CallInput, Effect, Environment, Grant, Pack, PackSource, SessionFacts,
    SessionStats, Usage,
};

const SAMPLES: usize = 100_000;
const RTT_SAMPLES: usize = 5_000;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--echo") {
        common::echo_lines();
        return;
    }
    // `--only N [--unscoped]`: just one pack size, for a profiler.
    if std::env::args().any(|a| a == "--mint") {
        for alg in [
            tollgate_mint::Algorithm::Es256,
            tollgate_mint::Algorithm::EdDsa,
        ] {
            let (p50, p99) = mint(alg);
            println!("{}: p50 {p50:.1} µs  p99 {p99:.1} µs", alg.as_str());
        }
        return;
    }
    if let Some(n) = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .and_then(|n| n.parse().ok())
    {
        let scoped = !std::env::args().any(|a| a == "--unscoped");
        let (p50, p99, _) = measure(n, scoped);
        println!("{n} policies: p50 {p50:.1} µs  p99 {p99:.1} µs");
        return;
    }
    if std::env::args().any(|a| a == "--rtt") {
        for _ in 0..5 {
            let (p50, p99) = stdio_round_trip();
            println!("bare stdio round trip: p50 {p50:.1} µs  p99 {p99:.1} µs");
        }
        return;
    }
    // A round trip is mostly the two wake-ups of sleeping processes, which swing with whatever
    // else the machine does: it is taken three times across the run and the median used.
    let mut rtts = vec![stdio_round_trip()];
    let decisions: Vec<(bool, usize, (f64, f64, f64))> = [true, false]
        .into_iter()
        .flat_map(|scoped| {
            [10usize, 100, 1_000, 10_000]
                .into_iter()
                .filter(move |n| scoped || *n < 10_000)
                .map(move |n| (scoped, n))
        })
        .enumerate()
        .map(|(i, (scoped, n))| {
            if i == 3 {
                rtts.push(stdio_round_trip());
            }
            (scoped, n, measure(n, scoped))
        })
        .collect();
    rtts.push(stdio_round_trip());
    let mut p50s: Vec<f64> = rtts.iter().map(|r| r.0).collect();
    p50s.sort_by(f64::total_cmp);
    let rtt = (p50s[1], 0.0);
    for (p50, p99) in &rtts {
        println!("bare stdio round trip (1 KiB line): p50 {p50:>6.1} µs  p99 {p99:>6.1} µs");
    }
    println!("median round trip p50: {:.1} µs", rtt.0);
    println!("\nminting one per-call token (claims, JCS digest of the arguments, signature):");
    for alg in [
        tollgate_mint::Algorithm::Es256,
        tollgate_mint::Algorithm::EdDsa,
    ] {
        let (p50, p99) = mint(alg);
        println!(
            "  {:>6}: p50 {p50:>6.1} µs  p99 {p99:>6.1} µs  ({:.3}× stdio RTT)",
            alg.as_str(),
            p50 / rtt.0
        );
    }
    let mut base = None;
    let mut last_scope = None;
    for (scoped, n, (p50, p99, first)) in decisions {
        if last_scope != Some(scoped) {
            last_scope = Some(scoped);
            println!(
                "\n{}",
                if scoped {
                    "packs of tool-scoped policies (10 apply to every tool):"
                } else {
                    "worst case: every policy unscoped, so every one is evaluated:"
                }
            );
        }
        {
            let base10 = *base.get_or_insert(p50);
            println!(
                "  {n:>6} policies: p50 {p50:>8.1} µs  p99 {p99:>8.1} µs  ({:.2}× p50 at 10; {:.3}× stdio RTT; first call {first:.0} µs)",
                p50 / base10,
                p50 / rtt.0
            );
        }
    }
}

fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99))
}

fn stdio_round_trip() -> (f64, f64) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = BufReader::new(child.stdout.take().unwrap());
    let line = format!(
        "{}\n",
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "fs.read_text_file", "arguments": {"path": "x".repeat(900)}}})
    );
    let mut back = String::new();
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for i in 0..RTT_SAMPLES + 500 {
        let started = Instant::now();
        to.write_all(line.as_bytes()).unwrap();
        to.flush().unwrap();
        back.clear();
        from.read_line(&mut back).unwrap();
        if i >= 500 {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(to);
    let _ = child.wait();
    percentiles(samples)
}

/// Ten policies every pack has whatever its size.
const COMMON: &str = r#"
@id("read-in-grant") permit (principal, action == Action::"read", resource) when { context.grant.present };
@id("write-in-grant") permit (principal, action == Action::"write", resource) when { context.grant.present && !context.resources.isEmpty() };
@id("rate") forbid (principal, action, resource) when { context.stats.calls_last_minute >= 120 };
@id("secrets") forbid (principal, action, resource) when { context.args has path && (context.args.path like "*.env" || context.args.path like "*/.ssh/*") };
@id("hours") forbid (principal, action == Action::"write", resource) when { context.environment == "prod" && (context.time.hour < 8 || context.time.hour >= 18) };
@id("weekend") forbid (principal, action in Action::"mutating", resource) when { context.environment == "prod" && (context.time.weekday == "sat" || context.time.weekday == "sun") };
@id("egress-taint") forbid (principal, action == Action::"egress", resource) when { context.taint.contains("secret_read") };
@id("justify") forbid (principal, action == Action::"payment", resource) when { context.intent.justification == "" };
@id("sensitive") @needs_approval permit (principal, action in Action::"sensitive", resource) when { context.grant.present };
@id("denials") forbid (principal, action, resource) when { context.stats.denials >= 50 };
"#;

fn pack(n: usize, scoped: bool) -> Pack {
    let mut text = String::from(COMMON);
    for i in 10..n {
        let scope = if scoped {
            match i % 3 {
                0 => format!("resource == Tool::\"svc{}.tool{i}\"", i % 50),
                1 => format!("resource in Upstream::\"svc{}\"", i % 50),
                _ => format!("resource == Tool::\"svc{}.other{i}\"", i % 50),
            }
        } else {
            "resource".to_owned()
        };
        let (effect, class) = if i % 4 == 0 {
            ("forbid", "write")
        } else {
            ("permit", "read")
        };
        text.push_str(&format!(
            "@id(\"p{i}\") {effect} (principal, action == Action::\"{class}\", {scope}) when {{ context.args has path && context.args.path like \"/srv/{i}/*\" }};\n"
        ));
    }
    Pack::compile(&PackSource {
        name: format!("bench{n}"),
        manifest: "purposes = [\"maintenance\"]\n[[tool]]\ntool = \"fs.read_*\"\nclass = \"read\"\nresources = { path = \"path\" }\n".to_owned(),
        schema: None,
        policies: vec![("bench.cedar".to_owned(), text)],
        extra_tools: Vec::new(),
    })
    .unwrap()
}

fn measure(n: usize, scoped: bool) -> (f64, f64, f64) {
    let pack = pack(n, scoped);
    let tool = common::read_text_file();
    let now = 1_795_773_600;
    let grant = Grant {
        id: "g-00000000000000000000aaaa".into(),
        iss: "tollgate".into(),
        iat: now - 10,
        exp: now + 3600,
        chain: Vec::new(),
        purpose: "maintenance".into(),
        task: "bench".into(),
        agent: Some("bench".into()),
        user: Some("ada".into()),
        resources: BTreeSet::from(["path:/srv/app/**".parse().unwrap()]),
        approve: BTreeSet::new(),
        actions: BTreeSet::from([ActionClass::Read]),
        tools: BTreeSet::from(["fs.*".to_owned()]),
        constraints: Vec::new(),
        limits: Vec::new(),
    };
    let arguments = json!({"path": "docs/README.md", "head": 20})
        .as_object()
        .cloned()
        .unwrap();
    let session = SessionFacts {
        id: "1".into(),
        transport: "stdio".into(),
        address: String::new(),
    };
    let env = Environment::default();
    let stats = SessionStats::default();
    let usage = Usage::new();
    let input = CallInput {
        session: &session,
        grant: Some(&grant),
        tool: &tool,
        arguments: Some(&arguments),
        justification: None,
        now,
        env: &env,
        stats: &stats,
        usage: &usage,
        taint: &[],
        pinned: true,
        paths: None,
        provenance: None,
    };
    let started = Instant::now();
    let first = pack.decide(&input);
    let first_us = started.elapsed().as_secs_f64() * 1e6;
    assert_eq!(first.effect, Effect::Allow, "{first:?}");
    let pack = Arc::new(pack);
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES + 1000 {
        let started = Instant::now();
        let decision = pack.decide(&input);
        let elapsed = started.elapsed().as_secs_f64() * 1e6;
        assert_eq!(decision.effect, Effect::Allow);
        if i >= 1000 {
            samples.push(elapsed);
        }
    }
    let (p50, p99) = percentiles(samples);
    (p50, p99, first_us)
}

fn mint(alg: tollgate_mint::Algorithm) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let keys = tollgate_mint::AccessKeys::load_or_create(dir.path(), alg).unwrap();
    let arguments = json!({"customer_id": "42", "amount": 40, "note": "order 1234 arrived broken"});
    let resources = vec!["customer:42".to_owned()];
    let digest = tollgate_mint::jcs::digest(&arguments);
    let call = tollgate_mint::CallCredential {
        issuer_base: "https://tollgate.example",
        subject: "ada",
        client_id: "support-bot",
        audience: "https://payments.example",
        session: "17",
        tool: "payments.refund",
        class: ActionClass::Payment,
        resources: &resources,
        arguments_sha256: &digest,
        decision_id: "d-1",
        grant_id: Some("g-00000000000000000000aaaa"),
        approval_id: None,
        http: None,
        now: 1_795_773_600,
        lifetime_secs: 60,
    };
    let mut samples = Vec::with_capacity(20_000);
    for i in 0..21_000 {
        let started = Instant::now();
        // The digest belongs to minting a call's token: the guard makes it once per call.
        let digest = std::hint::black_box(tollgate_mint::jcs::digest(&arguments));
        assert_eq!(digest, call.arguments_sha256);
        let minted = keys.mint(&call).unwrap();
        let elapsed = started.elapsed().as_secs_f64() * 1e6;
        assert!(!minted.token.is_empty());
        if i >= 1000 {
            samples.push(elapsed);
        }
    }
    percentiles(samples)
}
