//! Policy end to end: the security team's commands on real packs and broken ones, and the
//! policy guard in front of a real MCP server with real grants over streamable HTTP (both the
//! fast path and rmcp's path).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::{path::Path, process::Output};

use rmcp::model::{CallToolRequestParams, RequestMetaObject};
use serde_json::{Value, json};
use support::*;
use tollgate_proxy::{Config, Proxy};

fn tollgate(args: &[&str]) -> Output {
    std::process::Command::new(tollgate_bin())
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn packs_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

#[test]
fn every_shipped_pack_checks_and_passes_its_cases_through_the_cli() {
    for pack in ["default", "filesystem-sandbox", "payments", "github"] {
        let dir = packs_dir().join(pack);
        let check = tollgate(&["policy", "check", dir.to_str().unwrap()]);
        assert!(check.status.success(), "{pack}: {}", text(&check));
        assert!(text(&check).contains("schema valid (strict)"));
        let test = tollgate(&["policy", "test", dir.to_str().unwrap()]);
        assert!(test.status.success(), "{pack}: {}", text(&test));
        assert!(text(&test).contains("case result: ok."), "{}", text(&test));
    }
}

fn write_pack(dir: &Path, policies: &str, cases: Option<&str>) {
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(
        dir.join("pack.toml"),
        "purposes = [\"work\"]\n[[tool]]\ntool = \"fx.echo\"\nclass = \"read\"\n[[tool]]\ntool = \"fx.add\"\nclass = \"write\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("rules.cedar"), policies).unwrap();
    if let Some(cases) = cases {
        std::fs::write(dir.join("tests/cases.toml"), cases).unwrap();
    }
}

#[test]
fn policy_explain_shows_every_policy_that_could_apply_and_what_decided() {
    let pack = packs_dir().join("default");
    let cases = pack.join("tests/default.toml");
    let out = tollgate(&[
        "policy",
        "explain",
        pack.to_str().unwrap(),
        cases.to_str().unwrap(),
        "after a secret was read, nothing is sent out",
    ]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("decision: deny"), "{shown}");
    assert!(
        shown.contains("determined by: no-egress-after-secret-read"),
        "{shown}"
    );
    let line = |id: &str| {
        shown
            .lines()
            .find(|l| l.starts_with("  ") && l.split_whitespace().any(|w| w == id))
            .unwrap_or_else(|| panic!("{id} not listed: {shown}"))
            .to_owned()
    };
    // The permit held, and the forbid that held won.
    assert!(
        line("egress-to-granted-hosts").starts_with("  + permit"),
        "{shown}"
    );
    assert!(
        !line("egress-to-granted-hosts").contains("determining"),
        "{shown}"
    );
    assert!(
        line("no-egress-after-secret-read").contains("holds, determining"),
        "{shown}"
    );
    assert!(line("call-rate").contains("does not hold"), "{shown}");
    // Reads' policies cannot apply to an egress call and are not listed.
    assert!(!shown.contains("read-within-grant"), "{shown}");

    let json = tollgate(&[
        "policy",
        "explain",
        pack.to_str().unwrap(),
        cases.to_str().unwrap(),
        "a read inside the grant is allowed",
        "--format",
        "json",
    ]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["decision"], "allow");
    assert_eq!(
        value["determining"],
        serde_json::json!(["read-within-grant"])
    );
    let considered = value["considered"].as_array().unwrap();
    let read = considered
        .iter()
        .find(|p| p["id"] == "read-within-grant")
        .unwrap();
    assert_eq!(
        (read["outcome"].clone(), read["determining"].clone()),
        (serde_json::json!("satisfied"), serde_json::json!(true))
    );
    assert!(
        considered
            .iter()
            .all(|p| p["outcome"] == "satisfied" || p["outcome"] == "not_satisfied")
    );

    let missing = tollgate(&[
        "policy",
        "explain",
        pack.to_str().unwrap(),
        cases.to_str().unwrap(),
        "no such case",
    ]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("no case named"),
        "{}",
        text(&missing)
    );
}

#[test]
fn policy_report_renders_each_tool_by_purpose_with_failing_cases_and_escaped_text() {
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("pack");
    write_pack(
        &pack,
        r#"@id("echo-ok") permit (principal, action == Action::"read", resource) when { context.grant.present };
@id("small-sums") @reason("sums <b>above</b> 10 need care") forbid (principal, action == Action::"write", resource) when { context.args has a && context.args.a > 10 };
@id("adds") permit (principal, action == Action::"write", resource) when { context.grant.present };"#,
        Some(
            r#"[[tool]]
name = "fx.echo"
upstream = "fx"
input_schema = { type = "object", properties = { text = { type = "string" } } }
[[tool]]
name = "fx.add"
upstream = "fx"
input_schema = { type = "object", properties = { a = { type = "integer" }, b = { type = "integer" } } }
[grant.g]
purpose = "work"
actions = ["read", "write"]
[[case]]
name = "echo"
tool = "fx.echo"
grant = "g"
arguments = { text = "hi" }
expect = "allow"
[[case]]
name = "a big sum"
tool = "fx.add"
grant = "g"
arguments = { a = 11, b = 1 }
expect = "allow"
"#,
        ),
    );
    std::fs::write(
        pack.join("pack.toml"),
        std::fs::read_to_string(pack.join("pack.toml"))
            .unwrap()
            .replace("purposes = [\"work\"]", "purposes = [\"work\", \"audit\"]"),
    )
    .unwrap();
    let page = tmp.path().join("report.html");
    let out = tollgate(&[
        "policy",
        "report",
        pack.to_str().unwrap(),
        "--out",
        page.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2 tool(s) by 2 purpose(s), 3 policies, 1 of 2 test case(s) passing"),
        "{}",
        text(&out)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    for tool in ["fx.echo", "fx.add"] {
        assert!(
            html.contains(&format!(r#"<tr class="tool" data-tool="{tool}">"#)),
            "{html}"
        );
    }
    // Each purpose gets the pack's answer for the tool's example call.
    assert!(
        html.contains(
            r#"<td class="deny" data-purpose="audit">denied<br><small>by small-sums</small>"#
        ),
        "{html}"
    );
    assert!(
        html.contains(
            r#"<td class="allow" data-purpose="work">allowed<br><small>by echo-ok</small>"#
        ),
        "{html}"
    );
    // The failing case is reported as failing, and nothing from the pack is taken as markup.
    assert!(
        html.contains(r#"<td class="fail">FAILS: expected allow, got deny"#),
        "{html}"
    );
    assert!(!html.contains("<b>above</b>"), "{html}");
    assert!(
        html.contains("sums &lt;b&gt;above&lt;/b&gt; 10 need care"),
        "{html}"
    );
    assert!(
        html.contains(r#"<section id="policy-small-sums">"#),
        "{html}"
    );
}

#[test]
fn policy_check_names_what_is_wrong_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("permit (principal, action resource);", "`rules.cedar`"),
        (
            "permit (principal, action, resource) when { context.no_such_field };",
            "do not fit the schema",
        ),
        (
            "@id(\"reads\") permit (principal, action == Action::\"read\", resource);\n@id(\"lockdown\") forbid (principal, action, resource);",
            "permit `reads` is shadowed: forbid `lockdown`",
        ),
        (
            "@id(\"add\") permit (principal, action == Action::\"read\", resource == Tool::\"fx.add\");",
            "policy `add` is unreachable",
        ),
    ];
    for (index, (policies, expected)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("p{index}"));
        write_pack(&dir, policies, None);
        let out = tollgate(&["policy", "check", dir.to_str().unwrap()]);
        assert!(!out.status.success(), "{policies}: {}", text(&out));
        assert!(text(&out).contains(expected), "{policies}: {}", text(&out));
    }
}

#[test]
fn policy_test_reports_each_case_and_fails_on_a_wrong_expectation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pack");
    write_pack(
        &dir,
        "@id(\"reads\") permit (principal, action == Action::\"read\", resource) when { context.grant.present };",
        Some(
            r#"
[[tool]]
name = "fx.echo"
[[tool]]
name = "fx.add"
[grant.g]
purpose = "work"
actions = ["read", "write"]

[[case]]
name = "echo is allowed"
tool = "fx.echo"
grant = "g"
expect = "allow"
policies = ["reads"]

[[case]]
name = "add is wrongly expected to be allowed"
tool = "fx.add"
grant = "g"
expect = "allow"
"#,
        ),
    );
    let out = tollgate(&["policy", "test", dir.to_str().unwrap()]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("echo is allowed ... ok"), "{shown}");
    assert!(
        shown.contains("add is wrongly expected to be allowed ... FAILED"),
        "{shown}"
    );
    assert!(
        shown.contains("expected allow, got deny (no policy allows `write` calls of `fx.add`)"),
        "{shown}"
    );
    assert!(shown.contains("1 passed; 1 failed"), "{shown}");

    std::fs::write(dir.join("tests/cases.toml"), "[[case]]\nname = 1\n").unwrap();
    let out = tollgate(&["policy", "test", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("tests/cases.toml"), "{}", text(&out));
}

/// The one permit most tests need: reads under a grant.
const READS: &str = "@id(\"reads\") permit (principal, action == Action::\"read\", resource) when { context.grant.present };";

/// A pack of `policies`, a state folder with the grant key, a fixture, and Tollgate deciding in
/// front of it over HTTP (`grants` is added to the config's `[grants]` table).
struct Scene {
    tmp: tempfile::TempDir,
    fixture: FixtureServer,
    proxy: Proxy,
    url: String,
}

impl Scene {
    async fn new(policies: &str, grants: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        write_pack(&tmp.path().join("pack"), policies, None);
        // The key exists before Tollgate starts, as it does when grants are issued first.
        tollgate_mint::GrantSigner::load_or_create(&tmp.path().join("state")).unwrap();
        let fixture = fixture_http("fx").await;
        let config = Config::parse(&format!(
            "[front.http]\nlisten = \"127.0.0.1:0\"\n[policy]\npack = \"{}\"\n[grants]\nstate_dir = \"{}\"\n{grants}\n[naming]\nprefix = \"always\"\n[[upstream]]\nname = \"fx\"\nurl = \"{}\"\n",
            tmp.path().join("pack").display(),
            tmp.path().join("state").display(),
            fixture.url
        ))
        .unwrap();
        let front = config.fronts.http.clone().unwrap();
        let proxy = tollgate_guard::start(config).await;
        let server = proxy.serve_http(&front).await.unwrap();
        let url = format!("http://{}/mcp", server.local_addr);
        Self {
            tmp,
            fixture,
            proxy,
            url,
        }
    }

    fn state(&self) -> std::path::PathBuf {
        self.tmp.path().join("state")
    }

    fn issue(&self, args: &[&str]) -> String {
        issue(&self.state(), args)
    }

    async fn stop(self) {
        self.proxy.shutdown().await;
    }
}

fn issue(state: &Path, args: &[&str]) -> String {
    let mut all = vec!["grant", "issue", "--state", state.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = tollgate(&all);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn echo(text: &str) -> CallToolRequestParams {
    CallToolRequestParams::new("fx.echo")
        .with_arguments(json!({"text": text}).as_object().cloned().unwrap())
}

fn result_text(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_value(result).unwrap()["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_grants_call_limit_holds_across_calls() {
    let scene = Scene::new(READS, "").await;
    let token = scene.issue(&["--purpose", "work", "--action", "read", "--max-calls", "2"]);
    let agent = agent_with_grant(&scene.url, &token).await;
    for n in 0..2 {
        let r = agent.call_tool(echo(&format!("call {n}"))).await.unwrap();
        assert_ne!(r.is_error, Some(true), "{}", result_text(&r));
        assert_eq!(result_text(&r), format!("call {n}"));
    }
    let third = agent.call_tool(echo("call 2")).await.unwrap();
    assert_eq!(third.is_error, Some(true));
    assert!(
        result_text(&third).contains("allows at most 2 calls"),
        "{}",
        result_text(&third)
    );
    // A second session under the same grant shares its limit.
    let other = agent_with_grant(&scene.url, &token).await;
    let fourth = other.call_tool(echo("call 3")).await.unwrap();
    assert_eq!(fourth.is_error, Some(true));
    agent.cancel().await.unwrap();
    other.cancel().await.unwrap();
    scene.stop().await;
}

#[tokio::test]
async fn approvals_and_justifications_reach_the_decision() {
    let scene = Scene::new(
        r#"
@id("reads") permit (principal, action == Action::"read", resource)
  when { context.grant.present && context.intent.justification like "ticket *" };
@id("writes") @needs_approval @reason("adding needs a second pair of eyes")
permit (principal, action == Action::"write", resource) when { context.grant.present };
"#,
        "",
    )
    .await;
    let token = scene.issue(&["--purpose", "work", "--action", "read", "--action", "write"]);
    let agent = agent_with_grant(&scene.url, &token).await;

    let unjustified = agent.call_tool(echo("hi")).await.unwrap();
    assert_eq!(unjustified.is_error, Some(true));
    assert!(result_text(&unjustified).contains("no policy allows `read` calls of `fx.echo`"));

    let mut justified = echo("hi");
    let mut meta = RequestMetaObject::new();
    meta.0.insert(
        "tollgate/justification".into(),
        json!("ticket 1234 asks for it"),
    );
    justified.meta = Some(meta);
    let allowed = agent.call_tool(justified).await.unwrap();
    assert_eq!(result_text(&allowed), "hi");
    // The justification is Tollgate's, not the tool's: it is not forwarded.
    let forwarded = scene
        .fixture
        .state
        .last_meta
        .lock()
        .unwrap()
        .clone()
        .unwrap_or(Value::Null);
    assert!(
        forwarded.get("tollgate/justification").is_none(),
        "{forwarded}"
    );

    let add = CallToolRequestParams::new("fx.add")
        .with_arguments(json!({"a": 1, "b": 2}).as_object().cloned().unwrap());
    let gated = agent.call_tool(add).await.unwrap();
    assert_eq!(gated.is_error, Some(true));
    assert_eq!(
        result_text(&gated),
        "needs approval: adding needs a second pair of eyes; no approvers are configured on this Tollgate and policy does not let the user at the agent approve it, so the call is denied"
    );
    agent.cancel().await.unwrap();
    scene.stop().await;
}

#[tokio::test]
async fn one_session_runs_under_one_grant() {
    let scene = Scene::new(READS, "").await;
    let first = scene.issue(&["--purpose", "work", "--action", "read"]);
    let second = scene.issue(&["--purpose", "work", "--action", "read"]);

    let http = reqwest::Client::new();
    let post = |token: &str, body: Value, session: Option<&str>| {
        let mut request = http
            .post(&scene.url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .bearer_auth(token)
            .json(&body);
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.send()
    };
    let init = post(
        &first,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}),
        None,
    )
    .await
    .unwrap();
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = init.text().await.unwrap();
    post(
        &first,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        Some(&session),
    )
    .await
    .unwrap();
    let call = |id: u64| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "fx.echo", "arguments": {"text": "x"}}});
    let ok = post(&first, call(2), Some(&session))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ok.contains("\"text\":\"x\""), "{ok}");
    let swapped = post(&second, call(3), Some(&session))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        swapped.contains("-32001") && swapped.contains("this session runs under grant"),
        "{swapped}"
    );
    scene.stop().await;
}

#[tokio::test]
async fn a_pack_that_does_not_compile_refuses_every_call_instead_of_opening() {
    let scene = Scene::new(
        "permit (principal, action, resource) when { context.nope };",
        "",
    )
    .await;
    let token = scene.issue(&["--purpose", "work", "--action", "read"]);
    let agent = agent_with_grant(&scene.url, &token).await;
    assert!(agent.list_all_tools().await.unwrap().is_empty());
    let refused = agent.call_tool(echo("x")).await.unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(
        scene.fixture.state.last_meta.lock().unwrap().is_none(),
        "nothing was forwarded"
    );
    agent.cancel().await.unwrap();
    // The binary does not start on it at all.
    let config = scene.tmp.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[front]\nstdio = true\n[policy]\npack = \"{}\"\n[[upstream]]\nname = \"fx\"\nurl = \"{}\"\n",
            scene.tmp.path().join("pack").display(),
            scene.fixture.url
        ),
    )
    .unwrap();
    let out = tollgate(&["run", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is not valid"), "{}", text(&out));
    scene.stop().await;
}

#[tokio::test]
async fn a_stateless_2026_agent_is_decided_per_request_on_rmcps_path() {
    let scene = Scene::new(READS, "").await;
    let token = scene.issue(&["--purpose", "work", "--action", "read"]);

    let agent = agent_modern_with(&scene.url, TestAgent::new("modern"), Some(&token)).await;
    let names: Vec<String> = agent
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(names.contains(&"fx.echo".to_owned()), "{names:?}");
    assert!(
        !names.contains(&"fx.add".to_owned()),
        "a write tool is hidden: {names:?}"
    );
    let r = agent
        .call_tool(call("fx.echo", json!({"text": "modern"})))
        .await
        .unwrap();
    assert_eq!(text_of(&r), "modern");
    let hidden = agent
        .call_tool(call("fx.add", json!({"a": 1, "b": 2})))
        .await
        .unwrap_err()
        .to_string();
    assert!(hidden.contains("unknown tool `fx.add`"), "{hidden}");
    agent.cancel().await.unwrap();

    let anonymous = agent_modern_with(&scene.url, TestAgent::new("nobody"), None).await;
    let refused = anonymous
        .call_tool(call("fx.echo", json!({"text": "x"})))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("no grant was presented"), "{refused}");
    anonymous.cancel().await.unwrap();
    scene.stop().await;
}

#[tokio::test]
async fn anonymous_sessions_run_under_the_packs_anonymous_rules_when_configured() {
    let scene = Scene::new(
        r#"
@id("anonymous-echo") permit (principal, action == Action::"read", resource == Tool::"fx.echo")
  when { !context.grant.present };
"#,
        "anonymous = true",
    )
    .await;
    let forged = scene
        .issue(&["--purpose", "work", "--action", "read"])
        .replace('.', ".x");

    let anonymous = agent_modern_with(&scene.url, TestAgent::new("nobody"), None).await;
    let r = anonymous
        .call_tool(call("fx.echo", json!({"text": "hello"})))
        .await
        .unwrap();
    assert_eq!(text_of(&r), "hello");
    let add = anonymous
        .call_tool(call("fx.add", json!({"a": 1, "b": 2})))
        .await
        .unwrap_err()
        .to_string();
    assert!(add.contains("unknown tool"), "{add}");
    anonymous.cancel().await.unwrap();

    // A bad grant is not quietly downgraded to anonymous: the agent learns it is bad.
    let bad = agent_modern_with(&scene.url, TestAgent::new("bad"), Some(&forged)).await;
    let refused = bad
        .call_tool(call("fx.echo", json!({"text": "x"})))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("malformed") || refused.contains("not signed"),
        "{refused}"
    );
    bad.cancel().await.unwrap();
    scene.stop().await;
}

