//! The writer: one thread appends every record, a second makes them durable (group commit).
//!
//! Sessions submit events to a queue and get a ticket; the writer takes everything queued at
//! once, chains and encodes it, writes it with one `write` and publishes "written up to ticket
//! T" (the records now survive the gateway's process). The sync thread runs `fdatasync` back to
//! back while there is something new and publishes "durable up to ticket T". A session that
//! must not go on before its record is on disk awaits its ticket's durability; all the records
//! written while the previous fsync ran share the next one. Writing never waits for a sync, so
//! a session that only needs its record written (a read, whose results are held until the
//! record is durable) waits for one `write`, not for the disk.
//!
//! If the store cannot be written, the batch is dropped whole (never acknowledged), the auditor
//! turns unhealthy, the waiters get an error, and sessions refuse statements until a probe
//! write succeeds (the writer retries every second), which records `audit_recovered`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ring::hmac;
use sha2::{Digest, Sha256};

use crate::chain;
use crate::checkpoint::SigningKey;
use crate::record::{rfc3339, Event, Record, StatementRecord};
use crate::store::{CheckpointSink, Store, Syncer};

/// Statement text kept in a record; longer text is cut and its full SHA-256 kept.
pub const MAX_TEXT: usize = 64 * 1024;

/// What a session submits.
#[derive(Debug)]
pub enum Pending {
    Event(Event),
    /// A statement with its raw text and parameters: the writer redacts them (off the
    /// session's path) as the config says before anything reaches the disk.
    Statement {
        meta: StatementRecord,
        sql: Arc<str>,
        params: Vec<Option<Param>>,
    },
}

/// A bound parameter as sent: text or binary format.
#[derive(Debug, Clone)]
pub struct Param {
    pub binary: bool,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("the audit log cannot be written")]
    Unavailable,
    #[error("the audit writer has stopped")]
    Stopped,
}

pub struct Options {
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    /// Store statement text and parameters in full instead of redacted / keyed hashes.
    pub full_text: bool,
    pub signing: SigningKey,
    pub hmac_key: Vec<u8>,
}

