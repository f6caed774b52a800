//! The audit trail end to end: every decision and every forwarded call's outcome is in a
//! trail `tollgate audit verify` accepts, with what the credential says but never the token,
//! and the arguments the catalog marks hidden; an edit is found at its record; a trail that
//! cannot be written stops Tollgate from starting, or refuses calls once it fails; and a
//! Tollgate killed during a burst of calls leaves every forwarded call's decision behind. The
//! admin endpoint's `/metrics` counts the same decisions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use support::*;
use tollgate_proxy::Config;

/// The trail's files in `dir`, in order (beside them are only the lanes' lock files).
fn trail_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

fn records(dir: &Path) -> Vec<Value> {
    trail_files(dir)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A Prometheus text exposition as `series → value`, failing on any line that is not a
/// comment or a sample.
fn prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {l}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn verify(dir: &Path, state: &Path, extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(tollgate_bin())
        .args(["audit", "verify", dir.to_str().unwrap(), "--state"])
        .arg(state)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A pack where reads are allowed, `add` is a write allowed only for small numbers, `pid` is
/// an admin call no grant here carries (so it is hidden), and `echo`'s `text` is hidden from
/// reviewers.
fn pack(dir: &Path) {
    reads_pack(
        dir,
        r#"@id("small-writes") permit (principal, action == Action::"write", resource) when { context.grant.present };
@id("no-big-sums") @reason("sums above 10 are not allowed here") forbid (principal, action == Action::"write", resource) when { context.args has a && context.args.a > 10 };"#,
    );
    std::fs::write(
        dir.join("pack.toml"),
        "purposes = [\"work\"]\n[[tool]]\ntool = \"echo\"\nclass = \"read\"\nredact = [\"text\"]\n[[tool]]\ntool = \"add\"\nclass = \"write\"\n[[tool]]\ntool = \"pid\"\nclass = \"admin\"\n[[tool]]\ntool = \"*\"\nclass = \"read\"\n",
    )
    .unwrap();
}

#[tokio::test]
async fn every_decision_and_outcome_is_in_a_trail_that_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (pack_dir, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    pack(&pack_dir);
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, headers) = recording_fixture(&stop).await;
    let shipped = tmp.path().join("shipped");
    let config = Config::parse(&format!(
        "{head}[audit]\ncopy_dir = \"{shipped}\"\n[[upstream]]\nname = \"fx\"\nurl = \"http://{addr}/mcp\"\ncredential = {{ mode = \"mint\", audience = \"https://fx.test\" }}\n",
        head = guarded_toml(&pack_dir, &state),
        shipped = shipped.display(),
    ))
    .unwrap();
    let grant = tollgate_mint::GrantSigner::load_or_create(&state)
        .unwrap()
        .sign(&tollgate_policy::Grant {
            agent: Some("auditor-agent".into()),
            ..root_grant(
                "work",
                [
                    tollgate_policy::ActionClass::Read,
                    tollgate_policy::ActionClass::Write,
                ],
            )
        })
        .unwrap();
    let g = guarded(config, None).await;
    let agent = agent_with_grant(&g.url, &grant).await;
    let said = agent
        .call_tool(call("echo", json!({"text": "the launch code is 0000"})))
        .await
        .unwrap();
    assert_eq!(text_of(&said), "the launch code is 0000");
    let refused = agent
        .call_tool(call("add", json!({"a": 100, "b": 2})))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let hidden = agent.call_tool(call("pid", json!({}))).await;
    assert!(hidden.is_err(), "{hidden:?}");
    agent.cancel().await.unwrap();

    // The same calls, counted on the admin endpoint's `/metrics`. A refusal's record is not
    // waited for before the agent hears it, so the trail's count catches up within moments:
    // 7 lines (three decisions, an outcome, the two tools and the grant they name). The allowed
    // call's decision was written before it went ahead and is synced within `sync_within_ms`,
    // after the opening record's own sync: two syncs at least, once the group commit is due.
    let mut text = String::new();
    for _ in 0..200 {
        text = reqwest::get(format!("{}/metrics", g.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let now = prometheus(&text);
        if now["tollgate_audit_records_total"] >= 7.0 && now["tollgate_audit_syncs_total"] >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let metrics = prometheus(&text);
    for (line, want) in [
        (
            r#"tollgate_decisions_total{decision="allow",upstream="fx",tool="echo"}"#,
            1.0,
        ),
        (
            r#"tollgate_decisions_total{decision="deny",upstream="fx",tool="add"}"#,
            1.0,
        ),
        (
            r#"tollgate_decisions_total{decision="hide",upstream="fx",tool="pid"}"#,
            1.0,
        ),
        ("tollgate_decision_seconds_count", 3.0),
        ("tollgate_call_seconds_count", 1.0),
        ("tollgate_approvals_pending", 0.0),
        ("tollgate_audit_failed", 0.0),
    ] {
        assert_eq!(metrics.get(line), Some(&want), "{line} in\n{text}");
    }
    assert_eq!(metrics["tollgate_audit_records_total"], 7.0, "{text}");
    assert!(
        metrics["tollgate_audit_write_seconds_count"] >= 1.0,
        "{text}"
    );
    assert!(metrics["tollgate_audit_syncs_total"] >= 2.0, "{text}");
    assert_eq!(
        metrics[r#"tollgate_decision_seconds_bucket{le="+Inf"}"#], 3.0,
        "cumulative buckets end at the count"
    );
    g.proxy.shutdown().await;

    let dir = state.join("audit");
    let all = records(&dir);
    let decisions: Vec<&Value> = all.iter().filter(|r| r["kind"] == "decision").collect();
    assert_eq!(decisions.len(), 3, "{all:#?}");
    let allowed = decisions.iter().find(|r| r["tool"] == "echo").unwrap();
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["agent"], "auditor-agent");
    assert_eq!(allowed["upstream"], "fx");
    assert_eq!(allowed["class"], "read");
    assert_eq!(allowed["arguments"], json!({"text": "[redacted]"}));
    // The digest is of the arguments as called, not as the record shows them.
    assert_eq!(
        allowed["arguments_sha256"],
        tollgate_mint::jcs::digest(&json!({"text": "the launch code is 0000"}))
    );
    assert_eq!(allowed["aud"], "https://fx.test");
    assert!(allowed["jti"].as_str().is_some() && allowed["exp"].as_i64().is_some());
    let denied = decisions.iter().find(|r| r["tool"] == "add").unwrap();
    assert_eq!(
        (denied["decision"].clone(), denied["policies"].clone()),
        (json!("deny"), json!(["no-big-sums"]))
    );
    assert_eq!(
        denied["arguments_sha256"],
        tollgate_mint::jcs::digest(&json!({"b": 2, "a": 100}))
    );
    // Nothing in them is marked `redact`: kept as called.
    assert_eq!(denied["arguments"], json!({"a": 100, "b": 2}));
    let probed = decisions.iter().find(|r| r["tool"] == "pid").unwrap();
    assert_eq!(
        probed["decision"], "hide",
        "calling a hidden tool is recorded"
    );
    // The allowed call's outcome, tied to its decision.
    let outcome = all.iter().find(|r| r["kind"] == "outcome").unwrap();
    assert_eq!(outcome["decision_id"], allowed["decision_id"]);
    assert_eq!(outcome["outcome"], "ok");
    assert!(outcome["latency_us"].as_u64().is_some());
    // Decided before forwarded: the decision record comes first.
    let position = |r: &Value| all.iter().position(|x| x == r).unwrap();
    assert!(position(allowed) < position(outcome));
    // Never the token, never the hidden value.
    let token = headers
        .lock()
        .unwrap()
        .iter()
        .find_map(|h| {
            h.get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .unwrap();
    let raw: String = trail_files(&dir)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(!raw.contains(token.trim_start_matches("Bearer ")));
    assert!(!raw.contains("launch code"));
    assert!(!raw.contains(&grant), "nor the grant");

    // The copy for log shippers holds the same lines, in a file per day.
    let copied: String = std::fs::read_dir(&shipped)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            assert!(
                path.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("tollgate-audit-20"),
                "{path:?}"
            );
            std::fs::read_to_string(path).unwrap()
        })
        .collect();
    assert_eq!(copied, raw, "the copy is the trail, line for line");
    // Not on stdout when stdout is the MCP stream.
    let refused = Config::parse("[front]\nstdio = true\n[audit]\ncopy = \"stdout\"\n[[upstream]]\nname = \"x\"\ncommand = \"x\"\n")
        .unwrap_err();
    assert!(refused.to_string().contains("audit.copy"), "{refused}");

    // Closed cleanly: it verifies.
    let (ok, out) = verify(&dir, &state, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("the trail is intact"), "{out}");
    // An edited decision is found at its record.
    let file = trail_files(&dir).into_iter().next().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let seq = denied["seq"].as_u64().unwrap();
    std::fs::write(
        &file,
        text.replace(r#""decision":"deny""#, r#""decision":"allow""#),
    )
    .unwrap();
    let (ok, out) = verify(&dir, &state, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("record {seq}: altered")), "{out}");
    // Another state folder's key does not vouch for it.
    let other = tmp.path().join("other");
    tollgate_mint::GrantSigner::load_or_create_named(&other, tollgate_mint::AUDIT_KEY).unwrap();
    std::fs::write(&file, text).unwrap();
    let (ok, out) = verify(&dir, &other, &[]);
    assert!(!ok && out.contains("signature does not verify"), "{out}");
}

/// `pack`, with the bound on sums at `limit`.
fn pack_with_limit(dir: &Path, limit: u32) {
    pack(dir);
    std::fs::write(
        dir.join("rules.cedar"),
        std::fs::read_to_string(dir.join("rules.cedar"))
            .unwrap()
            .replace("context.args.a > 10", &format!("context.args.a > {limit}")),
    )
    .unwrap();
}

fn replay(trail: &Path, pack: &Path, extra: &[&str]) -> (std::process::Output, Value) {
    let out = std::process::Command::new(tollgate_bin())
        .args(["policy", "replay", "--audit"])
        .arg(trail)
        .arg("--policies")
        .arg(pack)
        .args(["--format", "json"])
        .args(extra)
        .output()
        .unwrap();
    let summary = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out, summary)
}

#[tokio::test]
async fn a_recorded_session_replayed_under_another_pack_shows_exactly_its_flips() {
    let tmp = tempfile::tempdir().unwrap();
    let (live, state) = (tmp.path().join("live"), tmp.path().join("state"));
    pack(&live);
    let config = Config::parse(&format!(
        "{head}{upstream}",
        head = guarded_toml(&live, &state),
        upstream = stdio_fixture_upstream("fx"),
    ))
    .unwrap();
    let grant = read_write_grant(&state);
    let g = guarded(config, None).await;
    let agent = agent_with_grant(&g.url, &grant).await;
    // Allowed: 1, 5, 9 and 10; denied: 11 and 100. And a read with a hidden argument.
    for a in [1, 5, 9, 10, 11, 100] {
        let result = agent
            .call_tool(call("add", json!({"a": a, "b": 1})))
            .await
            .unwrap();
        assert_eq!(result.is_error == Some(true), a > 10, "{a}: {result:?}");
    }
    agent
        .call_tool(call("echo", json!({"text": "kept from reviewers"})))
        .await
        .unwrap();
    agent.cancel().await.unwrap();
    g.proxy.shutdown().await;
    let trail = state.join("audit");

    // Under the very pack that decided them, nothing changes: the replay is exact.
    let (out, same) = replay(&trail, &live, &["--fail-on-change"]);
    assert!(out.status.success(), "{same:#}");
    assert_eq!(
        (
            same["decisions"].clone(),
            same["replayed"].clone(),
            same["changed"].clone()
        ),
        (json!(7), json!(7), json!(0)),
        "{same:#}"
    );
    assert_eq!(same["same_version_differences"], 0, "{same:#}");
    // The read's hidden argument is not in the trail: its replay says it is inexact.
    assert_eq!(same["inexact"], 1, "{same:#}");

    // A damaged line (not even UTF-8) is counted, and the rest is replayed all the same.
    let damaged = tmp.path().join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    for file in trail_files(&trail) {
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.extend_from_slice(b"{\"kind\":\"decision\",\"a\":\"\xff\xfe\"}\n");
        std::fs::write(damaged.join(file.file_name().unwrap()), bytes).unwrap();
    }
    let (out, read) = replay(&damaged, &live, &[]);
    assert!(out.status.success(), "{read:#}");
    assert_eq!(
        (read["replayed"].clone(), read["unreadable_lines"].clone()),
        (json!(7), json!(trail_files(&trail).len())),
        "{read:#}"
    );

    // Tightened to sums above 4: exactly the calls with 5, 9 and 10 flip to deny.
    let tight = tmp.path().join("tight");
    pack_with_limit(&tight, 4);
    let (out, flipped) = replay(&trail, &tight, &["--fail-on-change"]);
    assert_eq!(out.status.code(), Some(3), "a change fails the gate");
    assert_eq!(flipped["changed"], 3, "{flipped:#}");
    assert_eq!(flipped["transitions"], json!({"allow → deny": 3}));
    let changes = flipped["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{flipped:#}");
    let change = &changes[0];
    assert_eq!(
        (
            change["tool"].clone(),
            change["before"].clone(),
            change["after"].clone(),
            change["count"].clone(),
            change["inexact"].clone(),
        ),
        (
            json!("add"),
            json!(["small-writes"]),
            json!(["no-big-sums"]),
            json!(3),
            json!(0)
        ),
        "{flipped:#}"
    );
    let examples: Vec<i64> = change["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["arguments"]["a"].as_i64().unwrap())
        .collect();
    assert_eq!(examples, [5, 9, 10]);
    assert_eq!(
        change["examples"][0]["after"]["reasons"],
        json!(["sums above 10 are not allowed here"])
    );

    // Loosened to sums above 50: only 11 flips back to allow; 100 stays denied.
    let loose = tmp.path().join("loose");
    pack_with_limit(&loose, 50);
    let (_, loosened) = replay(&trail, &loose, &[]);
    assert_eq!(
        loosened["transitions"],
        json!({"deny → allow": 1}),
        "{loosened:#}"
    );
    assert_eq!(
        loosened["changes"][0]["examples"][0]["arguments"],
        json!({"a": 11, "b": 1})
    );

    // The text report says the same to a person.
    let text = std::process::Command::new(tollgate_bin())
        .args(["policy", "replay", "--audit"])
        .arg(&trail)
        .arg("--policies")
        .arg(&tight)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("changed:   3 (allow → deny: 3)"), "{text}");
    assert!(text.contains("allow → deny  add  3 call(s)"), "{text}");

    // One recorded decision explained under the tightened pack.
    let nine = records(&trail)
        .into_iter()
        .find(|r| r["kind"] == "decision" && r["arguments"]["a"] == 9)
        .unwrap();
    let explained = std::process::Command::new(tollgate_bin())
        .args(["policy", "explain"])
        .arg(&tight)
        .arg("--audit")
        .arg(&trail)
        .args(["--decision", nine["decision_id"].as_str().unwrap()])
        .args(["--format", "json"])
        .output()
        .unwrap();
    let explained: Value = serde_json::from_slice(&explained.stdout).unwrap();
    assert_eq!(explained["recorded"]["decision"], "allow");
    assert_eq!(
        (
            explained["decision"].clone(),
            explained["determining"].clone()
        ),
        (json!("deny"), json!(["no-big-sums"]))
    );
    // By record number too.
    let by_seq = std::process::Command::new(tollgate_bin())
        .args(["policy", "explain"])
        .arg(&live)
        .arg("--audit")
        .arg(&trail)
        .args(["--decision", &nine["seq"].to_string()])
        .output()
        .unwrap();
    let by_seq = String::from_utf8_lossy(&by_seq.stdout);
    assert!(
        by_seq.contains("recorded: allow by small-writes"),
        "{by_seq}"
    );
    assert!(by_seq.contains("decision: allow"), "{by_seq}");

    // A trail file taken alone still replays: each holds the definitions it names.
    assert!(
        std::fs::read_to_string(trail_files(&trail).into_iter().next().unwrap())
            .unwrap()
            .contains(r#""kind":"grant""#)
    );
}

/// The fixture guarded by the pack in `live`, with the one in `shadow` beside it.
fn shadowed_config(live: &Path, shadow: &Path, state: &Path) -> Config {
    Config::parse(&format!(
        "{head}{upstream}",
        head = guarded_toml(live, state).replace(
            "[grants]",
            &format!("shadow = \"{}\"\n[grants]", shadow.display())
        ),
        upstream = stdio_fixture_upstream("fx"),
    ))
    .unwrap()
}

#[tokio::test]
async fn a_shadow_pack_decides_beside_the_live_one_and_enforces_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (live, shadow, state) = (
        tmp.path().join("live"),
        tmp.path().join("shadow"),
        tmp.path().join("state"),
    );
    pack(&live);
    // The candidate refuses sums above 4 where the live pack refuses those above 10.
    pack_with_limit(&shadow, 4);
    let config = shadowed_config(&live, &shadow, &state);
    let grant = read_write_grant(&state);
    let g = guarded(config, None).await;
    let agent = agent_with_grant(&g.url, &grant).await;
    // The live pack decides: 2 and 7 go through although the shadow would refuse 7.
    for (a, sum) in [(2, "3"), (7, "8")] {
        let result = agent
            .call_tool(call("add", json!({"a": a, "b": 1})))
            .await
            .unwrap();
        assert_eq!(text_of(&result), sum, "{result:?}");
    }
    let refused = agent
        .call_tool(call("add", json!({"a": 70, "b": 1})))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    agent.cancel().await.unwrap();
    let text = reqwest::get(format!("{}/metrics", g.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = prometheus(&text);
    for (line, want) in [
        (
            r#"tollgate_shadow_decisions_total{live="allow",shadow="allow"}"#,
            1.0,
        ),
        (
            r#"tollgate_shadow_decisions_total{live="allow",shadow="deny"}"#,
            1.0,
        ),
        (
            r#"tollgate_shadow_decisions_total{live="deny",shadow="deny"}"#,
            1.0,
        ),
        (
            r#"tollgate_shadow_differences_total{upstream="fx",tool="add"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metrics.get(line), Some(&want), "{line} in\n{text}");
    }
    g.proxy.shutdown().await;

    // The one difference is in the trail, on its decision; the others carry no shadow.
    let decisions: Vec<Value> = records(&state.join("audit"))
        .into_iter()
        .filter(|r| r["kind"] == "decision")
        .collect();
    assert_eq!(decisions.len(), 3);
    let shadowed: Vec<&Value> = decisions
        .iter()
        .filter(|r| r.get("shadow").is_some())
        .collect();
    assert_eq!(shadowed.len(), 1, "{decisions:#?}");
    let seven = shadowed[0];
    assert_eq!(seven["arguments"]["a"], 7);
    assert_eq!(seven["decision"], "allow", "the live decision stands");
    assert_eq!(seven["shadow"]["decision"], "deny");
    assert_eq!(seven["shadow"]["policies"], json!(["no-big-sums"]));
    assert_ne!(seven["shadow"]["version"], seven["version"]);

    // A shadow pack that does not compile stops Tollgate before it serves, like the live one.
    std::fs::write(
        shadow.join("rules.cedar"),
        "permit (principal, action resource);",
    )
    .unwrap();
    let config = shadowed_config(&live, &shadow, &state);
    let refused = tollgate_guard::guard::PolicyGuard::new(&config);
    assert!(refused.is_err());
}

/// A collector on loopback: every OTLP/HTTP JSON body posted to `/v1/traces`.
async fn collector(
    stop: &tokio_util::sync::CancellationToken,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::{Router, routing::post};
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let kept = bodies.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let kept = kept.clone();
            async move {
                assert_eq!(headers["content-type"], "application/json");
                kept.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                "{}"
            }
        }),
    );
    (serve(app, stop).await, bodies)
}

/// Serves `app` on loopback until `stop`; its base URL.
async fn serve(app: axum::Router, stop: &tokio_util::sync::CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

// The collector runs on the test's runtime while shutdown waits for the last batch to be
// sent: it needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decided_calls_are_exported_as_opentelemetry_spans() {
    let tmp = tempfile::tempdir().unwrap();
    let (pack_dir, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    pack(&pack_dir);
    let stop = tokio_util::sync::CancellationToken::new();
    let (endpoint, bodies) = collector(&stop).await;
    let config = Config::parse(&format!(
        "{head}[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"guard-under-test\"\nexport_every_ms = 60000\n{upstream}",
        head = guarded_toml(&pack_dir, &state),
        upstream = stdio_fixture_upstream("fx"),
    ))
    .unwrap();
    let grant = read_write_grant(&state);
    let g = guarded(config, None).await;
    let agent = agent_with_grant(&g.url, &grant).await;
    // The agent's own trace: the allowed call's span joins it.
    let mut traced = call("add", json!({"a": 2, "b": 3}));
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.0.insert(
        "traceparent".into(),
        json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    traced.meta = Some(meta);
    assert_eq!(text_of(&agent.call_tool(traced).await.unwrap()), "5");
    let refused = agent
        .call_tool(call("add", json!({"a": 12345, "b": 1})))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    agent.cancel().await.unwrap();
    // Nothing is due for a minute: what is queued is sent at shutdown.
    assert!(bodies.lock().unwrap().is_empty());
    g.proxy.shutdown().await;

    let bodies = bodies.lock().unwrap().clone();
    stop.cancel();
    let resource = &bodies[0]["resourceSpans"][0]["resource"]["attributes"][0];
    assert_eq!(
        (
            resource["key"].clone(),
            resource["value"]["stringValue"].clone()
        ),
        (json!("service.name"), json!("guard-under-test"))
    );
    let spans: Vec<&Value> = bodies
        .iter()
        .flat_map(|b| {
            b["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
        })
        .collect();
    assert_eq!(spans.len(), 2, "{bodies:#?}");
    let attr = |span: &Value, key: &str| -> Value {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
            .unwrap_or(Value::Null)
    };
    let allowed = spans
        .iter()
        .find(|s| attr(s, "tollgate.decision")["stringValue"] == "allow")
        .unwrap();
    assert_eq!(allowed["name"], "tools/call add");
    assert_eq!(allowed["kind"], 2);
    assert_eq!(allowed["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(allowed["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(allowed["spanId"].as_str().unwrap().len(), 16);
    assert_eq!(attr(allowed, "tollgate.upstream")["stringValue"], "fx");
    assert_eq!(attr(allowed, "tollgate.outcome")["stringValue"], "ok");
    assert_eq!(
        attr(allowed, "tollgate.policies")["arrayValue"]["values"][0]["stringValue"],
        "small-writes"
    );
    let start: u128 = allowed["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u128 = allowed["endTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(end >= start);
    assert_eq!(allowed["status"]["code"], 0);
    let denied = spans
        .iter()
        .find(|s| attr(s, "tollgate.decision")["stringValue"] == "deny")
        .unwrap();
    assert_eq!(denied["status"], json!({"code": 2, "message": "denied"}));
    assert_eq!(
        denied["traceId"].as_str().unwrap().len(),
        32,
        "a trace of its own"
    );
    assert!(denied.get("parentSpanId").is_none());
    // The decision ids tie each span to its audit record; no argument is in a span.
    let trail = records(&state.join("audit"));
    for span in [allowed, denied] {
        let id = attr(span, "tollgate.decision_id")["stringValue"].clone();
        assert!(
            trail
                .iter()
                .any(|r| r["kind"] == "decision" && r["decision_id"] == id)
        );
    }
    let raw = serde_json::to_string(&bodies).unwrap();
    assert!(!raw.contains("12345") && !raw.contains(&grant));

    // A collector that is not an http(s) URL is refused at start, naming the field.
    let refused = Config::parse(&format!(
        "{head}[telemetry]\notlp_endpoint = \"collector:4318\"\n{upstream}",
        head = guarded_toml(&pack_dir, &state),
        upstream = stdio_fixture_upstream("fx"),
    ))
    .unwrap_err();
    assert!(
        refused.to_string().contains("telemetry.otlp_endpoint"),
        "{refused}"
    );
}

// A collector that redirects is not followed: spans go only where the operator said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_not_sent_where_a_collector_redirects() {
    use axum::{Router, response::Redirect, routing::post};
    let tmp = tempfile::tempdir().unwrap();
    let (pack_dir, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    pack(&pack_dir);
    let stop = tokio_util::sync::CancellationToken::new();
    let (elsewhere, bodies) = collector(&stop).await;
    let redirected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = redirected.clone();
    let target = format!("{elsewhere}/v1/traces");
    let app = Router::new().route(
        "/v1/traces",
        post(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let target = target.clone();
            async move { Redirect::temporary(&target) }
        }),
    );
    let endpoint = serve(app, &stop).await;
    let config = Config::parse(&format!(
        "{head}[telemetry]\notlp_endpoint = \"{endpoint}\"\nexport_every_ms = 60000\n{upstream}",
        head = guarded_toml(&pack_dir, &state),
        upstream = stdio_fixture_upstream("fx"),
    ))
    .unwrap();
    let grant = read_write_grant(&state);
    let g = guarded(config, None).await;
    let agent = agent_with_grant(&g.url, &grant).await;
    assert_eq!(
        text_of(
            &agent
                .call_tool(call("add", json!({"a": 2, "b": 3})))
                .await
                .unwrap()
        ),
        "5"
    );
    agent.cancel().await.unwrap();
    g.proxy.shutdown().await;
    stop.cancel();
    assert!(
        redirected.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the batch was sent to the configured collector"
    );
    assert!(
        bodies.lock().unwrap().is_empty(),
        "the redirect was followed"
    );
}

#[tokio::test]
async fn a_trail_that_cannot_be_written_stops_tollgate_or_refuses_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let (pack_dir, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    pack(&pack_dir);
    // Where the folder should be, a file: Tollgate does not start, and says why.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(tmp.path().join("blocked"), "").unwrap();
    let head = guarded_toml(&pack_dir, &state);
    let upstream = stdio_fixture_upstream("fx");
    let blocked = Config::parse(&format!(
        "{head}[audit]\ndir = \"{}\"\n{upstream}",
        tmp.path().join("blocked").display()
    ))
    .unwrap();
    let err = tollgate_guard::guard::PolicyGuard::new(&blocked).unwrap_err();
    assert!(err.to_string().contains("cannot be written"), "{err}");

    // Running, the trail's folder goes away: the next file cannot be made, and from then on
    // calls are refused.
    let dir = tmp.path().join("trail");
    let config = Config::parse(&format!(
        "{head}[audit]\ndir = \"{}\"\nrotate_bytes = 4096\n{upstream}",
        dir.display()
    ))
    .unwrap();
    let grant = tollgate_mint::GrantSigner::load_or_create(&state)
        .unwrap()
        .sign(&root_grant("work", [tollgate_policy::ActionClass::Read]))
        .unwrap();
    let g = guarded(config, None).await;
    let agent = agent_with_grant(&g.url, &grant).await;
    let first = agent.call_tool(call("whoami", json!({}))).await.unwrap();
    assert_ne!(first.is_error, Some(true), "{first:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    let mut refused = None;
    for _ in 0..100 {
        let answer = agent.call_tool(call("whoami", json!({}))).await.unwrap();
        if answer.is_error == Some(true) {
            refused = Some(text_of(&answer));
            break;
        }
    }
    let refused = refused.expect("calls are refused once the trail fails");
    assert!(
        refused.contains("record") && !refused.contains(&dir.display().to_string()),
        "the agent reads that decisions cannot be recorded, not where: {refused}"
    );
    let after = agent.call_tool(call("whoami", json!({}))).await.unwrap();
    assert!(
        text_of(&after).contains("cannot record its decisions"),
        "{after:?}"
    );
    agent.cancel().await.unwrap();
    g.proxy.shutdown().await;
}

#[tokio::test]
async fn a_tollgate_killed_mid_burst_leaves_every_forwarded_calls_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let (pack_dir, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    pack(&pack_dir);
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let received = tmp.path().join("received.log");
    let config = tmp.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[front.http]\nlisten = \"127.0.0.1:{port}\"\n[policy]\npack = \"{pack}\"\n[grants]\nstate_dir = \"{state}\"\n[[upstream]]\nname = \"fx\"\ncommand = \"{fixture}\"\nargs = [\"stdio\", \"fx\"]\nenv = {{ {meta_env} = \"{received}\" }}\ncredential = {{ mode = \"mint\", audience = \"https://fx.test\" }}\n",
            pack = pack_dir.display(),
            state = state.display(),
            fixture = fixture_bin().display(),
            meta_env = tollgate_testkit::fixture::META_LOG_ENV,
            received = received.display(),
        ),
    )
    .unwrap();
    let grant = tollgate_mint::GrantSigner::load_or_create(&state)
        .unwrap()
        .sign(&root_grant("work", [tollgate_policy::ActionClass::Read]))
        .unwrap();
    let mut tollgate = tokio::process::Command::new(tollgate_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "tollgate did not start listening");
    // Eight agents call as fast as they can until Tollgate dies under them.
    let mut burst = Vec::new();
    for n in 0..8 {
        let (url, grant) = (url.clone(), grant.clone());
        burst.push(tokio::spawn(async move {
            let agent = agent_with_grant(&url, &grant).await;
            for i in 0.. {
                let text = format!("agent {n} call {i}");
                if agent
                    .call_tool(call("echo", json!({ "text": text })))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    // Until the upstream has seen a good number of calls.
    for _ in 0..400 {
        let seen = std::fs::read_to_string(&received).map_or(0, |t| t.lines().count());
        if seen >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tollgate.start_kill().unwrap(); // SIGKILL
    tollgate.wait().await.unwrap();
    for agent in burst {
        agent.abort();
    }

    // Every call the upstream received carried a credential whose decision is in the trail.
    let trail: std::collections::HashSet<String> = records(&state.join("audit"))
        .iter()
        .filter(|r| r["kind"] == "decision")
        .filter_map(|r| r["jti"].as_str().map(str::to_owned))
        .collect();
    use base64::Engine;
    let forwarded: Vec<String> = std::fs::read_to_string(&received)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let meta: Value = serde_json::from_str(line).ok()?;
            let token = meta["io.tollgate/credential"].as_str()?.to_owned();
            let claims: Value = serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(token.split('.').nth(1)?)
                    .ok()?,
            )
            .ok()?;
            claims["jti"].as_str().map(str::to_owned)
        })
        .collect();
    assert!(
        forwarded.len() >= 100,
        "the burst reached the upstream: {}",
        forwarded.len()
    );
    let missing: Vec<&String> = forwarded.iter().filter(|j| !trail.contains(*j)).collect();
    assert!(
        missing.is_empty(),
        "{} forwarded calls have no decision record",
        missing.len()
    );
    // The trail is intact up to where it was cut: it only lacks its closing checkpoint.
    let (ok, out) = verify(&state.join("audit"), &state, &[]);
    assert!(!ok && out.contains("without a closing checkpoint"), "{out}");
    let (ok, out) = verify(&state.join("audit"), &state, &["--open"]);
    assert!(ok, "{out}");
}
