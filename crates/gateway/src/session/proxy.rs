//! The relay: after startup, messages flow both ways until either side ends.
//!
//! Two halves run concurrently inside the session's task, one per direction, so that a client
//! that pipelines many statements without reading (or a server streaming a huge result) can
//! never deadlock the session: each half blocks only on its own peer.
//!
//! - [`Forward`] reads client messages, checks them and writes them to the database. It never
//!   writes to the client; anything it must tell the client goes as an [`Event`] to the other
//!   half, which alone owns the client's write side (so gateway messages and database messages
//!   can be ordered in one place).
//! - [`Backward`] reads database messages and writes them to the client, and handles events and
//!   shutdown.
//!
//! Each half reads whatever the socket has, takes every whole frame out of its one read buffer,
//! and writes the batch with one `write_all`: an exchange costs one read and one write per
//! direction, not one per message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use phigate_wire::backend::{self, Notice, TransactionStatus};
use phigate_wire::frontend::{self, FrontendMessage};
use phigate_wire::{FrameReader, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::guard::Unit;
use super::Ready;
use crate::net::{StreamRead, StreamWrite};
use crate::server::Shared;

/// What the forward half asks the backward half to tell the client.
#[derive(Debug)]
enum Event {
    /// Send this FATAL (already encoded) and close the session.
    Fatal(BytesMut),
    /// Send this NoticeResponse now (a statement is held for review).
    Notice(BytesMut),
}

/// Counts of exchanges, shared by the halves: every Query, Sync and FunctionCall the client
/// sends is answered by exactly one ReadyForQuery. Equal counts mean nothing is in flight.
struct InFlight {
    sent: AtomicU64,
    answered: AtomicU64,
    /// The last ReadyForQuery said "idle, outside a transaction".
    idle_status: AtomicBool,
    /// DDL was forwarded: once the session is back outside a transaction, the views it may
    /// have changed are read again from the catalog.
    ddl_pending: AtomicBool,
    /// The audit ticket that must be durable before anything more from the database reaches
    /// the client: reads are forwarded once their records are written, and their results wait.
    release_after: AtomicU64,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            idle_status: AtomicBool::new(true),
            ddl_pending: AtomicBool::new(false),
            release_after: AtomicU64::new(0),
        }
    }
}

impl InFlight {
    fn idle(&self) -> bool {
        self.sent.load(Ordering::Acquire) == self.answered.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
enum End {
    ClientTerminated,
    ClientClosed,
    ClientError(String),
    UpstreamError(String),
    Shutdown,
    CredentialEnded(Ended),
    AuditUnavailable,
}

/// Why a session's credential stopped being valid.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Expired,
    Revoked,
}

impl Ended {
    fn fatal(self) -> BytesMut {
        let mut out = BytesMut::new();
        let message = match self {
            Ended::Expired => "phigate: authentication expired",
            Ended::Revoked => "phigate: the credential of this session was revoked",
        };
        Notice::fatal("28000", message)
            .with_hint("Get a fresh token (phigate login) or API key and reconnect.")
            .write(&mut out);
        out
    }
}

/// Watches the session's credential: its expiry, and (API keys) revocation.
#[derive(Clone)]
struct CredentialWatch {
    identity: crate::auth::Identity,
    expires_at: Option<std::time::SystemTime>,
    revocations: Option<tokio::sync::watch::Receiver<u64>>,
}

impl CredentialWatch {
    fn new(identity: &crate::auth::Identity, shared: &Shared) -> Self {
        let revocations = match identity.credential {
            crate::auth::Credential::ApiKey { .. } => shared.auth.revocations().map(|mut rx| {
                // A revocation between the login check and now must not be missed: check
                // once at the start, whatever the channel says.
                rx.mark_changed();
                rx
            }),
            _ => None,
        };
        CredentialWatch {
            identity: identity.clone(),
            expires_at: identity.expires_at,
            revocations,
        }
    }

    /// Checked before each batch of client messages: cheap (a clock read; the key store only
    /// when it changed).
    fn check(&mut self, shared: &Shared) -> Option<Ended> {
        if self
            .expires_at
            .is_some_and(|t| std::time::SystemTime::now() >= t)
        {
            return Some(Ended::Expired);
        }
        if let Some(rx) = &mut self.revocations {
            if rx.has_changed().unwrap_or(false) {
                rx.borrow_and_update();
                if !shared.auth.still_valid(&self.identity) {
                    return Some(Ended::Revoked);
                }
            }
        }
        None
    }

    /// When the credential expires, as a timer deadline.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        let left = self
            .expires_at?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Some(tokio::time::Instant::now() + left)
    }

