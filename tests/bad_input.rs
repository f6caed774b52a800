//! Bad input at the wire, as an attacker or a broken peer sends it: every request is answered
//! with its own id and the code the JSON-RPC specification gives, nothing is forwarded, and an
//! upstream's answer over the size limit fails its call at once instead of at its timeout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

fn stdio_upstream(name: &str, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\ncommand = \"{}\"\nargs = [\"stdio\", \"{name}\"]\n{extra}\n",
        fixture_bin().display()
    )
}

/// The JSON-RPC message in a body: plain JSON or the last SSE `data:` line that holds one.
fn message(body: &str) -> Value {
    if let Ok(v) = serde_json::from_str(body) {
        return v;
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| d.starts_with('{'))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .rfind(|v| v.get("id").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC answer in {body:?}"))
}

fn call_line(id: &str, params: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{params}}}"#)
}

#[tokio::test]
async fn every_request_serde_refuses_is_answered_with_its_id_and_code() {
    let guard = guard(&format!(
        "[front.http]\nlisten = \"127.0.0.1:0\"\n{}",
        stdio_upstream("fx", "")
    ))
    .await;
    let client = reqwest::Client::new();
    let sid = open_session(&client, &guard.url).await;
    let deep = format!(
        r#"{{"name":"echo","arguments":{{"text":"x","d":{}{}}}}}"#,
        "[".repeat(400),
        "]".repeat(400)
    );
    let cases: Vec<(String, Value, i64)> = vec![
        // Valid by RFC 8259, refused by serde: the id is answered, -32600.
        (
            call_line(
                r#""lone""#,
                r#"{"name":"echo","arguments":{"text":"\ud800"}}"#,
            ),
            json!("lone"),
            -32600,
        ),
        (
            call_line(
                "41",
                r#"{"name":"echo","arguments":{"text":"x","n":1e400}}"#,
            ),
            json!(41),
            -32600,
        ),
        (call_line("42", &deep), json!(42), -32600),
        // Params the method does not take: -32602, not "method not found".
        (
            call_line("43", r#"{"name":"echo","arguments":["text"]}"#),
            json!(43),
            -32602,
        ),
        (
            call_line("44", r#"{"name":"echo","arguments":"text"}"#),
            json!(44),
            -32602,
        ),
        (
            call_line(
                "45",
                r#"{"name":"echo","name":"pid","arguments":{"text":"x"}}"#,
            ),
            json!(45),
            -32602,
        ),
        // An array is not an envelope, whatever its positions hold.
        (
            r#"["2.0","tools/call",46,{"name":"echo","arguments":{"text":"x"}}]"#.to_owned(),
            Value::Null,
            -32600,
        ),
        // Not JSON at all: -32700, and the id where one can be read.
        (
            r#"{"jsonrpc":"2.0","id":47,"method":"tools/call","params":{"#.to_owned(),
            json!(47),
            -32700,
        ),
    ];
    for (body, id, code) in cases {
        let response = post(&client, &guard.url, &body, Some(&sid))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            reqwest::StatusCode::BAD_REQUEST,
            "{body}"
        );
        let reply = message(&response.text().await.unwrap());
        assert_eq!(reply["id"], id, "{body}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{body}: {reply}");
    }
    // The session still works, and nothing above reached the upstream as a call.
    let ok = post(
        &client,
        &guard.url,
        &call_line("50", r#"{"name":"echo","arguments":{"text":"still here"}}"#),
        Some(&sid),
    )
    .send()
    .await
    .unwrap();
    let reply = message(&ok.text().await.unwrap());
    assert_eq!(reply["result"]["content"][0]["text"], "still here");
    guard.stop().await;
}

#[tokio::test]
async fn an_upstream_answer_over_the_limit_fails_its_call_at_once() {
    let config = format!(
        "[front.http]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_message_bytes = 4096\ncall_timeout_ms = 30000\n{}",
        stdio_upstream("fx", "")
    );
    let guard = guard(&config).await;
    let client = reqwest::Client::new();
    let sid = open_session(&client, &guard.url).await;
    let started = Instant::now();
    let response = post(
        &client,
        &guard.url,
        &call_line("60", r#"{"name":"big","arguments":{"n":100000}}"#),
        Some(&sid),
    )
    .send()
    .await
    .unwrap();
    let reply = message(&response.text().await.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered after {:?}, not at the call's timeout",
        started.elapsed()
    );
    assert_eq!(reply["id"], 60, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over the limit of 4096 bytes"),
        "{reply}"
    );
    // The link goes on: a small answer still arrives.
    let ok = post(
        &client,
        &guard.url,
        &call_line("61", r#"{"name":"big","arguments":{"n":10}}"#),
        Some(&sid),
    )
    .send()
    .await
    .unwrap();
    let reply = message(&ok.text().await.unwrap());
    assert_eq!(
        reply["result"]["content"][0]["text"], "xxxxxxxxxx",
        "{reply}"
    );
    guard.stop().await;
}