/// What `/metrics` and `/readyz` show.
#[derive(Debug, Default)]
pub struct Stats {
    pub records: AtomicU64,
    pub fsyncs: AtomicU64,
    pub failures: AtomicU64,
    pub checkpoints: AtomicU64,
    pub bytes: AtomicU64,
    pub last_seq: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct Durability {
    durable: u64,
    /// Recent ticket ranges that failed (inclusive).
    failed: VecDeque<(u64, u64)>,
    stopped: bool,
    /// An fsync failed: nothing more becomes durable until the gateway restarts.
    broken: bool,
}

impl Durability {
    fn failed(&self, t: u64) -> bool {
        self.failed.iter().any(|(a, b)| *a <= t && t <= *b)
    }
}

struct Queue {
    items: Vec<(u64, Pending)>,
    next_ticket: u64,
    shutdown: bool,
}

/// What the sync thread is asked to make durable next.
struct SyncTarget {
    ticket: u64,
    syncer: Arc<dyn Syncer>,
}

#[derive(Default)]
struct SyncQueue {
    target: Option<SyncTarget>,
    /// A sync failed, with this error: the writer discards what is not durable.
    failed: Option<String>,
    stop: bool,
    /// The sync thread waits for a target (else it takes the next one when its fsync ends, and
    /// needs no wake-up: one futex call less per statement under load).
    idle: bool,
}

/// The chain and the store: whoever writes holds this lock, a session appending its own
/// records or the writer thread appending queued ones; tickets are taken under it too, so the
/// chain's order is the tickets' order.
struct Core {
    writer: Writer,
    store: Box<dyn Store>,
}

struct Inner {
    queue: Mutex<Queue>,
    cv: Condvar,
    /// `None` once the writer has stopped.
    core: Mutex<Option<Core>>,
    sync: Mutex<SyncQueue>,
    sync_cv: Condvar,
    state: tokio::sync::watch::Sender<Durability>,
    healthy: AtomicBool,
    stats: Stats,
    last_error: Mutex<Option<String>>,
}

pub struct Auditor {
    inner: Arc<Inner>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    sync_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Queues events for the writer; see [`Auditor::handle`].
#[derive(Clone)]
pub struct AuditHandle {
    inner: Arc<Inner>,
}

impl AuditHandle {
    pub fn submit(&self, p: Pending) {
        self.inner.enqueue(p);
    }
}

impl Inner {
    /// Queues an event for the next write: a session's, or the writer thread's (woken when the
    /// queue stops being empty, so a busy gateway's events ride along with its statements).
    fn enqueue(&self, p: Pending) -> Ticket {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let t = q.next_ticket;
        q.next_ticket += 1;
        let was_empty = q.items.is_empty();
        q.items.push((t, p));
        drop(q);
        if was_empty {
            self.cv.notify_one();
        }
        Ticket(t)
    }
}

/// The writer thread: writes queued events no session's own write took along, signs
/// checkpoints when due, and at shutdown writes the rest and a last checkpoint.
fn writer_loop(inner: &Inner) {
    loop {
        let shutdown = {
            let mut q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.items.is_empty() && !q.shutdown {
                q = inner
                    .cv
                    .wait_timeout(q, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            q.shutdown
        };
        if !shutdown {
            // Queued events usually leave with the next session's write, in its batch.
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut core = inner.core.lock().unwrap_or_else(|e| e.into_inner());
        let Some(Core { writer, store }) = core.as_mut() else {
            break;
        };
        let come_back = writer.step(inner, store.as_mut(), shutdown);
        let planned = if shutdown {
            None
        } else {
            writer.plan_checkpoint(store.as_ref(), false)
        };
        if let Some(planned) = planned {
            drop(core);
            let outcome = planned.execute(inner);
            let mut core = inner.core.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(Core { writer, .. }) = core.as_mut() {
                writer.checkpointed(inner, outcome);
            }
            continue;
        }
        if let Some(at) = come_back {
            drop(core);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            continue;
        }
        if shutdown {
            let empty = inner
                .queue
                .lock()
                .map(|q| q.items.is_empty())
                .unwrap_or(true);
            if empty {
                // Closes the store (a segment closed cleanly keeps no space allocated ahead).
                core.take();
                break;
            }
        }
    }
    inner.state.send_modify(|d| d.stopped = true);
}

/// A submitted event's place in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

impl Auditor {
    /// Starts the writer on `store`, continuing the chain from `(seq, hash)`. `first` events
    /// (repairs, gateway start) are written before anything else.
    pub fn start(
        store: Box<dyn Store>,
        head: (u64, String),
        opts: Options,
        first: Vec<Event>,
    ) -> Auditor {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                next_ticket: 1,
                shutdown: false,
            }),
            cv: Condvar::new(),
            core: Mutex::new(Some(Core {
                writer: Writer {
                    chain_seq: head.0,
                    chain_hash: head.1,
                    unsynced: VecDeque::new(),
                    next_probe: Instant::now(),
                    broken: None,
                    since_checkpoint: 0,
                    last_checkpoint: Instant::now(),
                    checkpointed_seq: head.0,
                    failing: None,
                    hmac: hmac::Key::new(hmac::HMAC_SHA256, &opts.hmac_key),
                    opts,
                    buf: Vec::with_capacity(64 * 1024),
                },
                store,
            })),
            sync: Mutex::new(SyncQueue::default()),
            sync_cv: Condvar::new(),
            state: tokio::sync::watch::channel(Durability::default()).0,
            healthy: AtomicBool::new(true),
            stats: Stats::default(),
            last_error: Mutex::new(None),
        });
        inner.stats.last_seq.store(head.0, Ordering::Relaxed);
        let auditor = Auditor {
            inner: inner.clone(),
            thread: Mutex::new(None),
            sync_thread: Mutex::new(None),
        };
        for e in first {
            auditor.submit(Pending::Event(e));
        }
        let sync_inner = inner.clone();
        match std::thread::Builder::new()
            .name("phigate-audit-sync".into())
            .spawn(move || sync_loop(&sync_inner))
        {
            Ok(h) => {
                if let Ok(mut t) = auditor.sync_thread.lock() {
                    *t = Some(h);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the audit sync thread");
                auditor.inner.healthy.store(false, Ordering::Release);
            }
        }
        let handle = std::thread::Builder::new()
            .name("phigate-audit".into())
            .spawn(move || writer_loop(&inner));
        match handle {
            Ok(h) => {
                if let Ok(mut t) = auditor.thread.lock() {
                    *t = Some(h);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the audit writer");
                auditor.inner.healthy.store(false, Ordering::Release);
            }
        }
        auditor
    }

    /// Queues an event; returns at once.
    /// A handle that only queues events (for parts of the gateway that outlive no session and
    /// need not wait for durability, such as webhook deliveries).
    pub fn handle(&self) -> AuditHandle {
        AuditHandle {
            inner: self.inner.clone(),
        }
    }

    pub fn submit(&self, p: Pending) -> Ticket {
        self.inner.enqueue(p)
    }

    /// Writes `items` now, on the caller's thread, together with whatever is queued (one
    /// `write`, no wait for a thread), and asks the sync thread for an fsync. Returns the last
    /// item's ticket, written; await [`Auditor::durable`] for the disk. May block briefly while
    /// another writer holds the chain (a `write`; rarely a checkpoint or a segment rotation,
    /// one fsync).
    pub fn append(&self, items: Vec<Pending>) -> Result<Ticket, AuditError> {
        let inner = &*self.inner;
        let mut core = inner.core.lock().unwrap_or_else(|e| e.into_inner());
        let Some(Core { writer, store }) = core.as_mut() else {
            return Err(AuditError::Stopped);
        };
        writer.settle(inner, store.as_mut());
        if writer.broken.is_some() {
            return Err(AuditError::Unavailable);
        }
        if let Some((_, lost, _)) = &mut writer.failing {
            // Refused until the writer thread's probe write succeeds (it records
            // `audit_recovered`): sessions see one consistent "failing" until then.
            *lost += items.len() as u64;
            return Err(AuditError::Unavailable);
        }
        let (batch, last) = {
            let mut q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            for p in items {
                let t = q.next_ticket;
                q.next_ticket += 1;
                q.items.push((t, p));
            }
            (std::mem::take(&mut q.items), q.next_ticket - 1)
        };
        let written = writer.write_batch(inner, store.as_mut(), batch);
        let checkpoint_due = writer.since_checkpoint >= writer.opts.checkpoint_every;
        drop(core);
        if checkpoint_due {
            // Signed (after an fsync) by the writer thread, off the caller's path.
            inner.cv.notify_one();
        }
        if written {
            Ok(Ticket(last))
        } else {
            Err(AuditError::Unavailable)
        }
    }

    /// Waits until the ticket's record is on disk.
    pub async fn durable(&self, t: Ticket) -> Result<(), AuditError> {
        let mut rx = self.inner.state.subscribe();
        let mut outcome = Err(AuditError::Stopped);
        let _ = rx
            .wait_for(|d| {
                if d.failed(t.0) {
                    outcome = Err(AuditError::Unavailable);
                    true
                } else if d.durable >= t.0 {
                    outcome = Ok(());
                    true
                } else if d.broken {
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
        outcome
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

    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Writes what is queued, a final checkpoint, and stops the writer.
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
    }
}

/// The sync thread: while records are written that are not yet durable, one `fdatasync` after
/// another, each publishing the tickets it covers.
fn sync_loop(inner: &Inner) {
    loop {
        let target = {
            let mut q = inner.sync.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                // After a failure, nothing more until the writer has cut what was lost.
                if q.failed.is_none() {
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
        match target.syncer.sync() {
            Ok(()) => {
                inner.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                inner
                    .state
                    .send_modify(|d| d.durable = d.durable.max(target.ticket));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sync the audit log; statements are refused");
                inner.healthy.store(false, Ordering::Release);
                let mut q = inner.sync.lock().unwrap_or_else(|e| e.into_inner());
                q.failed = Some(e.to_string());
                q.target = None;
                drop(q);
                // The writer fails the tickets that are not durable and starts over from disk.
                inner.cv.notify_one();
            }
        }
    }
}

struct PlannedCheckpoint {
    cp: crate::checkpoint::Checkpoint,
    sync: Option<(u64, Arc<dyn Syncer>)>,
    sink: Arc<dyn CheckpointSink>,
}

/// What became of a planned checkpoint.
enum Checkpointed {
    Stored(u64),
    NotStored,
    SyncFailed(String),
}

impl PlannedCheckpoint {
    /// Makes the records it vouches for durable (a checkpoint never vouches for records a
    /// power loss could still take), then stores it. Needs no lock: the writer thread runs it
    /// without the chain's lock for periodic checkpoints, so sessions' writes go on meanwhile.
    fn execute(&self, inner: &Inner) -> Checkpointed {
        if let Some((ticket, syncer)) = &self.sync {
            if let Err(e) = syncer.sync() {
                return Checkpointed::SyncFailed(e.to_string());
            }
            inner.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            inner
                .state
                .send_modify(|d| d.durable = d.durable.max(*ticket));
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

struct Writer {
    chain_seq: u64,
    chain_hash: String,
    /// The last tickets of written batches, oldest first, until they are known durable.
    unsynced: VecDeque<u64>,
    /// While failing: when the writer thread tries again.
    next_probe: Instant,
    /// An fsync failed: no more records until restart.
    broken: Option<String>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    checkpointed_seq: u64,
    /// Since when, how many events lost, and why.
    failing: Option<(SystemTime, u64, String)>,
    hmac: hmac::Key,
    opts: Options,
    buf: Vec<u8>,
}

impl Writer {
    /// Writes what is queued, checkpoints when due; at shutdown, the rest and a last checkpoint.
    /// Returns when to come back if the log is failing and the next probe is not due.
    fn step(&mut self, inner: &Inner, store: &mut dyn Store, shutdown: bool) -> Option<Instant> {
        self.settle(inner, store);
        if self.broken.is_some() {
            // Nothing is written any more: what is queued is lost (and counted).
            let dropped =
                std::mem::take(&mut inner.queue.lock().unwrap_or_else(|e| e.into_inner()).items);
            inner
                .stats
                .failures
                .fetch_add(dropped.len() as u64, Ordering::Relaxed);
            return (!shutdown).then(|| Instant::now() + Duration::from_secs(1));
        }
        if self.failing.is_some() && !shutdown && Instant::now() < self.next_probe {
            // Queued events wait for the probe, which writes them after `audit_recovered`.
            return Some(self.next_probe);
        }
        let items = {
            let mut q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut q.items)
        };
        if !items.is_empty() || self.failing.is_some() {
            self.write_batch(inner, store, items);
        }
        if shutdown && self.chain_seq > self.checkpointed_seq {
            self.checkpoint(inner, store);
        }
        if shutdown {
            self.sync_now(inner, store);
        }
        None
    }

    /// Forgets the batches the sync thread made durable; after a failed sync, stops the log
    /// ([`Writer::break_down`]).
    fn settle(&mut self, inner: &Inner, store: &mut dyn Store) {
        let durable = inner.state.borrow().durable;
        while self.unsynced.front().is_some_and(|t| *t <= durable) {
            self.unsynced.pop_front();
        }
        if self.broken.is_some() {
            return;
        }
        let failed = {
            let mut q = inner.sync.lock().unwrap_or_else(|e| e.into_inner());
            if q.failed.is_some() {
                q.target = None;
            }
            // Left set: the sync thread takes no target any more.
            q.failed.clone()
        };
        if let Some(error) = failed {
            self.break_down(inner, error);
        }
        let _ = store;
    }

    /// An fsync failed. After that, what the kernel says is on disk cannot be trusted (it may
    /// have dropped the pages it could not write, and a later fsync succeeds without them), so
    /// the log takes nothing more until the gateway restarts and reads it back: every ticket
    /// not yet durable fails, statements are refused, and health says why. PostgreSQL answers
    /// an fsync failure the same way.
    fn break_down(&mut self, inner: &Inner, error: String) {
        let error = format!(
            "an fsync of the audit log failed ({error}); restart the gateway once the disk is sound"
        );
        tracing::error!(error = %error, "the audit log stops taking records");
        {
            let mut q = inner.sync.lock().unwrap_or_else(|e| e.into_inner());
            q.target = None;
            q.failed.get_or_insert_with(|| error.clone());
        }
        let durable = inner.state.borrow().durable;
        let issued = inner
            .queue
            .lock()
            .map(|q| q.next_ticket - 1)
            .unwrap_or(u64::MAX);
        self.unsynced.clear();
        self.broken = Some(error.clone());
        let range = (issued > durable).then_some((durable + 1, issued));
        self.fail(inner, range.map(|r| r.0), range.map(|r| r.1), error);
        inner.state.send_modify(|d| d.broken = true);
    }

    /// Makes everything written durable on this thread (before a checkpoint, at shutdown).
    fn sync_now(&mut self, inner: &Inner, store: &mut dyn Store) -> bool {
        let Some(last) = self.unsynced.back().copied() else {
            return true;
        };
        if self.broken.is_some() {
            return false;
        }
        match store.sync() {
            Ok(()) => {
                inner.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.unsynced.clear();
                inner.state.send_modify(|d| d.durable = d.durable.max(last));
                true
            }
            Err(e) => {
                self.break_down(inner, e.to_string());
                false
            }
        }
    }

    /// Writes a batch (not yet durable); false if it could not be.
    fn write_batch(
        &mut self,
        inner: &Inner,
        store: &mut dyn Store,
        items: Vec<(u64, Pending)>,
    ) -> bool {
        let tickets = items.iter().map(|(t, _)| *t);
        let (min_ticket, max_ticket) = match (tickets.clone().min(), tickets.max()) {
            (Some(min), Some(max)) => (min, max),
            _ => {
                // A probe alone: its `audit_recovered` gets a ticket of its own, so that it is
                // tracked until durable like any record.
                let mut q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.next_ticket += 1;
                (q.next_ticket - 1, q.next_ticket - 1)
            }
        };
        let mut events: Vec<Event> = Vec::with_capacity(items.len() + 1);
        if let Some((since, lost, error)) = &self.failing {
            events.push(Event::AuditRecovered {
                failed_since: rfc3339(*since),
                lost_events: *lost,
                error: error.clone(),
            });
        }
        for (_, p) in items {
            events.push(match p {
                Pending::Event(e) => e,
                Pending::Statement { meta, sql, params } => {
                    Event::Statement(self.redact(meta, &sql, params))
                }
            });
        }
        self.buf.clear();
        let first_seq = self.chain_seq + 1;
        let mut seq = self.chain_seq;
        let mut hash = self.chain_hash.clone();
        let now = rfc3339(SystemTime::now());
        for event in events {
            seq += 1;
            let record = Record {
                seq,
                ts: now.clone(),
                prev: std::mem::take(&mut hash),
                event,
            };
            match chain::encode(&record, &mut self.buf) {
                Ok(h) => hash = h,
                Err(e) => {
                    // Serialization of our own types cannot fail; if it did, fail closed.
                    tracing::error!(error = %e, "cannot encode an audit record");
                    self.fail(inner, Some(min_ticket), Some(max_ticket), e.to_string());
                    return false;
                }
            }
        }
        if store.wants_rotation(self.buf.len()) && self.chain_seq > self.checkpointed_seq {
            self.checkpoint(inner, store);
            if self.broken.is_some() {
                self.fail(
                    inner,
                    Some(min_ticket),
                    Some(max_ticket),
                    "the audit log is broken".into(),
                );
                return false;
            }
        }
        match store.write(first_seq, &self.buf) {
            Ok(rotated) => {
                if rotated {
                    // The previous segment was made durable before this one started.
                    if let Some(last) = self.unsynced.back().copied() {
                        self.unsynced.clear();
                        inner.state.send_modify(|d| d.durable = d.durable.max(last));
                    }
                }
                self.unsynced.push_back(max_ticket);
                self.chain_hash = hash;
                let n = seq - self.chain_seq;
                self.chain_seq = seq;
                self.since_checkpoint += n;
                let stats = &inner.stats;
                stats.records.fetch_add(n, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
                stats.last_seq.store(seq, Ordering::Relaxed);
                if self.failing.take().is_some() {
                    tracing::warn!("the audit log is writable again");
                    if let Ok(mut e) = inner.last_error.lock() {
                        *e = None;
                    }
                }
                inner.healthy.store(true, Ordering::Release);
                if let Some(syncer) = store.syncer() {
                    let mut q = inner.sync.lock().unwrap_or_else(|e| e.into_inner());
                    q.target = Some(SyncTarget {
                        ticket: max_ticket,
                        syncer,
                    });
                    let idle = std::mem::take(&mut q.idle);
                    drop(q);
                    if idle {
                        inner.sync_cv.notify_one();
                    }
                }
                true
            }
            Err(e) => {
                if store.broken() {
                    // The rotation's fsync failed.
                    self.break_down(inner, e.to_string());
                    self.fail(inner, Some(min_ticket), Some(max_ticket), e.to_string());
                    return false;
                }
                tracing::error!(error = %e, "cannot write the audit log; statements are refused");
                self.fail(inner, Some(min_ticket), Some(max_ticket), e.to_string());
                false
            }
        }
    }

    fn fail(&mut self, inner: &Inner, min: Option<u64>, max: Option<u64>, error: String) {
        let lost = match (min, max) {
            (Some(a), Some(b)) => b - a + 1,
            _ => 0,
        };
        inner.stats.failures.fetch_add(1, Ordering::Relaxed);
        inner.healthy.store(false, Ordering::Release);
        // Statements stay refused until a probe a second from now: a nearly full disk that
        // takes a small write but not the next does not flap between states.
        self.next_probe = Instant::now() + Duration::from_secs(1);
        if let Ok(mut e) = inner.last_error.lock() {
            *e = Some(error.clone());
        }
        match &mut self.failing {
            Some((_, n, _)) => *n += lost,
            None => self.failing = Some((SystemTime::now(), lost, error)),
        }
        if let (Some(a), Some(b)) = (min, max) {
            inner.state.send_modify(|d| {
                d.failed.push_back((a, b));
                while d.failed.len() > 4096 {
                    d.failed.pop_front();
                }
            });
        }
    }

    /// A checkpoint now, under the chain's lock (at a rotation, at shutdown).
    fn checkpoint(&mut self, inner: &Inner, store: &mut dyn Store) {
        if let Some(planned) = self.plan_checkpoint(store, true) {
            let outcome = planned.execute(inner);
            self.checkpointed(inner, outcome);
        }
    }

    fn checkpointed(&mut self, inner: &Inner, outcome: Checkpointed) {
        match outcome {
            Checkpointed::Stored(seq) => self.checkpointed_seq = self.checkpointed_seq.max(seq),
            Checkpointed::NotStored => {}
            Checkpointed::SyncFailed(e) => self.break_down(inner, e),
        }
    }

    /// A checkpoint of the chain as it stands (when due, unless `now`), signed here: the
    /// caller executes it ([`PlannedCheckpoint::execute`]) and reports the outcome.
    fn plan_checkpoint(&mut self, store: &dyn Store, now: bool) -> Option<PlannedCheckpoint> {
        let due = self.since_checkpoint >= self.opts.checkpoint_every
            || (self.since_checkpoint > 0
                && self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval);
        if !(due || now) || self.broken.is_some() || self.chain_seq == 0 {
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

    fn keyed(&self, bytes: &[u8]) -> String {
        let tag = hmac::sign(&self.hmac, bytes);
        format!("hmac:{}", hex::encode(&tag.as_ref()[..16]))
    }

    fn redact(
        &self,
        mut meta: StatementRecord,
        sql: &str,
        params: Vec<Option<Param>>,
    ) -> StatementRecord {
        let (text, literals) = if self.opts.full_text {
            (sql.to_owned(), Vec::new())
        } else {
            let (text, lits) = phigate_sql::redact_literals(sql);
            (
                text,
                lits.iter().map(|l| self.keyed(l.as_bytes())).collect(),
            )
        };
        meta.fingerprint = hex::encode(&Sha256::digest(text.as_bytes())[..16]);
        if text.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            meta.text_sha256 = Some(hex::encode(Sha256::digest(text.as_bytes())));
            meta.text = text[..cut].to_owned();
        } else {
            meta.text = text;
        }
        meta.literals = literals;
        meta.params = params
            .into_iter()
            .map(|p| {
                p.map(|p| {
                    let v = &p.value;
                    if !self.opts.full_text {
                        return self.keyed(v);
                    }
                    match std::str::from_utf8(v) {
                        Ok(s) if !p.binary && s.len() <= 4096 => s.to_owned(),
                        _ => format!("\\x{}", hex::encode(&v[..v.len().min(2048)])),
                    }
                })
            })
            .collect();
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    /// A store in memory whose syncs can be held back or made to fail: what a real disk cannot
    /// be made to do on demand.
    #[derive(Default)]
    struct Disk {
        data: Vec<u8>,
        synced: usize,
        hold: bool,
        fail_next: bool,
        syncs: u64,
    }

    #[derive(Clone, Default)]
    struct Mem(Arc<(Mutex<Disk>, Condvar)>);

    impl Mem {
        fn with<R>(&self, f: impl FnOnce(&mut Disk) -> R) -> R {
            let r = f(&mut self.0 .0.lock().expect("lock"));
            self.0 .1.notify_all();
            r
        }

        fn lines(&self) -> Vec<(Record, String)> {
            self.with(|d| {
                d.data
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| chain::decode(l).expect("decodes"))
                    .collect()
            })
        }
    }

    impl Syncer for Mem {
        fn sync(&self) -> std::io::Result<()> {
            let (lock, cv) = &*self.0;
            let mut d = lock.lock().expect("lock");
            let len = d.data.len();
            while d.hold {
                d = cv.wait(d).expect("lock");
            }
            if std::mem::take(&mut d.fail_next) {
                return Err(std::io::Error::other("injected EIO"));
            }
            d.synced = d.synced.max(len);
            d.syncs += 1;
            Ok(())
        }
    }

    impl Store for Mem {
        fn write(&mut self, _first_seq: u64, lines: &[u8]) -> std::io::Result<bool> {
            self.with(|d| d.data.extend_from_slice(lines));
            Ok(false)
        }
        fn syncer(&self) -> Option<Arc<dyn Syncer>> {
            Some(Arc::new(self.clone()))
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Syncer::sync(self)
        }
        fn broken(&self) -> bool {
            false
        }
        fn checkpoints(&self) -> Arc<dyn crate::store::CheckpointSink> {
            struct Nowhere;
            impl crate::store::CheckpointSink for Nowhere {
                fn write(&self, _cp: &Checkpoint) -> std::io::Result<()> {
                    Ok(())
                }
            }
            Arc::new(Nowhere)
        }
        fn wants_rotation(&self, _next_bytes: usize) -> bool {
            false
        }
    }

    fn start(mem: &Mem) -> Auditor {
        start_with(mem, 1_000_000)
    }

    fn start_with(mem: &Mem, checkpoint_every: u64) -> Auditor {
        Auditor::start(
            Box::new(mem.clone()),
            (0, chain::GENESIS.to_owned()),
            Options {
                checkpoint_every,
                checkpoint_interval: Duration::from_secs(3600),
                full_text: false,
                signing: SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("key"))
                    .expect("key"),
                hmac_key: vec![1; 32],
            },
            Vec::new(),
        )
    }

    fn event(n: u64) -> Pending {
        Pending::Event(Event::ConfigReload {
            ok: true,
            policy_version: Some(n),
            error: None,
        })
    }

    /// Until the store holds `n` records (queued events are written by the writer thread).
    async fn lines_written(mem: &Mem, n: usize) {
        while mem.lines().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("in time")
    }

    #[tokio::test]
    async fn a_record_is_written_before_the_disk_has_it_and_durable_after() {
        let mem = Mem::default();
        mem.with(|d| d.hold = true);
        let auditor = start(&mem);
        let t = auditor.submit(event(1));
        within(lines_written(&mem, 1)).await;
        assert_eq!(mem.lines().len(), 1, "the record is in the store");
        // The sync is held: the record is written, not durable, and a second one is written
        // meanwhile (writing never waits for a sync).
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!auditor.is_durable(t));
        let t2 = auditor.submit(event(2));
        within(lines_written(&mem, 2)).await;
        assert!(!auditor.is_durable(t2));
        mem.with(|d| d.hold = false);
        within(auditor.durable(t2)).await.expect("durable");
        assert!(auditor.is_durable(t));
        auditor.shutdown();
    }

    #[tokio::test]
    async fn a_write_waiting_for_the_sync_thread_is_synced_whatever_else_runs() {
        let mem = Mem::default();
        let auditor = start(&mem);
        mem.with(|d| d.hold = true);
        let first = auditor.append(vec![event(1)]).expect("written");
        // The sync thread is inside the first fsync; the second waits for it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = auditor.append(vec![event(2)]).expect("written");
        // The writer thread wakes (at most 1 s apart) with nothing to write, meanwhile.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        mem.with(|d| d.hold = false);
        within(auditor.durable(second)).await.expect("durable");
        assert!(auditor.is_durable(first));
        auditor.shutdown();
    }

    #[tokio::test]
    async fn a_checkpoint_waits_for_the_disk_without_holding_up_writes() {
        let mem = Mem::default();
        let auditor = start_with(&mem, 1);
        mem.with(|d| d.hold = true);
        let first = auditor.append(vec![event(1)]).expect("written");
        // The writer thread's checkpoint now waits for the held disk, as the sync thread does;
        // sessions still write.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let second = auditor.append(vec![event(2)]).expect("written");
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(auditor.stats().checkpoints.load(Ordering::Relaxed), 0);
        mem.with(|d| d.hold = false);
        within(auditor.durable(second)).await.expect("durable");
        assert!(auditor.is_durable(first));
        for _ in 0..100 {
            if auditor.stats().checkpoints.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(auditor.stats().checkpoints.load(Ordering::Relaxed) > 0);
        auditor.shutdown();
    }

    #[tokio::test]
    async fn append_writes_on_the_callers_thread_with_what_is_queued_first() {
        let mem = Mem::default();
        let auditor = start(&mem);
        within(auditor.durable(auditor.submit(event(1))))
            .await
            .expect("durable");
        mem.with(|d| d.hold = true);
        let queued = auditor.submit(event(2));
        let mine = auditor.append(vec![event(3), event(4)]).expect("written");
        // Written when append returns, in ticket order, the queued event first.
        let versions: Vec<Option<u64>> = mem
            .lines()
            .iter()
            .map(|(r, _)| match &r.event {
                Event::ConfigReload { policy_version, .. } => *policy_version,
                _ => None,
            })
            .collect();
        assert_eq!(versions, [Some(1), Some(2), Some(3), Some(4)]);
        assert!(queued < mine);
        assert!(!auditor.is_durable(mine));
        mem.with(|d| d.hold = false);
        within(auditor.durable(mine)).await.expect("durable");
        auditor.shutdown();
        assert_eq!(auditor.append(vec![event(5)]), Err(AuditError::Stopped));
    }

    #[tokio::test]
    async fn a_failed_sync_stops_the_log_until_restart() {
        let mem = Mem::default();
        let auditor = start(&mem);
        let first = auditor.append(vec![event(1)]).expect("written");
        within(auditor.durable(first)).await.expect("durable");
        mem.with(|d| {
            d.hold = true;
            d.fail_next = true;
        });
        let lost = auditor.append(vec![event(2)]).expect("written");
        // Written while the failing sync runs: covered by no successful fsync either.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after = auditor.append(vec![event(3)]).expect("written");
        mem.with(|d| d.hold = false);
        assert_eq!(
            within(auditor.durable(lost)).await,
            Err(AuditError::Unavailable)
        );
        assert_eq!(
            within(auditor.durable(after)).await,
            Err(AuditError::Unavailable)
        );
        assert!(!auditor.is_durable(lost) && !auditor.is_durable(after));
        // Nothing more is taken, however long one waits; what was durable stays so.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(auditor.append(vec![event(4)]), Err(AuditError::Unavailable));
        let queued = auditor.submit(event(5));
        assert_eq!(
            within(auditor.durable(queued)).await,
            Err(AuditError::Unavailable)
        );
        assert!(!auditor.healthy());
        assert!(auditor
            .last_error()
            .is_some_and(|e| e.contains("restart the gateway")));
        assert!(auditor.is_durable(first));
        auditor.shutdown();
    }
}
