//! The statement cache: a repeated unnamed statement is prepared once in the database, under a
//! name of the gateway's own, and run from there.
//!
//! Drivers that use the extended protocol without naming their statements (pgbench `-M
//! extended`, psycopg below its `prepare_threshold`, node-postgres without `name`, many ORMs)
//! send Parse, Bind, Execute for every execution: PostgreSQL parses, rewrites and plans the
//! text each time. For a masked role the text reads a masking view, whose expansion and
//! planning cost more than the read itself. The cache keeps what the database prepared:
//!
//! - The first Parse of a text goes as sent. The second (the text is seen again among the last
//!   [`SEEN`] unnamed Parses) goes as a Parse of `phigate_stmt_<cache nonce>_<n>` instead — the
//!   *create*; the client still receives its ParseComplete.
//! - Every later Parse of the same text, once that name is confirmed, goes as a Close of the
//!   unnamed statement — the *reuse*: the database answers CloseComplete, which the client
//!   receives as its ParseComplete, in the same place and skipped by an earlier error just as
//!   the Parse would have been. (Closing the unnamed statement keeps the database's unnamed
//!   statement from ever standing for a cached text.)
//! - A Bind or Describe of the unnamed statement goes to the name the client's unnamed
//!   statement was prepared under ([`super::Prepared::upstream`]), known from the exchange's
//!   own projection of what the unnamed statement is when the message runs.
//!
//! What is judged, recorded and recorded on tape does not change: the guard decides every Parse
//! and Bind as it arrives, and the cache only changes which of the database's statements the
//! decided text runs as. Only ASCII texts are cached (the same bytes are the same text in every
//! client encoding) without string constants (a prepared statement keeps the value a constant
//! such as `'now'::timestamptz` had when it was parsed), only single SELECT / INSERT / UPDATE /
//! DELETE / MERGE statements, and no statement a reviewer approved. A create closes the
//! database's unnamed statement first, so that statement is only ever the client's own.
//!
//! A cached plan can be invalidated by the database: it re-plans after DDL and re-parses after
//! a `search_path` change by itself, but refuses with `cached plan must not change result
//! type` (0A000) when a table under a `SELECT *` gained or lost columns. Such a name is dropped
//! from the cache at that error (the statement is prepared anew at its next sightings) and
//! closed in the database before the next message sent with nothing in flight (never while a
//! COPY may be reading messages as data). When the session sends DDL the cache is emptied and
//! unused until that transaction ends (a temporary table created in it may shadow a table a
//! cached plan reads); `DISCARD ALL` and `DEALLOCATE ALL` empty it too. In a failed
//! transaction Parse goes as sent (it fails there, as it would uncached).
//!
//! Bounded: at most `capacity` (`upstream.statement_cache`, default 64) texts of at most
//! [`MAX_TEXT`] bytes and [`MAX_BYTES`] together, [`SEEN`] 64-bit hashes of unnamed texts,
//! [`MAX_CLOSING`] names waiting to be closed, and the creates in flight when the cache was
//! emptied (at most the exchange's messages in flight); past that, or after [`MAX_FORGOTTEN`]
//! names were forgotten without a close, the cache turns itself off for the session.
//!
//! No client can reach the cache's names: the guard refuses every message and SQL statement
//! that names a statement or portal with the gateway's prefixes (`guard::refusals::RESERVED`), so what a
//! name holds is what the cache put there. The names carry a nonce of the cache's own (they are
//! visible in `pg_prepared_statements`). A Bind or Describe of the unnamed statement with several
//! candidates in flight is refused by the guard, so the projection says what runs.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use phigate_sql::Analysis;
use phigate_wire::frame::write_message;
use phigate_wire::frontend::write;

use super::Prepared;

/// Longest statement text the cache keeps.
pub const MAX_TEXT: usize = 8 << 10;
/// Statement text the cache of one session keeps together.
pub const MAX_BYTES: usize = 64 << 10;
/// Hashes of unnamed texts remembered to recognise a second sighting.
pub const SEEN: usize = 256;
/// Names waiting to be closed in the database.
pub const MAX_CLOSING: usize = 64;
/// Names forgotten without a close (a `DISCARD ALL` that then failed) before the cache stops.
pub const MAX_FORGOTTEN: usize = 256;

/// What the cache did to a message on its way to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sent as the client sent it.
    Plain,
    /// A Parse sent under this name: the cache's entry is ready once it is answered.
    Creates(Arc<str>),
    /// A Parse sent as a Close of the unnamed statement: its CloseComplete is the client's
    /// ParseComplete.
    Reuses,
    /// A Bind or Describe sent to this cached name.
    Uses(Arc<str>),
    /// The gateway's own Close of this name: its answer is not the client's.
    Closes(Arc<str>),
    /// The gateway's own Close of the unnamed statement, ahead of a create: its answer is not
    /// the client's.
    Hidden,
}

