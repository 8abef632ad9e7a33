//! The one owner of what PostgreSQL holds for a session.
//!
//! PostgreSQL answers the messages of a session strictly in order, and what it will answer is
//! fully determined by what it was sent and what it already answered: a Parse is answered by
//! ParseComplete or an ErrorResponse, a Sync or a Query by ReadyForQuery, and after an error in
//! the extended protocol every message up to the next Sync is skipped, unanswered. In COPY FROM
//! STDIN mode it swallows Sync and Flush, and the first other message fails the COPY. This
//! module mirrors that state machine (`PostgresMain` and `CopyGetData` in PostgreSQL's
//! `postgres.c` / `copyfromparse.c`):
//!
//! - [`Exchange::push`] is called by the forward half for every message it sends, before the
//!   bytes leave; [`Exchange::observe`] by the backward half for every message the database
//!   returns. Between them, a queue of entries holds what was sent and not yet answered.
//! - The prepared statements and portals the session holds, by name, are known in two forms:
//!   `confirmed` (what the database said it did: ParseComplete, CloseComplete, the command
//!   tags of PREPARE / DEALLOCATE / DISCARD ALL) and `projected` (confirmed plus everything
//!   still in flight, as if it all succeeds). Decisions use the projection; when an error shows
//!   that some of it will never happen, the projection is rebuilt from the confirmed state.
//!   [`Exchange::statement_candidates`] says every statement a name may denote when the
//!   message naming it runs, so a decision can hold for all of them.
//! - A refused message is sent as a substitute the database is certain to reject; the
//!   refusal travels in the substitute's entry, and the database's error for it is rewritten
//!   into the refusal.
//! - The statements of the audit log ([`Unit`]) travel in their entries too, and leave as
//!   [`Finished`] when the database has answered them (or skipped them).
//!
//! Pure: no IO, no clock but the one a unit carries. Bounded: at most [`MAX_IN_FLIGHT`]
//! entries, [`MAX_PREPARED`] statements holding [`MAX_PREPARED_BYTES`] of text, names of
//! [`MAX_NAME_BYTES`], [`MAX_PORTALS`] portals, [`MAX_REFUSED_NAMES`] remembered refused names
//! (as hashes); the guard refuses what would exceed them.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;
use cache::{Cache, Op};
use phigate_policy::Refusal;
use phigate_wire::backend::{self, tag, Fields, Notice, TransactionStatus};
use phigate_wire::Frame;

pub mod cache;
mod names;
mod units;
mod upstream;
use names::{apply, drop_unnamed, name_hash, Names};
pub use names::{Effect, Portal, Prepared};
use units::first_word;
pub use units::{command_tag, Finished, Unit};

/// Messages sent and not yet answered, at most: the forward half waits for answers before it
/// sends more. (The database flushes its answers at least every 8 KiB, and no answer is shorter
/// than 5 bytes, so answers always come before this many are outstanding.)
pub const MAX_IN_FLIGHT: usize = 4096;
/// Prepared statements a session may hold (protocol-level and SQL-level together).
pub const MAX_PREPARED: usize = 4096;
/// Bytes of statement text the prepared statements of a session may hold together.
pub const MAX_PREPARED_BYTES: usize = 64 << 20;
/// Longest statement or portal name a message may carry: PostgreSQL keeps only the first 63
/// bytes of any name (NAMEDATALEN - 1), protocol-level ones included, so two longer names that
/// share them would be one statement to it and two to the gateway.
pub const MAX_NAME_BYTES: usize = 63;
/// Portals a session may hold open at once.
pub const MAX_PORTALS: usize = 1024;
/// Names of refused statements remembered (as 64-bit hashes) for a precise refusal at Bind.
pub const MAX_REFUSED_NAMES: usize = 1024;

/// What a message sent to the database is, as far as its answer goes.
#[derive(Debug)]
pub enum Sent {
    /// A simple Query (or a refused message's substitute Query): answered up to ReadyForQuery.
    /// One entry per statement of its text, in order: what it does to the session's names.
    Query {
        effects: Vec<Option<Effect>>,
    },
    /// Parse: `statement` is `None` for a refused Parse's substitute (which fails).
    Parse {
        name: String,
        statement: Option<Arc<Prepared>>,
    },
    Bind {
        portal: String,
        bound: Option<Arc<Portal>>,
    },
    Describe,
    Execute {
        portal: String,
    },
    Close {
        portal: bool,
        name: String,
    },
    Sync,
    /// CopyDone or CopyFail: ends a COPY FROM STDIN, answered through the COPY's own entry.
    CopyEnd,
    /// Any other message the database takes without an answer of its own (Flush, CopyData).
    Silent,
}

