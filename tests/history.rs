//! Session history in decisions, end to end under the embedded default pack: a session that
//! read untrusted content has its next egress held for approval, a session that read a secret
//! may not send anything out, and the same egress call in a clean session is allowed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;

use serde_json::json;
use support::*;
use tollgate_proxy::{Config, Proxy, guard::PolicyGuard};

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
