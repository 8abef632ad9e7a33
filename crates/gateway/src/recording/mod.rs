//! Session recordings (docs/recording.md): each session as its caller experienced it —
//! statements (by their audit record), holds, and what came back after masking: columns,
//! rows up to a cap, command tags, errors, notices — with their timing, for `phigate replay`.
//!
//! The data path only appends JSON lines to a per-session buffer (one lock per batch of
//! database messages); a writer thread compresses the buffers into gzip members (encrypting
//! them for roles that see unmasked PHI) and appends them to the session's file. At session
//! end the file is synced and its digest goes into the audit chain (`recording` record), so
//! `phigate audit verify` proves it unaltered. Memory and disk are bounded: rows and values
//! per result, bytes per session, bytes queued for the writer, bytes in the directory.

mod event;
pub mod file;
pub mod replay;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phigate_policy::RecordMode;
use phigate_wire::backend::{self, tag};

use crate::config::Config;
use writer::{dir_size, recover, Job, Writer};

pub use event::{Ev, Message};

/// A buffer is handed to the writer past this size, or at a ReadyForQuery a second after
/// the last hand-over.
const FLUSH_BYTES: usize = 32 * 1024;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// A session buffers at most this much while the writer is behind; past it, events are
/// counted and left out.
const MAX_BUFFER: usize = 1 << 20;
/// All sessions together queue at most this much for the writer.
const MAX_QUEUED: u64 = 64 << 20;
/// Bytes of values one recorded row keeps.
const MAX_ROW: usize = 256 << 10;
/// The largest encrypted frame the writer makes (a chunk is split across frames).
const FRAME_BYTES: usize = 4 << 20;

/// A finished recording, for its audit record.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    /// Chunks were left out at the directory's size cap.
    pub capped: bool,
}

#[derive(Default)]
pub struct Stats {
    pub sessions: AtomicU64,
    pub skipped: AtomicU64,
    pub bytes: AtomicU64,
    pub dropped_events: AtomicU64,
    pub failures: AtomicU64,
}

/// The process's recorder: settings, budgets, and the writer thread's queue.
pub struct Recorder {
    dir: PathBuf,
    key: Option<Arc<file::Key>>,
    max_rows: u64,
    max_value: usize,
    max_session: u64,
    max_total: u64,
    /// Bytes in the directory (scanned at start, then counted).
    used: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
    tx: Mutex<std::sync::mpsc::Sender<Job>>,
    /// When `used` was last measured from the directory (it only grows between).
    recounted: Mutex<Instant>,
    /// Roles that may have encrypted recordings decrypted over HTTP.
    pub decrypt_roles: Vec<String>,
    pub stats: Arc<Stats>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("dir", &self.dir).finish()
    }
}

/// The recording key the config names, if it names one.
pub fn load_key(config: &Config) -> anyhow::Result<Option<file::Key>> {
    let r = &config.recording;
    let key = match (&r.key_file, &r.key_env) {
        (Some(f), _) => Some(file::Key::from_file(f)),
        (None, Some(v)) => Some(file::Key::from_env(v)),
        (None, None) => None,
    };
    key.transpose()
        .map_err(|e| anyhow::anyhow!("recording key: {e}"))
}

/// The file a session's recording has while it is written.
fn part_name(name: &str) -> String {
    format!("{name}.part")
}

