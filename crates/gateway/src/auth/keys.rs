//! API keys for machine identities (AI agents, CI jobs).
//!
//! A key looks like `phk_<id>_<secret>`: the id (12 hex digits) finds the record, the secret
//! (32 random bytes) proves possession. Only the SHA-256 of the secret is stored, so the key
//! file leaks no usable credential; the key itself is printed once, at creation. Every key
//! expires; a revoked key keeps its record (for the audit trail) and opens no new session, and
//! sessions it opened end within a second (the gateway watches the key file).
//!
//! The store is one JSON file in the data directory, rewritten atomically under a lock file,
//! so the CLI can create and revoke keys while the gateway runs; the gateway notices the change
//! (file modification) within a second. Last use is kept in a second file that only the gateway
//! writes, a few seconds behind, so logins never wait for a disk write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::jwt::unix_now;
use super::AuthError;

pub const PREFIX: &str = "phk_";
/// Keys live at most this long.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// The individual identity the key stands for (defaults to the name).
    pub subject: String,
    /// Roles the key may assume; the first is its default.
    pub roles: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: u64,
    pub revoked_at: Option<u64>,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
}

impl ApiKey {
    pub fn status(&self, now: u64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if now >= self.expires_at {
            "expired"
        } else {
            "active"
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    keys: Vec<ApiKey>,
}

fn keys_path(dir: &Path) -> PathBuf {
    dir.join("api-keys.json")
}
fn last_used_path(dir: &Path) -> PathBuf {
    dir.join("api-keys.last-used.json")
}

fn read_file(dir: &Path) -> anyhow::Result<KeyFile> {
    let path = keys_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile {
            version: 1,
            keys: Vec::new(),
        }),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Runs `f` on the key file under an exclusive lock and writes the result back.
fn modify<T>(dir: &Path, f: impl FnOnce(&mut KeyFile) -> anyhow::Result<T>) -> anyhow::Result<T> {
    crate::fsutil::private_dir_all(dir)?;
    let lock = phigate_audit::private::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("api-keys.lock"))?;
    lock.lock()?;
    let mut file = read_file(dir)?;
    let out = f(&mut file)?;
    file.version = 1;
    crate::fsutil::write_private_atomic(&keys_path(dir), &serde_json::to_vec_pretty(&file)?)?;
    Ok(out)
}

fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates a key; returns the key (shown once) and its record.
pub fn create(
    dir: &Path,
    name: &str,
    subject: Option<&str>,
    roles: &[String],
    ttl: Duration,
) -> anyhow::Result<(String, ApiKey)> {
    let (key, record) = new_key(name, subject, roles, ttl)?;
    let now = record.created_at;
    modify(dir, |file| {
        if file
            .keys
            .iter()
            .any(|k| k.name == name && k.status(now) == "active")
        {
            anyhow::bail!(
                "an active key named {name} exists; revoke it first or pick another name"
            );
        }
        if file.keys.iter().any(|k| k.id == record.id) {
            anyhow::bail!("key id collision; try again");
        }
        file.keys.push(record.clone());
        Ok(())
    })?;
    Ok((key, record))
}

/// A new key (checked: name, roles, subject, lifetime) and its record, stored nowhere yet.
pub fn new_key(
    name: &str,
    subject: Option<&str>,
    roles: &[String],
    ttl: Duration,
) -> anyhow::Result<(String, ApiKey)> {
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if !valid_name {
        anyhow::bail!("a key name is 1 to 64 letters, digits, '-', '_', '.' or '@'");
    }
    if roles.is_empty() {
        anyhow::bail!("a key needs at least one role (--role)");
    }
    if let Some(s) = subject {
        if s.trim().is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
            anyhow::bail!("--subject must be 1 to 256 printable characters");
        }
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        anyhow::bail!("--ttl must be between 1s and 366d: keys must expire");
    }
    let mut rng = rand::thread_rng();
    let mut id = [0u8; 6];
    rng.fill_bytes(&mut id);
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let now = unix_now();
    let record = ApiKey {
        id: id.clone(),
        name: name.to_owned(),
        subject: subject.unwrap_or(name).to_owned(),
        roles: roles.to_vec(),
        created_at: now,
        expires_at: now + ttl.as_secs(),
        revoked_at: None,
        secret_sha256: secret_hash(&secret),
    };
    Ok((format!("{PREFIX}{id}_{secret}"), record))
}

/// Every key record in the file.
pub fn all(dir: &Path) -> anyhow::Result<Vec<ApiKey>> {
    Ok(read_file(dir)?.keys)
}

/// Makes the file hold exactly `keys` (a cluster node's copy of its control database's);
/// true if that changed it.
pub fn replace_all(dir: &Path, mut keys: Vec<ApiKey>) -> anyhow::Result<bool> {
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    let mut current = all(dir)?;
    current.sort_by(|a, b| a.id.cmp(&b.id));
    if current == keys {
        // Unchanged: the file (and its modification time, which the gateway watches) stays.
        return Ok(false);
    }
    modify(dir, |file| {
        file.keys = keys;
        Ok(())
    })?;
    Ok(true)
}

/// Revokes the key with this id or (active) name.
pub fn revoke(dir: &Path, id_or_name: &str) -> anyhow::Result<ApiKey> {
    let now = unix_now();
    modify(dir, |file| {
        let mut matches: Vec<&mut ApiKey> = file
            .keys
            .iter_mut()
            .filter(|k| k.id == id_or_name || (k.name == id_or_name && k.revoked_at.is_none()))
            .collect();
        match matches.len() {
            0 => anyhow::bail!("no key with id or name {id_or_name} (or it is already revoked)"),
            1 => {}
            _ => anyhow::bail!("{id_or_name} names several keys; revoke by id"),
        }
        let k = &mut matches[0];
        if k.revoked_at.is_none() {
            k.revoked_at = Some(now);
        }
        Ok(k.clone())
    })
}

