//! The admin HTTP endpoint, on a listener of its own (loopback unless the config says
//! otherwise): what resource servers need to verify per-call tokens. The JWKS of every trust
//! path at `/.well-known/jwks.json`, and RFC 8414-style metadata naming each path's issuer.
//! Nothing here accepts an agent's request or shows a secret.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, response::IntoResponse, routing::get};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{HttpServer, guard::PolicyGuard};

/// Serves the admin endpoint until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    guard: Arc<PolicyGuard>,
    shutdown: CancellationToken,
) -> std::io::Result<HttpServer> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local_addr = listener.local_addr()?;
    let base = format!("http://{local_addr}");
    let jwks_guard = guard.clone();
    let app = Router::new()
        .route(
            "/.well-known/jwks.json",
            get(move || {
                let guard = jwks_guard.clone();
                async move { json_response(&guard.jwks()) }
            }),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(move || {
                let metadata = metadata(&guard, &base);
                async move { json_response(&metadata) }
            }),
        );
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok(HttpServer { local_addr, task })
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
