//! Per-call credentials: one short-lived access token (RFC 9068 JWT, `typ: at+jwt`) for each
//! allowed call, good for that one tool, action and set of resources and for the exact
//! arguments it was decided on.
//!
//! Read, write, approve and revoke are separate trust paths: each has its own key and its own
//! issuer, so a resource server that serves only reads trusts only the read path, and a token
//! minted for a read can never be taken for a write.

use std::{
    path::Path,
    sync::{Arc, Mutex, RwLock},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Serialize;
use serde_json::{Value, json};
use tollgate_policy::ActionClass;

pub use crate::signing::{
    AccessKey, Algorithm, DETAILS_TYPE, MAX_LIFETIME_SECS, TrustPath, body_digest,
};
use crate::{
    err::MintError,
    keyring::{KeyEntry, KeyState, Ring, Rotated, Stamp, Store},
};

/// The signing keys of every trust path, kept in `<state>/access/` (see [`crate::keyring`]).
#[derive(Debug)]
pub struct AccessKeys {
    store: Store,
    alg: Algorithm,
    ring: RwLock<Arc<Ring>>,
    /// The manifest version the ring was read from, and when that was last checked.
    seen: Mutex<(Option<Stamp>, i64)>,
}

impl AccessKeys {
    /// Loads the ring from `state_dir`, making what is missing: a current and a next key of
    /// `alg` on each path. A current key of another algorithm is retired (still published).
    pub fn load_or_create(state_dir: &Path, alg: Algorithm) -> Result<Self, MintError> {
        let store = Store::open(state_dir)?;
        let ring = store.open_ring(alg, crate::unix_now())?;
        let stamp = store.stamp();
        Ok(Self {
            store,
            alg,
            ring: RwLock::new(Arc::new(ring)),
            seen: Mutex::new((stamp, crate::unix_now())),
        })
    }

    fn ring(&self) -> Arc<Ring> {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn install(&self, ring: Ring) {
        let stamp = self.store.stamp();
        *self
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ring);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.0 = stamp;
    }

    /// Rereads the ring if its manifest changed (another process rotated it), at most once a
    /// second. On a manifest that cannot be read the ring in memory stays.
    pub fn refresh(&self, now: i64) -> Result<bool, MintError> {
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.1 == now {
                return Ok(false);
            }
            seen.1 = now;
            if self.store.stamp() == seen.0 {
                return Ok(false);
            }
        }
        let ring = self.store.reread()?;
        self.install(ring);
        Ok(true)
    }

    /// Rotates every path now: each next key starts signing, each current one retires.
    pub fn rotate_now(&self, now: i64) -> Result<Vec<Rotated>, MintError> {
        let (ring, rotated) = self.store.rotate(self.alg, &TrustPath::ALL, None, now)?;
        self.install(ring);
        Ok(rotated)
    }

    /// Rotates the paths whose current key has signed for `every_secs` and whose next key has
    /// been published for at least `ahead_secs`; drops retired keys past their time.
    pub fn rotate_due(
        &self,
        every_secs: i64,
        ahead_secs: i64,
        now: i64,
    ) -> Result<Vec<Rotated>, MintError> {
        let (ring, rotated) = self.store.rotate(
            self.alg,
            &TrustPath::ALL,
            Some((every_secs, ahead_secs)),
            now,
        )?;
        self.install(ring);
        Ok(rotated)
    }

    /// The key `path` signs with now.
    pub fn key(&self, path: TrustPath) -> Option<Arc<AccessKey>> {
        self.ring().signing.get(&path).cloned()
    }

    /// Every key of the ring and where it is in its life.
    pub fn entries(&self) -> Vec<KeyEntry> {
        self.ring().entries.clone()
    }

    /// The JWKS (RFC 7517) resource servers fetch: every published key of every path (current,
    /// next, and retired until its tokens have expired).
    pub fn jwks(&self) -> Value {
        let ring = self.ring();
        let now = crate::unix_now();
        let mut entries: Vec<&KeyEntry> = ring
            .entries
            .iter()
            .filter(|e| e.published_until().is_none_or(|until| until > now))
            .collect();
        entries.sort_by_key(|e| {
            (
                e.path,
                e.state != KeyState::Current,
                e.state != KeyState::Next,
            )
        });
        json!({"keys": entries
            .iter()
            .filter_map(|e| ring.keys.get(&e.kid))
            .map(|k| k.jwk.clone())
            .collect::<Vec<_>>()})
    }
}

