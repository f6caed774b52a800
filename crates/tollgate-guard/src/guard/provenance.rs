//! The provenance stage: before a call is decided, where each of its arguments' values came
//! from (the session's index of the values its results carried, and the values the grant
//! names); after a forwarded call returns, what its result carried, noted in the index before
//! the agent sees it. Approvers and refused agents read the origins in plain words.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde_json::{Map, Value};
use tollgate_policy::{
    Decision, Effect, Trust, UtcOffset,
    provenance::{Intent, Observed, OutputTrust, Probes, Provenance, describe, observe},
};
use tollgate_proxy::intercept::{ResultJson, ToolCall};

use crate::store::{HistoryKey, Standing, Store};

/// The values of a call's arguments to look up in one read with the rest of its standing, and
/// the names the grant holds (what an id in the arguments may be bound to).
pub(crate) fn probes(call: &ToolCall<'_>, intent: Option<&Intent>) -> Probes {
    let probes = Probes::of(call.arguments);
    match intent {
        Some(intent) => probes.naming(intent),
        None => probes,
    }
}

/// Each argument's origin, from what the store's index answered and what the grant names.
pub(crate) fn origins(probes: &Probes, standing: &Standing, intent: Option<&Intent>) -> Provenance {
    static NONE: std::sync::LazyLock<Intent> = std::sync::LazyLock::new(Intent::default);
    Provenance::of(
        probes,
        &standing.seen,
        intent.unwrap_or(&NONE),
        !standing.index_incomplete,
    )
}

/// The forwarded calls whose results are still to be noted, by call number, with the history
/// they belong to; and the notes under way, by history.
///
/// A result reaches the agent before its values are in the index (reading a 64 KiB result
/// costs several times a stdio round trip, and the agent should not wait for it). What keeps
/// that safe is the barrier: a decision of a history waits until every note of that history
/// that began before it has landed, so no call can act on a value the index has not yet
/// seen. A note that failed leaves its history refused: a value the agent saw is missing from
/// the index, so where the session's values came from can no longer be told.
#[derive(Debug, Default)]
pub(crate) struct Noting {
    pending: Mutex<HashMap<u64, HistoryKey>>,
    flights: Mutex<HashMap<HistoryKey, Flight>>,
    landed: tokio::sync::Notify,
}

/// The notes of one history under way, and whether one of them failed.
#[derive(Debug, Default)]
struct Flight {
    notes: usize,
    failed: bool,
}

/// How long a decision waits for its history's notes before it refuses.
const NOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a history's calls cannot be decided on what its results carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unnoted {
    /// A result's values could not be noted.
    Failed,
    /// The notes under way did not land in time.
    Late,
}

impl Unnoted {
    /// The refusal the agent reads.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Failed => {
                "denied: Tollgate could not note where the values of an earlier result of this session came from, so it can no longer judge this session's calls; the operator has been told why"
            }
            Self::Late => {
                "denied: Tollgate is still noting where the values of an earlier result of this session came from; try again"
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Noting {
    /// Call `number`, going ahead, will return a result for `history`'s index.
    pub(crate) fn expect(&self, number: u64, history: HistoryKey) {
        lock(&self.pending).insert(number, history);
    }

    /// The call ended; nothing more will be noted for it.
    pub(crate) fn done(&self, number: u64) -> Option<HistoryKey> {
        lock(&self.pending).remove(&number)
    }

    /// Calls whose results are awaited (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        lock(&self.pending).len()
    }

    /// A note of `history` begins: decisions of the history wait for it from now on.
    pub(crate) fn begin(self: &Arc<Self>, history: HistoryKey) -> Ticket {
        lock(&self.flights).entry(history).or_default().notes += 1;
        Ticket {
            noting: Arc::clone(self),
            history,
            landed: false,
        }
    }

    /// Whether every note of `history` under way has landed; waits (a bounded time) while one
    /// has not.
    pub(crate) async fn settled(&self, history: HistoryKey) -> Result<(), Unnoted> {
        self.settled_within(history, NOTE_WAIT).await
    }

    async fn settled_within(
        &self,
        history: HistoryKey,
        wait: std::time::Duration,
    ) -> Result<(), Unnoted> {
        // Nothing under way, the common case: no timer, no wait.
        if let Some(result) = self.state(history) {
            return result;
        }
        tokio::time::timeout(wait, async {
            loop {
                let landed = self.landed.notified();
                tokio::pin!(landed);
                // Registered before the state is read, so a note landing in between wakes it.
                landed.as_mut().enable();
                if let Some(result) = self.state(history) {
                    return result;
                }
                landed.await;
            }
        })
        .await
        .unwrap_or(Err(Unnoted::Late))
    }

    /// `None` while notes of `history` are under way; else whether they all landed.
    fn state(&self, history: HistoryKey) -> Option<Result<(), Unnoted>> {
        match lock(&self.flights).get(&history) {
            None => Some(Ok(())),
            Some(flight) if flight.failed => Some(Err(Unnoted::Failed)),
            Some(_) => None,
        }
    }

    /// `history` was forgotten (its session ended): so is a failure of its notes.
    pub(crate) fn forget(&self, history: HistoryKey) {
        let mut flights = lock(&self.flights);
        if flights.get(&history).is_some_and(|f| f.notes == 0) {
            flights.remove(&history);
        }
    }

    fn land(&self, history: HistoryKey, noted: bool) {
        {
            let mut flights = lock(&self.flights);
            if let Some(flight) = flights.get_mut(&history) {
                flight.notes = flight.notes.saturating_sub(1);
                flight.failed |= !noted;
                if flight.notes == 0 && !flight.failed {
                    flights.remove(&history);
                }
            }
        }
        self.landed.notify_waiters();
    }
}

