//! `tollgate demo`: Tollgate in front of two in-process demo servers, driven by a scripted
//! agent over a real streamable-HTTP connection; then, in front of the example payments API
//! (see `payments`).

mod payments;

use std::net::SocketAddr;

use rmcp::{
    ClientHandler, ErrorData, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
        ElicitRequestParams, ElicitResult, ElicitationAction, Implementation,
    },
    service::RequestContext,
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tollgate_policy::ActionClass;
use tollgate_proxy::Config;
use tollgate_testkit::demo::{Tickets, Workspace};

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub(crate) fn summary(result: &CallToolResult) -> String {
    let value = serde_json::to_value(result).unwrap_or_default();
    let text = value
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let text = text.replace('\n', " | ");
    if result.is_error == Some(true) {
        format!("tool error: {text}")
    } else {
        text
    }
}

/// The person at the demo's agent, played by the demo: shown Tollgate's approval question, it
/// says no, and says that it is scripted.
#[derive(Debug, Clone, Default)]
struct ScriptedUser {
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ClientHandler for ScriptedUser {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder().enable_elicitation().build(),
            Implementation::new("tollgate-demo-agent", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let ElicitRequestParams::FormElicitationParams { message, .. } = &params {
            println!("       ⇢ tollgate asks the user at the agent:");
            for line in message.lines().filter(|l| !l.is_empty()) {
                println!("           {line}");
            }
        }
        println!(
            "       ⇠ the user (scripted by this demo) declines: they never asked for that write"
        );
        Ok(ElicitResult::new(ElicitationAction::Decline))
    }
}

pub(crate) async fn run() -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let workspace_dir = tempfile::tempdir()?;
    std::fs::write(
        workspace_dir.path().join("README.md"),
        "# demo project\nRun `make` to build.\n",
    )?;
    std::fs::write(workspace_dir.path().join("notes.txt"), "ship on friday\n")?;

    let root = workspace_dir.path().to_owned();
    let workspace = tollgate_testkit::serve_http(
        loopback(),
        move || Workspace::new(root.clone()),
        stop.clone(),
    )
    .await?;
    let tickets_state = Tickets::default();
    let tickets =
        tollgate_testkit::serve_http(loopback(), move || tickets_state.clone(), stop.clone())
            .await?;

    // The person starting the task issues a grant for it before the agent reads anything:
    // reads and writes in the workspace's docs, the workspace's tools only, for ten minutes.
    // Kept after the demo: it holds the audit trail, for `tollgate audit verify`.
    let state = tempfile::Builder::new()
        .prefix("tollgate-demo-")
        .tempdir()?;
    let root = workspace_dir.path().display().to_string();
    let signer = tollgate_mint::GrantSigner::load_or_create(state.path())?;
    let grant = tollgate_policy::Grant {
        task: "update the project status note".to_owned(),
        agent: Some("demo-agent".to_owned()),
        user: Some("ada".to_owned()),
        resources: [
            format!("path:{root}/**")
                .parse()
                .map_err(anyhow::Error::msg)?,
            "host:docs.example.org"
                .parse()
                .map_err(anyhow::Error::msg)?,
        ]
        .into(),
        tools: ["workspace.*".to_owned()].into(),
        ..tollgate_policy::Grant::root(
            tollgate_mint::new_grant_id()?,
            "maintenance",
            [ActionClass::Read, ActionClass::Write, ActionClass::Egress],
            tollgate_mint::unix_now(),
            600,
        )
    };
    let token = signer.sign(&grant)?;

    let config = Config::parse(&format!(
        r#"
        [front.http]
        listen = "127.0.0.1:0"

        [grants]
        state_dir = "{state}"

        [[upstream]]
        name = "workspace"
        url = "http://{workspace}/mcp"
        root = "{root}"

        [[upstream]]
        name = "tickets"
        url = "http://{tickets}/mcp"
        "#,
        state = state.path().display(),
    ))?;
    let front = config
        .fronts
        .http
        .clone()
        .ok_or_else(|| anyhow::anyhow!("demo config has no HTTP front"))?;

