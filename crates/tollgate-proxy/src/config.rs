//! Operator configuration: the TOML file, parsed with `deny_unknown_fields` and validated once
//! into [`Config`], the model the rest of the proxy reads.

mod err;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

pub use err::ConfigError;

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

/// Where decided calls are exported as OpenTelemetry spans.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector's base URL (`http://collector:4318`); none: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// How often a batch is sent at the latest.
    pub export_every: Duration,
}

/// The audit trail of the guard's decisions.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Off only when the configuration says so by name.
    pub enabled: bool,
    /// The trail's folder; by default `audit` in the state folder.
    pub dir: Option<PathBuf>,
    pub durability: tollgate_audit::Durability,
    pub rotate_bytes: u64,
    pub rotate_after: Duration,
    pub checkpoint_every: u64,
    pub checkpoint_after: Duration,
    /// A copy of every record for log shippers.
    pub copy: Option<tollgate_audit::Copy>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        let defaults = tollgate_audit::Settings::new(PathBuf::new());
        Self {
            enabled: true,
            dir: None,
            durability: defaults.durability,
            rotate_bytes: defaults.rotate_bytes,
            rotate_after: defaults.rotate_after,
            checkpoint_every: defaults.checkpoint_every,
            checkpoint_after: defaults.checkpoint_after,
            copy: None,
        }
    }
}

impl AuditConfig {
    /// Where the trail goes, given the state folder.
    pub fn settings(&self, state_dir: &std::path::Path) -> tollgate_audit::Settings {
        tollgate_audit::Settings {
            dir: self.dir.clone().unwrap_or_else(|| state_dir.join("audit")),
            durability: self.durability,
            rotate_bytes: self.rotate_bytes,
            rotate_after: self.rotate_after,
            checkpoint_every: self.checkpoint_every,
            checkpoint_after: self.checkpoint_after,
            copy: self.copy.clone(),
        }
    }
}

/// What happens to calls of a tool whose definition differs from its pin. Either way the tool
/// is hidden from `tools/list`, so its new description never reaches the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinChanged {
    /// Refused until the tool is pinned again.
    #[default]
    Refuse,
    /// Each call waits for an approver out of band (never the user at the agent), who sees
    /// that the definition changed; the pack still decides as well.
    Approve,
}

/// Who may approve calls a policy holds, and how long a request waits.
#[derive(Debug, Clone)]
pub struct ApprovalsConfig {
    pub timeout: Duration,
    /// Each approver's token (for the admin endpoint) and identity. None: only the user at
    /// the agent can approve, where policy lets them; other held calls are denied.
    pub approvers: Vec<(Secret, crate::approvals::Approver)>,
    /// Whether the user at the agent may be asked at all (MCP elicitation, or an input request
    /// for a 2026-07-28 agent) where an `@in_band` policy lets them approve.
    pub in_band: bool,
    /// Classes never approved in band, whatever a policy says.
    pub never_in_band: Vec<tollgate_policy::ActionClass>,
    /// How often a waiting call reports progress to an agent that asked for progress.
    pub progress_every: Duration,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        use tollgate_policy::ActionClass;
        Self {
            timeout: crate::approvals::DEFAULT_TIMEOUT,
            approvers: Vec::new(),
            in_band: true,
            never_in_band: vec![
                ActionClass::Approve,
                ActionClass::Revoke,
                ActionClass::Admin,
            ],
            progress_every: crate::approvals::DEFAULT_PROGRESS_EVERY,
        }
    }
}

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

/// The admin HTTP endpoint: JWKS and metadata for resource servers.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token introspection and revocation require; without one they are off.
    pub token: Option<Secret>,
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