#[derive(Debug)]
struct Slot {
    name: Arc<str>,
    ready: bool,
}

#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    prefix: String,
    next: u64,
    slots: HashMap<Box<[u8]>, Slot>,
    bytes: usize,
    seen: VecDeque<u64>,
    closing: Vec<Arc<str>>,
    /// Creates still in flight when the cache was emptied: closed once answered.
    doomed: Vec<Arc<str>>,
    forgotten: usize,
    /// DDL of the session's own is under way: nothing is created or reused until its
    /// transaction ends (a temporary table may shadow what a cached plan reads).
    suspended: bool,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::new(0, "")
    }
}

impl Cache {
    /// A cache of `capacity` statements (0: off), naming them after `nonce`.
    pub fn new(capacity: usize, nonce: &str) -> Cache {
        Cache {
            capacity,
            prefix: format!("phigate_stmt_{nonce}_"),
            next: 0,
            slots: HashMap::new(),
            bytes: 0,
            seen: VecDeque::new(),
            closing: Vec::new(),
            doomed: Vec::new(),
            forgotten: 0,
            suspended: false,
        }
    }

    /// Statements the cache holds (or is preparing) in the database.
    pub fn held(&self) -> usize {
        self.slots.len()
    }

    /// A Parse of the unnamed statement (`body`: the Parse's body as sent) that the guard let
    /// through as `statement`: what to send in its place, into `out`.
    pub fn parse(&mut self, body: &[u8], statement: &Prepared, out: &mut BytesMut) -> Op {
        let Some(key) = self.key(body, statement) else {
            return Op::Plain;
        };
        if let Some(slot) = self.slots.get(key) {
            if !slot.ready {
                return Op::Plain;
            }
            let name = slot.name.clone();
            write::close_statement(out, "");
            statement.set_upstream(name);
            return Op::Reuses;
        }
        let hash = hash_of(key);
        if !self.seen.contains(&hash) {
            if self.seen.len() >= SEEN {
                self.seen.pop_front();
            }
            self.seen.push_back(hash);
            return Op::Plain;
        }
        if self.slots.len() >= self.capacity || self.bytes + key.len() > MAX_BYTES {
            return Op::Plain;
        }
        self.seen.retain(|h| *h != hash);
        self.next += 1;
        let name: Arc<str> = Arc::from(format!("{}{}", self.prefix, self.next));
        self.bytes += key.len();
        self.slots.insert(
            key.into(),
            Slot {
                name: name.clone(),
                ready: false,
            },
        );
        // The database's unnamed statement goes (as a Parse of it would drop it), so that it
        // never stands for a statement other than the client's; then the Parse again, under the
        // cache's name: the text and types exactly as sent.
        write::close_statement(out, "");
        write_message(out, b'P', |b| {
            b.extend_from_slice(name.as_bytes());
            b.put_u8(0);
            b.extend_from_slice(key);
        });
        statement.set_upstream(name.clone());
        Op::Creates(name)
    }