impl Recorder {
    /// Starts the recorder (`None` when recordings are off) and seals, with a `recording`
    /// record each, the files that sessions cut short by a crash left behind.
    pub fn start(
        config: &Config,
        audit: &phigate_audit::Auditor,
    ) -> anyhow::Result<Option<Arc<Recorder>>> {
        let Some(dir) = config.recording.resolved_dir(config.data_dir.as_deref()) else {
            return Ok(None);
        };
        crate::fsutil::private_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let key = load_key(config)?.map(Arc::new);
        let used = Arc::new(AtomicU64::new(0));
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let size = entry.metadata()?.len();
            used.fetch_add(size, Ordering::Relaxed);
            if let Some(done) = name.strip_suffix(".part") {
                // A recording that cannot be sealed is left as it is (and logged): the
                // gateway still starts.
                if let Err(e) = recover(&dir, done, audit) {
                    tracing::error!(file = %name, error = %e, "cannot seal a recording left unfinished by a crash");
                }
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(Stats::default());
        let max_total = config.recording.max_total_mb.saturating_mul(1 << 20);
        let writer = Writer::new(
            dir.clone(),
            max_total,
            key.clone(),
            queued.clone(),
            used.clone(),
            stats.clone(),
        );
        std::thread::Builder::new()
            .name("phigate-recorder".into())
            .spawn(move || writer.run(rx))?;
        let r = &config.recording;
        Ok(Some(Arc::new(Recorder {
            dir,
            key,
            max_rows: r.max_rows_per_result,
            max_value: r.max_value_bytes,
            max_session: r.max_session_mb.saturating_mul(1 << 20),
            max_total,
            recounted: Mutex::new(Instant::now()),
            decrypt_roles: r.decrypt_roles.clone(),
            used,
            queued,
            tx: Mutex::new(tx),
            stats,
        })))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key(&self) -> Option<&file::Key> {
        self.key.as_deref()
    }

    /// Measures the directory again (at most every ten seconds), so recordings resume once
    /// space is freed.
    fn recount(&self) {
        let mut at = self.recounted.lock().unwrap_or_else(|e| e.into_inner());
        if at.elapsed() < Duration::from_secs(10) {
            return;
        }
        *at = Instant::now();
        if let Ok(size) = dir_size(&self.dir) {
            self.used.store(size, Ordering::Relaxed);
        }
    }

    fn send(&self, job: Job) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.send(job).is_ok()
    }

    /// A tape for a new session, or `None` when its role records nothing or the directory
    /// is full.
    pub fn tape(
        self: &Arc<Self>,
        session: &Arc<str>,
        identity: &crate::auth::Identity,
        role: &phigate_policy::Role,
    ) -> Option<Arc<Tape>> {
        if role.record == RecordMode::None {
            return None;
        }
        if self.used.load(Ordering::Relaxed) >= self.max_total {
            self.recount();
        }
        if self.used.load(Ordering::Relaxed) >= self.max_total {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                session = %session,
                dir = %self.dir.display(),
                "the recordings directory is at recording.max_total_mb: this session is not recorded"
            );
            return None;
        }
        let rows = role.record == RecordMode::Rows;
        // Unmasked values on disk only encrypted (the config requires a key for that).
        let encrypt = rows && !role.masked;
        if encrypt && self.key.is_none() {
            return None;
        }
        let ext = if encrypt { "jsonl.gz.enc" } else { "jsonl.gz" };
        let tape = Tape {
            recorder: self.clone(),
            name: format!("{session}.{ext}").into(),
            encrypt,
            rows,
            // A masked role's errors and notices are scrubbed before it sees them; an unmasked
            // role's are kept only where its recording is encrypted.
            messages: rows || role.masked,
            started: Instant::now(),
            buf: Mutex::new(Buf {
                out: Vec::with_capacity(4096),
                last_flush: Some(Instant::now()),
                ..Buf::default()
            }),
        };
        tape.push_at(&Ev::Start {
            v: 1,
            session: session.to_string(),
            subject: identity.subject.0.clone(),
            role: identity.role.0.clone(),
            mode: if rows { "rows" } else { "shape" }.into(),
            max_rows: if rows { self.max_rows } else { 0 },
            at: phigate_audit::record::rfc3339(std::time::SystemTime::now()),
        });
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        Some(Arc::new(tape))
    }
}

#[derive(Default)]
struct Buf {
    out: Vec<u8>,
    events: u64,
    /// JSON bytes produced so far (the session cap counts these).
    size: u64,
    truncated: bool,
    /// Events left out while the writer was behind, not yet noted in the recording.
    dropped: u64,
    dropped_total: u64,
    /// Rows (or COPY messages) of the current result kept so far.
    kept: u64,
    last_flush: Option<Instant>,
}

impl Buf {
    /// Appends `ev` as one JSON line; returns the bytes written (0 if it could not be encoded).
    fn line(&mut self, ev: &Ev) -> usize {
        let before = self.out.len();
        if serde_json::to_writer(&mut self.out, ev).is_err() {
            self.out.truncate(before);
            return 0;
        }
        self.out.push(b'\n');
        self.out.len() - before
    }
}

/// One session's recording.
pub struct Tape {
    recorder: Arc<Recorder>,
    name: Arc<str>,
    encrypt: bool,
    rows: bool,
    messages: bool,
    started: Instant,
    buf: Mutex<Buf>,
}

/// What the tape says at its end, for the `recording` audit record.
pub struct Summary {
    pub file: String,
    pub sealed: Result<Sealed, String>,
    pub events: u64,
    pub encrypted: bool,
    pub truncated: bool,
}

