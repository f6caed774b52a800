//! Faults: an upstream that dies mid-call, one that never answers, and server→client requests
//! that cannot be attributed to one session.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::json;
use support::*;

fn stdio_upstream(name: &str, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\ncommand = \"{}\"\nargs = [\"stdio\", \"{name}\"]\n{extra}\n",
        fixture_bin().display()
    )
}

#[tokio::test]
async fn dead_upstream_fails_its_calls_by_name_restarts_and_spares_the_others() {
    let healthy = fixture_http("b").await;
    let config = format!(
        "[front.http]\nlisten = \"127.0.0.1:0\"\n{}\n[[upstream]]\nname = \"b\"\nurl = \"{}\"\n",
        stdio_upstream("a", "restart_initial_backoff_ms = 100"),
        healthy.url
    );
    let guard = guard(&config).await;
    let agent = agent_legacy(&guard.url, TestAgent::new("x")).await;
    let pid: i32 = text_of(&agent.call_tool(call("a.pid", json!({}))).await.unwrap())
        .parse()
        .unwrap();

    let peer = agent.peer().clone();
    let in_flight = tokio::spawn(async move { peer.call_tool(call("a.hang", json!({}))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the in-flight call ends when its upstream dies")
        .unwrap()
        .unwrap_err();
    assert!(
        failed.to_string().contains("`a`"),
        "the error names the upstream: {failed}"
    );

    let other = agent
        .call_tool(call("b.echo", json!({"text": "b serves"})))
        .await
        .unwrap();
    assert_eq!(
        text_of(&other),
        "b serves",
        "the other upstream keeps serving"
    );

    let mut restarted = None;
    for _ in 0..50 {
        if let Ok(r) = agent.call_tool(call("a.pid", json!({}))).await {
            restarted = Some(text_of(&r).parse::<i32>().unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarted = restarted.expect("the upstream is restarted");
    assert_ne!(restarted, pid, "a new process serves after the restart");
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn hanging_upstream_hits_the_call_timeout_and_is_cancelled() {
    let fixture = fixture_http("slowpoke").await;
    let config = format!(
        "[front.http]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"slowpoke\"\nurl = \"{}\"\ncall_timeout_ms = 300\n",
        fixture.url
    );
    let guard = guard(&config).await;
    let agent = agent_legacy(&guard.url, TestAgent::new("x")).await;
    let started = std::time::Instant::now();
    let error = agent.call_tool(call("hang", json!({}))).await.unwrap_err();
    assert!(
        error.to_string().contains("did not answer within 300 ms"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(3), || fixture
            .state
            .cancellations
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the upstream received a cancellation for the timed-out call"
    );
    let fine = agent
        .call_tool(call("echo", json!({"text": "ok"})))
        .await
        .unwrap();
    assert_eq!(text_of(&fine), "ok");
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn stdio_server_requests_route_to_the_only_session_in_flight() {
    let config = format!(
        "[front.http]\nlisten = \"127.0.0.1:0\"\n{}",
        stdio_upstream("a", "")
    );
    let guard = guard(&config).await;
    let alice = agent_legacy(&guard.url, TestAgent::new("alice")).await;
    // Several calls of one session in flight on one stdio upstream: still unambiguous.
    let peer = alice.peer().clone();
    let slow = tokio::spawn(async move { peer.call_tool(call("slow", json!({"ms": 800}))).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sampled = alice
        .call_tool(call("test_sampling", json!({"prompt": "p"})))
        .await
        .unwrap();
    assert_eq!(text_of(&sampled), "LLM response: sampled by alice");
    slow.await.unwrap().unwrap();
    alice.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn stdio_server_requests_with_several_sessions_in_flight_are_refused() {
    let config = format!(
        "[front.http]\nlisten = \"127.0.0.1:0\"\n{}",
        stdio_upstream("a", "")
    );
    let guard = guard(&config).await;
    let alice = TestAgent::new("alice");
    let alice_seen = alice.seen.clone();
    let alice = agent_legacy(&guard.url, alice).await;
    let bob = TestAgent::new("bob");
    let bob_seen = bob.seen.clone();
    let bob = agent_legacy(&guard.url, bob).await;

    let peer = alice.peer().clone();
    let slow = tokio::spawn(async move { peer.call_tool(call("slow", json!({"ms": 800}))).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = bob
        .call_tool(call("test_sampling", json!({"prompt": "p"})))
        .await;
    let shown = match refused {
        Ok(result) => text_of(&result),
        Err(e) => e.to_string(),
    };
    assert!(shown.contains("cannot be attributed"), "{shown}");
    assert!(
        alice_seen.lock().unwrap().sampling.is_empty(),
        "alice never sees bob's prompt"
    );
    assert!(bob_seen.lock().unwrap().sampling.is_empty());
    slow.await.unwrap().unwrap();
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
    guard.stop().await;
}
