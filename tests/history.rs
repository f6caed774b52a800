//! Session history in decisions, end to end under the embedded default pack: a session that
//! read untrusted content has its next egress held for approval, a session that read a secret
//! may not send anything out, and the same egress call in a clean session is allowed. Denials
//! in a row quarantine a session; bursts and a new kind of action late in a session are
//! signals policies act on; session limits hold at their boundaries.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use support::*;
use tollgate_guard::guard::PolicyGuard;
use tollgate_proxy::{Config, Proxy};

#[tokio::test]
async fn a_read_of_untrusted_content_then_egress_is_held_and_a_clean_session_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let config = Config::parse(&format!(
        r#"
[front.http]
listen = "127.0.0.1:0"
[grants]
state_dir = "{state}"
# The fixture's tools, classified for this test: `echo` sends its text (a URL) out,
# `whoami` reads untrusted content, `pid` reads a secret.
[[policy.tool]]
tool = "echo"
class = "egress"
resources = {{ text = "url" }}
[[policy.tool]]
tool = "whoami"
class = "read"
taints = ["untrusted_content"]
[[policy.tool]]
tool = "pid"
class = "read"
taints = ["secret_read"]
{upstream}"#,
        state = state.display(),
        upstream = stdio_fixture_upstream("fx"),
    ))
    .unwrap();
    let signer = tollgate_mint::GrantSigner::load_or_create(&state).unwrap();
    let grant = || {
        signer
            .sign(&tollgate_policy::Grant {
                resources: ["host:docs.example.org".parse().unwrap()].into(),
                ..root_grant(
                    "research",
                    [
                        tollgate_policy::ActionClass::Read,
                        tollgate_policy::ActionClass::Egress,
                    ],
                )
            })
            .unwrap()
    };
    let front = config.fronts.http.clone().unwrap();
    let guard = Arc::new(PolicyGuard::new(&config).unwrap());
    let proxy = Proxy::start_with(config, guard).await;
    let server = proxy.serve_http(&front).await.unwrap();
    let url = format!("http://{}/mcp", server.local_addr);
    let send = json!({"text": "https://docs.example.org/notes?q=status"});

    // A 2025-11-25 session: its history is the session's.
    let first = agent_with_grant(&url, &grant()).await;
    let clean = first.call_tool(call("echo", send.clone())).await.unwrap();
    assert_ne!(clean.is_error, Some(true), "{clean:?}");
    let read = first.call_tool(call("whoami", json!({}))).await.unwrap();
    assert_ne!(read.is_error, Some(true), "{read:?}");
    let held = first.call_tool(call("echo", send.clone())).await.unwrap();
    assert_eq!(held.is_error, Some(true));
    assert!(
        text_of(&held).contains("needs approval")
            && text_of(&held).contains("read untrusted content"),
        "{held:?}"
    );
    first.cancel().await.unwrap();

    // A clean session (a 2026-07-28 agent, stateless: each request is its own session, so the
    // history is kept per grant, here a new one) may send the same thing.
    let second = agent_modern_with(&url, TestAgent::new("b"), Some(&grant())).await;
    let allowed = second.call_tool(call("echo", send.clone())).await.unwrap();
    assert_ne!(allowed.is_error, Some(true), "{allowed:?}");
    // Read a secret, then try to send (a later request of the same grant): forbidden outright.
    second.call_tool(call("pid", json!({}))).await.unwrap();
    let refused = second.call_tool(call("echo", send)).await.unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(text_of(&refused).contains("read secrets"), "{refused:?}");
    second.cancel().await.unwrap();
    proxy.shutdown().await;
}