impl Tape {
    fn now(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buf> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_at(&self, ev: &Ev) {
        let mut b = self.lock();
        self.push(&mut b, ev);
    }

    fn push(&self, b: &mut Buf, ev: &Ev) {
        if b.truncated {
            return;
        }
        if b.out.len() >= MAX_BUFFER {
            b.dropped += 1;
            b.dropped_total += 1;
            return;
        }
        let written = b.line(ev);
        if written == 0 {
            return;
        }
        b.events += 1;
        b.size += written as u64;
        if b.size > self.recorder.max_session {
            b.truncated = true;
            let why = format!(
                "recording.max_session_mb ({} MiB) reached",
                self.recorder.max_session >> 20
            );
            if b.line(&Ev::Truncated { t: self.now(), why }) > 0 {
                b.events += 1;
            }
        }
    }

    /// The client sent statement `n`.
    pub fn statement(&self, n: u64) {
        self.push_at(&Ev::Statement { t: self.now(), n });
    }

    /// The client's statement was held for review `review`.
    pub fn held(&self, review: &str) {
        self.push_at(&Ev::Held {
            t: self.now(),
            review: review.to_owned(),
        });
    }

    /// Messages the gateway itself sends the client (its notices and FATALs).
    pub fn from_gateway(&self, bytes: &[u8]) {
        let mut batch = self.batch();
        batch.bytes(bytes, true);
    }

    /// A batch of messages on their way to the client (one lock); the buffer goes to the
    /// writer, when due, as the batch ends.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            tape: self,
            buf: self.lock(),
            t: self.now(),
        }
    }

    /// `gateway`: the message was made by the gateway (a refusal, a notice), never by the
    /// database, so it carries no data and its text is kept whatever the mode.
    /// `msg`: one whole message, header included.
    fn message(&self, b: &mut Buf, t: u64, msg: &[u8], gateway: bool) {
        let (tag, body) = (msg[0], &msg[5..]);
        let frame_of = || phigate_wire::Frame::from_raw(bytes::Bytes::copy_from_slice(msg));
        match tag {
            tag::ROW_DESCRIPTION => {
                b.kept = 0;
                let Ok(frame) = frame_of() else {
                    return;
                };
                let Ok(fields) = backend::decode_row_description(&frame) else {
                    return;
                };
                let ev = Ev::Columns {
                    t,
                    names: fields.iter().map(|f| f.name.to_owned()).collect(),
                    types: fields.iter().map(|f| f.type_oid).collect(),
                };
                self.push(b, &ev);
            }
            tag::DATA_ROW => {
                if !self.rows || b.kept >= self.recorder.max_rows {
                    return;
                }
                let Ok(frame) = frame_of() else {
                    return;
                };
                let Ok(row) = backend::DataRow::decode(&frame) else {
                    return;
                };
                let mut values = Vec::with_capacity(row.len());
                // A row keeps at most MAX_ROW bytes of values, whatever its width.
                let mut budget = MAX_ROW;
                for v in row {
                    match v {
                        Ok(Some(_)) if budget == 0 => values.push(Some("…[cut: row]".to_owned())),
                        Ok(v) => {
                            let v = v.map(|v| self.value(v));
                            budget = budget.saturating_sub(v.as_ref().map_or(0, String::len));
                            values.push(v);
                        }
                        Err(_) => return,
                    }
                }
                b.kept += 1;
                self.push(b, &Ev::Row { t, values });
            }
            b'd' => {
                // CopyData on its way out (COPY TO STDOUT).
                if !self.rows || b.kept >= self.recorder.max_rows {
                    return;
                }
                b.kept += 1;
                let data = self.value(body);
                self.push(b, &Ev::CopyData { t, data });
            }
            tag::COPY_OUT_RESPONSE => b.kept = 0,
            tag::COMMAND_COMPLETE => {
                let text = body.strip_suffix(&[0]).unwrap_or(body);
                let ev = Ev::Complete {
                    t,
                    tag: String::from_utf8_lossy(text).into_owned(),
                    rows_kept: b.kept,
                };
                b.kept = 0;
                self.push(b, &ev);
            }
            tag::PORTAL_SUSPENDED => {
                let ev = Ev::Suspended {
                    t,
                    rows_kept: b.kept,
                };
                b.kept = 0;
                self.push(b, &ev);
            }
            tag::EMPTY_QUERY_RESPONSE => self.push(b, &Ev::Empty { t }),
            tag::ERROR_RESPONSE | tag::NOTICE_RESPONSE => {
                let Ok(frame) = frame_of() else {
                    return;
                };
                let Ok(fields) = backend::Fields::decode(&frame) else {
                    return;
                };
                // The gateway's own messages carry no data; the database's may (a RAISE can
                // say anything, a "phigate: " prefix included).
                let keep = self.messages || gateway;
                let text = |f: u8| {
                    fields
                        .get(f)
                        .filter(|_| keep)
                        .map(|v| self.value(v.as_bytes()))
                };
                let m = Message {
                    t,
                    severity: self.value(fields.severity().unwrap_or_default().as_bytes()),
                    code: self.value(fields.code().unwrap_or_default().as_bytes()),
                    message: text(b'M'),
                    detail: text(b'D'),
                    hint: text(b'H'),
                };
                let ev = if tag == tag::ERROR_RESPONSE {
                    Ev::Error(m)
                } else {
                    Ev::Notice(m)
                };
                self.push(b, &ev);
            }
            tag::READY_FOR_QUERY => {
                let status = match body.first() {
                    Some(b'T') => "in transaction",
                    Some(b'E') => "failed transaction",
                    _ => "idle",
                };
                self.push(
                    b,
                    &Ev::Ready {
                        t,
                        status: status.into(),
                    },
                );
            }
            _ => {}
        }
    }

    /// A value as kept: text as is, anything else (binary format) as `\x` hex; cut at
    /// `max_value_bytes` with the full length noted.
    fn value(&self, v: &[u8]) -> String {
        let max = self.recorder.max_value;
        let cut = &v[..v.len().min(max)];
        let mut s = match std::str::from_utf8(cut) {
            Ok(s) => s.to_owned(),
            // Cut inside a character: keep the whole ones.
            Err(e) if e.error_len().is_none() && v.len() > max => {
                String::from_utf8_lossy(&cut[..e.valid_up_to()]).into_owned()
            }
            Err(_) => format!("\\x{}", hex::encode(cut)),
        };
        if v.len() > max {
            s.push_str(&format!("…[{} bytes]", v.len()));
        }
        s
    }

    fn maybe_flush(&self, b: &mut Buf, force: bool) {
        let due = force
            || b.out.len() >= FLUSH_BYTES
            || b.last_flush.is_none_or(|at| at.elapsed() >= FLUSH_EVERY);
        if !due || b.out.is_empty() {
            return;
        }
        let queued = self.recorder.queued.load(Ordering::Relaxed);
        if queued + b.out.len() as u64 > MAX_QUEUED {
            return;
        }
        if b.dropped > 0 {
            let gap = Ev::Gap {
                t: self.now(),
                events: std::mem::take(&mut b.dropped),
            };
            b.line(&gap);
        }
        let data = std::mem::replace(&mut b.out, Vec::with_capacity(4096));
        self.recorder
            .queued
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        b.last_flush = Some(Instant::now());
        self.recorder.send(Job::Append {
            name: self.name.clone(),
            encrypt: self.encrypt,
            data,
        });
    }

    /// Ends the recording: the last events, synced to disk, and its digest.
    pub async fn seal(&self, reason: &str) -> Summary {
        let (data, events, truncated) = {
            let mut b = self.lock();
            let was_truncated = b.truncated;
            b.truncated = false;
            if b.dropped > 0 {
                let gap = Ev::Gap {
                    t: self.now(),
                    events: b.dropped,
                };
                b.line(&gap);
            }
            let end = Ev::End {
                t: self.now(),
                reason: self.value(reason.as_bytes()),
            };
            if b.line(&end) > 0 {
                b.events += 1;
            }
            self.recorder
                .stats
                .dropped_events
                .fetch_add(b.dropped_total, Ordering::Relaxed);
            (
                std::mem::take(&mut b.out),
                b.events,
                was_truncated || b.dropped_total > 0,
            )
        };
        let (done, wait) = tokio::sync::oneshot::channel();
        self.recorder
            .queued
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let sent = self.recorder.send(Job::Seal {
            name: self.name.clone(),
            encrypt: self.encrypt,
            data,
            done,
        });
        let sealed = if sent {
            match tokio::time::timeout(Duration::from_secs(30), wait).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the recorder stopped".into()),
                Err(_) => Err("the recorder did not answer in 30 s".into()),
            }
        } else {
            Err("the recorder stopped".into())
        };
        Summary {
            file: self.name.to_string(),
            sealed,
            events,
            encrypted: self.encrypt,
            truncated,
        }
    }
}

