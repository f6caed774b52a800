//! Calls that wait for the agent's input across requests.
//!
//! A 2026-07-28 agent cannot receive server→client requests; it expects an
//! `InputRequiredResult` and retries the call with its answers. When an upstream that speaks
//! 2025-11-25 asks for sampling, elicitation or roots during such an agent's call, the
//! forwarded call keeps running on its own, the request is handed to the agent as an input
//! request, and the agent's retry (carrying the `requestState` Tollgate issued) delivers the
//! answer and resumes waiting on the same upstream call. A state handle is bound to its session
//! and tool, and expires with the call's timeout.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::{
    ErrorData as McpError,
    model::{
        ClientResult, InputRequest, InputRequests, InputRequiredResult, InputResponses,
        ServerRequest, ServerResult,
    },
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{ProxyError, session::SessionId};

/// The key of the approval question in an input request Tollgate issues.
pub(crate) const APPROVAL_INPUT_KEY: &str = "tollgate-approval";
/// The field of the approval form the user sets to approve.
pub(crate) const APPROVE_FIELD: &str = "approve";

/// The question the user at the agent is asked: the request's summary, and one yes/no field.
pub(crate) fn approval_question(message: &str) -> rmcp::model::ElicitRequest {
    let schema = rmcp::model::ElicitationSchema::builder()
        .required_bool_with(APPROVE_FIELD, |b| {
            b.title("Approve this call")
                .description("Yes lets this one call go ahead exactly as shown; no denies it.")
                .with_default(false)
        })
        .title("Tollgate approval")
        .build()
        .unwrap_or_else(|_| rmcp::model::ElicitationSchema::new(Default::default()));
    rmcp::model::ElicitRequest::new(rmcp::model::ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: message.to_owned(),
        requested_schema: schema,
    })
}

/// Prefix of the `requestState` values Tollgate issues.
pub(crate) const STATE_PREFIX: &str = "tollgate:";
/// The key of the one input request in an `InputRequiredResult` Tollgate issues.
const INPUT_KEY: &str = "tollgate";

/// A server→client request raised during a call, with where its answer goes.
#[derive(Debug)]
pub(crate) struct InputAsk {
    pub request: ServerRequest,
    pub answer: oneshot::Sender<Result<ClientResult, McpError>>,
}

/// A forwarded call running on its own task.
#[derive(Debug)]
pub(crate) struct Running {
    pub task: tokio::task::JoinHandle<Result<ServerResult, ProxyError>>,
    pub asks: mpsc::Receiver<InputAsk>,
    pub cancel: CancellationToken,
}

impl Running {
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
        self.task.abort();
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Sampling,
    Elicitation,
    Roots,
}

/// Who may resume a suspended call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding {
    /// The agent connection (stdio, or an HTTP session) that made the call.
    Session(SessionId),
    /// A stateless 2026-07-28 HTTP request: whoever presents the same credentials (a keyed
    /// fingerprint of the `Authorization` header, never the header itself), or, without
    /// credentials, whoever holds the unguessable single-use state handle.
    Stateless { credentials: Option<u64> },
}

#[derive(Debug)]
struct Suspended {
    binding: Binding,
    tool: String,
    kind: Kind,
    answer: oneshot::Sender<Result<ClientResult, McpError>>,
    running: Running,
}

/// Prefix of the `requestState` of a call held for approval by the user at the agent.
const APPROVAL_PREFIX: &str = "tollgate:ap:";

/// A held call taken back by the retry that answers its question, with that answer.
pub(crate) type AnsweredApproval = (
    crate::approvals::Waiting,
    Result<rmcp::model::ElicitResult, McpError>,
);

/// A call held for approval whose question went to a 2026-07-28 agent as an input request.
#[derive(Debug)]
struct Parked {
    binding: Binding,
    tool: String,
    waiting: crate::approvals::Waiting,
}

/// Calls waiting for an agent's retry.
#[derive(Debug, Default)]
pub(crate) struct SuspendedCalls {
    calls: Mutex<HashMap<String, Suspended>>,
    approvals: Mutex<HashMap<String, Parked>>,
}

/// What the agent is sent: the one input request under `name`, and the state to retry with.
fn input_required(name: &str, request: InputRequest, state: String) -> InputRequiredResult {
    let mut requests = InputRequests::new();
    requests.insert(name.to_owned(), request);
    InputRequiredResult::new(Some(requests), Some(state))
}

fn fresh_key() -> String {
    // std's RandomState is seeded from the OS per process and varies per instance.
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let b = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{a:016x}{b:016x}")
}

