//! The values a text carries, each normalized by kind so that a value an agent reformats
//! (spaces in an IBAN, an upper-cased e-mail address, a URL with a default port) is still
//! the same value: URLs and their hosts, bare host names, e-mail addresses, account-like ids
//! (IBANs and other long codes), absolute paths and numbers. Whole strings are kept as
//! `text`, case-folded with their spacing collapsed.

use std::ops::Range;

/// What kind of value a key holds; each kind is normalized its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A whole string (short enough to be a value, not a document).
    Text,
    Url,
    Host,
    Email,
    /// An IBAN or another long code of letters and digits (ids, account numbers).
    Account,
    Path,
    Number,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Url => "url",
            Self::Host => "host",
            Self::Email => "email",
            Self::Account => "account",
            Self::Path => "path",
            Self::Number => "number",
        }
    }
}

/// One value, normalized: two spellings of the same value have the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueKey {
    pub kind: Kind,
    pub value: Box<str>,
}

impl ValueKey {
    fn new(kind: Kind, value: impl Into<Box<str>>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }
}

impl std::fmt::Display for ValueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.value)
    }
}

/// Strings longer than this are documents, not values: only the values inside them count.
pub const WHOLE_MAX: usize = 256;

/// Characters that render as nothing: an agent (or an attacker) can put them inside a value
/// without changing how it reads, so they are dropped before anything is compared.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// `text` without invisible characters, every run of white space one ASCII space; `None` when
/// nothing needed changing.
fn cleaned(text: &str) -> Option<String> {
    // Most text is ASCII with plain spaces: a byte scan settles it.
    let plain = text
        .bytes()
        .all(|b| b < 0x80 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0b | 0x0c));
    if plain {
        return None;
    }
    let needs = text
        .chars()
        .any(|c| invisible(c) || (c.is_whitespace() && c != ' '));
    needs.then(|| {
        text.chars()
            .filter(|c| !invisible(*c))
            .map(|c| if c.is_whitespace() { ' ' } else { c })
            .collect()
    })
}

/// The key of a whole string, or `None` when it is empty or too long to be one value.
pub fn whole(text: &str) -> Option<ValueKey> {
    let owned = cleaned(text);
    let text = owned.as_deref().unwrap_or(text).trim();
    if text.is_empty() || text.len() > WHOLE_MAX {
        return None;
    }
    let mut folded = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c == ' ' {
            space = true;
            continue;
        }
        if space {
            folded.push(' ');
            space = false;
        }
        folded.extend(c.to_lowercase());
    }
    Some(ValueKey::new(Kind::Text, folded))
}

/// The key of a number, by value: `1200.50`, `1200.5` and `1,200.5` are one number.
pub fn number(value: f64) -> Option<ValueKey> {
    value.is_finite().then(|| {
        let value = if value == 0.0 { 0.0 } else { value };
        ValueKey::new(Kind::Number, format!("{value}"))
    })
}

/// Every value inside `text` with the byte range it was found at, in order. A URL also yields
/// its host; an e-mail address its domain is not a host of its own (mail is not egress).
pub fn tokens(text: &str) -> Vec<(ValueKey, Range<usize>)> {
    // Offsets then point into the cleaned text: close enough for a person to find the value,
    // and the values are what is compared.
    let owned = cleaned(text);
    let text = owned.as_deref().unwrap_or(text);
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(&b) = bytes.get(at) else { break };
        if !b.is_ascii_alphanumeric() && b != b'/' && b != b'-' && b != b'+' {
            at += 1;
            continue;
        }
        // A token starts at a word boundary only.
        if at > 0
            && bytes
                .get(at - 1)
                .is_some_and(|p| p.is_ascii_alphanumeric() || *p == b'_')
        {
            at += 1;
            continue;
        }
        let end = run_end(bytes, at);
        // A word of letters and commas alone holds no value: most words of prose.
        let may_hold = bytes.get(at..end).is_some_and(|w| {
            w.iter()
                .any(|b| b.is_ascii_digit() || matches!(b, b'@' | b'.' | b'/' | b':'))
        });
        if !may_hold {
            at = end.max(at + 1);
            continue;
        }
        let word = text.get(at..end).unwrap_or("");
        let taken = url_at(text, at, &mut found)
            .or_else(|| email_at(text, at, end, &mut found))
            .or_else(|| path_at(text, at, &mut found))
            .or_else(|| account_at(text, at, &mut found))
            .or_else(|| number_at(text, at, &mut found))
            .or_else(|| host_at(word, at, &mut found));
        at = taken.unwrap_or(end).max(at + 1);
    }
    found
}

