//! How a resource server should check a Tollgate per-call token: its own algorithm allow-list,
//! `typ: at+jwt`, the `kid` from the JWKS it fetched, the exact issuer of the trust path it
//! serves and its own audience, time with at most 5 s of leeway, each `jti` once, and the
//! `authorization_details` against the request it actually received.

use std::{
    collections::HashMap,
    sync::{Mutex, RwLock},
};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::Value;

use crate::signing::{Algorithm, DETAILS_TYPE};

pub use crate::signing::MAX_LEEWAY_SECS;

/// What a resource server expects of every token it accepts.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Exactly the issuer of the trust path it serves (`<base>/write`, …).
    pub issuer: String,
    /// Its own audience.
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    /// Clamped to [`MAX_LEEWAY_SECS`].
    pub leeway_secs: i64,
    /// When set, tokens are checked against Tollgate's signed revocation list, which must be
    /// no older than `max_age_secs` (else [`VerifyError::StaleRevocations`]: fetch it again).
    pub revocations: Option<RevocationPolicy>,
}

/// Where the revocation list comes from and how fresh it must be.
#[derive(Debug, Clone)]
pub struct RevocationPolicy {
    /// The revoke path's issuer (`<base>/revoke`).
    pub issuer: String,
    pub max_age_secs: i64,
}

/// The revocation list last accepted.
#[derive(Debug, Clone, Default, Deserialize)]
struct Revocations {
    iat: i64,
    exp: i64,
    #[serde(default)]
    revoked_jtis: HashMap<String, i64>,
    #[serde(default)]
    sessions_issued_before: HashMap<String, i64>,
}

/// The request the token is presented with.
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    /// A tool call received by an MCP tool server.
    Tool { tool: &'a str, arguments: &'a Value },
    /// A plain HTTP request received by an API: its method, its path with query exactly as
    /// received, and its body's bytes.
    Http {
        method: &'a str,
        path: &'a str,
        body: &'a [u8],
    },
}

impl<'a> Presented<'a> {
    pub fn tool(tool: &'a str, arguments: &'a Value) -> Self {
        Self::Tool { tool, arguments }
    }

    pub fn http(method: &'a str, path: &'a str, body: &'a [u8]) -> Self {
        Self::Http { method, path, body }
    }
}

/// The claims of an accepted token.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub client_id: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    pub sid: String,
    pub scope: String,
    pub authorization_details: Vec<Value>,
}

/// Why a token is refused. Safe to answer the caller with; never repeats the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm `{0}` is not accepted here")]
    Algorithm(String),
    #[error("not an access token (`typ` must be `at+jwt`)")]
    Type,
    #[error("unknown signing key `{0}`; refresh the JWKS")]
    UnknownKey(String),
    #[error("bad signature")]
    Signature,
    #[error("issuer `{0}` is not the one this service trusts")]
    Issuer(String),
    #[error("audience `{0}` is not this service")]
    Audience(String),
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("already used")]
    Replayed,
    #[error("the token was minted for another call: {0}")]
    Mismatch(&'static str),
    #[error("revoked")]
    Revoked,
    #[error("the revocation list is out of date; fetch it again")]
    StaleRevocations,
}

fn decode(part: &str) -> Result<Vec<u8>, VerifyError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| VerifyError::Malformed("a part is not base64url"))
}

struct Key {
    alg: Algorithm,
    public: Vec<u8>,
}

/// Checks per-call tokens for one resource server.
pub struct Verifier {
    config: VerifierConfig,
    keys: RwLock<HashMap<String, Key>>,
    seen: Mutex<HashMap<String, i64>>,
    revocations: RwLock<Option<Revocations>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
    kid: Option<String>,
}

impl Verifier {
    pub fn new(mut config: VerifierConfig, jwks: &Value) -> Self {
        config.leeway_secs = config.leeway_secs.clamp(0, MAX_LEEWAY_SECS);
        let verifier = Self {
            config,
            keys: RwLock::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            revocations: RwLock::new(None),
        };
        verifier.set_jwks(jwks);
        verifier
    }

