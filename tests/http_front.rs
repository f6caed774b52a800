//! The streamable-HTTP front at the wire: session ids, Origin and Host checks, bad input and
//! oversize bodies, and what never reaches an upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;

use reqwest::{StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use support::*;
use tokio_util::sync::CancellationToken;
use tollgate_testkit::fixture::{Fixture, FixtureState};

/// The JSON-RPC message in a response body (plain JSON or the first SSE `data:` line).
fn message(body: &str) -> Value {
    if let Ok(v) = serde_json::from_str(body) {
        return v;
    }
    let data = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|d| d.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON-RPC message in {body:?}"));
    serde_json::from_str(data).unwrap()
}

#[tokio::test]
async fn session_lifecycle_follows_the_spec() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let client = reqwest::Client::new();
    let id = open_session(&client, &guard.url).await;
    assert!(guard.proxy().session_count() <= 1);

    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let ok = post(&client, &guard.url, list, Some(&id))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(message(&ok.text().await.unwrap())["result"]["tools"].is_array());

    let wrong_version = client
        .post(&guard.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "1999-01-01")
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(
        wrong_version.status(),
        StatusCode::BAD_REQUEST,
        "unsupported MCP-Protocol-Version"
    );

    let missing = post(&client, &guard.url, list, None).send().await.unwrap();
    assert_eq!(
        missing.status(),
        StatusCode::BAD_REQUEST,
        "no Mcp-Session-Id after initialize"
    );
    let unknown = post(&client, &guard.url, list, Some("not-a-session"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND, "unknown session");

    let ended = client
        .delete(&guard.url)
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(ended.status().is_success(), "{}", ended.status());
    let after = post(&client, &guard.url, list, Some(&id))
        .send()
        .await
        .unwrap();
    let call = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let call_after = post(&client, &guard.url, call, Some(&id))
        .send()
        .await
        .unwrap();
    assert_eq!(
        call_after.status(),
        StatusCode::NOT_FOUND,
        "no tool call on an ended session"
    );
    assert_eq!(
        after.status(),
        StatusCode::NOT_FOUND,
        "DELETE ends the session"
    );
    guard.stop().await;
}

#[tokio::test]
async fn foreign_origin_and_host_are_refused() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let client = reqwest::Client::new();

    let evil = post(&client, &guard.url, INIT, None)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), StatusCode::FORBIDDEN, "unlisted Origin");
    // A page that learned a session id still cannot call a tool through it.
    let id = open_session(&client, &guard.url).await;
    let call = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let from_page = post(&client, &guard.url, call, Some(&id))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        from_page.status(),
        StatusCode::FORBIDDEN,
        "tool call from an unlisted Origin"
    );
    let rebound = post(&client, &guard.url, call, Some(&id))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        rebound.status().is_client_error(),
        "tool call with a foreign Host: {}",
        rebound.status()
    );
    assert_eq!(evil.status(), StatusCode::FORBIDDEN, "unlisted Origin");

    let rebinding = post(&client, &guard.url, INIT, None)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        rebinding.status().is_client_error(),
        "non-loopback Host: {}",
        rebinding.status()
    );

    let same_origin = post(&client, &guard.url, INIT, None)
        .header("origin", format!("http://{}", guard.server.local_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        same_origin.status(),
        StatusCode::OK,
        "the front's own origin is accepted"
    );

    let fine = post(&client, &guard.url, INIT, None)
        .header(
            "host",
            format!("localhost:{}", guard.server.local_addr.port()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), StatusCode::OK);
    guard.stop().await;
}