    println!("Tollgate demo");
    println!("=============");
    let proxy = tollgate_guard::start(config).await;
    let report = proxy.report();
    println!("upstreams connected: {}", report.connected.join(", "));
    let server = proxy.serve_http(&front).await?;
    let url = format!("http://{}{}", server.local_addr, front.path);
    println!("tollgate listening:  {url}");
    println!(
        "grant {} for \"{}\": read, write on workspace.* in {root}/**, egress to docs.example.org, for 10 minutes",
        grant.id, grant.task,
    );
    println!();

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(token),
    );
    let user = ScriptedUser::default();
    let asked = user.asked.clone();
    let agent = user.serve(transport).await?;
    let tools = agent.list_all_tools().await?;
    println!("agent  → tools/list   (only what this grant could ever call is shown)");
    for tool in &tools {
        println!(
            "         {:<24} {}",
            tool.name,
            tool.description.as_deref().unwrap_or_default()
        );
    }

    let steps: [(&str, Value, Expect); 9] = [
        ("workspace.list_files", json!({}), Expect::Allowed),
        (
            "workspace.read_file",
            json!({"path": "notes.txt"}),
            Expect::Allowed,
        ),
        (
            "workspace.write_file",
            json!({"path": "status.txt", "content": "build green"}),
            Expect::Allowed,
        ),
        (
            "workspace.read_file",
            json!({"path": "/etc/passwd"}),
            Expect::Denied,
        ),
        (
            "workspace.read_file",
            json!({"path": "../outside.txt"}),
            Expect::Denied,
        ),
        ("workspace.read_file", json!({"path": 42}), Expect::Denied),
        (
            "tickets.open_ticket",
            json!({"title": "Flaky build"}),
            Expect::Unknown,
        ),
        // Reading a page from outside taints the session: the write it asks for is held, and
        // the user at the agent is asked.
        (
            "workspace.fetch",
            json!({"url": "https://docs.example.org/release-notes"}),
            Expect::Allowed,
        ),
        (
            "workspace.write_file",
            json!({"path": "status.txt", "content": "API_KEY=..."}),
            Expect::Denied,
        ),
    ];
    let mut surprises = 0;
    for (name, args, expect) in steps {
        let arguments = args.as_object().cloned().unwrap_or_default();
        println!("agent  → tools/call {name} {args}");
        let answer = agent
            .call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(arguments))
            .await;
        let (seen, line) = match answer {
            Ok(result) if result.is_error == Some(true) => (Expect::Denied, summary(&result)),
            Ok(result) => (Expect::Allowed, format!("allowed: {}", summary(&result))),
            Err(e) => (Expect::Unknown, format!("error: {e}")),
        };
        println!("       ← {line}");
        if seen != expect {
            surprises += 1;
            println!("         (expected {expect:?})");
        }
    }
    agent.cancel().await?;
    if asked.load(std::sync::atomic::Ordering::Relaxed) != 1 {
        surprises += 1;
        println!("         (expected the user at the agent to be asked once)");
    }

    println!();
    println!("a second agent connects with no grant:");
    let anonymous = ().serve(StreamableHttpClientTransport::from_uri(url.as_str())).await?;
    let listed = anonymous.list_all_tools().await?.len();
    println!("agent  → tools/list\n       ← {listed} tools");
    println!("agent  → tools/call workspace.read_file {{\"path\":\"notes.txt\"}}");
    match anonymous
        .call_tool(
            CallToolRequestParams::new("workspace.read_file").with_arguments(
                json!({"path": "notes.txt"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await
    {
        Ok(result) => {
            surprises += 1;
            println!("       ← unexpected answer: {}", summary(&result));
        }
        Err(e) => println!("       ← refused: {e}"),
    }
    if listed != 0 {
        surprises += 1;
    }
    anonymous.cancel().await?;

    proxy.shutdown().await;
    stop.cancel();
    let _ = server.task.await;
    println!();
    println!(
        "every call was decided by grant {} and the default policy pack.",
        grant.id
    );
    surprises += payments::run().await?;

    // Every decision above is in the audit trail: check it the way a reviewer would.
    let state = state.keep();
    let trail = state.join("audit");
    let verifier =
        tollgate_guard::audit::TrailVerifier::load(&state).map_err(anyhow::Error::msg)?;
    let report = tollgate_audit::verify_files(std::slice::from_ref(&trail), &verifier, false)?;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for file in tollgate_audit::trail_paths(std::slice::from_ref(&trail))? {
        for line in std::fs::read_to_string(&file)?.lines() {
            let kind = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|r| r.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "unreadable".to_owned());
            *kinds.entry(kind).or_default() += 1;
        }
    }
    let count = |kind: &str| kinds.get(kind).copied().unwrap_or(0);
    println!();
    println!(
        "audit trail: {} records ({} decisions and {} outcomes of the workspace session, {} tool and grant definitions, {} signed checkpoints): {}",
        report.records,
        count("decision"),
        count("outcome"),
        count("tool") + count("grant"),
        report.checkpoints,
        if report.ok() { "intact" } else { "BROKEN" }
    );
    for problem in &report.problems {
        println!("         {problem}");
    }
    println!(
        "kept in {}; check it again with\n  tollgate audit verify {} --state {}",
        trail.display(),
        trail.display(),
        state.display()
    );
    if !report.ok() {
        surprises += 1;
    }
    if surprises > 0 {
        anyhow::bail!("{surprises} demo step(s) did not go as expected");
    }
    Ok(())
}

/// What a demo step should come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allowed,
    /// `isError: true` with the reason.
    Denied,
    /// A JSON-RPC error: the tool is hidden from this grant.
    Unknown,
}
