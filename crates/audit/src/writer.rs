//! The writer: appends records to the hash chain and makes them durable (group commit).
//!
//! **Who writes.** A session writes its own records: [`Auditor::append`] takes the chain's lock
//! (the `Core`: the chain's head and the store), takes along whatever other events are queued,
//! chains and encodes them, and writes them with one positioned write (`pwrite` at the
//! segment's end) on the session's own thread; tickets are taken under the same lock, so the
//! chain's order is the tickets' order. Events that need no wait ([`Auditor::submit`], an
//! [`AuditHandle`]) are queued; they leave with the next session's write, or the writer thread
//! writes them a millisecond later. The writer thread also signs periodic checkpoints (their
//! fsync and storage run without the chain's lock, so sessions' writes go on meanwhile), and at
//! shutdown writes the rest and a last checkpoint.
//!
//! **Durability.** After a write, the sync thread is handed "make ticket T durable". It runs
//! `fdatasync` back to back while there is something new, each one publishing "durable up to
//! ticket T" on a watch channel: every record written while the previous fsync ran shares the
//! next one. A session that must not go on before its record is on disk awaits its ticket
//! ([`Auditor::durable`]); writing never waits for a sync. Segments have space allocated ahead
//! (zeros past the last record), so a write changes no file size and its `fdatasync` commits
//! no metadata; at a rotation the old segment is synced and closed and a checkpoint written.
//!
//! **Health** is one `Health` value, published with the durability watermark:
//! - a failed *write* drops the batch whole (never acknowledged), fails its tickets, and turns
//!   the log `Failing`: appends are refused until the writer thread's probe write, a second
//!   later, succeeds; the probe records `audit_recovered` (since when, events lost, why);
//! - a failed *fsync* turns it `Broken` for good: after a failed fsync the kernel's word on what
//!   is on disk cannot be trusted, so every ticket not yet durable fails and nothing more is
//!   taken until the gateway restarts and reads the log back (PostgreSQL does the same).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ring::hmac;

use crate::chain;
use crate::checkpoint::SigningKey;
use crate::record::{rfc3339, Event, Record, StatementRecord};
use crate::store::Store;
use sync::{sync_loop, SyncQueue, SyncTarget};

mod checkpointing;
mod redact;
mod sync;
mod wait;

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
    /// What a session waits for before its statements go on.
    pub durability: DurabilityTier,
}

/// What a statement's record must be before the statement is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DurabilityTier {
    /// On disk (`fdatasync`): a power loss loses no record of a statement that ran.
    #[default]
    Strict,
    /// Written to the operating system (a crash of the gateway's process loses nothing), and
    /// made durable in the background within `flush_interval`: the sync thread flushes at most
    /// half the interval after the first record not yet on disk was written, and when the disk
    /// falls further behind (a record written more than the interval ago is still not on disk)
    /// sessions wait for it as in `Strict` until it catches up.
    Process { flush_interval: Duration },
}

/// What `/metrics` and `/readyz` show.
#[derive(Debug, Default)]
pub struct Stats {
    pub records: AtomicU64,
    pub fsyncs: AtomicU64,
    /// Waits for durability that had to wait (the ticket was not yet durable when asked).
    pub waits: AtomicU64,
    /// Over those waits: the fsyncs that ended while each waited (a wait that began while an
    /// fsync ran, too late for it, counts that one and the next). `wait_fsyncs / waits` is
    /// how many fsyncs a statement waits for on average.
    pub wait_fsyncs: AtomicU64,
    pub failures: AtomicU64,
    pub checkpoints: AtomicU64,
    pub bytes: AtomicU64,
    pub last_seq: AtomicU64,
    /// How long each fsync of the log took (group commits, checkpoints, shutdown).
    pub fsync_latency: crate::Histogram,
}

/// What the writer publishes (a watch channel): sessions await their tickets on it, and
/// `/readyz` and `/metrics` read the log's health from it.
#[derive(Debug, Clone, Default)]
struct Durability {
    durable: u64,
    /// fsyncs of the log that ended so far (a wait counts the ones it saw end).
    syncs: u64,
    /// Recent ticket ranges that failed (inclusive).
    failed: VecDeque<(u64, u64)>,
    stopped: bool,
    health: Health,
}