    /// Resolves when the credential may have been revoked (never, for credentials that
    /// cannot be).
    async fn changed(&mut self) {
        match &mut self.revocations {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending().await,
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientTerminated => f.write_str("client terminated"),
            End::ClientClosed => f.write_str("client closed the connection"),
            End::ClientError(e) => write!(f, "client error: {e}"),
            End::UpstreamError(e) => write!(f, "database connection lost: {e}"),
            End::Shutdown => f.write_str("gateway shutdown"),
            End::CredentialEnded(Ended::Expired) => f.write_str("authentication expired"),
            End::CredentialEnded(Ended::Revoked) => f.write_str("credential revoked"),
            End::AuditUnavailable => f.write_str("audit log unavailable"),
        }
    }
}

pub async fn relay(ready: Ready, shared: &Shared) {
    let Ready {
        client,
        client_reader,
        upstream,
        identity,
        peer,
        registration,
        guard,
    } = ready;
    let (client_rd, client_wr) = client.split();
    let (up_rd, up_wr) = upstream.stream.split();
    let (events_tx, events_rx) = mpsc::channel(4);
    let in_flight = Arc::new(InFlight::default());

    let denials = guard.denials.clone();
    let session = guard.session.clone();
    let tape = guard.tape.clone();
    // A masked role's text goes through the content detectors too (the second net).
    let detect = guard.role.masked.then(|| Detect {
        own: identity.subject.0.as_bytes().to_vec(),
        ..Detect::default()
    });
    let started = std::time::Instant::now();
    let units: Arc<std::sync::Mutex<VecDeque<Unit>>> = Arc::default();
    let statements = Arc::new(AtomicU64::new(0));
    let credential = CredentialWatch::new(&identity, shared);
    let forward = Forward {
        credential: credential.clone(),
        guard,
        syncs_since_start: 0,
        shared,
        client: client_rd,
        reader: client_reader,
        upstream: up_wr,
        events: events_tx,
        in_flight: in_flight.clone(),
        out: BytesMut::with_capacity(16 * 1024),
        units: units.clone(),
        statements: statements.clone(),
        cancelled: registration.cancelled.clone(),
    }
    .run();
    let backward = Backward {
        credential,
        upstream: up_rd,
        reader: upstream.reader,
        client: client_wr,
        events: events_rx,
        in_flight,
        denials,
        tape: tape.clone(),
        detect,
        status: TransactionStatus::Idle,
        views_changed: false,
        released: 0,
        out: BytesMut::with_capacity(16 * 1024),
        completions: Completions {
            shared_units: units,
            units: VecDeque::new(),
            session: session.clone(),
            exchange_error: None,
            head_rows: 0,
            head_tag_rows: None,
            head_command: None,
            head_error: None,
        },
    }
    .run(shared);
    tokio::pin!(forward, backward);

    // The backward half decides when the session is over: it owns the client's write side and
    // so can say goodbye. The forward half ending (Terminate, EOF, bad message) closes the
    // event channel or sends a FATAL through it, and the backward half follows.
    let mut forward_end = None;
    let end = loop {
        tokio::select! {
            end = &mut forward, if forward_end.is_none() => forward_end = Some(end),
            end = &mut backward => break end,
        }
    };
    drop(registration);
    let end = match (forward_end, end) {
        (Some(f), _) => f,
        (None, b) => b,
    };
    if let (Some(tape), Some(audit)) = (&tape, &shared.audit) {
        let summary = tape.seal(&end.to_string()).await;
        // Sealed or not, the audit log says what became of the recording.
        let (sha256, bytes, truncated, error) = match summary.sealed {
            Ok(s) => (s.sha256, s.bytes, summary.truncated || s.capped, None),
            Err(e) => {
                tracing::error!(session = %session, error = %e, "the session's recording could not be sealed");
                (String::new(), 0, summary.truncated, Some(e))
            }
        };
        audit.submit(phigate_audit::Pending::Event(
            phigate_audit::Event::Recording {
                session: session.to_string(),
                file: summary.file,
                sha256,
                bytes,
                events: summary.events,
                encrypted: summary.encrypted,
                truncated,
                complete: error.is_none(),
                error,
            },
        ));
    }
    if let Some(audit) = &shared.audit {
        audit.submit(phigate_audit::Pending::Event(
            phigate_audit::Event::SessionEnd {
                session: session.to_string(),
                subject: identity.subject.0.clone(),
                role: identity.role.0.clone(),
                reason: end.to_string(),
                duration_ms: started.elapsed().as_millis() as u64,
                statements: statements.load(Ordering::Relaxed),
            },
        ));
    }
    tracing::info!(%peer, session = %session, subject = %identity.subject, role = %identity.role, end = %end, "session ended");
}

struct Forward<'s> {
    credential: CredentialWatch,
    guard: super::guard::Guard,
    /// Syncs forwarded since the last Query or Execute (see CopyDone below).
    syncs_since_start: u64,
    shared: &'s Shared,
    client: StreamRead,
    reader: FrameReader,
    upstream: StreamWrite,
    events: mpsc::Sender<Event>,
    in_flight: Arc<InFlight>,
    out: BytesMut,
    /// Statements on their way, for the backward half's `statement_end` records.
    units: Arc<std::sync::Mutex<VecDeque<Unit>>>,
    statements: Arc<AtomicU64>,
    /// Notified by the client's CancelRequest (withdraws a held statement).
    cancelled: Arc<tokio::sync::Notify>,
}

