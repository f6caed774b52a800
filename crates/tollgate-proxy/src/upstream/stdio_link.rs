//! A stdio upstream's transport. rmcp's typed messages and the fast path's raw calls share the
//! child's pipes; raw calls carry ids and progress tokens of their own (`"tg-<n>"`), so their
//! answers and progress are recognised by the envelope alone and handed on as bytes, never
//! built into typed messages.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use rmcp::{
    RoleClient,
    service::{RxJsonRpcMessage, TxJsonRpcMessage},
    transport::Transport,
};
use serde_json::{Value, value::RawValue};
use tokio::{
    process::{ChildStdin, ChildStdout},
    sync::oneshot,
};

use crate::wire::{Envelope, LineRead, LineReader, LineWriter};

/// Prefix of the ids and progress tokens of raw calls.
pub(crate) const RAW_PREFIX: &str = "tg-";

/// Where a raw call's progress goes: the agent's own token, on the agent's stream.
#[derive(Debug)]
pub(crate) struct ProgressSink {
    pub token: Box<RawValue>,
    pub out: crate::agent::AgentOut,
}

#[derive(Debug)]
struct RawCall {
    answer: oneshot::Sender<Vec<u8>>,
    progress: Option<ProgressSink>,
}

/// The raw side of one stdio link.
#[derive(Debug)]
pub(crate) struct RawLane {
    out: LineWriter,
    calls: Mutex<HashMap<u64, RawCall>>,
    next: AtomicU64,
}

impl RawLane {
    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<u64, RawCall>> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh raw call number and the receiver of its answer line.
    pub(crate) fn register(
        &self,
        progress: Option<ProgressSink>,
    ) -> (u64, oneshot::Receiver<Vec<u8>>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.calls().insert(n, RawCall { answer, progress });
        (n, answered)
    }

    /// Drops a call that timed out or was cancelled.
    pub(crate) fn forget(&self, n: u64) {
        self.calls().remove(&n);
    }

    pub(crate) async fn send(&self, line: Vec<u8>) -> std::io::Result<()> {
        self.out.write_line(line).await
    }

    /// Hands an answer or progress line of a raw call on; false if it is not one.
    fn route(&self, line: &[u8]) -> bool {
        let Ok(envelope) = Envelope::parse(line) else {
            return false;
        };
        match envelope.method.as_deref() {
            None => {
                let Some(n) = envelope.id.and_then(raw_number) else {
                    return false;
                };
                if let Some(call) = self.calls().remove(&n) {
                    let _ = call.answer.send(line.to_vec());
                }
                true
            }
            Some("notifications/progress") => {
                let Some(params) = envelope.params else {
                    return false;
                };
                let Ok(mut params) =
                    serde_json::from_str::<serde_json::Map<String, Value>>(params.get())
                else {
                    return false;
                };
                let Some(n) = params
                    .get("progressToken")
                    .and_then(Value::as_str)
                    .and_then(|t| t.strip_prefix(RAW_PREFIX))
                    .and_then(|t| t.parse::<u64>().ok())
                else {
                    return false;
                };
                let calls = self.calls();
                let Some(sink) = calls.get(&n).and_then(|c| c.progress.as_ref()) else {
                    return true;
                };
                let Ok(token) = serde_json::from_str::<Value>(sink.token.get()) else {
                    return true;
                };
                params.insert("progressToken".to_owned(), token);
                let line = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": params});
                // Queued in wire order ahead of the answer; progress is dropped, never the
                // answer, if the agent stops reading.
                let _ = sink.out.note(line.to_string().into_bytes());
                true
            }
            Some(_) => false,
        }
    }
}

/// `"tg-<n>"` → n.
fn raw_number(id: &RawValue) -> Option<u64> {
    id.get()
        .strip_prefix('"')?
        .strip_suffix('"')?
        .strip_prefix(RAW_PREFIX)?
        .parse()
        .ok()
}

/// The transport rmcp's client runs on, with the raw lane beside it.
#[derive(Debug)]
pub(crate) struct StdioLink {
    reader: LineReader<ChildStdout>,
    lane: Arc<RawLane>,
    upstream: String,
}

impl StdioLink {
    pub(crate) fn new(
        upstream: &str,
        stdout: ChildStdout,
        stdin: ChildStdin,
        max_bytes: usize,
    ) -> Self {
        let lane = Arc::new(RawLane {
            out: LineWriter::new(stdin),
            calls: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        });
        Self {
            reader: LineReader::new(stdout, max_bytes),
            lane,
            upstream: upstream.to_owned(),
        }
    }

    pub(crate) fn lane(&self) -> Arc<RawLane> {
        self.lane.clone()
    }
}

impl Transport<RoleClient> for StdioLink {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let out = self.lane.out.clone();
        async move {
            let bytes = serde_json::to_vec(&item).map_err(std::io::Error::other)?;
            out.write_line(bytes).await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            let line = match self.reader.next().await {
                Ok(LineRead::Line(line)) => line,
                Ok(LineRead::Oversized { head }) => {
                    let limit = self.reader.max_bytes();
                    tracing::warn!(upstream = %self.upstream, limit, "upstream message over the size limit dropped");
                    // The request it answers fails now rather than waiting out its timeout.
                    let Some(id) = crate::wire::salvage(&head).id else {
                        continue;
                    };
                    let error = crate::wire::error_line(
                        &id,
                        -32603,
                        &format!(
                            "the upstream `{}` answered with a message over the limit of {limit} bytes",
                            self.upstream
                        ),
                    );
                    if let Some(n) = raw_number(&id) {
                        if let Some(call) = self.lane.calls().remove(&n) {
                            let _ = call.answer.send(error);
                        }
                        continue;
                    }
                    match serde_json::from_slice::<RxJsonRpcMessage<RoleClient>>(&error) {
                        Ok(message) => return Some(message),
                        Err(_) => continue,
                    }
                }
                Ok(LineRead::Eof) | Err(_) => {
                    // Raw calls still waiting learn that the link is gone.
                    self.lane.calls().clear();
                    return None;
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) || self.lane.route(&line) {
                continue;
            }
            match serde_json::from_slice::<RxJsonRpcMessage<RoleClient>>(&line) {
                Ok(message) => return Some(message),
                Err(e) => {
                    tracing::warn!(upstream = %self.upstream, error = %e, "upstream sent a line that is not a JSON-RPC message");
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.lane.out.flush().await
    }
}
