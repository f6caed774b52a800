//! The stdio front: newline-delimited JSON-RPC on stdin/stdout, read without ever buffering
//! more than the message size limit, with a JSON-RPC error for every line that is not a
//! message (the connection keeps working).

use std::sync::Arc;

use rmcp::{
    RoleServer,
    service::{RxJsonRpcMessage, TxJsonRpcMessage},
    transport::Transport,
};
use serde_json::{Value, value::RawValue};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    fast::FastPath,
    wire::{LineRead, LineReader, LineWriter, error_line},
};

/// The answer to a line that is not one JSON object.
const NOT_AN_OBJECT: &str =
    "a message is one JSON object per line (arrays and batches are not taken)";

/// A bounded, error-answering line transport for the agent side.
pub struct LineTransport<R> {
    reader: LineReader<R>,
    writer: LineWriter,
    fast: Option<Arc<FastPath>>,
}

impl<R> std::fmt::Debug for LineTransport<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineTransport").finish_non_exhaustive()
    }
}

impl<R> LineTransport<R>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    pub fn new(read: R, write: impl AsyncWrite + Unpin + Send + 'static, max_bytes: usize) -> Self {
        Self {
            reader: LineReader::new(read, max_bytes),
            writer: LineWriter::new(write),
            fast: None,
        }
    }

    pub(crate) fn writer(&self) -> LineWriter {
        self.writer.clone()
    }

    pub(crate) fn with_fast_path(mut self, fast: Arc<FastPath>) -> Self {
        self.fast = Some(fast);
        self
    }

    /// Queues an error answer; never waits, so a cancelled `receive` loses nothing.
    fn answer_error(&self, id: &RawValue, code: i64, message: &str) {
        let _ = self.writer.try_write_line(error_line(id, code, message));
    }
}

/// The id of a JSON-RPC request that failed validation, if it has a usable one.
fn request_id(value: &Value) -> Box<RawValue> {
    let id = match value.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    serde_json::value::to_raw_value(&id).unwrap_or_else(|_| null())
}

fn null() -> Box<RawValue> {
    serde_json::value::to_raw_value(&Value::Null).unwrap_or_default()
}