/// Every key with its last use (unix seconds), oldest first.
pub fn list(dir: &Path) -> anyhow::Result<Vec<(ApiKey, Option<u64>)>> {
    let file = read_file(dir)?;
    let used: HashMap<String, u64> = std::fs::read(last_used_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Ok(file
        .keys
        .into_iter()
        .map(|k| {
            let u = used.get(&k.id).copied();
            (k, u)
        })
        .collect())
}

/// The gateway's view of the key file, reloaded when it changes.
pub struct KeyStore {
    dir: PathBuf,
    state: Mutex<Loaded>,
    last_used: Mutex<(HashMap<String, u64>, bool)>,
    /// Bumped on every reload: sessions opened with a key check it again.
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    by_id: HashMap<String, ApiKey>,
}

impl KeyStore {
    pub fn open(dir: &Path) -> anyhow::Result<KeyStore> {
        let used = std::fs::read(last_used_path(dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let store = KeyStore {
            dir: dir.to_owned(),
            state: Mutex::new(Loaded::default()),
            last_used: Mutex::new((used, false)),
            changed: tokio::sync::watch::channel(0).0,
        };
        store.reload_if_changed()?;
        Ok(store)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the key file again if it changed since the last read. If it cannot be read, no
    /// key is valid until it can (fail closed: a revocation must never be missed), and the
    /// sessions opened with keys are told to check again.
    pub fn reload_if_changed(&self) -> anyhow::Result<()> {
        let mut st = self.state();
        let stamp = std::fs::metadata(keys_path(&self.dir))
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp == st.stamp && stamp.is_some() {
            return Ok(());
        }
        let result = read_file(&self.dir);
        st.stamp = stamp;
        st.by_id = match &result {
            Ok(file) => file
                .keys
                .iter()
                .map(|k| (k.id.clone(), k.clone()))
                .collect(),
            Err(_) => HashMap::new(),
        };
        drop(st);
        self.changed.send_modify(|g| *g += 1);
        result.map(|_| ())
    }

    /// Checks an API key. Unknown id and wrong secret are the same failure.
    pub fn authenticate(&self, token: &str) -> Result<ApiKey, AuthError> {
        let (id, secret) = token
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .ok_or(AuthError::InvalidCredentials)?;
        if let Err(e) = self.reload_if_changed() {
            // An unreadable key file opens nothing (see reload_if_changed).
            tracing::error!(error = %e, "cannot read the API key file");
        }
        let key = self
            .state()
            .by_id
            .get(id)
            .cloned()
            .ok_or(AuthError::InvalidCredentials)?;
        let presented = secret_hash(secret);
        if !bool::from(presented.as_bytes().ct_eq(key.secret_sha256.as_bytes())) {
            return Err(AuthError::InvalidCredentials);
        }
        let now = unix_now();
        if key.revoked_at.is_some() {
            return Err(AuthError::KeyRevoked {
                subject: key.subject,
            });
        }
        if now >= key.expires_at {
            return Err(AuthError::KeyExpired {
                subject: key.subject,
            });
        }
        let mut used = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
        used.0.insert(key.id.clone(), now);
        used.1 = true;
        Ok(key)
    }

    /// Whether a key that opened a session may still be used.
    pub fn still_valid(&self, id: &str) -> bool {
        let now = unix_now();
        self.state()
            .by_id
            .get(id)
            .is_some_and(|k| k.revoked_at.is_none() && now < k.expires_at)
    }

    /// Tells sessions to check their credentials again (another revocation list changed).
    pub fn notify(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Writes last-use times if any changed.
    pub fn flush_last_used(&self) {
        let snapshot = {
            let mut used = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
            if !std::mem::take(&mut used.1) {
                return;
            }
            used.0.clone()
        };
        let bytes = serde_json::to_vec(&snapshot).unwrap_or_default();
        if let Err(e) = crate::fsutil::write_private_atomic(&last_used_path(&self.dir), &bytes) {
            tracing::warn!(error = %e, "cannot record API key use");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roles = vec!["ai-agent".to_owned()];
        let (key, rec) =
            create(dir.path(), "ci-bot", None, &roles, Duration::from_secs(60)).expect("create");
        assert!(key.starts_with("phk_"));
        let stored = std::fs::read_to_string(dir.path().join("api-keys.json")).expect("file");
        assert!(
            !stored.contains(key.rsplit('_').next().unwrap_or("x")),
            "secret stored"
        );
        let store = KeyStore::open(dir.path()).expect("open");
        assert_eq!(store.authenticate(&key).map(|k| k.id), Ok(rec.id.clone()));
        let wrong = format!("{}x", &key[..key.len() - 1]);
        assert_eq!(
            store.authenticate(&wrong),
            Err(AuthError::InvalidCredentials)
        );
        assert!(create(dir.path(), "ci-bot", None, &roles, Duration::from_secs(60)).is_err());
        revoke(dir.path(), "ci-bot").expect("revoke");
        // Same second, same length: the stamp may not change; force the reload.
        store.state().stamp = None;
        assert_eq!(
            store.authenticate(&key),
            Err(AuthError::KeyRevoked {
                subject: rec.subject.clone()
            })
        );
        assert!(!store.still_valid(&rec.id));
        assert!(create(dir.path(), "x", None, &roles, Duration::ZERO).is_err());
    }
}
