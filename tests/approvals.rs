//! Approval gates end to end. Out of band: a call a policy holds waits while an approver
//! answers through the admin endpoint. Only an approver of the named group can answer; the
//! admin token is not a person; an approval releases exactly the call it was asked for, whose
//! token then names it; a denial and the expiry refuse the call with the reason. In band: where
//! an `@in_band` policy allows, the user at the agent is asked (elicitation for a 2025-11-25
//! agent, an input request for a 2026-07-28 one), never for `admin` calls; a waiting call
//! reports progress, and an agent that gives up withdraws the request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::{
    ClientHandler, ErrorData, RoleClient, ServiceExt,
    model::{
        CallToolResponse, ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult,
        Implementation, ProgressNotificationParam,
    },
    service::{NotificationContext, RequestContext, RunningService},
    transport::StreamableHttpClientTransport,
};
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

/// Writes (`add`) need a person from finance.
const FINANCE_GATE: &str = r#"@id("writes-need-finance") @needs_approval @approvers("finance") @reason("adding needs a person from finance") permit (principal, action == Action::"write", resource) when { context.grant.present };"#;

/// Writes (`add`) and admin calls (`echo`) may be approved by the user at the agent.
const AT_THE_AGENT: &str = r#"@id("writes-at-the-agent") @needs_approval @in_band @reason("adding needs a yes from the user") permit (principal, action == Action::"write", resource) when { context.grant.present };
@id("admin-at-the-agent") @needs_approval @in_band @reason("admin calls need a person") permit (principal, action == Action::"admin", resource) when { context.grant.present };"#;

async fn gate() -> Gate {
    gate_with(FINANCE_GATE, "").await
}

/// The catalog of the gate's pack: `add` writes, with `b` redacted; `echo` is admin.
const CATALOG: &str = "purposes = [\"work\"]\n[[tool]]\ntool = \"*\"\nclass = \"read\"\n[[tool]]\ntool = \"add\"\nclass = \"write\"\nredact = [\"b\"]\n[[tool]]\ntool = \"echo\"\nclass = \"admin\"\n";

/// A guarded fixture under `policies`, with approvers ada (finance) and bob (ops);
/// `approvals` adds to the `[approvals]` table.
async fn gate_with(policies: &str, approvals: &str) -> Gate {
    gate_with_catalog(policies, approvals, CATALOG).await
}

