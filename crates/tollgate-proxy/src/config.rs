//! Operator configuration: the TOML file, parsed with `deny_unknown_fields` and validated once
//! into [`Config`], the model the rest of the proxy reads.

mod admin;
pub mod api;
mod audit;
mod err;
mod front;
mod mint;
mod policy;
mod upstream;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

pub use admin::*;
pub use audit::*;
pub use err::ConfigError;
pub use front::*;
pub use mint::*;
pub use policy::*;
pub use upstream::*;

/// Default upper bound on one JSON-RPC message from the agent or an upstream.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Default time an upstream gets to answer one `tools/call`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time an HTTP session may stay idle before it is closed.
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time an upstream gets to answer any other request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub fronts: Fronts,
    pub naming: Naming,
    pub limits: Limits,
    pub upstreams: Vec<UpstreamConfig>,
    pub policy: PolicyConfig,
    pub grants: GrantsConfig,
    pub mint: MintConfig,
    pub admin: Option<AdminConfig>,
    /// The lock file of pinned tool definitions, when tools are pinned.
    pub pins: Option<PathBuf>,
    /// What a call of a tool whose definition left its pin gets.
    pub pin_changed: PinChanged,
    pub approvals: ApprovalsConfig,
    pub audit: AuditConfig,
    pub telemetry: TelemetryConfig,
    /// The file this configuration was read from, if any.
    pub source: Option<PathBuf>,
}

/// How upstream tools, prompts and resource templates are named towards the agent.
#[derive(Debug, Clone)]
pub struct Naming {
    pub separator: String,
    pub prefix: PrefixMode,
}

/// When names get the `<upstream><separator>` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    /// Prefix when more than one upstream is configured.
    Auto,
    Always,
    Never,
}

/// Bounds that keep one bad peer from hurting the others.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub call_timeout: Duration,
    pub request_timeout: Duration,
}

/// A configured value that must never be printed (header values may carry tokens).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

// ---- the file as written ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    front: RawFronts,
    #[serde(default)]
    naming: RawNaming,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    grants: RawGrants,
    #[serde(default)]
    mint: RawMint,
    admin: Option<RawAdmin>,
    pins: Option<RawPins>,
    #[serde(default)]
    approvals: RawApprovals,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    telemetry: RawTelemetry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNaming {
    #[serde(default = "default_separator")]
    separator: String,
    #[serde(default = "default_prefix")]
    prefix: PrefixMode,
}

