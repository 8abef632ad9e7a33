//! Enforcing policy on the wire, keeping PostgreSQL's own protocol and transaction semantics.
//!
//! A refused statement is not simply dropped: the database must end up in the state it would be
//! in had it refused the statement itself (inside a transaction block: the transaction failed;
//! in the extended protocol: everything up to Sync discarded), and the client must see the
//! refusal in its place among the other responses. So the gateway substitutes the refused
//! message with one the database is certain to reject *without executing anything*: a Query or
//! Parse whose text is a single unique token (`phigate_denied_<session nonce>_<n>`, a syntax
//! error), or a Bind / Describe naming a statement that does not exist. The database answers
//! with an error mentioning the token; the backward half recognises the token and replaces that
//! error with the gateway's refusal. The refused text never reaches the database.
//!
//! Each refusal is filed under the exchange (the ReadyForQuery) that concludes it. The database
//! silently skips a substitute that follows an earlier error of the same exchange, so a refusal
//! still unclaimed when its exchange's ReadyForQuery arrives is dropped then: the pending set is
//! bounded by what is in flight.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use phigate_policy::{Decision, Policy, Refusal, Role};
use phigate_sql::{Analysis, Analyzer, Kind, Statement};
use phigate_wire::backend::{Fields, Notice};
use phigate_wire::frontend::{write, FrontendMessage, Target};
use phigate_wire::Frame;
use rand::Rng;

use crate::auth::Identity;

/// Refusals waiting for the database's error that stands in for them.
#[derive(Default)]
pub struct Denials {
    /// token → (refusal, number of the exchange that concludes it).
    map: Mutex<HashMap<String, (Refusal, u64)>>,
    pending: AtomicUsize,
}

const TOKEN_PREFIX: &str = "phigate_denied_";

impl Denials {
    fn add(&self, token: String, refusal: Refusal, exchange: u64) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(token, (refusal, exchange));
            self.pending.store(m.len(), Ordering::Release);
        }
    }

    /// ReadyForQuery number `exchange` arrived: refusals of that exchange or earlier that were
    /// not claimed never will be (the database skipped their substitutes).
    pub fn exchange_done(&self, exchange: u64) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Ok(mut m) = self.map.lock() {
            m.retain(|_, (_, e)| *e > exchange);
            self.pending.store(m.len(), Ordering::Release);
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// If `frame` is the database's error for a substituted message, the gateway's refusal to
    /// send instead.
    pub fn rewrite(&self, frame: &Frame) -> Option<BytesMut> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let fields = Fields::decode(frame).ok()?;
        let message = fields.message()?;
        let start = message.find(TOKEN_PREFIX)?;
        let token: String = message[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let (refusal, _) = {
            let mut m = self.map.lock().ok()?;
            let r = m.remove(&token)?;
            self.pending.store(m.len(), Ordering::Release);
            r
        };
        let mut out = BytesMut::new();
        Notice::error(refusal.sqlstate, &refusal.message)
            .with_hint(&refusal.hint)
            .with_position(refusal.position)
            .write(&mut out);
        Some(out)
    }
}

/// A statement the database holds for this session (extended-protocol or SQL-level PREPARE),
/// with the policy version it was decided under: after a reload it is decided again before it
/// runs.
struct Prepared {
    analysis: Arc<Analysis>,
    version: u64,
}

pub struct Guard {
    pub role: Arc<Role>,
    policy: Arc<Policy>,
    policy_version: u64,
    nonce: String,
    counter: u64,
    /// Extended-protocol statement names whose Parse was refused.
    refused_statements: HashSet<String>,
    /// Prepared statements that were allowed, by name: Parse and SQL-level PREPARE share one
    /// namespace in PostgreSQL, and so do they here (the unnamed statement is "").
    prepared: HashMap<String, Prepared>,
    pub denials: Arc<Denials>,
    identity: Identity,
    /// Set when an allowed statement may have changed views (DDL): the catalog is read again.
    pub ddl_seen: bool,
}

impl Guard {
    pub fn new(
        role: Arc<Role>,
        policy: Arc<Policy>,
        policy_version: u64,
        identity: Identity,
    ) -> Self {
        let nonce: u64 = rand::thread_rng().gen();
        Guard {
            role,
            policy,
            policy_version,
            nonce: format!("{nonce:016x}"),
            counter: 0,
            refused_statements: HashSet::new(),
            prepared: HashMap::new(),
            denials: Arc::default(),
            identity,
            ddl_seen: false,
        }
    }

    pub fn policy_version(&self) -> u64 {
        self.policy_version
    }