/// A note under way. Dropped without [`Ticket::landed`] (its task panicked or was dropped),
/// the note counts as failed: its history is refused rather than judged on a partial index.
#[derive(Debug)]
pub(crate) struct Ticket {
    noting: Arc<Noting>,
    history: HistoryKey,
    landed: bool,
}

impl Ticket {
    /// The note ended, noted or not.
    pub(crate) fn landed(mut self, noted: bool) {
        self.landed = true;
        self.noting.land(self.history, noted);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.landed {
            self.noting.land(self.history, false);
        }
    }
}

/// Results larger than this are read on a blocking thread, so that one result's values do
/// not hold up the calls an async worker is relaying.
const READ_ASIDE_BYTES: usize = 16 * 1024;

/// Notes what `result` (of a call of tool `tool` in `history`) carried in the history's index,
/// as the pack's catalog says to trust the tool's output, then lands `ticket`. Runs after the
/// agent has the result.
pub(crate) async fn note(
    store: Arc<dyn Store>,
    tool: String,
    (output, labels): (Arc<OutputTrust>, Vec<String>),
    (history, ticket): (HistoryKey, Ticket),
    result: ResultJson,
    now: i64,
) {
    let size = match &result {
        ResultJson::Text(text) => text.len(),
        ResultJson::Value(_) => 0,
    };
    let read = move || -> Result<Observed, String> {
        let value = match result {
            ResultJson::Value(value) => value,
            ResultJson::Text(text) => serde_json::from_str::<Value>(&text)
                .map_err(|e| format!("the tool's result is not JSON ({e})"))?,
        };
        Ok(observe(&value, &tool, &output, &labels, now))
    };
    land(store, history, ticket, aside(size, read).await).await;
}

/// Runs `read` on a blocking thread when the result is large, else here.
async fn aside(
    size: usize,
    read: impl FnOnce() -> Result<Observed, String> + Send + 'static,
) -> Result<Observed, String> {
    if size <= READ_ASIDE_BYTES {
        return read();
    }
    tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|e| Err(format!("reading the result failed ({e})")))
}

/// Adds what was read to the index and lands the ticket; a failure is logged for the
/// operator, and the ticket's history is refused from now on.
async fn land(
    store: Arc<dyn Store>,
    history: HistoryKey,
    ticket: Ticket,
    observed: Result<Observed, String>,
) {
    let noted = match observed {
        Ok(observed) => store
            .note(history, &observed)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(error) = &noted {
        tracing::error!(
            %error,
            session = history,
            "a result's values could not be noted; the session's calls are refused"
        );
    }
    ticket.landed(noted.is_ok());
}

/// Who reads an argument's value as it is explained.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// The approver of a held call: sees what the catalog shows to approvers.
    Approver,
    /// A refused agent and the trail, which keeps the reason.
    Trail,
}

