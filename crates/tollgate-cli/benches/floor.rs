//! What Tollgate adds to a `tools/call` over stdio, against the floor: a raw JSON-RPC client
//! (lines on a pipe, no MCP library in the way) calls a trivial `echo` tool of a real node
//! upstream (`server-everything`) and of the Rust fixture, directly, through a process that
//! only copies bytes (the floor), through `tollgate run --allow-all` (the relay) and through
//! Tollgate guarding every call (grant, pack, minted credential) with the trail off, at the
//! default durability (written before the call, synced within 20 ms) and synced per call.
//! Every path is measured in the same interleaved rounds, at 1 and at 32 calls in flight.
//!
//!     cargo bench -p tollgate-cli --bench floor
//!
//! `TOLLGATE_BENCH_UPSTREAM=node` or `=fixture` measures one upstream; the node one is found
//! at `tests/peers/node_modules/.bin/mcp-server-everything` (`npm ci` in `tests/peers`), or
//! where `TOLLGATE_BENCH_NODE_SERVER` says. `TOLLGATE_BENCH_PATHS=direct,relay` measures only
//! the paths named. The executable doubles as the fixture (`--fixture-stdio`) and the floor
//! (`--copy PROGRAM ARGS…`), so that every peer is a process of its own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin},
    sync::oneshot,
};
use tollgate_testkit::{
    cpu_ns,
    fixture::{Fixture, FixtureState},
};

const WARMUP: usize = 300;
const ROUNDS: usize = 10;
/// Calls per client and round, one in flight.
const SERIAL: usize = 300;
const IN_FLIGHT: usize = 32;
/// Calls per task and round, 32 in flight.
const PER_TASK: usize = 30;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.get(1).map(String::as_str) {
        Some("--fixture-stdio") => runtime.block_on(async {
            tollgate_testkit::serve_stdio(Fixture::new("bench", Arc::new(FixtureState::default())))
                .await
                .unwrap();
        }),
        // The floor: a thread per direction copying bytes with blocking reads and writes, as a
        // process written in C would; no runtime, no parsing.
        Some("--copy") => {
            use std::io::{Read, Write};
            let mut child = std::process::Command::new(&args[2])
                .args(&args[3..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut child_in = child.stdin.take().unwrap();
            let mut child_out = child.stdout.take().unwrap();
            let copy = |from: &mut dyn Read, to: &mut dyn Write| {
                let mut buffer = vec![0u8; 1 << 16];
                while let Ok(n @ 1..) = from.read(&mut buffer) {
                    if to
                        .write_all(&buffer[..n])
                        .and_then(|()| to.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            };
            std::thread::spawn(move || copy(&mut std::io::stdin().lock(), &mut child_in));
            copy(&mut child_out, &mut std::io::stdout().lock());
            let _ = child.kill();
            let _ = child.wait();
        }
        _ => runtime.block_on(bench()),
    }
}

/// A tool server as the agent would start it, and what its `echo` takes.
struct Upstream {
    name: &'static str,
    program: String,
    args: Vec<String>,
    arguments: &'static str,
}

/// An answer: its id, and whether it was a result that is not a tool error.
#[derive(Deserialize)]
struct Answer<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
}

/// A raw JSON-RPC client of one child process over its stdin and stdout.
struct Raw {
    child: Child,
    /// The process the client talks to: the upstream itself, the floor or Tollgate.
    pid: u32,
    input: tokio::sync::Mutex<ChildStdin>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<bool>>>>,
    next: AtomicU64,
    /// A call's line up to its id, and after it.
    call: (String, String),
}

impl Raw {
    async fn start(program: &Path, args: &[String], arguments: &str) -> Arc<Self> {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        let output = child.stdout.take().unwrap();
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<bool>>>> = Arc::default();
        let answers = waiting.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::with_capacity(1 << 16, output).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(answer) = serde_json::from_str::<Answer<'_>>(&line) else {
                    continue;
                };
                // Notifications and requests of the server carry no id of ours.
                let Some(id) = answer.id else { continue };
                let ok = answer
                    .result
                    .is_some_and(|r| !r.get().contains("\"isError\":true"));
                if let Some(sender) = answers.lock().unwrap().remove(&id) {
                    let _ = sender.send(ok);
                }
            }
        });
        let client = Arc::new(Self {
            pid: child.id().unwrap(),
            input: tokio::sync::Mutex::new(child.stdin.take().unwrap()),
            child,
            waiting,
            next: AtomicU64::new(1),
            call: (
                r#"{"jsonrpc":"2.0","id":"#.to_owned(),
                format!(
                    r#","method":"tools/call","params":{{"name":"echo","arguments":{arguments}}}}}"#
                ),
            ),
        });
        let initialize = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
        assert!(
            tokio::time::timeout(Duration::from_secs(60), client.send(0, initialize))
                .await
                .expect("initialize answered within a minute"),
            "{} did not initialize",
            program.display()
        );
        client
            .write(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        client
    }

    async fn write(&self, line: &str) {
        let mut input = self.input.lock().await;
        input.write_all(line.as_bytes()).await.unwrap();
        input.write_all(b"\n").await.unwrap();
    }

    async fn send(&self, id: u64, line: &str) -> bool {
        let (sender, answered) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, sender);
        self.write(line).await;
        answered.await.unwrap_or(false)
    }

    /// One `echo` call; panics unless it succeeded, so a refusal is never measured.
    async fn echo(&self) -> Duration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let line = format!("{}{id}{}", self.call.0, self.call.1);
        let started = Instant::now();
        let ok = self.send(id, &line).await;
        let took = started.elapsed();
        assert!(ok, "call {id} failed");
        took
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The latencies and wall time of one round of `client` at `in_flight`.
async fn round(client: &Arc<Raw>, in_flight: usize) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    if in_flight == 1 {
        let mut samples = Vec::with_capacity(SERIAL);
        for _ in 0..SERIAL {
            samples.push(client.echo().await);
        }
        return (samples, started.elapsed());
    }
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(PER_TASK);
                for _ in 0..PER_TASK {
                    samples.push(client.echo().await);
                }
                samples
            })
        })
        .collect();
    let mut all = Vec::with_capacity(in_flight * PER_TASK);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    (all, started.elapsed())
}

