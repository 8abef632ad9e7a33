//! The exchange's side of the statement cache ([`super::cache`]): what goes to the database in
//! place of a message, and what the client receives in place of an answer; which statements a
//! name may denote when a message runs; and what a COPY FROM STDIN does to what was sent
//! after it.

use std::sync::Arc;

use bytes::BytesMut;
use phigate_wire::backend::{tag, TransactionStatus};
use phigate_wire::frontend::write;

use super::cache::{self, Op};
use super::{entry_effects, Effect, Exchange, Prepared, Sent, Unit};

impl Exchange {
    /// Every statement `name` may denote when a message sent now runs: the statement of a Parse
    /// of that name earlier in the same extended exchange, if there is one (if that Parse
    /// fails, the message is skipped with it; if it succeeds, that is what runs); otherwise
    /// what the database confirmed, the projection, and every definition still in flight,
    /// since any of them may fail.
    pub fn statement_candidates(&self, name: &str) -> Vec<Arc<Prepared>> {
        let projected = self.statements.projected.get(name);
        let last = self
            .queue
            .iter()
            .rev()
            .find(|e| entry_effects(e).any(|ef| ef.names_statement(name)));
        let Some(last) = last else {
            return projected.cloned().into_iter().collect();
        };
        if let (
            Sent::Parse {
                statement: Some(statement),
                ..
            },
            true,
        ) = (&last.sent, last.seq > self.last_sync)
        {
            return vec![statement.clone()];
        }
        let mut out: Vec<Arc<Prepared>> = Vec::new();
        let mut add = |s: &Arc<Prepared>| {
            if !out.iter().any(|o| Arc::ptr_eq(o, s)) {
                out.push(s.clone());
            }
        };
        projected.into_iter().for_each(&mut add);
        self.statements
            .confirmed
            .get(name)
            .into_iter()
            .for_each(&mut add);
        for e in &self.queue {
            for ef in entry_effects(e) {
                if let Effect::Prepare { name: n, statement } = ef {
                    if n == name {
                        add(statement);
                    }
                }
            }
        }
        out
    }

    /// The forward half sends a message the guard let through as it is (`frame`, as the
    /// client sent it): the bytes for the database go into `out`, through the statement cache
    /// ([`cache`]), and its entry joins the queue.
    pub fn send(&mut self, sent: Sent, unit: Option<Unit>, frame: &[u8], out: &mut BytesMut) {
        let body = frame.get(5..).unwrap_or_default();
        if self.queue.is_empty() && !self.copy_in && self.skipping_to_sync.is_none() {
            self.close_released(out);
        }
        let op = if self.copy_in {
            Op::Plain
        } else {
            match &sent {
                // In a failed transaction the Parse fails (25P02) as it would uncached.
                Sent::Parse {
                    name,
                    statement: Some(p),
                } if name.is_empty() && self.status != TransactionStatus::Failed => {
                    let op = self.cache.parse(body, p, out);
                    if matches!(op, Op::Creates(_)) {
                        // The Close of the unnamed statement written ahead of the create.
                        let close = Sent::Close {
                            portal: false,
                            name: String::new(),
                        };
                        self.push_op(close, None, None, Op::Hidden);
                    }
                    op
                }
                Sent::Bind { .. } => match self.unnamed_upstream() {
                    Some(n) if cache::bind_to(out, body, &n).is_some() => Op::Uses(n),
                    _ => Op::Plain,
                },
                Sent::Describe if body == b"S\0" => match self.unnamed_upstream() {
                    Some(n) => {
                        write::describe_statement(out, &n);
                        Op::Uses(n)
                    }
                    None => Op::Plain,
                },
                _ => Op::Plain,
            }
        };
        if op == Op::Plain {
            out.extend_from_slice(frame);
        }
        self.push_op(sent, None, unit, op);
    }

    /// Names the cache let go are closed in the database, when nothing is in flight (so no
    /// COPY can be under way to read the Close as its data, and no error can make the database
    /// skip it unanswered), except the one the client's unnamed statement still runs as.
    fn close_released(&mut self, out: &mut BytesMut) {
        let current = self.unnamed_upstream();
        for name in self.cache.take_closing() {
            if current.as_ref() == Some(&name) {
                self.cache.close_later(name);
                continue;
            }
            write::close_statement(out, &name);
            let close = Sent::Close {
                portal: false,
                name: name.to_string(),
            };
            self.push_op(close, None, None, Op::Closes(name));
        }
    }

    /// The cached name the client's unnamed statement is prepared under, when a message sent
    /// now runs.
    fn unnamed_upstream(&self) -> Option<Arc<str>> {
        self.statements.projected.get("")?.upstream().cloned()
    }

    /// Statements the cache holds in the database.
    pub fn cached_count(&self) -> usize {
        self.cache.held()
    }

    /// A CloseComplete: the client's (a Close), the client's ParseComplete (a reused cached
    /// statement's Parse), or the gateway's own (not the client's to see).
    pub(super) fn close_complete(&mut self) -> Option<BytesMut> {
        let op = match self.queue.front() {
            Some(e) if matches!(e.sent, Sent::Parse { .. } | Sent::Close { .. }) => e.op.clone(),
            _ => {
                self.desync = true;
                return None;
            }
        };
        let parse = self.head_is(|s| matches!(s, Sent::Parse { .. }));
        match op {
            Op::Reuses if parse => {
                self.pop(true);
                let mut out = BytesMut::with_capacity(5);
                phigate_wire::frame::write_message(&mut out, tag::PARSE_COMPLETE, |_| {});
                Some(out)
            }
            Op::Closes(_) | Op::Hidden if !parse => {
                self.pop(true);
                Some(BytesMut::new())
            }
            _ if !parse => {
                self.pop(true);
                None
            }
            _ => {
                self.desync = true;
                None
            }
        }
    }

    /// COPY FROM STDIN began for the head entry: the database now reads messages as COPY
    /// data. What was sent after it is read that way.
    pub(super) fn copy_in_started(&mut self) {
        let Some(head) = self.queue.pop_front() else {
            return;
        };
        let mut consumed_effects = false;
        let mut ended = false;
        while let Some(e) = self.queue.pop_front() {
            match e.sent {
                Sent::Sync | Sent::Silent => self.finish(e),
                Sent::CopyEnd => {
                    ended = true;
                    break;
                }
                _ => {
                    // Fails the COPY and is consumed by it.
                    consumed_effects |= entry_effects(&e).next().is_some();
                    let mut e = e;
                    e.error
                        .get_or_insert(phigate_wire::sqlstate::PROTOCOL_VIOLATION.to_owned());
                    self.finish(e);
                    ended = true;
                    break;
                }
            }
        }
        self.queue.push_front(head);
        self.copy_in = !ended;
        if consumed_effects {
            self.reproject();
        }
    }
}
