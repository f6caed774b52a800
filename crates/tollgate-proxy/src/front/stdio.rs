//! The stdio front: newline-delimited JSON-RPC on stdin/stdout, read without ever buffering
//! more than the message size limit, with a JSON-RPC error for every line that is not a
//! message (the connection keeps working).

use std::sync::Arc;

use rmcp::{
    RoleServer,
    service::{RxJsonRpcMessage, TxJsonRpcMessage},
    transport::Transport,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// A bounded, error-answering line transport for the agent side.
pub struct LineTransport<R, W> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max_bytes: usize,
    discarding: bool,
    writer: Arc<tokio::sync::Mutex<W>>,
}

impl<R, W> std::fmt::Debug for LineTransport<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineTransport")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

enum LineRead {
    Line,
    Oversized,
    Eof,
}

impl<R, W> LineTransport<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(read: R, write: W, max_bytes: usize) -> Self {
        Self {
            reader: BufReader::with_capacity(64 * 1024, read),
            line: Vec::new(),
            max_bytes,
            discarding: false,
            writer: Arc::new(tokio::sync::Mutex::new(write)),
        }
    }

    /// Reads one line into `self.line`. Cancel-safe: bytes move from the reader's buffer into
    /// `self.line` only together with `consume`, so a dropped call resumes where it stopped.
    async fn read_line(&mut self) -> std::io::Result<LineRead> {
        loop {
            let Self {
                reader,
                line,
                max_bytes,
                discarding,
                ..
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
                    line.clear();
                    line.shrink_to(64 * 1024);
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            reader.consume(take);
            if newline.is_some() {
                if std::mem::take(discarding) {
                    return Ok(LineRead::Oversized);
                }
                return Ok(LineRead::Line);
            }
        }
    }

    /// Writes an error answer from a task of its own, so that a cancelled `receive` can never
    /// leave half a line on the wire.
    fn answer_error(&self, id: Value, code: i64, message: String) {
        let writer = self.writer.clone();
        tokio::spawn(async move {
            let body =
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
            let mut bytes = body.to_string().into_bytes();
            bytes.push(b'\n');
            let mut w = writer.lock().await;
            let _ = w.write_all(&bytes).await;
            let _ = w.flush().await;
        });
    }
}

/// The id of a JSON-RPC request that failed validation, if it has a usable one.
fn request_id(value: &Value) -> Value {
    match value.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    }
}

impl<R, W> Transport<RoleServer> for LineTransport<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let writer = self.writer.clone();
        async move {
            let mut bytes = serde_json::to_vec(&item).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
            let mut w = writer.lock().await;
            w.write_all(&bytes).await?;
            w.flush().await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            match self.read_line().await {
                Err(e) => {
                    tracing::warn!(error = %e, "reading from the agent failed");
                    return None;
                }
                Ok(LineRead::Eof) => return None,
                Ok(LineRead::Oversized) => {
                    tracing::warn!(
                        limit = self.max_bytes,
                        "agent message over the size limit refused"
                    );
                    self.answer_error(
                        Value::Null,
                        -32600,
                        format!("message exceeds the limit of {} bytes", self.max_bytes),
                    );
                    continue;
                }
                Ok(LineRead::Line) => {}
            }
            let line = std::mem::take(&mut self.line);
            let text = line.strip_suffix(b"\r").unwrap_or(&line);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(text) {
                Ok(message) => return Some(message),
                Err(e) if e.is_syntax() || e.is_eof() => {
                    self.answer_error(Value::Null, -32700, format!("parse error: {e}"));
                }
                Err(e) => {
                    let id = serde_json::from_slice::<Value>(text)
                        .map(|v| request_id(&v))
                        .unwrap_or(Value::Null);
                    self.answer_error(id, -32600, format!("invalid request: {e}"));
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.writer.lock().await.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

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
