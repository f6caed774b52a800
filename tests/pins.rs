//! Pinned tool definitions end to end: `tollgate pin` records the fixture's tools; a tool the
//! upstream redefines at run time (new description and schema, then `list_changed`) is hidden
//! and its calls refused, while the rest keep working; a policy can require a pin; where the
//! configuration says so, a call of a changed tool waits for an approver instead.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::{sync::Arc, time::Duration};

use serde_json::json;
use support::*;
use tollgate_guard::guard::PolicyGuard;
use tollgate_proxy::{Config, Proxy};

fn pin(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(tollgate_bin())
        .args(["pin", "--config", config.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

/// Runs `tollgate pin` and insists it succeeded: what it printed.
fn pinned(config: &std::path::Path) -> String {
    let out = pin(config, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_tool_redefined_at_run_time_is_hidden_and_refused_until_pinned_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (pack, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    reads_pack(
        &pack,
        r#"@id("pinned-only") @reason("only pinned tools may be called") forbid (principal, action, resource) when { !context.pinned };"#,
    );
    let config_path = tmp.path().join("tollgate.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
[front.http]
listen = "127.0.0.1:0"
[policy]
pack = "pack"
[grants]
state_dir = "{state}"
[pins]
lock = "tollgate.lock"
{upstream}"#,
            state = state.display(),
            upstream = stdio_fixture_upstream("fx"),
        ),
    )
    .unwrap();

    // Pin, then check: nothing changed.
    let out = pinned(&config_path);
    assert!(out.contains("+ fx/echo"), "{out}");
    let lock_path = tmp.path().join("tollgate.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    assert!(
        lock.contains("name = \"echo\"") && lock.contains("sha256:"),
        "{lock}"
    );
    let check = pin(&config_path, &["--check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // One tool left out of the lock: unpinned, which this pack's policy refuses.
    let without_add: String = {
        let mut parts: Vec<&str> = lock.split("\n[[tool]]\n").collect();
        parts.retain(|p| !p.contains("name = \"add\""));
        parts.join("\n[[tool]]\n")
    };
    std::fs::write(&lock_path, without_add).unwrap();
    assert!(
        !pin(&config_path, &["--check"]).status.success(),
        "the check sees the gap"
    );

    let grant = {
        let signer = tollgate_mint::GrantSigner::load_or_create(&state).unwrap();
        signer
            .sign(&root_grant("work", [tollgate_policy::ActionClass::Read]))
            .unwrap()
    };
    let config = Config::load(&config_path).unwrap();
    let front = config.fronts.http.clone().unwrap();
    let guard = Arc::new(PolicyGuard::new(&config).unwrap());
    let proxy = Proxy::start_with(config, guard).await;
    let server = proxy.serve_http(&front).await.unwrap();
    let url = format!("http://{}/mcp", server.local_addr);
    let agent = agent_modern_with(&url, TestAgent::new("m"), Some(&grant)).await;

    let r = agent
        .call_tool(call("echo", json!({"text": "hi"})))
        .await
        .unwrap();
    assert_eq!(text_of(&r), "hi");
    let unpinned = agent
        .call_tool(call("add", json!({"a": 1, "b": 2})))
        .await
        .unwrap();
    assert!(
        text_of(&unpinned).contains("only pinned tools"),
        "{unpinned:?}"
    );

    // The upstream changes `echo` under the agent and announces it.
    agent.call_tool(call("redefine", json!({}))).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let listed = loop {
        let listed = agent.list_all_tools().await.unwrap();
        if !listed.iter().any(|t| t.name == "echo") || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !listed.iter().any(|t| t.name == "echo"),
        "echo is still listed: {listed:?}"
    );
    assert!(listed.iter().any(|t| t.name == "whoami"), "the others stay");
    let refused = agent
        .call_tool(call("echo", json!({"text": "hi", "extra": "x"})))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text_of(&refused).contains("changed since it was pinned"),
        "{refused:?}"
    );
    // Other pinned tools still work.
    let who = agent.call_tool(call("whoami", json!({}))).await.unwrap();
    assert_ne!(who.is_error, Some(true), "{who:?}");
    agent.cancel().await.unwrap();
    proxy.shutdown().await;
}

#[tokio::test]
async fn where_configured_a_call_of_a_changed_tool_waits_for_an_approver_instead() {
    const APPROVER: &str = "approver-token-for-pin-tests";
    let tmp = tempfile::tempdir().unwrap();
    let (pack, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    reads_pack(&pack, "");
    std::fs::write(tmp.path().join("approver"), APPROVER).unwrap();
    let config_path = tmp.path().join("tollgate.toml");
    std::fs::write(
        &config_path,
        format!(
            "{head}[pins]\nlock = \"tollgate.lock\"\non_change = \"approve\"\n[[approvals.approver]]\nname = \"sec\"\ntoken_file = \"{approver}\"\n{upstream}",
            head = guarded_toml(&pack, &state),
            approver = tmp.path().join("approver").display(),
            upstream = stdio_fixture_upstream("fx"),
        ),
    )
    .unwrap();
    pinned(&config_path);
    let grant = tollgate_mint::GrantSigner::load_or_create(&state)
        .unwrap()
        .sign(&root_grant("work", [tollgate_policy::ActionClass::Read]))
        .unwrap();
    let g = guarded(Config::load(&config_path).unwrap(), None).await;
    let agent = agent_with_grant(&g.url, &grant).await;
    agent.call_tool(call("redefine", json!({}))).await.unwrap();
    let mut hidden = false;
    for _ in 0..100 {
        if !agent
            .list_all_tools()
            .await
            .unwrap()
            .iter()
            .any(|t| t.name == "echo")
        {
            hidden = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        hidden,
        "a changed tool stays hidden: its new description never reaches the model"
    );

    let (url, grant2) = (g.url.clone(), grant.clone());
    let waiting = tokio::spawn(async move {
        let agent = agent_with_grant(&url, &grant2).await;
        let result = agent
            .call_tool(call("echo", json!({"text": "vouched for"})))
            .await
            .unwrap();
        agent.cancel().await.unwrap();
        result
    });
    let client = reqwest::Client::new();
    let mut request = serde_json::Value::Null;
    for _ in 0..200 {
        let listed = admin_get(&g.admin, "/approvals?pending", APPROVER).await;
        if let Some(first) = listed["approvals"].as_array().and_then(|a| a.first()) {
            request = first.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(request["tool"], "echo", "{request}");
    assert!(
        request["reasons"][0]
            .as_str()
            .unwrap()
            .contains("changed since it was pinned"),
        "{request}"
    );
    assert!(
        request["policies"]
            .as_array()
            .unwrap()
            .contains(&json!("tollgate:pin-changed")),
        "{request}"
    );
    let id = request["id"].as_str().unwrap();
    let answer = client
        .post(format!("{}/approvals/{id}", g.admin))
        .bearer_auth(APPROVER)
        .json(&json!({"decision": "approve", "reason": "reviewed the new schema"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let done = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text_of(&done), "vouched for", "{done:?}");
    agent.cancel().await.unwrap();
    g.proxy.shutdown().await;
}

#[test]
fn pinning_refuses_to_write_a_partial_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tollgate.toml");
    std::fs::write(
        &config,
        "[front]\nstdio = true\n[[upstream]]\nname = \"gone\"\nurl = \"http://127.0.0.1:9/mcp\"\n",
    )
    .unwrap();
    let out = pin(&config, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not connect"));
    assert!(!tmp.path().join("tollgate.lock").exists());
}