    /// Takes a newer policy (between transactions). A role removed from the policy keeps the
    /// session on its old snapshot; the next login is refused.
    pub fn update_policy(&mut self, policy: Arc<Policy>, version: u64) {
        if let Some(role) = policy.role(&self.role.name) {
            self.role = role;
            self.policy = policy;
        }
        self.policy_version = version;
    }

    fn token(&mut self) -> String {
        self.counter += 1;
        format!("{TOKEN_PREFIX}{}_{}", self.nonce, self.counter)
    }

    fn refuse(&mut self, decision: Decision, what: &str, exchange: u64) -> String {
        let refusal = match decision {
            Decision::Deny(r) | Decision::RequireApproval(r) => r,
            Decision::Allow => internal_refusal(),
        };
        tracing::info!(
            subject = %self.identity.subject,
            role = %self.identity.role,
            rule = %refusal.rule,
            kind = what,
            "statement refused"
        );
        let token = self.token();
        self.denials.add(token.clone(), refusal, exchange);
        token
    }

    fn decide(&mut self, analysis: &Analysis) -> Decision {
        let decision = self.policy.decide(&self.role, analysis, &[]);
        if decision == Decision::Allow {
            if let Analysis::Parsed(stmts) = analysis {
                self.ddl_seen |= stmts.iter().any(|s| {
                    matches!(s.kind, Kind::Ddl(_))
                        || s.inner
                            .as_ref()
                            .is_some_and(|i| matches!(i.kind, Kind::Ddl(_)))
                });
            }
        }
        decision
    }

    /// A Query's decision, including SQL-level EXECUTEs of statements prepared under an older
    /// policy (decided again now).
    fn decide_query(&mut self, analysis: &Analysis) -> Decision {
        let decision = self.decide(analysis);
        if decision != Decision::Allow {
            return decision;
        }
        let Analysis::Parsed(stmts) = analysis else {
            return decision;
        };
        for st in stmts.iter().filter(|s| s.kind == Kind::Execute) {
            let Some(prepared) = st.name.as_ref().and_then(|n| self.prepared.get(n)) else {
                continue;
            };
            if prepared.version != self.policy_version {
                let analysis = prepared.analysis.clone();
                let again = self.decide(&analysis);
                if again != Decision::Allow {
                    return again;
                }
            }
        }
        Decision::Allow
    }

    /// Keeps track of SQL-level PREPARE / DEALLOCATE in an allowed Query (DEALLOCATE ALL also
    /// drops the protocol-level statements, as in PostgreSQL).
    fn track_sql_prepared(&mut self, analysis: &Arc<Analysis>) {
        let Analysis::Parsed(stmts) = analysis.as_ref() else {
            return;
        };
        for st in stmts {
            match (&st.kind, &st.name) {
                // PostgreSQL refuses a PREPARE whose name exists and keeps the old statement.
                (Kind::Prepare, Some(name)) if !self.prepared.contains_key(name) => {
                    let prepared = Prepared {
                        analysis: Arc::new(single(st)),
                        version: self.policy_version,
                    };
                    self.prepared.insert(name.clone(), prepared);
                }
                (Kind::Deallocate, Some(name)) if name == "all" => self.prepared.clear(),
                (Kind::Deallocate, Some(name)) => {
                    self.prepared.remove(name);
                }
                _ => {}
            }
        }
    }

