//! `tollgate demo`: Tollgate in front of two in-process demo servers, driven by a scripted
//! agent over a real streamable-HTTP connection.

use std::net::SocketAddr;

use rmcp::{
    ServiceExt,
    model::{CallToolRequestParams, CallToolResult},
    transport::StreamableHttpClientTransport,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tollgate_proxy::{Config, Proxy};
use tollgate_testkit::demo::{Tickets, Workspace};

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn summary(result: &CallToolResult) -> String {
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

    let config = Config::parse(&format!(
        r#"
        [front.http]
        listen = "127.0.0.1:0"

        [[upstream]]
        name = "workspace"
        url = "http://{workspace}/mcp"

        [[upstream]]
        name = "tickets"
        url = "http://{tickets}/mcp"
        "#
    ))?;
    let front = config
        .fronts
        .http
        .clone()
        .ok_or_else(|| anyhow::anyhow!("demo config has no HTTP front"))?;

    println!("Tollgate demo");
    println!("=============");
    let proxy = Proxy::start(config).await;
    let report = proxy.report();
    println!("upstreams connected: {}", report.connected.join(", "));
    let server = proxy.serve_http(&front).await?;
    let url = format!("http://{}{}", server.local_addr, front.path);
    println!("tollgate listening:  {url}");
    println!();

    let agent = ().serve(StreamableHttpClientTransport::from_uri(url.as_str())).await?;
    let tools = agent.list_all_tools().await?;
    println!("agent  → tools/list");
    for tool in &tools {
        println!(
            "         {:<24} {}",
            tool.name,
            tool.description.as_deref().unwrap_or_default()
        );
    }

    let steps: [(&str, Value); 5] = [
        ("workspace.list_files", json!({})),
        ("workspace.read_file", json!({"path": "notes.txt"})),
        (
            "workspace.write_file",
            json!({"path": "status.txt", "content": "build green"}),
        ),
        (
            "tickets.open_ticket",
            json!({"title": "Flaky build on friday"}),
        ),
        ("workspace.read_file", json!({"path": "../outside.txt"})),
    ];
    let mut failures = 0;
    let mut calls = 0;
    for (name, args) in steps {
        calls += 1;
        let arguments = args.as_object().cloned().unwrap_or_default();
        println!("agent  → tools/call {name} {args}");
        match agent
            .call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(arguments))
            .await
        {
            Ok(result) => println!("       ← {}", summary(&result)),
            Err(e) => {
                failures += 1;
                println!("       ← error: {e}");
            }
        }
    }
    calls += 1;
    println!("agent  → tools/call billing.refund {{}}");
    match agent
        .call_tool(CallToolRequestParams::new("billing.refund"))
        .await
    {
        Ok(result) => {
            failures += 1;
            println!("       ← unexpected success: {}", summary(&result));
        }
        Err(e) => println!("       ← refused: {e}"),
    }

    agent.cancel().await?;
    proxy.shutdown().await;
    stop.cancel();
    let _ = server.task.await;
    println!();
    println!("{calls} tool calls made through one guard; each passed its interception point.");
    if failures > 0 {
        anyhow::bail!("{failures} demo step(s) failed");
    }
    Ok(())
}
