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
                Ok(LineRead::Oversized) => {
                    let limit = self.reader.max_bytes();
                    tracing::warn!(limit, "agent message over the size limit refused");
                    self.answer_error(
                        &null(),
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
            if let Some(fast) = &self.fast
                && fast.try_take(&line)
            {
                continue;
            }
            match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(&line) {
                Ok(message) => return Some(message),
                Err(e) if e.is_syntax() || e.is_eof() => {
                    self.answer_error(&null(), -32700, &format!("parse error: {e}"));
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
}
