//! The per-call signing keys themselves and the token profile's fixed terms: the algorithms,
//! the trust paths, a key that signs (and the JWK it publishes), how long a token may live and
//! what leeway a verifier allows. What the keyring keeps, the minter signs with and the
//! verifier checks against.

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tollgate_policy::ActionClass;

use crate::err::MintError;

/// A signature algorithm for per-call tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256, the default: what most JOSE libraries verify.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// A trust path: the keys and issuer one kind of call is signed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustPath {
    Read,
    Write,
    Approve,
    Revoke,
}

impl TrustPath {
    pub const ALL: [Self; 4] = [Self::Read, Self::Write, Self::Approve, Self::Revoke];

    /// The path a class of call is signed on. Everything that changes the world but is not
    /// an approval or a revocation (write, egress, execute, payment, admin) takes the write
    /// path: a resource server that accepts writes must see it is a write.
    pub fn for_class(class: ActionClass) -> Self {
        match class {
            ActionClass::Read => Self::Read,
            ActionClass::Approve => Self::Approve,
            ActionClass::Revoke => Self::Revoke,
            ActionClass::Write
            | ActionClass::Egress
            | ActionClass::Execute
            | ActionClass::Payment
            | ActionClass::Admin => Self::Write,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Approve => "approve",
            Self::Revoke => "revoke",
        }
    }
}

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// One signing key: its algorithm, its RFC 7638 thumbprint as `kid`, and its public JWK.
pub struct AccessKey {
    pair: Pair,
    kid: String,
    pub(crate) jwk: Value,
    /// The JOSE header, already base64url: the same for every token this key signs.
    pub(crate) header: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AccessKey {
    pub(crate) fn from_pkcs8(alg: Algorithm, pkcs8: &[u8]) -> Result<Self, &'static str> {
        let (pair, public) = match alg {
            Algorithm::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(|_| "not a P-256 PKCS#8 key")?;
                // An uncompressed point: 0x04, then x and y.
                let point = pair.public_key().as_ref().to_vec();
                let (x, y) = match point.as_slice() {
                    [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
                    _ => return Err("an unexpected public key encoding"),
                };
                let jwk = json!({"crv": "P-256", "kty": "EC", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)});
                (Pair::Es256(pair), jwk)
            }
            Algorithm::EdDsa => {
                let pair =
                    Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| "not an Ed25519 PKCS#8 key")?;
                let jwk = json!({"crv": "Ed25519", "kty": "OKP", "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())});
                (Pair::EdDsa(pair), jwk)
            }
        };
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(crate::jcs::canonical(&public).as_bytes()));
        let mut jwk = public;
        if let Some(members) = jwk.as_object_mut() {
            members.insert("kid".into(), Value::String(kid.clone()));
            members.insert("alg".into(), Value::String(alg.as_str().into()));
            members.insert("use".into(), Value::String("sig".into()));
        }
        let header = URL_SAFE_NO_PAD
            .encode(json!({"alg": alg.as_str(), "typ": "at+jwt", "kid": kid}).to_string());
        Ok(Self {
            pair,
            kid,
            jwk,
            header,
            rng: SystemRandom::new(),
        })
    }

    pub(crate) fn generate(alg: Algorithm) -> Result<Vec<u8>, MintError> {
        let rng = SystemRandom::new();
        let document = match alg {
            Algorithm::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| MintError::Random("P-256 key generation failed".into()))?
                    .as_ref()
                    .to_vec()
            }
            Algorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| MintError::Random("Ed25519 key generation failed".into()))?
                .as_ref()
                .to_vec(),
        };
        Ok(document)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn public_bytes(&self) -> &[u8] {
        match &self.pair {
            Pair::Es256(pair) => pair.public_key().as_ref(),
            Pair::EdDsa(pair) => pair.public_key().as_ref(),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.pair {
            Pair::Es256(_) => Algorithm::Es256,
            Pair::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    /// The public JWK with `kid`, `alg` and `use`.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    pub(crate) fn sign(&self, input: &[u8]) -> Result<Vec<u8>, MintError> {
        match &self.pair {
            Pair::Es256(pair) => pair
                .sign(&self.rng, input)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| MintError::Random("ES256 signing failed".into())),
            Pair::EdDsa(pair) => Ok(pair.sign(input).as_ref().to_vec()),
        }
    }
}

/// Base64url (no padding) of the SHA-256 of `bytes`: how a token names a request body.
pub fn body_digest(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(bytes))
}

/// The `type` of the one `authorization_details` entry.
pub const DETAILS_TYPE: &str = "tollgate_tool_call";

/// The longest a per-call token may live.
pub const MAX_LIFETIME_SECS: i64 = 300;

/// The largest clock skew tolerated.
pub const MAX_LEEWAY_SECS: i64 = 5;
