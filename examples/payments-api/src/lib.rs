//! A small payments API that trusts nothing but Tollgate's per-call tokens, checked the way a
//! careful resource server should:
//!
//! - its own algorithm allow-list, `typ: at+jwt`, and the signing key by `kid` from Tollgate's
//!   JWKS, fetched again when an unknown `kid` shows up (at most once per
//!   `jwks_min_refresh`, so a flood of made-up `kid`s cannot make it hammer Tollgate);
//! - the exact issuer of the trust path each endpoint serves (`<issuer>/read` for `GET`,
//!   `<issuer>/write` for everything else), and its own audience;
//! - `exp`/`nbf` with at most 5 s of leeway, and each `jti` once;
//! - `authorization_details` against the request it actually received: method, path with
//!   query, and the SHA-256 of the body;
//! - Tollgate's signed revocation list, fetched again whenever it is older than
//!   `revocations_max_age`; when it cannot be had, nothing is accepted.
//!
//! `GET /_audit` lists what it accepted and refused (claims, never tokens), for the demo and
//! the tests.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
};
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};
use tollgate_mint::{
    Algorithm, Presented, Verifier, VerifierConfig, VerifyError, verify::RevocationPolicy,
};

/// What the service trusts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tollgate's admin endpoint: `/.well-known/jwks.json` and `/revocations`.
    pub tollgate: String,
    /// Tollgate's `mint.issuer`; the trust paths are `<issuer>/read` and `<issuer>/write`.
    pub issuer: String,
    /// This service's audience.
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub revocations_max_age: Duration,
    pub jwks_min_refresh: Duration,
}

