//! JSON Canonicalization Scheme (RFC 8785): one byte string per JSON value, so that a token can
//! carry a digest of the exact arguments it was minted for and a resource server can recompute
//! it from the request it receives.

use std::fmt::Write;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `value` in canonical form: object members sorted by their UTF-16 code units, no whitespace,
/// numbers as ECMAScript prints them, strings with the minimal escapes.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

/// Base64url (no padding) of the SHA-256 of the canonical form.
pub fn digest(value: &Value) -> String {
    encoded_digest(&canonical(value))
}

/// [`digest`] of the object `members`, without making a `Value` of them first.
pub fn digest_object(members: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_object(members, &mut out);
    encoded_digest(&out)
}

fn encoded_digest(canonical: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => {
                let _ = write!(out, "{i}");
            }
            (None, Some(u), _) => {
                let _ = write!(out, "{u}");
            }
            (None, None, Some(f)) => write_float(f, out),
            (None, None, None) => out.push_str("null"),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(members) => write_object(members, out),
    }
}

fn write_object(members: &Map<String, Value>, out: &mut String) {
    let mut keys: Vec<&String> = members.keys().collect();
    keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        if let Some(v) = members.get(key) {
            write_value(v, out);
        }
    }
    out.push('}');
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript's Number::toString for a finite double (JSON has no others).
fn write_float(f: f64, out: &mut String) {
    if f == 0.0 {
        out.push('0');
        return;
    }
    if f.is_sign_negative() {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest round-tripping digits, as ECMAScript requires.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    let n = exponent.parse::<i32>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let e = n - 1;
        let _ = write!(out, "e{}{}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rfc_8785_examples() {
        // The numbers of RFC 8785 section 3.2.2.3 and appendix B.
        let cases: [(f64, &str); 9] = [
            (333_333_333.333_333_3, "333333333.3333333"),
            (1e30, "1e+30"),
            (4.5, "4.5"),
            (0.002, "0.002"),
            (1e-27, "1e-27"),
            (0.000_001, "0.000001"),
            (1e-7, "1e-7"),
            (1e21, "1e+21"),
            (-5e-324, "-5e-324"),
        ];
        for (f, expected) in cases {
            let mut out = String::new();
            write_float(f, &mut out);
            assert_eq!(out, expected, "{f}");
        }
        // Section 3.2.3: members sort by UTF-16 code units (the emoji's surrogates before
        // U+FB33), not by code points.
        let value = json!({"\u{20ac}": "Euro Sign", "\r": "Carriage Return", "\u{fb33}": "Hebrew Letter Dalet With Dagesh", "1": "One", "\u{1f600}": "Emoji: Grinning Face", "\u{80}": "Control", "\u{f6}": "Latin Small Letter O With Diaeresis"});
        assert_eq!(
            canonical(&value),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
    }

    #[test]
    fn the_same_arguments_digest_the_same_whatever_their_order() {
        let a = json!({"amount": 40, "customer_id": "42", "note": {"b": 1, "a": [1, 2.5]}});
        let b: Value =
            serde_json::from_str(r#"{"note":{"a":[1,2.5],"b":1},"customer_id":"42","amount":40}"#)
                .unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(
            digest(&a),
            digest(&json!({"amount": 41, "customer_id": "42"}))
        );
        assert_eq!(
            canonical(&a),
            r#"{"amount":40,"customer_id":"42","note":{"a":[1,2.5],"b":1}}"#
        );
        // An object's members digest as the object does.
        let members = b.as_object().unwrap();
        assert_eq!(digest_object(members), digest(&a));
        assert_eq!(digest_object(&Map::new()), digest(&json!({})));
    }
}
