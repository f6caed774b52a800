//! The pin stage: how a tool's definition stands against the lock file of reviewed
//! definitions. A tool whose definition left its pin is refused, or, where the configuration
//! lets an approver vouch for it, what the pack allows waits for a person out of band.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use tollgate_policy::{Decision, Effect, ToolFacts};
use tollgate_proxy::{
    config::PinChanged,
    pins::{Lock, LockError, PinState},
};

/// The step named in a decision held because the tool's definition left its pin.
pub(crate) const PIN_CHANGED: &str = "tollgate:pin-changed";

/// The lock file of pinned tool definitions, what it holds (reread on reload), and what a
/// changed definition gets.
pub(crate) struct Pins {
    lock: Option<(PathBuf, RwLock<Arc<Lock>>)>,
    on_change: PinChanged,
}

/// A call of a tool whose definition differs from its pin, where that is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unpinned(pub String);

impl Pins {
    /// The pins of the lock file at `path` (none: nothing is pinned).
    pub(crate) fn load(path: Option<&PathBuf>, on_change: PinChanged) -> Result<Self, LockError> {
        let lock = match path {
            None => None,
            Some(path) => {
                let lock = Lock::load(path)?;
                tracing::info!(lock = %path.display(), tools = lock.pins().count(), "tool definitions pinned");
                Some((path.clone(), RwLock::new(Arc::new(lock))))
            }
        };
        Ok(Self { lock, on_change })
    }

    /// Reads the lock file again: re-pinning takes effect on the next call.
    pub(crate) fn reload(&self) -> Result<(), LockError> {
        if let Some((path, current)) = &self.lock {
            let lock = Lock::load(path)?;
            *current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(lock);
        }
        Ok(())
    }

    /// How `facts`' tool stands against the lock file; `Unpinned` without one.
    pub(crate) fn state(&self, facts: &ToolFacts) -> PinState {
        let (Some((_, lock)), Some((name, digest))) = (&self.lock, facts.definition()) else {
            return PinState::Unpinned;
        };
        lock.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .state(facts.upstream(), name, digest)
    }

    /// Whether a call of `tool`, standing `state`, may be decided at all.
    pub(crate) fn admit(&self, tool: &str, state: PinState) -> Result<(), Unpinned> {
        if state == PinState::Changed && self.on_change == PinChanged::Refuse {
            return Err(Unpinned(format!(
                "denied: the definition of `{tool}` has changed since it was pinned; it cannot be called until it is reviewed and pinned again (`tollgate pin`)"
            )));
        }
        Ok(())
    }
}

/// A tool that left its pin, where an approver may vouch for it: what the pack would allow
/// now waits for a person, out of band.
pub(crate) fn vouch(tool: &str, state: PinState, decision: &mut Decision) {
    if state == PinState::Changed && decision.effect != Effect::Deny {
        decision.effect = Effect::NeedsApproval;
        decision.in_band = false;
        decision.policies.push(PIN_CHANGED.to_owned());
        decision.reasons.insert(
            0,
            format!(
                "the definition of `{tool}` has changed since it was pinned (review it before approving)"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_definition_is_refused_or_admitted_for_a_person_as_configured() {
        let refuse = Pins::load(None, PinChanged::Refuse).unwrap();
        let approve = Pins::load(None, PinChanged::Approve).unwrap();
        assert!(refuse.admit("fs.read", PinState::Pinned).is_ok());
        assert!(refuse.admit("fs.read", PinState::Unpinned).is_ok());
        let Unpinned(refused) = refuse.admit("fs.read", PinState::Changed).unwrap_err();
        assert!(
            refused.contains("`fs.read`") && refused.contains("tollgate pin"),
            "{refused}"
        );
        assert!(approve.admit("fs.read", PinState::Changed).is_ok());
    }
}
