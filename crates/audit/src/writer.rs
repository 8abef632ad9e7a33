//! The writer: one thread appends every record, with group commit.
//!
//! Sessions submit events to a queue and get a ticket; the writer takes everything queued at
//! once, chains and encodes it, writes it with one `write` and one `fdatasync`, and then
//! publishes "durable up to ticket T". A session that must not go on before its record is on
//! disk awaits its ticket; all the sessions that submitted while the previous fsync ran share
//! the next one.
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
use crate::store::Store;

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
}

struct Queue {
    items: Vec<(u64, Pending)>,
    next_ticket: u64,
    shutdown: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    cv: Condvar,
    state: tokio::sync::watch::Sender<Durability>,
    healthy: AtomicBool,
    stats: Stats,
    last_error: Mutex<Option<String>>,
}

pub struct Auditor {
    inner: Arc<Inner>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Queues events for the writer; see [`Auditor::handle`].
#[derive(Clone)]
pub struct AuditHandle {
    inner: Arc<Inner>,
}

impl AuditHandle {
    pub fn submit(&self, p: Pending) {
        let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        let t = q.next_ticket;
        q.next_ticket += 1;
        q.items.push((t, p));
        drop(q);
        self.inner.cv.notify_one();
    }
}

/// A submitted event's place in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

impl Auditor {
    /// Starts the writer on `store`, continuing the chain from `(seq, hash)`. `first` events
    /// (repairs, gateway start) are written before anything else.
    pub fn start(
        mut store: Box<dyn Store>,
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
            state: tokio::sync::watch::channel(Durability::default()).0,
            healthy: AtomicBool::new(true),
            stats: Stats::default(),
            last_error: Mutex::new(None),
        });
        inner.stats.last_seq.store(head.0, Ordering::Relaxed);
        let auditor = Auditor {
            inner: inner.clone(),
            thread: Mutex::new(None),
        };
        for e in first {
            auditor.submit(Pending::Event(e));
        }
        let handle = std::thread::Builder::new()
            .name("phigate-audit".into())
            .spawn(move || {
                let mut w = Writer {
                    inner,
                    chain_seq: head.0,
                    chain_hash: head.1,
                    since_checkpoint: 0,
                    last_checkpoint: Instant::now(),
                    checkpointed_seq: head.0,
                    failing: None,
                    hmac: hmac::Key::new(hmac::HMAC_SHA256, &opts.hmac_key),
                    opts,
                    buf: Vec::with_capacity(64 * 1024),
                };
                w.run(store.as_mut());
            });
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
        let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        let t = q.next_ticket;
        q.next_ticket += 1;
        q.items.push((t, p));
        drop(q);
        self.inner.cv.notify_one();
        Ticket(t)
    }

    /// Queues several events under one lock; returns the last one's ticket (durable implies
    /// all are).
    pub fn submit_all(&self, items: Vec<Pending>) -> Ticket {
        let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        for p in items {
            let t = q.next_ticket;
            q.next_ticket += 1;
            q.items.push((t, p));
        }
        let last = q.next_ticket - 1;
        drop(q);
        self.inner.cv.notify_one();
        Ticket(last)
    }

    /// Waits until the ticket's record is on disk.
    pub async fn durable(&self, t: Ticket) -> Result<(), AuditError> {
        let mut rx = self.inner.state.subscribe();
        let mut outcome = Err(AuditError::Stopped);
        let _ = rx
            .wait_for(|d| {
                if d.failed.iter().any(|(a, b)| *a <= t.0 && t.0 <= *b) {
                    outcome = Err(AuditError::Unavailable);
                    true
                } else if d.durable >= t.0 {
                    outcome = Ok(());
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

    /// Submits and waits.
    pub async fn write(&self, p: Pending) -> Result<(), AuditError> {
        let t = self.submit(p);
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
    }
}

struct Writer {
    inner: Arc<Inner>,
    chain_seq: u64,
    chain_hash: String,
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
    fn run(&mut self, store: &mut dyn Store) {
        loop {
            let (items, shutdown) = {
                let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.items.is_empty() && !q.shutdown {
                    let wait = Duration::from_secs(1);
                    q = self
                        .inner
                        .cv
                        .wait_timeout(q, wait)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                (std::mem::take(&mut q.items), q.shutdown)
            };
            if !items.is_empty() || self.failing.is_some() {
                self.write_batch(store, items);
            }
            let due = self.since_checkpoint >= self.opts.checkpoint_every
                || (self.since_checkpoint > 0
                    && self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval);
            if due || (shutdown && self.chain_seq > self.checkpointed_seq) {
                self.checkpoint(store);
            }
            if shutdown {
                let empty = self
                    .inner
                    .queue
                    .lock()
                    .map(|q| q.items.is_empty())
                    .unwrap_or(true);
                if empty {
                    break;
                }
            }
        }
        self.inner.state.send_modify(|d| d.stopped = true);
    }

    fn write_batch(&mut self, store: &mut dyn Store, items: Vec<(u64, Pending)>) {
        let max_ticket = items.iter().map(|(t, _)| *t).max();
        let min_ticket = items.iter().map(|(t, _)| *t).min();
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
                    self.fail(min_ticket, max_ticket, e.to_string());
                    return;
                }
            }
        }
        if store.wants_rotation(self.buf.len()) && self.chain_seq > self.checkpointed_seq {
            self.checkpoint(store);
        }
        match store.append(first_seq, &self.buf) {
            Ok(()) => {
                let n = seq - self.chain_seq;
                self.chain_seq = seq;
                self.chain_hash = hash;
                self.since_checkpoint += n;
                let stats = &self.inner.stats;
                stats.records.fetch_add(n, Ordering::Relaxed);
                stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
                stats.last_seq.store(seq, Ordering::Relaxed);
                if self.failing.take().is_some() {
                    tracing::warn!("the audit log is writable again");
                    if let Ok(mut e) = self.inner.last_error.lock() {
                        *e = None;
                    }
                }
                self.inner.healthy.store(true, Ordering::Release);
                if let Some(t) = max_ticket {
                    self.inner
                        .state
                        .send_modify(|d| d.durable = d.durable.max(t));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the audit log; statements are refused");
                self.fail(min_ticket, max_ticket, e.to_string());
            }
        }
    }

    fn fail(&mut self, min: Option<u64>, max: Option<u64>, error: String) {
        let lost = match (min, max) {
            (Some(a), Some(b)) => b - a + 1,
            _ => 0,
        };
        self.inner.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.inner.healthy.store(false, Ordering::Release);
        if let Ok(mut e) = self.inner.last_error.lock() {
            *e = Some(error.clone());
        }
        match &mut self.failing {
            Some((_, n, _)) => *n += lost,
            None => self.failing = Some((SystemTime::now(), lost, error)),
        }
        if let (Some(a), Some(b)) = (min, max) {
            self.inner.state.send_modify(|d| {
                d.failed.push_back((a, b));
                while d.failed.len() > 4096 {
                    d.failed.pop_front();
                }
            });
        }
    }

    fn checkpoint(&mut self, store: &mut dyn Store) {
        if self.chain_seq == 0 {
            return;
        }
        let cp = self.opts.signing.sign(
            self.chain_seq,
            &self.chain_hash,
            &rfc3339(SystemTime::now()),
        );
        match store.checkpoint(&cp) {
            Ok(()) => {
                self.checkpointed_seq = self.chain_seq;
                self.inner.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "cannot write an audit checkpoint"),
        }
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
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
