//! The forward half: client → guard → database.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use phigate_wire::frontend::{self, FrontendMessage};
use phigate_wire::{sqlstate, FrameReader, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::credential::{CredentialWatch, Ended};
use super::exchange::Unit;
use super::{End, Event, Link};
use crate::net::{StreamRead, StreamWrite};
use crate::pgerror::{ClientError, ToClient};
use crate::session::encoding;
use crate::session::guard::{Action, Filtered, Guard, Held};
use crate::state::Shared;

pub(super) enum ForwardError {
    Audit,
    Client(WireError),
    Credential(Ended),
    ClientIo(std::io::Error),
    UpstreamIo(std::io::Error),
}

impl ToClient for ForwardError {
    /// The FATAL that ends the session, if the client can still be told.
    fn to_client(&self) -> Option<ClientError> {
        match self {
            ForwardError::Client(e) => Some(ClientError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("phigate: invalid message: {e}"),
            )),
            ForwardError::Credential(why) => why.to_client(),
            ForwardError::Audit => Some(
                ClientError::fatal(
                    sqlstate::IO_ERROR,
                    "phigate: the audit log cannot be written; the statement was not run",
                )
                .with_hint("Nothing runs unaudited. Reconnect shortly."),
            ),
            ForwardError::ClientIo(_) | ForwardError::UpstreamIo(_) => None,
        }
    }
}

/// What the forward half is made of.
pub struct Parts<'s> {
    pub credential: CredentialWatch,
    pub guard: Guard,
    pub shared: &'s Shared,
    pub client: StreamRead,
    pub reader: FrameReader,
    pub upstream: StreamWrite,
    pub events: mpsc::Sender<Event>,
    pub link: Arc<Link>,
    /// Notified by the client's CancelRequest (withdraws a held statement).
    pub cancelled: Arc<tokio::sync::Notify>,
}

pub struct Forward<'s> {
    pub(super) credential: CredentialWatch,
    pub(super) guard: Guard,
    pub(super) shared: &'s Shared,
    pub(super) client: StreamRead,
    pub(super) reader: FrameReader,
    upstream: StreamWrite,
    pub(super) events: mpsc::Sender<Event>,
    link: Arc<Link>,
    pub(super) cancelled: Arc<tokio::sync::Notify>,
    /// What goes to the database with the next write.
    out: BytesMut,
    /// Audit records of the messages in `out`, written before it leaves.
    batch: Vec<phigate_audit::Pending>,
    /// A record of the batch must be durable (not only written) before the batch leaves.
    durable_first: bool,
    /// The record of a held Query, completed when its review ends.
    held_unit: Option<Unit>,
    /// A statement that changes `client_encoding` was prepared (Parse or PREPARE): any
    /// Execute may change it.
    encoding_prepared: bool,
    /// `client_encoding` may have changed since the session was last at rest.
    encoding_changed: bool,
}

impl<'s> Forward<'s> {
    pub fn new(p: Parts<'s>) -> Forward<'s> {
        Forward {
            credential: p.credential,
            guard: p.guard,
            shared: p.shared,
            client: p.client,
            reader: p.reader,
            upstream: p.upstream,
            events: p.events,
            link: p.link,
            cancelled: p.cancelled,
            out: BytesMut::with_capacity(16 * 1024),
            batch: Vec::new(),
            durable_first: false,
            held_unit: None,
            encoding_prepared: false,
            encoding_changed: false,
        }
    }

    pub async fn run(mut self) -> End {
        match self.pump().await {
            Ok(end) => end,
            Err(e) => {
                if let Some(notice) = e.to_client() {
                    let _ = self.events.send(Event::Fatal(notice.to_bytes())).await;
                }
                match e {
                    ForwardError::Client(e) => End::ClientError(e.to_string()),
                    ForwardError::Credential(why) => End::CredentialEnded(why),
                    ForwardError::Audit => End::AuditUnavailable,
                    ForwardError::ClientIo(e) => End::ClientError(e.to_string()),
                    ForwardError::UpstreamIo(e) => End::UpstreamError(e.to_string()),
                }
            }
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
            self.guard
                .set_audit_down(self.shared.audit.log.as_ref().is_some_and(|a| !a.healthy()));
            if self.batch_of_frames().await? {
                return Ok(End::ClientTerminated);
            }
        }
    }

    /// Decides and sends every whole message read so far. True once the client terminated.
    async fn batch_of_frames(&mut self) -> Result<bool, ForwardError> {
        loop {
            let frame = match self.reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return self.bad_message(e).await,
            };
            let (utf8, unreadable) = self.readable(&frame);
            let msg = match FrontendMessage::decode(utf8.as_ref().unwrap_or(&frame)) {
                Ok(msg) => msg,
                Err(e) => return self.bad_message(e).await,
            };
            let terminated = matches!(msg, FrontendMessage::Terminate);
            if matches!(msg, FrontendMessage::Password(_)) {
                return self.bad_message(WireError::UnexpectedTag(b'p')).await;
            }
            self.wait_for_room().await?;
            let analysis = match (statement_text(&msg), unreadable) {
                (Some(_), Some(why)) => Some(Arc::new(phigate_sql::Analysis::Invalid {
                    message: why.to_owned(),
                    position: None,
                })),
                (None, Some(why)) => {
                    return self
                        .bad_message(WireError::Malformed {
                            what: "message",
                            why,
                        })
                        .await
                }
                (Some(sql), None) if sql.len() > phigate_sql::MAX_CACHED_BYTES => {
                    Some(analyze_large(sql).await)
                }
                _ => Guard::analyze(&msg, &self.shared.policy.analyzer),
            };
            let changes = self.watch_encoding(&msg, analysis.as_deref());
            let filtered = {
                let ex = self.link.exchange();
                self.guard.filter(&frame, &msg, analysis, &ex)
            };
            // Marked once in the exchange: a ReadyForQuery settles the change only if it follows.
            let held = self.apply(filtered, frame.as_bytes());
            if changes {
                self.link.encoding_may_change();
            }
            if let Some(held) = held {
                // What came before the held statement runs now; it waits for a reviewer, and
                // whatever the client sent after it waits behind it.
                self.write_ahead().await?;
                self.flush().await?;
                self.link.holding.store(true, Ordering::Release);
                let settled = self.hold(held).await;
                self.link.holding.store(false, Ordering::Release);
                settled?;
            }
            if terminated {
                self.write_ahead().await?;
                self.flush().await?;
                return Ok(true);
            }
        }
        self.write_ahead().await?;
        self.flush().await?;
        Ok(false)
    }

