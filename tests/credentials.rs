//! Per-call credentials end to end: an allowed call reaches its upstream carrying a token
//! minted for that one call (a bearer header over HTTP, `_meta` over stdio), which verifies
//! against the JWKS the admin endpoint publishes; the agent never holds one and cannot forge
//! one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use support::*;
use tollgate_guard::guard::PolicyGuard;
use tollgate_mint::{Algorithm, Presented, Verifier, VerifierConfig, VerifyError};
use tollgate_proxy::{Config, Proxy};

const ISSUER: &str = "https://tollgate.test";
const ADMIN_TOKEN: &str = "admin-token-for-tests-only";

struct Rig {
    tmp: tempfile::TempDir,
    proxy: Proxy,
    url: String,
    admin: String,
    headers: tollgate_testkit::HeaderLog,
    token: String,
    _stop: tokio_util::sync::CancellationToken,
}

async fn rig(algorithm: &str) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let (pack, state) = (tmp.path().join("pack"), tmp.path().join("state"));
    reads_pack(&pack, "");
    let signer = tollgate_mint::GrantSigner::load_or_create(&state).unwrap();
    let grant = tollgate_policy::Grant {
        task: "test credentials".into(),
        agent: Some("test-agent".into()),
        user: Some("ada".into()),
        ..root_grant("work", [tollgate_policy::ActionClass::Read])
    };
    let token = signer.sign(&grant).unwrap();

    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, headers) = recording_fixture(&stop).await;
    let config = Config::parse(&format!(
        r#"
{head}[mint]
issuer = "{ISSUER}"
algorithm = "{algorithm}"
[[upstream]]
name = "fx"
url = "http://{addr}/mcp"
credential = {{ mode = "mint", audience = "https://fx.test", lifetime_secs = 30 }}
[[upstream]]
name = "st"
command = "{fixture}"
args = ["stdio", "st"]
env = {{ {meta_env} = "{meta_log}" }}
credential = {{ mode = "mint", audience = "https://st.test" }}
"#,
        meta_env = tollgate_testkit::fixture::META_LOG_ENV,
        meta_log = tmp.path().join("meta.log").display(),
        head = guarded_toml(&pack, &state),
        fixture = fixture_bin().display(),
    ))
    .unwrap();
    let Guarded { proxy, url, admin } = guarded(config, Some(ADMIN_TOKEN)).await;
    Rig {
        tmp,
        proxy,
        url,
        admin,
        headers,
        token,
        _stop: stop,
    }
}

