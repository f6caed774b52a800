//! The record stage: what a decision leaves behind before its call goes ahead (its record in
//! the audit trail, which an allowed call waits for; its span) and what the call's end adds
//! (the outcome record, the span's end, the call's latency).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tollgate_policy::{Decision, Effect, ToolFacts, recorded::InputRecord};
use tollgate_proxy::intercept::{Outcome, PendingCredential, ToolCall, Verdict};

use super::{CallArguments, Granted, TRACEPARENT_KEY};
use crate::metrics::Metrics;

/// Forwarded calls remembered for their outcome record before old ones are swept.
const IN_FLIGHT_LIMIT: usize = 65_536;

/// A forwarded call until its outcome: its decision, when it was decided, and its span.
pub(crate) struct InFlight {
    decision_id: String,
    decided: std::time::Instant,
    span: Option<Box<crate::otlp::CallSpan>>,
}

/// What a decision's audit record is made of.
#[derive(Clone, Copy)]
pub(crate) struct Recorded<'a> {
    pub(crate) call: &'a ToolCall<'a>,
    pub(crate) arguments: &'a CallArguments<'a>,
    pub(crate) history: u64,
    /// Shared, so that the trail's record of the grant is built from it only when written.
    pub(crate) grant: Option<&'a Arc<Granted>>,
    pub(crate) decision: &'a Decision,
    pub(crate) decision_id: &'a str,
    pub(crate) justification: Option<&'a str>,
    pub(crate) minted: Option<&'a tollgate_mint::Minted>,
    /// What the engine was handed, for replay; none without a trail.
    pub(crate) input: Option<&'a InputRecord<'a>>,
    pub(crate) facts: &'a ToolFacts,
    /// The shadow pack's decision, when it differs from the live pack's.
    pub(crate) shadow: Option<&'a Decision>,
}