/// Notes what a read resource (`resources/read`: its `contents`) carried in `history`'s index:
/// no catalog speaks of resources, so none of it is trusted, and its values read as what
/// untrusted content carried (a file or page with injected instructions is as untrusted as a
/// tool's).
pub(crate) async fn note_read(
    store: Arc<dyn Store>,
    (history, ticket): (HistoryKey, Ticket),
    uri: String,
    result: Value,
    now: i64,
) {
    let size = result
        .get("contents")
        .and_then(Value::as_array)
        .map_or(0, |contents| {
            contents
                .iter()
                .filter_map(|c| c.get("text").and_then(Value::as_str))
                .map(str::len)
                .sum()
        });
    let read = move || -> Result<Observed, String> {
        // The contents as a tool's text blocks: each text read (as JSON when it is JSON),
        // each URI searched for values.
        let blocks: Vec<Value> = match result {
            Value::Object(mut result) => match result.remove("contents") {
                Some(Value::Array(contents)) => contents,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
        .into_iter()
        .map(|mut c| {
            serde_json::json!({
                "type": "text",
                "text": c.get_mut("text").map(Value::take).unwrap_or(Value::Null),
                "uri": c.get_mut("uri").map(Value::take).unwrap_or(Value::Null),
            })
        })
        .collect();
        let shaped = serde_json::json!({ "content": blocks });
        Ok(observe(
            &shaped,
            &format!("resource {uri}"),
            &OutputTrust::default(),
            &[],
            now,
        ))
    };
    land(store, history, ticket, aside(size, read).await).await;
}

/// An argument's value as `reader` may read it: hidden where the catalog redacts it from them
/// or where it came from a labelled result (a secret's value must not reach a reason, the
/// trail, a log or a prompt by being explained).
fn shown(
    decision: &Decision,
    name: &str,
    origin: &tollgate_policy::Origin,
    arguments: Option<&Map<String, Value>>,
    reader: Reader,
) -> Option<String> {
    let value = arguments.and_then(|a| a.get(name))?;
    let redacted = match reader {
        Reader::Approver => decision.hidden_from_approvers(name),
        Reader::Trail => decision.redact.iter().any(|r| r == name),
    };
    if redacted || !origin.labels.is_empty() {
        return Some(tollgate_policy::catalog::REDACTED.to_owned());
    }
    Some(match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    })
}

/// The origins the approver of a held call reads: every target, and every argument some
/// result or the grant carried.
pub(crate) fn for_people(
    decision: &Decision,
    arguments: Option<&Map<String, Value>>,
    provenance: &Provenance,
    offset: UtcOffset,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, origin) in &provenance.args {
        let target = decision.targets.contains(name);
        if !target && origin.trust == Trust::Unseen && origin.embedded.is_none() {
            continue;
        }
        let Some(shown) = shown(decision, name, origin, arguments, Reader::Approver) else {
            continue;
        };
        let kind = if target { "target " } else { "" };
        lines.push(format!("{kind}{}", describe(name, &shown, origin, offset)));
    }
    lines
}

