//! The first stage, identify: the grant a call runs under (its signature and claims checked
//! once per token, its time and revocation on every call, one grant per session, anonymous
//! only where configured), and where the call's history is kept.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use tollgate_mint::{GrantVerifier, RevocationList, TokenError};
use tollgate_policy::Grant;
use tollgate_proxy::{intercept::Caller, session::SessionId};
use tracing::warn;

/// Verified grants kept, by token; the cache is emptied when it grows past this.
const GRANT_CACHE: usize = 4096;

/// The high bit marks a history key made for stateless requests, apart from session ids.
pub(crate) const STATELESS_KEY: u64 = 1 << 63;

/// A token's signature and claims, checked once.
type Checked = Result<Arc<Granted>, TokenError>;

/// A verified grant, with the key its trail record is named by: made once per token, so that
/// a call names its grant's record without building anything.
pub(crate) struct Granted {
    pub(crate) grant: Grant,
    key: String,
    /// The values the grant names, which a call's arguments are intent when they carry.
    pub(crate) intent: tollgate_policy::provenance::Intent,
}

impl Granted {
    fn new(grant: Grant) -> Self {
        let key = tollgate_policy::recorded::grant_key(&grant);
        let intent = tollgate_policy::provenance::Intent::of(Some(&grant));
        Self { grant, key, intent }
    }
}

impl std::ops::Deref for Granted {
    type Target = Grant;

    fn deref(&self) -> &Grant {
        &self.grant
    }
}

/// The grant's claims, written once per trail file before the first decision that names it.
impl tollgate_audit::Define for Granted {
    fn key(&self) -> &str {
        &self.key
    }

    fn record(&self) -> serde_json::Map<String, serde_json::Value> {
        tollgate_policy::recorded::grant_entry(&self.grant)
    }
}

/// The grant state of one call.
pub(crate) enum Presented {
    Grant(Arc<Granted>),
    Anonymous,
}

impl Presented {
    /// The verified grant, unless the session runs anonymously.
    pub(crate) fn shared(&self) -> Option<&Arc<Granted>> {
        match self {
            Self::Grant(granted) => Some(granted),
            Self::Anonymous => None,
        }
    }
}

/// What identifies calls: the grant key's verifier, the revocation list, the verified grants
/// by token, and the grant each session of this process runs under.
pub(crate) struct Grants {
    verifier: Result<GrantVerifier, String>,
    revocations: RevocationList,
    anonymous: bool,
    grants: Mutex<HashMap<Arc<str>, Checked>>,
    /// The sessions this process serves, with the grant each runs under once it presented one.
    sessions: Mutex<HashMap<SessionId, Option<String>>>,
}

