//! Newline-delimited JSON-RPC on byte streams: a bounded, cancel-safe line reader, a line
//! writer shared by every task that answers on one stream, and the envelope fields the relay
//! reads without building the whole message.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    sync::{mpsc, oneshot},
};

/// What one read produced.
#[derive(Debug)]
pub(crate) enum LineRead {
    /// A whole line, without its `\n` (and `\r`).
    Line(Vec<u8>),
    /// A line longer than the limit; its bytes were dropped as they arrived.
    Oversized,
    Eof,
}

/// Reads lines of at most `max_bytes`, never buffering more than that.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max_bytes: usize,
    discarding: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(read: R, max_bytes: usize) -> Self {
        Self {
            reader: BufReader::with_capacity(64 * 1024, read),
            line: Vec::new(),
            max_bytes,
            discarding: false,
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
                let mut whole = std::mem::take(line);
                if whole.last() == Some(&b'\r') {
                    whole.pop();
                }
                return Ok(LineRead::Line(whole));
            }
        }
    }
}

/// One byte stream's writer, shared by every task that writes whole lines to it.
///
/// Lines go through a queue to a task that owns the stream, so that a caller dropped mid-way
/// can never leave half a line on the wire, and lines queued together are written together.
#[derive(Debug, Clone)]
pub(crate) struct LineWriter {
    queue: mpsc::Sender<Queued>,
}

#[derive(Debug)]
enum Queued {
    Line(Vec<u8>),
    /// Answered once everything queued before it is written and flushed.
    Flush(oneshot::Sender<()>),
}

/// Lines a writer queues before senders wait (or, for `try_write_line`, give up).
const WRITE_QUEUE: usize = 1024;

impl LineWriter {
    pub(crate) fn new(write: impl AsyncWrite + Send + Unpin + 'static) -> Self {
        let (queue, mut lines) = mpsc::channel::<Queued>(WRITE_QUEUE);
        tokio::spawn(async move {
            let mut write = write;
            let mut batch = Vec::with_capacity(64 * 1024);
            let mut waiting = Vec::new();
            while let Some(first) = lines.recv().await {
                batch.clear();
                let mut next = Some(first);
                while let Some(item) = next.take() {
                    match item {
                        Queued::Line(line) => batch.extend_from_slice(&line),
                        Queued::Flush(done) => waiting.push(done),
                    }
                    if batch.len() < 256 * 1024 {
                        next = lines.try_recv().ok();
                    }
                }
                if write.write_all(&batch).await.is_err() || write.flush().await.is_err() {
                    break;
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
            let _ = write.shutdown().await;
        });
        Self { queue }
    }

    /// Queues `line` (a `\n` is added), waiting while the queue is full.
    pub(crate) async fn write_line(&self, mut line: Vec<u8>) -> std::io::Result<()> {
        line.push(b'\n');
        self.queue
            .send(Queued::Line(line))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed"))
    }

    /// Queues `line` unless the queue is full; never waits (safe inside a cancellable read).
    pub(crate) fn try_write_line(&self, mut line: Vec<u8>) -> bool {
        line.push(b'\n');
        self.queue.try_send(Queued::Line(line)).is_ok()
    }

    /// Waits until everything queued so far is written.
    pub(crate) async fn flush(&self) -> std::io::Result<()> {
        let (done, flushed) = oneshot::channel();
        let closed = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed");
        self.queue
            .send(Queued::Flush(done))
            .await
            .map_err(|_| closed())?;
        flushed.await.map_err(|_| closed())
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
    pub(crate) fn parse(line: &'a [u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(line)
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
        assert!(matches!(reader.next().await.unwrap(), LineRead::Oversized));
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