/// Messages recorded under one lock; see [`Tape::batch`].
pub struct Batch<'a> {
    tape: &'a Tape,
    buf: std::sync::MutexGuard<'a, Buf>,
    t: u64,
}

impl Batch<'_> {
    /// Whole messages in `bytes`; `gateway` when the gateway made them.
    pub fn bytes(&mut self, bytes: &[u8], gateway: bool) {
        let mut at = 0;
        while bytes.len() - at >= 5 {
            let len =
                u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]])
                    as usize;
            let end = at + 1 + len;
            if len < 4 || end > bytes.len() {
                break;
            }
            self.tape
                .message(&mut self.buf, self.t, &bytes[at..end], gateway);
            at = end;
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.tape.maybe_flush(&mut self.buf, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn tape(rows: bool, messages: bool) -> (Tape, std::sync::mpsc::Receiver<Job>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let recorder = Arc::new(Recorder {
            dir: PathBuf::from("/nonexistent"),
            key: None,
            max_rows: 2,
            max_value: 8,
            max_session: 1 << 20,
            max_total: 1 << 30,
            used: Arc::default(),
            queued: Arc::default(),
            tx: Mutex::new(tx),
            recounted: Mutex::new(Instant::now()),
            decrypt_roles: Vec::new(),
            stats: Arc::default(),
        });
        let tape = Tape {
            recorder,
            name: "s.jsonl.gz".into(),
            encrypt: false,
            rows,
            messages,
            started: Instant::now(),
            buf: Mutex::new(Buf {
                last_flush: Some(Instant::now()),
                ..Buf::default()
            }),
        };
        (tape, rx)
    }

    fn events(tape: &Tape) -> Vec<Ev> {
        let b = tape.lock();
        b.out
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("event"))
            .collect()
    }

    fn error(message: &str) -> BytesMut {
        let mut out = BytesMut::new();
        backend::Notice::error("P0001", message)
            .with_detail("Key (ssn)=(123-45-6789)")
            .write(&mut out);
        out
    }

    #[test]
    fn shape_keeps_no_database_text_even_in_the_gateways_words() {
        let (tape, _rx) = tape(false, false);
        // A RAISE can start with "phigate: " too: only what the gateway made is kept.
        tape.batch().bytes(&error("phigate: 123-45-6789"), false);
        tape.from_gateway(&error("phigate: refused"));
        let evs = events(&tape);
        let [Ev::Error(db), Ev::Error(gw)] = &evs[..] else {
            panic!("{evs:?}");
        };
        assert_eq!(
            (db.code.as_str(), &db.message, &db.detail),
            ("P0001", &None, &None)
        );
        assert_eq!(gw.message.as_deref(), Some("phigate:…[16 bytes]"));
    }

    #[test]
    fn rows_are_capped_per_result_and_counted() {
        let (tape, _rx) = tape(true, true);
        let mut out = BytesMut::new();
        phigate_wire::frame::write_message(&mut out, tag::ROW_DESCRIPTION, |b| {
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(b"v\0");
            b.extend_from_slice(&[0; 6]);
            b.extend_from_slice(&25u32.to_be_bytes());
            b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        });
        for i in 0..5u8 {
            phigate_wire::frame::write_message(&mut out, tag::DATA_ROW, |b| {
                b.extend_from_slice(&1i16.to_be_bytes());
                b.extend_from_slice(&1i32.to_be_bytes());
                b.extend_from_slice(&[b'0' + i]);
            });
        }
        phigate_wire::frame::write_message(&mut out, tag::COMMAND_COMPLETE, |b| {
            b.extend_from_slice(b"SELECT 5\0")
        });
        tape.batch().bytes(&out, false);
        let evs = events(&tape);
        assert!(
            matches!(&evs[0], Ev::Columns { names, .. } if names == &["v"]),
            "{evs:?}"
        );
        assert!(matches!(&evs[1], Ev::Row { values, .. } if values == &[Some("0".to_owned())]));
        assert!(matches!(&evs[2], Ev::Row { values, .. } if values == &[Some("1".to_owned())]));
        assert!(
            matches!(&evs[3], Ev::Complete { tag, rows_kept: 2, .. } if tag == "SELECT 5"),
            "{evs:?}"
        );
    }
}
