//! `[[upstream]]`: the tool servers behind Tollgate, how each is started or reached, its
//! credential, sandbox and restarts.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{
    ConfigError, CredentialConfig, ExchangeConfig, Limits, RawCredential, Secret, millis,
    read_secret,
};

/// One tool server behind Tollgate.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// What each allowed call carries to this upstream.
    pub credential: CredentialConfig,
    /// Secret values whose echoes are removed from this upstream's answers.
    pub scrub: Vec<Secret>,
    /// The folder the upstream's relative paths resolve against, for resource binding.
    pub root: Option<String>,
    /// The kernel boundary a stdio upstream runs in, as configured.
    pub sandbox: Option<SandboxConfig>,
    /// That boundary made concrete (Tollgate's own folders carved out): set when the proxy
    /// starts, from `sandbox`.
    pub confinement: Option<crate::sandbox::Confinement>,
    pub transport: UpstreamTransport,
    pub protocol: UpstreamProtocol,
    pub call_timeout: Duration,
    pub restart: RestartPolicy,
}

/// `upstream[].sandbox`: Landlock around a stdio upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    pub mode: crate::sandbox::SandboxMode,
    /// Folders it may read and change.
    pub paths: Vec<PathBuf>,
    /// Folders it may only read (its install and the system's are added).
    pub read: Vec<PathBuf>,
    /// TCP connections allowed.
    pub network: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSandbox {
    Mode(crate::sandbox::SandboxMode),
    Table(RawSandboxTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSandboxTable {
    pub(super) mode: crate::sandbox::SandboxMode,
    #[serde(default)]
    pub(super) paths: Vec<PathBuf>,
    #[serde(default)]
    pub(super) read: Vec<PathBuf>,
    #[serde(default)]
    pub(super) network: bool,
}

/// The protocol revision Tollgate speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum UpstreamProtocol {
    /// 2025-11-25: `initialize`, sessions, server→client requests. What most servers speak.
    #[default]
    #[serde(rename = "2025-11-25")]
    Legacy,
    /// 2026-07-28: `server/discover`, per-request metadata, `InputRequiredResult`.
    #[serde(rename = "2026-07-28")]
    Modern,
    /// Try 2026-07-28 first and fall back to 2025-11-25.
    #[serde(rename = "auto")]
    Auto,
}

/// How Tollgate reaches an upstream.
#[derive(Debug, Clone)]
pub enum UpstreamTransport {
    /// A child process speaking MCP over its stdin/stdout.
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    /// A streamable-HTTP MCP server.
    Http {
        url: String,
        /// Static headers sent on every request; values never appear in logs.
        headers: BTreeMap<String, Secret>,
    },
    /// An HTTP API whose configured tools Tollgate executes itself.
    Api(std::sync::Arc<super::api::ApiSpec>),
}

/// Backoff between restarts of an upstream that died.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: String,
    pub(super) root: Option<String>,
    pub(super) credential: Option<RawCredential>,
    pub(super) command: Option<String>,
    #[serde(default)]
    pub(super) args: Vec<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) cwd: Option<PathBuf>,
    pub(super) url: Option<String>,
    /// An HTTP API whose `tool`s Tollgate executes itself.
    pub(super) api: Option<String>,
    #[serde(default)]
    pub(super) tool: Vec<super::api::RawApiTool>,
    pub(super) max_response_bytes: Option<usize>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) protocol: UpstreamProtocol,
    pub(super) call_timeout_ms: Option<u64>,
    pub(super) restart_initial_backoff_ms: Option<u64>,
    pub(super) restart_max_backoff_ms: Option<u64>,
    pub(super) sandbox: Option<RawSandbox>,
}

pub(super) fn sanitize_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