impl Forward<'_> {
    async fn run(mut self) -> End {
        match self.pump().await {
            Ok(end) => end,
            Err(ForwardError::Client(e)) => {
                let mut fatal = BytesMut::new();
                Notice::fatal("08P01", &format!("phigate: invalid message: {e}")).write(&mut fatal);
                let _ = self.events.send(Event::Fatal(fatal)).await;
                End::ClientError(e.to_string())
            }
            Err(ForwardError::Credential(why)) => {
                let _ = self.events.send(Event::Fatal(why.fatal())).await;
                End::CredentialEnded(why)
            }
            Err(ForwardError::Audit) => {
                let mut fatal = BytesMut::new();
                Notice::fatal(
                    "58030",
                    "phigate: the audit log cannot be written; the statement was not run",
                )
                .with_hint("Nothing runs unaudited. Reconnect shortly.")
                .write(&mut fatal);
                let _ = self.events.send(Event::Fatal(fatal)).await;
                End::AuditUnavailable
            }
            Err(ForwardError::ClientIo(e)) => End::ClientError(e.to_string()),
            Err(ForwardError::UpstreamIo(e)) => End::UpstreamError(e.to_string()),
        }
    }

    async fn pump(&mut self) -> Result<End, ForwardError> {
        loop {
            let n = self
                .client
                .read_buf(self.reader.buf_mut())
                .await
                .map_err(ForwardError::ClientIo)?;
            if n == 0 {
                // EOF without Terminate: tell the server we are done, politely.
                frontend::write::terminate(&mut self.out);
                let _ = self.flush().await;
                return Ok(End::ClientClosed);
            }
            // Nothing more runs on a credential that expired or was revoked.
            if let Some(why) = self.credential.check(self.shared) {
                return Err(ForwardError::Credential(why));
            }
            self.refresh_policy().await;
            // While the audit log cannot be written, every statement is refused (nothing runs
            // unaudited); the session itself goes on.
            self.guard.audit_down = self.shared.audit.as_ref().is_some_and(|a| !a.healthy());
            let mut sent_base = self.in_flight.sent.load(Ordering::Acquire);
            let mut terminated = false;
            let mut exchanges = 0;
            loop {
                let frame = match self.reader.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        // Whatever complete messages came before the bad one still go, once
                        // their records are written.
                        self.write_ahead().await?;
                        self.flush().await?;
                        return Err(ForwardError::Client(e));
                    }
                };
                let msg = match FrontendMessage::decode(&frame) {
                    Ok(msg) => msg,
                    Err(e) => {
                        self.write_ahead().await?;
                        self.flush().await?;
                        return Err(ForwardError::Client(e));
                    }
                };
                match msg {
                    FrontendMessage::Terminate => terminated = true,
                    FrontendMessage::Query { .. } | FrontendMessage::FunctionCall { .. } => {
                        exchanges += 1;
                        self.syncs_since_start = 0;
                    }
                    FrontendMessage::Execute { .. } => self.syncs_since_start = 0,
                    FrontendMessage::Sync => {
                        exchanges += 1;
                        self.syncs_since_start += 1;
                    }
                    // The client ends a COPY FROM STDIN it was told had started (by the last
                    // Query or Execute). PostgreSQL ignored every Sync that reached it in
                    // copy-in mode, so those bring no ReadyForQuery: uncount them.
                    FrontendMessage::CopyDone | FrontendMessage::CopyFail { .. } => {
                        let ignored = std::mem::take(&mut self.syncs_since_start);
                        let local = ignored.min(exchanges);
                        exchanges -= local;
                        self.in_flight
                            .sent
                            .fetch_sub(ignored - local, Ordering::AcqRel);
                    }
                    FrontendMessage::Password(_) => {
                        self.write_ahead().await?;
                        self.flush().await?;
                        return Err(ForwardError::Client(WireError::UnexpectedTag(b'p')));
                    }
                    _ => {}
                }
                // The ReadyForQuery that concludes this message: a Query's or FunctionCall's
                // own, otherwise the next Sync's.
                let concludes = match msg {
                    FrontendMessage::Query { .. } | FrontendMessage::FunctionCall { .. } => {
                        exchanges
                    }
                    _ => exchanges + 1,
                };
                self.guard.filter(
                    &frame,
                    &msg,
                    &self.shared.analyzer,
                    sent_base + concludes,
                    &mut self.out,
                );
                if std::mem::take(&mut self.guard.ddl_seen) {
                    self.in_flight.ddl_pending.store(true, Ordering::Release);
                }
                if let Some(held) = self.guard.held.take() {
                    // What came before the held statement runs now; it waits for a reviewer,
                    // and whatever the client sent after it waits behind it.
                    self.in_flight.sent.fetch_add(exchanges, Ordering::AcqRel);
                    sent_base += exchanges;
                    exchanges = 0;
                    self.write_ahead().await?;
                    self.flush().await?;
                    self.hold(held).await?;
                }
                if terminated {
                    break;
                }
            }
            self.write_ahead().await?;
            self.in_flight.sent.fetch_add(exchanges, Ordering::AcqRel);
            self.flush().await?;
            if terminated {
                return Ok(End::ClientTerminated);
            }
        }
    }

    /// A reloaded policy applies from the session's next transaction: a transaction runs under
    /// one policy from start to end.
    async fn refresh_policy(&mut self) {
        let at_rest = self.in_flight.idle() && self.in_flight.idle_status.load(Ordering::Acquire);
        if at_rest && self.shared.policy.views_stale() {
            self.shared
                .policy
                .ensure_catalog(&self.shared.upstream)
                .await;
        }
        if at_rest && self.shared.policy.version() != self.guard.policy_version() {
            let (policy, version) = self.shared.policy.snapshot();
            self.guard.update_policy(policy, version);
        }
    }

    /// Hands a held statement to the approvals module, then appends to `out` the statement
    /// (approved) or its refusal (denied, timed out, withdrawn by a cancel); a disconnect ends
    /// the session.
    async fn hold(&mut self, held: super::guard::Held) -> Result<(), ForwardError> {
        /// The session's side of the hold: the client's notices go through the backward half;
        /// the client's socket is read meanwhile (what arrives waits behind the statement).
        struct Client<'f> {
            events: &'f mpsc::Sender<Event>,
            client: &'f mut StreamRead,
            reader: &'f mut FrameReader,
            credential: &'f mut CredentialWatch,
            tape: Option<&'f Arc<crate::recording::Tape>>,
            shared: &'f Shared,
        }
        impl crate::approvals::HoldClient for Client<'_> {
            async fn notice(&mut self, notice: BytesMut) {
                let _ = self.events.send(Event::Notice(notice)).await;
            }
            async fn gone(&mut self) -> std::io::Error {
                loop {
                    if self.reader.buffered() >= (1 << 20) {
                        std::future::pending::<()>().await;
                    }
                    match self.client.read_buf(self.reader.buf_mut()).await {
                        Ok(0) => return std::io::ErrorKind::UnexpectedEof.into(),
                        Ok(_) => {}
                        Err(e) => return e,
                    }
                }
            }
            fn can_run(&mut self) -> bool {
                self.credential.check(self.shared).is_none()
                    && self.shared.audit.as_ref().is_none_or(|a| a.healthy())
            }
            fn opened(&mut self, review: &str) {
                if let Some(tape) = self.tape {
                    tape.held(review);
                }
            }
        }
        let shared = self.shared;
        let (kinds, tables) = super::guard::describe(&held.analysis);
        let identity = self.credential.identity.clone();
        let request = crate::approvals::HoldRequest {
            subject: &identity.subject.0,
            role: &identity.role.0,
            session: &self.guard.session,
            sql: &held.sql,
            analysis: &held.analysis,
            rule: &held.refusal.rule,
            hint: &held.refusal.hint,
            settings: self.guard.approval_settings(&held.refusal.rule),
            defaults: &shared.approvals,
            phi_columns: super::guard::phi_columns(&tables, &shared.phi_tags),
            kinds,
            tables,
            session_reason: self.guard.reason.clone(),
        };
        let mut client = Client {
            events: &self.events,
            client: &mut self.client,
            reader: &mut self.reader,
            credential: &mut self.credential,
            tape: self.guard.tape.as_ref(),
            shared,
        };
        let interrupts = crate::approvals::Interrupts {
            cancel: &self.cancelled,
            force_close: &shared.force_close,
        };
        use crate::approvals::Settlement;
        match shared.reviews.hold(request, &mut client, interrupts).await {
            Settlement::Run { review } => self.guard.release(held, &review, &mut self.out),
            Settlement::Refuse { review, refusal } => {
                self.guard.reject(held, &review, refusal, &mut self.out)
            }
            Settlement::Gone(e) => return Err(ForwardError::ClientIo(e)),
        }
        Ok(())
    }

    /// The batch's audit records go to disk (one shared fsync) before any of its statements
    /// reaches the database; for a batch of reads that change nothing, they are written (they
    /// survive the gateway's process) before, and durable before any result is released.
    async fn write_ahead(&mut self) -> Result<(), ForwardError> {
        let Some(audit) = &self.shared.audit else {
            return Ok(());
        };
        if self.guard.audit_batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.guard.audit_batch);
        self.statements
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        {
            let mut units = self.units.lock().unwrap_or_else(|e| e.into_inner());
            units.extend(self.guard.audit_units.drain(..));
        }
        let ticket = audit.append(batch).map_err(|_| ForwardError::Audit)?;
        if std::mem::take(&mut self.guard.audit_write_ahead) {
            return audit.durable(ticket).await.map_err(|_| ForwardError::Audit);
        }
        // Set before the statements are sent: their answers cannot arrive before it.
        self.in_flight
            .release_after
            .fetch_max(ticket.0, Ordering::SeqCst);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ForwardError> {
        if !self.out.is_empty() {
            self.upstream
                .write_all(&self.out)
                .await
                .map_err(ForwardError::UpstreamIo)?;
            self.out.clear();
        }
        Ok(())
    }
}