/// The end of the run of non-space, non-quote characters starting at `at`.
fn run_end(bytes: &[u8], at: usize) -> usize {
    let mut end = at;
    while let Some(&b) = bytes.get(end) {
        if b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'<' | b'>' | b'`' | b'(' | b')') {
            break;
        }
        end += 1;
    }
    end
}

/// `range` of `text` without the punctuation a sentence puts after a value.
fn trim_trailing(text: &str, range: Range<usize>) -> Range<usize> {
    let mut end = range.end;
    while end > range.start
        && text
            .as_bytes()
            .get(end - 1)
            .is_some_and(|b| matches!(b, b'.' | b',' | b';' | b':' | b'!' | b'?' | b']' | b'}'))
    {
        end -= 1;
    }
    range.start..end
}

fn url_at(text: &str, at: usize, found: &mut Vec<(ValueKey, Range<usize>)>) -> Option<usize> {
    let rest = text.get(at..)?;
    let scheme = ["https://", "http://"].into_iter().find(|s| {
        rest.get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    })?;
    let range = trim_trailing(text, at..run_end(text.as_bytes(), at));
    let raw = text.get(range.clone())?;
    if raw.len() <= scheme.len() {
        return None;
    }
    let (url, host) = url_key(raw)?;
    found.push((url, range.clone()));
    if let Some(host) = host {
        found.push((host, range.clone()));
    }
    Some(range.end)
}

/// A URL's key and its host's: scheme and host lower-cased, a trailing dot, the default port
/// and an empty path dropped, percent-escapes of unreserved characters decoded; `None` for
/// what is no `http(s)` URL. Written out by hand: a full URL parser costs more than everything
/// else found in a text together.
pub fn url_key(raw: &str) -> Option<(ValueKey, Option<ValueKey>)> {
    let (scheme, rest) = raw.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    };
    // A port follows the last `:` outside an IPv6 literal's brackets.
    let (host, port) = match hostport.rfind(':') {
        Some(at) if !hostport.get(at..).is_some_and(|p| p.contains(']')) => {
            (hostport.get(..at)?, hostport.get(at..)?)
        }
        _ => (hostport, ""),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace() || b == b'%') {
        return None;
    }
    if !port.is_empty() && (port.len() < 2 || !port.bytes().skip(1).all(|b| b.is_ascii_digit())) {
        return None;
    }
    let mut normal = String::with_capacity(raw.len());
    normal.push_str(&scheme);
    normal.push_str("://");
    if let Some(user) = userinfo {
        normal.push_str(user);
        normal.push('@');
    }
    normal.push_str(&host);
    if port != default_port {
        normal.push_str(port);
    }
    let tail = decode_unreserved(tail);
    if tail != "/" {
        if !tail.starts_with('/') && !tail.is_empty() {
            normal.push('/');
        }
        normal.push_str(&tail);
    }
    Some((
        ValueKey::new(Kind::Url, normal),
        Some(ValueKey::new(Kind::Host, host)),
    ))
}

