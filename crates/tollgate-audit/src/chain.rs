//! What links records: the hash of each line, and what a checkpoint signs.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// The `prev` of the very first record of a trail.
pub const GENESIS: &str = "genesis";

/// The hash a record's successor carries as `prev`: SHA-256 of the line's bytes as written
/// (without its newline), base64url.
pub fn line_hash(line: &[u8]) -> String {
    let mut hash = String::with_capacity(43);
    write_line_hash(line, &mut hash);
    hash
}

/// [`line_hash`], appended to `out`.
pub(crate) fn write_line_hash(line: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(Sha256::digest(line), out);
}

/// The bytes a checkpoint's signature covers: its sequence number and the hash of the record
/// before it, which covers every record before that.
pub fn checkpoint_message(seq: u64, prev: &str) -> Vec<u8> {
    format!("tollgate-audit-checkpoint\n{seq}\n{prev}").into_bytes()
}

/// Signs checkpoints: Tollgate's key.
pub trait CheckpointSigner: Send + Sync + 'static {
    /// The id of the key, recorded with each checkpoint.
    fn kid(&self) -> String;
    /// A signature over `message`, base64url.
    fn sign(&self, message: &[u8]) -> String;
}

/// Checks checkpoint signatures: the public half of Tollgate's key.
pub trait CheckpointVerifier {
    fn kid(&self) -> String;
    fn verify(&self, message: &[u8], signature: &str) -> bool;
}