enum RelayError {
    Wire(WireError),
    /// `SET client_encoding` to something else: the gateway reads statement text as UTF-8.
    Encoding,
}

impl From<WireError> for RelayError {
    fn from(e: WireError) -> Self {
        RelayError::Wire(e)
    }
}

enum ForwardError {
    Audit,
    Client(WireError),
    Credential(Ended),
    ClientIo(std::io::Error),
    UpstreamIo(std::io::Error),
}

struct Backward {
    credential: CredentialWatch,
    upstream: StreamRead,
    reader: FrameReader,
    client: StreamWrite,
    events: mpsc::Receiver<Event>,
    in_flight: Arc<InFlight>,
    denials: Arc<super::guard::Denials>,
    tape: Option<Arc<crate::recording::Tape>>,
    /// For a masked role: the content detectors' state (`None`: not scanned).
    detect: Option<Detect>,
    status: TransactionStatus,
    /// Set by `take_frames` when committed DDL may have changed views.
    views_changed: bool,
    /// The audit ticket known durable: results up to it may be released.
    released: u64,
    out: BytesMut,
    completions: Completions,
}

/// Completes the statements the forward half sent (`statement_end` records): rows, SQLSTATE,
/// duration, from the database's responses in order.
struct Completions {
    shared_units: Arc<std::sync::Mutex<VecDeque<Unit>>>,
    /// Taken from the shared queue once per read, so rows cost no lock.
    units: VecDeque<Unit>,
    session: Arc<str>,
    /// The error that ended the current exchange: the reason later statements of it were
    /// skipped.
    exchange_error: Option<String>,
    head_rows: u64,
    head_tag_rows: Option<u64>,
    head_command: Option<String>,
    head_error: Option<String>,
}

