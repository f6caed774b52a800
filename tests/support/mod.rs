//! Shared helpers for the end-to-end tests: real fixture servers, a real agent (rmcp client)
//! that records what it receives, and the built binaries.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![expect(
    deprecated,
    reason = "the test agent answers sampling and roots, which are deprecated upstream"
)]

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::{
    ClientHandler, ErrorData as McpError, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
        CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams, ElicitResult,
        Implementation, ListRootsResult, LoggingMessageNotificationParam,
        ProgressNotificationParam, ProtocolVersion,
    },
    service::{ClientLifecycleMode, NotificationContext, RequestContext, RunningService},
    transport::StreamableHttpClientTransport,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tollgate_proxy::{Config, HttpServer, Proxy};
use tollgate_testkit::fixture::{Fixture, FixtureState};

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The `tollgate` binary built for this test run.
pub fn tollgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate"))
}

/// The fixture server binary (built by the testkit package's own tests in the same run).
pub fn fixture_bin() -> PathBuf {
    let path = tollgate_bin().with_file_name("tollgate-fixture");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// A fixture server on loopback HTTP.
pub struct FixtureServer {
    pub url: String,
    pub state: Arc<FixtureState>,
    pub stop: CancellationToken,
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn fixture_http(name: &str) -> FixtureServer {
    let state = Arc::new(FixtureState::default());
    let stop = CancellationToken::new();
    let st = state.clone();
    let name = name.to_owned();
    let addr = tollgate_testkit::serve_http(
        loopback(),
        move || Fixture::new(name.clone(), st.clone()),
        stop.clone(),
    )
    .await
    .unwrap();
    FixtureServer {
        url: format!("http://{addr}/mcp"),
        state,
        stop,
    }
}

/// Tollgate with an HTTP front on loopback.
pub struct Guard {
    pub proxy: Option<Proxy>,
    pub server: HttpServer,
    pub url: String,
}

impl Guard {
    pub async fn stop(mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.shutdown().await;
        }
    }
    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().unwrap()
    }
}

/// Starts Tollgate from config text (must have a `[front.http]` table) as a relay only: these
/// tests are about relaying, so policy is switched off by name (`mode = "allow-all"`).
pub async fn guard(config: &str) -> Guard {
    let mut config = Config::parse(config).unwrap();
    config.policy.mode = tollgate_proxy::config::PolicyMode::AllowAll;
    let front = config.fronts.http.clone().expect("an http front");
    let proxy = tollgate_guard::start(config).await;
    let server = proxy.serve_http(&front).await.unwrap();
    let url = format!("http://{}{}", server.local_addr, front.path);
    Guard {
        proxy: Some(proxy),
        server,
        url,
    }
}

pub fn http_upstreams(upstreams: &[(&str, &str)]) -> String {
    let mut text = String::from("[front.http]\nlisten = \"127.0.0.1:0\"\n");
    for (name, url) in upstreams {
        text.push_str(&format!(
            "[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\n"
        ));
    }
    text
}

/// What the test agent has received from Tollgate.
#[derive(Debug, Default)]
pub struct Seen {
    pub progress: Vec<ProgressNotificationParam>,
    pub logs: Vec<LoggingMessageNotificationParam>,
    pub tool_list_changed: usize,
    pub sampling: Vec<CreateMessageRequestParams>,
    pub elicitations: usize,
    pub roots_asked: usize,
    pub resource_updates: Vec<String>,
}

/// An agent that answers sampling, elicitation and roots, and records notifications.
#[derive(Clone, Default)]
pub struct TestAgent {
    pub seen: Arc<Mutex<Seen>>,
    pub label: String,
}

impl TestAgent {
    pub fn new(label: &str) -> Self {
        Self {
            seen: Arc::default(),
            label: label.to_owned(),
        }
    }
}

impl ClientHandler for TestAgent {
    fn get_info(&self) -> ClientConfig {
        let capabilities = ClientCapabilities::builder()
            .enable_sampling()
            .enable_elicitation()
            .enable_roots()
            .build();
        ClientConfig::new(capabilities, Implementation::new("test-agent", "1.0.0"))
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        self.seen.lock().unwrap().sampling.push(params);
        Ok(serde_json::from_value(json!({
            "role": "assistant",
            "content": {"type": "text", "text": format!("sampled by {}", self.label)},
            "model": "test-model",
            "stopReason": "endTurn"
        }))
        .unwrap())
    }

    async fn create_elicitation(
        &self,
        _params: ElicitRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        self.seen.lock().unwrap().elicitations += 1;
        Ok(serde_json::from_value(json!({
            "action": "accept",
            "content": {"username": self.label, "email": "agent@example.test"}
        }))
        .unwrap())
    }

    async fn list_roots(
        &self,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, McpError> {
        self.seen.lock().unwrap().roots_asked += 1;
        Ok(serde_json::from_value(
            json!({"roots": [{"uri": format!("file:///{}", self.label), "name": self.label}]}),
        )
        .unwrap())
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().progress.push(params);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().logs.push(params);
    }

    async fn on_tool_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        self.seen.lock().unwrap().tool_list_changed += 1;
    }

    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().resource_updates.push(params.uri);
    }
}

pub type Agent = RunningService<RoleClient, TestAgent>;

/// Connects a 2025-11-25 agent (initialize + session) over streamable HTTP.
pub async fn agent_legacy(url: &str, agent: TestAgent) -> Agent {
    agent
        .serve(StreamableHttpClientTransport::from_uri(url))
        .await
        .unwrap()
}

/// Connects a 2026-07-28 agent (server/discover, per-request metadata) over streamable HTTP.
pub async fn agent_modern(url: &str, agent: TestAgent) -> Agent {
    agent_modern_with(url, agent, None).await
}

