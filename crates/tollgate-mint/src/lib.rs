//! Tollgate's key material: the grant-signing key kept in the state folder, grant tokens signed
//! and verified, and the revocation list. Nothing else in Tollgate holds a private key.

pub mod err;
pub mod keys;
pub mod revocation;
pub mod token;

pub use err::MintError;
pub use keys::{GrantSigner, GrantVerifier};
pub use revocation::{RevocationList, revoke};
pub use token::{TokenError, new_grant_id};
