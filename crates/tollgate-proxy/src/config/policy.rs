//! `[policy]`, `[grants]`, `[pins]` and `[approvals]`: what decides calls and who may answer
//! approval requests.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, Secret, read_secret};

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    pub(super) timeout_secs: Option<u64>,
    pub(super) in_band: Option<bool>,
    pub(super) never_in_band: Option<Vec<String>>,
    pub(super) progress_every_ms: Option<u64>,
    #[serde(default)]
    pub(super) approver: Vec<RawApprover>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprover {
    pub(super) name: String,
    #[serde(default)]
    pub(super) groups: Vec<String>,
    pub(super) token_env: Option<String>,
    pub(super) token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPins {
    /// The lock file `tollgate pin` writes, relative to the config file.
    pub(super) lock: PathBuf,
    #[serde(default)]
    pub(super) on_change: PinChanged,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) mode: Option<PolicyMode>,
    pub(super) pack: Option<PathBuf>,
    pub(super) environment: Option<String>,
    pub(super) time_zone: Option<String>,
    #[serde(default)]
    pub(super) tool: Vec<tollgate_policy::EntryConfig>,
    pub(super) watch: Option<bool>,
    pub(super) shadow: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrants {
    pub(super) state_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) anonymous: bool,
}

impl RawPolicy {
    pub(super) fn validate(self) -> Result<PolicyConfig, ConfigError> {
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

impl RawApprovals {
    pub(super) fn validate(self) -> Result<ApprovalsConfig, ConfigError> {
        let approvals = {
            let mut approvers: Vec<(Secret, crate::approvals::Approver)> = Vec::new();
            for (i, raw) in self.approver.into_iter().enumerate() {
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
                timeout: match self.timeout_secs {
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
                in_band: self.in_band.unwrap_or(true),
                never_in_band: match self.never_in_band {
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
                progress_every: match self.progress_every_ms {
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
        Ok(approvals)
    }
}
