//! Newline-delimited JSON-RPC on byte streams: a bounded, cancel-safe line reader, a line
//! writer shared by every task that answers on one stream, and the envelope fields the relay
//! reads without building the whole message.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

mod writer;

pub(crate) use writer::LineWriter;

/// What one read produced.
#[derive(Debug)]
pub(crate) enum LineRead {
    /// A whole line, without its `\n` (and `\r`).
    Line(Vec<u8>),
    /// A line longer than the limit; its bytes were dropped as they arrived, all but the
    /// first [`HEAD`] (where its id usually is, so that its request can still be answered).
    Oversized {
        head: Vec<u8>,
    },
    Eof,
}

/// How much of an oversized line is kept to find its id in.
pub(crate) const HEAD: usize = 1024;

/// Reads lines of at most `max_bytes`, never buffering more than that.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max_bytes: usize,
    discarding: bool,
    head: Vec<u8>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(read: R, max_bytes: usize) -> Self {
        Self {
            reader: BufReader::with_capacity(64 * 1024, read),
            line: Vec::new(),
            max_bytes,
            discarding: false,
            head: Vec::new(),
        }
    }

    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The next line. Cancel-safe: bytes move from the reader's buffer into the line only
    /// together with `consume`, so a dropped call resumes where it stopped.
    pub(crate) async fn next(&mut self) -> std::io::Result<LineRead> {
        loop {
            let Self {
                reader,
                line,
                max_bytes,
                discarding,
                head,
            } = self;
            let buf = reader.fill_buf().await?;
            if buf.is_empty() {
                return Ok(LineRead::Eof);
            }
            let newline = buf.iter().position(|b| *b == b'\n');
            let take = newline.map_or(buf.len(), |p| p + 1);
            let chunk = buf.get(..newline.unwrap_or(buf.len())).unwrap_or_default();
            if !*discarding {
                if line.len().saturating_add(chunk.len()) > *max_bytes {
                    *discarding = true;
                    head.clear();
                    head.extend(line.iter().chain(chunk).take(HEAD));
                    line.clear();
                    line.shrink_to(64 * 1024);
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            reader.consume(take);
            if newline.is_some() {
                if std::mem::take(discarding) {
                    return Ok(LineRead::Oversized {
                        head: std::mem::take(head),
                    });
                }
                let mut whole = std::mem::take(line);
                if whole.last() == Some(&b'\r') {
                    whole.pop();
                }
                return Ok(LineRead::Line(whole));
            }
        }
    }
}

/// The fields of a JSON-RPC message the relay reads; the rest is skipped unbuilt.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope<'a> {
    #[serde(borrow, default)]
    pub jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// The envelope of `line`, which must be one JSON object: serde would read a struct from
    /// an array too (`["2.0","tools/call",…]`), which no JSON-RPC peer sends as a request.
    pub(crate) fn parse(line: &'a [u8]) -> serde_json::Result<Self> {
        if !is_object(line) {
            return Err(serde::de::Error::custom("a message is a JSON object"));
        }
        serde_json::from_slice(line)
    }
}