struct Figures {
    /// CPU time the process the client talks to spent per call.
    cpu_us: f64,
    p50_us: f64,
    p99_us: f64,
    calls_per_s: f64,
}

/// Every client in the same rounds, each round starting with the next one, so that drift in
/// the machine's load hits them alike.
async fn measure(clients: &[Arc<Raw>], in_flight: usize) -> Vec<Figures> {
    for client in clients {
        for _ in 0..WARMUP {
            client.echo().await;
        }
    }
    let mut samples = vec![Vec::new(); clients.len()];
    let mut walls = vec![Duration::ZERO; clients.len()];
    let mut cpu = vec![0u64; clients.len()];
    for r in 0..ROUNDS {
        for k in 0..clients.len() {
            let i = (r + k) % clients.len();
            let before = cpu_ns(clients[i].pid);
            let (s, wall) = round(&clients[i], in_flight).await;
            cpu[i] += cpu_ns(clients[i].pid).saturating_sub(before);
            samples[i].extend(s);
            walls[i] += wall;
        }
    }
    samples
        .into_iter()
        .zip(walls)
        .zip(cpu)
        .map(|((mut all, wall), cpu)| {
            all.sort();
            let pick = |q: f64| all[((all.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
            Figures {
                cpu_us: cpu as f64 / 1e3 / all.len() as f64,
                p50_us: pick(0.5),
                p99_us: pick(0.99),
                calls_per_s: all.len() as f64 / wall.as_secs_f64(),
            }
        })
        .collect()
}

/// A pack, a grant and a config guarding `upstream` with `audit` as the trail's settings.
fn guarded(upstream: &Upstream, audit: &str) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let args = upstream
        .args
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let args = common::echo_guard(
        dir.path(),
        &format!("{:?}", upstream.program),
        &format!("[{args}]"),
        r#"{ mode = "mint", audience = "https://bench.test" }"#,
        audit,
    );
    (dir, args)
}

/// The paths measured, by name: what to start for each.
fn paths(
    upstream: &Upstream,
    me: &Path,
    tollgate: &Path,
) -> Vec<(
    &'static str,
    PathBuf,
    Vec<String>,
    Option<tempfile::TempDir>,
)> {
    let mut server = vec![upstream.program.clone()];
    server.extend(upstream.args.iter().cloned());
    let mut copy = vec!["--copy".to_owned()];
    copy.extend(server.iter().cloned());
    let mut relay = vec!["run".to_owned(), "--allow-all".to_owned(), "--".to_owned()];
    relay.extend(server.iter().cloned());
    let mut all = vec![
        (
            "direct",
            PathBuf::from(&upstream.program),
            upstream.args.clone(),
            None,
        ),
        ("floor (bytes copied)", me.to_owned(), copy, None),
        ("relay (--allow-all)", tollgate.to_owned(), relay, None),
    ];
    for (name, audit) in [
        ("guarded, trail off", "enabled = false"),
        ("guarded, written (default)", ""),
        ("guarded, synced", "durability = \"synced\""),
    ] {
        let (dir, args) = guarded(upstream, audit);
        all.push((name, tollgate.to_owned(), args, Some(dir)));
    }
    let only = std::env::var("TOLLGATE_BENCH_PATHS").unwrap_or_default();
    if !only.is_empty() {
        let wanted: Vec<&str> = only.split(',').collect();
        all.retain(|(name, ..)| {
            name == &"direct" || wanted.iter().any(|w| name.starts_with(w.trim()))
        });
    }
    all
}

async fn bench() {
    let me = std::env::current_exe().unwrap();
    let tollgate = PathBuf::from(env!("CARGO_BIN_EXE_tollgate"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let node = std::env::var("TOLLGATE_BENCH_NODE_SERVER").map_or_else(
        |_| root.join("tests/peers/node_modules/.bin/mcp-server-everything"),
        PathBuf::from,
    );
    let mut upstreams = vec![];
    let only = std::env::var("TOLLGATE_BENCH_UPSTREAM").unwrap_or_default();
    if only != "fixture" {
        if node.exists() {
            upstreams.push(Upstream {
                name: "node server-everything",
                program: node.display().to_string(),
                args: vec!["stdio".to_owned()],
                arguments: r#"{"message":"ping"}"#,
            });
        } else {
            println!(
                "SKIPPED: no node server at {} (`npm ci` in tests/peers): only the Rust fixture is measured",
                node.display()
            );
        }
    }
    if only != "node" {
        upstreams.push(Upstream {
            name: "Rust fixture",
            program: me.display().to_string(),
            args: vec!["--fixture-stdio".to_owned()],
            arguments: r#"{"text":"ping"}"#,
        });
    }
    for upstream in &upstreams {
        let paths = paths(upstream, &me, &tollgate);
        let mut clients = Vec::new();
        for (_, program, args, _) in &paths {
            clients.push(Raw::start(program, args, upstream.arguments).await);
        }
        let serial = measure(&clients, 1).await;
        let loaded = measure(&clients, IN_FLIGHT).await;
        println!(
            "\n{} over stdio, raw JSON-RPC client, {ROUNDS} interleaved rounds ({} calls one at a time, {} at {IN_FLIGHT} in flight, per path)\n",
            upstream.name,
            ROUNDS * SERIAL,
            ROUNDS * IN_FLIGHT * PER_TASK,
        );
        println!(
            "| path | p50 µs | added p50 µs | p50 vs direct | p99 µs | calls/s at {IN_FLIGHT} in flight | throughput vs direct | CPU µs per call (middle process; direct: the upstream) |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let (direct, direct_rate) = (serial[0].p50_us, loaded[0].calls_per_s);
        for (((name, ..), one), many) in paths.iter().zip(&serial).zip(&loaded) {
            println!(
                "| {name} | {:.0} | {:+.0} | {:.2}× | {:.0} | {:.0} | {:.2}× | {:.1} |",
                one.p50_us,
                one.p50_us - direct,
                one.p50_us / direct,
                one.p99_us,
                many.calls_per_s,
                many.calls_per_s / direct_rate,
                one.cpu_us,
            );
        }
        drop(clients);
    }
}
