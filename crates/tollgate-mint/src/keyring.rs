//! The per-call signing keys over time: for each trust path one current key that signs, one
//! next key already published so resource servers know it before it signs anything, and the
//! retired keys still published until every token they signed has expired.
//!
//! The ring lives in `<state>/access/`: one owner-only PKCS#8 file per key and
//! `keyring.json`, which says what each key is now. A rotation (on a schedule, or on demand
//! from the admin endpoint or `tollgate keys rotate`) writes a new manifest by rename; a
//! running Tollgate sees the change at its next call and signs with the new current key.
//! A state folder belongs to one Tollgate process at a time.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Write,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    err::MintError,
    signing::{AccessKey, Algorithm, MAX_LEEWAY_SECS, MAX_LIFETIME_SECS, TrustPath},
};

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, not signing yet.
    Next,
    /// Signing.
    Current,
    /// No longer signing; published until its last token has expired.
    Retired,
}

/// One key of the ring, as `keyring.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub path: TrustPath,
    pub alg: Algorithm,
    pub kid: String,
    /// The key's file, in the same folder.
    pub file: String,
    pub created: i64,
    pub state: KeyState,
    /// When the key entered its state.
    pub since: i64,
}

impl KeyEntry {
    /// The last instant a token this key signed can still be accepted: it may have signed one
    /// of the longest lifetime just as it was retired, and verifiers allow some leeway.
    pub fn published_until(&self) -> Option<i64> {
        (self.state == KeyState::Retired)
            .then_some(self.since + MAX_LIFETIME_SECS + MAX_LEEWAY_SECS)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    keys: Vec<KeyEntry>,
}

/// The loaded ring: every key still published, and the current one of each path.
#[derive(Debug)]
pub(crate) struct Ring {
    pub entries: Vec<KeyEntry>,
    pub keys: HashMap<String, Arc<AccessKey>>,
    pub signing: BTreeMap<TrustPath, Arc<AccessKey>>,
}

/// A rotation that happened: the path, the key that stopped signing and the one that started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotated {
    pub path: TrustPath,
    pub retired: String,
    pub current: String,
}

const MANIFEST: &str = "keyring.json";

/// The ring's folder and what the manifest file looked like when it was last read.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub dir: PathBuf,
}

