//! Pinned tool definitions end to end: `tollgate pin` records the fixture's tools; a tool the
//! upstream redefines at run time (new description and schema, then `list_changed`) is hidden
//! and its calls refused, while the rest keep working; a policy can require a pin.

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
use tollgate_proxy::{Config, Proxy, guard::PolicyGuard};

fn pin(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(tollgate_bin())
        .args(["pin", "--config", config.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
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
    let pinned = pin(&config_path, &[]);
    assert!(
        pinned.status.success(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    let out = String::from_utf8_lossy(&pinned.stdout);
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
