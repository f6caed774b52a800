//! `[audit]` and `[telemetry]`: the trail of every decision, its durability, and span export.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::ConfigError;

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) service_name: Option<String>,
    pub(super) export_every_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) enabled: Option<bool>,
    pub(super) dir: Option<PathBuf>,
    /// `"written"` (the default): a decision is written to the OS before its call goes ahead
    /// and synced within `sync_within_ms`; `"synced"`: synced before its call goes ahead.
    pub(super) durability: Option<String>,
    /// The bound of `"written"`: how long a written record may stay unsynced.
    pub(super) sync_within_ms: Option<u64>,
    pub(super) rotate_bytes: Option<u64>,
    pub(super) rotate_secs: Option<u64>,
    pub(super) checkpoint_every: Option<u64>,
    pub(super) checkpoint_secs: Option<u64>,
    /// `"stdout"`: a copy of every record on standard output, for log shippers.
    pub(super) copy: Option<String>,
    /// A copy of every record in a file per UTC day in this folder.
    pub(super) copy_dir: Option<PathBuf>,
}

impl RawAudit {
    pub(super) fn validate(&self, stdio: bool) -> Result<AuditConfig, ConfigError> {
        let audit = {
            let raw = self;
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
                    (Some("stdout"), None) if stdio => {
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
        Ok(audit)
    }
}

impl RawTelemetry {
    pub(super) fn validate(&self) -> Result<TelemetryConfig, ConfigError> {
        let telemetry = TelemetryConfig {
            otlp_endpoint: match &self.otlp_endpoint {
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
                .service_name
                .clone()
                .unwrap_or_else(|| "tollgate".to_owned()),
            export_every: match self.export_every_ms {
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
        Ok(telemetry)
    }
}
