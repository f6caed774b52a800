//! How Tollgate reaches an agent from inside one of its calls: the call's own message stream
//! (stdio lines or the HTTP response stream), and server→client requests sent on it whose
//! answers the agent POSTs back.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use rmcp::{
    ErrorData as McpError,
    model::{ClientResult, RequestId, ServerJsonRpcMessage, ServerRequest},
};
use serde_json::{Value, value::RawValue};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{session::SessionId, wire::LineWriter};

/// One message for an HTTP agent's call: something said during the call, or its answer.
#[derive(Debug)]
pub(crate) enum AgentLine {
    Note(Vec<u8>),
    Final(Vec<u8>),
}

/// Where the messages of one fast-path call go.
#[derive(Debug, Clone)]
pub(crate) enum AgentOut {
    /// The agent's stdio stream.
    Line(LineWriter),
    /// The response stream of the agent's HTTP request.
    Events(mpsc::Sender<AgentLine>),
}

impl AgentOut {
    /// Queues a message said during the call; dropped rather than waited for if the agent is
    /// not reading (progress is advisory, answers are not).
    pub(crate) fn note(&self, line: Vec<u8>) -> bool {
        match self {
            Self::Line(out) => out.try_write_line(line),
            Self::Events(out) => out.try_send(AgentLine::Note(line)).is_ok(),
        }
    }

    /// Sends the call's answer, waiting for room: answers are never dropped.
    pub(crate) async fn finish(&self, line: Vec<u8>) {
        match self {
            Self::Line(out) => {
                let _ = out.write_line(line).await;
            }
            Self::Events(out) => {
                let _ = out.send(AgentLine::Final(line)).await;
            }
        }
    }
}

/// Server→client requests to HTTP agents waiting for the agent's POSTed answer.
#[derive(Debug, Default)]
pub(crate) struct AgentAnswers {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiting>>,
}

/// A request waiting for an agent: the session it was sent to, and where the answer goes.
type Waiting = (SessionId, oneshot::Sender<Result<Value, McpError>>);

/// Prefix of the ids of server→client requests Tollgate sends to HTTP agents itself.
const ASK_PREFIX: &str = "tg-s-";

impl AgentAnswers {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands an agent's answer to the request waiting for it; false if `id` is not one of ours
    /// for this session.
    pub(crate) fn deliver(
        &self,
        session: SessionId,
        id: &RawValue,
        answer: Result<Value, McpError>,
    ) -> bool {
        let Some(n) = id
            .get()
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .and_then(|s| s.strip_prefix(ASK_PREFIX))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return false;
        };
        let mut waiting = self.waiting();
        match waiting.get(&n) {
            Some((owner, _)) if *owner == session => {}
            _ => return false,
        }
        if let Some((_, sender)) = waiting.remove(&n) {
            let _ = sender.send(answer);
        }
        true
    }
}

/// An HTTP agent reached through the response stream of its own fast-path call.
#[derive(Debug, Clone)]
pub(crate) struct DirectAgent {
    session: SessionId,
    out: mpsc::Sender<AgentLine>,
    answers: Arc<AgentAnswers>,
}

impl DirectAgent {
    /// The agent of `session`, reached through `out`, its answers coming back through `answers`.
    pub(crate) fn new(
        session: SessionId,
        out: mpsc::Sender<AgentLine>,
        answers: Arc<AgentAnswers>,
    ) -> Self {
        Self {
            session,
            out,
            answers,
        }
    }

    /// Sends `request` on the call's stream and waits for the agent's POSTed answer.
    pub(crate) async fn ask(
        &self,
        request: ServerRequest,
        cancel: &CancellationToken,
    ) -> Result<ClientResult, McpError> {
        let n = self.answers.next.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.answers.waiting().insert(n, (self.session, answer));
        let id = RequestId::String(format!("{ASK_PREFIX}{n}").into());
        let message = ServerJsonRpcMessage::request(request.clone(), id);
        let line = serde_json::to_vec(&message)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        if self.out.send(AgentLine::Note(line)).await.is_err() {
            self.answers.waiting().remove(&n);
            return Err(McpError::internal_error("the agent's call has ended", None));
        }
        let value = tokio::select! {
            answer = answered => answer.map_err(|_| McpError::internal_error("the agent did not answer", None))??,
            () = cancel.cancelled() => {
                self.answers.waiting().remove(&n);
                return Err(McpError::internal_error("cancelled by the tool server", None));
            }
        };
        let malformed = |e: serde_json::Error| {
            McpError::invalid_params(format!("the agent's answer is malformed: {e}"), None)
        };
        match request {
            ServerRequest::CreateMessageRequest(_) => serde_json::from_value(value)
                .map(|r| ClientResult::CreateMessageResult(Box::new(r)))
                .map_err(malformed),
            ServerRequest::ElicitRequest(_) => serde_json::from_value(value)
                .map(ClientResult::ElicitResult)
                .map_err(malformed),
            ServerRequest::ListRootsRequest(_) => serde_json::from_value(value)
                .map(ClientResult::ListRootsResult)
                .map_err(malformed),
            _ => Err(McpError::internal_error("unsupported request", None)),
        }
    }
}
