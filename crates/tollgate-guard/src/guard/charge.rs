//! The charge stage: an allowed call spends what it uses of the pack's session limits and of
//! its grant's limits, in one atomic step of the store, so that two calls at once cannot both
//! spend the last of a budget; a call either limit refuses becomes a denial and spends nothing.

use tollgate_policy::{Decision, Effect, Grant, Pack};
use tollgate_proxy::{intercept::ToolCall, session::SessionId};

use crate::store::{Charged, Charges, Store, StoreError};

/// Charges an allowed call to the pack's session limits that apply to it and to its
/// grant's limits, atomically with their check; on a refusal `decision` becomes a denial
/// and nothing is charged.
pub(crate) async fn charge(
    store: &dyn Store,
    history: SessionId,
    pack: &Pack,
    call: &ToolCall<'_>,
    grant: Option<&Grant>,
    decision: &mut Decision,
) -> Result<(), StoreError> {
    let applying: Vec<&tollgate_policy::SessionLimit> = pack
        .session_limits()
        .iter()
        .filter(|l| l.applies(call.exposed_name, decision.class))
        .collect();
    let spends = grant.filter(|_| !decision.charges.is_empty());
    if applying.is_empty() && spends.is_none() {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let charged = store
        .charge(Charges {
            key: history,
            session: &applying,
            arguments: call.arguments,
            grant: spends.map(|g| (g, decision.charges.as_slice())),
            now,
        })
        .await?;
    if let Charged::Refused { policy, reason } = charged {
        decision.effect = Effect::Deny;
        decision.policies = vec![policy];
        decision.reasons = vec![reason];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rmcp::model::RequestMetaObject;
    use tollgate_policy::{ActionClass, Charge, Risk};
    use tollgate_proxy::intercept::Caller;

    use super::*;
    use crate::store::MemoryStore;

    fn allowed(charges: Vec<Charge>) -> Decision {
        Decision {
            effect: Effect::Allow,
            policies: vec!["reads".to_owned()],
            charges,
            ..Decision::undecided("v", ActionClass::Read, Risk::Low)
        }
    }

    #[tokio::test]
    async fn a_call_past_a_session_limit_becomes_a_denial_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pack.toml"),
            "purposes = [\"p\"]\n[[tool]]\ntool = \"*\"\nclass = \"read\"\n[[limit]]\nid = \"two\"\ntool = \"echo\"\ncalls = 2\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("rules.cedar"),
            "@id(\"reads\") permit (principal, action == Action::\"read\", resource);",
        )
        .unwrap();
        let pack = Pack::compile(&crate::pack_files::read_pack(dir.path()).unwrap()).unwrap();
        let store = MemoryStore::default();
        let (meta, caller) = (RequestMetaObject::new(), Caller::stdio(None));
        let call = |tool| ToolCall {
            session: 1,
            upstream: "u",
            tool,
            exposed_name: tool,
            arguments: None,
            meta: &meta,
            caller: &caller,
            facts: None,
            can_ask: false,
            number: 1,
        };
        for _ in 0..2 {
            let mut decision = allowed(Vec::new());
            charge(&store, 1, &pack, &call("echo"), None, &mut decision)
                .await
                .unwrap();
            assert_eq!(decision.effect, Effect::Allow);
        }
        let mut third = allowed(Vec::new());
        charge(&store, 1, &pack, &call("echo"), None, &mut third)
            .await
            .unwrap();
        assert_eq!(third.effect, Effect::Deny);
        assert_eq!(third.policies, ["tollgate:limit:two"]);
        // Another tool, and another session, are not held to it.
        let mut other = allowed(Vec::new());
        charge(&store, 1, &pack, &call("add"), None, &mut other)
            .await
            .unwrap();
        assert_eq!(other.effect, Effect::Allow);
        let mut fresh = allowed(Vec::new());
        charge(&store, 2, &pack, &call("echo"), None, &mut fresh)
            .await
            .unwrap();
        assert_eq!(fresh.effect, Effect::Allow);
    }
}
