//! Tollgate's key material: the grant-signing key and the per-call signing keys kept in the
//! state folder, grant tokens, per-call access tokens and their verifier, and the revocation
//! list. Nothing else in Tollgate holds a private key.

pub mod access;
pub mod err;
pub mod jcs;
pub mod keyring;
pub mod keys;
pub mod ledger;
pub mod revocation;
pub mod signing;
pub mod token;
pub mod verify;

pub use access::{AccessKeys, Algorithm, CallCredential, Minted, TrustPath};
pub use err::MintError;
pub use keyring::{KeyEntry, KeyState, Rotated};
pub use keys::{AUDIT_KEY, GrantSigner, GrantVerifier};
pub use ledger::{Issued, Ledger};
pub use revocation::{RevocationList, revoke};
pub use token::{TokenError, new_grant_id, new_id};
pub use verify::{Presented, Verifier, VerifierConfig, VerifyError};

/// Seconds since the Unix epoch by this host's clock.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
