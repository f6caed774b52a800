//! `tollgate run -- <command>` as an agent's MCP config starts it: a real process speaking
//! newline-delimited JSON-RPC on stdin/stdout, with a stdio upstream behind it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::{process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::{Value, json};
use support::*;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

struct Wrapped {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Wrapped {
    async fn start() -> Self {
        let fixture = fixture_bin();
        Self::start_with(&[
            "run",
            "--allow-all",
            "--",
            fixture.to_str().unwrap(),
            "stdio",
        ])
        .await
    }

    /// `tollgate run --config` with a stdio front and the fixture as stdio upstream.
    async fn start_configured(extra: &str) -> (Self, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tollgate.toml");
        std::fs::write(
            &config,
            format!(
                "[policy]\nmode = \"allow-all\"\n[front]\nstdio = true\n[[upstream]]\nname = \"fx\"\ncommand = \"{}\"\nargs = [\"stdio\"]\n{extra}\n",
                fixture_bin().display()
            ),
        )
        .unwrap();
        let wrapped = Self::start_with(&["run", "--config", config.to_str().unwrap()]).await;
        (wrapped, dir)
    }

    async fn start_with(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(tollgate_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut wrapped = Self {
            child,
            stdin,
            lines,
        };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {"sampling": {}}, "clientInfo": {"name": "raw", "version": "1"}}});
        wrapped.send(&init.to_string()).await;
        let reply = wrapped.next().await;
        assert_eq!(reply["id"], 0, "{reply}");
        wrapped
            .send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        wrapped
    }

    async fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.write_all(b"\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next message Tollgate writes (notifications included).
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("tollgate answered in time")
            .unwrap()
            .expect("tollgate's stdout is open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The response with `id`, skipping notifications.
    async fn response(&mut self, id: i64) -> Value {
        loop {
            let message = self.next().await;
            if message["id"] == id {
                return message;
            }
        }
    }

    async fn call(&mut self, id: i64, tool: &str, args: Value) -> Value {
        let request = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}});
        self.send(&request.to_string()).await;
        self.response(id).await
    }
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie still counts, so reaped children are what we want.
    nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[tokio::test]
async fn wrapped_server_is_relayed_over_stdio() {
    let mut tollgate = Wrapped::start().await;
    tollgate
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .await;
    let tools = tollgate.response(1).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"echo"),
        "one upstream is not prefixed: {names:?}"
    );
    let echoed = tollgate
        .call(2, "echo", json!({"text": "through stdio"}))
        .await;
    assert_eq!(echoed["result"]["content"][0]["text"], "through stdio");
}

#[tokio::test]
async fn garbage_and_oversize_lines_get_errors_and_the_session_goes_on() {
    let mut tollgate = Wrapped::start().await;
    tollgate.send("this is not json").await;
    let parse = tollgate.next().await;
    assert_eq!(parse["error"]["code"], -32700, "{parse}");
    assert_eq!(parse["id"], Value::Null);

    tollgate
        .send(r#"{"jsonrpc":"2.0","id":5,"method":42}"#)
        .await;
    let invalid = tollgate.next().await;
    assert_eq!(
        (invalid["error"]["code"].clone(), invalid["id"].clone()),
        (json!(-32600), json!(5)),
        "{invalid}"
    );

    // The default limit is 4 MiB; this line is 5 MiB and is refused without being kept.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "a".repeat(5 * 1024 * 1024)
    );
    tollgate.send(&big).await;
    let refused = tollgate.next().await;
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4194304"),
        "{refused}"
    );

    let after = tollgate
        .call(7, "echo", json!({"text": "still fine"}))
        .await;
    assert_eq!(after["result"]["content"][0]["text"], "still fine");
}

async fn shutdown_on(signal: Signal) {
    let mut tollgate = Wrapped::start().await;
    let pid = tollgate.call(1, "pid", json!({})).await;
    let upstream_pid: i32 = pid["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(alive(upstream_pid));
    let tollgate_pid = Pid::from_raw(tollgate.child.id().unwrap() as i32);
    nix::sys::signal::kill(tollgate_pid, signal).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), tollgate.child.wait())
        .await
        .expect("tollgate exits after the signal")
        .unwrap();
    assert!(status.success(), "graceful exit: {status}");
    let gone = eventually(Duration::from_secs(5), || !alive(upstream_pid)).await;
    assert!(
        gone,
        "the upstream child process {upstream_pid} is not left behind"
    );
}