fn valid_upstream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Each `[[upstream]]` table, validated, in order.
pub(super) fn validate(
    upstream: Vec<RawUpstream>,
    limits: &Limits,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    if upstream.is_empty() {
        return Err(ConfigError::invalid(
            "upstream",
            "at least one `[[upstream]]` table",
        ));
    }
    let mut upstreams = Vec::with_capacity(upstream.len());
    for (index, raw) in upstream.into_iter().enumerate() {
        let key = |field: &str| format!("upstream[{index}].{field}");
        if !valid_upstream_name(&raw.name) {
            return Err(ConfigError::invalid(
                key("name"),
                format!(
                    "1 to 64 characters from `A-Z a-z 0-9 - _`, not `{}`",
                    raw.name
                ),
            ));
        }
        if upstreams
            .iter()
            .any(|u: &UpstreamConfig| u.name == raw.name)
        {
            return Err(ConfigError::invalid(
                key("name"),
                format!("a name no other upstream has; `{}` is used twice", raw.name),
            ));
        }
        if raw.api.is_none() && (!raw.tool.is_empty() || raw.max_response_bytes.is_some()) {
            return Err(ConfigError::invalid(
                key("tool"),
                "tools declared only for an `api` upstream; an MCP server lists its own",
            ));
        }
        let mut headers = BTreeMap::new();
        for (name, value) in raw.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(&value).is_err()
            {
                return Err(ConfigError::invalid(
                    key(&format!("headers.{name}")),
                    "a valid HTTP header name and value",
                ));
            }
            let lower = name.to_ascii_lowercase();
            if lower == "mcp-session-id"
                || lower == "host"
                || lower == "content-length"
                || lower == "authorization"
                    && matches!(
                        raw.credential,
                        Some(RawCredential::Mint { .. } | RawCredential::Exchange { .. })
                    )
            {
                return Err(ConfigError::invalid(
                    key(&format!("headers.{name}")),
                    "a header Tollgate does not set itself",
                ));
            }
            headers.insert(name, Secret::new(value));
        }
        let mut transport = match (raw.command, raw.url, raw.api) {
            (None, None, Some(api)) => {
                if !raw.args.is_empty() || !raw.env.is_empty() || raw.cwd.is_some() {
                    return Err(ConfigError::invalid(
                        key("api"),
                        "`api` with `tool`s; `args`, `env` and `cwd` belong to a `command` upstream",
                    ));
                }
                UpstreamTransport::Api(std::sync::Arc::new(super::api::ApiSpec::from_raw(
                    &api,
                    headers,
                    raw.tool,
                    raw.max_response_bytes,
                    &key,
                )?))
            }
            (Some(command), None, None) => {
                if !headers.is_empty() {
                    return Err(ConfigError::invalid(
                        key("headers"),
                        "headers only with `url`; a stdio upstream takes `env`",
                    ));
                }
                if command.trim().is_empty() {
                    return Err(ConfigError::invalid(key("command"), "a program to run"));
                }
                UpstreamTransport::Stdio {
                    command,
                    args: raw.args,
                    env: raw.env,
                    cwd: raw.cwd,
                }
            }
            (None, Some(url), None) => {
                if !raw.args.is_empty() || !raw.env.is_empty() || raw.cwd.is_some() {
                    return Err(ConfigError::invalid(
                        key("url"),
                        "`url` alone; `args`, `env` and `cwd` belong to a `command` upstream",
                    ));
                }
                let parsed = reqwest::Url::parse(&url).map_err(|_| {
                    ConfigError::invalid(key("url"), format!("an http(s) URL, not `{url}`"))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ConfigError::invalid(
                        key("url"),
                        format!("an http or https URL, not scheme `{}`", parsed.scheme()),
                    ));
                }
                // A credential in the URL would travel into every error and log line that
                // names the URL; headers are kept secret.
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    return Err(ConfigError::invalid(
                        key("url"),
                        "a URL without credentials; put them in `headers`",
                    ));
                }
                UpstreamTransport::Http { url, headers }
            }
            (None, None, None) => {
                return Err(ConfigError::invalid(
                    key("command"),
                    "`command` (a stdio server), `url` (a streamable-HTTP server) or `api` (an HTTP API with `tool`s)",
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    key("command"),
                    "one of `command`, `url` or `api`",
                ));
            }
        };
        let restart = RestartPolicy {
            initial_backoff: millis(
                &key("restart_initial_backoff_ms"),
                raw.restart_initial_backoff_ms,
                RestartPolicy::default().initial_backoff,
            )?,
            max_backoff: millis(
                &key("restart_max_backoff_ms"),
                raw.restart_max_backoff_ms,
                RestartPolicy::default().max_backoff,
            )?,
        };
        if restart.max_backoff < restart.initial_backoff {
            return Err(ConfigError::invalid(
                key("restart_max_backoff_ms"),
                "a value no smaller than `restart_initial_backoff_ms`",
            ));
        }
        if let Some(root) = &raw.root
            && !root.starts_with('/')
        {
            return Err(ConfigError::invalid(
                key("root"),
                format!("an absolute folder such as `/srv/app`, not `{root}`"),
            ));
        }
        let mut scrub = Vec::new();
        let credential = match raw.credential {
            None | Some(RawCredential::None) => CredentialConfig::None,
            Some(RawCredential::Secret {
                header,
                env,
                file,
                format,
            }) => {
                let headers = match &mut transport {
                    UpstreamTransport::Http { headers, .. } => headers,
                    UpstreamTransport::Api(spec) => match std::sync::Arc::get_mut(spec) {
                        Some(spec) => &mut spec.headers,
                        None => {
                            return Err(ConfigError::invalid(
                                key("credential"),
                                "an API upstream not yet shared",
                            ));
                        }
                    },
                    UpstreamTransport::Stdio { .. } => {
                        return Err(ConfigError::invalid(
                            key("credential"),
                            "a secret header only for a `url` or `api` upstream; give a stdio one its secret in `env`",
                        ));
                    }
                };
                let secret = read_secret(&key("credential"), env.as_deref(), file.as_deref())?;
                let format = format.unwrap_or_else(|| "{secret}".to_owned());
                if !format.contains("{secret}") {
                    return Err(ConfigError::invalid(
                        key("credential.format"),
                        "a header value with `{secret}` where the secret goes, such as `Bearer {secret}`",
                    ));
                }
                let value = format.replace("{secret}", &secret);
                if http::HeaderName::from_bytes(header.as_bytes()).is_err()
                    || http::HeaderValue::from_str(&value).is_err()
                {
                    return Err(ConfigError::invalid(
                        key("credential.header"),
                        "a valid HTTP header name, and a secret that is a valid header value",
                    ));
                }
                headers.insert(header.clone(), Secret::new(value));
                scrub.push(Secret::new(secret));
                CredentialConfig::Secret { header }
            }
            Some(RawCredential::Mint {
                audience,
                lifetime_secs,
            }) => {
                if audience.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        key("credential.audience"),
                        "the one audience the upstream accepts, such as `https://payments.example`",
                    ));
                }
                let lifetime_secs = lifetime_secs.unwrap_or(60);
                if !(1..=tollgate_mint::access::MAX_LIFETIME_SECS).contains(&lifetime_secs) {
                    return Err(ConfigError::invalid(
                        key("credential.lifetime_secs"),
                        format!(
                            "a lifetime from 1 to {} seconds",
                            tollgate_mint::access::MAX_LIFETIME_SECS
                        ),
                    ));
                }
                CredentialConfig::Mint {
                    audience,
                    lifetime_secs,
                }
            }
            Some(RawCredential::Exchange {
                token_url,
                audience,
                resource,
                scopes,
                client_id,
                client_secret_env,
                client_secret_file,
                subject_audience,
                cache,
            }) => {
                let parsed = reqwest::Url::parse(&token_url).ok().filter(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.username().is_empty()
                        && u.password().is_none()
                });
                if parsed.is_none() {
                    return Err(ConfigError::invalid(
                        key("credential.token_url"),
                        format!(
                            "the authorization server's token endpoint, an http(s) URL without credentials, not `{token_url}`"
                        ),
                    ));
                }
                if audience.trim().is_empty() || client_id.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        key("credential.audience"),
                        "the downstream's audience and Tollgate's `client_id` at the authorization server",
                    ));
                }
                let by_class = scopes.unwrap_or_default();
                let secret = read_secret(
                    &key("credential"),
                    client_secret_env.as_deref(),
                    client_secret_file.as_deref(),
                )?;
                scrub.push(Secret::new(secret.clone()));
                CredentialConfig::Exchange(Box::new(ExchangeConfig {
                    subject_audience: subject_audience.unwrap_or_else(|| token_url.clone()),
                    token_url,
                    audience,
                    resource,
                    scopes: (!by_class.is_empty()).then_some(by_class),
                    client_id,
                    client_secret: Secret::new(secret),
                    cache,
                }))
            }
        };
        let sandbox = match raw.sandbox {
            None => None,
            Some(_) if !matches!(transport, UpstreamTransport::Stdio { .. }) => {
                return Err(ConfigError::invalid(
                    key("sandbox"),
                    "a sandbox only for a stdio upstream (`command`): Tollgate cannot confine a server it does not start",
                ));
            }
            Some(RawSandbox::Mode(mode)) => Some(SandboxConfig {
                mode,
                paths: Vec::new(),
                read: Vec::new(),
                network: false,
            }),
            Some(RawSandbox::Table(table)) => {
                for path in table.paths.iter().chain(&table.read) {
                    if !path.is_absolute() {
                        return Err(ConfigError::invalid(
                            key("sandbox"),
                            format!("absolute folders, not `{}`", path.display()),
                        ));
                    }
                }
                Some(SandboxConfig {
                    mode: table.mode,
                    paths: table.paths,
                    read: table.read,
                    network: table.network,
                })
            }
        };
        upstreams.push(UpstreamConfig {
            name: raw.name,
            credential,
            scrub,
            root: raw.root,
            sandbox,
            confinement: None,
            transport,
            protocol: raw.protocol,
            call_timeout: millis(
                &key("call_timeout_ms"),
                raw.call_timeout_ms,
                limits.call_timeout,
            )?,
            restart,
        });
    }

    Ok(upstreams)
}
