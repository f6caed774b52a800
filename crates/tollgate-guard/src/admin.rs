//! The admin HTTP endpoint, on a listener of its own (loopback unless the config says
//! otherwise). For resource servers: the JWKS of every trust path at `/.well-known/jwks.json`,
//! RFC 8414-style metadata naming each path's issuer, and the signed revocation list at
//! `/revocations`. For operators, with the admin token: RFC 7662 introspection at
//! `/introspect`, revocation of a token, a session or a grant at `/revoke`, and rotation of
//! the signing keys at `/keys/rotate`. For monitoring, Prometheus metrics at `/metrics`
//! (counts and latencies, names of upstreams and tools: nothing secret).
//! Nothing here accepts an agent's request or shows a secret.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    response::IntoResponse,
    routing::{get, post},
};
use http::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::guard::PolicyGuard;
use tollgate_proxy::{HttpServer, config::Secret};

/// Serves the admin endpoint until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    guard: Arc<PolicyGuard>,
    token: Option<Secret>,
    state_dir: std::path::PathBuf,
    shutdown: CancellationToken,
) -> std::io::Result<HttpServer> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local_addr = listener.local_addr()?;
    let base = format!("http://{local_addr}");
    let operator = Arc::new(Operator {
        guard,
        token,
        state_dir,
        base,
    });
    let app = Router::new()
        .route("/revocations", get(revocations))
        .route("/introspect", post(introspect))
        .route("/revoke", post(revoke))
        .route("/approvals", get(list_approvals))
        .route("/approvals/{id}", get(show_approval).post(answer_approval))
        .route("/quarantine", get(quarantined))
        .route("/quarantine/{session}/release", post(release))
        .route("/keys/rotate", post(rotate))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/metrics", get(metrics))
        .route(
            "/.well-known/oauth-authorization-server",
            get(server_metadata),
        )
        .with_state(operator);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok(HttpServer { local_addr, task })
}

type Op = State<Arc<Operator>>;

async fn revocations(State(op): Op) -> axum::response::Response {
    match op.guard.revocation_list() {
        Some(list) => ([(http::header::CONTENT_TYPE, "application/jwt")], list).into_response(),
        None => http::StatusCode::NOT_FOUND.into_response(),
    }
}

async fn introspect(State(op): Op, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    op.introspect(&headers, &body)
}

async fn revoke(State(op): Op, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    op.revoke(&headers, &body)
}

async fn list_approvals(
    State(op): Op,
    headers: HeaderMap,
    uri: http::Uri,
) -> axum::response::Response {
    op.list_approvals(&headers, &uri)
}

async fn show_approval(
    State(op): Op,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> axum::response::Response {
    op.show_approval(&headers, &id)
}

async fn answer_approval(
    State(op): Op,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> axum::response::Response {
    op.answer_approval(&headers, &id, &body)
}

async fn quarantined(State(op): Op, headers: HeaderMap) -> axum::response::Response {
    match op.reader_refused(&headers) {
        Some(refused) => refused,
        None => match op.guard.quarantined().await {
            Ok(held) => json_response(&json!({ "quarantined": held })),
            Err(error) => unavailable(&error),
        },
    }
}

async fn release(
    State(op): Op,
    headers: HeaderMap,
    Path(session): Path<String>,
) -> axum::response::Response {
    op.release(&headers, &session).await
}

/// The answer when the guard's store does not answer.
fn unavailable(error: &crate::store::StoreError) -> axum::response::Response {
    tracing::error!(%error, "the admin endpoint cannot read the guard's store");
    (http::StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response()
}

async fn rotate(State(op): Op, headers: HeaderMap) -> axum::response::Response {
    op.rotate(&headers)
}

async fn metrics(State(op): Op) -> axum::response::Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        op.guard.metrics_text(),
    )
        .into_response()
}

async fn jwks(State(op): Op) -> axum::response::Response {
    json_response(&op.guard.jwks())
}

async fn server_metadata(State(op): Op) -> axum::response::Response {
    json_response(&metadata(&op.guard, &op.base))
}

fn metadata(guard: &PolicyGuard, base: &str) -> Value {
    let issuer = guard.issuer();
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "tollgate_trust_paths": tollgate_mint::TrustPath::ALL
            .iter()
            .map(|p| (p.as_str().to_owned(), Value::String(format!("{issuer}/{}", p.as_str()))))
            .collect::<serde_json::Map<String, Value>>(),
        "token_types_issued": ["at+jwt"],
        "id_token_signing_alg_values_supported": [],
        "authorization_details_types_supported": [tollgate_mint::access::DETAILS_TYPE],
    })
}

