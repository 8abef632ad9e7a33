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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use phigate_wire::backend::{self, Notice, TransactionStatus};
use phigate_wire::frontend::{self, FrontendMessage};
use phigate_wire::{FrameReader, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Ready;
use crate::net::{StreamRead, StreamWrite};
use crate::server::Shared;

/// What the forward half asks the backward half to tell the client.
#[derive(Debug)]
enum Event {
    /// Send this FATAL (already encoded) and close the session.
    Fatal(BytesMut),
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
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            idle_status: AtomicBool::new(true),
            ddl_pending: AtomicBool::new(false),
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
        status: TransactionStatus::Idle,
        views_changed: false,
        out: BytesMut::with_capacity(16 * 1024),
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
    tracing::info!(%peer, subject = %identity.subject, role = %identity.role, end = %end, "session ended");
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
            let sent_base = self.in_flight.sent.load(Ordering::Acquire);
            let mut terminated = false;
            let mut exchanges = 0;
            loop {
                let frame = match self.reader.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        // Whatever complete messages came before the bad one still go.
                        self.flush().await?;
                        return Err(ForwardError::Client(e));
                    }
                };
                let msg = match FrontendMessage::decode(&frame) {
                    Ok(msg) => msg,
                    Err(e) => {
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
                if terminated {
                    break;
                }
            }
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
    status: TransactionStatus,
    /// Set by `take_frames` when committed DDL may have changed views.
    views_changed: bool,
    out: BytesMut,
}

impl Backward {
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
                ev = self.events.recv() => match ev {
                    Some(Event::Fatal(bytes)) => {
                        let _ = self.client.write_all(&bytes).await;
                        return End::ClientError("protocol violation".into());
                    }
                    // The forward half ended (Terminate or EOF): nobody is listening.
                    None => return End::ClientClosed,
                },
                read = self.upstream.read_buf(self.reader.buf_mut()) => {
                    match read {
                        Ok(0) => return self.upstream_lost("the database closed the connection").await,
                        Ok(_) => {}
                        Err(e) => return self.upstream_lost(&e.to_string()).await,
                    }
                    match self.take_frames() {
                        Ok(()) => {}
                        Err(RelayError::Encoding) => return self.refuse_encoding().await,
                        Err(RelayError::Wire(e)) => return self.upstream_lost(&e.to_string()).await,
                    }
                    // Before the client hears that its DDL committed, so its next statement,
                    // or anyone's, is decided with the views read again.
                    if std::mem::take(&mut self.views_changed) {
                        shared.policy.mark_views_stale();
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
    fn take_frames(&mut self) -> Result<(), RelayError> {
        let answered_base = self.in_flight.answered.load(Ordering::Acquire);
        let mut answered = 0;
        while let Some(frame) = self.reader.next_frame()? {
            match frame.tag() {
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
                    if let Some(refusal) = self.denials.rewrite(&frame) {
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
            self.out.extend_from_slice(frame.as_bytes());
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
        let _ = self.client.write_all(&why.fatal()).await;
        End::CredentialEnded(why)
    }

    async fn refuse_encoding(&mut self) -> End {
        let mut out = BytesMut::new();
        Notice::fatal(
            "0A000",
            "phigate: only client_encoding UTF8 with standard_conforming_strings on is supported",
        )
        .with_hint("Reconnect and leave client_encoding and standard_conforming_strings alone.")
        .write(&mut out);
        let _ = self.client.write_all(&out).await;
        End::ClientError("client_encoding changed away from UTF8".into())
    }

    async fn say_goodbye(&mut self) -> End {
        let mut out = BytesMut::new();
        Notice::fatal(
            "57P01",
            "phigate: terminating connection because the gateway is shutting down",
        )
        .with_hint("Reconnect; another gateway instance or this one after restart will serve you.")
        .write(&mut out);
        let _ = self.client.write_all(&out).await;
        End::Shutdown
    }

    async fn upstream_lost(&mut self, why: &str) -> End {
        // Forward what did arrive (the server usually sends its own FATAL before closing), then
        // make sure the client learns the session is gone.
        let _ = self.client.write_all(&self.out).await;
        let mut out = BytesMut::new();
        Notice::fatal("08006", "phigate: the connection to the database was lost")
            .with_hint("Reconnect; the gateway will open a new database session when the database is available.")
            .write(&mut out);
        let _ = self.client.write_all(&out).await;
        End::UpstreamError(why.to_owned())
    }
}
