//! Approval gates end to end, out of band: a call a policy holds waits while an approver
//! answers through the admin endpoint. Only an approver of the named group can answer; the
//! admin token is not a person; an approval releases exactly the call it was asked for, whose
//! token then names it; a denial and the expiry refuse the call with the reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tollgate_proxy::{Config, Proxy};

const ADA: &str = "ada-approver-token-for-tests";
const BOB: &str = "bob-approver-token-for-tests";
const ADMIN: &str = "admin-token-for-approval-tests";

struct Gate {
    _tmp: tempfile::TempDir,
    proxy: Proxy,
    url: String,
    admin: String,
    grant: String,
    headers: tollgate_testkit::HeaderLog,
    _stop: tokio_util::sync::CancellationToken,
}

async fn gate() -> Gate {
    let tmp = tempfile::tempdir().unwrap();
    let (pack, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    reads_pack(
        &pack,
        r#"@id("writes-need-finance") @needs_approval @approvers("finance") @reason("adding needs a person from finance") permit (principal, action == Action::"write", resource) when { context.grant.present };"#,
    );
    std::fs::write(
        pack.join("pack.toml"),
        "purposes = [\"work\"]\n[[tool]]\ntool = \"*\"\nclass = \"read\"\n[[tool]]\ntool = \"add\"\nclass = \"write\"\nredact = [\"b\"]\n",
    )
    .unwrap();
    for (name, token) in [("ada", ADA), ("bob", BOB), ("admin", ADMIN)] {
        std::fs::write(tmp.path().join(name), token).unwrap();
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, headers) = recording_fixture(&stop).await;
    let dir = tmp.path().display();
    let config = Config::parse(&format!(
        r#"
{head}[approvals]
timeout_secs = 4
[[approvals.approver]]
name = "ada"
groups = ["finance"]
token_file = "{dir}/ada"
[[approvals.approver]]
name = "bob"
groups = ["ops"]
token_file = "{dir}/bob"
[[upstream]]
name = "fx"
url = "http://{addr}/mcp"
credential = {{ mode = "mint", audience = "https://fx.test" }}
"#,
        head = guarded_toml(&pack, &state),
    ))
    .unwrap();
    let signer = tollgate_mint::GrantSigner::load_or_create(&state).unwrap();
    let grant = signer
        .sign(&tollgate_policy::Grant {
            user: Some("carol".into()),
            ..root_grant(
                "work",
                [
                    tollgate_policy::ActionClass::Read,
                    tollgate_policy::ActionClass::Write,
                ],
            )
        })
        .unwrap();
    let Guarded { proxy, url, admin } = guarded(config, Some(ADMIN)).await;
    Gate {
        _tmp: tmp,
        proxy,
        url,
        admin,
        grant,
        headers,
        _stop: stop,
    }
}

impl Gate {
    async fn pending(&self) -> Vec<Value> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/approvals?pending", self.admin))
            .bearer_auth(ADA)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["approvals"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `n` requests are pending.
    async fn wait_pending(&self, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let pending = self.pending().await;
            if pending.len() >= n {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{n} approval request(s) never appeared");
    }

    async fn answer(&self, token: &str, id: &str, decision: &str, reason: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .post(format!("{}/approvals/{id}", self.admin))
            .bearer_auth(token)
            .json(&json!({"decision": decision, "reason": reason}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    fn spawn_call(&self, args: Value) -> tokio::task::JoinHandle<rmcp::model::CallToolResult> {
        let (url, grant) = (self.url.clone(), self.grant.clone());
        tokio::spawn(async move {
            let agent = agent_with_grant(&url, &grant).await;
            let result = agent.call_tool(call("add", args)).await.unwrap();
            agent.cancel().await.unwrap();
            result
        })
    }
}

#[tokio::test]
async fn an_approved_call_goes_ahead_and_its_token_names_the_approval() {
    let g = gate().await;
    let waiting = g.spawn_call(json!({"a": 1, "b": 2}));
    let pending = g.wait_pending(1).await;
    let request = &pending[0];
    let id = request["id"].as_str().unwrap().to_owned();
    // What the approver sees is what will happen.
    assert_eq!(request["tool"], "add");
    assert_eq!(request["upstream"], "fx");
    assert_eq!(
        request["arguments"],
        json!({"a": 1, "b": "[redacted]"}),
        "what the catalog marks is hidden from the reviewer"
    );
    assert!(request["arguments_sha256"].as_str().is_some());
    // And what the call's credential will be good for.
    let details = &request["credential"]["authorization_details"][0];
    assert_eq!(request["credential"]["aud"], "https://fx.test");
    assert_eq!(details["tool"], "add");
    assert_eq!(details["action"], "write");
    assert_eq!(details["arguments_sha256"], request["arguments_sha256"]);
    assert_eq!(request["approvers"], json!(["finance"]));
    assert_eq!(request["user"], "carol");
    assert_eq!(request["state"], "pending");
    assert!(!waiting.is_finished(), "the call waits");

    // Not in the group; not a person; not an approver at all.
    assert_eq!(g.answer(BOB, &id, "approve", "").await.0, 403);
    assert_eq!(g.answer(ADMIN, &id, "approve", "").await.0, 401);
    assert_eq!(g.answer("a-guess", &id, "approve", "").await.0, 401);
    let (status, body) = g.answer(ADA, &id, "approve", "checked the ticket").await;
    assert_eq!(status, 200, "{body}");
    let result = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text_of(&result), "3", "{result:?}");
    // The credential the upstream received names the approval.
    let token = g
        .headers
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find_map(|h| {
            h.get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(
                token
                    .trim_start_matches("Bearer ")
                    .split('.')
                    .nth(1)
                    .unwrap(),
            )
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["authorization_details"][0]["approval_id"], id);
    assert_eq!(
        claims["authorization_details"][0]["arguments_sha256"], request["arguments_sha256"],
        "the approver saw what the token is for"
    );
    // Answered once only.
    assert_eq!(g.answer(ADA, &id, "approve", "").await.0, 409);
    g.proxy.shutdown().await;
}

#[tokio::test]
async fn an_approval_releases_only_its_own_call_and_a_denial_carries_its_reason() {
    let g = gate().await;
    let small = g.spawn_call(json!({"a": 1, "b": 1}));
    g.wait_pending(1).await;
    let large = g.spawn_call(json!({"a": 1000, "b": 1000}));
    let pending = g.wait_pending(2).await;
    let id_of = |a: i64| {
        pending.iter().find(|r| r["arguments"]["a"] == a).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (small_id, large_id) = (id_of(1), id_of(1000));
    assert_ne!(small_id, large_id, "other arguments, another request");
    assert_eq!(g.answer(ADA, &small_id, "approve", "").await.0, 200);
    let done = tokio::time::timeout(Duration::from_secs(5), small)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text_of(&done), "2");
    assert!(!large.is_finished(), "the other call still waits");
    assert_eq!(
        g.answer(ADA, &large_id, "deny", "far too much").await.0,
        200
    );
    let refused = tokio::time::timeout(Duration::from_secs(5), large)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text_of(&refused).contains("denied by approver ada: far too much"),
        "{refused:?}"
    );
    g.proxy.shutdown().await;
}

#[tokio::test]
async fn an_unanswered_request_expires_and_denies() {
    let g = gate().await;
    let waiting = g.spawn_call(json!({"a": 2, "b": 2}));
    let id = g.wait_pending(1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text_of(&refused).contains("no approval arrived in time"),
        "{refused:?}"
    );
    // Too late now.
    assert_eq!(g.answer(ADA, &id, "approve", "").await.0, 409);
    assert!(g.pending().await.is_empty());
    g.proxy.shutdown().await;
}