impl Default for RawNaming {
    fn default() -> Self {
        Self {
            separator: default_separator(),
            prefix: default_prefix(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_bytes: Option<usize>,
    call_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
}

fn default_separator() -> String {
    ".".to_owned()
}
fn default_prefix() -> PrefixMode {
    PrefixMode::Auto
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::read(path, source))?;
        let mut config = Self::parse(&text).map_err(|e| e.in_file(path))?;
        config.source = Some(path.to_owned());
        // A pack is part of the configuration: its path is relative to this file, wherever
        // Tollgate runs from. The state folder is relative to the working directory, as the
        // `grant` commands' `--state` is.
        if let (Some(dir), Some(pack)) = (path.parent(), &config.policy.pack)
            && pack.is_relative()
        {
            config.policy.pack = Some(dir.join(pack));
        }
        // And the shadow pack.
        if let (Some(dir), Some(shadow)) = (path.parent(), &config.policy.shadow)
            && shadow.is_relative()
        {
            config.policy.shadow = Some(dir.join(shadow));
        }
        // So is the lock file of pinned tools.
        if let (Some(dir), Some(lock)) = (path.parent(), &config.pins)
            && lock.is_relative()
        {
            config.pins = Some(dir.join(lock));
        }
        Ok(config)
    }

    /// Tollgate's own folders and files: the state folder (keys, revocations, the trail), the
    /// trail's folder and its copies, the packs, the lock file and this configuration. No call
    /// may reach them.
    pub fn own_files(&self) -> Vec<PathBuf> {
        let mut own = vec![self.grants.state_dir.clone()];
        own.push(self.audit.settings(&self.grants.state_dir).dir);
        if let Some(tollgate_audit::Copy::Daily(dir)) = &self.audit.copy {
            own.push(dir.clone());
        }
        own.extend(self.policy.pack.iter().cloned());
        own.extend(self.policy.shadow.iter().cloned());
        own.extend(self.pins.iter().cloned());
        own.extend(self.source.iter().cloned());
        own
    }

    /// Makes each sandboxed upstream's boundary concrete: its folders, the system's and its
    /// install, with Tollgate's own files carved out. Called once the configuration is final
    /// (after command-line overrides such as `--state`).
    pub fn settle_sandboxes(&mut self) {
        let own = self.own_files();
        let protected = crate::paths::Protected::new(own.iter().map(PathBuf::as_path));
        for upstream in &mut self.upstreams {
            let (Some(sandbox), UpstreamTransport::Stdio { command, .. }) =
                (&upstream.sandbox, &upstream.transport)
            else {
                continue;
            };
            upstream.confinement = Some(crate::sandbox::Confinement::derive(
                sandbox.mode,
                command,
                &sandbox.read,
                &sandbox.paths,
                sandbox.network,
                protected.folders(),
            ));
        }
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(ConfigError::syntax)?;
        raw.validate()
    }

    /// The configuration `tollgate run -- <command> [args…]` uses: one stdio upstream, a stdio
    /// front, no prefix.
    pub fn wrap_command(command: String, args: Vec<String>) -> Result<Self, ConfigError> {
        let name = std::path::Path::new(&command)
            .file_stem()
            .and_then(|s| s.to_str())
            .map(sanitize_name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "upstream".to_owned());
        let config = Self {
            fronts: Fronts {
                stdio: true,
                http: None,
            },
            naming: Naming {
                separator: default_separator(),
                prefix: PrefixMode::Auto,
            },
            limits: Limits::default(),
            policy: PolicyConfig::default(),
            grants: GrantsConfig::default(),
            mint: MintConfig::default(),
            admin: None,
            pins: None,
            pin_changed: PinChanged::default(),
            approvals: ApprovalsConfig::default(),
            audit: AuditConfig::default(),
            telemetry: TelemetryConfig::default(),
            source: None,
            upstreams: vec![UpstreamConfig {
                name,
                credential: CredentialConfig::None,
                scrub: Vec::new(),
                root: None,
                sandbox: None,
                confinement: None,
                transport: UpstreamTransport::Stdio {
                    command,
                    args,
                    env: BTreeMap::new(),
                    cwd: None,
                },
                protocol: UpstreamProtocol::default(),
                call_timeout: DEFAULT_CALL_TIMEOUT,
                restart: RestartPolicy::default(),
            }],
        };
        Ok(config)
    }

    /// Whether tool names carry the `<upstream><separator>` prefix.
    pub fn prefixed(&self) -> bool {
        match self.naming.prefix {
            PrefixMode::Always => true,
            PrefixMode::Never => false,
            PrefixMode::Auto => self.upstreams.len() > 1,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A secret from the environment variable `env` or the file `file` (exactly one), trimmed.
fn read_secret(
    key: &str,
    env: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<String, ConfigError> {
    let secret = match (env, file) {
        (Some(name), None) => std::env::var(name).map_err(|_| {
            ConfigError::invalid(
                key,
                format!("the environment variable `{name}` to hold the secret; it is not set"),
            )
        })?,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            ConfigError::invalid(
                key,
                format!("a readable secret file; `{}`: {e}", path.display()),
            )
        })?,
        _ => {
            return Err(ConfigError::invalid(
                key,
                "the secret's source: exactly one of `env` or `file`",
            ));
        }
    };
    let secret = secret.trim().to_owned();
    // A secret that short would be scrubbed out of every answer by accident.
    if secret.len() < 8 {
        return Err(ConfigError::invalid(
            key,
            "a secret of at least 8 characters",
        ));
    }
    Ok(secret)
}

fn millis(key: &str, value: Option<u64>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(ConfigError::invalid(
            key,
            "a number of milliseconds above 0",
        )),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let limits = Limits {
            max_message_bytes: match self.limits.max_message_bytes {
                None => DEFAULT_MAX_MESSAGE_BYTES,
                Some(n) if (1024..=256 * 1024 * 1024).contains(&n) => n,
                Some(_) => {
                    return Err(ConfigError::invalid(
                        "limits.max_message_bytes",
                        "a size from 1024 to 268435456 bytes",
                    ));
                }
            },
            call_timeout: millis(
                "limits.call_timeout_ms",
                self.limits.call_timeout_ms,
                DEFAULT_CALL_TIMEOUT,
            )?,
            request_timeout: millis(
                "limits.request_timeout_ms",
                self.limits.request_timeout_ms,
                DEFAULT_REQUEST_TIMEOUT,
            )?,
        };

        if self.naming.separator.is_empty()
            || self.naming.separator.len() > 4
            || self
                .naming
                .separator
                .chars()
                .any(|c| c.is_ascii_alphanumeric() || c.is_whitespace())
        {
            return Err(ConfigError::invalid(
                "naming.separator",
                "one to four punctuation characters, such as `.` or `__`",
            ));
        }
        let naming = Naming {
            separator: self.naming.separator,
            prefix: self.naming.prefix,
        };

        let fronts = self.front.validate()?;
        let upstreams = upstream::validate(self.upstream, &limits)?;

        let approvals = self.approvals.validate()?;
        let audit = self.audit.validate(fronts.stdio)?;
        let telemetry = self.telemetry.validate()?;
        Ok(Config {
            audit,
            telemetry,
            source: None,
            approvals,
            pin_changed: self.pins.as_ref().map(|p| p.on_change).unwrap_or_default(),
            pins: self.pins.map(|p| p.lock),
            fronts,
            naming,
            limits,
            upstreams,
            policy: self.policy.validate()?,
            mint: self.mint.validate()?,
            admin: self.admin.map(RawAdmin::validate).transpose()?,
            grants: GrantsConfig {
                state_dir: self.grants.state_dir.unwrap_or_else(default_state_dir),
                anonymous: self.grants.anonymous,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [front]
        stdio = true
        [[upstream]]
        name = "fs"
        command = "server"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert!(config.fronts.stdio);
        assert_eq!(config.limits.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(config.naming.separator, ".");
        assert!(
            !config.prefixed(),
            "one upstream is not prefixed in auto mode"
        );
    }

    #[test]
    fn the_trail_is_written_first_and_synced_within_20_ms_unless_synced_is_asked_for() {
        use tollgate_audit::Durability;
        let durability = |audit: &str| {
            Config::parse(&format!("[audit]\n{audit}\n{MINIMAL}")).map(|c| c.audit.durability)
        };
        let within = |ms| Durability::Within(Duration::from_millis(ms));
        assert_eq!(durability("").unwrap(), within(20));
        assert_eq!(durability("durability = \"written\"").unwrap(), within(20));
        assert_eq!(durability("sync_within_ms = 5").unwrap(), within(5));
        assert_eq!(
            durability("durability = \"synced\"").unwrap(),
            Durability::Synced
        );
        for (bad, field) in [
            (
                "durability = \"synced\"\nsync_within_ms = 5",
                "audit.sync_within_ms",
            ),
            ("durability = \"Synced\"", "audit.durability"),
            ("durability = \"queued\"", "audit.durability"),
            ("sync_within_ms = 0", "audit.sync_within_ms"),
        ] {
            let err = durability(bad).unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn key_rotation_defaults_to_weekly_and_a_bad_period_is_named() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(
            config.mint.rotate_every_secs,
            Some(DEFAULT_ROTATE_EVERY_SECS)
        );
        let off = Config::parse(&format!("[mint]\nrotate_every_secs = 0\n{MINIMAL}")).unwrap();
        assert_eq!(off.mint.rotate_every_secs, None);
        let err = Config::parse(&format!("[mint]\nrotate_every_secs = 5\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mint.rotate_every_secs"), "{err}");
    }

    #[test]
    fn a_sandbox_is_for_stdio_upstreams_and_leaves_tollgates_files_out() {
        let state = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let text = format!(
            "[front]\nstdio = true\n[grants]\nstate_dir = \"{state}\"\n[[upstream]]\nname = \"fs\"\ncommand = \"server\"\nsandbox = {{ mode = \"grant\", paths = [\"{work}\", \"{state}\"] }}\n",
            state = state.path().display(),
            work = work.path().display()
        );
        let mut config = Config::parse(&text).unwrap();
        config.settle_sandboxes();
        let confinement = config.upstreams[0].confinement.clone().unwrap();
        let state = std::fs::canonicalize(state.path()).unwrap();
        assert!(confinement.write.contains(&work.path().to_owned()));
        assert!(
            !confinement
                .write
                .iter()
                .chain(&confinement.read)
                .any(|p| p.starts_with(&state)),
            "{confinement:?}"
        );
        let short = Config::parse(&format!("{MINIMAL}sandbox = \"best-effort\"\n")).unwrap();
        assert_eq!(
            short.upstreams[0].sandbox.as_ref().map(|s| s.mode),
            Some(crate::sandbox::SandboxMode::BestEffort)
        );
        let http = "[front]\nstdio = true\n[[upstream]]\nname = \"h\"\nurl = \"http://127.0.0.1:1/mcp\"\nsandbox = \"grant\"\n";
        let err = Config::parse(http).unwrap_err().to_string();
        assert!(
            err.contains("upstream[0].sandbox") || err.contains("sandbox"),
            "{err}"
        );
        assert!(err.contains("stdio"), "{err}");
        let relative = format!("{MINIMAL}sandbox = {{ mode = \"grant\", paths = [\"data\"] }}\n");
        assert!(
            Config::parse(&relative)
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(&format!("{MINIMAL}\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_expectation() {
        let err = Config::parse("[limits]\nmax_message_bytes = \"big\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_message_bytes"), "{err}");
        assert!(err.contains("expected a whole number"), "{err}");
    }

    #[test]
    fn upstream_needs_command_or_url() {
        let err = Config::parse("[front]\nstdio = true\n[[upstream]]\nname = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream[0].command"), "{err}");
    }

    #[test]
    fn duplicate_upstream_names_are_refused() {
        let text =
            format!("{MINIMAL}\n[[upstream]]\nname = \"fs\"\nurl = \"http://127.0.0.1:1/mcp\"\n");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("upstream[1].name"), "{err}");
    }

    #[test]
    fn bad_url_and_listen_are_refused() {
        let err =
            Config::parse("[front]\nstdio = true\n[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("upstream[0].url") && err.contains("ftp"),
            "{err}"
        );
        let err = Config::parse(&format!("{MINIMAL}\n[front.http]\nlisten = \"nowhere\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("front.http.listen"), "{err}");
    }

    #[test]
    fn credentials_in_upstream_urls_are_refused_without_echoing_them() {
        let err = Config::parse("[front]\nstdio = true\n[[upstream]]\nname = \"a\"\nurl = \"https://bob:hunter2@example.com/mcp\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("upstream[0].url") && err.contains("headers"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn header_values_never_print() {
        let text = "[front]\nstdio = true\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/mcp\"\nheaders = { Authorization = \"Bearer s3cr3t\" }\n";
        let config = Config::parse(text).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn separator_must_be_punctuation() {
        let err = Config::parse(&format!("{MINIMAL}\n[naming]\nseparator = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("naming.separator"), "{err}");
    }

    #[test]
    fn two_upstreams_are_prefixed_in_auto_mode() {
        let text =
            format!("{MINIMAL}\n[[upstream]]\nname = \"web\"\nurl = \"http://127.0.0.1:1/mcp\"\n");
        assert!(Config::parse(&text).unwrap().prefixed());
    }
}
