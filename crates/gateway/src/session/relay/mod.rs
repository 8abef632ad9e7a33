//! The relay: after startup, messages flow both ways until either side ends.
//!
//! Two halves run concurrently inside the session's task, one per direction, so that a client
//! that pipelines many statements without reading (or a server streaming a huge result) can
//! never deadlock the session: each half blocks only on its own peer.
//!
//! - [`forward`] reads client messages, has the guard decide each, and writes them to the
//!   database. It never writes to the client; anything it must tell the client goes as an
//!   [`Event`] to the other half, which alone owns the client's write side (so gateway
//!   messages and database messages are ordered in one place).
//! - [`backward`] reads database messages and writes them to the client, and handles events
//!   and shutdown.
//! - [`exchange`] is the one owner of what PostgreSQL holds for the session; both halves tell
//!   it what passed (the forward half what it sent, the backward half what came back), and ask
//!   it everything else.
//!
//! Each half reads whatever the socket has, takes every whole frame out of its one read buffer,
//! and writes the batch with one `write_all`: an exchange costs one read and one write per
//! direction, not one per message. The relay runs over any [`crate::net::Stream`], an
//! in-memory one included.

pub mod backward;
pub mod credential;
pub mod exchange;
pub mod forward;
mod hold;
pub mod observe;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use tokio::sync::{mpsc, Notify};

use super::encoding::ClientEncoding;
use super::Ready;
use crate::state::Shared;
use credential::{CredentialWatch, Ended};
use exchange::Exchange;

/// What the forward half asks the backward half to tell the client.
#[derive(Debug)]
pub enum Event {
    /// Send this FATAL (already encoded) and close the session.
    Fatal(BytesMut),
    /// Send this NoticeResponse now (a statement is held for review).
    Notice(BytesMut),
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    ClientTerminated,
    ClientClosed,
    ClientError(String),
    UpstreamError(String),
    Shutdown,
    CredentialEnded(Ended),
    AuditUnavailable,
    TransactionTimeout,
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
            End::TransactionTimeout => f.write_str("transaction timeout"),
        }
    }
}

/// What the two halves share: the exchange owner, and the audit gate of results.
pub struct Link {
    exchange: Mutex<Exchange>,
    /// Signalled when answers made room in the exchange.
    room: Notify,
    /// The audit ticket that must be durable before anything more from the database reaches
    /// the client: reads are forwarded once their records are written, and their results wait.
    release_after: AtomicU64,
    /// Statements recorded in the session.
    statements: AtomicU64,
    /// A statement is held for review: the client waits for its answer, so the session is
    /// not at rest.
    holding: AtomicBool,
    /// The session's client encoding, as the database last reported it (the backward half
    /// keeps it; the forward half decodes statement text with it).
    encoding: Mutex<ClientEncoding>,
    /// A statement that may change `client_encoding` was sent, and no ReadyForQuery with
    /// nothing in flight after it has been seen yet: what the database will convert the next
    /// text with is not known.
    encoding_unsettled: AtomicBool,
    /// A ReadyForQuery arrived with nothing in flight after it: every change of the encoding
    /// sent before it has been reported (PostgreSQL reports changed settings before it).
    answered_at_ready: AtomicBool,
}

impl Link {
    fn new(encoding: ClientEncoding, exchange: Exchange) -> Link {
        Link {
            exchange: Mutex::new(exchange),
            room: Notify::new(),
            release_after: AtomicU64::new(0),
            statements: AtomicU64::new(0),
            holding: AtomicBool::new(false),
            encoding: Mutex::new(encoding),
            encoding_unsettled: AtomicBool::new(false),
            answered_at_ready: AtomicBool::new(false),
        }
    }