    /// Replaces the keys with those of `jwks` (after a refresh). Keys of algorithms this
    /// service does not accept, or that do not parse, are left out.
    pub fn set_jwks(&self, jwks: &Value) {
        let mut keys = HashMap::new();
        for jwk in jwks
            .get("keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = |name: &str| {
                jwk.get(name)
                    .and_then(Value::as_str)
                    .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            };
            let (Some(kid), Some(kty)) = (
                jwk.get("kid").and_then(Value::as_str),
                jwk.get("kty").and_then(Value::as_str),
            ) else {
                continue;
            };
            let key = match (kty, jwk.get("crv").and_then(Value::as_str)) {
                ("EC", Some("P-256")) => match (field("x"), field("y")) {
                    (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                        let mut public = vec![0x04];
                        public.extend(x);
                        public.extend(y);
                        Key {
                            alg: Algorithm::Es256,
                            public,
                        }
                    }
                    _ => continue,
                },
                ("OKP", Some("Ed25519")) => match field("x") {
                    Some(x) if x.len() == 32 => Key {
                        alg: Algorithm::EdDsa,
                        public: x,
                    },
                    _ => continue,
                },
                _ => continue,
            };
            if self.config.algorithms.contains(&key.alg) {
                keys.insert(kid.to_owned(), key);
            }
        }
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
    }

    /// Checks the signature of a compact JWS of type `typ` and returns its payload's bytes.
    fn signed_payload(&self, token: &str, typ: &str) -> Result<Vec<u8>, VerifyError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed("expected three parts"));
        };
        let header: Header = serde_json::from_slice(&decode(header)?)
            .map_err(|_| VerifyError::Malformed("the header is not JSON"))?;
        let alg = match header.alg.as_str() {
            "ES256" => Algorithm::Es256,
            "EdDSA" => Algorithm::EdDsa,
            other => return Err(VerifyError::Algorithm(other.to_owned())),
        };
        if !self.config.algorithms.contains(&alg) {
            return Err(VerifyError::Algorithm(header.alg));
        }
        if header.typ.as_deref() != Some(typ) {
            return Err(VerifyError::Type);
        }
        let kid = header.kid.unwrap_or_default();
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = keys
            .get(&kid)
            .ok_or_else(|| VerifyError::UnknownKey(kid.clone()))?;
        // The key decides the algorithm, never the header alone.
        if key.alg != alg {
            return Err(VerifyError::Signature);
        }
        let signed = token.len() - signature.len() - 1;
        let input = token.get(..signed).unwrap_or_default();
        let algorithm: &dyn aws_lc_rs::signature::VerificationAlgorithm = match alg {
            Algorithm::Es256 => &ECDSA_P256_SHA256_FIXED,
            Algorithm::EdDsa => &ED25519,
        };
        UnparsedPublicKey::new(algorithm, &key.public)
            .verify(input.as_bytes(), &decode(signature)?)
            .map_err(|_| VerifyError::Signature)?;
        decode(payload)
    }

    /// Accepts Tollgate's signed revocation list (`GET /revocations` on its admin endpoint).
    pub fn set_revocations(&self, list: &str, now: i64) -> Result<(), VerifyError> {
        let Some(policy) = &self.config.revocations else {
            return Ok(());
        };
        let payload = self.signed_payload(list, "tollgate-revocations+jwt")?;
        #[derive(Deserialize)]
        struct Issuer {
            iss: String,
        }
        let issuer: Issuer = serde_json::from_slice(&payload)
            .map_err(|_| VerifyError::Malformed("not a revocation list"))?;
        if issuer.iss != policy.issuer {
            return Err(VerifyError::Issuer(issuer.iss));
        }
        let list: Revocations = serde_json::from_slice(&payload)
            .map_err(|_| VerifyError::Malformed("not a revocation list"))?;
        if now >= list.exp + self.config.leeway_secs {
            return Err(VerifyError::Expired);
        }
        let mut current = self
            .revocations
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // An older list never replaces a newer one.
        if current.as_ref().is_none_or(|c| c.iat <= list.iat) {
            *current = Some(list);
        }
        Ok(())
    }

    /// Is the revocation list recent enough to accept tokens by?
    pub fn revocations_fresh(&self, now: i64) -> bool {
        let Some(policy) = &self.config.revocations else {
            return true;
        };
        self.revocations
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|list| now - list.iat <= policy.max_age_secs && now < list.exp)
    }

    /// For an authorization server taking Tollgate's token as the subject of a token exchange
    /// (RFC 8693): everything but the call is checked (signature, `typ`, issuer, audience,
    /// time, revocation, once), since the exchange is not the call. A resource server uses
    /// [`Verifier::verify`].
    pub fn verify_subject_token(&self, token: &str, now: i64) -> Result<AccessClaims, VerifyError> {
        self.check(token, now, None)
    }

    /// Accepts `token` for `request` at `now`, once.
    pub fn verify(
        &self,
        token: &str,
        now: i64,
        request: &Presented<'_>,
    ) -> Result<AccessClaims, VerifyError> {
        self.check(token, now, Some(request))
    }

    fn check(
        &self,
        token: &str,
        now: i64,
        request: Option<&Presented<'_>>,
    ) -> Result<AccessClaims, VerifyError> {
        let payload = self.signed_payload(token, "at+jwt")?;
        self.accept(payload, now, request)
    }

    /// The checks after the signature.
    fn accept(
        &self,
        payload: Vec<u8>,
        now: i64,
        request: Option<&Presented<'_>>,
    ) -> Result<AccessClaims, VerifyError> {
        let claims: AccessClaims = serde_json::from_slice(&payload)
            .map_err(|_| VerifyError::Malformed("the claims are not an access token's"))?;
        if claims.iss != self.config.issuer {
            return Err(VerifyError::Issuer(claims.iss));
        }
        if claims.aud != self.config.audience {
            return Err(VerifyError::Audience(claims.aud));
        }
        let leeway = self.config.leeway_secs;
        if now >= claims.exp + leeway {
            return Err(VerifyError::Expired);
        }
        if now + leeway < claims.nbf {
            return Err(VerifyError::NotYetValid);
        }
        let [details] = claims.authorization_details.as_slice() else {
            return Err(VerifyError::Mismatch("exactly one authorization detail"));
        };
        let get = |name: &str| details.get(name).and_then(Value::as_str);
        if get("type") != Some(DETAILS_TYPE) {
            return Err(VerifyError::Mismatch("authorization detail type"));
        }
        match request.copied() {
            None => {}
            Some(Presented::Tool { tool, arguments }) => {
                if get("tool") != Some(tool) {
                    return Err(VerifyError::Mismatch("tool"));
                }
                if get("arguments_sha256") != Some(crate::jcs::digest(arguments).as_str()) {
                    return Err(VerifyError::Mismatch("arguments"));
                }
            }
            Some(Presented::Http { method, path, body }) => {
                if get("method") != Some(method) {
                    return Err(VerifyError::Mismatch("method"));
                }
                if get("path") != Some(path) {
                    return Err(VerifyError::Mismatch("path"));
                }
                if get("body_sha256") != Some(crate::signing::body_digest(body).as_str()) {
                    return Err(VerifyError::Mismatch("body"));
                }
            }
        }
        if self.config.revocations.is_some() {
            if !self.revocations_fresh(now) {
                return Err(VerifyError::StaleRevocations);
            }
            let revocations = self
                .revocations
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(list) = revocations.as_ref()
                && (list.revoked_jtis.contains_key(&claims.jti)
                    || list
                        .sessions_issued_before
                        .get(&claims.sid)
                        .is_some_and(|cut| claims.iat <= *cut))
            {
                return Err(VerifyError::Revoked);
            }
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.retain(|_, exp| *exp + leeway > now);
        if seen.insert(claims.jti.clone(), claims.exp).is_some() {
            return Err(VerifyError::Replayed);
        }
        Ok(claims)
    }
}