/// How tool calls are decided.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub mode: PolicyMode,
    /// The policy pack's folder; the embedded default pack when absent.
    pub pack: Option<PathBuf>,
    /// The label policies see as `context.environment`.
    pub environment: String,
    /// The offset `context.time` is given in.
    pub time_zone: tollgate_policy::UtcOffset,
    /// Catalog entries added to the pack's.
    pub tools: Vec<tollgate_policy::EntryConfig>,
    /// Reload the pack when its files change (SIGHUP always reloads).
    pub watch: bool,
    /// A candidate pack decided beside the live one on every call: where it differs, the
    /// audit trail and the metrics say so; nothing it decides is enforced.
    pub shadow: Option<PathBuf>,
}

/// Whether policy decides at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMode {
    /// Every call is decided by grant and policy. The default.
    Enforce,
    /// Every call is forwarded undecided. Only by name, for relay-only setups and tests.
    AllowAll,
}

/// Where grants are checked from.
#[derive(Debug, Clone)]
pub struct GrantsConfig {
    /// The state folder: the grant key's public half and the revocation list.
    pub state_dir: PathBuf,
    /// A session without a valid grant runs under the pack's anonymous rules instead of
    /// being refused.
    pub anonymous: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            mode: PolicyMode::Enforce,
            pack: None,
            environment: "dev".to_owned(),
            time_zone: tollgate_policy::UtcOffset::UTC,
            tools: Vec::new(),
            watch: true,
            shadow: None,
        }
    }
}

impl Default for GrantsConfig {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            anonymous: false,
        }
    }
}