async fn gate_with_catalog(policies: &str, approvals: &str, catalog: &str) -> Gate {
    let tmp = tempfile::tempdir().unwrap();
    let (pack, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    reads_pack(&pack, policies);
    std::fs::write(pack.join("pack.toml"), catalog).unwrap();
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
{approvals}
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
                    tollgate_policy::ActionClass::Admin,
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
        let answer = admin_get(&self.admin, "/approvals?pending", ADA).await;
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
async fn an_approver_sees_what_the_catalog_shows_them_and_the_trail_never_does() {
    let catalog = CATALOG.replace(
        "redact = [\"b\"]",
        "redact = [\"a\", \"b\"]\nshown_to_approvers = [\"b\"]",
    );
    let g = gate_with_catalog(FINANCE_GATE, "", &catalog).await;
    let waiting = g.spawn_call(json!({"a": 40, "b": 4_242_424}));
    let pending = g.wait_pending(1).await;
    assert_eq!(
        pending[0]["arguments"],
        json!({"a": "[redacted]", "b": 4_242_424}),
        "the approver judges `b` by its value; `a` stays hidden"
    );
    let id = pending[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(g.answer(ADA, &id, "approve", "ok").await.0, 200);
    let result = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text_of(&result), "4242464", "{result:?}");
    g.proxy.shutdown().await;
    let mut trail = String::new();
    for entry in std::fs::read_dir(g._tmp.path().join("state/audit")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            trail.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    assert!(trail.contains(r#""b":"[redacted]""#), "{trail}");
    assert!(
        !trail.contains("4242424"),
        "the trail keeps the value hidden: {trail}"
    );
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

impl Gate {
    async fn show(&self, id: &str) -> Value {
        admin_get(&self.admin, &format!("/approvals/{id}"), ADA).await
    }
}

/// An agent whose user answers every approval question with `answer`, recording what they
/// were shown and the progress they heard.
#[derive(Clone)]
struct User {
    answer: Value,
    elicitation: bool,
    asked: Arc<Mutex<Vec<String>>>,
    progress: Arc<Mutex<Vec<String>>>,
}

impl User {
    fn answering(answer: Value) -> Self {
        Self {
            answer,
            elicitation: true,
            asked: Arc::default(),
            progress: Arc::default(),
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    /// Connects as a 2025-11-25 agent presenting `grant`.
    async fn connect(&self, url: &str, grant: &str) -> RunningService<RoleClient, User> {
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        self.clone()
            .serve(StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(url).auth_header(grant.to_owned()),
            ))
            .await
            .unwrap()
    }

    /// Connects as a 2026-07-28 agent presenting `grant`.
    async fn connect_modern(&self, url: &str, grant: &str) -> RunningService<RoleClient, User> {
        use rmcp::service::ClientServiceExt;
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        self.clone()
            .serve_with_lifecycle(
                StreamableHttpClientTransport::from_config(
                    StreamableHttpClientTransportConfig::with_uri(url)
                        .auth_header(grant.to_owned()),
                ),
                rmcp::service::ClientLifecycleMode::Discover {
                    preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
                },
            )
            .await
            .unwrap()
    }
}

impl ClientHandler for User {
    fn get_info(&self) -> ClientConfig {
        let capabilities = if self.elicitation {
            ClientCapabilities::builder().enable_elicitation().build()
        } else {
            ClientCapabilities::default()
        };
        ClientConfig::new(capabilities, Implementation::new("approving-user", "1.0.0"))
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        if let ElicitRequestParams::FormElicitationParams { message, .. } = params {
            self.asked.lock().unwrap().push(message);
        }
        Ok(serde_json::from_value(self.answer.clone()).unwrap())
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .unwrap()
            .push(params.message.unwrap_or_default());
    }
}

fn approve() -> Value {
    json!({"action": "accept", "content": {"approve": true}})
}

#[tokio::test]
async fn the_user_at_the_agent_approves_what_policy_lets_them() {
    let g = gate_with(AT_THE_AGENT, "").await;
    let user = User::answering(approve());
    let agent = user.connect(&g.url, &g.grant).await;
    let result = agent
        .call_tool(call("add", json!({"a": 20, "b": 7919})))
        .await
        .unwrap();
    assert_eq!(text_of(&result), "7939", "{result:?}");
    // The user saw what will happen, with what the catalog hides hidden.
    let asked = user.asked();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let question = &asked[0];
    assert!(
        question.contains("Tool: add on upstream fx (write call)"),
        "{question}"
    );
    assert!(question.contains(r#""b":"[redacted]""#), "{question}");
    assert!(
        !question.contains("7919"),
        "a redacted value never reaches the question: {question}"
    );
    assert!(
        question.contains("adding needs a yes from the user"),
        "{question}"
    );
    assert!(
        question.contains("https://fx.test"),
        "the credential's audience: {question}"
    );
    // The answer is recorded under the user's name, and the token names the approval.
    let id = question
        .split_whitespace()
        .find(|w| w.starts_with("ap-"))
        .unwrap();
    let request = g.show(id).await;
    assert_eq!(request["state"], "approved", "{request}");
    assert_eq!(request["by"], "carol (at the agent)");
    agent.cancel().await.unwrap();
    g.proxy.shutdown().await;
}

#[tokio::test]
async fn a_declined_question_denies_and_an_admin_call_is_never_asked_in_band() {
    let g = gate_with(AT_THE_AGENT, "").await;
    let user = User::answering(json!({"action": "decline"}));
    let agent = user.connect(&g.url, &g.grant).await;
    let refused = agent
        .call_tool(call("add", json!({"a": 1, "b": 1})))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text_of(&refused)
            .contains("denied by approver carol (at the agent): declined at the agent"),
        "{refused:?}"
    );
    // Accepting the form without saying yes is no approval either.
    let lukewarm = User::answering(json!({"action": "accept", "content": {"approve": false}}));
    let agent2 = lukewarm.connect(&g.url, &g.grant).await;
    let refused = agent2
        .call_tool(call("add", json!({"a": 1, "b": 2})))
        .await
        .unwrap();
    assert!(
        text_of(&refused).contains("not approved at the agent"),
        "{refused:?}"
    );

    // `echo` is an admin call: its gate says `@in_band`, but admin calls go to approvers.
    let asked_before = user.asked().len();
    let (url, grant, u) = (g.url.clone(), g.grant.clone(), user.clone());
    let admin_call = tokio::spawn(async move {
        let agent = u.connect(&url, &grant).await;
        let result = agent
            .call_tool(call("echo", json!({"text": "rotate everything"})))
            .await
            .unwrap();
        agent.cancel().await.unwrap();
        result
    });
    let id = g.wait_pending(1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        user.asked().len(),
        asked_before,
        "the user at the agent is not asked"
    );
    assert_eq!(g.answer(BOB, &id, "approve", "ops ran it").await.0, 200);
    let done = tokio::time::timeout(Duration::from_secs(5), admin_call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text_of(&done), "rotate everything");
    agent.cancel().await.unwrap();
    agent2.cancel().await.unwrap();
    g.proxy.shutdown().await;
}

#[tokio::test]
async fn without_elicitation_or_approvers_a_held_call_is_denied_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (pack, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    reads_pack(&pack, AT_THE_AGENT);
    std::fs::write(
        pack.join("pack.toml"),
        "purposes = [\"work\"]\n[[tool]]\ntool = \"*\"\nclass = \"read\"\n[[tool]]\ntool = \"add\"\nclass = \"write\"\n",
    )
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, _) = recording_fixture(&stop).await;
    let config = Config::parse(&format!(
        "{head}[[upstream]]\nname = \"fx\"\nurl = \"http://{addr}/mcp\"\n",
        head = guarded_toml(&pack, &state),
    ))
    .unwrap();
    let signer = tollgate_mint::GrantSigner::load_or_create(&state).unwrap();
    let grant = signer
        .sign(&root_grant(
            "work",
            [
                tollgate_policy::ActionClass::Read,
                tollgate_policy::ActionClass::Write,
            ],
        ))
        .unwrap();
    let Guarded { proxy, url, .. } = guarded(config, None).await;
    // An agent that cannot be asked, and nobody out of band.
    let mut mute = User::answering(approve());
    mute.elicitation = false;
    let agent = mute.connect(&url, &grant).await;
    let started = std::time::Instant::now();
    let refused = agent
        .call_tool(call("add", json!({"a": 1, "b": 1})))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "denied, not left waiting"
    );
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text_of(&refused).contains("the agent did not declare elicitation"),
        "{refused:?}"
    );
    assert!(mute.asked().is_empty());
    // The same call from an agent that can ask its user goes ahead.
    let user = User::answering(approve());
    let asking = user.connect(&url, &grant).await;
    let done = asking
        .call_tool(call("add", json!({"a": 1, "b": 1})))
        .await
        .unwrap();
    assert_eq!(text_of(&done), "2");
    agent.cancel().await.unwrap();
    asking.cancel().await.unwrap();
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_modern_agent_answers_an_input_request_bound_to_the_exact_call() {
    let g = gate_with(AT_THE_AGENT, "").await;
    let user = User::answering(approve());
    let agent = user.connect_modern(&g.url, &g.grant).await;
    let first = agent
        .call_tool_once(call("add", json!({"a": 5, "b": 5})))
        .await
        .unwrap();
    let CallToolResponse::InputRequired(needed) = first else {
        panic!("the question comes back as an input request: {first:?}");
    };
    let requests = serde_json::to_value(needed.input_requests.as_ref().unwrap()).unwrap();
    let question = requests["tollgate-approval"]["params"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(question.contains("Tool: add on upstream fx"), "{question}");
    let state = needed.request_state.clone().unwrap();
    let mut responses = rmcp::model::InputResponses::new();
    responses.insert("tollgate-approval".into(), approve());

    // Approved, but for other arguments than the agent now sends: denied.
    let changed = agent
        .call_tool_once(
            call("add", json!({"a": 5, "b": 500}))
                .with_input_responses(responses.clone())
                .with_request_state(state.clone()),
        )
        .await
        .unwrap();
    let CallToolResponse::Complete(changed) = changed else {
        panic!("{changed:?}")
    };
    assert_eq!(changed.is_error, Some(true));
    assert!(
        text_of(&changed).contains("does not match this call"),
        "{changed:?}"
    );
    // The state was used up.
    let again = agent
        .call_tool_once(
            call("add", json!({"a": 5, "b": 5}))
                .with_input_responses(responses.clone())
                .with_request_state(state),
        )
        .await
        .unwrap_err();
    assert!(again.to_string().contains("requestState"), "{again}");

    // rmcp's own driver answers the question with the user's yes, and the call goes ahead.
    let done = agent
        .call_tool(call("add", json!({"a": 5, "b": 5})))
        .await
        .unwrap();
    assert_eq!(text_of(&done), "10", "{done:?}");
    assert_eq!(user.asked().len(), 1);
    agent.cancel().await.unwrap();
    g.proxy.shutdown().await;
}

#[tokio::test]
async fn a_waiting_call_reports_progress_and_cancelling_it_withdraws_the_request() {
    let g = gate_with(FINANCE_GATE, "progress_every_ms = 100").await;
    let user = User::answering(approve());
    let agent = user.connect(&g.url, &g.grant).await;
    let mut params = call("add", json!({"a": 3, "b": 4}));
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.set_progress_token(rmcp::model::ProgressToken(
        rmcp::model::NumberOrString::String("p-1".into()),
    ));
    params.meta = Some(meta);
    let handle = agent
        .send_cancellable_request(
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params)),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let id = g.wait_pending(1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let progress = user.progress.clone();
    let heard = eventually(Duration::from_secs(3), || {
        progress.lock().unwrap().len() >= 2
    })
    .await;
    let messages = progress.lock().unwrap().clone();
    assert!(heard, "progress while waiting: {messages:?}");
    assert!(
        messages[0].contains(&format!("waiting for approval {id}")),
        "{messages:?}"
    );
    assert!(
        user.asked().is_empty(),
        "a finance gate never asks the agent"
    );

    handle
        .cancel(Some("user pressed stop".into()))
        .await
        .unwrap();
    let mut withdrawn = false;
    for _ in 0..100 {
        if g.show(&id).await["state"] == "withdrawn" {
            withdrawn = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(withdrawn, "{}", g.show(&id).await);
    assert_eq!(
        g.answer(ADA, &id, "approve", "").await.0,
        409,
        "nothing left to approve"
    );
    agent.cancel().await.unwrap();
    g.proxy.shutdown().await;
}