impl Grants {
    /// Grants checked with the key in `state_dir`; `anonymous`: a session that presents no
    /// grant runs under the pack's anonymous rules.
    pub(crate) fn new(state_dir: &Path, anonymous: bool) -> Self {
        let verifier = GrantVerifier::load(state_dir).map_err(|e| e.to_string());
        if let Err(e) = &verifier {
            warn!(error = %e, "no grant key: every grant is refused");
        }
        Self {
            verifier,
            revocations: RevocationList::new(state_dir),
            anonymous,
            grants: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn revocations(&self) -> &RevocationList {
        &self.revocations
    }

    /// Sessions this process serves.
    pub(crate) fn sessions_served(&self) -> usize {
        self.sessions().len()
    }

    /// Forgets an ended session's grant.
    pub(crate) fn ended(&self, session: SessionId) {
        self.sessions().remove(&session);
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Option<String>>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The grant `caller` presented, checked; or anonymous when allowed; or why not.
    pub(crate) fn presented(
        &self,
        session: SessionId,
        caller: &Caller,
        now: i64,
    ) -> Result<Presented, String> {
        let checked = match &caller.grant {
            None => Err(format!(
                "no grant was presented: {}",
                match caller.transport {
                    "http" => "send it as `Authorization: Bearer <grant>`",
                    _ => "start Tollgate with `--grant FILE` or `TOLLGATE_GRANT`",
                }
            )),
            Some(token) => self.verify(token, now),
        };
        match checked {
            Ok(grant) => {
                let mut sessions = self.sessions();
                let bound = sessions.entry(session).or_default();
                match bound {
                    Some(id) if *id != grant.id => Err(format!(
                        "this session runs under grant {id}; a request presented {}",
                        grant.id
                    )),
                    Some(_) => Ok(Presented::Grant(grant)),
                    None => {
                        *bound = Some(grant.id.clone());
                        Ok(Presented::Grant(grant))
                    }
                }
            }
            // Only a session that presents no grant runs anonymously: a bad grant is not
            // quietly downgraded, the agent learns why it was refused.
            Err(_) if self.anonymous && caller.grant.is_none() => Ok(Presented::Anonymous),
            Err(reason) => Err(reason),
        }
    }

    fn verify(&self, token: &Arc<str>, now: i64) -> Result<Arc<Granted>, String> {
        let verifier = self.verifier.as_ref().map_err(|_| {
            "grants cannot be checked here: Tollgate has no grant key (see its log)".to_owned()
        })?;
        let cached = self
            .grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            .cloned();
        let grant = match cached {
            Some(result) => result,
            None => {
                let result = verifier
                    .verify(token, now)
                    .map(|grant| Arc::new(Granted::new(grant)));
                // Time is judged on every call; only what never changes is kept.
                if !matches!(result, Err(TokenError::Time(_))) {
                    let mut cache = self
                        .grants
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if cache.len() >= GRANT_CACHE {
                        cache.clear();
                    }
                    cache.insert(token.clone(), result.clone());
                }
                result
            }
        }
        .map_err(|e| e.to_string())?;
        grant.check_time(now).map_err(|e| e.to_string())?;
        if let Err(e) = self.revocations.refresh() {
            warn!(error = %e, "the revocation list cannot be read; refusing grants until it can");
            return Err(
                "the revocation list cannot be read; the grant cannot be accepted".to_owned(),
            );
        }
        self.revocations.check(&grant).map_err(|e| e.to_string())?;
        Ok(grant)
    }
}

/// Where a call's history is kept: its session's, or for a stateless request (each its own
/// session) its grant's, or without a grant its address's.
pub(crate) fn history_key(session: SessionId, caller: &Caller, grant: Option<&Grant>) -> SessionId {
    use std::hash::{BuildHasher, Hasher};
    if !caller.stateless {
        return session;
    }
    let mut hasher =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    match grant {
        Some(g) => hasher.write(g.id.as_bytes()),
        None => hasher.write(caller.address.as_deref().unwrap_or("").as_bytes()),
    }
    hasher.finish() | STATELESS_KEY
}

#[cfg(test)]
mod tests {
    use tollgate_policy::ActionClass;

    use super::*;

    fn grant() -> Grant {
        Grant::root(
            tollgate_mint::new_grant_id().unwrap(),
            "maintenance",
            [ActionClass::Read],
            tollgate_mint::unix_now(),
            3600,
        )
    }

    fn signed(state: &Path, grant: &Grant) -> Caller {
        let signer = tollgate_mint::GrantSigner::load_or_create(state).unwrap();
        Caller::stdio(Some(signer.sign(grant).unwrap()))
    }

    fn presented_id(presented: Result<Presented, String>) -> Result<Option<String>, String> {
        presented.map(|p| match p {
            Presented::Grant(g) => Some(g.id.clone()),
            Presented::Anonymous => None,
        })
    }

    #[test]
    fn a_session_runs_under_the_first_grant_it_presents_and_no_other() {
        let state = tempfile::tempdir().unwrap();
        let (a, b) = (grant(), grant());
        let (with_a, with_b) = (signed(state.path(), &a), signed(state.path(), &b));
        let grants = Grants::new(state.path(), false);
        let now = tollgate_mint::unix_now();
        assert_eq!(
            presented_id(grants.presented(1, &with_a, now)),
            Ok(Some(a.id.clone()))
        );
        let refused = presented_id(grants.presented(1, &with_b, now)).unwrap_err();
        assert!(
            refused.contains(&a.id) && refused.contains(&b.id),
            "{refused}"
        );
        assert_eq!(
            presented_id(grants.presented(2, &with_b, now)),
            Ok(Some(b.id.clone())),
            "another session may run under another grant"
        );
        assert_eq!(grants.sessions_served(), 2);
        grants.ended(1);
        assert_eq!(
            presented_id(grants.presented(1, &with_b, now)),
            Ok(Some(b.id)),
            "an ended session's id starts afresh"
        );
    }

    #[test]
    fn no_grant_is_anonymous_only_where_configured_and_a_bad_grant_never_is() {
        let state = tempfile::tempdir().unwrap();
        let good = signed(state.path(), &grant());
        let now = tollgate_mint::unix_now();
        let closed = Grants::new(state.path(), false);
        let refused = presented_id(closed.presented(1, &Caller::stdio(None), now)).unwrap_err();
        assert!(refused.contains("no grant was presented"), "{refused}");
        let open = Grants::new(state.path(), true);
        assert_eq!(
            presented_id(open.presented(1, &Caller::stdio(None), now)),
            Ok(None)
        );
        // Signed by another key: refused, not downgraded to anonymous.
        let other = tempfile::tempdir().unwrap();
        let foreign = signed(other.path(), &grant());
        assert!(open.presented(2, &foreign, now).is_err());
        let tampered = Caller::stdio(Some(format!(
            "{}x",
            good.grant.as_deref().unwrap_or_default()
        )));
        assert!(open.presented(3, &tampered, now).is_err());
        // Expired by the time of the call, though its signature was checked before.
        assert!(open.presented(4, &good, now).is_ok());
        assert!(open.presented(4, &good, now + 7200).is_err());
    }

    #[test]
    fn a_revoked_grant_is_refused_from_the_next_call_on() {
        let state = tempfile::tempdir().unwrap();
        let g = grant();
        let caller = signed(state.path(), &g);
        let grants = Grants::new(state.path(), false);
        let now = tollgate_mint::unix_now();
        assert!(grants.presented(1, &caller, now).is_ok());
        tollgate_mint::revoke(state.path(), &g.id).unwrap();
        let refused = presented_id(grants.presented(1, &caller, now)).unwrap_err();
        assert!(refused.contains("revoked"), "{refused}");
    }

    #[test]
    fn stateless_requests_keep_their_history_by_grant_apart_from_sessions() {
        let (a, b) = (grant(), grant());
        let stateless = Caller {
            stateless: true,
            ..Caller::stdio(None)
        };
        let session = Caller::stdio(None);
        assert_eq!(history_key(5, &session, Some(&a)), 5);
        let (first, second) = (
            history_key(6, &stateless, Some(&a)),
            history_key(7, &stateless, Some(&a)),
        );
        assert_eq!(first, second, "one history per grant, whatever the request");
        assert_ne!(first & STATELESS_KEY, 0, "never a session's id");
        assert_ne!(history_key(6, &stateless, Some(&b)), first);
    }
}
