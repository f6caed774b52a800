//! Approval gates. A call a policy marks `@needs_approval` becomes an approval request bound
//! to that exact call: the session's history key, the grant, the upstream and tool, the digest
//! of its canonical arguments, the policy-set version and the approver groups the gating
//! policies name; with an expiry. The agent's request stays open while a person decides out of
//! band (the admin endpoint, `tollgate approvals`); the call goes ahead only when an approval
//! of that request arrives in time from an approver of a named group, and is then decided
//! again under the pack of that moment. A denial, the expiry, or the agent giving up (which
//! withdraws the request) all deny.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

/// Default time an approval request waits for a person.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a waiting call tells an agent that asked for progress that it still waits.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Decided requests kept for `list`/`show` after they end.
const KEEP_DECIDED: usize = 256;

/// One person who may approve, and the groups they belong to.
#[derive(Debug, Clone)]
pub struct Approver {
    pub name: String,
    pub groups: Vec<String>,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved {
        by: String,
        at: i64,
    },
    Denied {
        by: String,
        at: i64,
        reason: String,
    },
    Expired {
        at: i64,
    },
    /// The agent stopped waiting (cancelled, or its connection closed).
    Withdrawn {
        at: i64,
    },
}

/// What the approver sees: what will happen, not what the agent says it does.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: String,
    pub created: i64,
    pub expires: i64,
    pub session: String,
    pub grant: Option<String>,
    pub agent: Option<String>,
    pub user: Option<String>,
    pub upstream: String,
    pub tool: String,
    pub class: String,
    pub resources: Vec<String>,
    /// The arguments as they will be sent, with those the catalog marks `redact` hidden but
    /// for those it shows to approvers (`shown_to_approvers`).
    pub arguments: Value,
    /// SHA-256 (base64url) of the canonical arguments: what the approval is bound to.
    pub arguments_sha256: String,
    pub policy_version: String,
    pub policies: Vec<String>,
    pub reasons: Vec<String>,
    /// The groups whose members may approve; empty: any approver.
    pub approvers: Vec<String>,
    /// The agent's own words for the call (untrusted; shown apart from the facts).
    pub justification: Option<String>,
    /// The task the grant was issued for (trusted: written before the agent read anything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Where each argument's value came from, in plain words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provenance: Vec<String>,
    /// What the call's credential will say it is good for (its `authorization_details`,
    /// less the decision and approval ids), when the upstream takes one.
    pub credential: Option<Value>,
    #[serde(flatten)]
    pub state: State,
}

impl Request {
    /// The request as the user at the agent reads it: the facts of the call, then the agent's
    /// own words marked as such.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut text = format!(
            "Tollgate is holding a call until you approve it.\n\nTool: {} on upstream {} ({} call)\n",
            self.tool, self.upstream, self.class
        );
        if let Some(task) = self.task.as_deref().filter(|t| !t.is_empty()) {
            let _ = writeln!(text, "The task, as the grant was issued: {task}");
        }
        if !self.resources.is_empty() {
            let _ = writeln!(text, "Resources: {}", self.resources.join(", "));
        }
        let _ = writeln!(text, "Arguments: {}", self.arguments);
        for line in &self.provenance {
            let _ = writeln!(text, "- {line}");
        }
        if let Some(credential) = &self.credential {
            let _ = writeln!(text, "Credential for this one call: {credential}");
        }
        let _ = writeln!(text, "Why it is held: {}", self.reasons.join("; "));
        if let Some(words) = &self.justification {
            let _ = writeln!(text, "The agent says (not checked): {words}");
        }
        let _ = write!(
            text,
            "\nApproval {} expires in {} s. Approve only if this is what you want done.",
            self.id,
            (self.expires - self.created).max(0)
        );
        text
    }
}

/// What an approval is bound to: exactly one call, under one policy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    pub session: &'a str,
    pub grant: Option<&'a str>,
    pub upstream: &'a str,
    pub tool: &'a str,
    pub arguments_sha256: &'a str,
    pub policy_version: &'a str,
}

