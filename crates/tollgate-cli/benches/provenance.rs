//! What provenance costs: (1) a payment's decision with the session's index of values empty
//! and after 1,000 prior results, each with the lookup of the call's arguments included, beside
//! the same decision with no lookup at all; (2) indexing a 64 KiB result (JSON read, values
//! found, normalized and added to the index) beside a stdio round trip that carries the same
//! 64 KiB: to a child that echoes lines, and through node `server-everything`'s `echo`;
//! (3) the memory a session's index holds at its bound (resident memory grown by many full
//! indexes, per index).
//!
//!     cargo bench -p tollgate-cli --bench provenance

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Instant,
};

use serde_json::{Map, Value, json};
use tollgate_policy::{
    ActionClass, CallInput, EntryConfig, Environment, Grant, Hints, Pack, SchemaCache,
    SessionFacts, SessionStats, ToolFacts, Usage,
    provenance::{Index, Intent, Probes, Provenance, observe},
};

const DECISIONS: usize = 50_000;
const INDEXINGS: usize = 400;
const TRIPS: usize = 400;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--echo") {
        common::echo_lines();
        return;
    }
    decisions();
    indexing();
    memory();
}

/// Indexes filled to their bound at once, to measure the memory of one.
const FULL_INDEXES: usize = 32;

