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

/// `line` (JSON text) with every echo of `secrets` replaced, however the upstream escaped it
/// (`\/` for `/`, `\u0073` for `s`): the raw and usual escaped forms are replaced in the text,
/// and a string literal holding any other escape is decoded and checked; if one hides a secret,
/// the whole message is parsed, cleaned string by string and written again. A line that cannot
/// be read as UTF-8, or hides a secret and cannot be parsed, is withheld (empty).
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
    if text.contains('\\') && escaped_literals(&text).any(|literal| hides(literal, secrets)) {
        return match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(mut message) => {
                clean(&mut message, secrets);
                serde_json::to_vec(&message).unwrap_or_default()
            }
            Err(_) => Vec::new(),
        };
    }
    text.into_bytes()
}

/// The string literals of JSON `text` that hold an escape, quotes included. A plain scan: a
/// literal starts at a `"` outside one and ends at the next `"` not escaped; one the text
/// ends inside is yielded as it is (it will not decode, which counts as hiding a secret).
fn escaped_literals(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut at = 0usize;
    std::iter::from_fn(move || {
        loop {
            let start = at + bytes.get(at..)?.iter().position(|b| *b == b'"')?;
            let mut end = start + 1;
            let mut escaped = false;
            let closed = loop {
                match bytes.get(end) {
                    None => break false,
                    Some(b'\\') => {
                        escaped = true;
                        end += 2;
                    }
                    Some(b'"') => break true,
                    Some(_) => end += 1,
                }
            };
            if !closed {
                at = bytes.len();
                return escaped.then(|| text.get(start..).unwrap_or(""));
            }
            at = end + 1;
            if escaped {
                return text.get(start..=end);
            }
        }
    })
}

/// Does the JSON string `literal` hold a secret once decoded? An undecodable literal is
/// treated as if it did: the message is then parsed whole, and withheld if that fails too.
fn hides(literal: &str, secrets: &[Secret]) -> bool {
    match serde_json::from_str::<String>(literal) {
        Ok(decoded) => secrets.iter().any(|s| decoded.contains(s.expose())),
        Err(_) => true,
    }
}

/// Every string of `value`, keys included, with the secrets replaced.
fn clean(value: &mut serde_json::Value, secrets: &[Secret]) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(cleaned) = text(s, secrets) {
                *s = cleaned;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| clean(v, secrets)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut v) in entries {
                clean(&mut v, secrets);
                map.insert(text(&key, secrets).into_owned(), v);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `plain` (decoded text, not JSON) with every secret replaced.
pub(crate) fn text<'a>(plain: &'a str, secrets: &[Secret]) -> std::borrow::Cow<'a, str> {
    let mut out = std::borrow::Cow::Borrowed(plain);
    for secret in secrets {
        let secret = secret.expose();
        if !secret.is_empty() && out.contains(secret) {
            out = std::borrow::Cow::Owned(out.replace(secret, REDACTED));
        }
    }
    out
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

/// An answer that held a secret and could not be cleaned: it is withheld, never passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Withheld;

/// `value` with every echo of `secrets` replaced in every string, decoded. `Err` when the
/// cleaned value no longer has the type's shape.
pub(crate) fn value<T: Serialize + DeserializeOwned>(
    value: T,
    secrets: &[Secret],
) -> Result<T, Withheld> {
    if secrets.is_empty() {
        return Ok(value);
    }
    let Ok(mut json) = serde_json::to_value(&value) else {
        return Err(Withheld);
    };
    let before = json.clone();
    clean(&mut json, secrets);
    if json == before {
        return Ok(value);
    }
    serde_json::from_value(json).map_err(|_| Withheld)
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
        let cleaned = super::value(value, &secrets).unwrap();
        assert_eq!(cleaned["error"], "[redacted]");
    }

    #[test]
    fn echoes_escaped_any_other_way_are_removed() {
        let secrets = [Secret::new("sk/live-s3cret")];
        for line in [
            r#"{"result":{"text":"key sk\/live-s3cret refused"}}"#,
            r#"{"result":{"text":"key \u0073k/live-s3cret"}}"#,
            r#"{"result":{"text":"\u0073\u006b\u002f\u006c\u0069\u0076\u0065\u002d\u0073\u0033\u0063\u0072\u0065\u0074"}}"#,
            r#"{"error":{"code":1,"message":"bad key: sk\/live-s3cret\n"}}"#,
            r#"{"result":{"sk\/live-s3cret":1}}"#,
        ] {
            let out = bytes(line.as_bytes().to_vec(), &secrets);
            let decoded: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let shown = decoded.to_string();
            assert!(!shown.contains("s3cret"), "{line} -> {shown}");
            assert!(shown.contains("[redacted]"), "{line} -> {shown}");
        }
        // Escapes that hide nothing leave the line as it was, byte for byte.
        let innocent = r#"{"result":{"text":"line one
line "two" é"}}"#;
        assert_eq!(
            bytes(innocent.as_bytes().to_vec(), &secrets),
            innocent.as_bytes()
        );
    }

    #[test]
    fn a_line_that_hides_a_secret_and_cannot_be_parsed_is_withheld() {
        let secrets = [Secret::new("s3cret")];
        // An escape JSON does not have, splitting the secret.
        let broken = r#"{"result":{"text":"s3\qcret"}}"#;
        assert!(bytes(broken.as_bytes().to_vec(), &secrets).is_empty());
        // A literal the line ends inside.
        let unterminated = r#"{"result":"\u0073\u0033cret"#;
        assert!(bytes(unterminated.as_bytes().to_vec(), &secrets).is_empty());
    }

    #[test]
    fn plain_text_is_cleaned_too() {
        let secrets = [Secret::new("tok-123")];
        assert_eq!(
            text("upstream said tok-123!", &secrets),
            "upstream said [redacted]!"
        );
        assert!(matches!(
            text("nothing here", &secrets),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