    /// The text-and-types part of an unnamed Parse's body, when the statement may be cached.
    fn key<'b>(&self, body: &'b [u8], statement: &Prepared) -> Option<&'b [u8]> {
        if self.capacity == 0
            || self.suspended
            || statement.review.is_some()
            || statement.effect.is_some()
        {
            return None;
        }
        // The body of an unnamed Parse starts with the name's terminator.
        let key = body.strip_prefix(&[0])?;
        let text = &key[..key.iter().position(|b| *b == 0)?];
        if key.len() > MAX_TEXT
            || !text.is_ascii()
            || has_constant_text(text)
            || !plannable(&statement.analysis)
        {
            return None;
        }
        Some(key)
    }

    /// A Create was answered: `ok` — the name exists in the database; otherwise it does not.
    fn settled(&mut self, name: &Arc<str>, ok: bool) {
        if let Some(i) = self.doomed.iter().position(|n| n == name) {
            let name = self.doomed.swap_remove(i);
            if ok {
                self.close_later(name);
            }
            return;
        }
        if ok {
            if let Some(slot) = self.slots.values_mut().find(|s| s.name == *name) {
                slot.ready = true;
            }
        } else {
            self.remove(name);
        }
    }

    /// A message the cache changed left the queue: answered (`ok`), failed or skipped. A
    /// create that did not run leaves nothing; a Close of the cache's that did not run goes
    /// again.
    pub fn answered(&mut self, op: &Op, ok: bool) {
        match op {
            Op::Creates(name) => self.settled(name, ok),
            Op::Closes(name) if !ok => self.close_later(name.clone()),
            _ => {}
        }
    }

    /// The database refused to run a cached name as it is (its result type changed): the name
    /// leaves the cache and is closed once nothing is in flight.
    pub fn broken(&mut self, name: &Arc<str>) {
        if self.remove(name) {
            self.close_later(name.clone());
        }
    }

    /// A Close of a cached name did not run (an earlier error skipped it): it goes again.
    pub fn close_later(&mut self, name: Arc<str>) {
        if self.closing.len() >= MAX_CLOSING {
            self.capacity = 0;
            return;
        }
        self.closing.push(name);
    }

    /// The names to close now (nothing is in flight).
    pub fn take_closing(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.closing)
    }

    /// The database may have dropped every cached name (`DISCARD ALL`, `DEALLOCATE ALL`), or
    /// the session's DDL committed: everything is forgotten (a name that still exists stays
    /// unused until the session ends; after [`MAX_FORGOTTEN`] such names the cache stops).
    pub fn clear(&mut self, dropped: bool) {
        if !dropped {
            for slot in self.slots.values() {
                if slot.ready {
                    self.closing.push(slot.name.clone());
                } else {
                    self.doomed.push(slot.name.clone());
                }
            }
            if self.closing.len() > MAX_CLOSING {
                self.forgotten += self.closing.len() - MAX_CLOSING;
                self.closing.truncate(MAX_CLOSING);
            }
        } else {
            self.forgotten += self.slots.len();
        }
        if self.forgotten > MAX_FORGOTTEN {
            self.capacity = 0;
        }
        self.slots.clear();
        self.bytes = 0;
    }

    /// The session's DDL is on its way: the cache is emptied and neither creates nor reuses
    /// until [`Cache::resume`].
    pub fn suspend(&mut self) {
        self.suspended = true;
        self.clear(false);
    }

    /// The transaction of the session's DDL ended (committed or not): emptied again, and in
    /// use again.
    pub fn resume(&mut self) {
        if std::mem::take(&mut self.suspended) {
            self.clear(false);
        }
    }

    /// The database does not hold a cached name any more (something dropped it behind the
    /// gateway's back): it leaves the cache, with nothing to close.
    pub fn gone(&mut self, name: &Arc<str>) {
        if self.remove(name) {
            self.forgotten += 1;
        }
    }

    fn remove(&mut self, name: &Arc<str>) -> bool {
        let key = self
            .slots
            .iter()
            .find(|(_, s)| s.name == *name)
            .map(|(k, _)| k.clone());
        let Some(key) = key else {
            return false;
        };
        self.bytes -= key.len();
        self.slots.remove(&key);
        true
    }
}

/// Only statements with a plan worth keeping: one SELECT, INSERT, UPDATE, DELETE or MERGE.
fn plannable(a: &Analysis) -> bool {
    let Analysis::Parsed(stmts) = a else {
        return false;
    };
    matches!(stmts.as_slice(), [st] if matches!(
        st.node.as_str(),
        "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
    ))
}

/// Whether a text holds a string constant (`'...'`, `E'...'`, `$$...$$`): PostgreSQL reads such
/// a constant into its type when it parses the statement, and a prepared statement keeps that
/// reading — `'now'::timestamptz`, or a date under a `DateStyle` or `TimeZone` changed since —
/// where an unnamed one is read again at each execution. Parameters (`$1`) are read at Bind.
fn has_constant_text(text: &[u8]) -> bool {
    text.iter().enumerate().any(|(i, b)| {
        *b == b'\'' || (*b == b'$' && !text.get(i + 1).is_some_and(u8::is_ascii_digit))
    })
}

fn hash_of(key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// A Bind (`body` as sent) of the unnamed statement, sent to `name` instead. `None` when the
/// Bind does not name the unnamed statement.
pub fn bind_to(out: &mut BytesMut, body: &[u8], name: &str) -> Option<()> {
    let portal_end = body.iter().position(|b| *b == 0)?;
    // The statement name right after the portal's is empty.
    if body.get(portal_end + 1) != Some(&0) {
        return None;
    }
    write_message(out, b'B', |b| {
        b.extend_from_slice(&body[..=portal_end]);
        b.extend_from_slice(name.as_bytes());
        b.put_u8(0);
        b.extend_from_slice(&body[portal_end + 2..]);
    });
    Some(())
}