/// Does `line` start (after white space) with `{`?
pub(crate) fn is_object(line: &[u8]) -> bool {
    line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The code for a line that is not one JSON object: `-32600` when it is JSON (an array, a
/// batch, a bare value), `-32700` when it is not JSON at all.
pub(crate) fn not_an_object_code(line: &[u8]) -> i64 {
    if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() {
        -32600
    } else {
        -32700
    }
}

/// What a tolerant scan found in a line serde refused.
#[derive(Debug)]
pub(crate) struct Salvaged {
    /// The request's id, where it is a string or an integer that can be sent back as it came.
    pub id: Option<Box<RawValue>>,
    /// The line is one whole JSON object by the grammar of RFC 8259 (serde refused a value in
    /// it: a lone surrogate, a number out of range, nesting past its limit).
    pub whole: bool,
}

/// The id of the top-level object in `line`, found without building any value: strings are
/// skipped by their escapes, nesting is counted, not recursed into, so no line can make this
/// fail for depth or number range. Bounded by the line's length.
pub(crate) fn salvage(line: &[u8]) -> Salvaged {
    let mut scan = Scan { line, at: 0 };
    let mut found = Salvaged {
        id: None,
        whole: false,
    };
    scan.space();
    if !scan.eat(b'{') {
        return found;
    }
    scan.space();
    if scan.eat(b'}') {
        found.whole = scan.end();
        return found;
    }
    loop {
        scan.space();
        let Some(key) = scan.string() else {
            return found;
        };
        scan.space();
        if !scan.eat(b':') {
            return found;
        }
        scan.space();
        let start = scan.at;
        if !scan.value() {
            return found;
        }
        if serde_json::from_slice::<String>(key).ok().as_deref() == Some("id") {
            found.id = line
                .get(start..scan.at)
                .and_then(|raw| std::str::from_utf8(raw).ok())
                .filter(|raw| usable_id(raw))
                .and_then(|raw| RawValue::from_string(raw.to_owned()).ok());
        }
        scan.space();
        if scan.eat(b',') {
            continue;
        }
        if scan.eat(b'}') {
            found.whole = scan.end();
        }
        return found;
    }
}

/// An id that can be sent back exactly: a string serde can read, or an integer.
fn usable_id(raw: &str) -> bool {
    if raw.starts_with('"') {
        return serde_json::from_str::<String>(raw).is_ok();
    }
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit())
}

struct Scan<'a> {
    line: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let ate = self.peek() == Some(byte);
        if ate {
            self.at += 1;
        }
        ate
    }

    fn space(&mut self) {
        while self.peek().is_some_and(|b| b" \t\r\n".contains(&b)) {
            self.at += 1;
        }
    }

    fn end(&mut self) -> bool {
        self.space();
        self.at >= self.line.len()
    }

    /// A string literal, quotes included; escapes are skipped, not checked.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        if !self.eat(b'"') {
            return None;
        }
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return self.line.get(start..self.at);
                }
                b'\\' => self.at += 2,
                b if b < 0x20 => return None,
                _ => self.at += 1,
            }
        }
    }

    /// One value of any depth, by counting brackets outside strings.
    fn value(&mut self) -> bool {
        match self.peek() {
            Some(b'"') => self.string().is_some(),
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.peek() {
                        None => return false,
                        Some(b'"') => {
                            if self.string().is_none() {
                                return false;
                            }
                            continue;
                        }
                        Some(b'{' | b'[') => depth += 1,
                        Some(b'}' | b']') => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                self.at += 1;
                                return true;
                            }
                        }
                        Some(_) => {}
                    }
                    self.at += 1;
                }
            }
            Some(_) => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                {
                    self.at += 1;
                }
                self.at > start
            }
            None => false,
        }
    }
}

/// Why the params of a `tools/call` are not what the method takes, if they are not: an
/// object with `name` a string, given once, and `arguments` an object (or absent or null).
/// rmcp would read a call it cannot type as some other method and answer "method not found".
pub(crate) fn call_params_problem(params: Option<&RawValue>) -> Option<String> {
    let Some(params) = params else {
        return Some("`params` is required: an object with the tool's `name`".to_owned());
    };
    let Ok(Fields(fields)) = serde_json::from_str::<Fields<'_>>(params.get()) else {
        return Some("`params` must be an object".to_owned());
    };
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for (key, _) in &fields {
        *seen.entry(key).or_default() += 1;
    }
    if let Some((key, _)) = seen.iter().find(|(_, n)| **n > 1) {
        return Some(format!("`params.{key}` is given more than once"));
    }
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.get());
    match field("name") {
        Some(name) if name.starts_with('"') => {}
        Some(_) => return Some("`params.name` must be a string".to_owned()),
        None => return Some("`params.name` is required".to_owned()),
    }
    match field("arguments") {
        None | Some("null") => None,
        Some(arguments) if arguments.starts_with('{') => None,
        Some(_) => Some("`params.arguments` must be an object".to_owned()),
    }
}

/// A `tools/call` request in `line` whose params the method does not take: its id (null if it
/// has none that can be sent back) and what is wrong. None for any other line.
pub(crate) fn call_problem(line: &[u8]) -> Option<(Box<RawValue>, String)> {
    let envelope = Envelope::parse(line).ok()?;
    if envelope.method.as_deref() != Some("tools/call") {
        return None;
    }
    let problem = call_params_problem(envelope.params)?;
    let id = envelope
        .id
        .filter(|id| usable_id(id.get()))
        .map(ToOwned::to_owned)
        .or_else(|| RawValue::from_string("null".to_owned()).ok())?;
    Some((id, problem))
}