#[tokio::test]
async fn listed_origin_is_accepted() {
    let fixture = fixture_http("one").await;
    let config = http_upstreams(&[("one", &fixture.url)]).replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nallowed_origins = [\"https://app.example.test\"]\n",
    );
    let guard = guard(&config).await;
    let client = reqwest::Client::new();
    let ok = post(&client, &guard.url, INIT, None)
        .header("origin", "https://app.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    guard.stop().await;
}

#[tokio::test]
async fn bad_json_gets_an_error_and_the_session_keeps_working() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let client = reqwest::Client::new();
    let id = open_session(&client, &guard.url).await;

    let garbage = post(&client, &guard.url, "{not json", Some(&id))
        .send()
        .await
        .unwrap();
    let status = garbage.status();
    let body = garbage.text().await.unwrap();
    assert!(status.is_client_error(), "{status}");
    assert_eq!(message(&body)["error"]["code"], -32700, "{body}");

    let wrong_shape = post(
        &client,
        &guard.url,
        r#"{"jsonrpc":"1.0","id":77}"#,
        Some(&id),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(wrong_shape.status(), StatusCode::BAD_REQUEST);
    let reply = message(&wrong_shape.text().await.unwrap());
    assert_eq!(
        (reply["error"]["code"].clone(), reply["id"].clone()),
        (json!(-32600), json!(77))
    );

    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"after garbage"}}}"#;
    let ok = post(&client, &guard.url, call, Some(&id))
        .send()
        .await
        .unwrap();
    let reply = message(&ok.text().await.unwrap());
    assert_eq!(reply["result"]["content"][0]["text"], "after garbage");
    guard.stop().await;
}

#[tokio::test]
async fn oversize_body_is_refused() {
    let fixture = fixture_http("one").await;
    let config = format!(
        "{}\n[limits]\nmax_message_bytes = 4096\n",
        http_upstreams(&[("one", &fixture.url)])
    );
    let guard = guard(&config).await;
    let client = reqwest::Client::new();
    let id = open_session(&client, &guard.url).await;
    let big = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x".repeat(10_000)}}});
    let refused = post(&client, &guard.url, &big.to_string(), Some(&id))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let small = r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","arguments":{"text":"small"}}}"#;
    let ok = post(&client, &guard.url, small, Some(&id))
        .send()
        .await
        .unwrap();
    assert_eq!(
        message(&ok.text().await.unwrap())["result"]["content"][0]["text"],
        "small"
    );
    guard.stop().await;
}

#[tokio::test]
async fn agent_session_id_and_tokens_never_reach_the_upstream() {
    let log: tollgate_testkit::HeaderLog = Arc::default();
    let state = Arc::new(FixtureState::default());
    let stop = CancellationToken::new();
    let addr = tollgate_testkit::serve_http_recording(
        loopback(),
        move || Fixture::new("one", state.clone()),
        stop.clone(),
        Some(log.clone()),
    )
    .await
    .unwrap();
    let upstream_url = format!("http://{addr}/mcp");
    let config = format!(
        "[front.http]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"one\"\nurl = \"{upstream_url}\"\nheaders = {{ X-Upstream-Key = \"configured-for-upstream\" }}\n"
    );
    let guard = guard(&config).await;
    let client = reqwest::Client::new();
    let response = post(&client, &guard.url, INIT, None)
        .header("authorization", "Bearer agent-own-token")
        .send()
        .await
        .unwrap();
    let agent_session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = response.text().await;
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;
    let ok = post(&client, &guard.url, call, Some(&agent_session))
        .header("authorization", "Bearer agent-own-token")
        .send()
        .await
        .unwrap();
    assert_eq!(
        message(&ok.text().await.unwrap())["result"]["content"][0]["text"],
        "x"
    );

    let seen: Vec<HeaderMap> = log.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for headers in &seen {
        for (name, value) in headers {
            let value = value.to_str().unwrap_or_default();
            assert!(
                !value.contains("agent-own-token"),
                "agent token leaked in {name}"
            );
            assert_ne!(value, agent_session, "agent session id leaked in {name}");
        }
        assert_eq!(
            headers["x-upstream-key"], "configured-for-upstream",
            "configured headers are sent"
        );
    }
    stop.cancel();
    guard.stop().await;
}