/// A denial because of where a target came from says where, so the agent (and the person
/// reading the trail) can see it was not arbitrary.
pub(crate) fn explain_refusal(
    decision: &mut Decision,
    arguments: Option<&Map<String, Value>>,
    provenance: &Provenance,
    offset: UtcOffset,
) {
    if decision.effect != Effect::Deny {
        return;
    }
    for name in &decision.targets {
        let Some(origin) = provenance.arg(name) else {
            continue;
        };
        if origin.trust != Trust::Untrusted {
            continue;
        }
        let Some(shown) = shown(decision, name, origin, arguments, Reader::Trail) else {
            continue;
        };
        let said = describe(name, &shown, origin, offset);
        decision.reasons.push(said);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tollgate_policy::provenance::{Observed, OutputTrust, tokens};

    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_noted_result_answers_the_next_calls_lookup_and_a_late_one_is_forgotten() {
        let store = MemoryStore::default();
        let noting = Noting::default();
        noting.expect(9, 1);
        assert_eq!(noting.waiting(), 1);
        let history = noting.done(9).unwrap();
        let result =
            json!({"content": [{"type": "text", "text": "wire to US13 3000 0001 2121 2121 212"}]});
        let observed: Observed = observe(&result, "mail.read", &OutputTrust::default(), &[], 5);
        store.note(history, &observed).await.unwrap();
        assert_eq!(noting.done(9), None, "a call is noted once");
        let arguments = json!({"recipient": "US133000000121212121212"});
        let probes = Probes::of(arguments.as_object());
        let standing = store.standing(1, None, 6, &probes.keys).await.unwrap();
        let provenance = origins(&probes, &standing, None);
        assert_eq!(provenance.arg("recipient").unwrap().trust, Trust::Untrusted);
        let key = tokens::tokens("US133000000121212121212").remove(0).0;
        assert!(store.standing(2, None, 6, &[key]).await.unwrap().seen[0].is_none());
    }

    #[tokio::test]
    async fn a_history_waits_only_for_its_own_notes_and_a_lost_note_counts_as_failed() {
        let noting = Arc::new(Noting::default());
        assert_eq!(noting.settled(1).await, Ok(()), "nothing under way");
        let (first, second) = (noting.begin(1), noting.begin(1));
        assert_eq!(
            noting.settled(2).await,
            Ok(()),
            "another history does not wait"
        );
        let short = std::time::Duration::from_millis(30);
        assert_eq!(noting.settled_within(1, short).await, Err(Unnoted::Late));
        let waiter = {
            let noting = Arc::clone(&noting);
            tokio::spawn(async move { noting.settled(1).await })
        };
        first.landed(true);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "one note of the history is still under way"
        );
        second.landed(true);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert!(
            lock(&noting.flights).is_empty(),
            "nothing is kept once all landed"
        );
        // A note whose task died without landing: the history is refused, not judged on a
        // partial index, until it is forgotten.
        drop(noting.begin(3));
        assert_eq!(noting.settled(3).await, Err(Unnoted::Failed));
        let late = noting.begin(3);
        late.landed(true);
        assert_eq!(
            noting.settled(3).await,
            Err(Unnoted::Failed),
            "a failure stays"
        );
        noting.forget(3);
        assert_eq!(noting.settled(3).await, Ok(()));
    }

    #[test]
    fn a_refusal_for_an_untrusted_target_says_where_it_came_from_and_hides_redacted_values() {
        let mut decision = Decision::undecided(
            "v",
            tollgate_policy::ActionClass::Payment,
            tollgate_policy::Risk::High,
        );
        decision.targets = vec!["recipient".into()];
        decision.reasons = vec!["refused".into()];
        let mut index = tollgate_policy::provenance::Index::default();
        let result = json!({"content": [{"type": "text", "text": "pay US133000000121212121212"}]});
        index.add(&observe(
            &result,
            "mail.read",
            &OutputTrust::default(),
            &[],
            0,
        ));
        let arguments = json!({"recipient": "US133000000121212121212"});
        let probes = Probes::of(arguments.as_object());
        let seen = index.look_up(&probes.keys);
        let provenance = Provenance::of(&probes, &seen, &Intent::default(), true);
        explain_refusal(
            &mut decision,
            arguments.as_object(),
            &provenance,
            UtcOffset::UTC,
        );
        assert_eq!(decision.reasons.len(), 2);
        assert!(
            decision.reasons[1]
                .contains("of mail.read's result, content the catalog does not trust"),
            "{:?}",
            decision.reasons
        );
        let lines = for_people(
            &decision,
            arguments.as_object(),
            &provenance,
            UtcOffset::UTC,
        );
        assert!(
            lines[0].starts_with("target recipient `US133000000121212121212`"),
            "{lines:?}"
        );
        decision.redact = vec!["recipient".into()];
        let lines = for_people(
            &decision,
            arguments.as_object(),
            &provenance,
            UtcOffset::UTC,
        );
        assert!(!lines[0].contains("US1330"), "{lines:?}");
        // Shown to approvers: the approver reads it, a refusal (kept by the trail) does not.
        decision.shown_to_approvers = vec!["recipient".into()];
        let lines = for_people(
            &decision,
            arguments.as_object(),
            &provenance,
            UtcOffset::UTC,
        );
        assert!(lines[0].contains("US133000000121212121212"), "{lines:?}");
        decision.reasons.truncate(1);
        explain_refusal(
            &mut decision,
            arguments.as_object(),
            &provenance,
            UtcOffset::UTC,
        );
        assert!(
            !decision.reasons[1].contains("US1330"),
            "{:?}",
            decision.reasons
        );
    }

    #[test]
    fn a_value_read_from_a_secret_is_never_repeated_in_a_reason_or_a_prompt() {
        let mut decision = Decision::undecided(
            "v",
            tollgate_policy::ActionClass::Egress,
            tollgate_policy::Risk::Medium,
        );
        decision.effect = Effect::Deny;
        decision.targets = vec!["url".into()];
        let mut index = tollgate_policy::provenance::Index::default();
        let secret = json!({"content": [{"type": "text", "text": "https://hooks.example.net/T0KEN-s3cr3t-991"}]});
        let labels = ["secret_read".to_owned()];
        index.add(&observe(
            &secret,
            "vault.get",
            &OutputTrust::default(),
            &labels,
            0,
        ));
        let arguments = json!({"url": "https://hooks.example.net/T0KEN-s3cr3t-991"});
        let probes = Probes::of(arguments.as_object());
        let seen = index.look_up(&probes.keys);
        let provenance = Provenance::of(&probes, &seen, &Intent::default(), true);
        explain_refusal(
            &mut decision,
            arguments.as_object(),
            &provenance,
            UtcOffset::UTC,
        );
        let lines = for_people(
            &decision,
            arguments.as_object(),
            &provenance,
            UtcOffset::UTC,
        );
        let said = format!("{:?} {lines:?}", decision.reasons);
        assert!(!said.contains("s3cr3t"), "{said}");
        assert!(said.contains("url `[redacted]` first appeared"), "{said}");
    }
}
