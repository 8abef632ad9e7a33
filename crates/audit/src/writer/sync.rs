//! The sync thread: `fdatasync` back to back while records are written that are not yet
//! durable, each one publishing the tickets it covers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{broken_down, Core, Inner};
use crate::store::Syncer;

/// What the sync thread is asked to make durable next.
pub(super) struct SyncTarget {
    pub(super) ticket: u64,
    pub(super) syncer: Arc<dyn Syncer>,
}

#[derive(Default)]
pub(super) struct SyncQueue {
    pub(super) target: Option<SyncTarget>,
    pub(super) stop: bool,
    /// The sync thread waits for a target (else it takes the next one when its fsync ends, and
    /// needs no wake-up: one futex call less per statement under load).
    pub(super) idle: bool,
}

/// The sync thread: while records are written that are not yet durable, one `fdatasync` after
/// another, each publishing the tickets it covers.
pub(super) fn sync_loop(inner: &Inner) {
    loop {
        let target = {
            let mut q = inner.sync.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                // After a failure, nothing more: the log is broken until restart.
                if !inner.is_broken() {
                    if let Some(t) = q.target.take() {
                        break t;
                    }
                }
                if q.stop {
                    return;
                }
                q.idle = true;
                q = inner.sync_cv.wait(q).unwrap_or_else(|e| e.into_inner());
                q.idle = false;
            }
        };
        let started = std::time::Instant::now();
        match target.syncer.sync() {
            Ok(()) => {
                inner.stats.fsync_latency.observe(started.elapsed());
                inner.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                inner
                    .state
                    .send_modify(|d| d.durable = d.durable.max(target.ticket));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sync the audit log; statements are refused");
                // Under the chain's lock, like every change of health: the tickets that are
                // not durable fail, and the log takes nothing more.
                let mut core = inner.core.lock().unwrap_or_else(|e| e.into_inner());
                match core.as_mut() {
                    Some(Core { writer, .. }) => writer.break_down(inner, e.to_string()),
                    None => inner.cannot_start(broken_down(&e.to_string())),
                }
            }
        }
    }
}
