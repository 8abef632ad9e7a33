//! The sync thread: `fdatasync` back to back while records are written that are not yet
//! durable, each one publishing the tickets it covers (strict tier); in the process tier, one
//! `fdatasync` at most half the flush interval after the first record not yet on disk.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{broken_down, Auditor, Core, DurabilityTier, Health, Inner};
use crate::store::Syncer;

/// What the sync thread is asked to make durable next.
pub(super) struct SyncTarget {
    pub(super) ticket: u64,
    pub(super) syncer: Arc<dyn Syncer>,
}

#[derive(Default)]
pub(super) struct SyncQueue {
    pub(super) target: Option<SyncTarget>,
    /// When the first write the target covers was made (cleared when the sync thread takes it).
    pub(super) since: Option<Instant>,
    /// When the first write the running fsync covers was made.
    pub(super) running_since: Option<Instant>,
    pub(super) stop: bool,
    /// Someone waits for the disk (process tier): the next fsync starts now.
    pub(super) urgent: bool,
    /// The sync thread waits for a target (else it takes the next one when its fsync ends, and
    /// needs no wake-up: one futex call less per statement under load).
    pub(super) idle: bool,
}

impl SyncQueue {
    /// When the oldest record not yet known durable was written.
    pub(super) fn oldest_unsynced(&self) -> Option<Instant> {
        self.running_since.or(self.since)
    }
}

/// The sync thread: while records are written that are not yet durable, one `fdatasync` after
/// another, each publishing the tickets it covers.
pub(super) fn sync_loop(inner: &Inner) {
    // In the process tier: how long after the first record not yet on disk its fsync starts.
    let delay = match inner.tier {
        DurabilityTier::Strict => None,
        DurabilityTier::Process { flush_interval } => Some(flush_interval / 2),
    };
    loop {
        let target = {
            let mut q = inner.sync.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                // After a failure, nothing more: the log is broken until restart.
                if !inner.is_broken() && q.target.is_some() {
                    let now = Instant::now();
                    let due = match (delay, q.since) {
                        (Some(d), Some(since)) if !q.stop && !q.urgent => since + d,
                        _ => now,
                    };
                    if due <= now {
                        if let Some(t) = q.target.take() {
                            q.running_since = q.since.take();
                            q.urgent = false;
                            break t;
                        }
                    }
                    // Writes meanwhile need not wake this thread (`idle` stays false); a stop
                    // or a wait for the disk does.
                    q = inner
                        .sync_cv
                        .wait_timeout(q, due - now)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                    continue;
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
        let result = target.syncer.sync();
        inner
            .sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .running_since = None;
        match result {
            Ok(()) => {
                inner.stats.fsync_latency.observe(started.elapsed());
                inner.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                inner.synced(target.ticket);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sync the audit log; statements are refused");
                // Statements may have run whose records the kernel now drops: the run marker
                // keeps that for the next start (process tier).
                if let Some(m) = inner
                    .marker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                {
                    m.fsync_failed(&e.to_string());
                }
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

impl Auditor {
    pub(crate) fn keep_run_marker(&self, m: crate::run_marker::RunMarker) {
        *self.inner.marker.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
    }

    /// Writes what is queued, a final checkpoint, and stops the writer; a clean stop (every
    /// record on disk) removes the process tier's run marker.
    pub fn shutdown(&self) {
        {
            let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.shutdown = true;
        }
        self.inner.cv.notify_one();
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        {
            let mut q = self.inner.sync.lock().unwrap_or_else(|e| e.into_inner());
            q.stop = true;
        }
        self.inner.sync_cv.notify_one();
        let handle = self.sync_thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        let clean = {
            let d = self.inner.state.borrow();
            !matches!(d.health, Health::Broken { .. })
                && self
                    .inner
                    .queue
                    .lock()
                    .map(|q| d.durable + 1 >= q.next_ticket)
                    .unwrap_or(false)
        };
        let marker = self.inner.marker.lock().map(|mut m| m.take());
        if let (true, Ok(Some(m))) = (clean, marker) {
            m.remove();
        }
    }
}
