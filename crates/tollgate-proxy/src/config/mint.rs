//! `[mint]` and each upstream's `credential`: how per-call credentials are minted, exchanged
//! or injected.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use super::{ConfigError, Secret};

/// How per-call credentials are minted.
#[derive(Debug, Clone)]
pub struct MintConfig {
    /// Tokens are issued by `<issuer>/<trust path>` (`…/read`, `…/write`, …).
    pub issuer: String,
    pub algorithm: tollgate_mint::Algorithm,
    /// Each path's key signs for this long before the next one takes over; `None` rotates only
    /// on demand.
    pub rotate_every_secs: Option<i64>,
    /// A next key is published at least this long before it signs (how long resource servers
    /// may cache the JWKS).
    pub publish_ahead_secs: i64,
}

/// Default time a signing key signs before it is rotated: a week.
pub const DEFAULT_ROTATE_EVERY_SECS: i64 = 7 * 86_400;

/// Default time a next key is published before it signs: an hour.
pub const DEFAULT_PUBLISH_AHEAD_SECS: i64 = 3_600;

impl Default for MintConfig {
    fn default() -> Self {
        Self {
            issuer: "https://tollgate.invalid".to_owned(),
            algorithm: tollgate_mint::Algorithm::Es256,
            rotate_every_secs: Some(DEFAULT_ROTATE_EVERY_SECS),
            publish_ahead_secs: DEFAULT_PUBLISH_AHEAD_SECS,
        }
    }
}

/// What an allowed call to an upstream carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CredentialConfig {
    /// Nothing: the upstream trusts Tollgate by where it runs.
    #[default]
    None,
    /// A token minted for this one call (`Authorization: Bearer` to an HTTP upstream, `_meta`
    /// `io.tollgate/credential` to a stdio one).
    Mint {
        audience: String,
        lifetime_secs: i64,
    },
    /// A static secret (an API key of a legacy service account) read from the environment or
    /// a file at start and put in one request header to this HTTP upstream. Never logged,
    /// never shown to the agent: echoes of it in the upstream's answers are scrubbed.
    Secret { header: String },
    /// A token obtained for each call by RFC 8693 token exchange at an external
    /// authorization server, delivered like a minted one.
    Exchange(Box<ExchangeConfig>),
}

/// Token exchange (RFC 8693): Tollgate presents a token it minted for the call (the subject:
/// the grant's user) and one for itself (the actor) and asks for a token for `audience`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeConfig {
    pub token_url: String,
    pub audience: String,
    pub resource: Option<String>,
    /// The scope asked for each class of call: a class without one is refused. `None`: no
    /// scope is asked for.
    pub scopes: Option<BTreeMap<tollgate_policy::ActionClass, String>>,
    /// Tollgate's client id at the authorization server (HTTP Basic with the secret).
    pub client_id: String,
    pub client_secret: Secret,
    /// The `aud` of the subject and actor tokens: the authorization server. Defaults to
    /// `token_url`.
    pub subject_audience: String,
    /// Reuse an exchanged token for the same subject, audience and scope until it expires.
    /// Off by default: each call gets its own.
    pub cache: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMint {
    pub(super) issuer: Option<String>,
    pub(super) algorithm: Option<tollgate_mint::Algorithm>,
    /// 0 turns scheduled rotation off.
    pub(super) rotate_every_secs: Option<i64>,
    pub(super) publish_ahead_secs: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "mode", rename_all = "kebab-case")]
pub(super) enum RawCredential {
    None,
    Mint {
        audience: String,
        lifetime_secs: Option<i64>,
    },
    Secret {
        header: String,
        env: Option<String>,
        file: Option<PathBuf>,
        /// How the header's value is written, with `{secret}` where the secret goes.
        format: Option<String>,
    },
    Exchange {
        token_url: String,
        audience: String,
        resource: Option<String>,
        /// The scope asked for each class of call; none asked when absent.
        scopes: Option<BTreeMap<tollgate_policy::ActionClass, String>>,
        client_id: String,
        client_secret_env: Option<String>,
        client_secret_file: Option<PathBuf>,
        subject_audience: Option<String>,
        #[serde(default)]
        cache: bool,
    },
}

impl RawMint {
    pub(super) fn validate(self) -> Result<MintConfig, ConfigError> {
        Ok(MintConfig {
            issuer: match self.issuer {
                None => MintConfig::default().issuer,
                Some(issuer)
                    if reqwest::Url::parse(&issuer)
                        .is_ok_and(|u| matches!(u.scheme(), "https" | "http")) =>
                {
                    issuer.trim_end_matches('/').to_owned()
                }
                Some(other) => {
                    return Err(ConfigError::invalid(
                        "mint.issuer",
                        format!("an http(s) URL naming this Tollgate, not `{other}`"),
                    ));
                }
            },
            algorithm: self.algorithm.unwrap_or(tollgate_mint::Algorithm::Es256),
            rotate_every_secs: match self.rotate_every_secs {
                None => Some(DEFAULT_ROTATE_EVERY_SECS),
                Some(0) => None,
                Some(secs) if secs >= 60 => Some(secs),
                Some(secs) => {
                    return Err(ConfigError::invalid(
                        "mint.rotate_every_secs",
                        format!("0 (never) or at least 60 seconds, not {secs}"),
                    ));
                }
            },
            publish_ahead_secs: match self.publish_ahead_secs {
                None => DEFAULT_PUBLISH_AHEAD_SECS,
                Some(secs) if secs >= 0 => secs,
                Some(secs) => {
                    return Err(ConfigError::invalid(
                        "mint.publish_ahead_secs",
                        format!("a number of seconds, not {secs}"),
                    ));
                }
            },
        })
    }
}