    /// Appends to `out` what goes to the database for this client message: the message itself,
    /// or its refusing substitute. `exchange` is the number of the ReadyForQuery that will
    /// conclude this message.
    pub fn filter(
        &mut self,
        frame: &Frame,
        msg: &FrontendMessage<'_>,
        analyzer: &Analyzer,
        exchange: u64,
        out: &mut BytesMut,
    ) {
        match msg {
            FrontendMessage::Query { sql } => {
                let analysis = analyzer.analyze(sql);
                let decision = self.decide_query(&analysis);
                if decision == Decision::Allow {
                    self.track_sql_prepared(&analysis);
                    out.extend_from_slice(frame.as_bytes());
                } else {
                    let token = self.refuse(decision, "query", exchange);
                    write::query(out, &token);
                }
            }
            FrontendMessage::Parse(parse) => {
                let analysis = analyzer.analyze(parse.sql);
                let decision = self.decide(&analysis);
                if decision == Decision::Allow {
                    self.refused_statements.remove(parse.name);
                    // The unnamed statement is replaced by every Parse; a named one that exists
                    // is kept (PostgreSQL refuses the duplicate).
                    if parse.name.is_empty() || !self.prepared.contains_key(parse.name) {
                        let prepared = Prepared {
                            analysis,
                            version: self.policy_version,
                        };
                        self.prepared.insert(parse.name.to_owned(), prepared);
                    }
                    out.extend_from_slice(frame.as_bytes());
                } else {
                    let token = self.refuse(decision, "parse", exchange);
                    self.prepared.remove(parse.name);
                    self.refused_statements.insert(parse.name.to_owned());
                    write::parse(out, parse.name, &token);
                }
            }
            FrontendMessage::Bind(bind) => {
                let refusal = if self.refused_statements.contains(bind.statement) {
                    Some(statement_refusal(bind.statement))
                } else {
                    self.redecide(bind.statement)
                };
                match refusal {
                    Some(refusal) => {
                        let token = self.refuse(refusal, "bind", exchange);
                        write::bind(out, bind.portal, &token, bind.rest());
                    }
                    None => out.extend_from_slice(frame.as_bytes()),
                }
            }
            FrontendMessage::Describe {
                target: Target::Statement,
                name,
            } if self.refused_statements.contains(*name) => {
                let token = self.refuse(statement_refusal(name), "describe", exchange);
                write::describe_statement(out, &token);
            }
            FrontendMessage::Close {
                target: Target::Statement,
                name,
            } => {
                self.refused_statements.remove(*name);
                self.prepared.remove(*name);
                out.extend_from_slice(frame.as_bytes());
            }
            // The legacy fast path names a function by OID: phigate cannot tell which one it is,
            // so no role may use it (set_config by OID would unpin any setting).
            FrontendMessage::FunctionCall { .. } => {
                let refusal = Decision::Deny(Refusal {
                    rule: "function-call-message".into(),
                    message: "phigate: the FunctionCall protocol message denied by rule function-call-message"
                        .into(),
                    hint: "Call functions with SELECT so phigate can see which one.".into(),
                    sqlstate: "42501",
                    position: None,
                });
                let token = self.refuse(refusal, "function-call", exchange);
                write::query(out, &token);
            }
            _ => out.extend_from_slice(frame.as_bytes()),
        }
    }

    /// A named statement prepared under an older policy is decided again before it is bound.
    fn redecide(&mut self, name: &str) -> Option<Decision> {
        let prepared = self.prepared.get(name)?;
        if prepared.version == self.policy_version {
            return None;
        }
        let analysis = prepared.analysis.clone();
        let decision = self.decide(&analysis);
        if decision == Decision::Allow {
            if let Some(p) = self.prepared.get_mut(name) {
                p.version = self.policy_version;
            }
            None
        } else {
            Some(decision)
        }
    }
}

fn single(st: &Statement) -> Analysis {
    Analysis::Parsed(vec![st.clone()])
}

fn statement_refusal(name: &str) -> Decision {
    Decision::Deny(Refusal {
        rule: "refused-statement".into(),
        message: format!("phigate: prepared statement \"{name}\" was refused and cannot be used"),
        hint: "Its Parse was refused; see the earlier error.".into(),
        sqlstate: "42501",
        position: None,
    })
}

fn internal_refusal() -> Refusal {
    Refusal {
        rule: "internal".into(),
        message: "phigate: statement refused".into(),
        hint: String::new(),
        sqlstate: "42501",
        position: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal() -> Refusal {
        internal_refusal()
    }

    #[test]
    fn unclaimed_refusals_go_with_their_exchange() {
        let d = Denials::default();
        d.add("phigate_denied_a_1".into(), refusal(), 3);
        d.add("phigate_denied_a_2".into(), refusal(), 3);
        d.add("phigate_denied_a_3".into(), refusal(), 4);
        d.exchange_done(2);
        assert_eq!(
            d.pending(),
            3,
            "nothing of exchange 3 may go before its ReadyForQuery"
        );
        d.exchange_done(3);
        assert_eq!(d.pending(), 1);
        d.exchange_done(4);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn the_database_error_for_a_token_becomes_the_refusal() {
        let d = Denials::default();
        d.add("phigate_denied_ab_7".into(), refusal(), 1);
        let mut out = BytesMut::new();
        Notice::error("42601", "syntax error at or near \"phigate_denied_ab_7\"").write(&mut out);
        let frame = Frame::from_raw(out.freeze()).expect("frame");
        let rewritten = d.rewrite(&frame).expect("rewritten");
        let frame = Frame::from_raw(rewritten.freeze()).expect("frame");
        let fields = Fields::decode(&frame).expect("fields");
        assert_eq!(fields.code(), Some("42501"));
        assert_eq!(fields.message(), Some("phigate: statement refused"));
        assert_eq!(d.pending(), 0);
        // Another session's (or a forged) token is left alone.
        let mut out = BytesMut::new();
        Notice::error("42601", "syntax error at or near \"phigate_denied_zz_1\"").write(&mut out);
        assert!(d
            .rewrite(&Frame::from_raw(out.freeze()).expect("frame"))
            .is_none());
    }
}