/// `%41` and the like decoded where they stand for a letter, digit or `-._~`, which mean the
/// same escaped or not.
fn decode_unreserved(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes.get(at) == Some(&b'%')
            && let Some(hex) = text.get(at + 1..at + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
            && (byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'))
        {
            out.push(char::from(byte));
            at += 3;
            continue;
        }
        let Some(c) = text.get(at..).and_then(|r| r.chars().next()) else {
            break;
        };
        out.push(c);
        at += c.len_utf8();
    }
    out
}

fn email_at(
    text: &str,
    at: usize,
    end: usize,
    found: &mut Vec<(ValueKey, Range<usize>)>,
) -> Option<usize> {
    let word = text.get(at..end)?;
    let sign = word.find('@')?;
    let local = word.get(..sign)?;
    let ok_local = !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-'));
    if !ok_local {
        return None;
    }
    let range = trim_trailing(text, at..end);
    let domain = text.get(at + sign + 1..range.end)?;
    if !is_host(domain) {
        return None;
    }
    let value = text.get(range.clone())?.to_ascii_lowercase();
    found.push((ValueKey::new(Kind::Email, value), range.clone()));
    Some(range.end)
}

/// Labels of letters, digits and hyphens joined by dots, the last alphabetic and at least two
/// long: `example.org`, not `3.14` or `a.b`.
fn is_host(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    let Some((_, tld)) = text.rsplit_once('.') else {
        return false;
    };
    tld.len() >= 2
        && tld.bytes().all(|b| b.is_ascii_alphabetic())
        && text.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn host_at(word: &str, at: usize, found: &mut Vec<(ValueKey, Range<usize>)>) -> Option<usize> {
    let trimmed = word.trim_end_matches(['.', ',', ';', ':', '!', '?']);
    if !is_host(trimmed) {
        return None;
    }
    let end = at + trimmed.len();
    found.push((
        ValueKey::new(Kind::Host, trimmed.to_ascii_lowercase()),
        at..end,
    ));
    Some(end)
}

fn path_at(text: &str, at: usize, found: &mut Vec<(ValueKey, Range<usize>)>) -> Option<usize> {
    if text.as_bytes().get(at) != Some(&b'/') {
        return None;
    }
    let range = trim_trailing(text, at..run_end(text.as_bytes(), at));
    let raw = text.get(range.clone())?;
    let key = path_key(raw)?;
    found.push((key, range.clone()));
    Some(range.end)
}

/// An absolute path with `//` and `/./` collapsed and no trailing slash; `None` for `/` alone
/// or what has no name after a slash.
pub fn path_key(raw: &str) -> Option<ValueKey> {
    if !raw.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty()
        || !parts
            .iter()
            .any(|p| p.bytes().any(|b| b.is_ascii_alphanumeric()))
    {
        return None;
    }
    let mut normal = String::with_capacity(raw.len());
    for part in parts {
        normal.push('/');
        normal.push_str(part);
    }
    Some(ValueKey::new(Kind::Path, normal))
}

/// An IBAN (two letters, two digits, then letters and digits, possibly in groups of four
/// separated by single spaces), or another code of at least six letters and digits with at
/// least one digit (`evt_8a7f2c`, `0012345678`): upper-cased, separators dropped.
fn account_at(text: &str, at: usize, found: &mut Vec<(ValueKey, Range<usize>)>) -> Option<usize> {
    let bytes = text.as_bytes();
    let has_digit = bytes
        .get(at..)
        .unwrap_or(&[])
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        .any(u8::is_ascii_digit);
    if !has_digit {
        return None;
    }
    // An IBAN written in groups: `GB29 NWBK 6016 1331 9268 19`.
    let mut end = at;
    let mut code = String::new();
    loop {
        let start = end;
        while bytes.get(end).is_some_and(u8::is_ascii_alphanumeric) {
            end += 1;
        }
        code.push_str(text.get(start..end)?);
        let group = end - start;
        let next_group = bytes.get(end) == Some(&b' ')
            && bytes.get(end + 1).is_some_and(u8::is_ascii_alphanumeric);
        if group == 4 && next_group && looks_like_iban_start(&code) {
            end += 1;
            continue;
        }
        break;
    }
    if looks_like_iban(&code) {
        found.push((
            ValueKey::new(Kind::Account, code.to_ascii_uppercase()),
            at..end,
        ));
        return Some(end);
    }
    // Another code: one run of letters, digits, `_` and `-`.
    let mut end = at;
    while bytes
        .get(end)
        .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        end += 1;
    }
    let range = trim_trailing(text, at..end);
    let code = text.get(range.clone())?.trim_end_matches(['-', '_']);
    let range = range.start..range.start + code.len();
    let digits = code.bytes().filter(u8::is_ascii_digit).count();
    let alnum = code.bytes().filter(u8::is_ascii_alphanumeric).count();
    let all_digits = digits == code.len();
    // Plain numbers are numbers unless they are long enough to be an account number.
    let is_code = alnum >= 6 && digits >= 1 && (!all_digits || digits >= 8);
    if !is_code || bytes.get(range.end) == Some(&b'.') && !all_digits && is_host(word_at(text, at))
    {
        return None;
    }
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    found.push((ValueKey::new(Kind::Account, normal), range.clone()));
    Some(range.end)
}

fn word_at(text: &str, at: usize) -> &str {
    let end = run_end(text.as_bytes(), at);
    text.get(at..end)
        .unwrap_or("")
        .trim_end_matches(['.', ',', ';', ':', '!', '?'])
}

fn looks_like_iban_start(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() >= 4
        && b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.get(1).is_some_and(u8::is_ascii_alphabetic)
        && b.get(2).is_some_and(u8::is_ascii_digit)
        && b.get(3).is_some_and(u8::is_ascii_digit)
}

fn looks_like_iban(code: &str) -> bool {
    looks_like_iban_start(code) && (15..=34).contains(&code.len())
}

/// A number, with `,` as a thousands separator where it separates groups of three: `1,200.50`
/// is 1200.5, `-3` is -3.
fn number_at(text: &str, at: usize, found: &mut Vec<(ValueKey, Range<usize>)>) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut end = at;
    if matches!(bytes.get(end), Some(b'-' | b'+')) {
        end += 1;
    }
    if !bytes.get(end).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let digits_from = end;
    let mut plain = String::new();
    if matches!(bytes.get(at), Some(b'-')) {
        plain.push('-');
    }
    let mut seen_point = false;
    while let Some(&b) = bytes.get(end) {
        if b.is_ascii_digit() {
            plain.push(char::from(b));
            end += 1;
        } else if b == b','
            && !seen_point
            && bytes
                .get(end + 1..end + 4)
                .is_some_and(|g| g.iter().all(u8::is_ascii_digit))
            && !bytes.get(end + 4).is_some_and(u8::is_ascii_digit)
        {
            end += 1;
        } else if b == b'.' && !seen_point && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
            seen_point = true;
            plain.push('.');
            end += 1;
        } else {
            break;
        }
    }
    if end == digits_from
        || bytes
            .get(end)
            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
    {
        return None;
    }
    let value: f64 = plain.parse().ok()?;
    found.push((number(value)?, at..end));
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        tokens(text)
            .into_iter()
            .map(|(k, _)| k.to_string())
            .collect()
    }

    #[test]
    fn an_iban_is_one_value_however_it_is_spaced_or_cased() {
        let spaced = keys("Send it to GB29 NWBK 6016 1331 9268 19 today.");
        let packed = keys("gb29nwbk60161331926819");
        assert!(
            spaced.contains(&"account:GB29NWBK60161331926819".to_owned()),
            "{spaced:?}"
        );
        assert!(
            packed.contains(&"account:GB29NWBK60161331926819".to_owned()),
            "{packed:?}"
        );
    }

    #[test]
    fn invisible_characters_do_not_make_a_value_new() {
        let hidden = keys("GB29\u{200B}NWBK\u{2060}60161331926819");
        assert_eq!(hidden, ["account:GB29NWBK60161331926819"]);
        assert_eq!(whole("Bob\u{00A0}\u{200B}Smith"), whole("  bob   smith "));
    }

    #[test]
    fn urls_hosts_and_mail_are_normalized() {
        let found = keys("see HTTPS://Evil.Example.COM:443/%61bc?x=1, or mail Alice@Example.org.");
        assert!(
            found.contains(&"url:https://evil.example.com/abc?x=1".to_owned()),
            "{found:?}"
        );
        assert!(
            found.contains(&"host:evil.example.com".to_owned()),
            "{found:?}"
        );
        assert!(
            found.contains(&"email:alice@example.org".to_owned()),
            "{found:?}"
        );
        assert_eq!(
            url_key("https://x.org/").unwrap().0,
            url_key("https://X.org").unwrap().0
        );
        assert_eq!(
            url_key("HTTP://Evil.Example.com.:80/?q=1")
                .unwrap()
                .0
                .to_string(),
            "url:http://evil.example.com/?q=1"
        );
        assert_eq!(
            url_key("https://[::1]:8443/a")
                .unwrap()
                .1
                .unwrap()
                .to_string(),
            "host:[::1]"
        );
        assert_eq!(
            url_key("https://user@h.org:444#f").unwrap().0.to_string(),
            "url:https://user@h.org:444/#f"
        );
        assert!(url_key("ftp://x.org").is_none() && url_key("https://").is_none());
        assert!(url_key("https://x.org:8a/").is_none());
        assert!(keys("visit evil.example.net now").contains(&"host:evil.example.net".to_owned()));
    }

    #[test]
    fn numbers_are_compared_by_value() {
        assert!(keys("total 1,200.50 EUR").contains(&"number:1200.5".to_owned()));
        assert_eq!(number(1200.5), number(1_200.50));
        assert!(keys("-3 degrees").contains(&"number:-3".to_owned()));
        assert!(keys("version 3.14").contains(&"number:3.14".to_owned()));
    }

    #[test]
    fn paths_and_codes() {
        let found = keys("saved to /srv//docs/./report.docx; event evt_8a7f2c, ref 0012345678");
        assert!(
            found.contains(&"path:/srv/docs/report.docx".to_owned()),
            "{found:?}"
        );
        assert!(found.contains(&"account:EVT8A7F2C".to_owned()), "{found:?}");
        assert!(
            found.contains(&"account:0012345678".to_owned()),
            "{found:?}"
        );
    }

    #[test]
    fn odd_text_never_panics() {
        for text in [
            "",
            "@",
            "a@",
            "@b.c",
            "http://",
            "https://[::1",
            "/",
            "//",
            "GB29 ",
            "1,",
            "1,2345",
            "é@é.é",
            "\u{200B}",
            "-",
            "+.",
            "%",
            "https://x.org/%zz",
            "日本 GB29NWBK60161331926819",
        ] {
            let _ = tokens(text);
            let _ = whole(text);
        }
    }
}