/// The state folder when the config names none: the per-user state folder,
/// `$XDG_STATE_HOME/tollgate`, else `~/.local/state/tollgate` (`/var/lib/tollgate` for an
/// account without a home). Never the working directory, which for a coding agent is the very
/// folder its grant covers.
pub fn default_state_dir() -> PathBuf {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_STATE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join("tollgate")
}

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
enum RawSandbox {
    Mode(crate::sandbox::SandboxMode),
    Table(RawSandboxTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandboxTable {
    mode: crate::sandbox::SandboxMode,
    #[serde(default)]
    paths: Vec<PathBuf>,
    #[serde(default)]
    read: Vec<PathBuf>,
    #[serde(default)]
    network: bool,
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
    Api(std::sync::Arc<crate::api::ApiSpec>),
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    export_every_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    enabled: Option<bool>,
    dir: Option<PathBuf>,
    /// `"written"` (the default): a decision is written to the OS before its call goes ahead
    /// and synced within `sync_within_ms`; `"synced"`: synced before its call goes ahead.
    durability: Option<String>,
    /// The bound of `"written"`: how long a written record may stay unsynced.
    sync_within_ms: Option<u64>,
    rotate_bytes: Option<u64>,
    rotate_secs: Option<u64>,
    checkpoint_every: Option<u64>,
    checkpoint_secs: Option<u64>,
    /// `"stdout"`: a copy of every record on standard output, for log shippers.
    copy: Option<String>,
    /// A copy of every record in a file per UTC day in this folder.
    copy_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    timeout_secs: Option<u64>,
    in_band: Option<bool>,
    never_in_band: Option<Vec<String>>,
    progress_every_ms: Option<u64>,
    #[serde(default)]
    approver: Vec<RawApprover>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprover {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPins {
    /// The lock file `tollgate pin` writes, relative to the config file.
    lock: PathBuf,
    #[serde(default)]
    on_change: PinChanged,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMint {
    issuer: Option<String>,
    algorithm: Option<tollgate_mint::Algorithm>,
    /// 0 turns scheduled rotation off.
    rotate_every_secs: Option<i64>,
    publish_ahead_secs: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    /// The endpoint listens on loopback only unless this names the exception.
    #[serde(default)]
    allow_remote: bool,
    /// Where the admin token is read from (one of them); without it, introspection and
    /// revocation are not served.
    token_env: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "mode", rename_all = "kebab-case")]
enum RawCredential {
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    mode: Option<PolicyMode>,
    pack: Option<PathBuf>,
    environment: Option<String>,
    time_zone: Option<String>,
    #[serde(default)]
    tool: Vec<tollgate_policy::EntryConfig>,
    watch: Option<bool>,
    shadow: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    state_dir: Option<PathBuf>,
    #[serde(default)]
    anonymous: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFronts {
    #[serde(default)]
    stdio: bool,
    http: Option<RawHttpFront>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpFront {
    listen: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default)]
    allowed_hosts: Option<Vec<String>>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default = "default_true")]
    sessions: bool,
    session_idle_timeout_ms: Option<u64>,
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    resume_keep_ms: Option<u64>,
    resume_streams: Option<usize>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    root: Option<String>,
    credential: Option<RawCredential>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    url: Option<String>,
    /// An HTTP API whose `tool`s Tollgate executes itself.
    api: Option<String>,
    #[serde(default)]
    tool: Vec<crate::api::RawApiTool>,
    max_response_bytes: Option<usize>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    protocol: UpstreamProtocol,
    call_timeout_ms: Option<u64>,
    restart_initial_backoff_ms: Option<u64>,
    restart_max_backoff_ms: Option<u64>,
    sandbox: Option<RawSandbox>,
}

fn default_path() -> String {
    "/mcp".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_separator() -> String {
    ".".to_owned()
}
fn default_prefix() -> PrefixMode {
    PrefixMode::Auto
}

/// Hosts a local front accepts by default: loopback names only.
pub fn default_allowed_hosts() -> Vec<String> {
    ["localhost", "127.0.0.1", "[::1]", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect()
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

fn sanitize_name(s: &str) -> String {
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

        let http = match self.front.http {
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
                        crate::front::replay::KEEP_AFTER_END,
                    )?,
                    resume_streams: match raw.resume_streams {
                        None => crate::front::replay::MAX_KEPT,
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
        if !self.front.stdio && http.is_none() {
            return Err(ConfigError::invalid(
                "front",
                "at least one front: `front.stdio = true` or a `[front.http]` table",
            ));
        }

        if self.upstream.is_empty() {
            return Err(ConfigError::invalid(
                "upstream",
                "at least one `[[upstream]]` table",
            ));
        }
        let mut upstreams = Vec::with_capacity(self.upstream.len());
        for (index, raw) in self.upstream.into_iter().enumerate() {
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
                    UpstreamTransport::Api(std::sync::Arc::new(crate::api::ApiSpec::from_raw(
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

        let approvals = {
            let mut approvers: Vec<(Secret, crate::approvals::Approver)> = Vec::new();
            for (i, raw) in self.approvals.approver.into_iter().enumerate() {
                let key = |field: &str| format!("approvals.approver[{i}].{field}");
                if raw.name.trim().is_empty() || approvers.iter().any(|(_, a)| a.name == raw.name) {
                    return Err(ConfigError::invalid(
                        key("name"),
                        "a name no other approver has (it is recorded with each answer)",
                    ));
                }
                let token = read_secret(
                    &key("token_env"),
                    raw.token_env.as_deref(),
                    raw.token_file.as_deref(),
                )?;
                if approvers.iter().any(|(t, _)| t.expose() == token) {
                    return Err(ConfigError::invalid(
                        key("token_env"),
                        "a token of this approver's own: two approvers share one",
                    ));
                }
                approvers.push((
                    Secret::new(token),
                    crate::approvals::Approver {
                        name: raw.name,
                        groups: raw.groups,
                    },
                ));
            }
            ApprovalsConfig {
                timeout: match self.approvals.timeout_secs {
                    None => crate::approvals::DEFAULT_TIMEOUT,
                    Some(secs @ 1..=86_400) => Duration::from_secs(secs),
                    Some(other) => {
                        return Err(ConfigError::invalid(
                            "approvals.timeout_secs",
                            format!("1 to 86400 seconds, not {other}"),
                        ));
                    }
                },
                approvers,
                in_band: self.approvals.in_band.unwrap_or(true),
                never_in_band: match self.approvals.never_in_band {
                    None => ApprovalsConfig::default().never_in_band,
                    Some(names) => {
                        let mut classes = Vec::with_capacity(names.len());
                        for (i, name) in names.iter().enumerate() {
                            classes.push(name.parse().map_err(|_| {
                                ConfigError::invalid(
                                    format!("approvals.never_in_band[{i}]"),
                                    format!(
                                        "an action class (read, write, approve, revoke, admin, payment, egress, execute), not `{name}`"
                                    ),
                                )
                            })?);
                        }
                        classes
                    }
                },
                progress_every: match self.approvals.progress_every_ms {
                    None => crate::approvals::DEFAULT_PROGRESS_EVERY,
                    Some(ms @ 50..=600_000) => Duration::from_millis(ms),
                    Some(other) => {
                        return Err(ConfigError::invalid(
                            "approvals.progress_every_ms",
                            format!("50 to 600000 milliseconds, not {other}"),
                        ));
                    }
                },
            }
        };
        let audit = {
            let raw = &self.audit;
            let defaults = AuditConfig::default();
            let within = |key: &str,
                          value: Option<u64>,
                          range: std::ops::RangeInclusive<u64>,
                          unit: &str| match value {
                None => Ok(None),
                Some(v) if range.contains(&v) => Ok(Some(v)),
                Some(v) => Err(ConfigError::invalid(
                    format!("audit.{key}"),
                    format!("{} to {} {unit}, not {v}", range.start(), range.end()),
                )),
            };
            AuditConfig {
                enabled: raw.enabled.unwrap_or(true),
                dir: raw.dir.clone(),
                durability: match (
                    raw.durability.as_deref(),
                    within(
                        "sync_within_ms",
                        raw.sync_within_ms,
                        1..=10_000,
                        "milliseconds",
                    )?,
                ) {
                    (None | Some("written"), ms) => tollgate_audit::Durability::Within(
                        ms.map_or(tollgate_audit::DEFAULT_SYNC_WITHIN, Duration::from_millis),
                    ),
                    (Some("synced"), None) => tollgate_audit::Durability::Synced,
                    (Some("synced"), Some(_)) => {
                        return Err(ConfigError::invalid(
                            "audit.sync_within_ms",
                            "no bound with `durability = \"synced\"`: each decision is synced before its call goes ahead",
                        ));
                    }
                    (Some(other), _) => {
                        return Err(ConfigError::invalid(
                            "audit.durability",
                            format!("\"written\" or \"synced\", not `{other}`"),
                        ));
                    }
                },
                rotate_bytes: within("rotate_bytes", raw.rotate_bytes, 4096..=(1 << 40), "bytes")?
                    .unwrap_or(defaults.rotate_bytes),
                rotate_after: within("rotate_secs", raw.rotate_secs, 60..=31_536_000, "seconds")?
                    .map_or(defaults.rotate_after, Duration::from_secs),
                checkpoint_every: within(
                    "checkpoint_every",
                    raw.checkpoint_every,
                    1..=1_000_000,
                    "records",
                )?
                .unwrap_or(defaults.checkpoint_every),
                checkpoint_after: within(
                    "checkpoint_secs",
                    raw.checkpoint_secs,
                    1..=86_400,
                    "seconds",
                )?
                .map_or(defaults.checkpoint_after, Duration::from_secs),
                copy: match (raw.copy.as_deref(), &raw.copy_dir) {
                    (None, None) => None,
                    (Some("stdout"), None) if self.front.stdio => {
                        return Err(ConfigError::invalid(
                            "audit.copy",
                            "another place than stdout: the stdio front speaks MCP there",
                        ));
                    }
                    (Some("stdout"), None) => Some(tollgate_audit::Copy::Stdout),
                    (None, Some(dir)) => Some(tollgate_audit::Copy::Daily(dir.clone())),
                    (Some(other), None) => {
                        return Err(ConfigError::invalid(
                            "audit.copy",
                            format!("\"stdout\" (or `copy_dir` for files), not `{other}`"),
                        ));
                    }
                    (Some(_), Some(_)) => {
                        return Err(ConfigError::invalid(
                            "audit.copy",
                            "one copy: `copy = \"stdout\"` or `copy_dir`, not both",
                        ));
                    }
                },
            }
        };
        let telemetry = TelemetryConfig {
            otlp_endpoint: match &self.telemetry.otlp_endpoint {
                None => None,
                Some(url)
                    if reqwest::Url::parse(url).is_ok_and(|u| {
                        matches!(u.scheme(), "https" | "http") && u.host().is_some()
                    }) =>
                {
                    Some(url.trim_end_matches('/').to_owned())
                }
                Some(other) => {
                    return Err(ConfigError::invalid(
                        "telemetry.otlp_endpoint",
                        format!("an http(s) URL such as `http://127.0.0.1:4318`, not `{other}`"),
                    ));
                }
            },
            service_name: self
                .telemetry
                .service_name
                .clone()
                .unwrap_or_else(|| "tollgate".to_owned()),
            export_every: match self.telemetry.export_every_ms {
                None => Duration::from_secs(1),
                Some(ms) if (10..=60_000).contains(&ms) => Duration::from_millis(ms),
                Some(ms) => {
                    return Err(ConfigError::invalid(
                        "telemetry.export_every_ms",
                        format!("10 to 60000 milliseconds, not {ms}"),
                    ));
                }
            },
        };
        Ok(Config {
            audit,
            telemetry,
            source: None,
            approvals,
            pin_changed: self.pins.as_ref().map(|p| p.on_change).unwrap_or_default(),
            pins: self.pins.map(|p| p.lock),
            fronts: Fronts {
                stdio: self.front.stdio,
                http,
            },
            naming,
            limits,
            upstreams,
            policy: self.policy.validate()?,
            mint: MintConfig {
                issuer: match self.mint.issuer {
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
                algorithm: self
                    .mint
                    .algorithm
                    .unwrap_or(tollgate_mint::Algorithm::Es256),
                rotate_every_secs: match self.mint.rotate_every_secs {
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
                publish_ahead_secs: match self.mint.publish_ahead_secs {
                    None => DEFAULT_PUBLISH_AHEAD_SECS,
                    Some(secs) if secs >= 0 => secs,
                    Some(secs) => {
                        return Err(ConfigError::invalid(
                            "mint.publish_ahead_secs",
                            format!("a number of seconds, not {secs}"),
                        ));
                    }
                },
            },
            admin: match self.admin {
                None => None,
                Some(raw) => {
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
                    Some(AdminConfig { listen, token })
                }
            },
            grants: GrantsConfig {
                state_dir: self.grants.state_dir.unwrap_or_else(default_state_dir),
                anonymous: self.grants.anonymous,
            },
        })
    }
}

impl RawPolicy {
    fn validate(self) -> Result<PolicyConfig, ConfigError> {
        let defaults = PolicyConfig::default();
        let environment = self.environment.unwrap_or(defaults.environment);
        if environment.is_empty()
            || environment.len() > 64
            || !environment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::invalid(
                "policy.environment",
                "a label such as `dev` or `prod` (letters, digits, `-`, `_`)",
            ));
        }
        let time_zone = match self.time_zone {
            None => defaults.time_zone,
            Some(text) => tollgate_policy::UtcOffset::parse(&text)
                .map_err(|e| ConfigError::invalid("policy.time_zone", e))?,
        };
        // The entries are checked here so that a bad one stops Tollgate before it serves.
        tollgate_policy::Catalog::new(self.tool.clone(), false)
            .map_err(|e| ConfigError::invalid("policy.tool", e.to_string()))?;
        Ok(PolicyConfig {
            mode: self.mode.unwrap_or(defaults.mode),
            pack: self.pack,
            environment,
            time_zone,
            tools: self.tool,
            watch: self.watch.unwrap_or(defaults.watch),
            shadow: self.shadow,
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