impl Settings {
    pub fn new(tollgate: &str, issuer: &str, audience: &str) -> Self {
        Self {
            tollgate: tollgate.trim_end_matches('/').to_owned(),
            issuer: issuer.trim_end_matches('/').to_owned(),
            audience: audience.to_owned(),
            algorithms: vec![Algorithm::Es256, Algorithm::EdDsa],
            revocations_max_age: Duration::from_secs(10),
            jwks_min_refresh: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Customer {
    id: String,
    name: String,
    balance: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Movement {
    id: String,
    customer_id: String,
    kind: &'static str,
    amount: i64,
    note: String,
}

#[derive(Debug)]
struct Books {
    customers: BTreeMap<String, Customer>,
    movements: Vec<Movement>,
}

impl Books {
    fn seeded() -> Self {
        let mut customers = BTreeMap::new();
        for (id, name, balance) in [
            ("cus_1001", "Ada Lovelace", 420),
            ("cus_1002", "Grace Hopper", 1_250),
        ] {
            customers.insert(
                id.to_owned(),
                Customer {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    balance,
                },
            );
        }
        let movements = vec![
            Movement {
                id: "ch_1".into(),
                customer_id: "cus_1001".into(),
                kind: "charge",
                amount: 120,
                note: "annual plan".into(),
            },
            Movement {
                id: "ch_2".into(),
                customer_id: "cus_1002".into(),
                kind: "charge",
                amount: 80,
                note: "seats".into(),
            },
        ];
        Self {
            customers,
            movements,
        }
    }
}

struct Shared {
    settings: Settings,
    http: reqwest::Client,
    read: Verifier,
    write: Verifier,
    /// When the JWKS was last fetched.
    jwks_fetched: tokio::sync::Mutex<Option<Instant>>,
    revocations_fetched: tokio::sync::Mutex<()>,
    books: Mutex<Books>,
    audit: Mutex<Vec<Value>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now() -> i64 {
    tollgate_mint::unix_now()
}

/// The service's routes over its state.
pub fn router(settings: Settings) -> anyhow::Result<Router> {
    let verifier = |path: &str| {
        Verifier::new(
            VerifierConfig {
                issuer: format!("{}/{path}", settings.issuer),
                audience: settings.audience.clone(),
                algorithms: settings.algorithms.clone(),
                leeway_secs: 5,
                revocations: Some(RevocationPolicy {
                    issuer: format!("{}/revoke", settings.issuer),
                    max_age_secs: i64::try_from(settings.revocations_max_age.as_secs())
                        .unwrap_or(i64::MAX),
                }),
            },
            &json!({"keys": []}),
        )
    };
    let shared = Arc::new(Shared {
        read: verifier("read"),
        write: verifier("write"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        settings,
        jwks_fetched: tokio::sync::Mutex::new(None),
        revocations_fetched: tokio::sync::Mutex::new(()),
        books: Mutex::new(Books::seeded()),
        audit: Mutex::new(Vec::new()),
    });
    Ok(Router::new().fallback(handle).with_state(shared))
}

/// Serves on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(settings)?)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    Ok(())
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// RFC 6750 §3: the refusal of a token, and why.
fn refuse(error: &VerifyError) -> Response {
    let description = error.to_string().replace('"', "'");
    let status = match error {
        VerifyError::StaleRevocations => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    (
        status,
        [(
            http::header::WWW_AUTHENTICATE,
            format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
        )],
        json!({"error": "invalid_token", "error_description": error.to_string()}).to_string(),
    )
        .into_response()
}

impl Shared {
    async fn fetch(&self, path: &str) -> Option<reqwest::Response> {
        let response = self
            .http
            .get(format!("{}{path}", self.settings.tollgate))
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(response)
    }

    /// Fetches the JWKS again unless that was done less than `jwks_min_refresh` ago.
    async fn refresh_jwks(&self) -> bool {
        let mut fetched = self.jwks_fetched.lock().await;
        if fetched.is_some_and(|at| at.elapsed() < self.settings.jwks_min_refresh) {
            return false;
        }
        *fetched = Some(Instant::now());
        let Some(response) = self.fetch("/.well-known/jwks.json").await else {
            tracing::warn!("the JWKS cannot be fetched");
            return false;
        };
        let Ok(jwks) = response.json::<Value>().await else {
            return false;
        };
        self.read.set_jwks(&jwks);
        self.write.set_jwks(&jwks);
        true
    }

    /// Makes sure the revocation list is fresh; false when it cannot be.
    async fn fresh_revocations(&self) -> bool {
        let now = now();
        if self.read.revocations_fresh(now) && self.write.revocations_fresh(now) {
            return true;
        }
        let _one_at_a_time = self.revocations_fetched.lock().await;
        if self.read.revocations_fresh(now) && self.write.revocations_fresh(now) {
            return true;
        }
        let Some(response) = self.fetch("/revocations").await else {
            tracing::warn!("the revocation list cannot be fetched");
            return false;
        };
        let Ok(list) = response.text().await else {
            return false;
        };
        let mut accepted = true;
        for verifier in [&self.read, &self.write] {
            let mut result = verifier.set_revocations(&list, now);
            if matches!(result, Err(VerifyError::UnknownKey(_))) && self.refresh_jwks().await {
                result = verifier.set_revocations(&list, now);
            }
            if let Err(e) = result {
                tracing::warn!(error = %e, "the revocation list was refused");
                accepted = false;
            }
        }
        accepted
    }

    async fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<tollgate_mint::verify::AccessClaims, VerifyError> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(VerifyError::Malformed("no bearer token"))?;
        let verifier = if *method == Method::GET {
            &self.read
        } else {
            &self.write
        };
        if !self.fresh_revocations().await {
            return Err(VerifyError::StaleRevocations);
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let presented = Presented::http(method.as_str(), path, body);
        match verifier.verify(token, now(), &presented) {
            Err(VerifyError::UnknownKey(_)) if self.refresh_jwks().await => {
                verifier.verify(token, now(), &presented)
            }
            other => other,
        }
    }

    fn record(&self, entry: Value) {
        let mut audit = lock(&self.audit);
        if audit.len() >= 10_000 {
            audit.remove(0);
        }
        audit.push(entry);
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if method == Method::GET && path == "/_audit" {
        return json_response(StatusCode::OK, &Value::Array(lock(&shared.audit).clone()));
    }
    if method == Method::GET && path == "/healthz" {
        return json_response(StatusCode::OK, &json!({"ok": true}));
    }
    let claims = match shared.verify(&method, &uri, &headers, &body).await {
        Ok(claims) => claims,
        Err(error) => {
            shared.record(json!({
                "outcome": "refused",
                "method": method.as_str(),
                "path": uri.path_and_query().map_or("/", |p| p.as_str()),
                "reason": error.to_string(),
            }));
            return refuse(&error);
        }
    };
    shared.record(json!({
        "outcome": "accepted",
        "method": method.as_str(),
        "path": uri.path_and_query().map_or("/", |p| p.as_str()),
        "iss": claims.iss,
        "sub": claims.sub,
        "client_id": claims.client_id,
        "sid": claims.sid,
        "jti": claims.jti,
        "exp": claims.exp,
        "authorization_details": claims.authorization_details,
    }));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut books = lock(&shared.books);
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["customers", id]) => match books.customers.get(*id) {
            Some(customer) => json_response(StatusCode::OK, &json!(customer)),
            None => not_found(id),
        },
        ("GET", ["customers", id, "charges"]) => {
            if !books.customers.contains_key(*id) {
                return not_found(id);
            }
            let charges: Vec<&Movement> = books
                .movements
                .iter()
                .filter(|m| m.customer_id == *id && m.kind == "charge")
                .collect();
            json_response(StatusCode::OK, &json!({"charges": charges}))
        }
        ("POST", ["customers", id, kind @ ("refunds" | "charges")]) => {
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let Some(amount) = request
                .get("amount")
                .and_then(Value::as_i64)
                .filter(|a| *a > 0)
            else {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"error": "`amount` must be a positive whole number"}),
                );
            };
            let note = request
                .get("reason")
                .or_else(|| request.get("description"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let count = books.movements.len() + 1;
            let Some(customer) = books.customers.get_mut(*id) else {
                return not_found(id);
            };
            let (kind, prefix) = if *kind == "refunds" {
                customer.balance += amount;
                ("refund", "re")
            } else {
                customer.balance -= amount;
                ("charge", "ch")
            };
            let movement = Movement {
                id: format!("{prefix}_{count}"),
                customer_id: (*id).to_owned(),
                kind,
                amount,
                note,
            };
            let answer = json!({"movement": movement, "balance": customer.balance});
            books.movements.push(movement);
            json_response(StatusCode::CREATED, &answer)
        }
        ("DELETE", ["customers", id]) => match books.customers.remove(*id) {
            Some(_) => json_response(StatusCode::OK, &json!({"deleted": id})),
            None => not_found(id),
        },
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "no such endpoint"})),
    }
}

fn not_found(id: &str) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": format!("no customer `{id}`")}),
    )
}

/// Tollgate's config for this API as shipped (`examples/payments-api/tollgate.toml`).
pub const TOLLGATE_TOML: &str = include_str!("../tollgate.toml");

/// Where one Tollgate in front of this API runs: for the demo and the tests.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    /// The API's base URL.
    pub api: &'a str,
    pub pack: &'a std::path::Path,
    pub state: &'a std::path::Path,
    pub issuer: &'a str,
    pub audience: &'a str,
}

/// The shipped config's upstream and tools, with an HTTP front on a free loopback port, placed
/// as `at` says (no admin endpoint: the caller serves its own).
pub fn tollgate_config(at: &Placement<'_>) -> String {
    let upstream = TOLLGATE_TOML
        .find("[[upstream]]")
        .and_then(|start| TOLLGATE_TOML.get(start..))
        .unwrap_or_default();
    let upstream = upstream
        .replace("http://127.0.0.1:8085", at.api)
        .replace("https://payments.local", at.audience);
    format!(
        "[front.http]\nlisten = \"127.0.0.1:0\"\n[policy]\npack = \"{}\"\n[grants]\nstate_dir = \"{}\"\n[mint]\nissuer = \"{}\"\n{upstream}",
        at.pack.display(),
        at.state.display(),
        at.issuer,
    )
}
