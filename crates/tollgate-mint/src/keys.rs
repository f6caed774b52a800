//! The grant-signing key: an Ed25519 seed made from the OS random source on first use, kept
//! in the state folder readable by its owner only, and its public half beside it for whoever
//! only verifies.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use tollgate_policy::Grant;

use crate::{
    err::MintError,
    token::{self, TokenError},
};

/// The grant-signing key's name in the state folder.
const GRANT_KEY: &str = "grant-signing";
/// The key that signs the audit trail's checkpoints: apart from the grant key, so that the
/// running guard never holds what can issue grants.
pub const AUDIT_KEY: &str = "audit-signing";

/// Signs grants. Holds the private key; never printed.
pub struct GrantSigner {
    key: SigningKey,
    kid: String,
}

impl std::fmt::Debug for GrantSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Checks grant signatures with the public key only.
#[derive(Clone)]
pub struct GrantVerifier {
    key: VerifyingKey,
    kid: String,
}

impl std::fmt::Debug for GrantVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantVerifier")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn kid_of(key: &VerifyingKey) -> String {
    // The first 8 bytes of the key itself: enough to tell keys apart in a header.
    key.to_bytes()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl GrantSigner {
    /// Loads the key from `state_dir`, making the folder and the key on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, MintError> {
        Self::load_or_create_named(state_dir, GRANT_KEY)
    }

    /// Loads the Ed25519 key `<name>.key` (public half `<name>.pub`) from `state_dir`, making
    /// it on first use.
    pub fn load_or_create_named(state_dir: &Path, name: &str) -> Result<Self, MintError> {
        let private = state_dir.join(format!("{name}.key"));
        if !private.exists() {
            create_dir_private(state_dir)?;
            // Two processes starting on a new state folder at once: one makes the key, the
            // other waits for the lock and then finds it.
            let lock_path = state_dir.join(".keys.lock");
            let lock = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock_path)
                .map_err(MintError::io(&lock_path))?;
            lock.lock().map_err(MintError::io(&lock_path))?;
            if !private.exists() {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| MintError::Random(e.to_string()))?;
                let key = SigningKey::from_bytes(&seed);
                // The public half first: once the private key is there, both are.
                write_new(
                    &state_dir.join(format!("{name}.pub")),
                    URL_SAFE_NO_PAD
                        .encode(key.verifying_key().to_bytes())
                        .as_bytes(),
                    0o644,
                )?;
                write_new(&private, URL_SAFE_NO_PAD.encode(seed).as_bytes(), 0o600)?;
            }
        }
        let meta = fs::metadata(&private).map_err(MintError::io(&private))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(MintError::Exposed { path: private });
        }
        let seed = read_key(&private)?;
        let key = SigningKey::from_bytes(&seed);
        let kid = kid_of(&key.verifying_key());
        Ok(Self { key, kid })
    }

    /// The grant as a signed token.
    pub fn sign(&self, grant: &Grant) -> Result<String, TokenError> {
        let signing_input = token::signing_input(grant, &self.kid)?;
        let signature = self.key.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// An Ed25519 signature over `message`, base64url: what the audit trail's checkpoints
    /// carry.
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.key.sign(message).to_bytes())
    }

    pub fn verifier(&self) -> GrantVerifier {
        let key = self.key.verifying_key();
        GrantVerifier {
            kid: kid_of(&key),
            key,
        }
    }
}

impl GrantVerifier {
    /// Loads the public key from `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Self, MintError> {
        Self::load_named(state_dir, GRANT_KEY)
    }

    /// Loads the public key `<name>.pub` from `state_dir`.
    pub fn load_named(state_dir: &Path, name: &str) -> Result<Self, MintError> {
        let public = state_dir.join(format!("{name}.pub"));
        if !public.exists() {
            return Err(MintError::NoKey {
                path: state_dir.to_owned(),
            });
        }
        let bytes = read_key(&public)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| MintError::BadKey {
            path: public,
            reason: "not an Ed25519 public key",
        })?;
        Ok(Self {
            kid: kid_of(&key),
            key,
        })
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Whether `signature` (base64url) is this key's over `message`.
    pub fn verify_bytes(&self, message: &[u8], signature: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
            .is_some_and(|sig| {
                use ed25519_dalek::Verifier;
                self.key.verify(message, &sig).is_ok()
            })
    }

    /// The grant a token carries, if the signature, the claims and the time all hold.
    pub fn verify(&self, token: &str, now: i64) -> Result<Grant, TokenError> {
        token::verify(token, &self.kid, now, |input, signature| {
            self.key
                .verify_strict(input, &ed25519_dalek::Signature::from_bytes(signature))
                .is_ok()
        })
    }
}

fn read_key(path: &PathBuf) -> Result<[u8; 32], MintError> {
    let text = fs::read_to_string(path).map_err(MintError::io(path))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|_| MintError::BadKey {
            path: path.clone(),
            reason: "not base64url",
        })?;
    bytes.try_into().map_err(|_| MintError::BadKey {
        path: path.clone(),
        reason: "not 32 bytes",
    })
}

pub(crate) fn create_dir_private(dir: &Path) -> Result<(), MintError> {
    // Every folder made on the way is owner-only too (`~/.local/state` where it is new).
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(MintError::io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(MintError::io(dir))
}

/// Writes a file that must not exist yet, with `mode` from the first byte. It appears whole
/// or not at all: written and synced under a name of its own, then linked into place (a link
/// never replaces a file another process made meanwhile).
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), MintError> {
    let staging = path.with_extension(format!("new-{}", std::process::id()));
    let _ = fs::remove_file(&staging);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&staging)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::hard_link(&staging, path)
    })();
    let _ = fs::remove_file(&staging);
    written.map_err(MintError::io(path))
}
