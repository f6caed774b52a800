//! Token exchange (RFC 8693) for downstreams that cannot verify Tollgate's tokens but trust an
//! authorization server that can: for each allowed call Tollgate presents a token it minted
//! for the call (the subject: the grant's user, with the call in `authorization_details`) and
//! one naming itself (the actor), and asks for a token for exactly one audience, resource and
//! scope. The answer is delivered like a minted token. Exchanged tokens are reused only when
//! the config says `cache = true`, and then only for the same subject, audience and scope.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Deserialize;
use tracing::warn;

use tollgate_proxy::{config::ExchangeConfig, intercept::Credential};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// How long before its expiry a cached token stops being handed out.
const CACHE_MARGIN: Duration = Duration::from_secs(5);
/// The largest answer read from the authorization server.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One exchange to make: everything is owned so it can run after the decision returns.
#[derive(Clone)]
pub struct Request {
    pub subject_token: String,
    pub actor_token: String,
    /// The grant's subject, for the cache key.
    pub subject: String,
    pub scope: Option<String>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("subject", &self.subject)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Answer {
    access_token: String,
    #[serde(default)]
    token_type: String,
    issued_token_type: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct Refusal {
    error: String,
}

type CacheKey = (String, String, Option<String>);

/// The exchange client of one upstream.
pub struct Exchanger {
    config: ExchangeConfig,
    client: reqwest::Client,
    cached: Mutex<HashMap<CacheKey, (Credential, Instant)>>,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("token_url", &self.config.token_url)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

impl Exchanger {
    pub fn new(config: ExchangeConfig, timeout: Duration) -> Result<Self, String> {
        let client = tollgate_proxy::http_client(Some(timeout))?;
        Ok(Self {
            config,
            client,
            cached: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ExchangeConfig {
        &self.config
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, (Credential, Instant)>> {
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(&self, subject: &str, scope: Option<&str>) -> CacheKey {
        (
            subject.to_owned(),
            self.config.audience.clone(),
            scope.map(str::to_owned),
        )
    }

    /// A token still good for `subject` and `scope`, when caching is on.
    pub fn cached(&self, subject: &str, scope: Option<&str>) -> Option<Credential> {
        if !self.config.cache {
            return None;
        }
        let now = Instant::now();
        let mut cache = self.cache();
        cache.retain(|_, (_, until)| *until > now);
        cache.get(&self.key(subject, scope)).map(|(c, _)| c.clone())
    }

    /// Asks the authorization server. The error says what went wrong without any token.
    pub async fn exchange(&self, request: Request) -> Result<Credential, String> {
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", GRANT_TYPE),
            ("subject_token", &request.subject_token),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", &request.actor_token),
            ("actor_token_type", JWT_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("audience", &self.config.audience),
        ];
        if let Some(resource) = &self.config.resource {
            form.push(("resource", resource));
        }
        if let Some(scope) = &request.scope {
            form.push(("scope", scope));
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = self
            .client
            .post(&self.config.token_url)
            .basic_auth(
                &self.config.client_id,
                Some(self.config.client_secret.expose()),
            )
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "the authorization server did not answer in time".to_owned()
                } else {
                    "the authorization server cannot be reached".to_owned()
                }
            })?;
        let status = response.status();
        let mut bytes = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| "the authorization server's answer was cut off".to_owned())?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err("the authorization server's answer is too large".to_owned());
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            // RFC 6749 §5.2: the error code is safe to show; the description may not be.
            let code = serde_json::from_slice::<Refusal>(&bytes)
                .map(|r| r.error)
                .unwrap_or_else(|_| format!("HTTP {}", status.as_u16()));
            let code: String = code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(format!(
                "the authorization server refused the exchange: {code}"
            ));
        }
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|_| "the authorization server's answer is not a token response".to_owned())?;
        if !answer.token_type.eq_ignore_ascii_case("bearer")
            && !answer.token_type.eq_ignore_ascii_case("n_a")
        {
            return Err(format!(
                "the authorization server issued a `{}` token; only bearer tokens can be carried",
                answer.token_type.chars().take(32).collect::<String>()
            ));
        }
        if let Some(kind) = &answer.issued_token_type
            && kind != ACCESS_TOKEN_TYPE
            && kind != JWT_TYPE
        {
            warn!(issued = %kind, "the authorization server issued an unexpected token type");
        }
        if answer.access_token.is_empty()
            || http::HeaderValue::from_str(&answer.access_token).is_err()
        {
            return Err("the authorization server issued an unusable token".to_owned());
        }
        let credential = Credential::new(answer.access_token);
        if self.config.cache
            && let Some(lifetime) = answer.expires_in.map(Duration::from_secs)
            && lifetime > CACHE_MARGIN
        {
            let until = Instant::now() + lifetime - CACHE_MARGIN;
            self.cache().insert(
                self.key(&request.subject, request.scope.as_deref()),
                (credential.clone(), until),
            );
        }
        Ok(credential)
    }
}
