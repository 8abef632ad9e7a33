//! phigate's audit log: tamper-evident (hash chain + signed checkpoints), write-ahead (a
//! statement's record is on disk before the statement runs), stored outside the protected
//! database. See docs/audit.md.

pub mod chain;
pub mod checkpoint;
pub mod export;
pub mod histogram;
pub mod query;
pub mod record;
pub mod report;
mod run_marker;
pub mod store;
pub mod verify;
pub mod writer;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use checkpoint::{PublicKey, SigningKey};
pub use histogram::Histogram;
pub use record::{Event, Record, StatementRecord};
pub use writer::{AuditError, AuditHandle, Auditor, DurabilityTier, Param, Pending, Ticket};

/// Files and directories for what may hold identities, statements or PHI: owner-only whatever
/// the umask (it can only take bits away from these modes, never add).
pub mod private {
    use std::fs::{DirBuilder, OpenOptions};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::path::Path;

    /// Creates `path` and its missing parents as 0700 (existing ones are left as they are:
    /// the start-up walk of the data directory tightens those).
    pub fn dir_all(path: &Path) -> std::io::Result<()> {
        DirBuilder::new().recursive(true).mode(0o700).create(path)
    }

    /// Options that create a file as 0600.
    pub fn options() -> OpenOptions {
        let mut o = OpenOptions::new();
        o.mode(0o600);
        o
    }
}

/// Everything needed to open the log.
pub struct Setup {
    pub dir: PathBuf,
    pub mirror_dir: Option<PathBuf>,
    pub segment_max_bytes: u64,
    pub retention: Duration,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub full_text: bool,
    /// PKCS#8 Ed25519 key for checkpoints.
    pub signing_pkcs8: Vec<u8>,
    /// Key of the keyed hashes of literals and parameters.
    pub hmac_key: Vec<u8>,
    /// What a statement's record must be before the statement is forwarded.
    pub durability: DurabilityTier,
}

/// Opens the store (repairing a torn tail), prunes past retention, and starts the writer.
pub fn open(setup: Setup, first: Vec<Event>) -> anyhow_like::Result<Auditor> {
    let signing = SigningKey::from_pkcs8(&setup.signing_pkcs8).map_err(anyhow_like::msg)?;
    let (store, head) = store::FileStore::open(
        &setup.dir,
        setup.mirror_dir.as_deref(),
        setup.segment_max_bytes,
        &signing.public(),
    )?;
    match store.prune(setup.retention) {
        Ok(0) => {}
        Ok(n) => tracing::info!(segments = n, "audit segments past retention removed"),
        Err(e) => tracing::warn!(error = %e, "cannot prune audit segments"),
    }
    let mut events = head.repairs;
    // The previous run's process-tier marker (records may be missing) is recorded first; this
    // run's replaces it, or, in the strict tier, it goes.
    events.extend(run_marker::previous(&setup.dir)?);
    let marker = match setup.durability {
        DurabilityTier::Process { flush_interval } => {
            Some(run_marker::RunMarker::create(&setup.dir, flush_interval)?)
        }
        DurabilityTier::Strict => {
            run_marker::remove(&setup.dir)?;
            None
        }
    };
    events.extend(first);
    let auditor = Auditor::start(
        Box::new(store),
        (head.seq, head.hash),
        writer::Options {
            checkpoint_every: setup.checkpoint_every,
            checkpoint_interval: setup.checkpoint_interval,
            full_text: setup.full_text,
            signing,
            hmac_key: setup.hmac_key,
            durability: setup.durability,
        },
        events,
    );
    if let Some(m) = marker {
        auditor.keep_run_marker(m);
    }
    Ok(auditor)
}

/// The shortest key file accepted: 32 bytes (256 bits). Shorter is a passphrase, or what an
/// interrupted write left behind (an empty file), and would make every HMAC under it guessable.
pub const MIN_KEY_BYTES: usize = 32;

/// Reads a key file, or creates it (owner-only) with `generate()` if it does not exist. A new
/// key appears whole or not at all (written beside, synced, then linked in place: a crash
/// never leaves a short key behind); a key file shorter than [`MIN_KEY_BYTES`] is refused.
pub fn load_or_create_key(
    path: &Path,
    generate: impl FnOnce() -> Result<Vec<u8>, String>,
) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) if b.len() < MIN_KEY_BYTES => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} holds {} bytes; a key is at least {MIN_KEY_BYTES} random bytes (an empty \
                 file is what an interrupted write leaves: move it away and a new key is made)",
                path.display(),
                b.len()
            ),
        )),
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = generate().map_err(std::io::Error::other)?;
            if let Some(dir) = path.parent() {
                private::dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("new-{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            {
                let mut f = private::options().create_new(true).write(true).open(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
            }
            // A hard link fails if another process made the key meanwhile: then its key wins.
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            match linked {
                Ok(()) => Ok(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// 32 random bytes.
pub fn random_key() -> Result<Vec<u8>, String> {
    let mut k = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
        .map_err(|_| "no randomness".to_owned())?;
    Ok(k)
}

/// A small error type so the crate needs no error framework.
pub mod anyhow_like {
    pub type Result<T> = std::result::Result<T, std::io::Error>;
    pub fn msg(m: String) -> std::io::Error {
        std::io::Error::other(m)
    }
}

#[cfg(test)]
mod key_file_tests {
    use super::*;

    #[test]
    fn a_key_is_made_whole_once_and_a_short_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys").join("k.key");
        let made = load_or_create_key(&path, random_key).expect("made");
        assert_eq!(made.len(), 32);
        assert_eq!(load_or_create_key(&path, random_key).expect("read"), made);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        for short in [&b""[..], b"a passphrase"] {
            std::fs::write(&path, short).expect("write");
            let e = load_or_create_key(&path, random_key).expect_err("a short key");
            assert!(e.to_string().contains("at least 32"), "{e}");
        }
    }
}
