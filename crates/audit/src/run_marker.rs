//! The process tier's run marker, `<audit dir>/process-run.json`: proof, across a power loss,
//! that records may be missing.
//!
//! In the `process` tier a statement is forwarded once its record is written to the operating
//! system; the fsync follows within the flush interval. A power loss (or a failed fsync, after
//! which the kernel may drop the pages it could not write) can therefore lose records of
//! statements that ran — and a log cut at a record boundary looks intact. So while a gateway
//! runs in that tier, this file says so (written durably before the first record); a clean
//! stop removes it after the last record is on disk; a failed background fsync adds the error
//! to it. At the next start, a marker still present means the previous run ended without a
//! clean stop (a crash, `kill -9`, a power loss) or lost its disk: the log records
//! `audit_unsynced` with what the marker says, before anything else of the new run.
//!
//! What it cannot see: a power loss in the moment between a start reading the previous marker
//! and its `audit_unsynced` record reaching the disk loses that record (the marker was already
//! replaced); the window is one fsync long.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::record::{rfc3339, Event};

const FILE: &str = "process-run.json";

#[derive(Debug, Serialize, Deserialize)]
struct Body {
    pid: u32,
    /// When the run started (RFC 3339).
    started: String,
    flush_interval_ms: u64,
    /// Set when a background fsync failed: when, and the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fsync_failed: Option<(String, String)>,
}

/// The marker of the running gateway (process tier only).
#[derive(Debug)]
pub(crate) struct RunMarker {
    path: PathBuf,
    body: Body,
}

impl RunMarker {
    /// Writes the marker durably (replacing the previous run's, read first with [`previous`]).
    pub(crate) fn create(dir: &Path, flush_interval: Duration) -> std::io::Result<RunMarker> {
        let m = RunMarker {
            path: dir.join(FILE),
            body: Body {
                pid: std::process::id(),
                started: rfc3339(SystemTime::now()),
                flush_interval_ms: u64::try_from(flush_interval.as_millis()).unwrap_or(u64::MAX),
                fsync_failed: None,
            },
        };
        m.store()?;
        Ok(m)
    }

    /// A background fsync failed: the marker says so (best effort: the disk is failing).
    pub(crate) fn fsync_failed(&mut self, error: &str) {
        self.body.fsync_failed = Some((rfc3339(SystemTime::now()), error.to_owned()));
        if let Err(e) = self.store() {
            tracing::error!(error = %e, "cannot note the failed fsync in the audit run marker");
        }
    }

    /// A clean stop: every record is on disk.
    pub(crate) fn remove(&self) {
        if let Err(e) = remove(self.path.parent().unwrap_or(Path::new("."))) {
            tracing::warn!(error = %e, "cannot remove the audit run marker");
        }
    }

    fn store(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = crate::private::options()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(&self.body).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        crate::store::sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

/// The previous run's marker, as the `audit_unsynced` record it calls for; `None` when the
/// previous run stopped cleanly or did not use the process tier. An unreadable marker still
/// says records may be missing.
pub(crate) fn previous(dir: &Path) -> std::io::Result<Option<Event>> {
    let bytes = match std::fs::read(dir.join(FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let event = match serde_json::from_slice::<Body>(&bytes) {
        Ok(b) => {
            let (reason, since, error) = match b.fsync_failed {
                Some((at, error)) => ("fsync_failed", at, Some(error)),
                None => ("unclean_stop", b.started, None),
            };
            Event::AuditUnsynced {
                reason: reason.to_owned(),
                since,
                pid: b.pid,
                flush_interval_ms: b.flush_interval_ms,
                error,
            }
        }
        Err(e) => Event::AuditUnsynced {
            reason: "unclean_stop".to_owned(),
            since: String::new(),
            pid: 0,
            flush_interval_ms: 0,
            error: Some(format!("the run marker is unreadable: {e}")),
        },
    };
    Ok(Some(event))
}

/// Removes a previous run's marker (a start in the strict tier, after reading it).
pub(crate) fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(FILE)) {
        Ok(()) => crate::store::sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_did_not_stop_cleanly_is_reported_once_with_its_fsync_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(previous(dir.path()).expect("read").is_none());
        let mut m = RunMarker::create(dir.path(), Duration::from_millis(100)).expect("create");
        match previous(dir.path()).expect("read") {
            Some(Event::AuditUnsynced {
                reason,
                flush_interval_ms,
                pid,
                error,
                ..
            }) => {
                assert_eq!(reason, "unclean_stop");
                assert_eq!(flush_interval_ms, 100);
                assert_eq!(pid, std::process::id());
                assert!(error.is_none());
            }
            other => panic!("expected audit_unsynced, got {other:?}"),
        }
        m.fsync_failed("EIO");
        match previous(dir.path()).expect("read") {
            Some(Event::AuditUnsynced { reason, error, .. }) => {
                assert_eq!(reason, "fsync_failed");
                assert_eq!(error.as_deref(), Some("EIO"));
            }
            other => panic!("expected audit_unsynced, got {other:?}"),
        }
        m.remove();
        assert!(previous(dir.path()).expect("read").is_none());
    }
}