    /// The encoding the database converts the client's next text from; `None` while a change
    /// of it may be in flight (see [`Link::encoding_may_change`]).
    fn encoding(&self) -> Option<ClientEncoding> {
        if self.encoding_unsettled.load(Ordering::Acquire) {
            // Under the exchange's lock: the backward half sets `answered_at_ready` under it.
            let ex = self.exchange();
            if !(self.answered_at_ready.load(Ordering::Acquire) && ex.idle()) {
                return None;
            }
            self.encoding_unsettled.store(false, Ordering::Release);
        }
        Some(*self.encoding.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A statement that may change `client_encoding` was just entered in the exchange (SET,
    /// RESET, set_config, DISCARD ALL, or the end of a transaction that changed it): until a
    /// ReadyForQuery with nothing in flight after it, text with non-ASCII bytes cannot be
    /// decoded as the database will. (CommandComplete is not enough: PostgreSQL reports the
    /// new value with the next ReadyForQuery, and converts with it at once.)
    fn encoding_may_change(&self) {
        let _ex = self.exchange();
        self.answered_at_ready.store(false, Ordering::Release);
        self.encoding_unsettled.store(true, Ordering::Release);
    }

    /// Whether the encoding is known and the session outside a transaction block: a change
    /// made earlier can no longer be undone by a ROLLBACK.
    fn encoding_at_rest(&self) -> bool {
        !self.encoding_unsettled.load(Ordering::Acquire) && self.at_rest()
    }

    /// The database reported a new client encoding.
    fn set_encoding(&self, e: ClientEncoding) {
        *self.encoding.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    /// The exchange owner. Held briefly: one message (forward) or one read's frames
    /// (backward), never across an await.
    pub fn exchange(&self) -> MutexGuard<'_, Exchange> {
        self.exchange.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Nothing in flight and nothing held.
    fn idle(&self) -> bool {
        !self.holding.load(Ordering::Acquire) && self.exchange().idle()
    }

    /// The database reported an open (or failed) transaction block.
    fn in_transaction(&self) -> bool {
        self.exchange().status() != phigate_wire::backend::TransactionStatus::Idle
    }

    /// Idle and outside a transaction.
    fn at_rest(&self) -> bool {
        !self.holding.load(Ordering::Acquire) && self.exchange().at_rest()
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
        // Held until the relay ends: the session's place under its caps.
        seat: _seat,
        client_view,
    } = ready;
    let (client_rd, client_wr) = client.split();
    let (up_rd, up_wr) = upstream.stream.split();
    let (events_tx, events_rx) = mpsc::channel(4);
    // The cache's names carry a nonce of their own: they are visible to the session
    // (`pg_prepared_statements`), the refusals' tokens are not.
    let cache_nonce = format!("{:016x}", rand::random::<u64>());
    let exchange = Exchange::new(shared.started.upstream.statement_cache, &cache_nonce);
    let link = Arc::new(Link::new(client_view.encoding, exchange));
    let session = guard.session().clone();
    let tape = guard.tape().cloned();
    // A masked role's text goes through the content detectors too (the second net).
    let detect = guard
        .role()
        .masked
        .then(|| observe::Detect::new(identity.subject.0.as_bytes(), client_view.encoding));
    let started = std::time::Instant::now();
    let transaction_timeout = guard.role().transaction_timeout_ms;
    let credential = CredentialWatch::new(&identity, shared);
    let forward = forward::Forward::new(forward::Parts {
        credential: credential.clone(),
        guard,
        shared,
        client: client_rd,
        reader: client_reader,
        upstream: up_wr,
        events: events_tx,
        link: link.clone(),
        cancelled: registration.cancelled.clone(),
    })
    .run();
    let backward = backward::Backward::new(backward::Parts {
        credential,
        upstream: up_rd,
        reader: upstream.reader,
        client: client_wr,
        events: events_rx,
        link: link.clone(),
        tape: tape.clone(),
        detect,
        session: session.clone(),
        transaction_timeout: transaction_timeout.map(std::time::Duration::from_millis),
        view: client_view,
    })
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
    if let (Some(tape), Some(audit)) = (&tape, &shared.audit.log) {
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
    if let Some(audit) = &shared.audit.log {
        audit.submit(phigate_audit::Pending::Event(
            phigate_audit::Event::SessionEnd {
                session: session.to_string(),
                subject: identity.subject.0.clone(),
                role: identity.role.0.clone(),
                reason: end.to_string(),
                duration_ms: started.elapsed().as_millis() as u64,
                statements: link.statements.load(Ordering::Relaxed),
            },
        ));
    }
    tracing::info!(%peer, session = %session, subject = %identity.subject, role = %identity.role, end = %end, "session ended");
}

#[cfg(test)]
mod harness_tests;
