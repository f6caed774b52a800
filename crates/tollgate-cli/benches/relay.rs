//! Relay overhead: `tools/call` of a trivial echo tool, directly to the fixture server and
//! through Tollgate, over stdio and streamable HTTP, at 1 and 32 concurrent calls, all in one
//! run so the figures compare as ratios. Also Tollgate's RSS idle and with 1,000 open HTTP
//! sessions.
//!
//!     cargo bench -p tollgate-cli --bench relay
//!
//! `TOLLGATE_BENCH_ONLY=stdio` or `=http` runs one transport; `=audit` only the audit trail's
//! cost on the guarded stdio path.
//!
//! The same executable doubles as the fixture server (`--fixture-stdio`, `--fixture-http ADDR`)
//! so that every peer runs in a process of its own, as in a deployment.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::{
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use rmcp::{
    RoleClient, ServiceExt,
    model::CallToolRequestParams,
    service::RunningService,
    transport::{
        StreamableHttpClientTransport, TokioChildProcess,
        streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use tollgate_testkit::{
    cpu_ns,
    fixture::{Fixture, FixtureState},
};

type Client = RunningService<RoleClient, ()>;

const WARMUP: usize = 300;
const CALLS_SERIAL: usize = 3000;
const CALLS_PER_TASK: usize = 300;
const CONCURRENCY: usize = 32;
const ROUNDS: usize = 10;
/// Rounds of the audit trail's comparison: three times as many, of the same size.
const AUDIT_ROUNDS: usize = 30;

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
        // The floor: a bare byte-forwarding hop, stdin/stdout to a child's and back.
        // The HTTP floor: a bare reverse proxy that forwards each request's method, headers and
        // body and streams the response back, with pooled upstream connections.
        Some("--forward-http") => runtime.block_on(async {
            let listen: std::net::SocketAddr = args[2].parse().unwrap();
            let upstream = args[3].clone();
            let client = reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .unwrap();
            let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
                let client = client.clone();
                let upstream = upstream.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = axum::body::to_bytes(body, 16 << 20).await.unwrap();
                    let mut headers = parts.headers.clone();
                    headers.remove(http::header::HOST);
                    let answer = client
                        .request(parts.method, &upstream)
                        .headers(headers)
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let mut response = axum::response::Response::builder().status(answer.status());
                    for (name, value) in answer.headers() {
                        response = response.header(name, value);
                    }
                    response
                        .body(axum::body::Body::from_stream(answer.bytes_stream()))
                        .unwrap()
                }
            });
            let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).await.unwrap();
        }),
        Some("--forward") => runtime.block_on(async {
            let mut child = tokio::process::Command::new(&args[2])
                .args(&args[3..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut child_in = child.stdin.take().unwrap();
            let mut child_out = child.stdout.take().unwrap();
            let (mut read, mut write) = rmcp::transport::stdio_pipes();
            let up = tokio::spawn(async move { tokio::io::copy(&mut read, &mut child_in).await });
            let _ = tokio::io::copy(&mut child_out, &mut write).await;
            up.abort();
        }),
        Some("--fixture-http") => runtime.block_on(async {
            let addr = args[2].parse().unwrap();
            let stop = tokio_util::sync::CancellationToken::new();
            let state = Arc::new(FixtureState::default());
            tollgate_testkit::serve_http(
                addr,
                move || Fixture::new("bench", state.clone()),
                stop.clone(),
            )
            .await
            .unwrap();
            std::future::pending::<()>().await;
        }),
        // Load for profiling: `--load URL SECONDS` calls echo at 32 concurrent calls.
        Some("--load") => runtime.block_on(async {
            let client = http_client(&args[2]).await;
            let until = Instant::now() + Duration::from_secs(args[3].parse().unwrap());
            let mut calls = 0usize;
            while Instant::now() < until {
                let (samples, _) = run_batch(&client, CONCURRENCY, CONCURRENCY * 50).await;
                calls += samples.len();
            }
            println!("{calls} calls");
        }),
        // `cargo bench` passes `--bench`; anything else runs the benchmark too.
        _ => runtime.block_on(bench()),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(port: u16) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listening on {port}");
}

fn echo() -> CallToolRequestParams {
    let mut args = serde_json::Map::new();
    args.insert("text".into(), serde_json::json!("ping"));
    CallToolRequestParams::new("echo").with_arguments(args)
}

struct Figures {
    p50_us: f64,
    p99_us: f64,
    calls_per_s: f64,
    /// CPU time of the Tollgate process per call, when it was followed.
    cpu_us_per_call: f64,
    /// Calls per second in each round.
    round_rates: Vec<f64>,
}

/// Latency samples and wall time of `calls` calls at `concurrency`.
async fn run_batch(client: &Client, concurrency: usize, calls: usize) -> (Vec<Duration>, Duration) {
    let per_task = calls / concurrency;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let peer = client.peer().clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    peer.call_tool(echo()).await.unwrap();
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    (all, started.elapsed())
}

/// Measures every client in interleaved rounds, so that drift in machine load hits them alike.
async fn measure_all(clients: &[&Client], concurrency: usize) -> Vec<Figures> {
    measure_following(clients, &[], concurrency, ROUNDS).await
}

/// [`measure_all`], also adding up the CPU time of the processes `pids` (one per client).
async fn measure_following(
    clients: &[&Client],
    pids: &[u32],
    concurrency: usize,
    rounds: usize,
) -> Vec<Figures> {
    for client in clients {
        for _ in 0..WARMUP {
            client.call_tool(echo()).await.unwrap();
        }
    }
    let total = if concurrency == 1 {
        CALLS_SERIAL
    } else {
        CALLS_PER_TASK * concurrency
    };
    let per_round = (total / ROUNDS).max(concurrency);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); clients.len()];
    let mut walls = vec![Vec::new(); clients.len()];
    let mut cpu = vec![0u64; clients.len()];
    for round in 0..rounds {
        // Each round starts with the next client, so that none always follows the same one.
        for k in 0..clients.len() {
            let i = (round + k) % clients.len();
            let before = pids.get(i).map_or(0, |&pid| cpu_ns(pid));
            let (s, wall) = run_batch(clients[i], concurrency, per_round).await;
            cpu[i] += pids
                .get(i)
                .map_or(0, |&pid| cpu_ns(pid).saturating_sub(before));
            samples[i].extend(s);
            walls[i].push(wall);
        }
    }
    samples
        .into_iter()
        .zip(walls)
        .zip(cpu)
        .map(|((mut all, walls), cpu)| {
            let wall: Duration = walls.iter().sum();
            all.sort();
            let pick = |q: f64| all[((all.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
            Figures {
                p50_us: pick(0.50),
                p99_us: pick(0.99),
                calls_per_s: all.len() as f64 / wall.as_secs_f64(),
                cpu_us_per_call: cpu as f64 / 1e3 / all.len() as f64,
                round_rates: walls
                    .iter()
                    .map(|w| per_round as f64 / w.as_secs_f64())
                    .collect(),
            }
        })
        .collect()
}

/// The process whose command line names `needle`.
fn pid_naming(needle: &str) -> u32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .unwrap_or_else(|| panic!("no process names {needle}"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn stdio_client(program: &std::path::Path, args: &[&str]) -> Client {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stderr(Stdio::null());
    ().serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .unwrap()
}

/// Both HTTP clients keep their connections (rmcp's default client opens one per request).
async fn http_client(url: &str) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(url).max_concurrent_requests(64);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    ().serve(StreamableHttpClientTransport::with_client(http, config))
        .await
        .unwrap()
}

/// Direct, bare hop, tollgate relaying and (when given) tollgate guarding side by side at 1
/// and at 32 concurrent calls.
async fn compare(
    transport: &'static str,
    direct: &Client,
    floor: &Client,
    through: &Client,
    guarding: &[(&'static str, &Client)],
) -> Vec<Row> {
    let mut rows = Vec::new();
    for concurrency in [1, CONCURRENCY] {
        let mut clients = vec![direct, floor, through];
        clients.extend(guarding.iter().map(|(_, c)| *c));
        let mut figures = measure_all(&clients, concurrency).await.into_iter();
        let (direct, floor, through) = (
            figures.next().unwrap(),
            figures.next().unwrap(),
            figures.next().unwrap(),
        );
        rows.push(Row {
            transport,
            concurrency,
            direct,
            floor: Some(floor),
            through,
            guarding: guarding
                .iter()
                .map(|(label, _)| *label)
                .zip(figures)
                .collect(),
        });
    }
    rows
}

/// A pack that allows the fixture's `echo` to a grant holding `read`, with the kinds of rules
/// every pack has (rate, denials, secrets), a grant for it, and a config that (with `mint`)
/// mints a token for each allowed call: the folder and the `tollgate` arguments to run with.
fn policy_setup(fixture: &str, mint: bool, audit: &str) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    // With `mint`, every allowed call also carries a token minted for it, in `_meta`.
    let credential = if mint {
        r#"{ mode = "mint", audience = "https://bench.test" }"#
    } else {
        r#"{ mode = "none" }"#
    };
    let args = common::echo_guard(
        dir.path(),
        &format!("{fixture:?}"),
        "[\"--fixture-stdio\"]",
        credential,
        audit,
    );
    (dir, args)
}

struct Row {
    transport: &'static str,
    concurrency: usize,
    direct: Figures,
    /// A bare byte-forwarding hop in the same place as Tollgate.
    floor: Option<Figures>,
    through: Figures,
    /// Tollgate deciding every call with a grant and a policy pack, in the ways measured.
    guarding: Vec<(&'static str, Figures)>,
}

async fn bench() {
    let me = std::env::current_exe().unwrap();
    let tollgate = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tollgate"));
    let mut rows = Vec::new();

    // stdio: the agent starts the server (direct) or `tollgate run -- server` (through).
    let only = std::env::var("TOLLGATE_BENCH_ONLY").unwrap_or_default();
    let fixture = me.to_str().unwrap();
    if only == "audit" {
        audit_only(&tollgate, fixture).await;
        return;
    }
    if only != "http" {
        let direct = stdio_client(&me, &["--fixture-stdio"]).await;
        let floor = stdio_client(&me, &["--forward", fixture, "--fixture-stdio"]).await;
        let through = stdio_client(
            &tollgate,
            &["run", "--allow-all", "--", fixture, "--fixture-stdio"],
        )
        .await;
        // Deciding; deciding and minting; and both with the audit trail, synced per call and
        // at the default durability (written before the call, synced within 20 ms).
        let setups = [
            ("deciding every call", false, "enabled = false"),
            (
                "guarding every call (decide + mint)",
                true,
                "enabled = false",
            ),
            ("guarding + audit, synced", true, "durability = \"synced\""),
            ("guarding + audit, written (default)", true, ""),
        ];
        let mut dirs = Vec::new();
        let mut guarding = Vec::new();
        for (label, mint, audit) in setups {
            let (dir, args) = policy_setup(fixture, mint, audit);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            guarding.push((label, stdio_client(&tollgate, &args).await));
            dirs.push(dir);
        }
        let labelled: Vec<(&'static str, &Client)> =
            guarding.iter().map(|(label, c)| (*label, c)).collect();
        rows.extend(compare("stdio", &direct, &floor, &through, &labelled).await);
        for client in [direct, floor, through]
            .into_iter()
            .chain(guarding.into_iter().map(|(_, c)| c))
        {
            client.cancel().await.unwrap();
        }
    }

    if only == "stdio" {
        print_rows(&rows);
        return;
    }
    // HTTP: the fixture in its own process; Tollgate in its own, in front of it.
    let fixture_port = free_port();
    let mut fixture_server = tokio::process::Command::new(&me)
        .args(["--fixture-http", &format!("127.0.0.1:{fixture_port}")])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_port(fixture_port).await;
    let front_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\nmode = \"allow-all\"\n[front.http]\nlisten = \"127.0.0.1:{front_port}\"\n[[upstream]]\nname = \"bench\"\nurl = \"http://127.0.0.1:{fixture_port}/mcp\"\n"
        ),
    )
    .unwrap();
    let mut tollgate_server = tokio::process::Command::new(&tollgate)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "error")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_port(front_port).await;
    let tollgate_pid = tollgate_server.id().unwrap();
    let rss_start = rss_kib(tollgate_pid);
    let direct_url = format!("http://127.0.0.1:{fixture_port}/mcp");
    let through_url = format!("http://127.0.0.1:{front_port}/mcp");
    let floor_port = free_port();
    let mut floor_server = tokio::process::Command::new(&me)
        .args([
            "--forward-http",
            &format!("127.0.0.1:{floor_port}"),
            &direct_url,
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_port(floor_port).await;
    let floor_url = format!("http://127.0.0.1:{floor_port}/mcp");
    {
        let direct = http_client(&direct_url).await;
        let floor = http_client(&floor_url).await;
        let through = http_client(&through_url).await;
        rows.extend(compare("http", &direct, &floor, &through, &[]).await);
        let _ = floor_server.start_kill();
        for client in [direct, floor, through] {
            client.cancel().await.unwrap();
        }
    }

    // 1,000 open (initialized) 2025-11-25 sessions on Tollgate's HTTP front.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_after_load = rss_kib(tollgate_pid);
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for i in 0..1000 {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"bench","version":"1"}}}}}}"#
        );
        let response = http
            .post(&through_url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        let id = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = response.bytes().await;
        let initialized = http
            .post(&through_url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &id)
            .header("mcp-protocol-version", "2025-11-25")
            .body(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .send()
            .await
            .unwrap();
        assert!(initialized.status().is_success());
        sessions.push(id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_sessions = rss_kib(tollgate_pid);

    print_rows(&rows);
    println!();
    println!("tollgate RSS at start: {rss_start} KiB; after the HTTP runs: {rss_after_load} KiB");
    println!(
        "tollgate RSS with {} open HTTP sessions: {} KiB ({:.1} KiB per session)",
        sessions.len(),
        rss_sessions,
        (rss_sessions.saturating_sub(rss_after_load)) as f64 / sessions.len() as f64
    );
    let _ = tollgate_server.start_kill();
    let _ = fixture_server.start_kill();
    let _ = tollgate_server.wait().await;
    let _ = fixture_server.wait().await;
}

/// `TOLLGATE_BENCH_ONLY=audit`: the audit trail's cost alone, guarding over stdio without the
/// trail, with it synced per call and at the default durability (written, synced within
/// 20 ms), in interleaved
/// rounds; with the CPU time each Tollgate process spent per call (its upstream and the
/// client not counted).
async fn audit_only(tollgate: &std::path::Path, fixture: &str) {
    let setups = [
        ("no trail", "enabled = false"),
        ("synced", "durability = \"synced\""),
        ("written (default)", ""),
    ];
    let mut dirs = Vec::new();
    let mut clients = Vec::new();
    let mut pids = Vec::new();
    for (_, audit) in setups {
        let (dir, args) = policy_setup(fixture, true, audit);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        clients.push(stdio_client(tollgate, &args).await);
        // Its configuration is in a folder of its own: the Tollgate process is the one
        // started with it.
        pids.push(pid_naming(
            &dir.path().join("tollgate.toml").display().to_string(),
        ));
        dirs.push(dir);
    }
    let refs: Vec<&Client> = clients.iter().collect();
    println!(
        "| stdio, guarding | trail | p50 µs | p99 µs | calls/s | vs no trail | median round vs no trail | Tollgate CPU µs per call |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for concurrency in [1, CONCURRENCY] {
        let figures = measure_following(&refs, &pids, concurrency, AUDIT_ROUNDS).await;
        let base = &figures[0];
        for ((label, _), f) in setups.iter().zip(&figures) {
            // Each round measures every trail back to back: the ratio within a round is the
            // least touched by the machine's drift.
            let mut ratios: Vec<f64> = f
                .round_rates
                .iter()
                .zip(&base.round_rates)
                .map(|(rate, base)| rate / base)
                .collect();
            ratios.sort_by(f64::total_cmp);
            println!(
                "| {concurrency} in flight | {label} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2}× | {:.1} |",
                f.p50_us,
                f.p99_us,
                f.calls_per_s,
                f.calls_per_s / base.calls_per_s,
                ratios[ratios.len() / 2],
                f.cpu_us_per_call,
            );
        }
    }
    for client in clients {
        client.cancel().await.unwrap();
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "| transport | concurrent calls | direct p50 µs | bare hop p50 µs | tollgate p50 µs | p50 ratio (bare hop) | direct p99 µs | tollgate p99 µs | direct calls/s | tollgate calls/s | throughput ratio (bare hop) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        for (what, f) in &r.guarding {
            println!(
                "  ({} × {}: tollgate {what}: p50 {:.0} µs ({:.2}× direct, {:.2}× bare hop, {:.2}× relaying), p99 {:.0} µs, {:.0} calls/s ({:.2}× direct))",
                r.transport,
                r.concurrency,
                f.p50_us,
                f.p50_us / r.direct.p50_us,
                r.floor.as_ref().map_or(f64::NAN, |b| f.p50_us / b.p50_us),
                f.p50_us / r.through.p50_us,
                f.p99_us,
                f.calls_per_s,
                f.calls_per_s / r.direct.calls_per_s,
            );
        }
        let floor_p50 = r
            .floor
            .as_ref()
            .map_or("–".to_owned(), |f| format!("{:.0}", f.p50_us));
        let floor_p50_ratio = r.floor.as_ref().map_or(String::new(), |f| {
            format!(" ({:.2}×)", f.p50_us / r.direct.p50_us)
        });
        let floor_tp_ratio = r.floor.as_ref().map_or(String::new(), |f| {
            format!(" ({:.2}×)", f.calls_per_s / r.direct.calls_per_s)
        });
        println!(
            "| {} | {} | {:.0} | {} | {:.0} | {:.2}×{} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}×{} |",
            r.transport,
            r.concurrency,
            r.direct.p50_us,
            floor_p50,
            r.through.p50_us,
            r.through.p50_us / r.direct.p50_us,
            floor_p50_ratio,
            r.direct.p99_us,
            r.through.p99_us,
            r.direct.calls_per_s,
            r.through.calls_per_s,
            r.through.calls_per_s / r.direct.calls_per_s,
            floor_tp_ratio,
        );
    }
}
