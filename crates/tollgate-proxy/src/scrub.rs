//! Removing echoes of injected secrets from what an upstream answers, before the agent sees
//! it. An upstream that reflects its API key in an error or a result must not hand the key to
//! the agent.

use serde::{Serialize, de::DeserializeOwned};

use crate::config::Secret;

/// What a scrubbed secret is replaced with.
pub(crate) const REDACTED: &str = "[redacted]";

/// The forms a secret can take in JSON text: as it is, and escaped inside a string.
fn forms(secret: &Secret) -> Vec<String> {
    let raw = secret.expose().to_owned();
    let escaped = serde_json::to_string(secret.expose())
        .ok()
        .and_then(|s| s.get(1..s.len().saturating_sub(1)).map(str::to_owned))
        .unwrap_or_default();
    if escaped.is_empty() || escaped == raw {
        vec![raw]
    } else {
        vec![raw, escaped]
    }
}

/// `line` (JSON text) with every echo of `secrets` replaced.
pub(crate) fn bytes(line: Vec<u8>, secrets: &[Secret]) -> Vec<u8> {
    if secrets.is_empty() {
        return line;
    }
    let Ok(mut text) = String::from_utf8(line) else {
        // Not UTF-8: not a message anyone can read as JSON; nothing to show either.
        return Vec::new();
    };
    for secret in secrets {
        for form in forms(secret) {
            if text.contains(&form) {
                text = text.replace(&form, REDACTED);
            }
        }
    }
    text.into_bytes()
}

/// The secrets to remove from one call's answer: the upstream's injected ones and, when the
/// call carried one, its own credential (an upstream that echoes its `Authorization` header
/// must not hand the token to the agent).
pub(crate) fn for_call<'a>(
    upstream: &'a [Secret],
    credential: Option<&crate::intercept::Credential>,
) -> std::borrow::Cow<'a, [Secret]> {
    match credential {
        None => std::borrow::Cow::Borrowed(upstream),
        Some(credential) => {
            let mut all = upstream.to_vec();
            all.push(Secret::new(credential.expose()));
            std::borrow::Cow::Owned(all)
        }
    }
}

/// `value` with every echo of `secrets` replaced, through its JSON form.
pub(crate) fn value<T: Serialize + DeserializeOwned>(value: T, secrets: &[Secret]) -> T {
    if secrets.is_empty() {
        return value;
    }
    let Ok(text) = serde_json::to_vec(&value) else {
        return value;
    };
    let cleaned = bytes(text.clone(), secrets);
    if cleaned == text {
        return value;
    }
    serde_json::from_slice(&cleaned).unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_escaped_echoes_are_removed() {
        let secrets = [Secret::new("sk-live-\"quoted\"-123")];
        let line = br#"{"result":{"content":[{"type":"text","text":"key sk-live-\"quoted\"-123 refused"}]}}"#.to_vec();
        let out = String::from_utf8(bytes(line, &secrets)).unwrap();
        assert!(!out.contains("sk-live"), "{out}");
        assert!(out.contains("[redacted]"), "{out}");
        let value: serde_json::Value = serde_json::json!({"error": "sk-live-\"quoted\"-123"});
        let cleaned = super::value(value, &secrets);
        assert_eq!(cleaned["error"], "[redacted]");
    }
}
