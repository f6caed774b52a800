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

const PRIVATE: &str = "grant-signing.key";
const PUBLIC: &str = "grant-signing.pub";

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
        let private = state_dir.join(PRIVATE);
        if !private.exists() {
            create_dir_private(state_dir)?;
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| MintError::Random(e.to_string()))?;
            let key = SigningKey::from_bytes(&seed);
            write_new(&private, URL_SAFE_NO_PAD.encode(seed).as_bytes(), 0o600)?;
            write_new(
                &state_dir.join(PUBLIC),
                URL_SAFE_NO_PAD
                    .encode(key.verifying_key().to_bytes())
                    .as_bytes(),
                0o644,
            )?;
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
        let public = state_dir.join(PUBLIC);
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

fn create_dir_private(dir: &Path) -> Result<(), MintError> {
    fs::create_dir_all(dir).map_err(MintError::io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(MintError::io(dir))
}

/// Writes a file that must not exist yet, with `mode` from the first byte.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), MintError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(MintError::io(path))?;
    file.write_all(contents).map_err(MintError::io(path))?;
    file.sync_all().map_err(MintError::io(path))
}