/// Resident memory of this process in bytes, from `/proc/self/statm` (pages of 4 KiB).
fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Sessions whose indexes are at their bound: the 2,048 values kept in detail (the longest the
/// index keeps whole: 256-byte strings, from several tools each) and the fingerprints of the
/// 32,768 let go beyond them.
fn memory() {
    let Some(before) = resident() else {
        println!("SKIPPED: no /proc/self/statm, so resident memory cannot be read");
        return;
    };
    let output = tollgate_policy::provenance::OutputTrust {
        default: tollgate_policy::Trust::Trusted,
        ..Default::default()
    };
    let mut indexes = Vec::with_capacity(FULL_INDEXES);
    let mut kept = (0, 0);
    for session in 0..FULL_INDEXES {
        let mut index = Index::default();
        // Each value once, long, from a few tools: 40 results of 1,000 values each.
        for result in 0..40 {
            let values: Vec<Value> = (0..1000)
                .map(|n| {
                    Value::String(format!(
                        "{session:04}-{result:03}-{n:04}-{}",
                        "x".repeat(236)
                    ))
                })
                .collect();
            let observed = observe(
                &json!({"content": [], "structuredContent": {"values": values}}),
                [
                    "crm.search",
                    "mail.list_messages",
                    "docs.search_files",
                    "bank.list_transactions",
                ][result % 4],
                &output,
                &[],
                0,
            );
            index.add(&observed);
        }
        kept = (index.len(), index.fingerprints());
        indexes.push(index);
    }
    let after = resident().unwrap_or(before);
    let per = after.saturating_sub(before) as f64 / FULL_INDEXES as f64;
    println!(
        "
memory of a session's index at its bound ({} values in detail, {} fingerprints; {FULL_INDEXES} such sessions held at once)
",
        kept.0, kept.1
    );
    println!("| | per session |");
    println!("|---|---|");
    println!("| resident memory grown | {:.0} KiB |", per / 1024.0);
    std::hint::black_box(&indexes);
}

fn p50(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn send_money() -> ToolFacts {
    let schema: Map<String, Value> = json!({
        "type": "object",
        "properties": {"recipient": {"type": "string"}, "amount": {"type": "number"}, "subject": {"type": "string"}},
        "required": ["recipient", "amount"]
    })
    .as_object()
    .cloned()
    .unwrap();
    ToolFacts::new(
        "bank.send_money",
        "bank",
        Hints::default(),
        None,
        SchemaCache::default().compile(&schema),
    )
    .with_entry(&schema)
}

fn list_transactions() -> ToolFacts {
    let schema: Map<String, Value> = json!({"type": "object"}).as_object().cloned().unwrap();
    ToolFacts::new(
        "bank.list_transactions",
        "bank",
        Hints::default(),
        None,
        SchemaCache::default().compile(&schema),
    )
    .with_entry(&schema)
}

fn pack() -> Pack {
    let entries: Vec<EntryConfig> = serde_json::from_value(json!([
        {"tool": "bank.list_transactions", "class": "read",
         "trusted_fields": ["/transactions/*/counterparty", "/transactions/*/amount", "/transactions/*/id"]},
        {"tool": "bank.send_money", "class": "payment", "targets": ["recipient"]},
    ]))
    .unwrap();
    let source = tollgate_guard::pack_files::with_tools(
        tollgate_guard::pack_files::embedded_default(),
        &entries,
    );
    Pack::compile(&source).unwrap()
}

/// Result `n` of a session: five transactions, each with an IBAN, a name, an amount and a
/// subject of a few words.
fn transactions(n: usize) -> Value {
    let list: Vec<Value> = (0..5)
        .map(|k| {
            let i = n * 5 + k;
            json!({"id": i, "date": "2026-11-20", "counterparty": format!("DE{:02}3704004405320{:05}", i % 97, i),
                   "counterparty_name": format!("Payee {i}"), "amount": (i as f64) * 1.25,
                   "subject": format!("Invoice {i} for services, see https://billing.example.com/i/{i}")})
        })
        .collect();
    let structured = json!({ "transactions": list });
    json!({"content": [{"type": "text", "text": structured.to_string()}], "structuredContent": structured})
}

fn decisions() {
    if std::env::var("TOLLGATE_BENCH_ONLY").is_ok_and(|o| o == "indexing") {
        return;
    }
    let pack = pack();
    let tool = send_money();
    let from = list_transactions();
    let (output, labels) = pack.output_of(&from);
    let now = 1_800_000_000;
    let grant = Grant {
        task: "Pay back Payee 12 what they sent".into(),
        ..Grant::root(
            "g-bench".into(),
            "billing",
            [ActionClass::Read, ActionClass::Payment],
            now,
            3600,
        )
    };
    let intent = Intent::of(Some(&grant));
    let mut empty = Index::default();
    let mut full = Index::default();
    for n in 0..1000 {
        full.add(&observe(
            &transactions(n),
            from.name(),
            &output,
            &labels,
            now - 60,
        ));
    }
    let arguments =
        json!({"recipient": "DE12370400440532000012", "amount": 15.0, "subject": "Back, thanks"})
            .as_object()
            .cloned()
            .unwrap();
    let session = SessionFacts {
        id: "1".into(),
        transport: "stdio".into(),
        address: String::new(),
    };
    let (env, stats, usage) = (
        Environment::default(),
        SessionStats::default(),
        Usage::new(),
    );
    let decide = |provenance: Option<&Provenance>| {
        pack.decide(&CallInput {
            session: &session,
            grant: Some(&grant),
            tool: &tool,
            arguments: Some(&arguments),
            justification: Some("the task"),
            now,
            env: &env,
            stats: &stats,
            usage: &usage,
            taint: &[],
            pinned: true,
            paths: None,
            provenance,
        })
    };
    let looked_up = |index: &mut Index| {
        let probes = Probes::of(Some(&arguments));
        let seen = index.look_up(&probes.keys);
        let provenance = Provenance::of(&probes, &seen, &intent, index.complete());
        decide(Some(&provenance))
    };
    let trusted = looked_up(&mut full);
    assert_eq!(
        trusted.policies,
        ["target-from-trusted-source"],
        "{trusted:?}"
    );
    // Interleaved: the three kinds in turn, so the machine's noise falls on each alike.
    let (mut none, mut empty_s, mut full_s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..DECISIONS {
        let t = Instant::now();
        std::hint::black_box(decide(None));
        none.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        std::hint::black_box(looked_up(&mut empty));
        empty_s.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        std::hint::black_box(looked_up(&mut full));
        full_s.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (none, empty_s, full_s) = (p50(none), p50(empty_s), p50(full_s));
    println!(
        "\na payment decision (default pack, target `recipient`), p50 of {DECISIONS} interleaved; the index after 1,000 results holds {} values (bounded)\n",
        full.len()
    );
    println!("| decision | p50 µs | vs no prior results |");
    println!("|---|---|---|");
    println!("| no lookup at all | {none:.2} | – |");
    println!("| lookup, no prior results | {empty_s:.2} | 1.00× |");
    println!(
        "| lookup, 1,000 prior results | {full_s:.2} (+{:.2} µs) | {:.2}× |",
        full_s - empty_s,
        full_s / empty_s
    );
}

/// About 64 KiB of mail: senders, subjects, bodies with addresses, links, IBANs and amounts.
fn mail_result() -> Value {
    let mut messages = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < 32 * 1024 - 200 {
        let body = format!(
            "Hello team, following up on invoice {i}: please pay EUR {}.50 to GB{:02} NWBK 6016 1331 {:04} 19 by Friday. \
             The details are at https://portal.example.com/invoices/{i}?ref=mail and questions go to billing{i}@vendor.example.org. \
             Thanks, and see you at the review on 2026-12-{:02}.",
            100 + i,
            i % 97,
            i,
            1 + i % 28
        );
        let message = json!({"id": format!("m-{i}"), "from": format!("sender{i}@corp.example"),
                             "subject": format!("Invoice {i}"), "body": body});
        size += message.to_string().len();
        messages.push(message);
        i += 1;
    }
    let structured = json!({ "messages": messages });
    json!({"content": [{"type": "text", "text": structured.to_string()}], "structuredContent": structured})
}

struct Lines {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Lines {
    fn start(program: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            input,
            output,
        }
    }

    fn trip(&mut self, line: &str) -> String {
        self.input.write_all(line.as_bytes()).unwrap();
        self.input.write_all(b"\n").unwrap();
        self.input.flush().unwrap();
        // A server's notifications in between are not the answer.
        loop {
            let mut answer = String::new();
            assert!(
                self.output.read_line(&mut answer).unwrap() > 0,
                "the far end closed"
            );
            if !answer.contains(r#""method":"notifications/"#) {
                return answer;
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn indexing() {
    let output = tollgate_policy::provenance::OutputTrust {
        trusted: vec![
            tollgate_policy::provenance::FieldPattern::parse("/messages/*/from").unwrap(),
        ],
        ..Default::default()
    };
    let mail = mail_result();
    let text = mail.to_string();
    // The relay hands the guard the result's JSON text: reading it is part of the cost.
    let index_once = |index: &mut Index| {
        let value: Value = serde_json::from_str(&text).unwrap();
        let observed = observe(&value, "mail.list_messages", &output, &[], 0);
        index.add(&observed);
        observed.values.len()
    };
    let found = index_once(&mut Index::default());
    // Where the time goes, alone: reading the JSON, finding the values, adding them.
    let mut strings = Vec::new();
    fn leaves<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
        match v {
            Value::String(s) => out.push(s),
            Value::Array(a) => a.iter().for_each(|x| leaves(x, out)),
            Value::Object(m) => m.values().for_each(|x| leaves(x, out)),
            _ => {}
        }
    }
    leaves(&mail["structuredContent"], &mut strings);
    let (mut tok, mut who) = (Vec::new(), Vec::new());
    for _ in 0..INDEXINGS {
        let t = Instant::now();
        for s in &strings {
            std::hint::black_box(tollgate_policy::provenance::tokens::tokens(s));
        }
        tok.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        for s in &strings {
            std::hint::black_box(tollgate_policy::provenance::tokens::whole(s));
        }
        who.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (mut reading, mut finding, mut adding) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..INDEXINGS {
        let t = Instant::now();
        let value: Value = serde_json::from_str(&text).unwrap();
        reading.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let observed = observe(&value, "mail.list_messages", &output, &[], 0);
        finding.push(t.elapsed().as_secs_f64() * 1e6);
        let mut index = Index::default();
        let t = Instant::now();
        index.add(&observed);
        adding.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let me = std::env::current_exe().unwrap();
    let mut echo = Lines::start(&me, &["--echo"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let node = root.join("tests/peers/node_modules/.bin/mcp-server-everything");
    let mut everything = node.exists().then(|| {
        let mut server = Lines::start(&node, &["stdio"]);
        server.trip(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#);
        server.input.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n").unwrap();
        server
    });
    // `echo` of server-everything answers "Echo: <message>": the message is the mail's text.
    let message = serde_json::to_string(&text).unwrap();
    let echo_call = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"message":{message}}}}}}}"#
    );
    let line = serde_json::to_string(&mail).unwrap();
    let (mut indexed, mut echoed, mut through_node) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..INDEXINGS.max(TRIPS) {
        // A fresh index every 50 results, as a session's would be bounded.
        let mut index = Index::default();
        let t = Instant::now();
        std::hint::black_box(index_once(&mut index));
        indexed.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        std::hint::black_box(echo.trip(&line));
        echoed.push(t.elapsed().as_secs_f64() * 1e6);
        if let Some(server) = everything.as_mut() {
            let t = Instant::now();
            let answer = server.trip(&echo_call);
            through_node.push(t.elapsed().as_secs_f64() * 1e6);
            if n == 0 {
                assert!(
                    answer.len() > 64 * 1024,
                    "{}",
                    &answer[..answer.len().min(300)]
                );
            }
        }
    }
    let indexed = p50(indexed);
    println!(
        "\nindexing a 64 KiB result ({} bytes of JSON, {found} values), p50 of {INDEXINGS} interleaved with the round trips\n",
        text.len()
    );
    println!("| | p50 µs | indexing vs it |");
    println!("|---|---|---|");
    println!("| indexing (read the JSON, find, normalize, add) | {indexed:.0} | – |");
    println!("| of which reading the JSON | {:.0} | |", p50(reading));
    println!(
        "| of which finding and normalizing the values | {:.0} | |",
        p50(finding)
    );
    println!(
        "| of which adding them to a session's index | {:.0} | |",
        p50(adding)
    );
    println!(
        "| (alone: the values inside the {} strings' text; each whole string's key) | {:.0}; {:.0} | |",
        strings.len(),
        p50(tok),
        p50(who)
    );
    let echoed = p50(echoed);
    println!(
        "| bare stdio round trip of the 64 KiB line (a child echoing lines) | {echoed:.0} | {:.2}× |",
        indexed / echoed
    );
    if through_node.is_empty() {
        println!("SKIPPED: node server-everything is not installed (`npm ci` in tests/peers)");
    } else {
        let node = p50(through_node);
        println!(
            "| stdio round trip through node server-everything `echo` of the 64 KiB text | {node:.0} | {:.2}× |",
            indexed / node
        );
    }
}