async fn published(rig: &Rig) -> Value {
    reqwest::get(format!("{}/.well-known/jwks.json", rig.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn verifier(rig: &Rig, audience: &str, path: &str, algorithm: Algorithm) -> Verifier {
    let jwks = published(rig).await;
    assert!(jwks["keys"].as_array().unwrap().len() >= 8, "{jwks}");
    Verifier::new(
        VerifierConfig {
            issuer: format!("{ISSUER}/{path}"),
            audience: audience.into(),
            algorithms: vec![algorithm],
            leeway_secs: 5,
            revocations: None,
        },
        &jwks,
    )
}

/// A grant for reads under the default pack's `general` purpose, signed in `state`.
fn general_read_grant(state: &std::path::Path, user: Option<&str>) -> String {
    let grant = tollgate_policy::Grant {
        agent: Some("test-agent".into()),
        user: user.map(str::to_owned),
        ..root_grant("general", [tollgate_policy::ActionClass::Read])
    };
    tollgate_mint::GrantSigner::load_or_create(state)
        .unwrap()
        .sign(&grant)
        .unwrap()
}

fn bearer_of_last_call(rig: &Rig) -> String {
    let log = rig.headers.lock().unwrap();
    let auth = log
        .iter()
        .rev()
        .find_map(|h| h.get("authorization"))
        .expect("the upstream received an Authorization header")
        .to_str()
        .unwrap()
        .to_owned();
    auth.strip_prefix("Bearer ").unwrap().to_owned()
}

fn now() -> i64 {
    tollgate_mint::unix_now()
}

#[tokio::test]
async fn an_http_upstream_receives_a_token_for_exactly_that_call_on_both_paths() {
    for (alg, name) in [(Algorithm::Es256, "ES256"), (Algorithm::EdDsa, "EdDSA")] {
        let rig = rig(name).await;
        let v = verifier(&rig, "https://fx.test", "read", alg).await;

        // A 2025-11-25 session: the fast path's raw POST.
        let legacy = agent_with_grant(&rig.url, &rig.token).await;
        let r = legacy
            .call_tool(call("fx.echo", json!({"text": "one"})))
            .await
            .unwrap();
        assert_eq!(text_of(&r), "one");
        let token = bearer_of_last_call(&rig);
        assert_ne!(token, rig.token, "the grant itself never leaves Tollgate");
        let claims = v
            .verify(
                &token,
                now(),
                &Presented::tool("echo", &json!({"text": "one"})),
            )
            .unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.client_id.as_str()),
            ("ada", "test-agent")
        );
        assert!(claims.exp - claims.iat == 30);
        assert!(!serde_json::to_string(&r).unwrap().contains(&token));
        // The same token again, as a replaying attacker would send it: refused.
        assert_eq!(
            v.verify(
                &token,
                now(),
                &Presented::tool("echo", &json!({"text": "one"}))
            ),
            Err(VerifyError::Replayed)
        );
        legacy.cancel().await.unwrap();

        // A 2026-07-28 agent: rmcp's typed path, the credential moved to the header.
        let modern = agent_modern_with(&rig.url, TestAgent::new("m"), Some(&rig.token)).await;
        let r = modern
            .call_tool(call("fx.echo", json!({"text": "two"})))
            .await
            .unwrap();
        assert_eq!(text_of(&r), "two");
        let token = bearer_of_last_call(&rig);
        v.verify(
            &token,
            now(),
            &Presented::tool("echo", &json!({"text": "two"})),
        )
        .unwrap();
        // Presented for other arguments, it is refused.
        let second = {
            modern
                .call_tool(call("fx.echo", json!({"text": "three"})))
                .await
                .unwrap();
            bearer_of_last_call(&rig)
        };
        assert_eq!(
            v.verify(
                &second,
                now(),
                &Presented::tool("echo", &json!({"text": "four"}))
            ),
            Err(VerifyError::Mismatch("arguments"))
        );
        modern.cancel().await.unwrap();
        rig.proxy.shutdown().await;
    }
}

#[tokio::test]
async fn a_stdio_upstream_finds_its_token_in_meta_and_an_agent_cannot_plant_one() {
    let rig = rig("ES256").await;
    let v = verifier(&rig, "https://st.test", "read", Algorithm::Es256).await;
    let agent = agent_modern_with(&rig.url, TestAgent::new("m"), Some(&rig.token)).await;
    let mut request = call("st.meta", json!({}));
    let mut planted = rmcp::model::RequestMetaObject::new();
    planted.0.insert(
        "io.tollgate/credential".into(),
        json!("forged-by-the-agent"),
    );
    request.meta = Some(planted);
    let answer = text_of(&agent.call_tool(request).await.unwrap());
    // What the tool received (its answer echoes it, scrubbed, to the agent).
    let log = std::fs::read_to_string(rig.tmp.path().join("meta.log")).unwrap();
    let seen: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    let token = seen["io.tollgate/credential"].as_str().unwrap();
    assert!(
        !answer.contains(token),
        "the agent never sees the token: {answer}"
    );
    assert_ne!(token, "forged-by-the-agent");
    v.verify(token, now(), &Presented::tool("meta", &json!({})))
        .unwrap();
    agent.cancel().await.unwrap();
    rig.proxy.shutdown().await;
}

#[tokio::test]
async fn an_injected_secret_reaches_the_upstream_and_nowhere_else() {
    const SECRET: &str = "sk-live-4f9a2c7e1b8d";
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, headers) = recording_fixture(&stop).await;
    let token = general_read_grant(&state, None);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = tmp.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[front.http]
listen = "127.0.0.1:{port}"
[grants]
state_dir = "{state}"
[[policy.tool]]
tool = "*"
class = "read"
[[upstream]]
name = "legacy"
url = "http://{addr}/mcp"
credential = {{ mode = "secret", header = "X-Api-Key", env = "LEGACY_API_KEY", format = "key={{secret}}" }}
"#,
            state = state.display()
        ),
    )
    .unwrap();
    let mut tollgate = tokio::process::Command::new(tollgate_bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .env("LEGACY_API_KEY", SECRET)
        .env("RUST_LOG", "trace")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/mcp");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let agent = agent_modern_with(&url, TestAgent::new("m"), Some(&token)).await;
    let seen = text_of(&agent.call_tool(call("headers", json!({}))).await.unwrap());
    let echoed: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(
        echoed["x-api-key"], "key=[redacted]",
        "the echo is scrubbed: {seen}"
    );
    let listed = serde_json::to_string(&agent.list_all_tools().await.unwrap()).unwrap();
    assert!(!seen.contains(SECRET) && !listed.contains(SECRET));
    agent.cancel().await.unwrap();
    // The upstream did get it, on the call.
    let received: Vec<String> = headers
        .lock()
        .unwrap()
        .iter()
        .filter_map(|h| h.get("x-api-key").map(|v| v.to_str().unwrap().to_owned()))
        .collect();
    assert!(
        received.iter().any(|v| v == &format!("key={SECRET}")),
        "{received:?}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tollgate.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        let mut stderr = String::new();
        use tokio::io::AsyncReadExt;
        tollgate
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        tollgate.wait().await.unwrap();
        stderr
    })
    .await
    .unwrap();
    assert!(
        output.contains("tools/call"),
        "trace logs were captured: {}",
        output.len()
    );
    let leaks: Vec<String> = output
        .lines()
        .filter(|l| l.contains(SECRET))
        .map(|l| l.replace(SECRET, "<SECRET>").chars().take(300).collect())
        .collect();
    assert!(
        leaks.is_empty(),
        "the secret is in Tollgate's logs:\n{}",
        leaks.join("\n")
    );
    stop.cancel();
}