/// The log's health. Changed by whoever holds the chain's lock (a session's append, the writer
/// thread, the sync thread breaking the log down); read by anyone.
#[derive(Debug, Clone, Default)]
enum Health {
    /// Records are written and made durable.
    #[default]
    Healthy,
    /// A write failed: appends are refused until the writer thread's probe write, due at
    /// `next_probe`, succeeds; it records `audit_recovered` (failing since `since`, `lost`
    /// events, the first `error`). `last_error` is the latest failure.
    Failing {
        since: SystemTime,
        lost: u64,
        error: String,
        last_error: String,
        next_probe: Instant,
    },
    /// An fsync failed: nothing more is taken until the gateway restarts and reads the log
    /// back. `error` is the latest failure.
    Broken { error: String },
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
    /// The writer thread waits for the queue to stop being empty: the next event wakes it.
    /// Otherwise it looks at the queue by itself within a millisecond, and needs no wake-up
    /// (one futex call and a context switch less per statement under load).
    writer_asleep: bool,
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
    stats: Stats,
    tier: DurabilityTier,
    /// The process tier's run marker (see `run_marker`): removed at a clean stop, told of a
    /// failed background fsync.
    marker: Mutex<Option<crate::run_marker::RunMarker>>,
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
    /// Queues an event for the next write: a session's, or the writer thread's (woken when it
    /// sleeps, so a busy gateway's events ride along with its statements).
    fn enqueue(&self, p: Pending) -> Ticket {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let t = q.next_ticket;
        q.next_ticket += 1;
        q.items.push((t, p));
        let wake = std::mem::take(&mut q.writer_asleep);
        drop(q);
        if wake {
            self.cv.notify_one();
        }
        Ticket(t)
    }

    /// An fsync (or a rotation's) ended that made everything up to `ticket` durable.
    fn synced(&self, ticket: u64) {
        self.state.send_modify(|d| {
            d.durable = d.durable.max(ticket);
            d.syncs += 1;
        });
    }

    fn is_broken(&self) -> bool {
        matches!(self.state.borrow().health, Health::Broken { .. })
    }

    /// While failing: when the writer thread tries again.
    fn next_probe(&self) -> Option<Instant> {
        match &self.state.borrow().health {
            Health::Failing { next_probe, .. } => Some(*next_probe),
            _ => None,
        }
    }

    /// The log cannot be used at all (a thread could not start).
    fn cannot_start(&self, error: String) {
        self.state
            .send_modify(|d| d.health = Health::Broken { error });
    }
}