impl Completions {
    fn refill(&mut self) {
        let mut shared = self.shared_units.lock().unwrap_or_else(|e| e.into_inner());
        self.units.extend(shared.drain(..));
    }

    fn finish_head(&mut self, shared: &Shared) {
        let Some(unit) = self.units.pop_front() else {
            return;
        };
        let sqlstate = self
            .head_error
            .take()
            .or_else(|| self.exchange_error.clone())
            .unwrap_or_else(|| "00000".to_owned());
        let rows = self.head_tag_rows.take().or(Some(self.head_rows));
        if let Some(audit) = &shared.audit {
            audit.submit(phigate_audit::Pending::Event(
                phigate_audit::Event::StatementEnd {
                    session: self.session.to_string(),
                    n: unit.n,
                    sqlstate,
                    rows,
                    command: self.head_command.take(),
                    duration_us: unit.started.elapsed().as_micros() as u64,
                },
            ));
        }
        self.head_rows = 0;
    }

    fn on_frame(
        &mut self,
        tag: u8,
        frame: &phigate_wire::Frame,
        code: Option<&str>,
        exchange: u64,
        shared: &Shared,
    ) {
        if self.units.is_empty() {
            return;
        }
        let execute = self.units.front().is_some_and(|u| u.execute);
        match tag {
            backend::tag::DATA_ROW => self.head_rows += 1,
            backend::tag::COMMAND_COMPLETE => {
                if let Some((command, rows)) = command_tag(frame) {
                    self.head_command.get_or_insert(command);
                    if let Some(r) = rows {
                        *self.head_tag_rows.get_or_insert(0) += r;
                    }
                }
                if execute {
                    self.finish_head(shared);
                }
            }
            backend::tag::PORTAL_SUSPENDED | backend::tag::EMPTY_QUERY_RESPONSE if execute => {
                self.finish_head(shared)
            }
            backend::tag::ERROR_RESPONSE => {
                let code = code.unwrap_or("XX000").to_owned();
                self.exchange_error.get_or_insert(code.clone());
                // A refused message's stand-in error, or an Execute's: its own end.
                // The error of the head statement's own exchange: an Execute's ends it; a
                // Query's or a refused message's is recorded when its ReadyForQuery comes.
                if self.units.front().is_some_and(|u| u.exchange == exchange) {
                    self.head_error.get_or_insert(code);
                    if execute {
                        self.finish_head(shared);
                    }
                }
            }
            backend::tag::READY_FOR_QUERY => {
                while self.units.front().is_some_and(|u| u.exchange <= exchange) {
                    self.finish_head(shared);
                }
                self.exchange_error = None;
            }
            _ => {}
        }
    }
}