async fn introspect(rig: &Rig, token: &str, admin_token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/introspect", rig.admin))
        .bearer_auth(admin_token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn revoke(rig: &Rig, what: Value) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/revoke", rig.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&what)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn introspection_and_revocation_hold_from_the_next_call() {
    let rig = rig("ES256").await;
    let agent = agent_modern_with(&rig.url, TestAgent::new("m"), Some(&rig.token)).await;
    let next_token = async || {
        agent
            .call_tool(call("fx.echo", json!({"text": "x"})))
            .await
            .unwrap();
        bearer_of_last_call(&rig)
    };

    let first = next_token().await;
    let (status, answer) = introspect(&rig, &first, ADMIN_TOKEN).await;
    assert_eq!((status, &answer["active"]), (200, &json!(true)), "{answer}");
    assert_eq!(answer["aud"], "https://fx.test");
    assert_eq!(answer["sub"], "ada");
    // Without the admin token: nothing.
    assert_eq!(introspect(&rig, &first, "guess").await.0, 401);
    // Not one of ours.
    let (_, forged) = introspect(&rig, "eyJhbGciOiJub25lIn0.e30.", ADMIN_TOKEN).await;
    assert_eq!(forged, json!({"active": false}));

    // One token.
    let jti = answer["jti"].as_str().unwrap().to_owned();
    assert_eq!(revoke(&rig, json!({"jti": jti})).await, 200);
    assert_eq!(
        introspect(&rig, &first, ADMIN_TOKEN).await.1["active"],
        false
    );
    let list: String = reqwest::get(format!("{}/revocations", rig.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    use base64::Engine;
    let decode = |part: &str| -> Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let mut parts = list.split('.');
    assert_eq!(
        decode(parts.next().unwrap())["typ"],
        "tollgate-revocations+jwt"
    );
    let claims = decode(parts.next().unwrap());
    assert_eq!(claims["iss"], format!("{ISSUER}/revoke"));
    assert!(claims["revoked_jtis"].get(&jti).is_some(), "{claims}");

    // The whole grant: every token minted under it, from the next look.
    let second = next_token().await;
    assert_eq!(
        introspect(&rig, &second, ADMIN_TOKEN).await.1["active"],
        true
    );
    let grant_id = introspect(&rig, &second, ADMIN_TOKEN).await.1["grants"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(revoke(&rig, json!({"grant": grant_id})).await, 200);
    assert_eq!(
        introspect(&rig, &second, ADMIN_TOKEN).await.1["active"],
        false
    );
    let refused = agent
        .call_tool(call("fx.echo", json!({"text": "after"})))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("revoked"), "{refused}");
    assert_eq!(revoke(&rig, json!({"nothing": 1})).await, 400);
    agent.cancel().await.unwrap();
    rig.proxy.shutdown().await;
}

#[tokio::test]
async fn revoking_a_session_refuses_its_next_call_and_retires_its_tokens() {
    let rig = rig("EdDSA").await;
    let legacy = agent_with_grant(&rig.url, &rig.token).await;
    legacy
        .call_tool(call("fx.echo", json!({"text": "x"})))
        .await
        .unwrap();
    let token = bearer_of_last_call(&rig);
    let (_, answer) = introspect(&rig, &token, ADMIN_TOKEN).await;
    let session = answer["sid"].as_str().unwrap().to_owned();
    assert_eq!(revoke(&rig, json!({"session": session})).await, 200);
    assert_eq!(
        introspect(&rig, &token, ADMIN_TOKEN).await.1["active"],
        false
    );
    let refused = legacy
        .call_tool(call("fx.echo", json!({"text": "again"})))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("this session has been revoked"),
        "{refused}"
    );
    legacy.cancel().await.unwrap();
    rig.proxy.shutdown().await;
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_operator_rotation_signs_the_next_call_with_the_key_published_before_it() {
    let rig = rig("ES256").await;
    // A resource server that fetched the JWKS before the rotation and never again.
    let early = verifier(&rig, "https://fx.test", "read", Algorithm::Es256).await;
    let agent = agent_modern_with(&rig.url, TestAgent::new("m"), Some(&rig.token)).await;
    agent
        .call_tool(call("fx.echo", json!({"text": "before"})))
        .await
        .unwrap();
    let before = bearer_of_last_call(&rig);

    let rotate = |token: Option<&'static str>| {
        let url = format!("{}/keys/rotate", rig.admin);
        async move {
            let mut request = reqwest::Client::new().post(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap()
        }
    };
    assert_eq!(rotate(None).await.status().as_u16(), 401);
    assert_eq!(rotate(Some("a-guess")).await.status().as_u16(), 401);
    let answer: Value = rotate(Some(ADMIN_TOKEN)).await.json().await.unwrap();
    assert_eq!(answer["rotated"].as_array().unwrap().len(), 4, "{answer}");

    agent
        .call_tool(call("fx.echo", json!({"text": "after"})))
        .await
        .unwrap();
    let after = bearer_of_last_call(&rig);
    assert_ne!(
        kid_of(&before),
        kid_of(&after),
        "the next call is signed by the new key"
    );
    early
        .verify(
            &after,
            now(),
            &Presented::tool("echo", &json!({"text": "after"})),
        )
        .expect("the new key was in the JWKS before it signed anything");
    let jwks = published(&rig).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 12);
    assert!(
        kids.contains(&kid_of(&before).as_str()),
        "the retired key is still published"
    );
    // A token the retired key signed is still good until it expires.
    early
        .verify(
            &before,
            now(),
            &Presented::tool("echo", &json!({"text": "before"})),
        )
        .unwrap();
    agent.cancel().await.unwrap();
    rig.proxy.shutdown().await;
}

/// What the test's authorization server was asked.
#[derive(Debug, Clone)]
struct Exchanged {
    subject: String,
    actor: String,
    audience: String,
    scope: Option<String>,
    resource: Option<String>,
    details_tool: String,
}

/// A small RFC 8693 authorization server: it authenticates Tollgate by HTTP Basic, verifies the
/// subject token against Tollgate's JWKS and the actor token's issuer, refuses the scope
/// `forbidden`, and issues opaque tokens `xt-<n>`.
async fn authorization_server(
    jwks: Value,
    stop: &tokio_util::sync::CancellationToken,
) -> (String, Arc<std::sync::Mutex<Vec<Exchanged>>>) {
    use axum::{body::Bytes, http::HeaderMap, response::IntoResponse};
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let url = format!("http://{}/oauth/token", listener.local_addr().unwrap());
    let log: Arc<std::sync::Mutex<Vec<Exchanged>>> = Arc::default();
    let verifier = Arc::new(Verifier::new(
        VerifierConfig {
            issuer: format!("{ISSUER}/read"),
            audience: url.clone(),
            algorithms: vec![Algorithm::Es256],
            leeway_secs: 5,
            revocations: None,
        },
        &jwks,
    ));
    let seen = log.clone();
    let app = axum::Router::new().route(
        "/oauth/token",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (verifier, seen) = (verifier.clone(), seen.clone());
            async move {
                use base64::Engine;
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode("tollgate:exchange-client-secret")
                );
                let refuse = |status: u16, error: &str| {
                    (
                        http::StatusCode::from_u16(status).unwrap(),
                        json!({"error": error}).to_string(),
                    )
                        .into_response()
                };
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some(expected.as_str())
                {
                    return refuse(401, "invalid_client");
                }
                let form: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(&body).into_owned().collect();
                if form.get("grant_type").map(String::as_str)
                    != Some("urn:ietf:params:oauth:grant-type:token-exchange")
                {
                    return refuse(400, "unsupported_grant_type");
                }
                let Ok(subject) = verifier
                    .verify_subject_token(&form["subject_token"], tollgate_mint::unix_now())
                else {
                    return refuse(400, "invalid_grant");
                };
                let actor = claims_of(&form["actor_token"]);
                if actor["iss"] != format!("{ISSUER}/read") {
                    return refuse(400, "invalid_grant");
                }
                if form.get("scope").map(String::as_str) == Some("forbidden") {
                    return refuse(400, "invalid_scope");
                }
                let mut seen = seen.lock().unwrap();
                seen.push(Exchanged {
                    subject: subject.sub.clone(),
                    actor: actor["sub"].as_str().unwrap_or_default().to_owned(),
                    audience: form["audience"].clone(),
                    scope: form.get("scope").cloned(),
                    resource: form.get("resource").cloned(),
                    details_tool: subject.authorization_details[0]["tool"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                });
                json!({
                    "access_token": format!("xt-{}", seen.len()),
                    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "token_type": "Bearer",
                    "expires_in": 120,
                })
                .to_string()
                .into_response()
            }
        }),
    );
    let stop = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    (url, log)
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap_or_default())
            .unwrap_or_default(),
    )
    .unwrap_or(Value::Null)
}

