//! The demo's second act: Tollgate in front of the example payments API, whose endpoints are
//! tools Tollgate executes itself. Each allowed call reaches the API with a token minted for
//! that one request, which the API verifies; then the tokens a thief on that hop could take
//! are tried by hand, and the API refuses each.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{body::Bytes, response::IntoResponse};
use rmcp::{
    ServiceExt,
    model::{CallToolRequestParams, RequestMetaObject},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tollgate_guard::guard::PolicyGuard;
use tollgate_mint::{AccessKeys, Algorithm, CallCredential, access::HttpCall};
use tollgate_policy::ActionClass;
use tollgate_proxy::{Config, Proxy};

const PACK: [(&str, &str); 2] = [
    (
        "pack.toml",
        include_str!("../../../../policies/payments/pack.toml"),
    ),
    (
        "policies.cedar",
        include_str!("../../../../policies/payments/policies.cedar"),
    ),
];
const ISSUER: &str = "https://tollgate.demo";
const AUDIENCE: &str = "https://payments.demo";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// One request as it crossed the hop between Tollgate and the API.
#[derive(Debug, Clone)]
struct Crossed {
    method: String,
    path: String,
    token: String,
    body: Vec<u8>,
}

/// A forwarder between Tollgate and the API that keeps what a thief on that hop would see.
async fn wiretap(
    api: String,
    stop: CancellationToken,
) -> anyhow::Result<(String, Arc<Mutex<Vec<Crossed>>>)> {
    let seen: Arc<Mutex<Vec<Crossed>>> = Arc::default();
    let log = seen.clone();
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: http::Method, uri: http::Uri, headers: http::HeaderMap, body: Bytes| {
            let (log, client, api) = (log.clone(), client.clone(), api.clone());
            async move {
                let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
                let token = headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default()
                    .to_owned();
                log.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Crossed {
                        method: method.to_string(),
                        path: path.clone(),
                        token,
                        body: body.to_vec(),
                    });
                let mut request = client.request(method, format!("{api}{path}"));
                for (name, value) in &headers {
                    if name != http::header::HOST {
                        request = request.header(name, value);
                    }
                }
                match request.body(body).send().await {
                    Ok(answer) => {
                        let status = answer.status();
                        let bytes = answer.bytes().await.unwrap_or_default();
                        (
                            status,
                            [(http::header::CONTENT_TYPE, "application/json")],
                            bytes,
                        )
                            .into_response()
                    }
                    Err(_) => http::StatusCode::BAD_GATEWAY.into_response(),
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind(loopback()).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    Ok((url, seen))
}

/// Presents `token` to the API by hand; the API's answer in one line.
async fn present(api: &str, method: &str, path: &str, token: &str, body: &[u8]) -> String {
    let method = http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::GET);
    let answer = reqwest::Client::new()
        .request(method, format!("{api}{path}"))
        .bearer_auth(token)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send()
        .await;
    match answer {
        Ok(answer) => {
            let status = answer.status().as_u16();
            let value: Value = answer.json().await.unwrap_or(Value::Null);
            match value.get("error_description").and_then(Value::as_str) {
                Some(why) => format!("{status} refused: {why}"),
                None => format!("{status} accepted"),
            }
        }
        Err(e) => format!("no answer: {e}"),
    }
}

/// Runs the act; the number of steps that did not go as expected.
pub(crate) async fn run() -> anyhow::Result<usize> {
    let stop = CancellationToken::new();
    let state = tempfile::tempdir()?;
    let pack = tempfile::tempdir()?;
    for (file, text) in PACK {
        std::fs::write(pack.path().join(file), text)?;
    }
    let api_listener = tokio::net::TcpListener::bind(loopback()).await?;
    let api = format!("http://{}", api_listener.local_addr()?);
    let (tap, crossed) = wiretap(api.clone(), stop.clone()).await?;
    // One approver, played by this demo: it approves what it is asked, and says so.
    let approver_token = tollgate_mint::new_id("approver")?;
    let approver_file = state.path().join("approver.token");
    std::fs::write(&approver_file, &approver_token)?;
    let config = Config::parse(&format!(
        "{}\n[approvals]\ntimeout_secs = 30\n[[approvals.approver]]\nname = \"demo-approver\"\ntoken_file = \"{}\"\n",
        payments_api::tollgate_config(&payments_api::Placement {
            api: &tap,
            pack: pack.path(),
            state: state.path(),
            issuer: ISSUER,
            audience: AUDIENCE,
        }),
        approver_file.display()
    ))?;
    let signer = tollgate_mint::GrantSigner::load_or_create(state.path())?;
    let grant = tollgate_policy::Grant {
        task: "refund ticket 881".to_owned(),
        agent: Some("support-bot".to_owned()),
        user: Some("ada".to_owned()),
        resources: ["customer:cus_1001".parse().map_err(anyhow::Error::msg)?].into(),
        ..tollgate_policy::Grant::root(
            tollgate_mint::new_grant_id()?,
            "support",
            [ActionClass::Read, ActionClass::Payment],
            tollgate_mint::unix_now(),
            600,
        )
    };
    let token = signer.sign(&grant)?;
    let front = config
        .fronts
        .http
        .clone()
        .ok_or_else(|| anyhow::anyhow!("demo config has no HTTP front"))?;
    let guard = Arc::new(PolicyGuard::new(&config)?);
    let proxy = Proxy::start_with(config, guard.clone()).await;
    let server = proxy.serve_http(&front).await?;
    let admin = tollgate_guard::admin::serve(
        loopback(),
        guard,
        None,
        state.path().to_owned(),
        proxy.shutdown_token(),
    )
    .await?;
    let settings =
        payments_api::Settings::new(&format!("http://{}", admin.local_addr), ISSUER, AUDIENCE);
    tokio::spawn(payments_api::serve(api_listener, settings, stop.clone()));

    println!();
    println!("payments: Tollgate executes the payments API's endpoints as tools, each call");
    println!("carrying a token for that one request; the API verifies every one.");
    println!(
        "grant {} for \"{}\": read and payment for customer:cus_1001, purpose support",
        grant.id, grant.task
    );
    let url = format!("http://{}{}", server.local_addr, front.path);
    let agent = ()
        .serve(StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(token),
        ))
        .await?;
    let mut surprises = 0;
    let steps: [(&str, Value, Option<&str>, bool); 3] = [
        (
            "get_customer",
            json!({"customer_id": "cus_1001"}),
            None,
            true,
        ),
        (
            "refund",
            json!({"customer_id": "cus_1001", "amount": 25, "reason": "late delivery"}),
            Some("ticket 881: the parcel came two weeks late"),
            true,
        ),
        (
            "get_customer",
            json!({"customer_id": "cus_1002"}),
            None,
            false,
        ),
    ];
    for (name, args, why, allowed) in steps {
        println!("agent  → tools/call {name} {args}");
        let mut request = CallToolRequestParams::new(name.to_owned())
            .with_arguments(args.as_object().cloned().unwrap_or_default());
        if let Some(why) = why {
            let mut meta = RequestMetaObject::new();
            meta.0.insert("tollgate/justification".into(), json!(why));
            request.meta = Some(meta);
        }
        let before = crossed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        let line = match agent.call_tool(request).await {
            Ok(result) if result.is_error == Some(true) => super::summary(&result),
            Ok(result) => format!("allowed: {}", super::summary(&result)),
            Err(e) => format!("error: {e}"),
        };
        println!("       ← {line}");
        let reached = crossed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(before)
            .cloned();
        match (&reached, allowed) {
            (Some(c), true) if line.starts_with("allowed") => println!(
                "         payments-api verified a token for exactly {} {}",
                c.method, c.path
            ),
            (None, false) if line.starts_with("tool error: denied") => {
                println!("         nothing reached payments-api");
            }
            _ => {
                surprises += 1;
                println!("         (not what was expected)");
            }
        }
    }
    // A refund above 100 is held for a person. The scripted approver answers from the admin
    // endpoint, as `tollgate approvals approve <id>` would from a second terminal.
    let admin_url = format!("http://{}", admin.local_addr);
    let args = json!({"customer_id": "cus_1001", "amount": 250, "reason": "damaged in transit"});
    println!("agent  → tools/call refund {args}");
    let approver = tokio::spawn(scripted_approval(admin_url.clone(), approver_token.clone()));
    let mut request = CallToolRequestParams::new("refund")
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let mut meta = RequestMetaObject::new();
    meta.0.insert(
        "tollgate/justification".into(),
        json!("ticket 902: parcel arrived broken"),
    );
    request.meta = Some(meta);
    let answer = agent.call_tool(request).await;
    match approver.await {
        Ok(Ok(line)) => println!("{line}"),
        Ok(Err(e)) => println!("         (the scripted approver failed: {e})"),
        Err(e) => println!("         (the scripted approver failed: {e})"),
    }
    match answer {
        Ok(result) if result.is_error != Some(true) => {
            println!("       ← allowed: {}", super::summary(&result));
        }
        other => {
            surprises += 1;
            println!("       ← not approved as expected: {other:?}");
        }
    }
    agent.cancel().await?;

    // The tokens a thief between Tollgate and the API would have, tried by hand.
    let seen = crossed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let (Some(read), Some(write)) = (
        seen.iter().find(|c| c.method == "GET"),
        seen.iter().find(|c| c.method == "POST"),
    ) else {
        anyhow::bail!("the demo calls did not reach the payments API");
    };
    println!();
    println!("a thief between Tollgate and payments-api tries the tokens it saw:");
    let mut attempts = vec![
        (
            "the refund's token, replayed",
            present(&api, "POST", &write.path, &write.token, &write.body).await,
        ),
        (
            "the read's token on the refund endpoint",
            present(&api, "POST", &write.path, &read.token, &write.body).await,
        ),
    ];
    // Tokens the thief might hold from elsewhere: one long expired, one for another service.
    let keys = AccessKeys::load_or_create(state.path(), Algorithm::Es256)?;
    let mint = |audience: &str, now: i64| {
        keys.mint(&CallCredential {
            issuer_base: ISSUER,
            subject: "ada",
            client_id: "support-bot",
            audience,
            session: "s-elsewhere",
            tool: "refund",
            class: ActionClass::Payment,
            resources: &[],
            arguments_sha256: &tollgate_mint::jcs::digest(&Value::Null),
            decision_id: "d-elsewhere",
            grant_id: None,
            approval_id: None,
            http: Some(HttpCall {
                method: "POST",
                path: &write.path,
                body: &write.body,
            }),
            now,
            lifetime_secs: 30,
        })
    };
    let now = tollgate_mint::unix_now();
    let expired = mint(AUDIENCE, now - 600)?.token;
    attempts.push((
        "a refund token that expired ten minutes ago",
        present(&api, "POST", &write.path, &expired, &write.body).await,
    ));
    let elsewhere = mint("https://ledger.demo", now)?.token;
    attempts.push((
        "a refund token minted for another service",
        present(&api, "POST", &write.path, &elsewhere, &write.body).await,
    ));
    for (what, answer) in attempts {
        println!("thief  → {what}");
        println!("       ← {answer}");
        if !answer.contains("refused") {
            surprises += 1;
            println!("         (expected a refusal)");
        }
    }
    proxy.shutdown().await;
    stop.cancel();
    let _ = server.task.await;
    Ok(surprises)
}

/// Plays the approver: waits for the held request, shows what it is for, and approves it.
async fn scripted_approval(admin: String, token: String) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    for _ in 0..250 {
        let listed: Value = client
            .get(format!("{admin}/approvals?pending"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if let Some(request) = listed
            .get("approvals")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            let id = request
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let text = |k: &str| request.get(k).map(Value::to_string).unwrap_or_default();
            let answer = client
                .post(format!("{admin}/approvals/{id}"))
                .bearer_auth(&token)
                .json(&json!({"decision": "approve", "reason": "demo mode approves what it is asked"}))
                .send()
                .await?;
            anyhow::ensure!(answer.status().is_success(), "the approval was refused");
            return Ok(format!(
                "         held for approval {id}: {} {} on {}; the scripted approver (demo mode) approves it",
                text("tool"),
                text("arguments"),
                text("resources"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    anyhow::bail!("no approval request appeared")
}
