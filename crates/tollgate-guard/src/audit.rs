//! The guard's audit trail: what each decision and each forwarded call's outcome leave in the
//! hash-chained trail, with its checkpoints signed by the state folder's audit key (never the
//! grant key). A record carries digests, ids and redacted arguments: never a token, a grant
//! or a value the catalog marks `redact`.

use std::{path::Path, sync::Arc};

use serde_json::{Map, Value, json, value::RawValue};
use tollgate_audit::{Audit, CheckpointSigner, CheckpointVerifier};
use tollgate_mint::{GrantSigner, GrantVerifier};

use tollgate_proxy::config::AuditConfig;

/// Arguments bigger than this (as JSON) are left out of a record; their digest stays.
const MAX_ARGUMENTS: usize = 8 * 1024;

struct TrailSigner(GrantSigner);

impl CheckpointSigner for TrailSigner {
    fn kid(&self) -> String {
        self.0.kid().to_owned()
    }

    fn sign(&self, message: &[u8]) -> String {
        self.0.sign_bytes(message)
    }
}

/// Checks a trail's checkpoints with the public half of a state folder's audit key.
#[derive(Debug)]
pub struct TrailVerifier(GrantVerifier);

impl TrailVerifier {
    pub fn load(state_dir: &Path) -> Result<Self, String> {
        GrantVerifier::load_named(state_dir, tollgate_mint::AUDIT_KEY)
            .map(Self)
            .map_err(|e| {
                format!(
                    "no audit key in {} ({e}): give the state folder of the Tollgate that wrote the trail",
                    state_dir.display()
                )
            })
    }
}

impl CheckpointVerifier for TrailVerifier {
    fn kid(&self) -> String {
        self.0.kid().to_owned()
    }

    fn verify(&self, message: &[u8], signature: &str) -> bool {
        self.0.verify_bytes(message, signature)
    }
}

/// Opens the trail `config` asks for; none when it is turned off by name.
pub(crate) fn open(config: &AuditConfig, state_dir: &Path) -> Result<Option<Arc<Audit>>, String> {
    if !config.enabled {
        tracing::warn!("the audit trail is off: decisions are only logged");
        return Ok(None);
    }
    let signer = GrantSigner::load_or_create_named(state_dir, tollgate_mint::AUDIT_KEY)
        .map_err(|e| format!("the audit key cannot be loaded: {e}"))?;
    let settings = config.settings(state_dir);
    let dir = settings.dir.clone();
    let audit = Audit::open(settings, Arc::new(TrailSigner(signer))).map_err(|e| e.to_string())?;
    tracing::info!(dir = %dir.display(), "audit trail open");
    Ok(Some(Arc::new(audit)))
}

/// `arguments` as a record keeps them, serialized once: whole when small, else only their
/// size; none when they are JSON `null` (no arguments).
pub(crate) fn kept_arguments(arguments: &impl serde::Serialize) -> Option<Box<RawValue>> {
    let raw = serde_json::value::to_raw_value(arguments).ok();
    match raw {
        Some(raw) if raw.get() == "null" => None,
        Some(raw) if raw.get().len() <= MAX_ARGUMENTS => Some(raw),
        _ => {
            let size = raw.map_or_else(|| "unknown".to_owned(), |r| r.get().len().to_string());
            serde_json::value::to_raw_value(
                &json!({ tollgate_policy::recorded::NOT_KEPT: format!("{size} bytes") }),
            )
            .ok()
        }
    }
}

/// A decision's audit record, serialized on the deciding thread (the writer adds `seq`,
/// `prev` and `time`). Absent values are left out.
#[derive(serde::Serialize)]
pub(crate) struct DecisionLine<'a> {
    pub kind: &'static str,
    pub decision_id: &'a str,
    #[serde(serialize_with = "as_text")]
    pub session: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<&'a str>,
    pub upstream: &'a str,
    pub tool: &'a str,
    pub class: &'a str,
    pub resources: AsText<'a, tollgate_policy::Resource>,
    pub arguments_sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a RawValue>,
    pub decision: &'a str,
    pub policies: &'a [String],
    pub reasons: &'a [String],
    pub version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unanswerable: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub justification: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<&'a tollgate_policy::recorded::InputRecord<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowLine<'a>>,
}

/// What a shadow pack decided, where it differs.
#[derive(serde::Serialize)]
pub(crate) struct ShadowLine<'a> {
    pub version: &'a str,
    pub decision: &'a str,
    pub policies: &'a [String],
    pub reasons: &'a [String],
}

/// A forwarded call's outcome record, serialized on the call's thread.
#[derive(serde::Serialize)]
pub(crate) struct OutcomeLine<'a> {
    pub kind: &'static str,
    pub decision_id: &'a str,
    #[serde(serialize_with = "as_text")]
    pub session: u64,
    pub upstream: &'a str,
    pub tool: &'a str,
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    pub latency_us: u64,
}

/// Items written as their text (`Display`), without a string each first.
pub(crate) struct AsText<'a, T>(pub &'a [T]);

impl<T: std::fmt::Display> serde::Serialize for AsText<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&Text(item))?;
        }
        seq.end()
    }
}

struct Text<'a, T>(&'a T);

impl<T: std::fmt::Display> serde::Serialize for Text<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// The session number as the other records write it: a string.
fn as_text<S: serde::Serializer>(n: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(n)
}

/// A record from `pairs`, leaving out what is absent.
pub(crate) fn record(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_kept_whole_when_small_and_by_size_when_not() {
        assert!(kept_arguments(&Value::Null).is_none());
        let small = json!({"path": "docs/a \"quoted\" name.md", "head": 3});
        let kept = kept_arguments(&small).map(|raw| raw.get().to_owned());
        assert_eq!(
            serde_json::from_str::<Value>(&kept.unwrap_or_default()).ok(),
            Some(small)
        );
        let big = json!({"text": "x".repeat(MAX_ARGUMENTS)});
        let size = serde_json::to_string(&big).map(|s| s.len()).unwrap_or(0);
        let kept = kept_arguments(&big).map(|raw| raw.get().to_owned());
        assert_eq!(
            serde_json::from_str::<Value>(&kept.unwrap_or_default()).ok(),
            Some(json!({ tollgate_policy::recorded::NOT_KEPT: format!("{size} bytes") }))
        );
    }
}
