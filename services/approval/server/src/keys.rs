//! The key registry: one Ed25519 signing key per deciding authority, kept
//! **outside the event store** so that a copy of the store (a backup, an
//! export, a compromised database) cannot forge decisions.
//!
//! # Layout of the key directory (e.g. `<data_dir>/keys/`, mode 0700)
//!
//! * `<org-uuid>.pem` — the authority's private key, PKCS#8 PEM
//!   (`-----BEGIN PRIVATE KEY-----`), file mode 0600, written to a temporary
//!   file and hard-linked into place, so it appears whole or not at all and
//!   two processes creating it at once end up sharing one key.
//! * `registry.json` — the public registry an auditor needs, nothing
//!   secret: `{"<key_id>": {"public_key": "<base64 of the 32 raw bytes>",
//!   "org": "<org uuid>", "created_at": "<RFC 3339>"}}`, pretty-printed,
//!   replaced atomically (write a temporary file, then rename).
//!
//! A `key_id` is `<first 8 hex of the org uuid>-<first 8 hex of
//! SHA-256(public key)>`, e.g. `0190a7c4-5be01f9e`: it names the org for a
//! human and the key for a machine.
//!
//! A key is created the first time an authority signs. Opening the ring,
//! and every read of the public keys, catches up with the directory
//! ([`KeyRing::refresh`]): keys other processes (replicas sharing the data
//! dir) created are picked up, and any private key the registry lacks (a
//! crash between the two writes, or two processes racing on the registry)
//! is registered again, so the registry ends up listing every key that ever
//! signed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use gradeflow_proto::OrgId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::record::TrustedKey;

/// The public registry's file name inside the key directory.
pub const REGISTRY_FILE: &str = "registry.json";

/// Why the key registry could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a file of the key directory failed.
    #[error("key directory: cannot access {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A private key file is not a PKCS#8 Ed25519 key.
    #[error("key directory: {path} is not a PKCS#8 Ed25519 private key: {detail}")]
    BadPrivateKey {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        detail: String,
    },
    /// The registry file is not the expected JSON.
    #[error("key directory: cannot read the registry {path}")]
    BadRegistry {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A registry entry's public key is not 32 base64-encoded bytes.
    #[error("key registry: entry `{key_id}` has no valid Ed25519 public key")]
    BadPublicKey {
        /// The entry.
        key_id: String,
    },
}

/// One entry of `registry.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// The 32 raw bytes of the Ed25519 public key, standard base64.
    pub public_key: String,
    /// The authority org the key was issued to.
    pub org: OrgId,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
}

impl RegistryEntry {
    /// The entry's public key.
    pub fn verifying_key(&self, key_id: &str) -> Result<VerifyingKey, KeyError> {
        let bad = || KeyError::BadPublicKey {
            key_id: key_id.to_owned(),
        };
        let bytes = BASE64.decode(&self.public_key).map_err(|_| bad())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
    }
}

/// Parses the text of a `registry.json` into the keys an auditor trusts
/// (for `gradeflow audit verify` reading an exported registry).
pub fn parse_registry(text: &str) -> Result<BTreeMap<String, TrustedKey>, KeyError> {
    let entries: BTreeMap<String, RegistryEntry> =
        serde_json::from_str(text).map_err(|source| KeyError::BadRegistry {
            path: PathBuf::from(REGISTRY_FILE),
            source,
        })?;
    trusted(&entries)
}

fn trusted(
    entries: &BTreeMap<String, RegistryEntry>,
) -> Result<BTreeMap<String, TrustedKey>, KeyError> {
    entries
        .iter()
        .map(|(id, e)| {
            Ok((
                id.clone(),
                TrustedKey {
                    key: e.verifying_key(id)?,
                    org: Some(e.org),
                },
            ))
        })
        .collect()
}

/// The id of `org`'s key `key`: `<org prefix>-<key fingerprint>`.
pub fn key_id_for(org: OrgId, key: &VerifyingKey) -> String {
    let org_hex = org.as_uuid().simple().to_string();
    let fingerprint = hex::encode(Sha256::digest(key.as_bytes()));
    format!("{}-{}", &org_hex[..8], &fingerprint[..8])
}

struct Loaded {
    key_id: String,
    key: SigningKey,
}

struct State {
    signers: HashMap<OrgId, Loaded>,
    registry: BTreeMap<String, RegistryEntry>,
}

struct Inner {
    dir: PathBuf,
    // Keeps an ephemeral ring's directory alive as long as the ring.
    _temp: Option<tempfile::TempDir>,
    state: Mutex<State>,
}

/// The authorities' signing keys and the public registry. Cheap to clone;
/// clones share the directory and the loaded keys.
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints key material.
        f.debug_struct("KeyRing")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

