//! Every tool call passes the interception point, on the fast path (stdio agent, stdio
//! upstream) and on the rmcp path (HTTP agent) alike: a refusal forwards nothing, and every
//! forwarded call is seen before and after.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::{Arc, Mutex};

use rmcp::model::CallToolResult;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tollgate_proxy::{
    Config, Proxy,
    intercept::{Interceptor, Outcome, PendingVerdict, ToolCall, Verdict},
};

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
}

impl Interceptor for Recorder {
    fn before_call<'a>(&'a self, call: &'a ToolCall<'a>) -> PendingVerdict<'a> {
        let text = call
            .arguments
            .and_then(|a| a.get("text"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.seen
            .lock()
            .unwrap()
            .push(format!("before {} {} {}", call.upstream, call.tool, text));
        Box::pin(std::future::ready(if text == "forbidden" {
            Verdict::Refuse(CallToolResult::error(vec![
                rmcp::model::ContentBlock::text("refused by policy"),
            ]))
        } else {
            Verdict::Forward
        }))
    }

    fn after_call(&self, call: &ToolCall<'_>, outcome: &Outcome<'_>) {
        let outcome = match outcome {
            Outcome::Completed { is_error } => format!("completed error={is_error}"),
            Outcome::Pending => "pending".to_owned(),
            Outcome::Failed(e) => format!("failed {e}"),
        };
        self.seen
            .lock()
            .unwrap()
            .push(format!("after {} {outcome}", call.tool));
    }
}

fn stdio_config(front: &str) -> String {
    format!(
        "{front}\n[[upstream]]\nname = \"fx\"\ncommand = \"{}\"\nargs = [\"stdio\"]\n",
        fixture_bin().display()
    )
}

#[tokio::test]
async fn fast_path_calls_pass_the_interception_point() {
    let recorder = Arc::new(Recorder::default());
    let proxy = Proxy::start_with(
        Config::parse(&stdio_config("[front]\nstdio = true")).unwrap(),
        recorder.clone(),
    )
    .await;
    let (agent, tollgate) = tokio::io::duplex(1 << 20);
    let (read, write) = tokio::io::split(tollgate);
    let proxy = Arc::new(proxy);
    let serving = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            proxy
                .serve_lines(read, write, tollgate_proxy::Caller::stdio(None))
                .await
        })
    };
    let (agent_read, mut agent_write) = tokio::io::split(agent);
    let mut lines = BufReader::new(agent_read).lines();
    let mut send = async |v: Value| {
        agent_write
            .write_all(format!("{v}\n").as_bytes())
            .await
            .unwrap();
    };
    send(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})).await;
    let _init = lines.next_line().await.unwrap().unwrap();
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "fine"}}})).await;
    let ok: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(ok["id"], 1);
    assert_eq!(ok["result"]["content"][0]["text"], "fine");
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "forbidden"}}})).await;
    let refused: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(refused["id"], 2);
    assert_eq!(refused["result"]["isError"], true);
    assert_eq!(refused["result"]["content"][0]["text"], "refused by policy");

    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "before fx echo fine",
            "after echo completed error=false",
            "before fx echo forbidden",
            "after echo completed error=true",
        ]
    );
    drop(lines);
    serving.abort();
    let _ = serving.await;
    Arc::into_inner(proxy).unwrap().shutdown().await;
}

#[tokio::test]
async fn rmcp_path_calls_pass_the_interception_point() {
    let recorder = Arc::new(Recorder::default());
    let fixture = fixture_http("fx").await;
    let config = Config::parse(&http_upstreams(&[("fx", &fixture.url)])).unwrap();
    let front = config.fronts.http.clone().unwrap();
    let proxy = Proxy::start_with(config, recorder.clone()).await;
    let server = proxy.serve_http(&front).await.unwrap();
    let url = format!("http://{}/mcp", server.local_addr);
    let agent = agent_legacy(&url, TestAgent::new("a")).await;
    let fine = agent
        .call_tool(call("echo", json!({"text": "fine"})))
        .await
        .unwrap();
    assert_eq!(text_of(&fine), "fine");
    let refused = agent
        .call_tool(call("echo", json!({"text": "forbidden"})))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert_eq!(text_of(&refused), "refused by policy");
    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "before fx echo fine",
            "after echo completed error=false",
            "before fx echo forbidden",
            "after echo completed error=true",
        ]
    );
    agent.cancel().await.unwrap();
    proxy.shutdown().await;
}
