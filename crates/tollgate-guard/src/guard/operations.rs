//! What the admin endpoint does over the guard's state, apart from deciding calls: the
//! published keys and their rotation, introspection and revocation of minted tokens, the
//! signed revocation list, approvers, quarantined sessions, and the metrics page.

use tollgate_mint::AccessKeys;
use tollgate_proxy::approvals::{Approvals, Approver};
use tracing::{info, warn};

use super::{GuardError, PolicyGuard, Quarantine, now};
use crate::store::StoreError;

impl PolicyGuard {
    /// The JWKS of the per-call signing keys (empty when no upstream takes minted credentials).
    pub fn jwks(&self) -> serde_json::Value {
        self.credentials
            .minter
            .as_ref()
            .map_or_else(|| serde_json::json!({"keys": []}), AccessKeys::jwks)
    }

    /// The base every trust path's issuer is named from.
    pub fn issuer(&self) -> &str {
        &self.credentials.issuer
    }

    /// The approver whose admin-endpoint token this is. Compared as digests, so the time
    /// taken says nothing about a guess.
    pub fn approver(&self, token: &str) -> Option<Approver> {
        use sha2::{Digest, Sha256};
        let presented = Sha256::digest(token.as_bytes());
        self.approval
            .approvers
            .iter()
            .find(|(secret, _)| Sha256::digest(secret.expose().as_bytes()) == presented)
            .map(|(_, approver)| approver.clone())
    }

    /// The sessions held for review; none when the store cannot say.
    pub async fn quarantined(&self) -> Result<Vec<Quarantine>, StoreError> {
        self.store.quarantined().await
    }

    /// Releases a session held for review (`session` as [`Quarantine::session`] names it):
    /// its recent denials are forgotten and its calls are decided again. False when it is
    /// not held.
    pub async fn release(&self, session: &str) -> Result<bool, StoreError> {
        self.store.release(session).await
    }

    /// What `/metrics` shows, as of now.
    pub fn metrics_text(&self) -> String {
        let gauges = crate::metrics::Gauges {
            approvals_pending: self.approvals.pending(),
            sessions: self.grants.sessions_served(),
            audit: self.trail.audit.as_ref().map(|audit| {
                let stats = audit.stats();
                crate::metrics::AuditGauges {
                    records: stats.records.load(std::sync::atomic::Ordering::Relaxed),
                    syncs: stats.syncs.load(std::sync::atomic::Ordering::Relaxed),
                    batches: stats.batch.snapshot(),
                    failed: audit.failure().is_some(),
                }
            }),
        };
        self.metrics.render(&gauges)
    }

    /// The approval requests: what approvers list, show and answer.
    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    /// Keeps the signing keys current: rereads a keyring rotated by another process and, once a
    /// minute, rotates the paths whose key is due.
    pub fn keep_keys(&self, now: i64) {
        let Some(minter) = &self.credentials.minter else {
            return;
        };
        if let Err(error) = minter.refresh(now) {
            warn!(%error, "the signing keyring cannot be reread; the keys in use keep signing");
        }
        let (Some(every), ahead) = self.rotation else {
            return;
        };
        let checked = self
            .rotation_checked
            .load(std::sync::atomic::Ordering::Relaxed);
        if now - checked < 60 {
            return;
        }
        self.rotation_checked
            .store(now, std::sync::atomic::Ordering::Relaxed);
        match minter.rotate_due(every, ahead, now) {
            Ok(rotated) => {
                for r in rotated {
                    info!(path = r.path.as_str(), retired = %r.retired, current = %r.current, "signing key rotated on schedule");
                }
            }
            Err(error) => {
                warn!(%error, "scheduled key rotation failed; the keys in use keep signing")
            }
        }
    }

    /// Rotates every path's signing key now. `None` when no upstream takes minted credentials.
    pub fn rotate_keys(&self) -> Option<Result<Vec<tollgate_mint::Rotated>, GuardError>> {
        let minter = self.credentials.minter.as_ref()?;
        let result = minter.rotate_now(now()).map_err(GuardError::from);
        if let Ok(rotated) = &result {
            for r in rotated {
                info!(path = r.path.as_str(), retired = %r.retired, current = %r.current, "signing key rotated on demand");
            }
        }
        Some(result)
    }

    /// Introspection (RFC 7662): the claims of `token` while it is live, `None` otherwise.
    pub fn introspect(&self, token: &str) -> Option<tollgate_mint::Issued> {
        let claims = self.credentials.minter.as_ref()?.signed_by_us(token)?;
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let grant = claims
            .pointer("/authorization_details/0/grant_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let issued = tollgate_mint::Issued {
            jti: text("jti")?,
            iss: text("iss")?,
            sub: text("sub")?,
            client_id: text("client_id")?,
            aud: text("aud")?,
            scope: text("scope")?,
            sid: text("sid")?,
            iat: claims.get("iat")?.as_i64()?,
            exp: claims.get("exp")?.as_i64()?,
            grants: grant.into_iter().collect(),
        };
        // A grant revoked since keeps the tokens minted under it from being active.
        let _ = self.grants.revocations().refresh();
        self.ledger.active(issued, now(), |grants| {
            self.grants
                .revocations()
                .any_revoked(grants.iter().map(String::as_str))
        })
    }

    /// Revokes one minted token; false when no live token has that id.
    pub fn revoke_token(&self, jti: &str) -> bool {
        self.ledger.revoke_token(jti)
    }

    /// Revokes a session: its tokens stop being active and its next call is refused.
    pub fn revoke_session(&self, session: &str) {
        self.ledger.revoke_session(session, now());
    }

    /// The revocation list, signed on the revoke path.
    pub fn revocation_list(&self) -> Option<String> {
        let minter = self.credentials.minter.as_ref()?;
        let now = now();
        let (jtis, sessions) = self.ledger.revocations(now);
        let claims = serde_json::json!({
            "iss": format!("{}/revoke", self.credentials.issuer),
            "iat": now,
            "exp": now + 60,
            "revoked_jtis": jtis,
            "sessions_issued_before": sessions,
        });
        minter
            .sign_claims(
                tollgate_mint::TrustPath::Revoke,
                "tollgate-revocations+jwt",
                &claims,
            )
            .ok()
    }
}
