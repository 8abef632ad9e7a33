//! Revoking the tokens of one individual: `phigate token revoke --issuer I --subject S`.
//!
//! A gateway session token (or an IdP token) cannot be recalled once issued, so the gateway
//! remembers, per individual (issuer, subject), the time of their last revocation: every token
//! issued before it is refused, at login and in live sessions (which end at once, the way a
//! revoked API key ends them). A token issued after it (a new `phigate login`) works again.
//!
//! The list is one JSON file in the data directory (`token-revocations.json`, mode 0600),
//! rewritten atomically under a lock file so the CLI works while the gateway runs; the gateway
//! notices a change (modification and change times, inode and length: every rewrite is a new
//! file) within a second. A file that cannot be read revokes every token (fail closed: a
//! revocation must never be missed).
//!
//! Token `iat`s come from the identity provider's clock: a token counts as issued before the
//! revocation unless its `iat` is at least `auth.leeway_secs` after it, so an IdP clock running
//! ahead by up to the leeway does not let a token issued before the revocation pass. Signing
//! in again works once the leeway has passed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::jwt::unix_now;
use super::Individual;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The `[[auth.oidc]]` name (or `development`) that vouched for the subject.
    pub issuer: String,
    pub subject: String,
    /// Unix seconds: tokens issued before this are refused.
    pub revoked_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationFile {
    version: u32,
    revocations: Vec<Revocation>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("token-revocations.json")
}

fn read_file(dir: &Path) -> anyhow::Result<RevocationFile> {
    let p = path(dir);
    match std::fs::read(&p) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RevocationFile::default()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", p.display())),
    }
}

/// The revocation of every token of `subject` at `issuer` issued until now (checked), stored
/// nowhere yet.
pub fn new_revocation(issuer: &str, subject: &str) -> anyhow::Result<Revocation> {
    let printable =
        |s: &str| !s.trim().is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
    if !printable(issuer) || !printable(subject) {
        anyhow::bail!("--issuer and --subject must be 1 to 256 printable characters");
    }
    // A token issued in this very second is refused too (its `iat` equals `revoked_at`).
    Ok(Revocation {
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        revoked_at: unix_now() + 1,
    })
}

/// Every revocation in the file.
pub fn all(dir: &Path) -> anyhow::Result<Vec<Revocation>> {
    Ok(read_file(dir)?.revocations)
}

/// Revokes every token of `subject` at `issuer` issued until now; returns the record.
pub fn revoke(dir: &Path, issuer: &str, subject: &str) -> anyhow::Result<Revocation> {
    let record = new_revocation(issuer, subject)?;
    modify(dir, |file| {
        file.revocations
            .retain(|r| !(r.issuer == issuer && r.subject == subject));
        file.revocations.push(record.clone());
        Ok(())
    })?;
    Ok(record)
}

/// Makes the file hold exactly `revocations` (a cluster node's copy of its control
/// database's); true if that changed it.
pub fn replace_all(dir: &Path, mut revocations: Vec<Revocation>) -> anyhow::Result<bool> {
    let order =
        |a: &Revocation, b: &Revocation| (&a.issuer, &a.subject).cmp(&(&b.issuer, &b.subject));
    revocations.sort_by(order);
    let mut current = all(dir)?;
    current.sort_by(order);
    if current == revocations {
        // Unchanged: the file (which the gateway watches) stays as it is.
        return Ok(false);
    }
    modify(dir, |file| {
        file.revocations = revocations;
        Ok(())
    })?;
    Ok(true)
}

/// Runs `f` on the file under an exclusive lock and writes the result back.
fn modify(
    dir: &Path,
    f: impl FnOnce(&mut RevocationFile) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    crate::fsutil::private_dir_all(dir)?;
    // Written by anyone but the gateway's own user, the file would be unreadable to it, and an
    // unreadable file refuses every token.
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir)?.uid();
    if owner != rustix::process::geteuid().as_raw() {
        anyhow::bail!(
            "{} belongs to another user (uid {owner}): run this as the gateway's user",
            dir.display()
        );
    }
    let lock = phigate_audit::private::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("token-revocations.lock"))?;
    lock.lock()?;
    let mut file = read_file(dir)?;
    f(&mut file)?;
    file.version = 1;
    crate::fsutil::write_private_atomic(&path(dir), &serde_json::to_vec_pretty(&file)?)?;
    Ok(())
}