/// A message on its way: what it is, the refusal it stands in for, its audit statement, and
/// what the database said of it so far.
#[derive(Debug)]
struct Entry {
    sent: Sent,
    /// Sent after the last Sync: skipped if anything before it in its exchange fails.
    seq: u64,
    refusal: Option<(String, Refusal)>,
    unit: Option<Unit>,
    /// The effect of an extended-protocol message (a Query's are in its `Sent`).
    effect: Option<Effect>,
    /// For a Query: the next statement whose command tag is due.
    next_statement: usize,
    rows: u64,
    tag_rows: Option<u64>,
    command: Option<String>,
    error: Option<String>,
    /// What the statement cache made of the message.
    op: Op,
}

/// What the backward half does with a message from the database.
#[derive(Debug, Default)]
pub struct Observed {
    /// Send this instead: the gateway's refusal for which the database's error stood in.
    pub rewrite: Option<BytesMut>,
}

/// Why a message cannot be sent now.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// Too many messages in flight: wait for answers.
    InFlight,
}

pub struct Exchange {
    queue: VecDeque<Entry>,
    seq: u64,
    /// `seq` of the last Sync pushed: later extended-protocol messages share its fate.
    last_sync: u64,
    /// The database is in COPY FROM STDIN and has read every queued message: what is sent
    /// next is read by the COPY.
    copy_in: bool,
    status: TransactionStatus,
    statements: Names<Prepared>,
    portals: Names<Portal>,
    /// Hashes of statement names whose Parse was refused.
    refused: HashSet<u64>,
    /// Statements answered since the backward half last took them.
    finished: Vec<Finished>,
    /// DDL was sent: once the session is back outside a transaction, views may have changed.
    ddl_pending: bool,
    views_changed: bool,
    /// An answer did not fit what was sent (see [`Exchange::desynchronised`]).
    desync: bool,
    /// An extended-protocol message failed and no Sync was in flight: the database skips
    /// every message it reads until the next Sync (the SQLSTATE they are recorded with).
    skipping_to_sync: Option<String>,
    /// Repeated unnamed statements prepared under names of the gateway's own.
    cache: Cache,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            queue: VecDeque::new(),
            seq: 0,
            last_sync: 0,
            copy_in: false,
            status: TransactionStatus::Idle,
            statements: Names::default(),
            portals: Names::default(),
            refused: HashSet::new(),
            finished: Vec::new(),
            ddl_pending: false,
            views_changed: false,
            desync: false,
            skipping_to_sync: None,
            cache: Cache::default(),
        }
    }
}

impl Exchange {
    /// An exchange whose statement cache holds up to `capacity` statements (0: none), named
    /// after the session's `nonce`.
    pub fn new(capacity: usize, nonce: &str) -> Exchange {
        Exchange {
            cache: Cache::new(capacity, nonce),
            ..Exchange::default()
        }
    }

    /// Nothing is in flight: every message sent has been answered.
    pub fn idle(&self) -> bool {
        self.queue.is_empty() && !self.copy_in
    }

    /// Nothing in flight and outside a transaction: a new policy may apply, the session may
    /// close without losing anything.
    pub fn at_rest(&self) -> bool {
        self.idle() && self.status == TransactionStatus::Idle
    }

    pub fn status(&self) -> TransactionStatus {
        self.status
    }

    /// Whether another message may be sent now.
    pub fn has_room(&self) -> Result<(), Full> {
        if self.queue.len() >= MAX_IN_FLIGHT {
            return Err(Full::InFlight);
        }
        Ok(())
    }

    /// DDL is on its way: views are read again once it has committed.
    pub fn note_ddl(&mut self) {
        self.ddl_pending = true;
        self.cache.suspend();
    }

    /// Committed DDL may have changed views since the last call.
    pub fn take_views_changed(&mut self) -> bool {
        std::mem::take(&mut self.views_changed)
    }