    /// The message as the decoder and the analyser read it (its strings in UTF-8, `None`
    /// when they already are), and why its text cannot be analysed, if it cannot.
    fn readable(
        &self,
        frame: &phigate_wire::Frame,
    ) -> (Option<phigate_wire::Frame>, Option<&'static str>) {
        if encoding::strings_are_ascii(frame) {
            return (None, None);
        }
        let why = match self.link.encoding() {
            Some(e) => match e.frame_to_utf8(frame) {
                Ok(f) => return (f, None),
                Err(encoding::Unreadable) => {
                    "the text is not valid in the session's client_encoding"
                }
            },
            None => {
                "client_encoding may be changing (a SET, RESET or DISCARD ALL not yet answered, or \
                 its transaction still open): text with non-ASCII characters cannot be analysed \
                 until it is settled"
            }
        };
        (encoding::lossy_frame(frame), Some(why))
    }

    /// Whether a message may change the session's `client_encoding` when it runs: a
    /// statement that names it (SET, RESET, set_config) or resets everything (RESET ALL,
    /// DISCARD ALL); the Execute of a statement prepared with one; or, once a change was made,
    /// the end of a transaction (its ROLLBACK undoes a change made inside it), until the
    /// session is at rest again.
    fn watch_encoding(
        &mut self,
        msg: &FrontendMessage<'_>,
        analysis: Option<&phigate_sql::Analysis>,
    ) -> bool {
        if self.encoding_changed && self.link.encoding_at_rest() {
            self.encoding_changed = false;
        }
        // Only a role that may change the encoding can run code that does (restricted roles
        // cannot run DO blocks, non-built-in functions, or SET it).
        let changes = analysis.is_some_and(|a| {
            changes_encoding(a)
                || (self.encoding_changed && ends_transaction(a))
                || (!self.guard.role().restricted
                    && crate::session::guard::decide::may_run_code(self.guard.policy(), a))
        });
        if changes {
            self.encoding_changed = true;
            if matches!(
                msg,
                FrontendMessage::Parse(_) | FrontendMessage::Query { .. }
            ) {
                self.encoding_prepared = true;
            }
            return true;
        }
        self.encoding_prepared
            && matches!(
                msg,
                FrontendMessage::Execute { .. } | FrontendMessage::Query { .. }
            )
    }

    /// Whatever complete messages came before a bad one still go, once their records are
    /// written; then the session ends.
    async fn bad_message(&mut self, e: WireError) -> Result<bool, ForwardError> {
        self.write_ahead().await?;
        self.flush().await?;
        Err(ForwardError::Client(e))
    }

    /// Too much in flight: what is ready goes, and the half waits for answers.
    async fn wait_for_room(&mut self) -> Result<(), ForwardError> {
        let link = self.link.clone();
        loop {
            let room = link.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.link.exchange().has_room().is_ok() {
                return Ok(());
            }
            self.write_ahead().await?;
            self.flush().await?;
            room.await;
        }
    }

