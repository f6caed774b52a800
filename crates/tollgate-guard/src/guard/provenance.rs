//! The provenance stage: before a call is decided, where each of its arguments' values came
//! from (the session's index of the values its results carried, and the values the grant
//! names); after a forwarded call returns, what its result carried, noted in the index before
//! the agent sees it. Approvers and refused agents read the origins in plain words.

use std::{collections::HashMap, sync::Mutex};

use serde_json::{Map, Value};
use tollgate_policy::{
    Decision, Effect, Pack, ToolFacts, Trust, UtcOffset,
    provenance::{Intent, Probes, Provenance, describe, observe},
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
/// they belong to.
#[derive(Debug, Default)]
pub(crate) struct Noting {
    pending: Mutex<HashMap<u64, HistoryKey>>,
}

impl Noting {
    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HistoryKey>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Call `number`, going ahead, will return a result for `history`'s index.
    pub(crate) fn expect(&self, number: u64, history: HistoryKey) {
        self.locked().insert(number, history);
    }

    /// The call ended; nothing more will be noted for it.
    pub(crate) fn done(&self, number: u64) -> Option<HistoryKey> {
        self.locked().remove(&number)
    }

    /// Calls whose results are awaited (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.locked().len()
    }
}

/// Notes what `result` (of `call`, a call of `facts` in `history`) carried in the history's
/// index, as the pack's catalog says to trust the tool's output.
pub(crate) async fn note(
    store: &dyn Store,
    pack: &Pack,
    facts: &ToolFacts,
    history: HistoryKey,
    result: ResultJson<'_>,
    now: i64,
) -> Result<(), String> {
    let parsed;
    let value = match result {
        ResultJson::Value(value) => value,
        ResultJson::Text(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| format!("the tool's result is not JSON ({e}); it is withheld"))?;
            &parsed
        }
    };
    let (output, labels) = pack.output_of(facts);
    let observed = observe(value, facts.name(), &output, &labels, now);
    store.note(history, &observed).await.map_err(|e| {
        tracing::error!(error = %e, tool = facts.name(), "a result's values could not be noted; it is withheld");
        "Tollgate could not note where this result's values came from, so it is withheld".to_owned()
    })
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
    store: &dyn Store,
    history: HistoryKey,
    uri: &str,
    result: &Value,
    now: i64,
) -> Result<(), String> {
    // The contents as a tool's text blocks: each text read (as JSON when it is JSON), each
    // URI searched for values.
    let blocks: Vec<Value> = result
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            serde_json::json!({
                "type": "text",
                "text": c.get("text").cloned().unwrap_or(Value::Null),
                "uri": c.get("uri").cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    let shaped = serde_json::json!({ "content": blocks });
    let source = format!("resource {uri}");
    let observed = observe(
        &shaped,
        &source,
        &tollgate_policy::provenance::OutputTrust::default(),
        &[],
        now,
    );
    store.note(history, &observed).await.map_err(|e| {
        tracing::error!(error = %e, "a resource's values could not be noted; it is withheld");
        "Tollgate could not note where this resource's values came from, so it is withheld"
            .to_owned()
    })
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
