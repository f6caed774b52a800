//! The decide stage: the pack's decision on a call, with the grant, the history's standing
//! and the environment; then Tollgate's own files refused whatever the pack says, and the
//! shadow pack's decision beside it (never enforced). What replay needs is kept where there
//! is a trail.

use std::collections::HashSet;

use tollgate_policy::{
    CallInput, Decision, Effect, Environment, Grant, Pack, SessionFacts, ToolFacts,
    recorded::InputRecord,
};
use tollgate_proxy::{intercept::ToolCall, paths::Protected, pins::PinState};
use tracing::{info, warn};

use super::Standing;

/// What a decision is made with, besides the call.
pub(crate) struct Deciding<'a> {
    pub(crate) pack: &'a Pack,
    /// A candidate pack decided beside the live one, never enforced.
    pub(crate) shadow: Option<std::sync::Arc<Pack>>,
    pub(crate) env: &'a Environment,
    /// The upstreams on this machine: their paths are judged as this filesystem resolves them.
    pub(crate) local: &'a HashSet<String>,
    /// Tollgate's own folders and files, which no call reaches.
    pub(crate) protected: &'a Protected,
    /// Whether the replay input is kept (there is a trail).
    pub(crate) keep_input: bool,
    pub(crate) metrics: &'a crate::metrics::Metrics,
}

impl Deciding<'_> {
    pub(crate) fn decide<'f>(
        &self,
        call: &ToolCall<'_>,
        grant: Option<&Grant>,
        facts: &'f ToolFacts,
        justification: Option<&str>,
        standing: &Standing,
    ) -> (Decision, Option<InputRecord<'f>>, Option<Decision>) {
        let session = SessionFacts {
            id: call.session.to_string(),
            transport: call.caller.transport.to_owned(),
            address: call.caller.address.clone().unwrap_or_default(),
        };
        let input = CallInput {
            session: &session,
            grant,
            tool: facts,
            arguments: call.arguments,
            justification,
            now: standing.now,
            env: self.env,
            stats: &standing.kept.stats,
            // Only this grant's limits; `charge` checks again, atomically, before spending.
            usage: &standing.kept.usage,
            taint: &standing.kept.taint,
            pinned: standing.pin == PinState::Pinned,
            paths: self
                .local
                .contains(call.upstream)
                .then_some(&tollgate_proxy::paths::LocalPaths as &dyn tollgate_policy::PathView),
        };
        let mut decision = self.pack.decide(&input);
        // What replay needs to decide this call again, kept only where there is a trail.
        let recorded = match (self.keep_input, facts.entry()) {
            (true, Some(entry)) => Some(InputRecord::of(&input, &entry.0, &decision)),
            _ => None,
        };
        // Tollgate's own files, whatever the grant and the pack say (after the replay input,
        // which keeps the engine's own answer).
        if let Some(reason) = self.protected.refuses(decision.class, &decision.resources) {
            warn!(tool = call.exposed_name, %reason, "refused: the call reaches Tollgate's own files");
            decision.effect = Effect::Deny;
            decision.policies = vec![tollgate_proxy::paths::SELF_STEP.to_owned()];
            decision.reasons = vec![reason];
            decision.approvers.clear();
            decision.in_band = false;
        }
        let shadow = self.shadow.as_ref().and_then(|shadow| {
            let decided = shadow.decide(&input);
            self.metrics
                .shadowed(decision.effect, decided.effect, call.upstream, call.tool);
            (decided.effect != decision.effect || decided.policies != decision.policies).then(
                || {
                    info!(
                        tool = call.exposed_name,
                        live = decision.effect.as_str(),
                        shadow = decided.effect.as_str(),
                        shadow_policies = ?decided.policies,
                        shadow_version = shadow.version(),
                        "the shadow pack decides this call differently (not enforced)"
                    );
                    decided
                },
            )
        });
        (decision, recorded, shadow)
    }
}
