//! The grant token: a compact JWS (`EdDSA`, type `tollgate-grant+jwt`) whose payload is the
//! grant's claims, so any JOSE library can read it and only the key's holder can make one.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use tollgate_policy::{Grant, GrantDenial};

use crate::err::MintError;

/// The largest token accepted; a grant is a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
const TYP: &str = "tollgate-grant+jwt";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Why a presented grant is not accepted. The text is safe to show the agent: it names the
/// problem, never the token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("the grant is malformed: {0}")]
    Malformed(String),
    #[error("the grant is not signed by this Tollgate's key")]
    Signature,
    #[error("the grant's claims are invalid: {0}")]
    Claims(String),
    #[error(transparent)]
    Time(#[from] GrantDenial),
    #[error("grant {id} has been revoked{via}")]
    Revoked { id: String, via: String },
}

pub(crate) fn signing_input(grant: &Grant, kid: &str) -> Result<String, TokenError> {
    grant.check_shape().map_err(TokenError::Claims)?;
    let header = Header {
        alg: "EdDSA".to_owned(),
        typ: TYP.to_owned(),
        kid: kid.to_owned(),
    };
    let header = serde_json::to_vec(&header).map_err(|e| TokenError::Claims(e.to_string()))?;
    let claims = serde_json::to_vec(grant).map_err(|e| TokenError::Claims(e.to_string()))?;
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    ))
}

pub(crate) fn verify(
    token: &str,
    kid: &str,
    now: i64,
    check_signature: impl FnOnce(&[u8], &[u8; 64]) -> bool,
) -> Result<Grant, TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed(format!(
            "it is longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three base64url parts separated by `.`".to_owned(),
        ));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed(format!("the {what} is not base64url")))
    };
    let header: Header = serde_json::from_slice(&decode(header, "header")?)
        .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
    if header.alg != "EdDSA" || header.typ != TYP {
        return Err(TokenError::Malformed(format!(
            "expected a `{TYP}` signed with EdDSA, got `{}` with `{}`",
            header.typ, header.alg
        )));
    }
    if header.kid != kid {
        return Err(TokenError::Signature);
    }
    let signature: [u8; 64] = decode(signature, "signature")?
        .try_into()
        .map_err(|_| TokenError::Signature)?;
    let signed_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
    let input = token.get(..signed_len).unwrap_or_default();
    if !check_signature(input.as_bytes(), &signature) {
        return Err(TokenError::Signature);
    }
    // Only a signed payload is parsed beyond base64: nothing unsigned reaches serde.
    let grant: Grant = serde_json::from_slice(&decode(claims, "payload")?)
        .map_err(|e| TokenError::Claims(e.to_string()))?;
    grant.check_shape().map_err(TokenError::Claims)?;
    grant.check_time(now)?;
    Ok(grant)
}

/// A fresh grant id from the OS random source.
pub fn new_grant_id() -> Result<String, MintError> {
    new_id("g")
}

/// `<prefix>-` and 24 random hex digits from the OS random source.
pub fn new_id(prefix: &str) -> Result<String, MintError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| MintError::Random(e.to_string()))?;
    let mut id = String::with_capacity(prefix.len() + 25);
    id.push_str(prefix);
    id.push('-');
    for b in bytes {
        use std::fmt::Write;
        let _ = write!(id, "{b:02x}");
    }
    Ok(id)
}
