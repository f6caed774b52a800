//! Revoked grants: an append-only file of ids in the state folder. Revoking a grant revokes
//! every grant narrowed from it, because a grant carries its whole lineage. Whoever checks
//! grants re-reads the file when it changes, so a revocation holds from the next call.

use std::{
    collections::HashSet,
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::RwLock,
    time::SystemTime,
};

use tollgate_policy::{Grant, grant::is_grant_id};

use crate::{err::MintError, token::TokenError};

const FILE: &str = "revoked-grants";

/// Appends `id` to the revocation list in `state_dir`, durably.
pub fn revoke(state_dir: &Path, id: &str) -> Result<(), MintError> {
    if !is_grant_id(id) {
        return Err(MintError::BadId { id: id.to_owned() });
    }
    crate::keys::create_dir_private(state_dir)?;
    let path = state_dir.join(FILE);
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(&path)
        .map_err(MintError::io(&path))?;
    file.write_all(format!("{id}\n").as_bytes())
        .map_err(MintError::io(&path))?;
    file.sync_all().map_err(MintError::io(&path))
}

/// What the file looked like when last read: modification time and length.
type Stamp = Option<(SystemTime, u64)>;

/// The revocation list as last read, and what the file looked like then.
#[derive(Debug)]
pub struct RevocationList {
    path: PathBuf,
    state: RwLock<(Stamp, HashSet<String>)>,
}

impl RevocationList {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE),
            state: RwLock::new((None, HashSet::new())),
        }
    }

    /// Re-reads the file if it changed since the last look. A file that cannot be read keeps
    /// the last list and reports why; a list never shrinks by accident.
    pub fn refresh(&self) -> Result<(), MintError> {
        let stamp = match fs::metadata(&self.path) {
            Ok(meta) => Some((
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(MintError::io(&self.path)(e)),
        };
        {
            let state = self
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if state.0 == stamp && stamp.is_some() {
                return Ok(());
            }
        }
        let ids: HashSet<String> = match stamp {
            None => HashSet::new(),
            Some(_) => fs::read_to_string(&self.path)
                .map_err(MintError::io(&self.path))?
                .lines()
                .map(str::trim)
                .filter(|l| is_grant_id(l))
                .map(str::to_owned)
                .collect(),
        };
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Ids only accumulate: a file truncated under us does not un-revoke anything.
        state.1.extend(ids);
        state.0 = stamp;
        Ok(())
    }

    /// Is any of `ids` revoked?
    pub fn any_revoked<'a>(&self, mut ids: impl Iterator<Item = &'a str>) -> bool {
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.any(|id| state.1.contains(id))
    }

    /// Refuses `grant` if it or any grant it was narrowed from is revoked.
    pub fn check(&self, grant: &Grant) -> Result<(), TokenError> {
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match grant.lineage().find(|id| state.1.contains(*id)) {
            None => Ok(()),
            Some(id) if id == grant.id => Err(TokenError::Revoked {
                id: grant.id.clone(),
                via: String::new(),
            }),
            Some(ancestor) => Err(TokenError::Revoked {
                id: grant.id.clone(),
                via: format!(" (its parent {ancestor} was revoked)"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tollgate_policy::{ActionClass, NarrowRequest};

    use super::*;
    use crate::{GrantSigner, new_grant_id};

    fn grant(now: i64) -> Grant {
        Grant {
            id: new_grant_id().unwrap(),
            iss: "tollgate".into(),
            iat: now,
            exp: now + 600,
            chain: Vec::new(),
            purpose: "support".into(),
            task: "refund order 1".into(),
            agent: None,
            user: Some("ada".into()),
            resources: BTreeSet::from(["customer:42".parse().unwrap()]),
            approve: BTreeSet::new(),
            actions: BTreeSet::from([ActionClass::Read, ActionClass::Payment]),
            tools: BTreeSet::from(["payments.*".to_owned()]),
            constraints: Vec::new(),
            limits: Vec::new(),
        }
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering_and_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let signer = GrantSigner::load_or_create(dir.path()).unwrap();
        let now = 1_800_000_000;
        let g = grant(now);
        let token = signer.sign(&g).unwrap();
        let verifier = crate::GrantVerifier::load(dir.path()).unwrap();
        assert_eq!(verifier.verify(&token, now + 1).unwrap(), g);

        // The same signer after a restart uses the same key.
        let again = GrantSigner::load_or_create(dir.path()).unwrap();
        assert_eq!(again.verifier().verify(&token, now).unwrap(), g);

        // A payload with a widened action keeps the old signature: refused.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["actions"] = serde_json::json!(["admin", "payment", "read"]);
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        assert_eq!(
            verifier.verify(&parts.join("."), now),
            Err(TokenError::Signature)
        );

        // Another state folder, another key.
        let other = tempfile::tempdir().unwrap();
        let stranger = GrantSigner::load_or_create(other.path()).unwrap();
        assert_eq!(
            verifier.verify(&stranger.sign(&g).unwrap(), now),
            Err(TokenError::Signature)
        );

        assert!(matches!(
            verifier.verify(&token, now + 600),
            Err(TokenError::Time(_))
        ));
        for junk in ["", "a.b", "a.b.c", "....", &"x".repeat(20_000)] {
            assert!(verifier.verify(junk, now).is_err(), "{junk}");
        }
    }

    #[test]
    fn the_private_key_is_owner_only_and_refused_otherwise() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        GrantSigner::load_or_create(dir.path()).unwrap();
        let key = dir.path().join("grant-signing.key");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            GrantSigner::load_or_create(dir.path()),
            Err(MintError::Exposed { .. })
        ));
    }

    #[test]
    fn revoking_a_parent_revokes_its_children_from_the_next_check() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let parent = grant(now);
        let child = parent
            .narrow(
                NarrowRequest {
                    actions: Some(BTreeSet::from([ActionClass::Read])),
                    ..NarrowRequest::default()
                },
                now,
                new_grant_id().unwrap(),
            )
            .unwrap();
        let list = RevocationList::new(dir.path());
        list.refresh().unwrap();
        list.check(&child).unwrap();
        revoke(dir.path(), &parent.id).unwrap();
        list.refresh().unwrap();
        assert!(list.check(&parent).is_err());
        let err = list.check(&child).unwrap_err().to_string();
        assert!(err.contains(&parent.id) && err.contains(&child.id), "{err}");
        assert!(revoke(dir.path(), "not-an-id").is_err());
    }
}