#[test]
fn grant_inspect_shows_the_claims_and_whether_they_would_be_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let token = issue(
        &state,
        &[
            "--purpose",
            "work",
            "--action",
            "read",
            "--resource",
            "customer:42",
            "--ttl",
            "5m",
        ],
    );
    let out = tollgate(&[
        "grant",
        "inspect",
        &token,
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let claims: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["resources"], json!(["customer:42"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert!(text(&out).contains("valid: signed by this Tollgate's key"));

    let other = tmp.path().join("other");
    issue(&other, &["--purpose", "work", "--action", "read"]);
    let out = tollgate(&[
        "grant",
        "inspect",
        &token,
        "--state",
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("refused: the grant is not signed by this Tollgate's key"));

    let out = tollgate(&[
        "grant",
        "narrow",
        &token,
        "--state",
        state.to_str().unwrap(),
        "--resource",
        "customer:*",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("can only take away"), "{}", text(&out));
    for bad in [
        ["--ttl", "8d"],
        ["--action", "fly"],
        ["--resource", "nokind"],
    ] {
        let mut args = vec![
            "grant",
            "issue",
            "--state",
            state.to_str().unwrap(),
            "--purpose",
            "work",
        ];
        args.extend_from_slice(&bad);
        if bad[0] != "--action" {
            args.extend_from_slice(&["--action", "read"]);
        }
        let out = tollgate(&args);
        assert!(!out.status.success(), "{bad:?}");
        assert!(text(&out).contains(bad[0]), "{bad:?}: {}", text(&out));
    }
}

#[test]
fn grant_issue_takes_finer_constraints_and_approve_entries_and_narrowing_keeps_the_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let token = issue(
        &state,
        &[
            "--purpose",
            "work",
            "--action",
            "payment",
            "--resource",
            "payee:GB29NWBK60161331926819",
            "--approve",
            "payee:*",
            "--constraint",
            "bank.pay:amount?<=100",
            "--constraint",
            "bank.pay:lines[].amount<=50",
            "--constraint",
            "bank.pay:note=absent",
        ],
    );
    let out = tollgate(&[
        "grant",
        "inspect",
        &token,
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let claims: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["approve"], json!(["payee:*"]));
    assert_eq!(
        claims["constraints"],
        json!([
            {"tool": "bank.pay", "argument": "amount", "optional": true, "max": 100.0},
            {"tool": "bank.pay", "argument": "lines", "each": {"field": "amount"}, "max": 50.0},
            {"tool": "bank.pay", "argument": "note", "absent": true},
        ])
    );
    // A child that names every payee plainly would let them go ahead without the person the
    // parent asks for.
    let out = tollgate(&[
        "grant",
        "narrow",
        &token,
        "--state",
        state.to_str().unwrap(),
        "--resource",
        "payee:GB29NWBK60161331926819",
        "--resource",
        "payee:DE*",
        "--approve",
        "payee:FR*",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("calls on `payee:DE*` wait for a person under the parent"),
        "{}",
        text(&out)
    );
    let out = tollgate(&[
        "grant",
        "narrow",
        &token,
        "--state",
        state.to_str().unwrap(),
        "--approve",
        "payee:DE*",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for bad in [
        "bank.pay:amount?=absent",
        "bank.pay:lines[]x<=1",
        "bank.pay:amount<=lots",
    ] {
        let out = tollgate(&[
            "grant",
            "issue",
            "--state",
            state.to_str().unwrap(),
            "--purpose",
            "work",
            "--action",
            "read",
            "--constraint",
            bad,
        ]);
        assert!(!out.status.success(), "{bad}");
        assert!(
            text(&out).contains("`--constraint`: expected"),
            "{bad}: {}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn a_stdio_agent_can_hand_its_grant_over_on_the_first_line_of_stdin() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let (pack, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    write_pack(&pack, READS, None);
    std::fs::write(
        pack.join("pack.toml"),
        "purposes = [\"work\"]\n[[tool]]\ntool = \"*echo\"\nclass = \"read\"\n",
    )
    .unwrap();
    let token = issue(&state, &["--purpose", "work", "--action", "read"]);
    let mut child = tokio::process::Command::new(tollgate_bin())
        .args([
            "run",
            "--pack",
            pack.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ])
        .args([
            "--grant",
            "-",
            "--",
            fixture_bin().to_str().unwrap(),
            "stdio",
        ])
        .env_remove("TOLLGATE_GRANT")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The grant and the first MCP message arrive in one write: not one byte of the MCP stream
    // may be taken with the grant.
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    stdin
        .write_all(format!("{token}\n{init}\n").as_bytes())
        .await
        .unwrap();
    let answer: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(answer["id"], 0, "{answer}");
    for message in [
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "via stdin"}}}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}),
    ] {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
    }
    // The two calls take different paths (the fast path, and rmcp's for the unknown tool):
    // their answers may come in either order.
    let mut answers = std::collections::HashMap::new();
    for _ in 0..2 {
        let answer: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        answers.insert(answer["id"].as_u64().unwrap(), answer);
    }
    assert_eq!(
        answers[&1]["result"]["content"][0]["text"], "via stdin",
        "{answers:?}"
    );
    assert!(
        answers[&2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tool `add`"),
        "an uncatalogued tool is admin, hidden from a read grant: {answers:?}"
    );
    drop(stdin);
    let status = tokio::time::timeout(std::time::Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn policies_see_the_clients_transport_and_address_on_both_paths() {
    let scene = Scene::new(
        r#"
@id("loopback-http") permit (principal, action == Action::"read", resource)
  when { context.grant.present && context.client.transport == "http" && context.client.address == "127.0.0.1" };
"#,
        "",
    )
    .await;
    let token = scene.issue(&["--purpose", "work", "--action", "read"]);
    // A 2025-11-25 session: the fast path.
    let legacy = agent_with_grant(&scene.url, &token).await;
    assert_eq!(
        result_text(&legacy.call_tool(echo("fast")).await.unwrap()),
        "fast"
    );
    legacy.cancel().await.unwrap();
    // A 2026-07-28 agent: rmcp's path.
    let modern = agent_modern_with(&scene.url, TestAgent::new("m"), Some(&token)).await;
    let r = modern
        .call_tool(call("fx.echo", json!({"text": "typed"})))
        .await
        .unwrap();
    assert_eq!(text_of(&r), "typed");
    modern.cancel().await.unwrap();
    scene.stop().await;
}
