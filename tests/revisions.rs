//! Both protocol revisions on both sides: Tollgate answers each agent in the revision it
//! speaks, whatever the upstream speaks (server→client requests become input requests for a
//! 2026-07-28 agent, and input requests become server→client requests for a 2025-11-25 agent).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use rmcp::model::CallToolResponse;
use serde_json::json;
use support::*;

fn with_protocol(url: &str, protocol: &str) -> String {
    format!(
        "[front.http]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"one\"\nurl = \"{url}\"\nprotocol = \"{protocol}\"\ncall_timeout_ms = 1500\n"
    )
}

async fn interactive_round(agent: &Agent, label: &str) {
    let sampled = agent
        .call_tool(call("test_sampling", json!({"prompt": "p"})))
        .await
        .unwrap();
    assert_eq!(
        text_of(&sampled),
        format!("LLM response: sampled by {label}")
    );
    let elicited = agent
        .call_tool(call("test_elicitation", json!({"message": "m"})))
        .await
        .unwrap();
    assert!(text_of(&elicited).contains(label), "{}", text_of(&elicited));
    let roots = agent.call_tool(call("ask_roots", json!({}))).await.unwrap();
    assert!(
        text_of(&roots).contains(&format!("file:///{label}")),
        "{}",
        text_of(&roots)
    );
}

#[tokio::test]
async fn every_agent_revision_meets_every_upstream_revision() {
    let fixture = fixture_http("one").await;
    for protocol in ["2025-11-25", "2026-07-28"] {
        let guard = guard(&with_protocol(&fixture.url, protocol)).await;
        assert_eq!(guard.proxy().report().connected, ["one"], "{protocol}");
        let legacy = agent_legacy(&guard.url, TestAgent::new("legacy")).await;
        interactive_round(&legacy, "legacy").await;
        let modern = agent_modern(&guard.url, TestAgent::new("modern")).await;
        interactive_round(&modern, "modern").await;
        legacy.cancel().await.unwrap();
        modern.cancel().await.unwrap();
        guard.stop().await;
    }
}

#[tokio::test]
async fn modern_agent_gets_input_required_bound_to_its_session() {
    let fixture = fixture_http("one").await;
    let guard = guard(&with_protocol(&fixture.url, "2025-11-25")).await;
    // Stateless requests have no session: the credentials they carry bind the state.
    let alice = agent_modern_with(&guard.url, TestAgent::new("alice"), Some("alice-token")).await;
    let mallory =
        agent_modern_with(&guard.url, TestAgent::new("mallory"), Some("mallory-token")).await;

    let first = alice
        .call_tool_once(call("test_sampling", json!({"prompt": "secret plan"})))
        .await
        .unwrap();
    let CallToolResponse::InputRequired(needed) = first else {
        panic!("a legacy upstream's sampling request becomes an input request: {first:?}");
    };
    let state = needed.request_state.clone().unwrap();
    assert!(state.starts_with("tollgate:"), "{state}");
    let requests = serde_json::to_value(needed.input_requests.as_ref().unwrap()).unwrap();
    assert!(requests.to_string().contains("secret plan"), "{requests}");

    // Another session cannot resume it.
    let answer =
        json!({"role": "assistant", "content": {"type": "text", "text": "forged"}, "model": "m"});
    let mut responses = rmcp::model::InputResponses::new();
    responses.insert("tollgate".into(), answer.clone());
    let forged = mallory
        .call_tool_once(
            call("test_sampling", json!({"prompt": "secret plan"}))
                .with_input_responses(responses.clone())
                .with_request_state(state.clone()),
        )
        .await
        .unwrap_err();
    assert!(forged.to_string().contains("requestState"), "{forged}");

    // Its own session can.
    let done = alice
        .call_tool_once(
            call("test_sampling", json!({"prompt": "secret plan"}))
                .with_input_responses(responses.clone())
                .with_request_state(state.clone()),
        )
        .await
        .unwrap();
    let CallToolResponse::Complete(result) = done else {
        panic!("resumed call completes: {done:?}")
    };
    assert_eq!(text_of(&result), "LLM response: forged");

    // A state is used once.
    let again = alice
        .call_tool_once(
            call("test_sampling", json!({"prompt": "secret plan"}))
                .with_input_responses(responses)
                .with_request_state(state),
        )
        .await
        .unwrap_err();
    assert!(again.to_string().contains("requestState"), "{again}");
    alice.cancel().await.unwrap();
    mallory.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn unanswered_input_request_expires_with_the_call_timeout() {
    let fixture = fixture_http("one").await;
    let guard = guard(&with_protocol(&fixture.url, "2025-11-25")).await;
    let agent = agent_modern(&guard.url, TestAgent::new("slow")).await;
    let first = agent
        .call_tool_once(call("test_sampling", json!({"prompt": "p"})))
        .await
        .unwrap();
    let CallToolResponse::InputRequired(needed) = first else {
        panic!("{first:?}")
    };
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut responses = rmcp::model::InputResponses::new();
    responses.insert(
        "tollgate".into(),
        json!({"role": "assistant", "content": {"type": "text", "text": "late"}, "model": "m"}),
    );
    let late = agent
        .call_tool_once(
            call("test_sampling", json!({"prompt": "p"}))
                .with_input_responses(responses)
                .with_request_state(needed.request_state.unwrap()),
        )
        .await
        .unwrap_err();
    assert!(late.to_string().contains("expired"), "{late}");
    agent.cancel().await.unwrap();
    guard.stop().await;
}
