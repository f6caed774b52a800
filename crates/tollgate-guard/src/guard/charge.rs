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
