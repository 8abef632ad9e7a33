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
    pub fn rewrite(&self, frame: &Frame) -> Option<(BytesMut, &'static str)> {
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
        Some((out, refusal.sqlstate))
    }
}

/// A statement the database holds for this session (extended-protocol or SQL-level PREPARE),
/// with the policy version it was decided under: after a reload it is decided again before it
/// runs.
struct Prepared {
    analysis: Arc<Analysis>,
    version: u64,
    sql: Arc<str>,
}

/// What a bound portal will run, for its Execute's audit record.
struct Portal {
    sql: Arc<str>,
    analysis: Arc<Analysis>,
    params: Vec<Option<phigate_audit::Param>>,
}

/// Portals remembered for audit records; past this many, the oldest names are forgotten (their
/// Executes are still recorded, by portal name).
const MAX_PORTALS: usize = 1024;

/// A statement a rule holds for review: not forwarded until a reviewer decides.
pub struct Held {
    pub refusal: Refusal,
    /// The message as the client sent it (forwarded as is if approved).
    pub frame: bytes::Bytes,
    pub sql: Arc<str>,
    pub analysis: Arc<Analysis>,
    /// The ReadyForQuery that concludes it.
    pub exchange: u64,
    /// `Some(statement name)` for a Parse, `None` for a Query.
    pub parse: Option<String>,
}

/// One statement on its way through the database, for its `statement_end` record: the
/// backward half completes it from the responses.
#[derive(Debug)]
pub struct Unit {
    /// The statement's number in the session.
    pub n: u64,
    /// The ReadyForQuery that concludes it.
    pub exchange: u64,
    /// Execute (completed by its own CommandComplete / error) rather than Query (completed
    /// at ReadyForQuery) or a refused message (completed by its error).
    pub execute: bool,
    pub started: std::time::Instant,
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
    /// The session's id in audit records and logs.
    pub session: Arc<str>,
    /// Whether statements are audited (the log is configured).
    audit_on: bool,
    /// Set for a batch while the audit log cannot be written: every statement is refused.
    pub audit_down: bool,
    /// Statements numbered in the session.
    statements: u64,
    /// Audit records of the batch being filtered, written (durably) before it is forwarded.
    pub audit_batch: Vec<phigate_audit::Pending>,
    /// The batch's statements, in the order the database will answer them.
    pub audit_units: Vec<Unit>,
    /// Reads that change nothing need their record only written before they are forwarded
    /// (their results wait for it to be durable).
    pub gate_reads: bool,
    /// Set when a statement of the batch needs its record durable before it is forwarded.
    pub audit_write_ahead: bool,
    portals: HashMap<String, Portal>,
    /// For a masked role: its PHI columns by `schema.table`, for the audit records.
    pub phi: std::collections::BTreeMap<String, Vec<String>>,
    /// For a masked role: its non-tokenized PHI columns by `schema.table`.
    pub predicate_guarded: std::collections::BTreeMap<String, Vec<String>>,
    /// Hold statements that need approval (else they are refused).
    pub approvals_on: bool,
    /// Set by `filter` when it held the message: the forward half waits for the review.
    pub held: Option<Held>,
    /// Approved extended-protocol statements: an approval covers one Bind (one execution).
    one_shot: HashMap<String, u32>,
    /// The session's recording, if it is recorded.
    pub tape: Option<Arc<crate::recording::Tape>>,
    /// The last `SET phigate.reason = '...'`: the justification of held statements that carry
    /// none of their own.
    pub reason: Option<String>,
}