/// An object's members in order, duplicates kept, values unbuilt.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fields<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    fields.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A JSON-RPC error line.
pub(crate) fn error_line(id: &RawValue, code: i64, message: &str) -> Vec<u8> {
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".to_owned());
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":{code},"message":{message}}}}}"#,
        id.get()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_reading_resumes_after_oversize() {
        let input = format!("short\r\n{}\nnext\n", "x".repeat(100));
        let mut reader = LineReader::new(input.as_bytes(), 10);
        assert!(matches!(reader.next().await.unwrap(), LineRead::Line(l) if l == b"short"));
        assert!(
            matches!(reader.next().await.unwrap(), LineRead::Oversized { head } if head == "x".repeat(100).as_bytes())
        );
        assert!(matches!(reader.next().await.unwrap(), LineRead::Line(l) if l == b"next"));
        assert!(matches!(reader.next().await.unwrap(), LineRead::Eof));
    }

    #[test]
    fn envelope_reads_only_the_frame() {
        let line = br#"{"jsonrpc":"2.0","id":"a\"b","method":"tools/call","params":{"name":"x","arguments":{"deep":[1,2,3]}}}"#;
        let env = Envelope::parse(line).unwrap();
        assert_eq!(env.method.as_deref(), Some("tools/call"));
        assert_eq!(env.id.unwrap().get(), r#""a\"b""#);
        assert!(env.params.unwrap().get().contains("deep"));
        assert!(env.result.is_none());
    }
}

#[cfg(test)]
mod salvage_tests {
    use super::*;

    #[test]
    fn ids_are_found_in_lines_serde_refuses() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{}{}}}"#,
            "[".repeat(500),
            "]".repeat(500)
        );
        for (line, id) in [
            (
                r#"{"jsonrpc":"2.0","id":"a","method":"x","params":{"t":"\ud800"}}"#.to_owned(),
                r#""a""#,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"x","params":{"n":1e400},"id":42}"#.to_owned(),
                "42",
            ),
            (deep, "7"),
        ] {
            assert!(serde_json::from_str::<serde_json::Value>(&line).is_err());
            let found = salvage(line.as_bytes());
            assert_eq!(found.id.as_deref().map(RawValue::get), Some(id), "{line}");
            assert!(found.whole, "{line}");
        }
    }

    #[test]
    fn broken_lines_and_unusable_ids_are_told_apart() {
        let cut = salvage(br#"{"jsonrpc":"2.0","id":3,"method":"#);
        assert_eq!(cut.id.as_deref().map(RawValue::get), Some("3"));
        assert!(!cut.whole);
        for line in [
            r#"{"id":1.5}"#,
            r#"{"id":"\ud800"}"#,
            r#"{"id":{"a":1}}"#,
            r#"{"id":99999999999999999999999}"#,
        ] {
            assert!(salvage(line.as_bytes()).id.is_none(), "{line}");
        }
        assert!(!salvage(b"[1,2]").whole);
        assert!(!salvage(br#"{"a":1} trailing"#).whole);
        assert!(!salvage(br#"{"a":]}"#).whole);
        assert!(salvage(b"{}").whole);
    }

    #[test]
    fn arrays_are_not_envelopes() {
        assert!(Envelope::parse(br#"["2.0","tools/call",1]"#).is_err());
        assert!(Envelope::parse(br#"  {"jsonrpc":"2.0"}"#).is_ok());
    }

    #[test]
    fn call_params_must_be_what_the_method_takes() {
        let problem = |params: &str| {
            let raw = RawValue::from_string(params.to_owned()).unwrap();
            call_params_problem(Some(&raw))
        };
        assert_eq!(problem(r#"{"name":"x","arguments":{"a":1}}"#), None);
        assert_eq!(problem(r#"{"name":"x","arguments":null}"#), None);
        assert_eq!(problem(r#"{"name":"x"}"#), None);
        for (params, says) in [
            (
                r#"{"name":"x","arguments":[1]}"#,
                "`params.arguments` must be an object",
            ),
            (
                r#"{"name":"x","arguments":"a"}"#,
                "`params.arguments` must be an object",
            ),
            (
                r#"{"name":"x","name":"y"}"#,
                "`params.name` is given more than once",
            ),
            (r#"{"name":7}"#, "`params.name` must be a string"),
            (r#"{"arguments":{}}"#, "`params.name` is required"),
            (r#"["x"]"#, "`params` must be an object"),
        ] {
            assert_eq!(problem(params).as_deref(), Some(says), "{params}");
        }
        assert!(call_params_problem(None).is_some());
    }
}