fn json_response(value: &Value) -> axum::response::Response {
    (
        [
            (http::header::CONTENT_TYPE, "application/json"),
            // Resource servers cache keys; a rotation publishes the next key ahead of use.
            (http::header::CACHE_CONTROL, "max-age=300"),
        ],
        value.to_string(),
    )
        .into_response()
}

/// The operator's side of the endpoint: everything here needs the admin token.
struct Operator {
    guard: Arc<PolicyGuard>,
    token: Option<Secret>,
    state_dir: std::path::PathBuf,
    /// This endpoint's own URL, for the metadata.
    base: String,
}

impl Operator {
    /// The request carries the admin token. Compared as digests, so the time taken says
    /// nothing about how much of a guess was right.
    /// `None` when authorized; the refusal to answer with otherwise.
    fn refused(&self, headers: &http::HeaderMap) -> Option<axum::response::Response> {
        let Some(expected) = &self.token else {
            return Some(
                (
                    http::StatusCode::NOT_FOUND,
                    "introspection and revocation are off: no admin token is configured",
                )
                    .into_response(),
            );
        };
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if Sha256::digest(presented.as_bytes()) == Sha256::digest(expected.expose().as_bytes()) {
            None
        } else {
            Some(
                (
                    http::StatusCode::UNAUTHORIZED,
                    [(http::header::WWW_AUTHENTICATE, "Bearer")],
                    "the admin token is required",
                )
                    .into_response(),
            )
        }
    }

    /// RFC 7662: `token=<jwt>` as a form; `{"active": false}` for anything not live.
    fn introspect(&self, headers: &http::HeaderMap, body: &[u8]) -> axum::response::Response {
        if let Some(refused) = self.refused(headers) {
            return refused;
        }
        let token = url::form_urlencoded::parse(body)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let answer = match self.guard.introspect(&token) {
            None => json!({"active": false}),
            Some(issued) => {
                let mut value = serde_json::to_value(&issued).unwrap_or_else(|_| json!({}));
                if let Some(members) = value.as_object_mut() {
                    members.insert("active".into(), Value::Bool(true));
                    members.insert("token_type".into(), Value::String("at+jwt".into()));
                }
                value
            }
        };
        json_response(&answer)
    }

    fn bearer(headers: &http::HeaderMap) -> &str {
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
    }

    /// An approver's token, or (to read, not to answer) the admin token.
    fn reader_refused(&self, headers: &http::HeaderMap) -> Option<axum::response::Response> {
        if self.guard.approver(Self::bearer(headers)).is_some() {
            return None;
        }
        self.refused(headers)
    }