    /// Statements answered since the last call, for their `statement_end` records.
    pub fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.finished)
    }

    pub fn has_finished(&self) -> bool {
        !self.finished.is_empty()
    }

    /// The statement `name` denotes once everything in flight has run.
    pub fn statement(&self, name: &str) -> Option<&Arc<Prepared>> {
        self.statements.projected.get(name)
    }

    pub fn portal(&self, name: &str) -> Option<&Arc<Portal>> {
        self.portals.projected.get(name)
    }

    pub fn prepared_count(&self) -> usize {
        self.statements.projected.len()
    }

    /// Statement text held by the projected prepared statements.
    pub fn prepared_bytes(&self) -> usize {
        self.statements
            .projected
            .values()
            .map(|p| p.sql.len())
            .sum()
    }

    pub fn portal_count(&self) -> usize {
        self.portals.projected.len()
    }

    /// Whether a Parse of `name` was refused (and nothing of that name was prepared since).
    pub fn was_refused(&self, name: &str) -> bool {
        !self.refused.is_empty() && self.refused.contains(&name_hash(name))
    }

    /// The forward half sends `sent`: its entry joins the queue, and the projection takes its
    /// effects. Call before the bytes leave.
    pub fn push(&mut self, sent: Sent, refusal: Option<(String, Refusal)>, unit: Option<Unit>) {
        self.push_op(sent, refusal, unit, Op::Plain)
    }

    fn push_op(
        &mut self,
        sent: Sent,
        refusal: Option<(String, Refusal)>,
        unit: Option<Unit>,
        op: Op,
    ) {
        if self.copy_in {
            // The database is reading COPY data: it swallows Sync and Flush, ends the COPY at
            // CopyDone / CopyFail, and fails it on anything else (that message is consumed).
            match sent {
                Sent::Sync | Sent::Silent => {
                    return self.finish_now(unit, phigate_wire::sqlstate::SUCCESSFUL_COMPLETION)
                }
                Sent::CopyEnd => {
                    self.copy_in = false;
                    return;
                }
                _ => {
                    self.copy_in = false;
                    return self.finish_now(unit, phigate_wire::sqlstate::PROTOCOL_VIOLATION);
                }
            }
        }
        if matches!(sent, Sent::Silent) {
            return;
        }
        // Outside COPY, PostgreSQL ignores CopyDone and CopyFail; a COPY can only be under way
        // if a Query or Execute is.
        if matches!(sent, Sent::CopyEnd)
            && !self
                .queue
                .iter()
                .any(|e| matches!(e.sent, Sent::Query { .. } | Sent::Execute { .. }))
        {
            return;
        }
        // Sent after an error the database already reported, before the Sync that ends its
        // exchange: skipped unanswered, as what was in flight with it.
        if let Some(code) = &self.skipping_to_sync {
            if !matches!(sent, Sent::Sync) {
                let code = code.clone();
                self.cache.answered(&op, false);
                return self.finish_now(unit, &code);
            }
            self.skipping_to_sync = None;
        }
        self.seq += 1;
        if matches!(sent, Sent::Sync) {
            self.last_sync = self.seq;
        }
        match &sent {
            Sent::Parse {
                name,
                statement: None,
            } => {
                if self.refused.len() >= MAX_REFUSED_NAMES {
                    self.refused.clear();
                }
                self.refused.insert(name_hash(name));
                if name.is_empty() {
                    // PostgreSQL drops the unnamed statement before parsing the new one.
                    self.statements.projected.remove("");
                }
            }
            Sent::Parse { name, .. } if !self.refused.is_empty() => {
                self.refused.remove(&name_hash(name));
            }
            // A simple Query runs as the unnamed statement and portal: they are gone after it.
            Sent::Query { .. } => {
                drop_unnamed(&mut self.statements.projected, &mut self.portals.projected)
            }
            _ => {}
        }
        let effect = match &sent {
            Sent::Parse {
                name,
                statement: Some(statement),
            } => Some(Effect::Prepare {
                name: name.clone(),
                statement: statement.clone(),
            }),
            Sent::Bind {
                portal,
                bound: Some(bound),
            } => Some(Effect::Bind {
                portal: portal.clone(),
                bound: bound.clone(),
            }),
            Sent::Close {
                portal: false,
                name,
            } => Some(Effect::Deallocate { name: name.clone() }),
            Sent::Close { portal: true, name } => Some(Effect::ClosePortal { name: name.clone() }),
            // A PREPARE / DEALLOCATE / DISCARD ALL sent with Parse acts when it is executed.
            Sent::Execute { portal } => self
                .portals
                .projected
                .get(portal)
                .and_then(|p| p.statement.effect.clone()),
            _ => None,
        };
        let entry = Entry {
            sent,
            seq: self.seq,
            refusal,
            unit,
            effect,
            next_statement: 0,
            rows: 0,
            tag_rows: None,
            command: None,
            error: None,
            op,
        };
        for ef in entry_effects(&entry) {
            if matches!(ef, Effect::DiscardAll | Effect::DeallocateAll) {
                // The database drops the cache's names with the client's.
                self.cache.clear(true);
            }
            apply(
                &mut self.statements.projected,
                &mut self.portals.projected,
                ef,
                false,
            );
        }
        self.queue.push_back(entry);
    }

    /// The backward half received `frame` from the database. An answer that does not fit
    /// what was sent marks the session desynchronised ([`Exchange::desynchronised`]).
    pub fn observe(&mut self, frame: &Frame) -> Observed {
        let mut observed = Observed::default();
        // CopyDone / CopyFail markers are never answered themselves.
        self.skip_silent();
        let query_or_execute = |s: &Sent| matches!(s, Sent::Query { .. } | Sent::Execute { .. });
        match frame.tag() {
            tag::DATA_ROW => {
                self.expect(query_or_execute);
                if let Some(head) = self.queue.front_mut() {
                    head.rows += 1;
                }
            }
            tag::COMMAND_COMPLETE => {
                self.expect(query_or_execute);
                self.command_complete(frame);
            }
            tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED => {
                self.expect(query_or_execute);
                self.complete_if(|s| matches!(s, Sent::Execute { .. }));
            }
            tag::PARSE_COMPLETE => self.complete(|s| matches!(s, Sent::Parse { .. })),
            tag::BIND_COMPLETE => self.complete(|s| matches!(s, Sent::Bind { .. })),
            tag::CLOSE_COMPLETE => observed.rewrite = self.close_complete(),
            tag::PARAMETER_DESCRIPTION => self.expect(|s| matches!(s, Sent::Describe)),
            tag::NO_DATA => self.complete(|s| matches!(s, Sent::Describe)),
            tag::ROW_DESCRIPTION => {
                if self.head_is(|s| matches!(s, Sent::Describe)) {
                    self.pop(true);
                } else {
                    self.expect(|s| matches!(s, Sent::Query { .. }));
                }
            }
            tag::ERROR_RESPONSE => observed.rewrite = self.error(frame),
            tag::COPY_IN_RESPONSE => {
                self.expect(query_or_execute);
                self.copy_in_started();
            }
            tag::COPY_OUT_RESPONSE => self.expect(query_or_execute),
            tag::READY_FOR_QUERY => self.ready(frame),
            tag::FUNCTION_CALL_RESPONSE | tag::COPY_BOTH_RESPONSE => self.desync = true,
            _ => {}
        }
        observed
    }

    /// The database answered something the head of the queue cannot be answered with: the
    /// gateway's mirror no longer matches the session. Decisions made from it cannot be
    /// trusted, so the relay ends the session.
    pub fn desynchronised(&self) -> bool {
        self.desync
    }

    fn expect(&mut self, f: impl Fn(&Sent) -> bool) {
        if !self.head_is(f) {
            self.desync = true;
        }
    }

    /// The head is answered: it must be what `f` says.
    fn complete(&mut self, f: impl Fn(&Sent) -> bool) {
        if self.head_is(f) {
            self.pop(true);
        } else {
            self.desync = true;
        }
    }

    fn head_is(&self, f: impl Fn(&Sent) -> bool) -> bool {
        self.queue.front().is_some_and(|e| f(&e.sent))
    }

    fn complete_if(&mut self, f: impl Fn(&Sent) -> bool) {
        if self.head_is(f) {
            self.pop(true);
        }
    }

    fn command_complete(&mut self, frame: &Frame) {
        let Some(head) = self.queue.front_mut() else {
            return;
        };
        let Some((command, rows)) = command_tag(frame) else {
            return;
        };
        if let Some(r) = rows {
            *head.tag_rows.get_or_insert(0) += r;
        }
        match &head.sent {
            Sent::Query { effects } => {
                let effect = effects.get(head.next_statement).cloned().flatten();
                head.next_statement += 1;
                head.command.get_or_insert_with(|| first_word(&command));
                if let Some(ef) = effect.filter(|ef| ef.confirmed_by(&command)) {
                    apply(
                        &mut self.statements.confirmed,
                        &mut self.portals.confirmed,
                        &ef,
                        true,
                    );
                }
            }
            Sent::Execute { .. } => {
                head.command.get_or_insert_with(|| first_word(&command));
                let effect = head.effect.clone().filter(|ef| ef.confirmed_by(&command));
                self.pop(true);
                if let Some(ef) = effect {
                    apply(
                        &mut self.statements.confirmed,
                        &mut self.portals.confirmed,
                        &ef,
                        true,
                    );
                    self.reproject();
                }
            }
            _ => {}
        }
    }

    fn error(&mut self, frame: &Frame) -> Option<BytesMut> {
        let fields = Fields::decode(frame).ok();
        let mut code = fields
            .as_ref()
            .and_then(|f| f.code())
            .unwrap_or(phigate_wire::sqlstate::INTERNAL_ERROR)
            .to_owned();
        let head = self.queue.front_mut()?;
        // The error of a refused message's substitute becomes the refusal (the database's
        // message names the substitute's token; anything else is the database's own error).
        let mut rewrite = None;
        if let Some((token, refusal)) = &head.refusal {
            let ours = fields
                .as_ref()
                .and_then(|f| f.message())
                .is_some_and(|m| m.contains(token.as_str()));
            if ours {
                let mut out = BytesMut::new();
                Notice::error(refusal.sqlstate, &refusal.message)
                    .with_hint(&refusal.hint)
                    .with_position(refusal.position)
                    .write(&mut out);
                code = refusal.sqlstate.to_owned();
                rewrite = Some(out);
            }
        }
        head.error.get_or_insert(code.clone());
        // `cached plan must not change result type`: the cached name is of no more use.
        if let Op::Uses(name) = &head.op {
            let name = name.clone();
            match code.as_str() {
                phigate_wire::sqlstate::FEATURE_NOT_SUPPORTED => self.cache.broken(&name),
                phigate_wire::sqlstate::INVALID_SQL_STATEMENT_NAME => self.cache.gone(&name),
                _ => {}
            }
        }
        let Some(head) = self.queue.front_mut() else {
            return rewrite;
        };
        // A COPY that failed is over.
        self.copy_in = false;
        // "Prepared statement already exists" for a name the database never confirmed to the
        // gateway: the session holds statements the gateway does not know.
        if let Sent::Parse { name, .. } = &head.sent {
            if code == phigate_wire::sqlstate::DUPLICATE_PREPARED_STATEMENT
                && !self.statements.confirmed.contains_key(name)
            {
                self.desync = true;
            }
        }
        match &mut head.sent {
            // The rest of the Query's text does not run; ReadyForQuery ends it.
            Sent::Query { effects } => {
                let n = effects.len();
                head.next_statement = n;
            }
            // The implicit COMMIT at Sync failed (a deferred constraint): ReadyForQuery follows.
            Sent::Sync => {}
            _ => {
                let failed = self.pop(false);
                // Until Sync, the database skips everything.
                let mut dropped = failed;
                while self
                    .queue
                    .front()
                    .is_some_and(|e| !matches!(e.sent, Sent::Sync))
                {
                    if let Some(mut e) = self.queue.pop_front() {
                        dropped |= entry_effects(&e).next().is_some();
                        e.error.get_or_insert(code.clone());
                        self.finish(e);
                    }
                }
                if dropped {
                    self.reproject();
                }
                if self.queue.is_empty() {
                    self.skipping_to_sync = Some(code);
                }
            }
        }
        rewrite
    }

    fn ready(&mut self, frame: &Frame) {
        if let Ok(status) = backend::decode_ready_for_query(frame) {
            self.status = status;
        }
        // Whatever COPY there was is over.
        self.copy_in = false;
        // The head is the Query or Sync this answers (what an error made the database skip
        // left the queue with the error).
        if !self.head_is(|s| matches!(s, Sent::Query { .. } | Sent::Sync)) {
            self.desync = true;
        }
        let mut reproject = false;
        while let Some(e) = self.queue.pop_front() {
            let done = matches!(e.sent, Sent::Query { .. } | Sent::Sync);
            if matches!(e.sent, Sent::Query { .. }) {
                drop_unnamed(&mut self.statements.confirmed, &mut self.portals.confirmed);
            }
            // What of a Query's effects the database confirmed is in `confirmed` now; the
            // projection drops what it did not (a statement after an error never ran).
            reproject |= entry_effects(&e).next().is_some();
            self.finish(e);
            if done {
                break;
            }
        }
        self.skip_silent();
        if reproject {
            self.reproject();
        }
        if self.status == TransactionStatus::Idle {
            // Portals end with their transaction.
            if !self.portals.confirmed.is_empty() {
                self.portals.confirmed.clear();
                self.reproject();
            }
            if std::mem::take(&mut self.ddl_pending) {
                self.views_changed = true;
                // Plans of the cache may no longer fit the tables: prepared afresh.
                self.cache.resume();
            }
        }
    }

    /// Takes the head entry, answered (`ok`: its effects now hold) or failed.
    fn pop(&mut self, ok: bool) -> bool {
        let Some(e) = self.queue.pop_front() else {
            return false;
        };
        let mut changed = false;
        match (&e.sent, ok) {
            (Sent::Parse { .. } | Sent::Bind { .. } | Sent::Close { .. }, true) => {
                for ef in entry_effects(&e) {
                    // A ParseComplete proves the name was free: a statement the gateway still
                    // knew by it is gone (the projection is corrected).
                    if let Effect::Prepare { name, statement } = ef {
                        changed |= self
                            .statements
                            .confirmed
                            .get(name)
                            .is_some_and(|old| !Arc::ptr_eq(old, statement));
                    }
                    apply(
                        &mut self.statements.confirmed,
                        &mut self.portals.confirmed,
                        ef,
                        true,
                    );
                }
                if changed {
                    self.reproject();
                    changed = false;
                }
            }
            (Sent::Parse { name, .. }, false) => {
                // A failed Parse still dropped the unnamed statement.
                if name.is_empty() {
                    self.statements.confirmed.remove("");
                }
                changed = true;
            }
            (Sent::Bind { .. }, false) => changed = true,
            _ => {}
        }
        self.finish(e);
        self.skip_silent();
        changed
    }

    /// CopyEnd markers that reach the head were read outside a COPY: ignored by the database.
    fn skip_silent(&mut self) {
        while self
            .queue
            .front()
            .is_some_and(|e| matches!(e.sent, Sent::CopyEnd | Sent::Silent))
        {
            if let Some(e) = self.queue.pop_front() {
                self.finish(e);
            }
        }
    }

    fn finish(&mut self, e: Entry) {
        self.cache.answered(&e.op, e.error.is_none());
        let Some(unit) = e.unit else {
            return;
        };
        self.finished.push(Finished {
            n: unit.n,
            sqlstate: e
                .error
                .unwrap_or_else(|| phigate_wire::sqlstate::SUCCESSFUL_COMPLETION.to_owned()),
            rows: e.tag_rows.or(Some(e.rows)),
            command: e.command,
            duration_us: unit.started.elapsed().as_micros() as u64,
        });
    }

    /// The projection again: what the database confirmed, plus what is still in flight.
    fn reproject(&mut self) {
        self.statements.projected = self.statements.confirmed.clone();
        self.portals.projected = self.portals.confirmed.clone();
        for e in &self.queue {
            match &e.sent {
                Sent::Parse {
                    name,
                    statement: None,
                } if name.is_empty() => {
                    self.statements.projected.remove("");
                }
                Sent::Query { .. } => {
                    drop_unnamed(&mut self.statements.projected, &mut self.portals.projected)
                }
                _ => {}
            }
            for ef in entry_effects(e) {
                apply(
                    &mut self.statements.projected,
                    &mut self.portals.projected,
                    ef,
                    false,
                );
            }
        }
    }
}

/// The effects of an entry, in order.
fn entry_effects(e: &Entry) -> impl Iterator<Item = &Effect> {
    let of_query: &[Option<Effect>] = match &e.sent {
        Sent::Query { effects } => effects,
        _ => &[],
    };
    of_query.iter().flatten().chain(e.effect.iter())
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "exchange_cache_tests.rs"]
mod cache_tests;
