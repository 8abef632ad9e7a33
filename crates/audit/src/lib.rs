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

/// Reads a key file, or creates it (owner-only) with `generate()` if it does not exist.
pub fn load_or_create_key(
    path: &Path,
    generate: impl FnOnce() -> Result<Vec<u8>, String>,
) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = generate().map_err(std::io::Error::other)?;
            if let Some(dir) = path.parent() {
                private::dir_all(dir)?;
            }
            let mut f = private::options().create_new(true).write(true).open(path)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(bytes)
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