    /// `GET /approvals` (`?pending` for the open ones only), newest first.
    fn list_approvals(
        &self,
        headers: &http::HeaderMap,
        uri: &http::Uri,
    ) -> axum::response::Response {
        if let Some(refused) = self.reader_refused(headers) {
            return refused;
        }
        let pending = uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "pending" || p == "pending=true"));
        json_response(&json!({"approvals": self.guard.approvals().list(pending)}))
    }

    fn show_approval(&self, headers: &http::HeaderMap, id: &str) -> axum::response::Response {
        if let Some(refused) = self.reader_refused(headers) {
            return refused;
        }
        match self.guard.approvals().show(id) {
            Some(request) => json_response(&json!(request)),
            None => (http::StatusCode::NOT_FOUND, "no such approval request").into_response(),
        }
    }

    /// `POST /approvals/{id}` with `{"decision": "approve" | "deny", "reason": "…"}`, by an
    /// approver (their own token; the admin token is not a person and cannot answer).
    fn answer_approval(
        &self,
        headers: &http::HeaderMap,
        id: &str,
        body: &[u8],
    ) -> axum::response::Response {
        let Some(approver) = self.guard.approver(Self::bearer(headers)) else {
            return (
                http::StatusCode::UNAUTHORIZED,
                [(http::header::WWW_AUTHENTICATE, "Bearer")],
                "an approver's token is required",
            )
                .into_response();
        };
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let approve = match request.get("decision").and_then(Value::as_str) {
            Some("approve") => true,
            Some("deny") => false,
            _ => {
                return (
                    http::StatusCode::BAD_REQUEST,
                    "expected a JSON object with `decision`: \"approve\" or \"deny\" (and an optional `reason`)",
                )
                    .into_response();
            }
        };
        let reason = request.get("reason").and_then(Value::as_str).unwrap_or("");
        match self.guard.approvals().answer(
            id,
            &approver,
            approve,
            reason,
            tollgate_mint::unix_now(),
        ) {
            Ok(answered) => {
                tracing::info!(approval = id, approver = %approver.name, approve, "approval answered");
                json_response(&json!(answered))
            }
            Err(e) => {
                let status = match e {
                    tollgate_proxy::approvals::AnswerError::Unknown(_) => {
                        http::StatusCode::NOT_FOUND
                    }
                    tollgate_proxy::approvals::AnswerError::NotPending { .. } => {
                        http::StatusCode::CONFLICT
                    }
                    tollgate_proxy::approvals::AnswerError::NotAllowed { .. } => {
                        http::StatusCode::FORBIDDEN
                    }
                };
                (status, e.to_string()).into_response()
            }
        }
    }

    /// `POST /quarantine/{session}/release`, by an approver: the session is decided again.
    async fn release(&self, headers: &http::HeaderMap, session: &str) -> axum::response::Response {
        let Some(approver) = self.guard.approver(Self::bearer(headers)) else {
            return (
                http::StatusCode::UNAUTHORIZED,
                [(http::header::WWW_AUTHENTICATE, "Bearer")],
                "an approver's token is required",
            )
                .into_response();
        };
        match self.guard.release(session).await {
            Ok(true) => {
                tracing::info!(session, approver = %approver.name, "session released from quarantine");
                json_response(&json!({"released": session, "by": approver.name}))
            }
            Ok(false) => (http::StatusCode::NOT_FOUND, "that session is not held").into_response(),
            Err(error) => unavailable(&error),
        }
    }

    /// Rotates every path's signing key now: the published next keys start signing, the
    /// current ones retire (still published until their tokens expire).
    fn rotate(&self, headers: &http::HeaderMap) -> axum::response::Response {
        if let Some(refused) = self.refused(headers) {
            return refused;
        }
        match self.guard.rotate_keys() {
            None => (
                http::StatusCode::NOT_FOUND,
                "no upstream takes minted credentials: there are no signing keys",
            )
                .into_response(),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "key rotation failed");
                (
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "key rotation failed; the keys in use keep signing",
                )
                    .into_response()
            }
            Some(Ok(rotated)) => json_response(&json!({"rotated": rotated})),
        }
    }

    /// `{"jti": …}`, `{"session": …}` or `{"grant": …}`.
    fn revoke(&self, headers: &http::HeaderMap, body: &[u8]) -> axum::response::Response {
        if let Some(refused) = self.refused(headers) {
            return refused;
        }
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let field = |name: &str| request.get(name).and_then(Value::as_str);
        let done = match (field("jti"), field("session"), field("grant")) {
            (Some(jti), None, None) => {
                if self.guard.revoke_token(jti) {
                    json!({"revoked": {"jti": jti}})
                } else {
                    return (http::StatusCode::NOT_FOUND, "no live token has that `jti`")
                        .into_response();
                }
            }
            (None, Some(session), None) => {
                self.guard.revoke_session(session);
                json!({"revoked": {"session": session}})
            }
            (None, None, Some(grant)) => match tollgate_mint::revoke(&self.state_dir, grant) {
                Ok(()) => json!({"revoked": {"grant": grant}}),
                Err(e) => {
                    return (http::StatusCode::BAD_REQUEST, e.to_string()).into_response();
                }
            },
            _ => {
                return (
                    http::StatusCode::BAD_REQUEST,
                    "expected a JSON object with exactly one of `jti`, `session` or `grant`",
                )
                    .into_response();
            }
        };
        tracing::info!(revoked = ?done.get("revoked"), "revoked by the operator");
        json_response(&done)
    }
}