impl<R> Transport<RoleServer> for LineTransport<R>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let writer = self.writer.clone();
        async move {
            let bytes = serde_json::to_vec(&item).map_err(std::io::Error::other)?;
            writer.write_line(bytes).await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let line = match self.reader.next().await {
                Err(e) => {
                    tracing::warn!(error = %e, "reading from the agent failed");
                    return None;
                }
                Ok(LineRead::Eof) => return None,
                Ok(LineRead::Oversized { head }) => {
                    let limit = self.reader.max_bytes();
                    tracing::warn!(limit, "agent message over the size limit refused");
                    let id = crate::wire::salvage(&head).id.unwrap_or_else(null);
                    self.answer_error(
                        &id,
                        -32600,
                        &format!("message exceeds the limit of {limit} bytes"),
                    );
                    continue;
                }
                Ok(LineRead::Line(line)) => line,
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if !crate::wire::is_object(&line) {
                // JSON-RPC says a batch's answer is an array; MCP has no batches since
                // 2025-06-18, and a struct must never be read from an array's positions.
                let code = crate::wire::not_an_object_code(&line);
                self.answer_error(&null(), code, NOT_AN_OBJECT);
                continue;
            }
            if let Some(fast) = &self.fast
                && fast.try_take(&line)
            {
                continue;
            }
            if let Some((id, problem)) = crate::wire::call_problem(&line) {
                self.answer_error(&id, -32602, &format!("invalid params: {problem}"));
                continue;
            }
            match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(&line) {
                Ok(message) => return Some(message),
                Err(e) if e.is_syntax() || e.is_eof() => {
                    // Valid JSON by RFC 8259 that serde will not build (a lone surrogate, a
                    // number out of range, nesting past its limit) is a request Tollgate cannot
                    // take, and its id is answered; only what is not JSON at all is -32700.
                    let salvaged = crate::wire::salvage(&line);
                    let id = salvaged.id.unwrap_or_else(null);
                    if salvaged.whole {
                        self.answer_error(&id, -32600, &format!("invalid request: {e}"));
                    } else {
                        self.answer_error(&id, -32700, &format!("parse error: {e}"));
                    }
                }
                Err(e) => {
                    let id = serde_json::from_slice::<Value>(&line)
                        .map(|v| request_id(&v))
                        .unwrap_or_else(|_| null());
                    self.answer_error(&id, -32600, &format!("invalid request: {e}"));
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // Answers already queued reach the agent before the stream is let go.
        self.writer.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn run(input: &[u8], max: usize) -> (Vec<String>, String) {
        let (mut agent, tollgate) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(tollgate);
        let mut transport = LineTransport::new(read, write, max);
        agent.write_all(input).await.unwrap();
        agent.shutdown().await.unwrap();
        let mut methods = Vec::new();
        while let Some(message) = transport.receive().await {
            let value = serde_json::to_value(&message).unwrap();
            methods.push(value["method"].as_str().unwrap_or_default().to_owned());
        }
        // Let the spawned error writers finish, then read what was written back.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(transport);
        let mut out = String::new();
        agent.read_to_string(&mut out).await.unwrap();
        (methods, out)
    }

    const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

    #[tokio::test]
    async fn garbage_gets_parse_error_and_next_message_still_arrives() {
        let (methods, out) = run(format!("{{not json\n{PING}\n").as_bytes(), 1024).await;
        assert_eq!(methods, ["ping"]);
        let reply: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(reply["error"]["code"], -32700);
        assert_eq!(reply["id"], Value::Null);
    }

    #[tokio::test]
    async fn invalid_request_keeps_its_id() {
        let (methods, out) = run(
            format!("{{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":5}}\n{PING}\n").as_bytes(),
            1024,
        )
        .await;
        assert_eq!(methods, ["ping"]);
        let reply: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(reply["error"]["code"], -32600);
        assert_eq!(reply["id"], 7);
    }

    #[tokio::test]
    async fn random_garbage_never_stops_the_transport() {
        // A fixed xorshift stream: fragments of JSON, control bytes, invalid UTF-8.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces: [&[u8]; 8] = [
            b"{",
            b"}",
            b"\"jsonrpc\":\"2.0\"",
            b"[",
            b"\xff\xfe",
            b"\"id\":",
            b"null",
            b"\"method\":1",
        ];
        let mut input = Vec::new();
        for _ in 0..2000 {
            for _ in 0..(next() % 8) {
                input.extend_from_slice(pieces[(next() % 8) as usize]);
            }
            input.push(b'\n');
        }
        input.extend_from_slice(PING.as_bytes());
        input.push(b'\n');
        let (methods, out) = run(&input, 1024).await;
        assert_eq!(
            methods.last().map(String::as_str),
            Some("ping"),
            "the last, valid message arrives"
        );
        for line in out.lines() {
            let reply: Value = serde_json::from_str(line).unwrap();
            assert!(
                reply["error"]["code"].as_i64().is_some(),
                "every reply to garbage is a JSON-RPC error: {line}"
            );
        }
    }

    #[tokio::test]
    async fn oversize_line_is_refused_without_buffering_it() {
        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{{\"x\":\"{}\"}}}}",
            "a".repeat(10_000)
        );
        let (methods, out) = run(format!("{big}\n{PING}\n").as_bytes(), 1024).await;
        assert_eq!(
            methods,
            ["ping"],
            "the oversize message is dropped, the next one served"
        );
        let reply: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(reply["error"]["code"], -32600);
        assert!(reply["error"]["message"].as_str().unwrap().contains("1024"));
    }

    /// The one reply `input` gets, and the messages that went on.
    async fn reply_to(input: &str) -> (Value, Vec<String>) {
        let (methods, out) = run(format!("{input}\n{PING}\n").as_bytes(), 64 * 1024).await;
        let reply = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        (reply, methods)
    }

    #[tokio::test]
    async fn valid_json_serde_will_not_build_is_answered_with_its_id() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"x","arguments":{{"a":{}{}}}}}}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        for (line, id) in [
            (r#"{"jsonrpc":"2.0","id":"s","method":"tools/call","params":{"name":"x","arguments":{"t":"\ud800"}}}"#.to_owned(), Value::from("s")),
            (r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"x","arguments":{"n":1e400}}}"#.to_owned(), Value::from(5)),
            (deep, Value::from(9)),
        ] {
            let (reply, methods) = reply_to(&line).await;
            assert_eq!(reply["id"], id, "{line}: {reply}");
            assert_eq!(reply["error"]["code"], -32600, "{reply}");
            assert_eq!(methods, ["ping"]);
        }
    }

    #[tokio::test]
    async fn an_array_is_never_read_as_a_request() {
        let (reply, methods) = reply_to(r#"["2.0","tools/call",1,{"name":"x"}]"#).await;
        assert_eq!(reply["error"]["code"], -32600, "{reply}");
        assert_eq!(reply["id"], Value::Null);
        assert_eq!(methods, ["ping"]);
    }

    #[tokio::test]
    async fn a_call_with_params_the_method_does_not_take_is_invalid_params() {
        for params in [
            r#"{"name":"x","arguments":[1,2]}"#,
            r#"{"name":"x","arguments":"text"}"#,
            r#"{"name":"x","name":"y","arguments":{}}"#,
        ] {
            let line =
                format!(r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{params}}}"#);
            let (reply, methods) = reply_to(&line).await;
            assert_eq!(reply["error"]["code"], -32602, "{params}: {reply}");
            assert_eq!(reply["id"], 3);
            assert_eq!(methods, ["ping"], "{params}");
        }
    }

    #[tokio::test]
    async fn an_oversized_request_is_answered_with_its_id() {
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{{"name":"x","arguments":{{"t":"{}"}}}}}}"#,
            "a".repeat(5000)
        );
        let (_, out) = run(format!("{big}\n").as_bytes(), 1024).await;
        let reply: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(reply["id"], 12, "{reply}");
        assert_eq!(reply["error"]["code"], -32600);
    }
}