#[tokio::test]
async fn sigterm_shuts_down_without_orphans() {
    shutdown_on(Signal::SIGTERM).await;
}

#[tokio::test]
async fn sigint_shuts_down_without_orphans() {
    shutdown_on(Signal::SIGINT).await;
}

#[tokio::test]
async fn closing_stdin_ends_tollgate_and_its_upstream() {
    let mut tollgate = Wrapped::start().await;
    let pid = tollgate.call(1, "pid", json!({})).await;
    let upstream_pid: i32 = pid["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let Wrapped {
        mut child, stdin, ..
    } = tollgate;
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(eventually(Duration::from_secs(5), || !alive(upstream_pid)).await);
}

#[tokio::test]
async fn progress_keeps_the_agents_token_and_comes_before_the_result() {
    let mut tollgate = Wrapped::start().await;
    let request = json!({"jsonrpc": "2.0", "id": "p-1", "method": "tools/call", "params": {
        "name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "agent-token"}}});
    tollgate.send(&request.to_string()).await;
    let mut progress = Vec::new();
    loop {
        let message = tollgate.next().await;
        if message["method"] == "notifications/progress" {
            assert_eq!(
                message["params"]["progressToken"], "agent-token",
                "{message}"
            );
            progress.push(message["params"]["progress"].as_f64().unwrap());
        } else {
            assert_eq!(message["id"], "p-1", "{message}");
            assert!(
                message["result"]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("progress")
            );
            break;
        }
    }
    assert_eq!(
        progress,
        [0.0, 50.0, 100.0],
        "every progress notification before the result"
    );
}

#[tokio::test]
async fn cancelled_call_gets_no_answer_and_the_session_goes_on() {
    let mut tollgate = Wrapped::start().await;
    tollgate.send(r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"hang","arguments":{}}}"#).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    tollgate
        .send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9,"reason":"stop"}}"#)
        .await;
    let after = tollgate.call(10, "echo", json!({"text": "next"})).await;
    assert_eq!(
        after["id"], 10,
        "no answer for the cancelled call comes first: {after}"
    );
    assert_eq!(after["result"]["content"][0]["text"], "next");
}

#[tokio::test]
async fn sampling_during_a_call_reaches_this_agent_and_its_answer_the_tool() {
    let mut tollgate = Wrapped::start().await;
    tollgate
        .send(r#"{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"test_sampling","arguments":{"prompt":"hello"}}}"#)
        .await;
    let request = tollgate.next().await;
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    assert!(request.to_string().contains("hello"));
    let answer = json!({"jsonrpc": "2.0", "id": request["id"], "result": {
        "role": "assistant", "content": {"type": "text", "text": "from the raw agent"}, "model": "m"}});
    tollgate.send(&answer.to_string()).await;
    let done = tollgate.response(20).await;
    assert_eq!(
        done["result"]["content"][0]["text"],
        "LLM response: from the raw agent"
    );
}

#[tokio::test]
async fn call_timeout_cancels_and_answers_with_the_upstream_named() {
    let (mut tollgate, _dir) = Wrapped::start_configured("call_timeout_ms = 300").await;
    let timed_out = tollgate.call(30, "hang", json!({})).await;
    let message = timed_out["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`fx`") && message.contains("300 ms"),
        "{timed_out}"
    );
    let after = tollgate.call(31, "echo", json!({"text": "ok"})).await;
    assert_eq!(after["result"]["content"][0]["text"], "ok");
}

#[tokio::test]
async fn unknown_tools_and_unusual_params_are_answered_exactly() {
    let mut tollgate = Wrapped::start().await;
    let unknown = tollgate.call(40, "no_such_tool", json!({})).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    let not_object = json!({"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": {"name": "echo", "arguments": "text"}});
    tollgate.send(&not_object.to_string()).await;
    let refused = tollgate.response(41).await;
    assert!(refused.get("error").is_some(), "{refused}");
    let extra = json!({"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}, "task": {"ttl": 1000}}});
    tollgate.send(&extra.to_string()).await;
    let answered = tollgate.response(42).await;
    assert!(
        answered.get("result").is_some() || answered.get("error").is_some(),
        "{answered}"
    );
}
