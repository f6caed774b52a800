//! What Tollgate has minted and revoked: the live per-call tokens (until they expire), the
//! revoked ones, and per-session "issued before" cut-offs. Introspection answers from here; the
//! signed revocation list resource servers poll is made from here.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use serde::Serialize;

/// What is kept of one minted token: enough to introspect it, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issued {
    pub jti: String,
    pub iss: String,
    pub sub: String,
    pub client_id: String,
    pub aud: String,
    pub scope: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    /// The grant it was minted under and every grant that one was narrowed from.
    pub grants: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    issued: HashMap<String, Issued>,
    /// Revoked `jti` → its expiry (kept until then).
    revoked: BTreeMap<String, i64>,
    /// Session → tokens issued at or before this instant are revoked.
    sessions: BTreeMap<String, i64>,
}

/// The minted-token ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<State>,
}

impl Ledger {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a minted token, forgetting those that have expired.
    pub fn record(&self, issued: Issued, now: i64) {
        let mut state = self.state();
        state.issued.retain(|_, i| i.exp > now);
        state.revoked.retain(|_, exp| *exp > now);
        state.issued.insert(issued.jti.clone(), issued);
    }

    /// Revokes one token. False when no live token has that `jti`.
    pub fn revoke_token(&self, jti: &str) -> bool {
        let mut state = self.state();
        let Some(exp) = state.issued.get(jti).map(|i| i.exp) else {
            return false;
        };
        state.revoked.insert(jti.to_owned(), exp);
        true
    }

    /// Revokes every token of `session` issued up to `now`.
    pub fn revoke_session(&self, session: &str, now: i64) {
        self.state().sessions.insert(session.to_owned(), now);
    }

    /// Has `session` been revoked?
    pub fn session_revoked(&self, session: &str) -> bool {
        self.state().sessions.contains_key(session)
    }

    /// The live token `jti`, if it is neither expired nor revoked, and its grants pass
    /// `grant_revoked`.
    pub fn active(
        &self,
        jti: &str,
        now: i64,
        grant_revoked: impl Fn(&[String]) -> bool,
    ) -> Option<Issued> {
        let state = self.state();
        let issued = state.issued.get(jti)?;
        let revoked = now >= issued.exp
            || state.revoked.contains_key(jti)
            || state
                .sessions
                .get(&issued.sid)
                .is_some_and(|cut| issued.iat <= *cut)
            || grant_revoked(&issued.grants);
        (!revoked).then(|| issued.clone())
    }

    /// The revocation list's claims: revoked `jti`s with their expiry, and session cut-offs.
    pub fn revocations(&self, now: i64) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
        let state = self.state();
        let jtis = state
            .revoked
            .iter()
            .filter(|(_, exp)| **exp > now)
            .map(|(j, e)| (j.clone(), *e))
            .collect();
        (jtis, state.sessions.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(jti: &str, sid: &str, iat: i64) -> Issued {
        Issued {
            jti: jti.into(),
            iss: "i".into(),
            sub: "s".into(),
            client_id: "c".into(),
            aud: "a".into(),
            scope: "tools:read".into(),
            sid: sid.into(),
            iat,
            exp: iat + 60,
            grants: vec!["g-00000000000000000000aaaa".into()],
        }
    }

    #[test]
    fn tokens_go_inactive_when_expired_or_revoked_any_way() {
        let ledger = Ledger::default();
        ledger.record(issued("t-1", "s1", 100), 100);
        ledger.record(issued("t-2", "s1", 100), 100);
        ledger.record(issued("t-3", "s2", 100), 100);
        let none = |_: &[String]| false;
        assert!(ledger.active("t-1", 101, none).is_some());
        assert!(ledger.active("t-1", 160, none).is_none(), "expired");
        assert!(ledger.revoke_token("t-1"));
        assert!(ledger.active("t-1", 101, none).is_none());
        assert!(!ledger.revoke_token("t-unknown"));
        ledger.revoke_session("s1", 100);
        assert!(ledger.active("t-2", 101, none).is_none());
        assert!(ledger.active("t-3", 101, none).is_some());
        assert!(
            ledger
                .active("t-3", 101, |g: &[String]| g
                    .iter()
                    .any(|id| id.ends_with("aaaa")))
                .is_none()
        );
        let (jtis, sessions) = ledger.revocations(101);
        assert_eq!(jtis.keys().collect::<Vec<_>>(), ["t-1"]);
        assert_eq!(sessions.get("s1"), Some(&100));
    }
}