#[derive(Default)]
struct Loaded {
    stamp: Option<(SystemTime, i64, i64, u64, u64)>,
    /// None: the file could not be read (every token is refused until it can).
    by_individual: Option<HashMap<Individual, u64>>,
}

/// The gateway's view of the revocation file.
pub struct Revocations {
    dir: PathBuf,
    /// `auth.leeway_secs`: tokens issued less than this after a revocation are refused too.
    leeway: u64,
    state: Mutex<Loaded>,
}

impl Revocations {
    pub fn open(dir: &Path, leeway: std::time::Duration) -> Revocations {
        let r = Revocations {
            dir: dir.to_owned(),
            leeway: leeway.as_secs(),
            state: Mutex::new(Loaded::default()),
        };
        if let Err(e) = r.reload_if_changed() {
            tracing::error!(error = %e, "cannot read the token revocation file");
        }
        r
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the file again if it changed; `Ok(true)` when it did.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let mut st = self.state();
        use std::os::unix::fs::MetadataExt;
        let stamp = std::fs::metadata(path(&self.dir)).ok().map(|m| {
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.ctime(),
                m.ctime_nsec(),
                m.ino(),
                m.len(),
            )
        });
        let loaded_once = st.by_individual.is_some() || st.stamp.is_some();
        if stamp == st.stamp && loaded_once {
            return Ok(false);
        }
        let result = read_file(&self.dir);
        st.stamp = stamp;
        st.by_individual = result.as_ref().ok().map(|f| {
            f.revocations
                .iter()
                .map(|r| (Individual::new(&r.issuer, &r.subject), r.revoked_at))
                .collect()
        });
        result.map(|_| true)
    }

    /// Whether a token of `who` issued at `issued_at` (unix seconds; None: unknown) is revoked.
    pub fn is_revoked(&self, who: &Individual, issued_at: Option<u64>) -> bool {
        match &self.state().by_individual {
            None => true,
            Some(map) => map.get(who).is_some_and(|revoked| {
                issued_at.is_none_or(|iat| iat < revoked.saturating_add(self.leeway))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item8_revocation_refuses_earlier_tokens_of_that_individual_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let list = Revocations::open(dir.path(), std::time::Duration::ZERO);
        let alice = Individual::new("corp", "alice");
        let now = unix_now();
        assert!(!list.is_revoked(&alice, Some(now)));
        let rec = revoke(dir.path(), "corp", "alice").expect("revoke");
        assert!(list.reload_if_changed().expect("reload"));
        assert!(list.is_revoked(&alice, Some(now)));
        assert!(list.is_revoked(&alice, None));
        assert!(!list.is_revoked(&alice, Some(rec.revoked_at)));
        // A namesake at another issuer is someone else.
        assert!(!list.is_revoked(&Individual::new("partner", "alice"), Some(now)));
        // A second revocation of a same-length subject in the same instant is still seen (a
        // rewrite is a new file).
        let carol = Individual::new("corp", "carol");
        revoke(dir.path(), "corp", "carol").expect("revoke");
        assert!(list.reload_if_changed().expect("reload"));
        assert!(list.is_revoked(&carol, Some(now)));
        // An identity provider's clock ahead by less than the leeway gains nothing.
        let skewed = Revocations::open(dir.path(), std::time::Duration::from_secs(30));
        assert!(skewed.is_revoked(&alice, Some(rec.revoked_at + 29)));
        assert!(!skewed.is_revoked(&alice, Some(rec.revoked_at + 30)));
        let modes = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
        };
        assert_eq!(modes(&dir.path().join("token-revocations.lock")), 0o600);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(dir.path()))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // An unreadable file revokes everything.
        std::fs::write(path(dir.path()), b"not json, and longer").expect("write");
        assert!(list.reload_if_changed().is_err());
        assert!(list.is_revoked(&Individual::new("partner", "bob"), Some(now)));
        assert!(revoke(dir.path(), "corp", "").is_err());
    }
}