/// Like [`agent_modern`], sending `Authorization: Bearer <token>` on every request.
pub async fn agent_modern_with(url: &str, agent: TestAgent, token: Option<&str>) -> Agent {
    use rmcp::service::ClientServiceExt;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(token) = token {
        config = config.auth_header(token);
    }
    agent
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(config),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap()
}

pub fn call(name: &str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_owned())
        .with_arguments(args.as_object().cloned().unwrap_or_default())
}

/// All text content of a result, joined.
pub fn text_of(result: &CallToolResult) -> String {
    let value = serde_json::to_value(result).unwrap();
    value["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("")
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A 2025-11-25 agent over HTTP presenting `grant` as its bearer token.
pub async fn agent_with_grant(url: &str, grant: &str) -> Agent0 {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    ().serve(StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(grant.to_owned()),
    ))
    .await
    .unwrap()
}

/// An agent with no handler of its own.
pub type Agent0 = rmcp::service::RunningService<rmcp::RoleClient, ()>;

/// A policy pack in `dir` where every tool is a read, reads under a grant are allowed, and
/// `extra` policies follow.
pub fn reads_pack(dir: &std::path::Path, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("pack.toml"),
        "purposes = [\"work\"]\n[[tool]]\ntool = \"*\"\nclass = \"read\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rules.cedar"),
        format!(
            "@id(\"reads\") permit (principal, action == Action::\"read\", resource) when {{ context.grant.present }};\n{extra}"
        ),
    )
    .unwrap();
}

/// A `work` grant for reads and writes, signed with the grant key in `state`.
pub fn read_write_grant(state: &std::path::Path) -> String {
    tollgate_mint::GrantSigner::load_or_create(state)
        .unwrap()
        .sign(&root_grant(
            "work",
            [
                tollgate_policy::ActionClass::Read,
                tollgate_policy::ActionClass::Write,
            ],
        ))
        .unwrap()
}

/// The config table of an upstream `name` that is the fixture server over stdio.
pub fn stdio_fixture_upstream(name: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\ncommand = \"{}\"\nargs = [\"stdio\", \"{name}\"]\n",
        fixture_bin().display()
    )
}

/// The fixture over HTTP, recording the headers of every request it receives.
pub async fn recording_fixture(
    stop: &tokio_util::sync::CancellationToken,
) -> (std::net::SocketAddr, tollgate_testkit::HeaderLog) {
    let headers = tollgate_testkit::HeaderLog::default();
    let state = std::sync::Arc::new(tollgate_testkit::fixture::FixtureState::default());
    let addr = tollgate_testkit::serve_http_recording(
        loopback(),
        move || tollgate_testkit::fixture::Fixture::new("fx".to_owned(), state.clone()),
        stop.clone(),
        Some(headers.clone()),
    )
    .await
    .unwrap();
    (addr, headers)
}

/// A ten-minute root grant for `purpose` and `actions`, with a fresh id.
pub fn root_grant<const N: usize>(
    purpose: &str,
    actions: [tollgate_policy::ActionClass; N],
) -> tollgate_policy::Grant {
    tollgate_policy::Grant::root(
        tollgate_mint::new_grant_id().unwrap(),
        purpose,
        actions,
        tollgate_mint::unix_now(),
        600,
    )
}

/// A guarding Tollgate started from `config`: its HTTP front and its admin endpoint (with
/// `admin_token` for the operator's calls).
pub struct Guarded {
    pub proxy: Proxy,
    pub url: String,
    pub admin: String,
}

pub async fn guarded(config: tollgate_proxy::Config, admin_token: Option<&str>) -> Guarded {
    let front = config.fronts.http.clone().unwrap();
    let state = config.grants.state_dir.clone();
    let guard = std::sync::Arc::new(tollgate_guard::guard::PolicyGuard::new(&config).unwrap());
    let proxy = Proxy::start_with(config, guard.clone()).await;
    let server = proxy.serve_http(&front).await.unwrap();
    let admin = tollgate_guard::admin::serve(
        loopback(),
        guard,
        admin_token.map(tollgate_proxy::config::Secret::new),
        state,
        proxy.shutdown_token(),
    )
    .await
    .unwrap();
    Guarded {
        proxy,
        url: format!("http://{}/mcp", server.local_addr),
        admin: format!("http://{}", admin.local_addr),
    }
}

/// The start of a guarded config: an HTTP front on a free loopback port, the pack in `pack`
/// and the state folder `state`. The test appends its own tables.
pub fn guarded_toml(pack: &std::path::Path, state: &std::path::Path) -> String {
    format!(
        "[front.http]\nlisten = \"127.0.0.1:0\"\n[policy]\npack = \"{}\"\n[grants]\nstate_dir = \"{}\"\n",
        pack.display(),
        state.display()
    )
}

/// `GET <admin><path>` with `token` as the bearer: the JSON answer.
#[allow(dead_code)]
pub async fn admin_get(admin: &str, path: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{admin}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An `initialize` request of a 2025-11-25 client.
pub const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

/// A POST of `body` to an HTTP front, in session `session` (2025-11-25) when given.
pub fn post(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    session: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_owned());
    if let Some(id) = session {
        request = request
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", "2025-11-25");
    }
    request
}

/// A 2025-11-25 session on `url`, initialized: its id.
pub async fn open_session(client: &reqwest::Client, url: &str) -> String {
    let response = post(client, url, INIT, None).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let id = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = response.text().await.unwrap();
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let ack = post(client, url, initialized, Some(&id))
        .send()
        .await
        .unwrap();
    assert!(ack.status().is_success(), "{}", ack.status());
    id
}