impl KeyRing {
    /// Opens (creating if needed) the key directory `dir`, reads its
    /// registry and registers any private key it lacks.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeyError> {
        Self::open_inner(dir.into(), None)
    }

    /// A ring in a fresh temporary directory, deleted when the last clone is
    /// dropped. For tests.
    pub fn ephemeral() -> Result<Self, KeyError> {
        let temp = tempfile::tempdir().map_err(io(Path::new("<temporary directory>")))?;
        let dir = temp.path().join("keys");
        Self::open_inner(dir, Some(temp))
    }

    fn open_inner(dir: PathBuf, temp: Option<tempfile::TempDir>) -> Result<Self, KeyError> {
        create_private_dir(&dir)?;
        let registry = read_registry_file(&dir)?;
        let ring = KeyRing {
            inner: Arc::new(Inner {
                dir,
                _temp: temp,
                state: Mutex::new(State {
                    signers: HashMap::new(),
                    registry,
                }),
            }),
        };
        ring.refresh()?;
        Ok(ring)
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters (every insert is one call), so a poisoned
        // lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key_path(&self, org: OrgId) -> PathBuf {
        self.inner.dir.join(format!("{org}.pem"))
    }

    /// Catches up with the key directory: merges the registry file as it is
    /// now (keys other processes created), loads every `<org>.pem`, and
    /// registers any the registry lacks. Two processes rewriting the
    /// registry at the same moment can drop one's entry; the next refresh
    /// by either puts it back, because the private key file is the truth.
    pub fn refresh(&self) -> Result<(), KeyError> {
        let dir = &self.inner.dir;
        let on_disk = read_registry_file(dir)?;
        let missing_on_disk = {
            let mut state = self.state();
            for (id, entry) in &on_disk {
                state
                    .registry
                    .entry(id.clone())
                    .or_insert_with(|| entry.clone());
            }
            state.registry.keys().any(|id| !on_disk.contains_key(id))
        };
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(org) = name
                .strip_suffix(".pem")
                .and_then(|stem| stem.parse::<OrgId>().ok())
            else {
                continue;
            };
            self.key_id(org)?;
        }
        if missing_on_disk {
            let state = self.state();
            let mut registry = read_registry_file(dir)?;
            for (id, entry) in &state.registry {
                registry.entry(id.clone()).or_insert_with(|| entry.clone());
            }
            write_registry_file(dir, &registry)?;
        }
        Ok(())
    }

    /// The id of `org`'s signing key, loading the key from its file or
    /// creating it on first use (and registering its public half).
    pub fn key_id(&self, org: OrgId) -> Result<String, KeyError> {
        let mut state = self.state();
        if let Some(loaded) = state.signers.get(&org) {
            return Ok(loaded.key_id.clone());
        }
        let key = self.load_or_create(org)?;
        let verifying = key.verifying_key();
        let key_id = key_id_for(org, &verifying);
        if !state.registry.contains_key(&key_id) {
            // Re-read before writing and keep what we knew, so an entry
            // another process added in the meantime (or one a racing writer
            // dropped) is kept.
            let mut registry = read_registry_file(&self.inner.dir)?;
            for (id, entry) in &state.registry {
                registry.entry(id.clone()).or_insert_with(|| entry.clone());
            }
            registry.insert(
                key_id.clone(),
                RegistryEntry {
                    public_key: BASE64.encode(verifying.as_bytes()),
                    org,
                    created_at: Utc::now(),
                },
            );
            write_registry_file(&self.inner.dir, &registry)?;
            state.registry = registry;
        }
        state.signers.insert(
            org,
            Loaded {
                key_id: key_id.clone(),
                key,
            },
        );
        Ok(key_id)
    }

    fn load_or_create(&self, org: OrgId) -> Result<SigningKey, KeyError> {
        let path = self.key_path(org);
        match fs::read_to_string(&path) {
            Ok(pem) => return decode_pem(&path, &pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::BadPrivateKey {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        // Written whole to a private temporary file first, then linked into
        // place: `link` fails if the name exists, so the key file appears
        // complete or not at all, and two processes creating a key at once
        // end up with one (the loser reads the winner's).
        let temp = self
            .inner
            .dir
            .join(format!(".{org}.pem.{}", uuid::Uuid::new_v4().simple()));
        let written = create_private_file(&temp).and_then(|mut file| {
            file.write_all(pem.as_bytes())?;
            file.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(io(&temp)(e));
        }
        let linked = fs::hard_link(&temp, &path);
        // The temporary name is never needed again, whatever happened.
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let pem = fs::read_to_string(&path).map_err(io(&path))?;
                decode_pem(&path, &pem)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Signs `message` with `org`'s key (created on first use); returns the
    /// key id and the standard-base64 signature.
    pub fn sign(&self, org: OrgId, message: &[u8]) -> Result<(String, String), KeyError> {
        let key_id = self.key_id(org)?;
        let state = self.state();
        let loaded = state
            .signers
            .get(&org)
            .ok_or_else(|| KeyError::BadPublicKey {
                key_id: key_id.clone(),
            })?;
        let signature = loaded.key.sign(message);
        Ok((key_id, BASE64.encode(signature.to_bytes())))
    }

    /// Every registered public key by key id, after a [`KeyRing::refresh`]
    /// (entries that do not decode are left out; [`KeyRing::trusted_keys`]
    /// reports them).
    pub fn public_keys(&self) -> BTreeMap<String, VerifyingKey> {
        if let Err(error) = self.refresh() {
            // What is known already is still right; say why it may be short.
            tracing::warn!(%error, "key registry: cannot catch up with the key directory");
        }
        self.state()
            .registry
            .iter()
            .filter_map(|(id, e)| e.verifying_key(id).ok().map(|k| (id.clone(), k)))
            .collect()
    }

    /// Every registered key with the org it was issued to, after a
    /// [`KeyRing::refresh`], for [`crate::record::verify_chain`].
    pub fn trusted_keys(&self) -> Result<BTreeMap<String, TrustedKey>, KeyError> {
        self.refresh()?;
        trusted(&self.state().registry)
    }

    /// The registry entries as read or written last.
    pub fn registry(&self) -> BTreeMap<String, RegistryEntry> {
        self.state().registry.clone()
    }
}

fn decode_pem(path: &Path, pem: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::BadPrivateKey {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

fn read_registry_file(dir: &Path) -> Result<BTreeMap<String, RegistryEntry>, KeyError> {
    let path = dir.join(REGISTRY_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| KeyError::BadRegistry {
            path: path.clone(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

fn write_registry_file(
    dir: &Path,
    registry: &BTreeMap<String, RegistryEntry>,
) -> Result<(), KeyError> {
    let path = dir.join(REGISTRY_FILE);
    let temp = dir.join(format!(
        ".{REGISTRY_FILE}.{}",
        uuid::Uuid::new_v4().simple()
    ));
    let text = serde_json::to_string_pretty(registry).map_err(|source| KeyError::BadRegistry {
        path: path.clone(),
        source,
    })?;
    {
        let mut file = fs::File::create(&temp).map_err(io(&temp))?;
        file.write_all(text.as_bytes()).map_err(io(&temp))?;
        file.write_all(b"\n").map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
    }
    // Rename is atomic: a reader sees the old registry or the new one.
    fs::rename(&temp, &path).map_err(io(&path))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    fs::create_dir_all(dir).map_err(io(dir))
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    #[test]
    fn a_key_is_created_on_first_use_with_a_private_file_and_a_public_entry() {
        let ring = KeyRing::ephemeral().unwrap();
        let org = OrgId(uuid::Uuid::from_u128(
            0x0190_a7c4_0000_7000_8000_0000_0000_0001,
        ));
        let (key_id, signature) = ring.sign(org, b"hello").unwrap();
        assert!(key_id.starts_with("0190a7c4-"), "{key_id}");
        assert_eq!(key_id.len(), 17);
        let file = ring.dir().join(format!("{org}.pem"));
        let pem = fs::read_to_string(&file).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let keys = ring.public_keys();
        let bytes: [u8; 64] = BASE64.decode(signature).unwrap().try_into().unwrap();
        assert!(keys[&key_id]
            .verify(b"hello", &Signature::from_bytes(&bytes))
            .is_ok());
        let registry = fs::read_to_string(ring.dir().join(REGISTRY_FILE)).unwrap();
        let parsed = parse_registry(&registry).unwrap();
        assert_eq!(parsed[&key_id].org, Some(org));
        // The same org keeps its key.
        assert_eq!(ring.key_id(org).unwrap(), key_id);
    }

    #[test]
    fn a_ring_sees_keys_another_process_created_and_restores_a_dropped_entry() {
        let a = KeyRing::ephemeral().unwrap();
        let b = KeyRing::open(a.dir()).unwrap();
        let first = a.key_id(OrgId(uuid::Uuid::from_u128(1))).unwrap();
        let second = b.key_id(OrgId(uuid::Uuid::from_u128(2))).unwrap();
        assert!(a.public_keys().contains_key(&second));
        // A racing writer dropped `first` from the file: the next read of
        // the keys by either ring puts it back.
        let mut on_disk = read_registry_file(a.dir()).unwrap();
        on_disk.remove(&first);
        write_registry_file(a.dir(), &on_disk).unwrap();
        assert!(b.trusted_keys().unwrap().contains_key(&first));
        assert!(read_registry_file(a.dir()).unwrap().contains_key(&first));
    }

    #[test]
    fn a_private_key_missing_from_the_registry_is_registered_on_open() {
        let ring = KeyRing::ephemeral().unwrap();
        let org = OrgId(uuid::Uuid::from_u128(42));
        let key_id = ring.key_id(org).unwrap();
        fs::remove_file(ring.dir().join(REGISTRY_FILE)).unwrap();
        let reopened = KeyRing::open(ring.dir()).unwrap();
        assert!(reopened.public_keys().contains_key(&key_id));
    }
}
