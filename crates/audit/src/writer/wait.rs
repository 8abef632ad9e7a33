//! Waiting for the disk: what a session awaits before its statements go on, and the wait
//! statistics (how many fsyncs a wait saw end).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{AuditError, Auditor, DurabilityTier, Health, Pending, Ticket};

impl Auditor {
    /// Waits until the ticket's record is on disk.
    pub async fn durable(&self, t: Ticket) -> Result<(), AuditError> {
        let mut rx = self.inner.state.subscribe();
        let mut outcome = Err(AuditError::Stopped);
        let (syncs_before, waited) = {
            let d = rx.borrow_and_update();
            (d.syncs, d.durable < t.0)
        };
        let mut syncs_after = syncs_before;
        if waited && self.inner.tier != DurabilityTier::Strict {
            // The background flush that covers this ticket is not due yet: someone waits, so it
            // starts now. (When the running fsync covers it, nothing is urgent: a flag left set
            // would start the next, unrelated fsync early.)
            let mut q = self.inner.sync.lock().unwrap_or_else(|e| e.into_inner());
            if q.target.as_ref().is_some_and(|x| x.ticket >= t.0) {
                q.urgent = true;
                drop(q);
                self.inner.sync_cv.notify_one();
            }
        }
        let _ = rx
            .wait_for(|d| {
                syncs_after = d.syncs;
                if d.failed(t.0) {
                    outcome = Err(AuditError::Unavailable);
                    true
                } else if d.durable >= t.0 {
                    outcome = Ok(());
                    true
                } else if matches!(d.health, Health::Broken { .. }) {
                    outcome = Err(AuditError::Unavailable);
                    true
                } else if d.stopped {
                    outcome = Err(AuditError::Stopped);
                    true
                } else {
                    false
                }
            })
            .await;
        if waited {
            let stats = &self.inner.stats;
            stats.waits.fetch_add(1, Ordering::Relaxed);
            stats
                .wait_fsyncs
                .fetch_add(syncs_after - syncs_before, Ordering::Relaxed);
        }
        outcome
    }

    /// Waits until the statements whose records end with ticket `t` (written) may go on: in
    /// the strict tier, until the record is on disk ([`Auditor::durable`]); in the process
    /// tier at once, unless the disk is behind (a record written more than the flush interval
    /// ago is not on disk yet): then until this one is on disk.
    pub async fn forwardable(&self, t: Ticket) -> Result<(), AuditError> {
        match self.tier() {
            DurabilityTier::Process { flush_interval } if !self.behind(flush_interval) => Ok(()),
            _ => self.durable(t).await,
        }
    }

    /// The configured tier.
    pub fn tier(&self) -> DurabilityTier {
        self.inner.tier
    }

    /// A record written more than `interval` ago is not on disk yet.
    fn behind(&self, interval: Duration) -> bool {
        let q = self.inner.sync.lock().unwrap_or_else(|e| e.into_inner());
        q.oldest_unsynced()
            .is_some_and(|since| since.elapsed() > interval)
    }

    /// True when the ticket's record is on disk (no wait).
    pub fn is_durable(&self, t: Ticket) -> bool {
        let d = self.inner.state.borrow();
        d.durable >= t.0 && !d.failed(t.0)
    }

    /// Writes and waits for the disk.
    pub async fn write(&self, p: Pending) -> Result<(), AuditError> {
        let t = self.append(vec![p])?;
        self.durable(t).await
    }
}
