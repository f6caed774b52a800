//! `[front]`: where agents reach Tollgate (stdio, streamable HTTP) and the HTTP front's limits.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use super::{ConfigError, DEFAULT_SESSION_IDLE_TIMEOUT, millis};

/// How long a finished event stream that was not read to its end stays available for a client
/// to resume, unless configured (`front.http.resume_keep_ms`). A stream read to its end is
/// dropped at once.
pub const DEFAULT_RESUME_KEEP: Duration = Duration::from_secs(30);
/// Most event streams kept at once unless configured (`front.http.resume_streams`); past it,
/// new streams are not kept for resumption.
pub const DEFAULT_RESUME_STREAMS: usize = 4096;

/// Where agents connect.
#[derive(Debug, Clone, Default)]
pub struct Fronts {
    pub stdio: bool,
    pub http: Option<HttpFront>,
}

/// The streamable-HTTP front.
#[derive(Debug, Clone)]
pub struct HttpFront {
    pub listen: SocketAddr,
    pub path: String,
    /// `Host` header values accepted (DNS-rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted; any other `Origin` gets 403.
    pub allowed_origins: Vec<String>,
    /// Keep legacy (2025-11-25) sessions with `Mcp-Session-Id`.
    pub sessions: bool,
    /// A session with no request for this long is closed.
    pub session_idle_timeout: Duration,
    /// What one connection may hold and for how long.
    pub connections: ConnectionLimits,
    /// How long a finished call's event stream stays resumable (`Last-Event-ID`) when its
    /// client did not read it to the end, and how many are kept at most.
    pub resume_keep: Duration,
    pub resume_streams: usize,
}

/// Limits on the HTTP front's connections: a client that never finishes its headers or body,
/// or holds a connection open doing nothing, or opens thousands, cannot keep others out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request's headers must arrive within this.
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    pub body_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections in all; past it the one idle longest is closed for a newcomer, and
    /// when none is idle the newcomer gets 503.
    pub max_connections: usize,
    /// Open connections from one IP address, likewise.
    pub max_per_peer: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_per_peer: 256,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFronts {
    #[serde(default)]
    pub(super) stdio: bool,
    pub(super) http: Option<RawHttpFront>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpFront {
    pub(super) listen: String,
    #[serde(default = "default_path")]
    pub(super) path: String,
    #[serde(default)]
    pub(super) allowed_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
    #[serde(default = "default_true")]
    pub(super) sessions: bool,
    pub(super) session_idle_timeout_ms: Option<u64>,
    pub(super) header_timeout_ms: Option<u64>,
    pub(super) body_timeout_ms: Option<u64>,
    pub(super) idle_timeout_ms: Option<u64>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_peer: Option<usize>,
    pub(super) resume_keep_ms: Option<u64>,
    pub(super) resume_streams: Option<usize>,
}

fn default_path() -> String {
    "/mcp".to_owned()
}

/// Hosts a local front accepts by default: loopback names only.
pub fn default_allowed_hosts() -> Vec<String> {
    ["localhost", "127.0.0.1", "[::1]", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// `[front.http]`'s connection limits, checked.
fn connection_limits(raw: &RawHttpFront) -> Result<ConnectionLimits, ConfigError> {
    let defaults = ConnectionLimits::default();
    let count = |key: &str, value: Option<usize>, default: usize| match value {
        None => Ok(default),
        Some(n) if (1..=1_000_000).contains(&n) => Ok(n),
        Some(_) => Err(ConfigError::invalid(
            key,
            "a number of connections from 1 to 1000000",
        )),
    };
    let limits = ConnectionLimits {
        header_timeout: millis(
            "front.http.header_timeout_ms",
            raw.header_timeout_ms,
            defaults.header_timeout,
        )?,
        body_timeout: millis(
            "front.http.body_timeout_ms",
            raw.body_timeout_ms,
            defaults.body_timeout,
        )?,
        idle_timeout: millis(
            "front.http.idle_timeout_ms",
            raw.idle_timeout_ms,
            defaults.idle_timeout,
        )?,
        max_connections: count(
            "front.http.max_connections",
            raw.max_connections,
            defaults.max_connections,
        )?,
        max_per_peer: count(
            "front.http.max_connections_per_peer",
            raw.max_connections_per_peer,
            defaults.max_per_peer,
        )?,
    };
    if limits.max_per_peer > limits.max_connections {
        return Err(ConfigError::invalid(
            "front.http.max_connections_per_peer",
            "at most `max_connections`",
        ));
    }
    Ok(limits)
}

impl RawFronts {
    pub(super) fn validate(self) -> Result<Fronts, ConfigError> {
        let http = match self.http {
            None => None,
            Some(raw) => {
                let listen: SocketAddr = raw.listen.parse().map_err(|_| {
                    ConfigError::invalid(
                        "front.http.listen",
                        format!(
                            "a socket address such as `127.0.0.1:8080`, not `{}`",
                            raw.listen
                        ),
                    )
                })?;
                if !raw.path.starts_with('/') || raw.path.len() < 2 {
                    return Err(ConfigError::invalid(
                        "front.http.path",
                        "an absolute path such as `/mcp`",
                    ));
                }
                for origin in &raw.allowed_origins {
                    if origin != "null" && !origin.contains("://") {
                        return Err(ConfigError::invalid(
                            "front.http.allowed_origins",
                            format!(
                                "origins with a scheme such as `https://app.example.com`, not `{origin}`"
                            ),
                        ));
                    }
                }
                let connections = connection_limits(&raw)?;
                Some(HttpFront {
                    listen,
                    path: raw.path,
                    allowed_hosts: raw.allowed_hosts.unwrap_or_else(default_allowed_hosts),
                    allowed_origins: raw.allowed_origins,
                    sessions: raw.sessions,
                    session_idle_timeout: millis(
                        "front.http.session_idle_timeout_ms",
                        raw.session_idle_timeout_ms,
                        DEFAULT_SESSION_IDLE_TIMEOUT,
                    )?,
                    connections,
                    resume_keep: millis(
                        "front.http.resume_keep_ms",
                        raw.resume_keep_ms,
                        DEFAULT_RESUME_KEEP,
                    )?,
                    resume_streams: match raw.resume_streams {
                        None => DEFAULT_RESUME_STREAMS,
                        Some(n) if (1..=1_000_000).contains(&n) => n,
                        Some(_) => {
                            return Err(ConfigError::invalid(
                                "front.http.resume_streams",
                                "a number of streams from 1 to 1000000",
                            ));
                        }
                    },
                })
            }
        };
        if !self.stdio && http.is_none() {
            return Err(ConfigError::invalid(
                "front",
                "at least one front: `front.stdio = true` or a `[front.http]` table",
            ));
        }

        Ok(Fronts {
            stdio: self.stdio,
            http,
        })
    }
}

fn default_true() -> bool {
    true
}