impl Guard {
    pub fn new(
        role: Arc<Role>,
        policy: Arc<Policy>,
        policy_version: u64,
        identity: Identity,
        session: Arc<str>,
        audit_on: bool,
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
            session,
            audit_on,
            audit_down: false,
            statements: 0,
            audit_batch: Vec::new(),
            audit_units: Vec::new(),
            gate_reads: false,
            audit_write_ahead: false,
            portals: HashMap::new(),
            phi: Default::default(),
            predicate_guarded: Default::default(),
            approvals_on: false,
            held: None,
            one_shot: HashMap::new(),
            tape: None,
            reason: None,
        }
    }

    /// Notes a statement for the audit log: its record (written before the batch is
    /// forwarded) and its unit (completed from the responses).
    fn audit(&mut self, a: AuditNote<'_>) {
        if !self.audit_on || self.audit_down {
            return;
        }
        self.statements += 1;
        if let Some(tape) = &self.tape {
            tape.statement(self.statements);
        }
        if !(self.gate_reads && changes_nothing(a.analysis)) {
            self.audit_write_ahead = true;
        }
        let (kinds, tables) = describe(a.analysis);
        let (decision, rule) = match a.decision {
            Decision::Allow => ("allow", None),
            Decision::Deny(r) => ("deny", Some(r.rule.clone())),
            Decision::RequireApproval(r) => ("require_approval", Some(r.rule.clone())),
        };
        // The PHI columns of the tables it reads, which this (masked) role sees masked.
        let masked_columns = phi_columns(&tables, &self.phi);
        let meta = phigate_audit::StatementRecord {
            session: self.session.to_string(),
            subject: self.identity.subject.0.clone(),
            role: self.identity.role.0.clone(),
            n: self.statements,
            protocol: if a.simple { "simple" } else { "extended" }.into(),
            kinds,
            tables,
            decision: decision.into(),
            rule,
            masked_columns,
            approval: a.approval,
            ..Default::default()
        };
        self.audit_batch.push(phigate_audit::Pending::Statement {
            meta,
            sql: a.sql,
            params: a.params,
        });
        self.audit_units.push(Unit {
            n: self.statements,
            exchange: a.exchange,
            execute: a.execute,
            started: std::time::Instant::now(),
        });
    }

    /// The approval settings of the rule named `rule`.
    pub fn approval_settings(&self, rule: &str) -> phigate_policy::ApprovalSettings {
        self.policy
            .rule(rule)
            .map(|r| r.approval.clone())
            .unwrap_or_default()
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
        if self.audit_down {
            return audit_unavailable();
        }
        let mut decision = self.policy.decide(&self.role, analysis, &[]);
        if decision == Decision::Allow {
            if let Some(refusal) = self.phi_predicate(analysis) {
                decision = refusal;
            }
        }
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
    /// `SET phigate.reason = '...'` (or `RESET phigate.reason`), alone in its Query: remembered
    /// as the session's justification. `SET LOCAL` and `set_config()` are not followed.
    fn note_reason(&mut self, analysis: &Analysis, sql: &str) {
        let Analysis::Parsed(stmts) = analysis else {
            return;
        };
        let [st] = stmts.as_slice() else {
            return;
        };
        if st.settings != [phigate_policy::REASON_SETTING] {
            return;
        }
        let words: Vec<String> = sql
            .split_whitespace()
            .take(2)
            .map(str::to_ascii_lowercase)
            .collect();
        match words.first().map(String::as_str) {
            Some("reset") => self.reason = None,
            Some("set") if words.get(1).is_none_or(|w| w != "local") => {
                let (_, literals) = phigate_sql::redact_literals(sql);
                if let [only] = literals.as_slice() {
                    self.reason = only
                        .strip_prefix('\'')
                        .and_then(|l| l.strip_suffix('\''))
                        .map(|inner| inner.replace("''", "'").trim().chars().take(500).collect())
                        .filter(|r: &String| !r.is_empty());
                }
            }
            _ => {}
        }
    }

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
                        sql: Arc::from(format!("EXECUTE {name}").as_str()),
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
                let decision = if self.approvals_on {
                    no_prepared_approvals(&analysis, decision)
                } else {
                    decision
                };
                self.audit(AuditNote {
                    approval: None,
                    sql: Arc::from(*sql),
                    params: Vec::new(),
                    analysis: &analysis,
                    decision: &decision,
                    simple: true,
                    execute: false,
                    exchange,
                });
                if decision == Decision::Allow {
                    self.track_sql_prepared(&analysis);
                    self.note_reason(&analysis, sql);
                    out.extend_from_slice(frame.as_bytes());
                } else if let (true, Decision::RequireApproval(refusal)) =
                    (self.approvals_on, &decision)
                {
                    self.held = Some(Held {
                        refusal: refusal.clone(),
                        frame: bytes::Bytes::copy_from_slice(frame.as_bytes()),
                        sql: Arc::from(*sql),
                        analysis: analysis.clone(),
                        exchange,
                        parse: None,
                    });
                } else {
                    let token = self.refuse(decision, "query", exchange);
                    write::query(out, &token);
                }
            }
            FrontendMessage::Parse(parse) => {
                let analysis = analyzer.analyze(parse.sql);
                let decision = self.decide(&analysis);
                let sql: Arc<str> = Arc::from(parse.sql);
                self.one_shot.remove(parse.name);
                let decision = if self.approvals_on {
                    no_prepared_approvals(&analysis, decision)
                } else {
                    decision
                };
                if let (true, Decision::RequireApproval(refusal)) = (self.approvals_on, &decision) {
                    self.held = Some(Held {
                        refusal: refusal.clone(),
                        frame: bytes::Bytes::copy_from_slice(frame.as_bytes()),
                        sql,
                        analysis,
                        exchange,
                        parse: Some(parse.name.to_owned()),
                    });
                    return;
                }
                if decision != Decision::Allow {
                    // Recorded now: a refused statement never reaches an Execute.
                    self.audit(AuditNote {
                        approval: None,
                        sql: sql.clone(),
                        params: Vec::new(),
                        analysis: &analysis,
                        decision: &decision,
                        simple: false,
                        execute: false,
                        exchange,
                    });
                }
                if decision == Decision::Allow {
                    self.refused_statements.remove(parse.name);
                    // The unnamed statement is replaced by every Parse; a named one that exists
                    // is kept (PostgreSQL refuses the duplicate).
                    if parse.name.is_empty() || !self.prepared.contains_key(parse.name) {
                        let prepared = Prepared {
                            analysis,
                            version: self.policy_version,
                            sql,
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
                } else if let Some(left) = self.one_shot.get_mut(bind.statement) {
                    if *left == 0 {
                        Some(Decision::Deny(Refusal {
                            rule: "approval-used".into(),
                            message: format!(
                                "phigate: the approval of statement \"{}\" covered one execution",
                                bind.statement
                            ),
                            hint: "Send the statement again (Parse) for a new review.".into(),
                            sqlstate: "42501",
                            position: None,
                        }))
                    } else {
                        *left -= 1;
                        None
                    }
                } else {
                    self.redecide(bind.statement)
                };
                match refusal {
                    Some(refusal) => {
                        let analysis = self
                            .prepared
                            .get(bind.statement)
                            .map(|p| (p.sql.clone(), p.analysis.clone()));
                        let (sql, analysis) = analysis.unwrap_or_else(|| {
                            (Arc::from(""), Arc::new(Analysis::Parsed(Vec::new())))
                        });
                        self.audit(AuditNote {
                            approval: None,
                            sql,
                            params: Vec::new(),
                            analysis: &analysis,
                            decision: &refusal,
                            simple: false,
                            execute: false,
                            exchange,
                        });
                        self.portals.remove(bind.portal);
                        let token = self.refuse(refusal, "bind", exchange);
                        write::bind(out, bind.portal, &token, bind.rest());
                    }
                    None => {
                        if self.audit_on {
                            self.remember_portal(bind);
                        }
                        out.extend_from_slice(frame.as_bytes())
                    }
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
                self.one_shot.remove(*name);
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Execute { portal, .. } => {
                if self.audit_on && !self.audit_down {
                    let (sql, analysis, params) = match self.portals.get(*portal) {
                        Some(p) => (p.sql.clone(), p.analysis.clone(), p.params.clone()),
                        None => (
                            Arc::from(format!("-- portal {portal}").as_str()),
                            Arc::new(Analysis::Parsed(Vec::new())),
                            Vec::new(),
                        ),
                    };
                    self.audit(AuditNote {
                        approval: None,
                        sql,
                        params,
                        analysis: &analysis,
                        decision: &Decision::Allow,
                        simple: false,
                        execute: true,
                        exchange,
                    });
                }
                out.extend_from_slice(frame.as_bytes());
            }
            FrontendMessage::Close {
                target: Target::Portal,
                name,
            } => {
                self.portals.remove(*name);
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
                self.audit(AuditNote {
                    approval: None,
                    sql: Arc::from("-- FunctionCall message"),
                    params: Vec::new(),
                    analysis: &Analysis::Parsed(Vec::new()),
                    decision: &refusal,
                    simple: true,
                    execute: false,
                    exchange,
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

impl Guard {
    /// A reviewer approved the held statement: record it (with the review) and forward it.
    pub fn release(&mut self, held: Held, review: &str, out: &mut BytesMut) {
        self.audit(AuditNote {
            approval: Some(review.to_owned()),
            sql: held.sql.clone(),
            params: Vec::new(),
            analysis: &held.analysis,
            decision: &Decision::Allow,
            simple: held.parse.is_none(),
            execute: false,
            exchange: held.exchange,
        });
        match &held.parse {
            Some(name) => {
                self.one_shot.insert(name.clone(), 1);
                self.refused_statements.remove(name.as_str());
                if name.is_empty() || !self.prepared.contains_key(name.as_str()) {
                    let prepared = Prepared {
                        analysis: held.analysis.clone(),
                        version: self.policy_version,
                        sql: held.sql.clone(),
                    };
                    self.prepared.insert(name.clone(), prepared);
                }
            }
            None => self.track_sql_prepared(&held.analysis),
        }
        out.extend_from_slice(&held.frame);
    }

    /// The held statement was denied, timed out or withdrawn: the client gets `refusal` in its
    /// place, exactly as for any refused statement.
    pub fn reject(&mut self, held: Held, review: &str, refusal: Refusal, out: &mut BytesMut) {
        self.audit(AuditNote {
            approval: Some(review.to_owned()),
            sql: held.sql.clone(),
            params: Vec::new(),
            analysis: &held.analysis,
            decision: &Decision::RequireApproval(refusal.clone()),
            simple: held.parse.is_none(),
            execute: false,
            exchange: held.exchange,
        });
        let token = self.refuse(Decision::Deny(refusal), "held", held.exchange);
        match &held.parse {
            Some(name) => {
                self.prepared.remove(name.as_str());
                self.refused_statements.insert(name.clone());
                write::parse(out, name, &token);
            }
            None => write::query(out, &token),
        }
    }

    /// A masked role filtering, joining, sorting or grouping on a non-tokenized PHI column of a
    /// table it reads: refused or held as its `phi_predicates` says.
    fn phi_predicate(&self, analysis: &Analysis) -> Option<Decision> {
        if self.predicate_guarded.is_empty()
            || self.role.phi_predicates == phigate_policy::RuleAction::Allow
        {
            return None;
        }
        let Analysis::Parsed(stmts) = analysis else {
            return None;
        };
        let all = stmts
            .iter()
            .flat_map(|st| std::iter::once(st).chain(st.inner.as_deref()));
        for st in all {
            for access in &st.accesses {
                let rel = &access.relation;
                let guarded = self
                    .predicate_guarded
                    .iter()
                    .filter(|(key, _)| match &rel.schema {
                        Some(s) => **key == format!("{s}.{}", rel.name),
                        None => key.rsplit('.').next() == Some(rel.name.as_str()),
                    });
                for (table, cols) in guarded {
                    if let Some(col) = st.predicate_columns.iter().find(|c| cols.contains(c)) {
                        let refusal = Refusal {
                            rule: "phi-predicate".into(),
                            message: format!(
                                "phigate: filtering, joining, sorting or grouping on the PHI column {col} of {table} is not allowed for role {} (rule phi-predicate)",
                                self.role.name
                            ),
                            hint: "A condition on a masked value reveals it a little at a time. Use ids or codes; tokenized columns (names, MRNs) may be joined and grouped on.".into(),
                            sqlstate: "42501",
                            position: None,
                        };
                        return Some(match self.role.phi_predicates {
                            phigate_policy::RuleAction::RequireApproval => {
                                Decision::RequireApproval(refusal)
                            }
                            _ => Decision::Deny(refusal),
                        });
                    }
                }
            }
        }
        None
    }
}

/// What [`Guard::audit`] records of one statement.
struct AuditNote<'a> {
    approval: Option<String>,
    sql: Arc<str>,
    params: Vec<Option<phigate_audit::Param>>,
    analysis: &'a Analysis,
    decision: &'a Decision,
    simple: bool,
    execute: bool,
    exchange: u64,
}

impl Guard {
    fn remember_portal(&mut self, bind: &phigate_wire::frontend::Bind<'_>) {
        let Some(p) = self.prepared.get(bind.statement) else {
            self.portals.remove(bind.portal);
            return;
        };
        let params = bind
            .details()
            .map(|d| {
                d.params
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.map(|v| phigate_audit::Param {
                            binary: d.param_is_binary(i),
                            value: v.to_vec(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        if self.portals.len() >= MAX_PORTALS && !self.portals.contains_key(bind.portal) {
            self.portals.clear();
        }
        let portal = Portal {
            sql: p.sql.clone(),
            analysis: p.analysis.clone(),
            params,
        };
        self.portals.insert(bind.portal.to_owned(), portal);
    }
}

/// Statement kinds and `relation:action` entries for the audit record.
pub fn describe(analysis: &Analysis) -> (Vec<String>, Vec<String>) {
    match analysis {
        Analysis::Parsed(stmts) => {
            let mut kinds = Vec::new();
            let mut tables: Vec<String> = Vec::new();
            let add = |st: &Statement, tables: &mut Vec<String>| {
                for a in &st.accesses {
                    let entry = format!("{}:{}", a.relation, a.action.as_str());
                    if !tables.contains(&entry) {
                        tables.push(entry);
                    }
                }
            };
            for st in stmts {
                kinds.push(st.kind.label().to_owned());
                add(st, &mut tables);
                if let Some(inner) = &st.inner {
                    add(inner, &mut tables);
                }
            }
            (kinds, tables)
        }
        Analysis::Invalid { .. } => (vec!["invalid".into()], Vec::new()),
    }
}

/// The columns of `phi` (by `schema.table`) in the tables a statement touches (`describe`'s
/// `relation:action` entries; an unqualified relation is in `public`), as `schema.table.column`.
pub fn phi_columns(
    tables: &[String],
    phi: &std::collections::BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for entry in tables {
        let rel = entry.split(':').next().unwrap_or(entry);
        let key = if rel.contains('.') {
            rel.to_owned()
        } else {
            format!("public.{rel}")
        };
        for c in phi.get(&key).into_iter().flatten() {
            let name = format!("{key}.{c}");
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// Statements whose running changes nothing that phigate can see: SELECT that calls no function
/// (a function may write) and writes or locks nothing, and SHOW. With `audit.read_durability =
/// "results"` their record need only be written, not durable, before they run; their results
/// wait for durability. (A view, an RLS policy or a user-defined operator can still call a
/// function the statement does not name: hence the opt-in.)
fn changes_nothing(analysis: &Analysis) -> bool {
    match analysis {
        Analysis::Parsed(stmts) => {
            !stmts.is_empty()
                && stmts.iter().all(|st| match st.kind {
                    Kind::Select => {
                        st.functions.is_empty()
                            && st.attribute_calls.is_empty()
                            && st.inner.is_none()
                            && st.accesses.iter().all(|a| !a.action.is_write())
                    }
                    // Not transaction control: COMMIT runs deferred triggers, COMMIT PREPARED
                    // commits another session's work, SET CONSTRAINTS fires triggers.
                    Kind::Show => true,
                    _ => false,
                })
        }
        Analysis::Invalid { .. } => false,
    }
}

/// A statement that needs approval cannot be approved inside PREPARE (one approval would then
/// cover any number of EXECUTEs): it is refused, asking for the statement itself.
fn no_prepared_approvals(analysis: &Analysis, decision: Decision) -> Decision {
    let Decision::RequireApproval(r) = &decision else {
        return decision;
    };
    let prepares = matches!(analysis, Analysis::Parsed(stmts) if stmts.iter().any(|s| s.kind == Kind::Prepare));
    if !prepares {
        return decision;
    }
    Decision::Deny(Refusal {
        rule: r.rule.clone(),
        message: format!(
            "phigate: a statement that needs approval (rule {}) cannot be prepared with PREPARE",
            r.rule
        ),
        hint: "Send the statement itself; it waits for a reviewer and runs once.".into(),
        sqlstate: "42501",
        position: None,
    })
}

fn audit_unavailable() -> Decision {
    Decision::Deny(Refusal {
        rule: "audit-unavailable".into(),
        message: "phigate: statement refused: the audit log cannot be written".into(),
        hint: "Nothing runs unaudited. Try again shortly; the gateway's health endpoint shows the audit state.".into(),
        sqlstate: "58030",
        position: None,
    })
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
    fn only_reads_that_change_nothing_skip_the_fsync_before_they_run() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SELECT name, visit_date FROM patients JOIN visits USING (patient_id) WHERE id > 3",
            "SHOW search_path",
        ] {
            assert!(changes_nothing(&phigate_sql::analyze(sql)), "{sql}");
        }
        for sql in [
            // A function may write (a volatile one, nextval, a user's own).
            "SELECT count(*) FROM patients",
            "SELECT nextval('s')",
            // `p.name` calls name(p) if patients has no column "name": unknown without the
            // catalog.
            "SELECT p.name FROM patients p",
            "SELECT * FROM patients FOR UPDATE",
            "WITH d AS (DELETE FROM notes RETURNING id) SELECT id FROM d",
            "SELECT * INTO copy_of FROM patients",
            "INSERT INTO notes (body) VALUES ('x')",
            "EXPLAIN ANALYZE SELECT 1",
            "DO $$ BEGIN END $$",
            "SET search_path = public",
            "SELECT (",
            "COMMIT",
            "COMMIT PREPARED 'x'",
            "SET CONSTRAINTS ALL IMMEDIATE",
        ] {
            assert!(!changes_nothing(&phigate_sql::analyze(sql)), "{sql}");
        }
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
        let (rewritten, code) = d.rewrite(&frame).expect("rewritten");
        assert_eq!(code, "42501");
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
