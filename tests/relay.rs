//! The relay end to end over real streamable HTTP on both sides: listing and calling through
//! the merged catalog, progress, cancellation, server→client requests, notifications,
//! resources, prompts, completions and pagination, for both protocol revisions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![expect(
    deprecated,
    reason = "resource subscriptions are deprecated upstream but still relayed"
)]

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use rmcp::model::{
    CompleteRequestParams, GetPromptRequestParams, PaginatedRequestParams,
    ReadResourceRequestParams, Reference, SubscribeRequestParams,
};
use serde_json::json;
use support::*;

#[tokio::test]
async fn single_upstream_is_relayed_unprefixed_for_both_revisions() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;

    for agent in [
        agent_legacy(&guard.url, TestAgent::new("legacy")).await,
        agent_modern(&guard.url, TestAgent::new("modern")).await,
    ] {
        let tools = agent.list_all_tools().await.unwrap();
        assert!(
            tools.iter().any(|t| t.name == "echo"),
            "no prefix with one upstream"
        );
        let result = agent
            .call_tool(call("echo", json!({"text": "hello"})))
            .await
            .unwrap();
        assert_eq!(text_of(&result), "hello");
        let result = agent
            .call_tool(call("test_error_handling", json!({})))
            .await
            .unwrap();
        assert_eq!(
            result.is_error,
            Some(true),
            "tool errors are relayed as results"
        );
        agent.cancel().await.unwrap();
    }
    guard.stop().await;
}