/// The content detectors on a masked session's way out (`phigate_policy::detect`): text
/// values of rows, COPY text/CSV data, and error and notice fields, masked in place (lengths
/// never change, so no message is re-framed).
#[derive(Default)]
struct Detect {
    /// Per column of the current result: a text-like type. `None` before a RowDescription
    /// (an Execute of a statement described earlier): then values that look like text are
    /// scanned.
    text_cols: Option<Vec<bool>>,
    copy_binary: bool,
    /// The session's own subject: shown as is (an agent may see who it is).
    own: Vec<u8>,
}

/// Types whose values are text in both formats: text, varchar, bpchar, char, name, json,
/// jsonb (binary: a version byte, then text), xml, unknown. Arrays are not: their binary form
/// interleaves lengths with the elements, and the RowDescription of a described statement does
/// not say which format the rows will come in.
fn text_like(oid: u32) -> bool {
    matches!(oid, 25 | 1043 | 1042 | 18 | 19 | 114 | 3802 | 142 | 705)
}

impl Detect {
    /// Scans one whole message (header included) in place.
    fn scan(&mut self, msg: &mut [u8]) {
        if msg.len() < 5 {
            return;
        }
        let tag = msg[0];
        if tag == backend::tag::ROW_DESCRIPTION {
            let frame = phigate_wire::Frame::from_raw(bytes::Bytes::copy_from_slice(msg));
            self.text_cols = frame.ok().and_then(|f| {
                backend::decode_row_description(&f)
                    .ok()
                    .map(|cols| cols.iter().map(|c| text_like(c.type_oid)).collect())
            });
            return;
        }
        let body = &mut msg[5..];
        match tag {
            backend::tag::DATA_ROW => {
                if body.len() < 2 {
                    return;
                }
                let n = i16::from_be_bytes([body[0], body[1]]).max(0) as usize;
                let mut at = 2;
                for col in 0..n {
                    let Some(len) = body.get(at..at + 4) else {
                        return;
                    };
                    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                    at += 4;
                    if len <= 0 {
                        continue;
                    }
                    let end = at + len as usize;
                    let Some(value) = body.get_mut(at..end) else {
                        return;
                    };
                    let scan = match &self.text_cols {
                        Some(cols) => cols.get(col).copied().unwrap_or(false),
                        None => looks_like_text(value),
                    };
                    if scan {
                        phigate_policy::detect::scrub_except(value, &[&self.own]);
                    }
                    at = end;
                }
            }
            backend::tag::COPY_OUT_RESPONSE => self.copy_binary = body.first() == Some(&1),
            // CopyData out: text and CSV lines (binary COPY carries lengths: left alone).
            b'd' if !self.copy_binary => {
                phigate_policy::detect::scrub_except(body, &[&self.own]);
            }
            backend::tag::ERROR_RESPONSE | backend::tag::NOTICE_RESPONSE => {
                // Field type byte, then a NUL-terminated value: each value on its own.
                let mut at = 0;
                while at < body.len() && body[at] != 0 {
                    let start = at + 1;
                    let end = body[start..]
                        .iter()
                        .position(|b| *b == 0)
                        .map_or(body.len(), |p| start + p);
                    phigate_policy::detect::scrub_except(&mut body[start..end], &[&self.own]);
                    at = end + 1;
                }
                self.text_cols = None;
            }
            // A result ends: the next one brings its own description (or none, for an Execute
            // of a statement described earlier).
            backend::tag::READY_FOR_QUERY
            | backend::tag::COMMAND_COMPLETE
            | backend::tag::EMPTY_QUERY_RESPONSE => self.text_cols = None,
            _ => {}
        }
    }
}