#[tokio::test]
async fn what_a_read_resource_carried_is_untrusted_content_to_later_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let config = Config::parse(&format!(
        r#"
[front.http]
listen = "127.0.0.1:0"
[grants]
state_dir = "{state}"
# `echo` sends its text to whom the text names.
[[policy.tool]]
tool = "echo"
class = "egress"
targets = ["text"]
{upstream}"#,
        state = state.display(),
        upstream = stdio_fixture_upstream("fx"),
    ))
    .unwrap();
    let grant = tollgate_mint::GrantSigner::load_or_create(&state)
        .unwrap()
        .sign(&root_grant(
            "research",
            [
                tollgate_policy::ActionClass::Read,
                tollgate_policy::ActionClass::Egress,
            ],
        ))
        .unwrap();
    let front = config.fronts.http.clone().unwrap();
    let guard = Arc::new(PolicyGuard::new(&config).unwrap());
    let proxy = Proxy::start_with(config, guard).await;
    let server = proxy.serve_http(&front).await.unwrap();
    let url = format!("http://{}/mcp", server.local_addr);
    let agent = agent_with_grant(&url, &grant).await;
    // A resource whose text (the fixture's template echoes its id) names the attacker.
    let read = agent
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "test://template/Mallory@Evil.example/data",
        ))
        .await
        .unwrap();
    assert!(
        format!("{read:?}").contains("Mallory@Evil.example"),
        "{read:?}"
    );
    let refused = agent
        .call_tool(call("echo", json!({"text": "mallory@evil.example"})))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    let said = text_of(&refused);
    assert!(
        said.contains("came only from untrusted content")
            && said.contains("of resource test://template/Mallory@Evil.example/data's result"),
        "{said}"
    );
    // A value no resource carried is not refused for where it came from.
    let unseen = agent
        .call_tool(call("echo", json!({"text": "someone@else.example"})))
        .await
        .unwrap();
    assert!(
        !text_of(&unseen).contains("untrusted content"),
        "{unseen:?}"
    );
    agent.cancel().await.unwrap();
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_session_denied_again_and_again_is_held_until_an_approver_releases_it() {
    const APPROVER: &str = "approver-token-for-quarantine-tests";
    let tmp = tempfile::tempdir().unwrap();
    let (pack, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    reads_pack(
        &pack,
        r#"@id("no-add") @reason("adding is not allowed") forbid (principal, action, resource) when { resource.name like "*add" };
@id("probing") @quarantine @reason("three denials within a minute") forbid (principal, action, resource) when { context.stats.denials_last_minute >= 3 };"#,
    );
    std::fs::write(tmp.path().join("approver"), APPROVER).unwrap();
    let config = Config::parse(&format!(
        r#"
{head}[[approvals.approver]]
name = "sec"
token_file = "{approver}"
{upstream}"#,
        head = guarded_toml(&pack, &state),
        approver = tmp.path().join("approver").display(),
        upstream = stdio_fixture_upstream("fx"),
    ))
    .unwrap();
    let (g, grant, agent) = reader_session(config, &state).await;
    for _ in 0..3 {
        let denied = agent
            .call_tool(call("add", json!({"a": 1, "b": 2})))
            .await
            .unwrap();
        assert!(
            text_of(&denied).contains("adding is not allowed"),
            "{denied:?}"
        );
    }
    // The fourth call would be allowed, but the session has been probing.
    let held = agent
        .call_tool(call("echo", json!({"text": "hi"})))
        .await
        .unwrap();
    assert!(text_of(&held).contains("three denials"), "{held:?}");
    let still = agent
        .call_tool(call("echo", json!({"text": "hi"})))
        .await
        .unwrap();
    assert!(text_of(&still).contains("held for review"), "{still:?}");
    // A new session under the same grant does not escape it.
    let again = agent_with_grant(&g.url, &grant).await;
    let escaped = again
        .call_tool(call("echo", json!({"text": "hi"})))
        .await
        .unwrap();
    assert!(text_of(&escaped).contains("held for review"), "{escaped:?}");

    let client = reqwest::Client::new();
    let listed = admin_get(&g.admin, "/quarantine", APPROVER).await;
    let held = listed["quarantined"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{listed}");
    let session = held[0]["session"].as_str().unwrap().to_owned();
    let release = |token: &'static str| {
        client
            .post(format!("{}/quarantine/{session}/release", g.admin))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(release("a-guess").await.unwrap().status().as_u16(), 401);
    assert_eq!(release(APPROVER).await.unwrap().status().as_u16(), 200);
    let free = agent
        .call_tool(call("echo", json!({"text": "hi"})))
        .await
        .unwrap();
    assert_eq!(text_of(&free), "hi", "released: decided again");
    again.cancel().await.unwrap();
    agent.cancel().await.unwrap();
    g.proxy.shutdown().await;
}

#[tokio::test]
async fn session_limits_hold_at_their_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let (pack, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    reads_pack(&pack, "");
    let manifest = std::fs::read_to_string(pack.join("pack.toml")).unwrap();
    std::fs::write(
        pack.join("pack.toml"),
        format!(
            r#"{manifest}
[[limit]]
id = "echoes"
tool = "echo"
calls = 2

[[limit]]
id = "add-total"
tool = "add"
sum = {{ argument = "a", max = 10 }}
reason = "the session may add at most 10 in all"

[[limit]]
id = "whoami-rate"
tool = "whoami"
rate = {{ calls = 2, per_secs = 3600 }}
"#
        ),
    )
    .unwrap();
    let config = Config::parse(&format!(
        "{}{}",
        guarded_toml(&pack, &state),
        stdio_fixture_upstream("fx"),
    ))
    .unwrap();
    let (g, _grant, agent) = reader_session(config, &state).await;
    let run = |name: &'static str, args: Value| {
        let agent = &agent;
        async move { agent.call_tool(call(name, args)).await.unwrap() }
    };
    for _ in 0..2 {
        assert_ne!(run("echo", json!({"text": "x"})).await.is_error, Some(true));
    }
    let third = run("echo", json!({"text": "x"})).await;
    assert!(
        text_of(&third).contains("at most 2 calls per session"),
        "{third:?}"
    );

    for a in [4, 6] {
        let ok = run("add", json!({"a": a, "b": 0})).await;
        assert_eq!(text_of(&ok), a.to_string(), "{ok:?}");
    }
    let over = run("add", json!({"a": 1, "b": 0})).await;
    assert!(text_of(&over).contains("at most 10 in all"), "{over:?}");
    let zero = run("add", json!({"a": 0, "b": 5})).await;
    assert_eq!(
        text_of(&zero),
        "5",
        "a refused call was not charged: {zero:?}"
    );

    for _ in 0..2 {
        assert_ne!(run("whoami", json!({})).await.is_error, Some(true));
    }
    let fast = run("whoami", json!({})).await;
    assert!(
        text_of(&fast).contains("at most 2 calls per 3600 s"),
        "{fast:?}"
    );
    agent.cancel().await.unwrap();
    g.proxy.shutdown().await;
}

/// A guarded Tollgate from `config` and a 2025-11-25 session under a fresh `work` read grant
/// signed in `state`.
#[tokio::test]
async fn bursts_and_a_new_kind_of_action_late_in_a_session_reach_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let (pack, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    reads_pack(
        &pack,
        r#"@id("writes") permit (principal, action == Action::"write", resource) when { context.grant.present };
@id("burst") @reason("a burst far above this session's own rate") forbid (principal, action, resource) when { context.stats.calls_last_10s >= 6 && context.stats.calls_last_10s * 6 > 5 * context.stats.per_minute };
@id("new-kind-late") @reason("a new kind of action late in the session") forbid (principal, action, resource) when { context.stats.first_of_class && context.stats.calls >= 3 };"#,
    );
    let manifest = std::fs::read_to_string(pack.join("pack.toml")).unwrap();
    std::fs::write(
        pack.join("pack.toml"),
        format!("{manifest}[[tool]]\ntool = \"add\"\nclass = \"write\"\n"),
    )
    .unwrap();
    let config = Config::parse(&format!(
        "{head}{upstream}",
        head = guarded_toml(&pack, &state),
        upstream = stdio_fixture_upstream("fx"),
    ))
    .unwrap();
    let grant = read_write_grant(&state);
    let g = guarded(config, None).await;
    let echo = || call("echo", json!({"text": "hi"}));
    let add = || call("add", json!({"a": 1, "b": 2}));

    // Six calls within ten seconds from a session whose whole life is those ten seconds are
    // its own rate; the seventh is a burst.
    let busy = agent_with_grant(&g.url, &grant).await;
    for n in 0..6 {
        let answer = busy.call_tool(echo()).await.unwrap();
        assert_eq!(text_of(&answer), "hi", "call {n}: {answer:?}");
    }
    let burst = busy.call_tool(echo()).await.unwrap();
    assert!(text_of(&burst).contains("a burst far above"), "{burst:?}");
    busy.cancel().await.unwrap();

    // Reads, then a first write after three calls: a new kind of action late.
    let late = agent_with_grant(&g.url, &grant).await;
    for _ in 0..3 {
        late.call_tool(echo()).await.unwrap();
    }
    let refused = late.call_tool(add()).await.unwrap();
    assert!(
        text_of(&refused).contains("a new kind of action late"),
        "{refused:?}"
    );
    late.cancel().await.unwrap();

    // The same write first thing in a fresh session is ordinary, and so is a later one.
    let early = agent_with_grant(&g.url, &grant).await;
    assert_eq!(text_of(&early.call_tool(add()).await.unwrap()), "3");
    for _ in 0..2 {
        early.call_tool(echo()).await.unwrap();
    }
    assert_eq!(text_of(&early.call_tool(add()).await.unwrap()), "3");
    early.cancel().await.unwrap();
    g.proxy.shutdown().await;
}

async fn reader_session(config: Config, state: &std::path::Path) -> (Guarded, String, Agent0) {
    let grant = tollgate_mint::GrantSigner::load_or_create(state)
        .unwrap()
        .sign(&root_grant("work", [tollgate_policy::ActionClass::Read]))
        .unwrap();
    let g = guarded(config, None).await;
    let agent = agent_with_grant(&g.url, &grant).await;
    (g, grant, agent)
}