/// SSE events (id, data) from a byte stream until `stop` says so.
async fn read_events(
    response: reqwest::Response,
    mut stop: impl FnMut(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = body.next().await {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let raw: String = buffer.drain(..end + 2).collect();
            let id = raw
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .unwrap_or_default()
                .to_owned();
            let data = raw
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_default();
            let value = if data.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(data).unwrap()
            };
            let done = stop(&id, &value);
            events.push((id, value));
            if done {
                return events;
            }
        }
    }
    events
}

#[tokio::test]
async fn a_lost_call_stream_resumes_from_its_last_event() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let client = reqwest::Client::new();
    let id = open_session(&client, &guard.url).await;
    let call = json!({"jsonrpc": "2.0", "id": 50, "method": "tools/call", "params": {
        "name": "slow", "arguments": {"ms": 900, "steps": 3}, "_meta": {"progressToken": "p"}}});
    let response = post(&client, &guard.url, &call.to_string(), Some(&id))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // Read the priming event and the first progress event, then lose the connection.
    let first = read_events(response, |_, v| v["method"] == "notifications/progress").await;
    let (priming_id, priming) = &first[0];
    assert!(
        !priming_id.is_empty() && priming.is_null(),
        "a priming event with an id: {first:?}"
    );
    let (last_id, progress) = first.last().unwrap();
    assert_eq!(progress["params"]["progressToken"], "p");

    let resumed = client
        .get(&guard.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-11-25")
        .header("last-event-id", last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    let rest = read_events(resumed, |_, v| v["id"] == 50).await;
    let progress_after: Vec<f64> = rest
        .iter()
        .filter(|(_, v)| v["method"] == "notifications/progress")
        .map(|(_, v)| v["params"]["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(
        progress_after,
        [2.0, 3.0],
        "only what was missed, in order: {rest:?}"
    );
    let (_, answer) = rest.last().unwrap();
    assert_eq!(answer["result"]["content"][0]["text"], "waited 900 ms");

    // Another session cannot resume it.
    let other = open_session(&client, &guard.url).await;
    let stolen = client
        .get(&guard.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &other)
        .header("mcp-protocol-version", "2025-11-25")
        .header("last-event-id", last_id)
        .send()
        .await
        .unwrap();
    let body = tokio::time::timeout(std::time::Duration::from_millis(500), stolen.text()).await;
    assert!(
        body.map_or(true, |b| !b.unwrap_or_default().contains("waited 900 ms")),
        "no replay for another session"
    );
    guard.stop().await;
}

#[tokio::test]
async fn sessions_idle_out_but_fast_path_calls_keep_them_alive() {
    let fixture = fixture_http("one").await;
    let config = http_upstreams(&[("one", &fixture.url)]).replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nsession_idle_timeout_ms = 600\n",
    );
    let guard = guard(&config).await;
    let client = reqwest::Client::new();
    let busy = open_session(&client, &guard.url).await;
    let idle = open_session(&client, &guard.url).await;
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"alive"}}}"#;
    for _ in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let ok = post(&client, &guard.url, call, Some(&busy))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK, "a session in use stays open");
        assert_eq!(
            message(&ok.text().await.unwrap())["result"]["content"][0]["text"],
            "alive"
        );
    }
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let gone = post(&client, &guard.url, list, Some(&idle))
        .send()
        .await
        .unwrap();
    assert_eq!(
        gone.status(),
        StatusCode::NOT_FOUND,
        "an idle session is closed"
    );
    let gone_call = post(&client, &guard.url, call, Some(&idle))
        .send()
        .await
        .unwrap();
    assert_eq!(
        gone_call.status(),
        StatusCode::NOT_FOUND,
        "and its fast path with it"
    );
    guard.stop().await;
}

#[tokio::test]
async fn made_up_session_ids_are_not_tracked() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let client = reqwest::Client::new();
    let _real = open_session(&client, &guard.url).await;
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    for i in 0..50 {
        let forged = post(&client, &guard.url, list, Some(&format!("forged-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        guard.proxy().http_sessions_tracked(),
        1,
        "only the session rmcp created"
    );
    guard.stop().await;
}