    /// Carries out a decision: the record joins the batch, the message (or its substitute)
    /// joins `out` and its entry the exchange. A held statement is handed back.
    pub(super) fn apply(&mut self, f: Filtered, original: &[u8]) -> Option<Held> {
        let unit = f.record.map(|r| {
            self.batch.push(r.pending);
            self.durable_first |= r.durable_first;
            r.unit
        });
        let mut ex = self.link.exchange();
        match f.action {
            Action::Forward(sent) => {
                if f.ddl {
                    ex.note_ddl();
                }
                ex.send(sent, unit, original, &mut self.out);
                None
            }
            Action::Substitute {
                bytes,
                sent,
                token,
                refusal,
            } => {
                ex.push(sent, Some((token, refusal)), unit);
                self.out.extend_from_slice(&bytes);
                None
            }
            Action::Hold(held) => {
                self.held_unit = unit;
                Some(held)
            }
        }
    }

    /// The review of a held Query ended: its hold-time record is complete.
    pub(super) fn settle_hold(&mut self, code: &str) {
        if let Some(unit) = self.held_unit.take() {
            self.link.exchange().finish_now(Some(unit), code);
        }
    }

    /// A reloaded policy applies from the session's next transaction: a transaction runs under
    /// one policy from start to end.
    async fn refresh_policy(&mut self) {
        let at_rest = self.link.exchange().at_rest();
        if at_rest && self.shared.policy.store.views_stale() {
            self.shared
                .policy
                .store
                .ensure_catalog(&self.shared.upstream)
                .await;
        }
        if at_rest && self.shared.policy.store.version() != self.guard.policy_version() {
            let (policy, version) = self.shared.policy.store.snapshot();
            self.guard.update_policy(policy, version);
        }
    }

    /// The batch's audit records go to disk (one shared fsync) before any of its statements
    /// reaches the database; for a batch of reads that change nothing, they are written (they
    /// survive the gateway's process) before, and durable before any result is released. In
    /// the process tier they are written before, and flushed in the background.
    async fn write_ahead(&mut self) -> Result<(), ForwardError> {
        let Some(audit) = &self.shared.audit.log else {
            return Ok(());
        };
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.link
            .statements
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let ticket = audit.append(batch).map_err(|_| ForwardError::Audit)?;
        if audit.tier() != phigate_audit::DurabilityTier::Strict {
            // Written: it survives the gateway's process; on disk within the flush interval.
            self.durable_first = false;
            return audit
                .forwardable(ticket)
                .await
                .map_err(|_| ForwardError::Audit);
        }
        if std::mem::take(&mut self.durable_first) {
            return audit.durable(ticket).await.map_err(|_| ForwardError::Audit);
        }
        // Set before the statements are sent: their answers cannot arrive before it.
        self.link
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

/// Large statements are analysed off the async workers, one at a time in the whole process and
/// within a budget: a session that sends them waits for its own analyses, and no other session
/// notices (the runtime's threads, `/healthz` included, never parse a large text).
static LARGE_ANALYSES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// How long a session may wait for the analysis of one large statement (its turn included)
/// before the statement is refused as unanalysable.
const ANALYSIS_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether a statement may change `client_encoding`: names it in SET, RESET or set_config,
/// or resets everything (RESET ALL, DISCARD ALL).
fn changes_encoding(a: &phigate_sql::Analysis) -> bool {
    let phigate_sql::Analysis::Parsed(stmts) = a else {
        return false;
    };
    stmts.iter().any(|st| {
        st.node == "DiscardStmt"
            || st
                .settings
                .iter()
                .any(|s| s == "client_encoding" || s == "all")
    })
}

/// Whether a statement ends (or rolls back part of) a transaction block.
fn ends_transaction(a: &phigate_sql::Analysis) -> bool {
    let phigate_sql::Analysis::Parsed(stmts) = a else {
        return false;
    };
    stmts.iter().any(|st| st.node == "TransactionStmt")
}

fn statement_text<'a>(msg: &FrontendMessage<'a>) -> Option<&'a str> {
    match msg {
        FrontendMessage::Query { sql } => Some(sql),
        FrontendMessage::Parse(p) => Some(p.sql),
        _ => None,
    }
}

async fn analyze_large(sql: &str) -> Arc<phigate_sql::Analysis> {
    let text = sql.to_owned();
    let work = async move {
        let permit = LARGE_ANALYSES.acquire().await.ok()?;
        // The permit goes with the work: an analysis whose session stopped waiting still
        // holds the turn until it is done, so they never pile up.
        tokio::task::spawn_blocking(move || {
            let analysis = phigate_sql::analyze(&text);
            drop(permit);
            analysis
        })
        .await
        .ok()
    };
    match tokio::time::timeout(ANALYSIS_BUDGET, work).await {
        Ok(Some(a)) => Arc::new(a),
        _ => Arc::new(phigate_sql::Analysis::Invalid {
            message: format!(
                "the statement could not be analysed within {} s (too large or too complex); phigate forwards only what it can analyse",
                ANALYSIS_BUDGET.as_secs()
            ),
            position: None,
        }),
    }
}