impl SuspendedCalls {
    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, Suspended>> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parks `running` until the agent answers `ask`, and returns what the agent is sent.
    pub(crate) fn suspend(
        self: &Arc<Self>,
        binding: Binding,
        tool: &str,
        running: Running,
        ask: InputAsk,
        ttl: Duration,
    ) -> Result<InputRequiredResult, ProxyError> {
        let (kind, request) = match ask.request {
            ServerRequest::CreateMessageRequest(r) => {
                (Kind::Sampling, InputRequest::CreateMessage(r))
            }
            ServerRequest::ElicitRequest(r) => (Kind::Elicitation, InputRequest::Elicitation(r)),
            ServerRequest::ListRootsRequest(r) => (Kind::Roots, InputRequest::ListRoots(r)),
            _ => {
                let _ = ask.answer.send(Err(McpError::method_not_found::<
                    rmcp::model::PingRequestMethod,
                >()));
                running.stop();
                return Err(ProxyError::Cancelled);
            }
        };
        let key = fresh_key();
        self.calls().insert(
            key.clone(),
            Suspended {
                binding,
                tool: tool.to_owned(),
                kind,
                answer: ask.answer,
                running,
            },
        );
        let calls = Arc::downgrade(self);
        let expiring = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            if let Some(calls) = calls.upgrade()
                && let Some(expired) = calls.calls().remove(&expiring)
            {
                tracing::info!(binding = ?expired.binding, tool = %expired.tool, "input request expired; upstream call cancelled");
                expired.running.stop();
            }
        });
        Ok(input_required(
            INPUT_KEY,
            request,
            format!("{STATE_PREFIX}{key}"),
        ))
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Parked>> {
        self.approvals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps a call held for approval until the agent's retry answers its question, and
    /// returns the question as an input request. Unanswered, the request expires with its own
    /// expiry (approvers out of band may still answer meanwhile).
    pub(crate) fn park_approval(
        self: &Arc<Self>,
        binding: Binding,
        tool: &str,
        waiting: crate::approvals::Waiting,
    ) -> Result<InputRequiredResult, ProxyError> {
        let Some(in_band) = &waiting.in_band else {
            return Err(ProxyError::Cancelled);
        };
        let question = approval_question(&in_band.message);
        let left = Duration::from_secs(u64::try_from(waiting.seconds_left()).unwrap_or(0));
        let key = fresh_key();
        self.parked().insert(
            key.clone(),
            Parked {
                binding,
                tool: tool.to_owned(),
                waiting,
            },
        );
        let calls = Arc::downgrade(self);
        let expiring = key.clone();
        tokio::spawn(async move {
            // A second past the request's expiry, so that dropping it marks it expired.
            tokio::time::sleep(left + Duration::from_secs(1)).await;
            if let Some(calls) = calls.upgrade() {
                calls.parked().remove(&expiring);
            }
        });
        Ok(input_required(
            APPROVAL_INPUT_KEY,
            InputRequest::Elicitation(question),
            format!("{APPROVAL_PREFIX}{key}"),
        ))
    }

    /// The held call a retry's `state` names, with the agent's answer to its question; none
    /// when `state` is not an approval's. A state is good once, for its own session and tool.
    pub(crate) fn take_approval(
        &self,
        binding: Binding,
        tool: &str,
        state: Option<&str>,
        responses: Option<&InputResponses>,
    ) -> Result<Option<AnsweredApproval>, ProxyError> {
        let Some(key) = state.and_then(|s| s.strip_prefix(APPROVAL_PREFIX)) else {
            return Ok(None);
        };
        let parked = {
            let mut parked = self.parked();
            match parked.get(key) {
                Some(p) if p.binding == binding && p.tool == tool => parked.remove(key),
                _ => None,
            }
        }
        .ok_or(ProxyError::UnknownInputState)?;
        let answer = match responses.and_then(|r| r.get(APPROVAL_INPUT_KEY)) {
            None => Err(McpError::invalid_params(
                "the agent gave no answer to the approval question",
                None,
            )),
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
                McpError::invalid_params(format!("the agent's answer is malformed: {e}"), None)
            }),
        };
        Ok(Some((parked.waiting, answer)))
    }

    /// Delivers the agent's answer to the call `state` names and hands the call back.
    pub(crate) fn resume(
        &self,
        binding: Binding,
        tool: &str,
        state: &str,
        responses: Option<&InputResponses>,
    ) -> Result<Running, ProxyError> {
        let unknown = || ProxyError::UnknownInputState;
        let key = state.strip_prefix(STATE_PREFIX).ok_or_else(unknown)?;
        let suspended = {
            let mut calls = self.calls();
            match calls.get(key) {
                Some(s) if s.binding == binding && s.tool == tool => calls.remove(key),
                _ => None,
            }
        }
        .ok_or_else(unknown)?;
        let answer = match responses.and_then(|r| r.get(INPUT_KEY)) {
            None => Err(McpError::invalid_params(
                "the agent gave no answer to the input request",
                None,
            )),
            Some(value) => {
                let parsed = match suspended.kind {
                    Kind::Sampling => serde_json::from_value(value.clone())
                        .map(|r| ClientResult::CreateMessageResult(Box::new(r))),
                    Kind::Elicitation => {
                        serde_json::from_value(value.clone()).map(ClientResult::ElicitResult)
                    }
                    Kind::Roots => {
                        serde_json::from_value(value.clone()).map(ClientResult::ListRootsResult)
                    }
                };
                parsed.map_err(|e| {
                    McpError::invalid_params(format!("the agent's answer is malformed: {e}"), None)
                })
            }
        };
        let _ = suspended.answer.send(answer);
        Ok(suspended.running)
    }
}