/// What one allowed call is minted for.
#[derive(Debug, Clone)]
pub struct CallCredential<'a> {
    /// `<base>/<path>` is the issuer.
    pub issuer_base: &'a str,
    /// The user (or, when there is none, the agent) the session acts for.
    pub subject: &'a str,
    /// The agent.
    pub client_id: &'a str,
    /// Exactly one downstream audience.
    pub audience: &'a str,
    pub session: &'a str,
    pub tool: &'a str,
    pub class: ActionClass,
    /// The bound resources, as `kind:value`.
    pub resources: &'a [String],
    /// The RFC 8785 digest of the arguments as the upstream receives them
    /// ([`crate::jcs::digest`]), made once by the caller, who needs it for more than the token.
    pub arguments_sha256: &'a str,
    pub decision_id: &'a str,
    pub grant_id: Option<&'a str>,
    pub approval_id: Option<&'a str>,
    /// For a call Tollgate itself makes over HTTP: the exact request, which the token then
    /// names (method, path with query, body hash) so it is good for that request only.
    pub http: Option<HttpCall<'a>>,
    pub now: i64,
    pub lifetime_secs: i64,
}

/// The HTTP request one call becomes.
#[derive(Debug, Clone, Copy)]
pub struct HttpCall<'a> {
    /// Upper case, as sent.
    pub method: &'a str,
    /// The path and query, exactly as sent (percent-encoded).
    pub path: &'a str,
    /// The body's exact bytes (empty for none).
    pub body: &'a [u8],
}

/// A minted token and what the audit record keeps of it (never the token).
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub kid: String,
    pub aud: String,
    pub exp: i64,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    client_id: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &'a str,
    sid: &'a str,
    act: Actor<'a>,
    scope: &'a str,
    authorization_details: [Details<'a>; 1],
}

#[derive(Serialize)]
struct Actor<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<Box<Actor<'a>>>,
}

#[derive(Serialize)]
struct Details<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    tool: &'a str,
    action: &'a str,
    resources: &'a [String],
    arguments_sha256: &'a str,
    decision_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    grant_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_sha256: Option<String>,
}

impl AccessKeys {
    /// The claims of `token` if one of these keys signed it (whatever else is true of it).
    pub fn signed_by_us(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        let kid = header.get("kid")?.as_str()?;
        let ring = self.ring();
        let key = ring.keys.get(kid)?;
        let public = key.public_bytes();
        let algorithm: &dyn aws_lc_rs::signature::VerificationAlgorithm = match key.algorithm() {
            Algorithm::Es256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::EdDsa => &aws_lc_rs::signature::ED25519,
        };
        let signed = token.len().checked_sub(signature.len() + 1)?;
        aws_lc_rs::signature::UnparsedPublicKey::new(algorithm, public)
            .verify(
                token.get(..signed)?.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).ok()?,
            )
            .ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    /// Signs `claims` as a JWT of type `typ` with `path`'s key (for the revocation list).
    pub fn sign_claims(
        &self,
        path: TrustPath,
        typ: &str,
        claims: &Value,
    ) -> Result<String, MintError> {
        let key = self
            .key(path)
            .ok_or_else(|| MintError::Random("no key for the trust path".into()))?;
        let header = json!({"alg": key.algorithm().as_str(), "typ": typ, "kid": key.kid()});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = key.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

impl AccessKeys {
    /// Mints the token for one allowed call.
    pub fn mint(&self, call: &CallCredential<'_>) -> Result<Minted, MintError> {
        let path = TrustPath::for_class(call.class);
        let key = self
            .key(path)
            .ok_or_else(|| MintError::Random("no key for the trust path".into()))?;
        let jti = crate::token::new_id("t")?;
        let exp = call.now + call.lifetime_secs.clamp(1, MAX_LIFETIME_SECS);
        let issuer = format!(
            "{}/{}",
            call.issuer_base.trim_end_matches('/'),
            path.as_str()
        );
        let scope = format!("tools:{}", call.class.as_str());
        let claims = Claims {
            iss: &issuer,
            sub: call.subject,
            client_id: call.client_id,
            aud: call.audience,
            iat: call.now,
            nbf: call.now,
            exp,
            jti: &jti,
            sid: call.session,
            // RFC 8693: Tollgate acts now, on behalf of the agent before it.
            act: Actor {
                sub: "tollgate",
                act: Some(Box::new(Actor {
                    sub: call.client_id,
                    act: None,
                })),
            },
            scope: &scope,
            authorization_details: [Details {
                kind: DETAILS_TYPE,
                tool: call.tool,
                action: call.class.as_str(),
                resources: call.resources,
                arguments_sha256: call.arguments_sha256,
                decision_id: call.decision_id,
                grant_id: call.grant_id,
                approval_id: call.approval_id,
                method: call.http.map(|h| h.method),
                path: call.http.map(|h| h.path),
                body_sha256: call.http.map(|h| body_digest(h.body)),
            }],
        };
        let payload = serde_json::to_vec(&claims).map_err(|e| MintError::Random(e.to_string()))?;
        let mut input = String::with_capacity(key.header.len() + payload.len() * 4 / 3 + 4);
        input.push_str(&key.header);
        input.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut input);
        let signature = key.sign(input.as_bytes())?;
        Ok(Minted {
            token: format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)),
            jti,
            kid: key.kid().to_owned(),
            aud: call.audience.to_owned(),
            exp,
        })
    }
}
