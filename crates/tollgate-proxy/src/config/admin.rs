//! `[admin]`: the admin endpoint (keys, introspection, revocation, metrics) and its token.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use super::{ConfigError, Secret, read_secret};

/// The admin HTTP endpoint: JWKS and metadata for resource servers.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token introspection and revocation require; without one they are off.
    pub token: Option<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
    /// The endpoint listens on loopback only unless this names the exception.
    #[serde(default)]
    pub(super) allow_remote: bool,
    /// Where the admin token is read from (one of them); without it, introspection and
    /// revocation are not served.
    pub(super) token_env: Option<String>,
    pub(super) token_file: Option<PathBuf>,
}

impl RawAdmin {
    pub(super) fn validate(self) -> Result<AdminConfig, ConfigError> {
        let raw = self;
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!(
                    "a socket address such as `127.0.0.1:9090`, not `{}`",
                    raw.listen
                ),
            )
        })?;
        if !listen.ip().is_loopback() && !raw.allow_remote {
            return Err(ConfigError::invalid(
                "admin.listen",
                "a loopback address, or `allow_remote = true` to listen elsewhere",
            ));
        }
        let token = match (&raw.token_env, &raw.token_file) {
            (None, None) => None,
            (env, file) => Some(Secret::new(read_secret(
                "admin.token_env",
                env.as_deref(),
                file.as_deref(),
            )?)),
        };
        Ok(AdminConfig { listen, token })
    }
}
