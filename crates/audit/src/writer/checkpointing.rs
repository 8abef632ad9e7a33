//! Checkpoints: planned (signed) by whoever holds the chain, executed (synced, stored) by the
//! writer thread without the chain's lock, or at once under it at a rotation and at shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Inner, Writer};
use crate::record::rfc3339;
use crate::store::{CheckpointSink, Store, Syncer};

pub(super) struct PlannedCheckpoint {
    cp: crate::checkpoint::Checkpoint,
    sync: Option<(u64, Arc<dyn Syncer>)>,
    sink: Arc<dyn CheckpointSink>,
}

/// What became of a planned checkpoint.
pub(super) enum Checkpointed {
    Stored(u64),
    NotStored,
    SyncFailed(String),
}

impl PlannedCheckpoint {
    /// Makes the records it vouches for durable (a checkpoint never vouches for records a
    /// power loss could still take), then stores it. Needs no lock: the writer thread runs it
    /// without the chain's lock for periodic checkpoints, so sessions' writes go on meanwhile.
    pub(super) fn execute(&self, inner: &Inner) -> Checkpointed {
        if let Some((ticket, syncer)) = &self.sync {
            let started = std::time::Instant::now();
            if let Err(e) = syncer.sync() {
                return Checkpointed::SyncFailed(e.to_string());
            }
            inner.stats.fsync_latency.observe(started.elapsed());
            inner.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            inner.synced(*ticket);
        }
        match self.sink.write(&self.cp) {
            Ok(()) => {
                inner.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                Checkpointed::Stored(self.cp.seq)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write an audit checkpoint");
                Checkpointed::NotStored
            }
        }
    }
}

impl Writer {
    /// A checkpoint now, under the chain's lock (at a rotation, at shutdown).
    pub(super) fn checkpoint(&mut self, inner: &Inner, store: &mut dyn Store) {
        if let Some(planned) = self.plan_checkpoint(inner, store, true) {
            let outcome = planned.execute(inner);
            self.checkpointed(inner, outcome);
        }
    }

    pub(super) fn checkpointed(&mut self, inner: &Inner, outcome: Checkpointed) {
        match outcome {
            Checkpointed::Stored(seq) => self.checkpointed_seq = self.checkpointed_seq.max(seq),
            Checkpointed::NotStored => {}
            Checkpointed::SyncFailed(e) => self.break_down(inner, e),
        }
    }

    /// A checkpoint of the chain as it stands (when due, unless `now`), signed here: the
    /// caller executes it ([`PlannedCheckpoint::execute`]) and reports the outcome.
    pub(super) fn plan_checkpoint(
        &mut self,
        inner: &Inner,
        store: &dyn Store,
        now: bool,
    ) -> Option<PlannedCheckpoint> {
        let due = self.since_checkpoint >= self.opts.checkpoint_every
            || (self.since_checkpoint > 0
                && self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval);
        if !(due || now) || inner.is_broken() || self.chain_seq == 0 {
            return None;
        }
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        let ticket = self.unsynced.back().copied();
        Some(PlannedCheckpoint {
            cp: self.opts.signing.sign(
                self.chain_seq,
                &self.chain_hash,
                &rfc3339(SystemTime::now()),
            ),
            // Records not yet known durable: synced first.
            sync: ticket.and_then(|t| store.syncer().map(|s| (t, s))),
            sink: store.checkpoints(),
        })
    }
}