impl Request {
    /// The binding an approval of this request is good for.
    fn binding(&self) -> Binding<'_> {
        Binding {
            session: &self.session,
            grant: self.grant.as_deref(),
            upstream: &self.upstream,
            tool: &self.tool,
            arguments_sha256: &self.arguments_sha256,
            policy_version: &self.policy_version,
        }
    }
}

/// Why an approver's answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("no approval request `{0}`")]
    Unknown(String),
    #[error("approval request `{id}` is no longer pending ({state})")]
    NotPending { id: String, state: &'static str },
    #[error("`{approver}` is not in a group that may approve this call ({groups})")]
    NotAllowed { approver: String, groups: String },
}

#[derive(Debug)]
struct Entry {
    request: Request,
    answered: watch::Sender<State>,
}

/// Every approval request of this Tollgate.
#[derive(Debug, Default)]
pub struct Approvals {
    entries: Mutex<BTreeMap<String, Entry>>,
}

fn state_name(state: &State) -> &'static str {
    match state {
        State::Pending => "pending",
        State::Approved { .. } => "approved",
        State::Denied { .. } => "denied",
        State::Expired { .. } => "expired",
        State::Withdrawn { .. } => "withdrawn",
    }
}

impl Approvals {
    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a request; the receiver sees its answer. `in_band`: the user at the agent may
    /// answer it too; `out_of_band`: approvers can answer it through the admin endpoint.
    pub fn open(
        self: &Arc<Self>,
        request: Request,
        in_band: Option<InBand>,
        out_of_band: bool,
        progress_every: Duration,
    ) -> Waiting {
        let (answered, receiver) = watch::channel(State::Pending);
        let id = request.id.clone();
        let expires = request.expires;
        let mut entries = self.entries();
        // Forget the oldest ended requests beyond what `list` keeps.
        let ended: Vec<String> = entries
            .iter()
            .filter(|(_, e)| e.request.state != State::Pending)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended.iter().take(ended.len().saturating_sub(KEEP_DECIDED)) {
            entries.remove(id);
        }
        entries.insert(id.clone(), Entry { request, answered });
        Waiting {
            approvals: self.clone(),
            id,
            expires,
            receiver,
            in_band,
            out_of_band,
            progress_every,
        }
    }

    /// Every request, newest first; only pending ones when `pending`.
    pub fn list(&self, pending: bool) -> Vec<Request> {
        let mut out: Vec<Request> = self
            .entries()
            .values()
            .filter(|e| !pending || e.request.state == State::Pending)
            .map(|e| e.request.clone())
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.created));
        out
    }

    /// How many requests wait for an answer.
    pub fn pending(&self) -> usize {
        self.entries()
            .values()
            .filter(|e| e.request.state == State::Pending)
            .count()
    }

    pub fn show(&self, id: &str) -> Option<Request> {
        self.entries().get(id).map(|e| e.request.clone())
    }

    /// An approver approves or denies request `id` at `now`.
    pub fn answer(
        &self,
        id: &str,
        approver: &Approver,
        approve: bool,
        reason: &str,
        now: i64,
    ) -> Result<Request, AnswerError> {
        let mut entries = self.entries();
        let entry = entries
            .get_mut(id)
            .ok_or_else(|| AnswerError::Unknown(id.to_owned()))?;
        if entry.request.state == State::Pending && now >= entry.request.expires {
            entry.request.state = State::Expired { at: now };
            let _ = entry.answered.send(entry.request.state.clone());
        }
        if entry.request.state != State::Pending {
            return Err(AnswerError::NotPending {
                id: id.to_owned(),
                state: state_name(&entry.request.state),
            });
        }
        let groups = &entry.request.approvers;
        if !groups.is_empty() && !groups.iter().any(|g| approver.groups.contains(g)) {
            return Err(AnswerError::NotAllowed {
                approver: approver.name.clone(),
                groups: groups.join(", "),
            });
        }
        entry.request.state = if approve {
            State::Approved {
                by: approver.name.clone(),
                at: now,
            }
        } else {
            State::Denied {
                by: approver.name.clone(),
                at: now,
                reason: reason.chars().take(500).collect(),
            }
        };
        let _ = entry.answered.send(entry.request.state.clone());
        Ok(entry.request.clone())
    }

    /// The user at the agent answers request `id` (where policy lets them, which the caller
    /// has checked): no approver group applies.
    fn answer_at_agent(&self, id: &str, who: &str, approve: bool, reason: &str) {
        let now = tollgate_mint::unix_now();
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(id) else {
            return;
        };
        if entry.request.state != State::Pending {
            return;
        }
        entry.request.state = if now >= entry.request.expires {
            State::Expired { at: now }
        } else if approve {
            State::Approved {
                by: who.to_owned(),
                at: now,
            }
        } else {
            State::Denied {
                by: who.to_owned(),
                at: now,
                reason: reason.chars().take(500).collect(),
            }
        };
        let _ = entry.answered.send(entry.request.state.clone());
    }

    fn end(&self, id: &str, state: State) {
        if let Some(entry) = self.entries().get_mut(id)
            && entry.request.state == State::Pending
        {
            entry.request.state = state;
            let _ = entry.answered.send(entry.request.state.clone());
        }
    }

    /// Whether request `id` was approved for exactly this binding.
    pub fn approved_for(&self, id: &str, binding: &Binding<'_>) -> Option<String> {
        let entries = self.entries();
        let entry = entries.get(id)?;
        match &entry.request.state {
            State::Approved { by, .. } if entry.request.binding() == *binding => Some(by.clone()),
            _ => None,
        }
    }
}