thread_local! {
    /// Where this thread serializes the trail's records; the trail copies each into its queue.
    static LINE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A record's line above this size is not kept as this thread's buffer once handed over.
const KEPT_LINE: usize = 16 * 1024;

/// `then` with `record` serialized as JSON, in a buffer this thread keeps for it, so that a
/// record allocates nothing of its own. The buffer is taken out while in use: a call made
/// meanwhile on this thread (or as it ends) serializes into a fresh one instead.
pub(crate) fn serialized<T>(
    record: &impl serde::Serialize,
    then: impl FnOnce(Result<&[u8], serde_json::Error>) -> T,
) -> T {
    let mut bytes = LINE.try_with(std::cell::Cell::take).unwrap_or_default();
    bytes.clear();
    let answer = then(serde_json::to_writer(&mut bytes, record).map(|()| bytes.as_slice()));
    if bytes.capacity() <= KEPT_LINE {
        let _ = LINE.try_with(|line| line.set(bytes));
    }
    answer
}

/// `verdict`, forwarded only once its decision's record is as durable as configured.
pub(crate) fn durable_first(ticket: tollgate_audit::Ticket, verdict: Verdict) -> Verdict {
    if ticket.is_settled() {
        return verdict;
    }
    let then: PendingCredential = match verdict {
        Verdict::Forward => PendingCredential(Box::pin(async { Ok(None) })),
        Verdict::ForwardWith(credential) => {
            PendingCredential(Box::pin(async move { Ok(Some(credential)) }))
        }
        Verdict::ForwardAfter(pending) => pending,
        other => return other,
    };
    Verdict::ForwardAfter(PendingCredential(Box::pin(async move {
        if let Err(e) = ticket.durable().await {
            tracing::error!(error = %e, "a decision could not be recorded; its call is refused");
            return Err(
                "Tollgate could not record this decision, so the call does not go ahead".to_owned(),
            );
        }
        then.0.await
    })))
}

/// The trail, the span exporter, and the forwarded calls until their outcome.
pub(crate) struct Trail {
    /// The audit trail, unless turned off by name.
    pub(crate) audit: Option<Arc<tollgate_audit::Audit>>,
    /// Where decided calls go as OpenTelemetry spans, when configured.
    pub(crate) otlp: Option<Arc<crate::otlp::Exporter>>,
    /// Forwarded calls by number: their decision id and when they were decided, for the
    /// outcome record and the call's latency.
    in_flight: Mutex<HashMap<u64, InFlight>>,
}

impl Trail {
    pub(crate) fn new(
        audit: Option<Arc<tollgate_audit::Audit>>,
        otlp: Option<Arc<crate::otlp::Exporter>>,
    ) -> Self {
        Self {
            audit,
            otlp,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Closes the trail (its closing checkpoint) and flushes the spans.
    pub(crate) fn close(&self) {
        if let Some(audit) = &self.audit {
            audit.close();
        }
        if let Some(otlp) = &self.otlp {
            otlp.shutdown();
        }
    }

    /// Appends the record of a decision to the trail: who, what, what it touches, the
    /// arguments' digest and redacted arguments, the decision and what determined it, the
    /// approval, what the credential says (never the token).
    pub(crate) fn decision(
        &self,
        recorded: &Recorded<'_>,
        approval: Option<&str>,
        unanswerable: Option<&str>,
    ) -> Option<tollgate_audit::Ticket> {
        let audit = self.audit.as_ref()?;
        let Recorded {
            call,
            arguments,
            history,
            grant,
            decision,
            decision_id,
            justification,
            minted,
            input,
            facts,
            shadow,
        } = *recorded;
        // The definitions the decision names go first, once per trail file.
        let tool = facts
            .entry()
            .map(|entry| Arc::clone(entry) as tollgate_audit::Definition);
        let granted = grant.map(|grant| Arc::clone(grant) as tollgate_audit::Definition);
        // Nothing to hide: the arguments are written as they came, not copied first.
        let kept = if decision.redact.is_empty() {
            crate::audit::kept_arguments(arguments.object())
        } else {
            crate::audit::kept_arguments(&decision.redacted(arguments.value()))
        };
        let line = crate::audit::DecisionLine {
            kind: "decision",
            decision_id,
            session: history,
            agent: grant.and_then(|g| g.agent.as_deref()),
            user: grant.and_then(|g| g.user.as_deref()),
            grant: grant.map(|g| g.id.as_str()),
            upstream: call.upstream,
            tool: call.tool,
            class: decision.class.as_str(),
            resources: crate::audit::AsText(&decision.resources),
            arguments_sha256: arguments.digest(),
            arguments: kept.as_deref(),
            decision: decision.effect.as_str(),
            policies: &decision.policies,
            reasons: &decision.reasons,
            version: &decision.version,
            approval_id: approval,
            unanswerable,
            justification,
            jti: minted.map(|m| m.jti.as_str()),
            kid: minted.map(|m| m.kid.as_str()),
            aud: minted.map(|m| m.aud.as_str()),
            exp: minted.map(|m| m.exp),
            input,
            shadow: shadow.map(|s| crate::audit::ShadowLine {
                version: &s.version,
                decision: s.effect.as_str(),
                policies: &s.policies,
                reasons: &s.reasons,
            }),
        };
        Some(serialized(&line, |bytes| match bytes {
            Ok(bytes) => audit.append_line_after(tool.into_iter().chain(granted), bytes),
            // Nothing in a decision fails to serialize; if it ever did, the call is refused.
            Err(e) => tollgate_audit::Ticket::unrecordable(e.to_string()),
        }))
    }

    /// Remembers a forwarded call's decision for its outcome record and span.
    pub(crate) fn track(
        &self,
        number: u64,
        decision_id: &str,
        span: Option<crate::otlp::CallSpan>,
    ) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Calls whose end never came (a connection gone mid-call) are forgotten after an hour.
        if in_flight.len() >= IN_FLIGHT_LIMIT {
            in_flight.retain(|_, f| f.decided.elapsed() < std::time::Duration::from_secs(3600));
        }
        in_flight.insert(
            number,
            InFlight {
                decision_id: decision_id.to_owned(),
                decided: std::time::Instant::now(),
                span: span.map(Box::new),
            },
        );
    }

    /// The span of a decided call, when spans are exported: what it decided and why, never
    /// its arguments.
    pub(crate) fn span(&self, recorded: &Recorded<'_>) -> Option<crate::otlp::CallSpan> {
        use crate::otlp::Attr;
        self.otlp.as_ref()?;
        let Recorded {
            call,
            history,
            grant,
            decision,
            decision_id,
            ..
        } = *recorded;
        let start =
            crate::otlp::SpanStart::now(call.meta.get(TRACEPARENT_KEY).and_then(|v| v.as_str()));
        let mut attributes = vec![
            ("tollgate.session", Attr::Text(history.to_string())),
            ("tollgate.tool", Attr::Text(call.exposed_name.to_owned())),
            ("tollgate.upstream", Attr::Text(call.upstream.to_owned())),
            (
                "tollgate.class",
                Attr::Text(decision.class.as_str().to_owned()),
            ),
            (
                "tollgate.decision",
                Attr::Text(decision.effect.as_str().to_owned()),
            ),
            ("tollgate.policies", Attr::List(decision.policies.clone())),
            (
                "tollgate.policy_version",
                Attr::Text(decision.version.clone()),
            ),
            ("tollgate.decision_id", Attr::Text(decision_id.to_owned())),
        ];
        if let Some(grant) = grant {
            attributes.push(("tollgate.grant", Attr::Text(grant.id.clone())));
        }
        Some(crate::otlp::CallSpan {
            name: format!("tools/call {}", call.exposed_name),
            trace_id: start.trace_id,
            span_id: start.span_id,
            parent_span_id: start.parent_span_id,
            start_unix_nanos: start.start_unix_nanos,
            end_unix_nanos: start.start_unix_nanos,
            attributes,
            error: (decision.effect == Effect::Deny).then(|| "denied".to_owned()),
        })
    }

    /// Exports the span of a call that ends at its decision (refused, or held).
    pub(crate) fn export_now(&self, recorded: &Recorded<'_>) {
        if let (Some(otlp), Some(mut span)) = (&self.otlp, self.span(recorded)) {
            span.end_unix_nanos = crate::otlp::unix_nanos();
            otlp.export(span);
        }
    }

    /// Records how a forwarded call ended: its outcome record, its span's end, its latency.
    pub(crate) fn outcome(&self, metrics: &Metrics, call: &ToolCall<'_>, outcome: &Outcome<'_>) {
        let Some(InFlight {
            decision_id,
            decided,
            span,
        }) = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&call.number)
        else {
            return;
        };
        let latency = decided.elapsed();
        metrics.call_latency.observe(latency);
        let (result, error) = match outcome {
            Outcome::Completed { is_error: false } => ("ok", None),
            Outcome::Completed { is_error: true } => ("tool_error", None),
            Outcome::Pending => ("pending", None),
            Outcome::Failed(e) => (
                "failed",
                Some(e.to_string().chars().take(300).collect::<String>()),
            ),
        };
        if let (Some(otlp), Some(mut span)) = (&self.otlp, span) {
            span.end_unix_nanos = crate::otlp::unix_nanos();
            span.attributes.push((
                "tollgate.outcome",
                crate::otlp::Attr::Text(result.to_owned()),
            ));
            span.attributes.push((
                "tollgate.latency_us",
                crate::otlp::Attr::Int(i64::try_from(latency.as_micros()).unwrap_or(i64::MAX)),
            ));
            span.error = match result {
                "ok" | "pending" => None,
                other => Some(other.to_owned()),
            };
            otlp.export(*span);
        }
        let Some(audit) = &self.audit else {
            return;
        };
        let line = crate::audit::OutcomeLine {
            kind: "outcome",
            decision_id: &decision_id,
            session: call.session,
            upstream: call.upstream,
            tool: call.tool,
            outcome: result,
            error: error.as_deref(),
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        };
        serialized(&line, |bytes| match bytes {
            // The call went ahead already: its outcome waits for no sync of its own.
            Ok(bytes) => audit.note_line(bytes),
            Err(e) => tracing::error!(error = %e, "an outcome could not be recorded"),
        });
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proxy::intercept::Credential;

    use super::*;

    #[test]
    fn a_record_serialized_while_another_is_being_handed_over_gets_its_own_buffer() {
        let outer = serialized(&serde_json::json!({"n": 1}), |outer| {
            let inner = serialized(&serde_json::json!({"n": 2}), |inner| {
                inner.map(<[u8]>::to_vec).unwrap_or_default()
            });
            (outer.map(<[u8]>::to_vec).unwrap_or_default(), inner)
        });
        assert_eq!(outer, (br#"{"n":1}"#.to_vec(), br#"{"n":2}"#.to_vec()));
        // And the thread's buffer is used again afterwards.
        let again = serialized(&"x", |bytes| bytes.map(<[u8]>::to_vec).unwrap_or_default());
        assert_eq!(again, br#""x""#.to_vec());
    }

    #[tokio::test]
    async fn an_allowed_call_goes_ahead_only_once_its_decision_is_recorded() {
        let forwarded = |verdict: Verdict| match verdict {
            Verdict::ForwardAfter(pending) => pending,
            other => panic!("{other:?}"),
        };
        // Not yet durable: the call waits.
        let (record, ticket) = tokio::sync::oneshot::channel();
        let mut pending = forwarded(durable_first(
            tollgate_audit::Ticket::from_receiver(ticket),
            Verdict::ForwardWith(Credential::new("t")),
        ));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut pending.0)
                .await
                .is_err(),
            "forwarded before its record was written"
        );
        record.send(Ok(7)).unwrap();
        let credential = pending.0.await.unwrap().unwrap();
        assert_eq!(credential.expose(), "t");
        // Never written: refused.
        let (record, ticket) = tokio::sync::oneshot::channel();
        let pending = forwarded(durable_first(
            tollgate_audit::Ticket::from_receiver(ticket),
            Verdict::Forward,
        ));
        record
            .send(Err(tollgate_audit::AuditError::Failed {
                dir: "d".into(),
                reason: "disk full".into(),
            }))
            .unwrap();
        let refused = pending.0.await.unwrap_err();
        assert!(refused.contains("could not record"), "{refused}");
        assert!(
            !refused.contains("disk full"),
            "the agent is not told the operator's detail"
        );
        // Refusals are not held.
        assert!(matches!(
            durable_first(
                tollgate_audit::Ticket::from_receiver(tokio::sync::oneshot::channel().1),
                Verdict::Hide
            ),
            Verdict::Hide
        ));
    }
}
