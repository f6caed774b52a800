//! HTTP API tools end to end: an agent calls tools Tollgate executes as REST requests against
//! the example payments API, which accepts only a token minted for exactly the request it
//! receives (method, path, body), on the trust path of the endpoint, fresh and once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::{Value, json};
use support::*;
use tollgate_proxy::{Config, Proxy};

const ISSUER: &str = "https://tollgate.test";

struct Payments {
    _tmp: tempfile::TempDir,
    proxy: Proxy,
    url: String,
    api: String,
    grant: String,
    stop: tokio_util::sync::CancellationToken,
}

async fn payments() -> Payments {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let stop = tokio_util::sync::CancellationToken::new();

    // Tollgate's admin endpoint must be known to the API, and the API's address to Tollgate:
    // bind the API first, then start it once the admin endpoint is up.
    let api_listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let api = format!("http://{}", api_listener.local_addr().unwrap());
    let pack = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/payments");
    let config = Config::parse(&payments_api::tollgate_config(&payments_api::Placement {
        api: &api,
        pack: &pack,
        state: &state,
        issuer: ISSUER,
        audience: "https://payments.test",
    }))
    .unwrap();
    let signer = tollgate_mint::GrantSigner::load_or_create(&state).unwrap();
    let grant = tollgate_policy::Grant {
        task: "refund ticket 881".into(),
        agent: Some("support-bot".into()),
        user: Some("ada".into()),
        resources: ["customer:cus_1001".parse().unwrap()].into(),
        ..root_grant(
            "support",
            [
                tollgate_policy::ActionClass::Read,
                tollgate_policy::ActionClass::Payment,
            ],
        )
    };
    let grant = signer.sign(&grant).unwrap();
    let Guarded { proxy, url, admin } = guarded(config, None).await;
    let settings = payments_api::Settings::new(&admin, ISSUER, "https://payments.test");
    tokio::spawn(payments_api::serve(api_listener, settings, stop.clone()));
    Payments {
        _tmp: tmp,
        proxy,
        url,
        api,
        grant,
        stop,
    }
}

async fn audit(p: &Payments) -> Vec<Value> {
    reqwest::get(format!("{}/_audit", p.api))
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

fn justified(name: &str, args: Value, why: &str) -> rmcp::model::CallToolRequestParams {
    let mut request = call(name, args);
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.0.insert("tollgate/justification".into(), json!(why));
    request.meta = Some(meta);
    request
}

#[tokio::test]
async fn an_api_tool_call_reaches_the_api_with_a_token_for_exactly_that_request() {
    let p = payments().await;
    let agent = agent_modern_with(&p.url, TestAgent::new("m"), Some(&p.grant)).await;
    let tools = agent.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(
        names.contains(&"get_customer") && names.contains(&"refund"),
        "{names:?}"
    );

    let customer = agent
        .call_tool(call("get_customer", json!({"customer_id": "cus_1001"})))
        .await
        .unwrap();
    assert_ne!(customer.is_error, Some(true), "{customer:?}");
    assert_eq!(
        customer.structured_content.as_ref().unwrap()["name"],
        "Ada Lovelace"
    );
    let charges = agent
        .call_tool(call("list_charges", json!({"customer_id": "cus_1001"})))
        .await
        .unwrap();
    let listed: Value = serde_json::from_str(&text_of(&charges)).unwrap();
    assert_eq!(
        listed[0]["id"], "ch_1",
        "the `result` pointer picks the list"
    );

    let refund = agent
        .call_tool(justified(
            "refund",
            json!({"customer_id": "cus_1001", "amount": 40, "reason": "late delivery"}),
            "ticket 881: the parcel came two weeks late",
        ))
        .await
        .unwrap();
    assert_ne!(refund.is_error, Some(true), "{refund:?}");
    assert_eq!(refund.structured_content.as_ref().unwrap()["balance"], 460);

    let seen = audit(&p).await;
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert!(seen.iter().all(|e| e["outcome"] == "accepted"), "{seen:#?}");
    let (get, post) = (&seen[0], &seen[2]);
    assert_eq!(get["iss"], format!("{ISSUER}/read"));
    assert_eq!(get["path"], "/customers/cus_1001");
    assert_eq!(post["iss"], format!("{ISSUER}/write"));
    assert_eq!(
        (post["method"].as_str(), post["path"].as_str()),
        (Some("POST"), Some("/customers/cus_1001/refunds"))
    );
    let details = &post["authorization_details"][0];
    assert_eq!(details["tool"], "refund");
    assert_eq!(details["action"], "payment");
    assert_eq!(details["resources"], json!(["customer:cus_1001"]));
    assert_eq!(post["sub"], "ada");
    assert_eq!(post["client_id"], "support-bot");
    agent.cancel().await.unwrap();
    p.stop.cancel();
    p.proxy.shutdown().await;
}

#[tokio::test]
async fn what_the_grant_or_the_pack_refuses_never_reaches_the_api() {
    let p = payments().await;
    let agent = agent_modern_with(&p.url, TestAgent::new("m"), Some(&p.grant)).await;
    let refused = |r: &rmcp::model::CallToolResult| r.is_error == Some(true);
    // Another customer than the grant's.
    let other = agent
        .call_tool(call("get_customer", json!({"customer_id": "cus_1002"})))
        .await
        .unwrap();
    assert!(
        refused(&other) && text_of(&other).contains("denied"),
        "{other:?}"
    );
    // A refund without a justification, and one large enough to need a person.
    let unjustified = agent
        .call_tool(call(
            "refund",
            json!({"customer_id": "cus_1001", "amount": 5}),
        ))
        .await
        .unwrap();
    assert!(refused(&unjustified), "{unjustified:?}");
    let large = agent
        .call_tool(justified(
            "refund",
            json!({"customer_id": "cus_1001", "amount": 500}),
            "goodwill",
        ))
        .await
        .unwrap();
    assert!(text_of(&large).contains("needs approval"), "{large:?}");
    // Arguments the schema refuses (a path segment that would climb out of the path).
    let climbing = agent
        .call_tool(call("get_customer", json!({"customer_id": "../admin"})))
        .await
        .unwrap();
    assert!(refused(&climbing), "{climbing:?}");
    // Deleting customers is never the agent's job.
    let delete = agent
        .call_tool(call("delete_customer", json!({"customer_id": "cus_1001"})))
        .await;
    assert!(
        delete.is_err() || delete.as_ref().is_ok_and(refused),
        "{delete:?}"
    );
    assert!(audit(&p).await.is_empty(), "nothing reached the API");
    agent.cancel().await.unwrap();
    p.stop.cancel();
    p.proxy.shutdown().await;
}