/// A value of unknown type that is printable UTF-8 (binary encodings of numbers, dates and
/// the like carry control bytes or are too short to hold an identifier).
fn looks_like_text(v: &[u8]) -> bool {
    // Eight and sixteen bytes: int8, float8, timestamps, uuids in binary.
    if v.len() == 8 || v.len() == 16 {
        return false;
    }
    v.iter()
        .all(|b| *b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r'))
        && std::str::from_utf8(v).is_ok()
}

/// `SELECT 5` → ("SELECT", Some(5)); `INSERT 0 3` → ("INSERT", Some(3)); `BEGIN` → ("BEGIN", None).
fn command_tag(frame: &phigate_wire::Frame) -> Option<(String, Option<u64>)> {
    let body = frame.body();
    let text = std::str::from_utf8(body.strip_suffix(&[0]).unwrap_or(body)).ok()?;
    let mut words = text.split(' ');
    let command = words.next()?.to_owned();
    let rows = text.rsplit(' ').next().and_then(|n| n.parse().ok());
    Some((command, rows))
}

impl Backward {
    /// Waits until the records of the reads forwarded so far are durable; false if they cannot
    /// be (their results must not leave).
    async fn audit_released(&mut self, shared: &Shared) -> bool {
        let gate = self.in_flight.release_after.load(Ordering::SeqCst);
        if gate <= self.released {
            return true;
        }
        let Some(audit) = &shared.audit else {
            return true;
        };
        let ticket = phigate_audit::Ticket(gate);
        if !audit.is_durable(ticket) && audit.durable(ticket).await.is_err() {
            return false;
        }
        self.released = gate;
        true
    }

    /// Sends the client a message of the gateway's own, recorded as such.
    async fn send_own(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(tape) = &self.tape {
            tape.from_gateway(bytes);
        }
        self.client.write_all(bytes).await
    }

    /// Sends the client the gateway's FATAL (the session ends; a client already gone is not
    /// an error).
    async fn fatal(&mut self, code: &str, message: &str, hint: &str) {
        let mut out = BytesMut::new();
        Notice::fatal(code, message).with_hint(hint).write(&mut out);
        let _ = self.send_own(&out).await;
    }

    async fn results_withheld(&mut self) -> End {
        self.fatal(
            "58030",
            "phigate: the audit log cannot be written; the statement's results were withheld",
            "Nothing leaves unaudited. Reconnect shortly.",
        )
        .await;
        End::AuditUnavailable
    }

    async fn run(mut self, shared: &Shared) -> End {
        let end = self.pump(shared).await;
        let _ = self.client.shutdown().await;
        end
    }

    async fn pump(&mut self, shared: &Shared) -> End {
        let mut draining = false;
        // Set when the credential ended while a statement ran: the session ends once it is
        // answered.
        let mut ending: Option<Ended> = None;
        let expiry = self.credential.deadline();
        let expired = async move {
            match expiry {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let mut watch = self.credential.clone();
        // Created once: a fresh `cancelled()` per iteration would register and unregister a
        // waiter (a lock each way) on every message batch.
        let drain = shared.draining.cancelled();
        let force = shared.force_close.cancelled();
        tokio::pin!(drain, force);
        loop {
            tokio::select! {
                // Events first: when the forward half ends on a bad message, its FATAL is in the
                // channel before the database can see the connection close; the client must get
                // that FATAL, not "the connection to the database was lost".
                biased;
                ev = self.events.recv() => match ev {
                    Some(Event::Fatal(bytes)) => {
                        let _ = self.send_own(&bytes).await;
                        return End::ClientError("protocol violation".into());
                    }
                    Some(Event::Notice(bytes)) => {
                        if let Err(e) = self.send_own(&bytes).await {
                            return End::ClientError(e.to_string());
                        }
                    }
                    // The forward half ended (Terminate or EOF): nobody is listening.
                    None => return End::ClientClosed,
                },
                read = self.upstream.read_buf(self.reader.buf_mut()) => {
                    match read {
                        Ok(0) => return self.upstream_lost(shared, "the database closed the connection").await,
                        Ok(_) => {}
                        Err(e) => return self.upstream_lost(shared, &e.to_string()).await,
                    }
                    match self.take_frames(shared) {
                        Ok(()) => {}
                        Err(RelayError::Encoding) => return self.refuse_encoding().await,
                        Err(RelayError::Wire(e)) => return self.upstream_lost(shared, &e.to_string()).await,
                    }
                    // Before the client hears that its DDL committed, so its next statement,
                    // or anyone's, is decided with the views read again.
                    if std::mem::take(&mut self.views_changed) {
                        shared.policy.mark_views_stale();
                    }
                    if !self.out.is_empty() && !self.audit_released(shared).await {
                        return self.results_withheld().await;
                    }
                    if let Err(e) = self.client.write_all(&self.out).await {
                        return End::ClientError(e.to_string());
                    }
                    self.out.clear();
                    if draining && self.at_rest() {
                        return self.say_goodbye().await;
                    }
                    if let Some(why) = ending.filter(|_| self.quiet()) {
                        return self.credential_ended(why).await;
                    }
                }
                _ = &mut expired, if ending.is_none() => {
                    if self.quiet() {
                        return self.credential_ended(Ended::Expired).await;
                    }
                    ending = Some(Ended::Expired);
                }
                _ = watch.changed(), if ending.is_none() => {
                    if !shared.auth.still_valid(&watch.identity) {
                        if self.quiet() {
                            return self.credential_ended(Ended::Revoked).await;
                        }
                        ending = Some(Ended::Revoked);
                    }
                }
                _ = &mut drain, if !draining => {
                    draining = true;
                    if self.at_rest() {
                        return self.say_goodbye().await;
                    }
                }
                _ = &mut force => return self.say_goodbye().await,
            }
        }
    }

    /// Moves every whole frame into the output, noting ReadyForQuery. Fails closed when the
    /// session switches to an encoding the gateway cannot read.
    fn take_frames(&mut self, shared: &Shared) -> Result<(), RelayError> {
        let answered_base = self.in_flight.answered.load(Ordering::Acquire);
        let mut answered = 0;
        let audited = shared.audit.is_some();
        if audited {
            self.completions.refill();
        }
        let tape = self.tape.clone();
        let mut tape = tape.as_deref().map(crate::recording::Tape::batch);
        while let Some(frame) = self.reader.next_frame()? {
            let tag = frame.tag();
            // The database's error for a substituted message becomes the gateway's refusal.
            let refusal = if tag == backend::tag::ERROR_RESPONSE {
                self.denials.rewrite(&frame)
            } else {
                None
            };
            if audited {
                // The exchange this frame belongs to: the next ReadyForQuery's number (its own,
                // for a ReadyForQuery).
                let exchange = answered_base + answered + 1;
                let code = match &refusal {
                    Some((_, c)) => Some((*c).to_owned()),
                    None if tag == backend::tag::ERROR_RESPONSE => {
                        phigate_wire::backend::Fields::decode(&frame)
                            .ok()
                            .and_then(|f| f.code().map(str::to_owned))
                    }
                    None => None,
                };
                self.completions
                    .on_frame(tag, &frame, code.as_deref(), exchange, shared);
            }
            match tag {
                backend::tag::READY_FOR_QUERY => {
                    self.status = backend::decode_ready_for_query(&frame)?;
                    self.in_flight
                        .idle_status
                        .store(self.status == TransactionStatus::Idle, Ordering::Release);
                    answered += 1;
                    self.denials.exchange_done(answered_base + answered);
                    if self.status == TransactionStatus::Idle
                        && self.in_flight.ddl_pending.swap(false, Ordering::AcqRel)
                    {
                        self.views_changed = true;
                    }
                }
                backend::tag::ERROR_RESPONSE => {
                    if let Some((refusal, _)) = refusal {
                        if let Some(t) = tape.as_mut() {
                            t.bytes(&refusal, true);
                        }
                        self.out.extend_from_slice(&refusal);
                        continue;
                    }
                }
                backend::tag::PARAMETER_STATUS => {
                    let (name, value) = backend::decode_parameter_status(&frame)?;
                    if name == "client_encoding" && !super::is_utf8(value) {
                        return Err(RelayError::Encoding);
                    }
                    // The gateway parses statements as PostgreSQL does with this on; if the
                    // session turned it off anyhow, stop before another statement is read.
                    if name == "standard_conforming_strings" && value != "on" {
                        return Err(RelayError::Encoding);
                    }
                }
                _ => {}
            }
            let start = self.out.len();
            self.out.extend_from_slice(frame.as_bytes());
            if let Some(d) = self.detect.as_mut() {
                d.scan(&mut self.out[start..]);
            }
            // What the client receives, after the detectors.
            if let Some(t) = tape.as_mut() {
                t.bytes(&self.out[start..], false);
            }
        }
        self.in_flight
            .answered
            .fetch_add(answered, Ordering::AcqRel);
        Ok(())
    }

    /// Idle and outside a transaction: closing now loses nothing.
    fn at_rest(&self) -> bool {
        self.status == TransactionStatus::Idle
            && self.in_flight.idle()
            && self.reader.buffered() == 0
    }

    /// Nothing in flight (a transaction may be open: it is rolled back when the database
    /// session closes).
    fn quiet(&self) -> bool {
        self.in_flight.idle() && self.reader.buffered() == 0
    }

    async fn credential_ended(&mut self, why: Ended) -> End {
        let _ = self.send_own(&why.fatal()).await;
        End::CredentialEnded(why)
    }

    async fn refuse_encoding(&mut self) -> End {
        self.fatal(
            "0A000",
            "phigate: only client_encoding UTF8 with standard_conforming_strings on is supported",
            "Reconnect and leave client_encoding and standard_conforming_strings alone.",
        )
        .await;
        End::ClientError("client_encoding changed away from UTF8".into())
    }

    async fn say_goodbye(&mut self) -> End {
        self.fatal(
            "57P01",
            "phigate: terminating connection because the gateway is shutting down",
            "Reconnect; another gateway instance or this one after restart will serve you.",
        )
        .await;
        End::Shutdown
    }

    async fn upstream_lost(&mut self, shared: &Shared, why: &str) -> End {
        // Forward what did arrive (the server usually sends its own FATAL before closing), then
        // make sure the client learns the session is gone. Results whose records are not on
        // disk stay here.
        if !self.out.is_empty() && self.audit_released(shared).await {
            let _ = self.client.write_all(&self.out).await;
        }
        self.fatal(
            "08006",
            "phigate: the connection to the database was lost",
            "Reconnect; the gateway will open a new database session when the database is available.",
        )
        .await;
        End::UpstreamError(why.to_owned())
    }
}