/// The writer thread: writes queued events no session's own write took along, signs
/// checkpoints when due, and at shutdown writes the rest and a last checkpoint.
fn writer_loop(inner: &Inner) {
    loop {
        let shutdown = {
            let mut q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.items.is_empty() && !q.shutdown {
                q.writer_asleep = true;
                q = inner
                    .cv
                    .wait_timeout(q, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
                q.writer_asleep = false;
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
            writer.plan_checkpoint(inner, store.as_ref(), false)
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
        let tier = opts.durability;
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                next_ticket: 1,
                shutdown: false,
                writer_asleep: false,
            }),
            cv: Condvar::new(),
            core: Mutex::new(Some(Core {
                writer: Writer {
                    chain_seq: head.0,
                    chain_hash: head.1,
                    unsynced: VecDeque::new(),
                    since_checkpoint: 0,
                    last_checkpoint: Instant::now(),
                    checkpointed_seq: head.0,
                    hmac: hmac::Key::new(hmac::HMAC_SHA256, &opts.hmac_key),
                    opts,
                    buf: Vec::with_capacity(64 * 1024),
                },
                store,
            })),
            sync: Mutex::new(SyncQueue::default()),
            sync_cv: Condvar::new(),
            state: tokio::sync::watch::channel(Durability::default()).0,
            stats: Stats::default(),
            tier,
            marker: Mutex::new(None),
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
                auditor
                    .inner
                    .cannot_start(format!("cannot start the audit sync thread: {e}"));
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
                auditor
                    .inner
                    .cannot_start(format!("cannot start the audit writer: {e}"));
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
        writer.settle(inner);
        let (broken, failing) = {
            let d = inner.state.borrow();
            (
                matches!(d.health, Health::Broken { .. }),
                matches!(d.health, Health::Failing { .. }),
            )
        };
        if broken {
            return Err(AuditError::Unavailable);
        }
        if failing {
            // Refused until the writer thread's probe write succeeds (it records
            // `audit_recovered`): sessions see one consistent "failing" until then. Counted
            // without waking anyone: no waiter's outcome changes.
            inner.state.send_if_modified(|d| {
                if let Health::Failing { lost, .. } = &mut d.health {
                    *lost += items.len() as u64;
                }
                false
            });
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

    pub fn healthy(&self) -> bool {
        matches!(self.inner.state.borrow().health, Health::Healthy)
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn last_error(&self) -> Option<String> {
        match &self.inner.state.borrow().health {
            Health::Healthy => None,
            Health::Failing { last_error, .. } => Some(last_error.clone()),
            Health::Broken { error } => Some(error.clone()),
        }
    }
}

/// What health says once an fsync failed.
fn broken_down(error: &str) -> String {
    format!(
        "an fsync of the audit log failed ({error}); restart the gateway once the disk is sound"
    )
}

struct Writer {
    chain_seq: u64,
    chain_hash: String,
    /// The last tickets of written batches, oldest first, until they are known durable.
    unsynced: VecDeque<u64>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    checkpointed_seq: u64,
    hmac: hmac::Key,
    opts: Options,
    buf: Vec<u8>,
}

impl Writer {
    /// Writes what is queued, checkpoints when due; at shutdown, the rest and a last checkpoint.
    /// Returns when to come back if the log is failing and the next probe is not due.
    fn step(&mut self, inner: &Inner, store: &mut dyn Store, shutdown: bool) -> Option<Instant> {
        self.settle(inner);
        if inner.is_broken() {
            // Nothing is written any more: what is queued is lost (and counted).
            let dropped =
                std::mem::take(&mut inner.queue.lock().unwrap_or_else(|e| e.into_inner()).items);
            inner
                .stats
                .failures
                .fetch_add(dropped.len() as u64, Ordering::Relaxed);
            return (!shutdown).then(|| Instant::now() + Duration::from_secs(1));
        }
        let next_probe = inner.next_probe();
        if let Some(at) = next_probe {
            if !shutdown && Instant::now() < at {
                // Queued events wait for the probe, which writes them after `audit_recovered`.
                return Some(at);
            }
        }
        let items = {
            let mut q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut q.items)
        };
        if !items.is_empty() || next_probe.is_some() {
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

    /// Forgets the batches the sync thread made durable.
    fn settle(&mut self, inner: &Inner) {
        let durable = inner.state.borrow().durable;
        while self.unsynced.front().is_some_and(|t| *t <= durable) {
            self.unsynced.pop_front();
        }
    }

    /// An fsync failed. After that, what the kernel says is on disk cannot be trusted (it may
    /// have dropped the pages it could not write, and a later fsync succeeds without them), so
    /// the log takes nothing more until the gateway restarts and reads it back: every ticket
    /// not yet durable fails, statements are refused, and health says why. PostgreSQL answers
    /// an fsync failure the same way.
    fn break_down(&mut self, inner: &Inner, error: String) {
        let error = broken_down(&error);
        tracing::error!(error = %error, "the audit log stops taking records");
        {
            let mut q = inner.sync.lock().unwrap_or_else(|e| e.into_inner());
            q.target = None;
        }
        let durable = inner.state.borrow().durable;
        let issued = inner
            .queue
            .lock()
            .map(|q| q.next_ticket - 1)
            .unwrap_or(u64::MAX);
        self.unsynced.clear();
        let range = (issued > durable).then_some((durable + 1, issued));
        self.fail(inner, range.map(|r| r.0), range.map(|r| r.1), error.clone());
        inner
            .state
            .send_modify(|d| d.health = Health::Broken { error });
    }

    /// Makes everything written durable on this thread (before a checkpoint, at shutdown).
    fn sync_now(&mut self, inner: &Inner, store: &mut dyn Store) -> bool {
        let Some(last) = self.unsynced.back().copied() else {
            return true;
        };
        if inner.is_broken() {
            return false;
        }
        let started = std::time::Instant::now();
        match store.sync() {
            Ok(()) => {
                inner.stats.fsync_latency.observe(started.elapsed());
                inner.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.unsynced.clear();
                inner.synced(last);
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
        if let Health::Failing {
            since, lost, error, ..
        } = &inner.state.borrow().health
        {
            events.push(Event::AuditRecovered {
                failed_since: rfc3339(*since),
                lost_events: *lost,
                error: error.clone(),
            });
        }
        for (_, p) in items {
            events.push(match p {
                Pending::Event(e) => self.redact_event(e),
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
            if inner.is_broken() {
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
                        inner.synced(last);
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
                let recovered = matches!(inner.state.borrow().health, Health::Failing { .. });
                if recovered {
                    tracing::warn!("the audit log is writable again");
                    inner.state.send_modify(|d| d.health = Health::Healthy);
                }
                if let Some(syncer) = store.syncer() {
                    let mut q = inner.sync.lock().unwrap_or_else(|e| e.into_inner());
                    q.target = Some(SyncTarget {
                        ticket: max_ticket,
                        syncer,
                    });
                    if q.since.is_none() {
                        q.since = Some(Instant::now());
                    }
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
        // Statements stay refused until a probe a second from now: a nearly full disk that
        // takes a small write but not the next does not flap between states.
        let probe = Instant::now() + Duration::from_secs(1);
        inner.state.send_modify(|d| {
            match &mut d.health {
                Health::Broken { error: e } => *e = error,
                Health::Failing {
                    lost: n,
                    last_error,
                    next_probe,
                    ..
                } => {
                    *n += lost;
                    *last_error = error;
                    *next_probe = probe;
                }
                Health::Healthy => {
                    d.health = Health::Failing {
                        since: SystemTime::now(),
                        lost,
                        last_error: error.clone(),
                        error,
                        next_probe: probe,
                    }
                }
            }
            if let (Some(a), Some(b)) = (min, max) {
                d.failed.push_back((a, b));
                while d.failed.len() > 4096 {
                    d.failed.pop_front();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
