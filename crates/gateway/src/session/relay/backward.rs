//! The backward half: database → exchange owner, detectors, recording → client. It alone
//! writes to the client, and it decides when the session is over.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use phigate_wire::backend::tag;
use phigate_wire::{sqlstate, FrameReader, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::credential::{CredentialWatch, Ended};
use super::exchange::Finished;
use super::observe::Detect;
use super::{End, Event, Link};
use crate::net::{StreamRead, StreamWrite};
use crate::pgerror::{ClientError, ToClient};
use crate::session::encoding::ClientEncoding;
use crate::state::Shared;

enum RelayError {
    Wire(WireError),
    /// A client encoding the gateway cannot analyse, or standard_conforming_strings off.
    Encoding,
    /// The database answered what the exchange owner cannot match to what was sent.
    Desync,
}

impl From<WireError> for RelayError {
    fn from(e: WireError) -> Self {
        RelayError::Wire(e)
    }
}

/// What the backward half is made of.
pub struct Parts {
    pub credential: CredentialWatch,
    pub upstream: StreamRead,
    pub reader: FrameReader,
    pub client: StreamWrite,
    pub events: mpsc::Receiver<Event>,
    pub link: Arc<Link>,
    pub tape: Option<Arc<crate::recording::Tape>>,
    /// For a masked role: the content detectors' state (`None`: not scanned).
    pub detect: Option<Detect>,
    pub session: Arc<str>,
    /// The role's cap on a transaction's length.
    pub transaction_timeout: Option<std::time::Duration>,
    /// What the client was told of its session (encoding, application_name).
    pub view: crate::session::ClientView,
}

pub struct Backward {
    p: Parts,
    /// The audit ticket known durable: results up to it may be released.
    released: u64,
    out: BytesMut,
    /// The database ended the session with a FATAL of its own (terminated, idle timeout,
    /// shutdown): the client has its reason, as it would direct, and gets no second one.
    upstream_fatal: bool,
}

impl Backward {
    pub fn new(p: Parts) -> Backward {
        Backward {
            p,
            released: 0,
            out: BytesMut::with_capacity(16 * 1024),
            upstream_fatal: false,
        }
    }

    pub async fn run(mut self, shared: &Shared) -> End {
        let end = self.pump(shared).await;
        let _ = self.p.client.shutdown().await;
        end
    }

    async fn pump(&mut self, shared: &Shared) -> End {
        let mut draining = false;
        // Set when the credential ended while a statement ran: the session ends once it is
        // answered.
        let mut ending: Option<Ended> = None;
        let expiry = self.p.credential.deadline();
        let expired = async move {
            match expiry {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let mut watch = self.p.credential.clone();
        // Created once: a fresh `cancelled()` per iteration would register and unregister a
        // waiter (a lock each way) on every message batch.
        let drain = shared.lifecycle.draining.cancelled();
        let force = shared.lifecycle.force_close.cancelled();
        tokio::pin!(drain, force);
        // The open transaction's deadline (`transaction_timeout`), re-armed as it changes.
        let mut tx_deadline: Option<tokio::time::Instant> = None;
        let tx_timer = tokio::time::sleep(std::time::Duration::from_secs(86_400 * 365));
        tokio::pin!(tx_timer);
        loop {
            tokio::select! {
                // Events first: when the forward half ends on a bad message, its FATAL is in the
                // channel before the database can see the connection close; the client must get
                // that FATAL, not "the connection to the database was lost".
                biased;
                ev = self.p.events.recv() => match ev {
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
                read = self.p.upstream.read_buf(self.p.reader.buf_mut()) => {
                    match read {
                        Ok(0) => return self.upstream_lost(shared, "the database closed the connection").await,
                        Ok(_) => {}
                        Err(e) => return self.upstream_lost(shared, &e.to_string()).await,
                    }
                    if let Some(end) = self.answers(shared).await {
                        return end;
                    }
                    if let Some(limit) = self.p.transaction_timeout {
                        match (self.p.link.in_transaction(), tx_deadline) {
                            (true, None) => {
                                let at = tokio::time::Instant::now() + limit;
                                tx_deadline = Some(at);
                                tx_timer.as_mut().reset(at);
                            }
                            (false, Some(_)) => tx_deadline = None,
                            _ => {}
                        }
                    }
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
                    if !super::credential::admitted(shared, &watch.identity) {
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
                _ = &mut tx_timer, if tx_deadline.is_some() => {
                    return self.transaction_timed_out().await;
                }
                _ = &mut force => return self.say_goodbye().await,
            }
        }
    }

    /// Passes on what the database sent: `Some` when that ends the session.
    async fn answers(&mut self, shared: &Shared) -> Option<End> {
        let (finished, views_changed) = match self.take_frames() {
            Ok(r) => r,
            Err(RelayError::Encoding) => return Some(self.refuse_encoding().await),
            Err(RelayError::Desync) => return Some(self.desynchronised().await),
            Err(RelayError::Wire(e)) => {
                return Some(self.upstream_lost(shared, &e.to_string()).await)
            }
        };
        self.p.link.room.notify_one();
        for f in &finished {
            shared
                .metrics
                .statement_latency
                .observe(std::time::Duration::from_micros(f.duration_us));
        }
        if let Some(audit) = &shared.audit.log {
            for f in finished {
                audit.submit(statement_end(&self.p.session, f));
            }
        }
        // Before the client hears that its DDL committed, so its next statement, or anyone's,
        // is decided with the views read again.
        if views_changed {
            shared.policy.store.mark_views_stale();
        }
        if !self.out.is_empty() && !self.audit_released(shared).await {
            return Some(self.results_withheld().await);
        }
        if let Err(e) = self.p.client.write_all(&self.out).await {
            return Some(End::ClientError(e.to_string()));
        }
        self.out.clear();
        None
    }

    /// Moves every whole frame into the output, through the exchange owner (which may replace
    /// an error with the gateway's refusal), the detectors and the recording. Fails closed when
    /// the session switches to an encoding the gateway cannot read.
    fn take_frames(&mut self) -> Result<(Vec<Finished>, bool), RelayError> {
        let tape = self.p.tape.clone();
        let mut tape = tape.as_deref().map(crate::recording::Tape::batch);
        let link = self.p.link.clone();
        let mut ex = link.exchange();
        while let Some(frame) = self.p.reader.next_frame()? {
            let observed = ex.observe(&frame);
            if frame.tag() == tag::READY_FOR_QUERY && ex.idle() {
                link.answered_at_ready.store(true, Ordering::Release);
            }
            if let Some(refusal) = observed.rewrite {
                let refusal = self.p.view.encoding.recode_own(&refusal);
                if let Some(t) = tape.as_mut() {
                    t.bytes(&refusal, true);
                }
                self.out.extend_from_slice(&refusal);
                continue;
            }
            // A masked session never receives notification payloads (LISTEN is refused to
            // masked roles; this holds should one arrive anyhow): they are not masked.
            if frame.tag() == tag::NOTIFICATION_RESPONSE && self.p.detect.is_some() {
                continue;
            }
            if frame.tag() == tag::ERROR_RESPONSE && is_fatal(frame.body()) {
                self.upstream_fatal = true;
            }
            let start = self.out.len();
            match frame.tag() {
                tag::PARAMETER_STATUS => self.parameter_status(&frame)?,
                _ => self.out.extend_from_slice(frame.as_bytes()),
            }
            if let Some(d) = self.p.detect.as_mut() {
                d.scan(&mut self.out[start..]);
            }
            // What the client receives, after the detectors.
            if let Some(t) = tape.as_mut() {
                t.bytes(&self.out[start..], false);
            }
        }
        if ex.desynchronised() {
            return Err(RelayError::Desync);
        }
        let finished = if ex.has_finished() {
            ex.take_finished()
        } else {
            Vec::new()
        };
        Ok((finished, ex.take_views_changed()))
    }

    /// A ParameterStatus, into the output as the client must see it. A change of
    /// `client_encoding` is followed (both halves read with it from now on) unless the
    /// gateway cannot analyse text in the new encoding, and `standard_conforming_strings`
    /// must stay on: either ends the session before another statement is read.
    fn parameter_status(&mut self, frame: &phigate_wire::Frame) -> Result<(), RelayError> {
        let (name, value) =
            crate::session::encoding::parameter_status(frame).ok_or(WireError::Malformed {
                what: "ParameterStatus",
                why: "not two strings",
            })?;
        match name {
            b"client_encoding" => {
                let e = ClientEncoding::lookup(&String::from_utf8_lossy(value))
                    .map_err(|_| RelayError::Encoding)?;
                self.p.view.encoding = e;
                self.p.link.set_encoding(e);
                if let Some(d) = self.p.detect.as_mut() {
                    d.set_encoding(e);
                }
            }
            // The gateway parses statements as PostgreSQL does with this on.
            b"standard_conforming_strings" if value != b"on" => return Err(RelayError::Encoding),
            _ => {}
        }
        let shown = self.p.view.parameter_status(frame);
        self.out.extend_from_slice(&shown);
        Ok(())
    }

    /// Waits until the records of the reads forwarded so far are durable; false if they cannot
    /// be (their results must not leave).
    async fn audit_released(&mut self, shared: &Shared) -> bool {
        let gate = self.p.link.release_after.load(Ordering::SeqCst);
        if gate <= self.released {
            return true;
        }
        let Some(audit) = &shared.audit.log else {
            return true;
        };
        let ticket = phigate_audit::Ticket(gate);
        if !audit.is_durable(ticket) && audit.durable(ticket).await.is_err() {
            return false;
        }
        self.released = gate;
        true
    }

    /// Sends the client a message of the gateway's own, recorded as such. Every message the
    /// gateway itself writes to a client during the relay leaves here.
    async fn send_own(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let bytes = self.p.view.encoding.recode_own(bytes);
        if let Some(tape) = &self.p.tape {
            tape.from_gateway(&bytes);
        }
        self.p.client.write_all(&bytes).await
    }

    /// Sends the client the gateway's FATAL (the session ends; a client already gone is not
    /// an error).
    async fn fatal(&mut self, code: &'static str, message: &str, hint: &str) {
        let notice = ClientError::fatal(code, message).with_hint(hint);
        let _ = self.send_own(&notice.to_bytes()).await;
    }

    async fn results_withheld(&mut self) -> End {
        self.fatal(
            sqlstate::IO_ERROR,
            "phigate: the audit log cannot be written; the statement's results were withheld",
            "Nothing leaves unaudited. Reconnect shortly.",
        )
        .await;
        End::AuditUnavailable
    }

    /// Idle and outside a transaction: closing now loses nothing.
    fn at_rest(&self) -> bool {
        self.p.link.at_rest() && self.p.reader.buffered() == 0
    }

    /// Nothing in flight (a transaction may be open: it is rolled back when the database
    /// session closes).
    fn quiet(&self) -> bool {
        self.p.link.idle() && self.p.reader.buffered() == 0
    }

    async fn credential_ended(&mut self, why: Ended) -> End {
        if let Some(notice) = why.to_client() {
            let _ = self.send_own(&notice.to_bytes()).await;
        }
        End::CredentialEnded(why)
    }

    async fn refuse_encoding(&mut self) -> End {
        self.fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "phigate: the session changed to a client_encoding phigate cannot analyse, or turned standard_conforming_strings off",
            "Reconnect; use an ASCII-safe client_encoding such as UTF8 and leave standard_conforming_strings on (see docs/policy.md).",
        )
        .await;
        End::ClientError(
            "client_encoding or standard_conforming_strings changed to what phigate cannot analyse"
                .into(),
        )
    }

    /// The open transaction outlived the role's `transaction_timeout`: the session ends (the
    /// database rolls the transaction back when the connection closes).
    async fn transaction_timed_out(&mut self) -> End {
        self.fatal(
            sqlstate::TRANSACTION_TIMEOUT,
            "phigate: terminating connection due to transaction timeout",
            "The role's transaction_timeout ended a transaction that stayed open too long; it was rolled back.",
        )
        .await;
        End::TransactionTimeout
    }

    /// The gateway's mirror of the session no longer matches the database's answers: what it
    /// would decide next could be wrong, so nothing more runs (fail closed). Nothing of the
    /// database's last answers reaches the client.
    async fn desynchronised(&mut self) -> End {
        tracing::error!(session = %self.p.session, "the database's answers do not match what the session sent; ending it");
        self.out.clear();
        self.fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "phigate: lost track of the session's protocol state; the session ends",
            "Reconnect. If this repeats, report the client and the messages it sends.",
        )
        .await;
        End::ClientError("protocol state lost".into())
    }

    async fn say_goodbye(&mut self) -> End {
        self.fatal(
            sqlstate::ADMIN_SHUTDOWN,
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
            let _ = self.p.client.write_all(&self.out).await;
        }
        // Its FATAL reached the client: the session ends as it would direct.
        if self.upstream_fatal {
            return End::UpstreamError(why.to_owned());
        }
        self.fatal(
            sqlstate::CONNECTION_FAILURE,
            "phigate: the connection to the database was lost",
            "Reconnect; the gateway will open a new database session when the database is available.",
        )
        .await;
        End::UpstreamError(why.to_owned())
    }
}

/// Whether an ErrorResponse body is a FATAL or PANIC (the database closes the session after).
fn is_fatal(body: &[u8]) -> bool {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let len = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        // `V` is the severity never localized; `S` may be, but FATAL/PANIC read the same in
        // the servers that send no `V` (before 9.6).
        if matches!(field, b'V' | b'S') && matches!(&tail[..len], b"FATAL" | b"PANIC") {
            return true;
        }
        rest = tail.get(len + 1..).unwrap_or_default();
    }
    false
}

fn statement_end(session: &str, f: Finished) -> phigate_audit::Pending {
    phigate_audit::Pending::Event(phigate_audit::Event::StatementEnd {
        session: session.to_owned(),
        n: f.n,
        sqlstate: f.sqlstate,
        rows: f.rows,
        command: f.command,
        duration_us: f.duration_us,
    })
}