#[tokio::test]
async fn finished_call_streams_are_not_kept() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let agent = agent_legacy(&guard.url, TestAgent::new("k")).await;
    for i in 0..50 {
        let r = agent
            .call_tool(call("echo", json!({"text": format!("{i}")})))
            .await
            .unwrap();
        assert_eq!(text_of(&r), format!("{i}"));
    }
    let none_kept = eventually(Duration::from_secs(2), || {
        guard.proxy().resumable_streams() == 0
    })
    .await;
    assert!(
        none_kept,
        "{} streams kept after their answers were read",
        guard.proxy().resumable_streams()
    );
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn three_upstreams_merge_with_prefixes_and_route_back() {
    let a = fixture_http("alpha").await;
    let b = fixture_http("beta").await;
    let c = fixture_http("gamma").await;
    let guard = guard(&http_upstreams(&[
        ("alpha", &a.url),
        ("beta", &b.url),
        ("gamma", &c.url),
    ]))
    .await;
    let agent = agent_legacy(&guard.url, TestAgent::new("x")).await;

    let tools = agent.list_all_tools().await.unwrap();
    for prefix in ["alpha", "beta", "gamma"] {
        let name = format!("{prefix}.whoami");
        assert!(tools.iter().any(|t| t.name == name), "{name} listed");
        let result = agent.call_tool(call(&name, json!({}))).await.unwrap();
        assert_eq!(
            text_of(&result),
            prefix,
            "routed to the upstream named in the prefix"
        );
    }
    let unknown = agent
        .call_tool(call("whoami", json!({})))
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("unknown tool"), "{unknown}");

    // Prompts are prefixed like tools and routed back with their own name.
    let prompt = agent
        .get_prompt(GetPromptRequestParams::new("beta.test_simple_prompt"))
        .await
        .unwrap();
    assert!(
        serde_json::to_string(&prompt)
            .unwrap()
            .contains("simple prompt")
    );
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn colliding_names_are_hidden_and_reported_not_shadowed() {
    let a = fixture_http("alpha").await;
    let b = fixture_http("beta").await;
    let config = format!(
        "{}\n[naming]\nprefix = \"never\"\n",
        http_upstreams(&[("alpha", &a.url), ("beta", &b.url)])
    );
    let guard = guard(&config).await;
    let report = guard.proxy().report();
    assert!(
        report
            .collisions
            .iter()
            .any(|c| c.contains("`echo`") && c.contains("`alpha`") && c.contains("`beta`")),
        "collision reported at start: {:?}",
        report.collisions
    );
    let agent = agent_legacy(&guard.url, TestAgent::new("x")).await;
    let tools = agent.list_all_tools().await.unwrap();
    assert!(
        !tools.iter().any(|t| t.name == "echo"),
        "a colliding tool is not silently shadowed"
    );
    assert!(
        agent
            .call_tool(call("echo", json!({"text": "x"})))
            .await
            .is_err()
    );
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn collision_appearing_on_list_changed_is_reported() {
    let a = fixture_http("alpha").await;
    let b = fixture_http("beta").await;
    // Disjoint tools but for `bulk_0`, which beta only grows later.
    *a.state.tool_prefix.lock().unwrap() = "a_".into();
    *b.state.tool_prefix.lock().unwrap() = "b_".into();
    a.state.bulk_tools.store(1, Ordering::SeqCst);
    let config = format!(
        "{}\n[naming]\nprefix = \"never\"\n",
        http_upstreams(&[("alpha", &a.url), ("beta", &b.url)])
    );
    let guard = guard(&config).await;
    let agent = agent_legacy(&guard.url, TestAgent::new("x")).await;
    assert!(
        agent
            .list_all_tools()
            .await
            .unwrap()
            .iter()
            .any(|t| t.name == "bulk_0")
    );
    assert!(
        !guard
            .proxy()
            .report()
            .collisions
            .iter()
            .any(|c| c.starts_with("tool"))
    );

    b.state.bulk_tools.store(1, Ordering::SeqCst);
    // beta announces list_changed when asked to redefine its tools.
    agent
        .call_tool(call("b_redefine", json!({})))
        .await
        .unwrap();
    let seen = eventually(Duration::from_secs(5), || {
        guard
            .proxy()
            .report()
            .collisions
            .iter()
            .any(|c| c.contains("`bulk_0`"))
    })
    .await;
    assert!(
        seen,
        "collision on list_changed: {:?}",
        guard.proxy().report().collisions
    );
    let tools = agent.list_all_tools().await.unwrap();
    assert!(
        !tools.iter().any(|t| t.name == "bulk_0"),
        "hidden once it collides"
    );
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn pagination_walks_the_merged_list() {
    let a = fixture_http("alpha").await;
    let b = fixture_http("beta").await;
    a.state.bulk_tools.store(90, Ordering::SeqCst);
    b.state.bulk_tools.store(90, Ordering::SeqCst);
    let guard = guard(&http_upstreams(&[("alpha", &a.url), ("beta", &b.url)])).await;
    let agent = agent_legacy(&guard.url, TestAgent::new("x")).await;

    let first = agent.list_tools(None).await.unwrap();
    assert!(first.next_cursor.is_some(), "more than one page");
    let mut all = first.tools.clone();
    let mut cursor = first.next_cursor;
    while let Some(c) = cursor {
        let page = agent
            .list_tools(Some(PaginatedRequestParams::default().with_cursor(Some(c))))
            .await
            .unwrap();
        all.extend(page.tools);
        cursor = page.next_cursor;
    }
    let direct = 2 * (agent.list_all_tools().await.unwrap().len() / 2);
    assert_eq!(all.len(), direct);
    assert!(
        all.iter().any(|t| t.name == "alpha.bulk_89")
            && all.iter().any(|t| t.name == "beta.bulk_0")
    );

    let bad = agent
        .list_tools(Some(
            PaginatedRequestParams::default().with_cursor(Some("nonsense".into())),
        ))
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("cursor"), "{bad}");
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn progress_is_mapped_to_the_agents_token() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let test_agent = TestAgent::new("p");
    let seen = test_agent.seen.clone();
    let agent = agent_legacy(&guard.url, test_agent).await;

    let result = agent
        .call_tool(call("test_tool_with_progress", json!({})))
        .await
        .unwrap();
    assert!(text_of(&result).contains("progress"));
    let ok = eventually(Duration::from_secs(2), || {
        seen.lock().unwrap().progress.len() >= 3
    })
    .await;
    let values: Vec<f64> = seen
        .lock()
        .unwrap()
        .progress
        .iter()
        .map(|p| p.progress)
        .collect();
    assert!(ok, "three progress notifications relayed, got {values:?}");
    assert_eq!(values, [0.0, 50.0, 100.0]);
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn agent_cancellation_reaches_the_upstream_request() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let agent = agent_legacy(&guard.url, TestAgent::new("c")).await;

    let handle = agent
        .send_cancellable_request(
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(call(
                "hang",
                json!({}),
            ))),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle
        .cancel(Some("user pressed stop".into()))
        .await
        .unwrap();
    let cancelled = eventually(Duration::from_secs(3), || {
        fixture.state.cancellations.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(cancelled, "the upstream saw the cancellation");
    // The session keeps working after a cancelled call.
    let result = agent
        .call_tool(call("echo", json!({"text": "still here"})))
        .await
        .unwrap();
    assert_eq!(text_of(&result), "still here");
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn sampling_elicitation_and_roots_reach_the_calling_agent() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let test_agent = TestAgent::new("alice");
    let seen = test_agent.seen.clone();
    let agent = agent_legacy(&guard.url, test_agent).await;

    let sampled = agent
        .call_tool(call("test_sampling", json!({"prompt": "hi"})))
        .await
        .unwrap();
    assert_eq!(text_of(&sampled), "LLM response: sampled by alice");
    let elicited = agent
        .call_tool(call("test_elicitation", json!({"message": "who?"})))
        .await
        .unwrap();
    assert!(
        text_of(&elicited).contains("action=accept") && text_of(&elicited).contains("alice"),
        "{}",
        text_of(&elicited)
    );
    let roots = agent.call_tool(call("ask_roots", json!({}))).await.unwrap();
    assert!(
        text_of(&roots).contains("file:///alice"),
        "{}",
        text_of(&roots)
    );
    let counts = {
        let seen = seen.lock().unwrap();
        (seen.sampling.len(), seen.elicitations, seen.roots_asked)
    };
    assert_eq!(counts, (1, 1, 1));
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn server_requests_follow_their_session_with_several_agents() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let alice = agent_legacy(&guard.url, TestAgent::new("alice")).await;
    let bob = agent_legacy(&guard.url, TestAgent::new("bob")).await;
    // Sequential calls from different sessions each reach their own agent.
    for (agent, name) in [(&alice, "alice"), (&bob, "bob"), (&alice, "alice")] {
        let r = agent
            .call_tool(call("test_sampling", json!({"prompt": "x"})))
            .await
            .unwrap();
        assert_eq!(text_of(&r), format!("LLM response: sampled by {name}"));
    }
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn logging_and_list_changed_reach_sessions() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let caller = TestAgent::new("caller");
    let watcher = TestAgent::new("watcher");
    let (caller_seen, watcher_seen) = (caller.seen.clone(), watcher.seen.clone());
    let caller = agent_legacy(&guard.url, caller).await;
    let watcher = agent_legacy(&guard.url, watcher).await;
    // Both sessions must be known before the change is announced.
    watcher.list_all_tools().await.unwrap();

    caller
        .call_tool(call("test_tool_with_logging", json!({})))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || caller_seen
            .lock()
            .unwrap()
            .logs
            .len()
            >= 3)
        .await,
        "log messages during a call reach the calling session"
    );
    assert!(
        watcher_seen.lock().unwrap().logs.is_empty(),
        "and not a session with no call in flight: {:?}",
        watcher_seen.lock().unwrap().logs
    );

    let before = caller.list_all_tools().await.unwrap();
    caller.call_tool(call("redefine", json!({}))).await.unwrap();
    let both = eventually(Duration::from_secs(3), || {
        caller_seen.lock().unwrap().tool_list_changed >= 1
            && watcher_seen.lock().unwrap().tool_list_changed >= 1
    })
    .await;
    assert!(both, "list_changed reaches every session");
    let after = caller.list_all_tools().await.unwrap();
    let echo = |tools: &[rmcp::model::Tool]| {
        tools
            .iter()
            .find(|t| t.name == "echo")
            .unwrap()
            .description
            .clone()
    };
    assert_ne!(
        echo(&before),
        echo(&after),
        "the new definition is served after list_changed"
    );
    caller.cancel().await.unwrap();
    watcher.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn resources_prompts_and_completions_route_to_their_upstream() {
    let a = fixture_http("alpha").await;
    let b = fixture_http("beta").await;
    let guard = guard(&http_upstreams(&[("alpha", &a.url), ("beta", &b.url)])).await;
    let test_agent = TestAgent::new("r");
    let seen = test_agent.seen.clone();
    let agent = agent_legacy(&guard.url, test_agent).await;

    let read = agent
        .read_resource(ReadResourceRequestParams::new("test://template/42/data"))
        .await
        .unwrap();
    assert!(
        serde_json::to_string(&read)
            .unwrap()
            .contains("Data for ID: 42")
    );
    let completion = agent
        .complete(CompleteRequestParams::new(
            Reference::for_prompt("alpha.test_prompt_with_arguments"),
            rmcp::model::ArgumentInfo::new("arg1", "par"),
        ))
        .await
        .unwrap();
    assert_eq!(completion.completion.values, ["paris", "park", "party"]);

    // Both upstreams list the watched resource: the URI collides, so it is not routed.
    let refused = agent
        .subscribe(SubscribeRequestParams::new("test://watched-resource"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("no upstream serves"),
        "{refused}"
    );
    let prompts = agent.list_all_prompts().await.unwrap();
    assert!(
        prompts
            .iter()
            .any(|p| p.name == "beta.test_prompt_with_image")
    );
    assert!(seen.lock().unwrap().resource_updates.is_empty());
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn subscriptions_deliver_updates_to_the_subscriber() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let test_agent = TestAgent::new("s");
    let seen = test_agent.seen.clone();
    let agent = agent_legacy(&guard.url, test_agent).await;
    agent
        .subscribe(SubscribeRequestParams::new("test://watched-resource"))
        .await
        .unwrap();
    let updated = eventually(Duration::from_secs(2), || {
        seen.lock()
            .unwrap()
            .resource_updates
            .contains(&"test://watched-resource".to_owned())
    })
    .await;
    assert!(updated, "the subscriber receives resources/updated");
    agent.cancel().await.unwrap();
    guard.stop().await;
}

#[tokio::test]
async fn agent_meta_is_forwarded_but_hop_fields_are_not() {
    let fixture = fixture_http("one").await;
    let guard = guard(&http_upstreams(&[("one", &fixture.url)])).await;
    let agent = agent_legacy(&guard.url, TestAgent::new("m")).await;
    let mut params = call("echo", json!({"text": "m"}));
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.0.0.insert(
        "traceparent".into(),
        json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    meta.0.0.insert(
        "io.modelcontextprotocol/related-task".into(),
        json!("spoofed"),
    );
    params.meta = Some(meta);
    agent.call_tool(params).await.unwrap();
    let seen = fixture.state.last_meta.lock().unwrap().clone().unwrap();
    assert_eq!(
        seen["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert!(
        seen.get("io.modelcontextprotocol/related-task").is_none(),
        "{seen}"
    );
    agent.cancel().await.unwrap();
    guard.stop().await;
}
