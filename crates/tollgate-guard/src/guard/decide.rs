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
            provenance: Some(&standing.provenance),
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

#[cfg(test)]
mod tests {
    use rmcp::model::RequestMetaObject;
    use serde_json::{Map, Value, json};
    use tollgate_policy::{ActionClass, Hints, SchemaCache};
    use tollgate_proxy::intercept::Caller;

    use super::*;

    fn read_text_file() -> ToolFacts {
        let schema: Map<String, Value> = json!({
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"]
        })
        .as_object()
        .cloned()
        .unwrap();
        ToolFacts::new(
            "fs.read_text_file",
            "fs",
            Hints::default(),
            Some("/srv".to_owned()),
            SchemaCache::default().compile(&schema),
        )
        .with_entry(&schema)
    }

    fn pack(rules: &str) -> (tempfile::TempDir, Pack) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pack.toml"),
            "purposes = [\"maintenance\"]\n[[tool]]\ntool = \"fs.read_text_file\"\nclass = \"read\"\nresources = { path = \"path\" }\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("rules.cedar"), rules).unwrap();
        let pack = Pack::compile(&crate::pack_files::read_pack(dir.path()).unwrap()).unwrap();
        (dir, pack)
    }

    #[test]
    fn tollgates_own_files_are_refused_whatever_the_pack_allows_and_the_shadow_is_kept_apart() {
        let (_live_dir, live) =
            pack(r#"@id("reads") permit (principal, action == Action::"read", resource);"#);
        let (_shadow_dir, shadow) = pack(r#"@id("nothing") forbid (principal, action, resource);"#);
        let grant = Grant {
            resources: ["path:/srv/**".parse().unwrap()].into(),
            ..Grant::root(
                tollgate_mint::new_grant_id().unwrap(),
                "maintenance",
                [ActionClass::Read],
                tollgate_mint::unix_now(),
                3600,
            )
        };
        let facts = read_text_file();
        let (meta, caller) = (RequestMetaObject::new(), Caller::stdio(None));
        let metrics = crate::metrics::Metrics::default();
        let (env, local) = (Environment::default(), HashSet::new());
        let protected = Protected::new([std::path::Path::new("/srv/state")]);
        let deciding = Deciding {
            pack: &live,
            shadow: Some(std::sync::Arc::new(shadow)),
            env: &env,
            local: &local,
            protected: &protected,
            keep_input: true,
            metrics: &metrics,
        };
        let standing = Standing {
            now: tollgate_mint::unix_now(),
            kept: crate::store::Standing::default(),
            pin: PinState::Unpinned,
            provenance: tollgate_policy::Provenance::default(),
        };
        let decide = |path: &str| {
            let arguments = json!({ "path": path }).as_object().cloned().unwrap();
            let call = ToolCall {
                session: 1,
                upstream: "fs",
                tool: "read_text_file",
                exposed_name: "fs.read_text_file",
                arguments: Some(&arguments),
                meta: &meta,
                caller: &caller,
                facts: Some(&facts),
                can_ask: false,
                number: 1,
            };
            let (decision, input, shadow) =
                deciding.decide(&call, Some(&grant), &facts, None, &standing);
            (decision, input.is_some(), shadow)
        };
        let (work, kept, shadow) = decide("docs/readme.md");
        assert_eq!(work.effect, Effect::Allow, "{work:?}");
        assert!(kept, "the replay input is kept where there is a trail");
        let shadow = shadow.expect("the shadow pack decides otherwise, and that is kept");
        assert_eq!(shadow.effect, Effect::Deny);
        let (own, _, _) = decide("state/audit/audit-0.jsonl");
        assert_eq!(own.effect, Effect::Deny, "{own:?}");
        assert_eq!(own.policies, [tollgate_proxy::paths::SELF_STEP]);
    }
}