/// What identifies one version of the manifest file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    inode: u64,
    modified: i64,
    modified_ns: i64,
    len: u64,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Self, MintError> {
        let dir = state_dir.join("access");
        crate::keys::create_dir_private(&dir)?;
        Ok(Self { dir })
    }

    pub fn stamp(&self) -> Option<Stamp> {
        let meta = fs::metadata(self.dir.join(MANIFEST)).ok()?;
        Some(Stamp {
            inode: meta.ino(),
            modified: meta.mtime(),
            modified_ns: meta.mtime_nsec(),
            len: meta.len(),
        })
    }

    fn read_manifest(&self) -> Result<Option<Manifest>, MintError> {
        let file = self.dir.join(MANIFEST);
        match fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| MintError::BadKey {
                    path: file,
                    reason: "the keyring manifest is not one Tollgate wrote",
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MintError::io(&file)(e)),
        }
    }

    fn write_manifest(&self, manifest: &Manifest) -> Result<(), MintError> {
        let file = self.dir.join(MANIFEST);
        let staging = self.dir.join(format!(".{MANIFEST}.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(manifest)
            .map_err(|e| MintError::Random(format!("the keyring manifest: {e}")))?;
        let _ = fs::remove_file(&staging);
        write_private(&staging, &bytes)?;
        fs::rename(&staging, &file).map_err(MintError::io(&file))
    }

    /// Makes a key of `alg` for `path`, writes it owner-only and returns its entry.
    fn generate(
        &self,
        path: TrustPath,
        alg: Algorithm,
        state: KeyState,
        now: i64,
    ) -> Result<KeyEntry, MintError> {
        let document = AccessKey::generate(alg)?;
        let key = AccessKey::from_pkcs8(alg, &document).map_err(|reason| MintError::BadKey {
            path: self.dir.clone(),
            reason,
        })?;
        let name = format!("{}.{}.{}.pk8", path.as_str(), alg.as_str(), key.kid());
        write_private(&self.dir.join(&name), &document)?;
        Ok(KeyEntry {
            path,
            alg,
            kid: key.kid().to_owned(),
            file: name,
            created: now,
            state,
            since: now,
        })
    }

    fn load_key(&self, entry: &KeyEntry) -> Result<AccessKey, MintError> {
        // Only a plain file name: the manifest never points outside the folder.
        if entry.file.contains('/') || entry.file.starts_with('.') {
            return Err(MintError::BadKey {
                path: self.dir.join(MANIFEST),
                reason: "a key file outside the keyring folder",
            });
        }
        let file = self.dir.join(&entry.file);
        let meta = fs::metadata(&file).map_err(MintError::io(&file))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(MintError::Exposed { path: file });
        }
        let document = fs::read(&file).map_err(MintError::io(&file))?;
        let key =
            AccessKey::from_pkcs8(entry.alg, &document).map_err(|reason| MintError::BadKey {
                path: file.clone(),
                reason,
            })?;
        if key.kid() != entry.kid {
            return Err(MintError::BadKey {
                path: file,
                reason: "the key is not the one the keyring manifest names",
            });
        }
        Ok(key)
    }

    /// The manifest as it is on disk, made whole for `alg` at `now`: every path with a
    /// current key of `alg` and a next key of `alg`, retired keys past their time removed
    /// (with their files). Written back when anything changed.
    fn settle(&self, alg: Algorithm, now: i64) -> Result<Manifest, MintError> {
        let mut changed = false;
        let mut manifest = match self.read_manifest()? {
            Some(manifest) => manifest,
            None => {
                changed = true;
                self.adopt_legacy(alg, now)
            }
        };
        for path in TrustPath::ALL {
            let current = manifest
                .keys
                .iter()
                .position(|k| k.path == path && k.state == KeyState::Current);
            if current.is_none_or(|i| manifest.keys.get(i).is_some_and(|k| k.alg != alg)) {
                // No current key of the configured algorithm: the next one of it (published
                // already) takes over, or, on first run, a new one (nothing it signs can
                // predate it).
                changed = true;
                retire(&mut manifest, path, now);
                let next = manifest
                    .keys
                    .iter_mut()
                    .find(|k| k.path == path && k.state == KeyState::Next && k.alg == alg);
                match next {
                    Some(next) => {
                        next.state = KeyState::Current;
                        next.since = now;
                    }
                    None => manifest
                        .keys
                        .push(self.generate(path, alg, KeyState::Current, now)?),
                }
            }
            // A next key of another algorithm is of no use any more.
            let before = manifest.keys.len();
            manifest
                .keys
                .retain(|k| !(k.path == path && k.state == KeyState::Next && k.alg != alg));
            changed |= manifest.keys.len() != before;
            if !manifest
                .keys
                .iter()
                .any(|k| k.path == path && k.state == KeyState::Next)
            {
                changed = true;
                manifest
                    .keys
                    .push(self.generate(path, alg, KeyState::Next, now)?);
            }
        }
        let (kept, gone): (Vec<_>, Vec<_>) = manifest
            .keys
            .into_iter()
            .partition(|k| k.published_until().is_none_or(|until| until > now));
        manifest.keys = kept;
        if changed || !gone.is_empty() {
            self.write_manifest(&manifest)?;
        }
        for entry in gone {
            let _ = fs::remove_file(self.dir.join(&entry.file));
        }
        Ok(manifest)
    }

    /// Keys written before the ring had a manifest (`<path>.<alg>.pk8`) become current.
    fn adopt_legacy(&self, alg: Algorithm, now: i64) -> Manifest {
        let mut manifest = Manifest::default();
        for path in TrustPath::ALL {
            let name = format!("{}.{}.pk8", path.as_str(), alg.as_str());
            let file = self.dir.join(&name);
            let Ok(document) = fs::read(&file) else {
                continue;
            };
            if let Ok(key) = AccessKey::from_pkcs8(alg, &document) {
                manifest.keys.push(KeyEntry {
                    path,
                    alg,
                    kid: key.kid().to_owned(),
                    file: name,
                    created: now,
                    state: KeyState::Current,
                    since: now,
                });
            }
        }
        manifest
    }

    fn load(&self, manifest: Manifest) -> Result<Ring, MintError> {
        let mut keys = HashMap::new();
        let mut signing = BTreeMap::new();
        for entry in &manifest.keys {
            let key = Arc::new(self.load_key(entry)?);
            if entry.state == KeyState::Current && signing.insert(entry.path, key.clone()).is_some()
            {
                return Err(MintError::BadKey {
                    path: self.dir.join(MANIFEST),
                    reason: "two current keys on one trust path",
                });
            }
            keys.insert(entry.kid.clone(), key);
        }
        Ok(Ring {
            entries: manifest.keys,
            keys,
            signing,
        })
    }

    /// The ring made whole for `alg` at `now`.
    pub fn open_ring(&self, alg: Algorithm, now: i64) -> Result<Ring, MintError> {
        let _held = self.hold()?;
        let manifest = self.settle(alg, now)?;
        self.load(manifest)
    }

    /// The keyring's lock, held while its manifest is read and written again: processes on
    /// one state folder take turns, so none writes over the keys another just made. Released
    /// when dropped, and by the OS when a process dies.
    fn hold(&self) -> Result<fs::File, MintError> {
        let path = self.dir.join(".manifest.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(MintError::io(&path))?;
        lock.lock().map_err(MintError::io(&path))?;
        Ok(lock)
    }

    /// The ring as the manifest says now, without changing it.
    pub fn reread(&self) -> Result<Ring, MintError> {
        let manifest = self.read_manifest()?.ok_or_else(|| MintError::BadKey {
            path: self.dir.join(MANIFEST),
            reason: "the keyring manifest is gone",
        })?;
        self.load(manifest)
    }

    /// Rotates `paths` (every one when `due` is `None`; else those whose current key has signed
    /// for `every` seconds and whose next key has been published for `ahead`).
    pub fn rotate(
        &self,
        alg: Algorithm,
        paths: &[TrustPath],
        due: Option<(i64, i64)>,
        now: i64,
    ) -> Result<(Ring, Vec<Rotated>), MintError> {
        let _held = self.hold()?;
        let mut manifest = self.settle(alg, now)?;
        let mut rotated = Vec::new();
        for &path in paths {
            let find = |state: KeyState| {
                manifest
                    .keys
                    .iter()
                    .position(|k| k.path == path && k.state == state)
            };
            let (Some(current), Some(next)) = (find(KeyState::Current), find(KeyState::Next))
            else {
                continue;
            };
            let (Some(old), Some(new)) = (
                manifest.keys.get(current).cloned(),
                manifest.keys.get(next).cloned(),
            ) else {
                continue;
            };
            if let Some((every, ahead)) = due
                && (old.since + every > now || new.since + ahead > now)
            {
                continue;
            }
            if let Some(k) = manifest.keys.get_mut(current) {
                k.state = KeyState::Retired;
                k.since = now;
            }
            if let Some(k) = manifest.keys.get_mut(next) {
                k.state = KeyState::Current;
                k.since = now;
            }
            manifest
                .keys
                .push(self.generate(path, alg, KeyState::Next, now)?);
            rotated.push(Rotated {
                path,
                retired: old.kid,
                current: new.kid,
            });
        }
        if !rotated.is_empty() {
            self.write_manifest(&manifest)?;
        }
        Ok((self.load(manifest)?, rotated))
    }
}

/// Writes a new file only its owner can read, and syncs it.
fn write_private(file: &Path, bytes: &[u8]) -> Result<(), MintError> {
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(MintError::io(file))?;
    out.write_all(bytes).map_err(MintError::io(file))?;
    out.sync_all().map_err(MintError::io(file))
}

fn retire(manifest: &mut Manifest, path: TrustPath, now: i64) {
    for k in &mut manifest.keys {
        if k.path == path && k.state == KeyState::Current {
            k.state = KeyState::Retired;
            k.since = now;
        }
    }
}