/// How the user at the agent is asked to approve a call, and the name their answer is
/// recorded under.
#[derive(Debug, Clone)]
pub struct InBand {
    /// What the user reads: what will happen, from Tollgate's facts, not the agent's words.
    pub message: String,
    /// The approver an in-band answer is recorded as (`<user> (at the agent)`).
    pub who: String,
}

/// A call waiting for its answer. Dropped before it ends, it withdraws the request (the agent
/// gave up), or marks it expired if its time had run out.
#[derive(Debug)]
pub struct Waiting {
    approvals: Arc<Approvals>,
    pub id: String,
    expires: i64,
    receiver: watch::Receiver<State>,
    /// The user at the agent may answer, asked like this.
    pub in_band: Option<InBand>,
    /// Approvers can answer through the admin endpoint.
    pub out_of_band: bool,
    /// How often the agent hears that the call still waits, when it asked for progress.
    pub progress_every: Duration,
}

impl Waiting {
    /// Waits for the answer or the expiry. Cancel-safe: the request stays pending when this is
    /// dropped early, and is withdrawn only with the `Waiting`.
    pub async fn answered(&mut self) -> State {
        let now = tollgate_mint::unix_now();
        let left = Duration::from_secs(u64::try_from(self.expires - now).unwrap_or(0));
        let answered = tokio::time::timeout(
            left,
            self.receiver.wait_for(|state| *state != State::Pending),
        )
        .await;
        match answered {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) | Err(_) => {
                let state = State::Expired {
                    at: tollgate_mint::unix_now(),
                };
                self.approvals.end(&self.id, state.clone());
                // Another answer may have won the race.
                self.approvals
                    .show(&self.id)
                    .map_or(state, |request| request.state)
            }
        }
    }

    /// Waits for the answer or the expiry.
    pub async fn answer(mut self) -> State {
        self.answered().await
    }

    /// Records the answer of the user at the agent: approved only by an explicit approval,
    /// denied with `reason` otherwise. Nothing happens unless the call may be approved in band.
    pub fn answer_at_agent(&self, approve: bool, reason: &str) {
        if let Some(in_band) = &self.in_band {
            self.approvals
                .answer_at_agent(&self.id, &in_band.who, approve, reason);
        }
    }

    /// Seconds left before the request expires.
    pub fn seconds_left(&self) -> i64 {
        (self.expires - tollgate_mint::unix_now()).max(0)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let now = tollgate_mint::unix_now();
        let state = if now >= self.expires {
            State::Expired { at: now }
        } else {
            State::Withdrawn { at: now }
        };
        self.approvals.end(&self.id, state);
    }
}