#[tokio::test]
async fn token_exchange_gets_each_call_a_token_from_the_authorization_server() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let secret = tmp.path().join("exchange-secret");
    std::fs::write(&secret, "exchange-client-secret\n").unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, headers) = recording_fixture(&stop).await;
    // The keys exist before the authorization server fetches the JWKS.
    let keys = tollgate_mint::AccessKeys::load_or_create(&state, Algorithm::Es256).unwrap();
    let (token_url, exchanged) = authorization_server(keys.jwks(), &stop).await;
    drop(keys);
    let token = general_read_grant(&state, Some("ada"));
    let exchange = |scopes: &str, cache: bool| {
        format!(
            r#"{{ mode = "exchange", token_url = "{token_url}", audience = "https://fx.test", resource = "https://fx.test/mcp", client_id = "tollgate", client_secret_file = "{}", scopes = {scopes}, cache = {cache} }}"#,
            secret.display()
        )
    };
    let config = Config::parse(&format!(
        r#"
[front.http]
listen = "127.0.0.1:0"
[grants]
state_dir = "{state}"
[mint]
issuer = "{ISSUER}"
[[policy.tool]]
tool = "*"
class = "read"
[[upstream]]
name = "each"
url = "http://{addr}/mcp"
credential = {each}
[[upstream]]
name = "cached"
url = "http://{addr}/mcp"
credential = {cached}
[[upstream]]
name = "refused"
url = "http://{addr}/mcp"
credential = {refused}
[[upstream]]
name = "unscoped"
url = "http://{addr}/mcp"
credential = {unscoped}
"#,
        state = state.display(),
        each = exchange(r#"{ read = "fx.read" }"#, false),
        cached = exchange(r#"{ read = "fx.read" }"#, true),
        refused = exchange(r#"{ read = "forbidden" }"#, false),
        unscoped = exchange(r#"{ write = "fx.write" }"#, false),
    ))
    .unwrap();
    let front = config.fronts.http.clone().unwrap();
    let guard = Arc::new(PolicyGuard::new(&config).unwrap());
    let proxy = Proxy::start_with(config, guard).await;
    let server = proxy.serve_http(&front).await.unwrap();
    let url = format!("http://{}/mcp", server.local_addr);
    let agent = agent_modern_with(&url, TestAgent::new("m"), Some(&token)).await;
    let bearer = || {
        headers
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|h| h.get("authorization"))
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // Without caching, each call gets its own exchanged token.
    for (i, text) in ["one", "two"].into_iter().enumerate() {
        let r = agent
            .call_tool(call("each.echo", json!({"text": text})))
            .await
            .unwrap();
        assert_eq!(text_of(&r), text);
        assert_eq!(bearer(), Some(format!("Bearer xt-{}", i + 1)));
    }
    {
        let seen = exchanged.lock().unwrap();
        assert_eq!(seen.len(), 2);
        let first = &seen[0];
        assert_eq!(
            (first.subject.as_str(), first.actor.as_str()),
            ("ada", "tollgate")
        );
        assert_eq!(first.audience, "https://fx.test");
        assert_eq!(first.scope.as_deref(), Some("fx.read"));
        assert_eq!(first.resource.as_deref(), Some("https://fx.test/mcp"));
        assert_eq!(
            first.details_tool, "echo",
            "the subject token names the call"
        );
    }

    // With caching, the same subject, audience and scope reuse the token.
    for text in ["three", "four"] {
        agent
            .call_tool(call("cached.echo", json!({"text": text})))
            .await
            .unwrap();
    }
    assert_eq!(
        exchanged.lock().unwrap().len(),
        3,
        "one exchange for two calls"
    );
    assert_eq!(bearer(), Some("Bearer xt-3".to_owned()));

    // A refused exchange refuses the call, and nothing is forwarded.
    let before = headers.lock().unwrap().len();
    let refused = agent
        .call_tool(call("refused.echo", json!({"text": "x"})))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(text_of(&refused).contains("invalid_scope"), "{refused:?}");
    // A class the config names no scope for is refused before any exchange.
    let unscoped = agent
        .call_tool(call("unscoped.echo", json!({"text": "x"})))
        .await
        .unwrap();
    assert!(
        text_of(&unscoped).contains("no scope is configured"),
        "{unscoped:?}"
    );
    assert_eq!(
        headers.lock().unwrap().len(),
        before,
        "nothing was forwarded"
    );
    assert!(!text_of(&refused).contains("exchange-client-secret"));
    agent.cancel().await.unwrap();
    stop.cancel();
    proxy.shutdown().await;
}

#[test]
fn the_keys_commands_list_the_ring_and_rotate_it() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(tollgate_bin())
            .args(args)
            .args(["--state", state.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = run(&["keys", "list"]);
    let states = |text: &str, state: &str| {
        text.lines()
            .filter(|l| l.split_whitespace().nth(2) == Some(state))
            .count()
    };
    assert_eq!(states(&listed, "current"), 4, "{listed}");
    assert_eq!(states(&listed, "next"), 4, "{listed}");
    let rotated = run(&["keys", "rotate"]);
    assert_eq!(rotated.lines().count(), 4, "{rotated}");
    let after = run(&["keys", "list"]);
    assert_eq!(states(&after, "retired"), 4, "{after}");
    // What was next now signs.
    for line in listed
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("next"))
    {
        let kid = line.split_whitespace().nth(3).unwrap();
        assert!(
            after
                .lines()
                .any(|l| l.contains(kid) && l.split_whitespace().nth(2) == Some("current")),
            "{after}"
        );
    }
    let bad = std::process::Command::new(tollgate_bin())
        .args(["keys", "list", "--algorithm", "RS256"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ES256"));
}

/// The token of the last call the upstream received is nowhere in `seen`, and the answer says
/// something was redacted.
fn assert_scrubbed(rig: &Rig, seen: &str, path: &str) {
    let token = bearer_of_last_call(rig);
    assert!(!seen.contains(&token), "{path} leaked the token: {seen}");
    assert!(seen.contains("[redacted]"), "{path}: {seen}");
}

#[tokio::test]
async fn an_upstream_that_echoes_its_credential_never_shows_it_to_the_agent() {
    let rig = rig("ES256").await;
    // The fixture's `headers` tool answers with the request headers it received, bearer
    // included: on the fast path (a 2025-11-25 session) and on rmcp's (a 2026-07-28 agent).
    let legacy = agent_with_grant(&rig.url, &rig.token).await;
    let seen = text_of(
        &legacy
            .call_tool(call("fx.headers", json!({})))
            .await
            .unwrap(),
    );
    assert_scrubbed(&rig, &seen, "the fast path");
    let echoed: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(echoed["authorization"], "Bearer [redacted]", "{seen}");
    legacy.cancel().await.unwrap();

    let modern = agent_modern_with(&rig.url, TestAgent::new("m"), Some(&rig.token)).await;
    let seen = text_of(
        &modern
            .call_tool(call("fx.headers", json!({})))
            .await
            .unwrap(),
    );
    assert_scrubbed(&rig, &seen, "rmcp's path");
    modern.cancel().await.unwrap();
    rig.proxy.shutdown().await;
}
