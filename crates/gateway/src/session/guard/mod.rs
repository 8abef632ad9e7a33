//! Enforcing policy on the wire, keeping PostgreSQL's own protocol and transaction semantics.
//!
//! [`Guard::filter`] decides one client message and returns what to do with it as a value
//! ([`Filtered`]): forward it, forward a substitute in its place, or hold it for review — with
//! the audit record it needs first. The guard keeps no protocol state of its own: what the
//! session's prepared statements and portals are is asked of the exchange owner
//! ([`crate::session::relay::exchange`]), which alone mirrors PostgreSQL.
//!
//! A refused statement is not simply dropped: the database must end up in the state it would be
//! in had it refused the statement itself (inside a transaction block: the transaction failed;
//! in the extended protocol: everything up to Sync discarded), and the client must see the
//! refusal in its place among the other responses. So the gateway substitutes the refused
//! message with one the database is certain to reject *without executing anything*: a Query or
//! Parse whose text is a single unique token (`phigate_denied_<128 random bits>`, a syntax
//! error), or a Bind / Describe / Execute naming a statement or portal that does not exist.
//! The refusal travels with the substitute's entry in the exchange; the database's error for it
//! is replaced by the refusal. The refused text never reaches the database.

pub mod decide;
pub mod record;
pub mod refusals;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use phigate_policy::{Decision, Policy, Refusal, Role};
use phigate_sql::{Analysis, Analyzer};
use phigate_wire::frontend::{write, Bind, FrontendMessage, Target};
use phigate_wire::Frame;
use rand::Rng;

use crate::auth::Identity;
use crate::session::relay::exchange::{
    Exchange, Portal, Prepared, Sent, Unit, MAX_NAME_BYTES, MAX_PORTALS, MAX_PREPARED,
    MAX_PREPARED_BYTES,
};
pub use record::{describe, phi_columns};

/// Everything a guard is made of, given once at the session's start.
pub struct GuardParams {
    pub role: Arc<Role>,
    pub policy: Arc<Policy>,
    pub policy_version: u64,
    pub identity: Identity,
    /// The session's id in audit records and logs.
    pub session: Arc<str>,
    /// Whether statements are audited (the log is configured).
    pub audit_on: bool,
    /// Reads that change nothing need their record only written before they are forwarded
    /// (their results wait for it to be durable).
    pub gate_reads: bool,
    /// Hold statements that need approval (else they are refused).
    pub approvals_on: bool,
    /// For a masked role: its PHI columns by `schema.table`, for the audit records.
    pub phi: BTreeMap<String, Vec<String>>,
    /// For a role that is not masked: the tagged PHI columns by `schema.table`, which it reads
    /// in the clear (the audit records' `unmasked_columns`).
    pub unmasked_phi: Arc<BTreeMap<String, Vec<String>>>,
    /// For a masked role: its non-tokenized PHI columns by `schema.table`.
    pub predicate_guarded: BTreeMap<String, Vec<String>>,
    /// For a masked role: the PHI columns its masking views compute (every strategy but
    /// `clear`) by `schema.table`. No write can assign them.
    pub unwritable: BTreeMap<String, Vec<String>>,
    /// The session's recording, if it is recorded.
    pub tape: Option<Arc<crate::recording::Tape>>,
    /// Statements by decision (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// For an internal session: its channel and tool (`Origin`), written on every statement
    /// record.
    pub origin: Option<(String, String)>,
}

/// What to do with one client message.
pub struct Filtered {
    pub action: Action,
    /// The statement's audit record, written before the message leaves.
    pub record: Option<Record>,
    /// The message, if forwarded, may change views (DDL): they are read again once it commits.
    pub ddl: bool,
}

pub enum Action {
    /// Send the client's message as it is; `Sent` says what it is to the exchange.
    Forward(Sent),
    /// Send `bytes` instead: the database rejects them without running anything, and the
    /// refusal is sent to the client in place of that error.
    Substitute {
        bytes: BytesMut,
        sent: Sent,
        token: String,
        refusal: Refusal,
    },
    /// Send nothing yet: a reviewer decides.
    Hold(Held),
}

/// An audit record on its way, with the statement the exchange completes from the answers.
pub struct Record {
    pub pending: phigate_audit::Pending,
    pub unit: Unit,
    /// The record must be durable (not only written) before the message leaves.
    pub durable_first: bool,
}

/// A statement a rule holds for review: not forwarded until a reviewer decides.
pub struct Held {
    pub refusal: Refusal,
    /// The message as the client sent it (forwarded as is if approved).
    pub frame: Bytes,
    pub sql: Arc<str>,
    pub analysis: Arc<Analysis>,
    /// `Some(statement name)` for a Parse, `None` for a Query.
    pub parse: Option<String>,
}

pub struct Guard {
    p: GuardParams,
    /// Statements numbered in the session.
    statements: u64,
    /// Set for a batch while the audit log cannot be written: every statement is refused.
    audit_down: bool,
    /// The last `SET phigate.reason = '...'`: the justification of held statements that carry
    /// none of their own.
    reason: Option<String>,
}

/// What [`Guard::record`] writes of one statement.
pub(super) struct Note<'a> {
    approval: Option<String>,
    sql: Arc<str>,
    params: Vec<Option<phigate_audit::Param>>,
    analysis: &'a Analysis,
    /// Statements a SQL-level EXECUTE runs: recorded as part of it.
    executed: &'a [Arc<Prepared>],
    decision: &'a Decision,
    simple: bool,
    /// The end of a hold (approved: runs now; else refused): counted as the hold's outcome in
    /// `/metrics`, not as another statement decision.
    settles: bool,
}

impl Guard {
    pub fn new(p: GuardParams) -> Self {
        Guard {
            p,
            statements: 0,
            audit_down: false,
            reason: None,
        }
    }

    pub fn role(&self) -> &Arc<Role> {
        &self.p.role
    }

    pub fn session(&self) -> &Arc<str> {
        &self.p.session
    }

    pub fn tape(&self) -> Option<&Arc<crate::recording::Tape>> {
        self.p.tape.as_ref()
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.clone()
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.p.policy
    }

    pub fn policy_version(&self) -> u64 {
        self.p.policy_version
    }

    /// While the audit log cannot be written, every statement is refused (nothing runs
    /// unaudited); the session itself goes on.
    pub fn set_audit_down(&mut self, down: bool) {
        self.audit_down = down;
    }

    /// The approval settings of the rule named `rule`.
    pub fn approval_settings(&self, rule: &str) -> phigate_policy::ApprovalSettings {
        self.p
            .policy
            .rule(rule)
            .map(|r| r.approval.clone())
            .unwrap_or_default()
    }

    /// Takes a newer policy (between transactions). A role removed from the policy keeps the
    /// session on its old snapshot until the credential watch ends the session (the reload
    /// that removed it tells every session to check); the next login is refused.
    pub fn update_policy(&mut self, policy: Arc<Policy>, version: u64) {
        if let Some(role) = policy.role(&self.p.role.name) {
            self.p.role = role;
            self.p.policy = policy;
        }
        self.p.policy_version = version;
    }

    /// The analysis a message needs (cached by statement text), computed before the exchange
    /// is locked.
    pub fn analyze(msg: &FrontendMessage<'_>, analyzer: &Analyzer) -> Option<Arc<Analysis>> {
        match msg {
            FrontendMessage::Query { sql } => Some(analyzer.analyze(sql)),
            FrontendMessage::Parse(p) => Some(analyzer.analyze(p.sql)),
            _ => None,
        }
    }

    /// Decides one client message. `analysis` is [`Guard::analyze`]'s; `ex` is the session's
    /// protocol state as it will be when this message arrives at the database.
    pub fn filter(
        &mut self,
        frame: &Frame,
        msg: &FrontendMessage<'_>,
        analysis: Option<Arc<Analysis>>,
        ex: &Exchange,
    ) -> Filtered {
        let analysis = analysis.unwrap_or_else(|| Arc::new(Analysis::Parsed(Vec::new())));
        if let Some(refusal) = refusals::of_names(msg, ex) {
            // A Describe of a statement that does not exist: an error with no effect, in the
            // place of any extended-protocol message.
            let (token, mut bytes) = self.token();
            write::describe_statement(&mut bytes, &token);
            self.log_refusal(&Decision::Deny(refusal.clone()), "name");
            return substitute(bytes, Sent::Describe, token, refusal);
        }
        match msg {
            FrontendMessage::Query { sql } => self.query(frame, sql, analysis, ex),
            FrontendMessage::Parse(parse) => self.parse(frame, parse.name, parse.sql, analysis, ex),
            FrontendMessage::Bind(bind) => self.bind(bind, ex),
            FrontendMessage::Describe {
                target: Target::Statement,
                name,
            } if ex.was_refused(name) && ex.statement(name).is_none() => {
                let (token, mut bytes) = self.token();
                write::describe_statement(&mut bytes, &token);
                substitute(
                    bytes,
                    Sent::Describe,
                    token,
                    refusals::refused_statement(name),
                )
            }
            FrontendMessage::Describe { .. } => forward(Sent::Describe),
            FrontendMessage::Execute { portal, .. } => self.execute(portal, ex),
            FrontendMessage::Close { target, name } => forward(Sent::Close {
                portal: *target == Target::Portal,
                name: (*name).to_owned(),
            }),
            FrontendMessage::Sync => forward(Sent::Sync),
            FrontendMessage::CopyDone | FrontendMessage::CopyFail { .. } => forward(Sent::CopyEnd),
            FrontendMessage::FunctionCall { .. } => {
                let decision = Decision::Deny(refusals::function_call());
                let record = self.record(Note {
                    approval: None,
                    sql: Arc::from("-- FunctionCall message"),
                    params: Vec::new(),
                    analysis: &Analysis::Parsed(Vec::new()),
                    executed: &[],
                    decision: &decision,
                    simple: true,
                    settles: false,
                });
                self.refuse_query(decision, "function-call", record)
            }
            // Flush, CopyData, and what the relay handles itself (Terminate, Password).
            _ => forward(Sent::Silent),
        }
    }

    fn query(
        &mut self,
        frame: &Frame,
        sql: &str,
        analysis: Arc<Analysis>,
        ex: &Exchange,
    ) -> Filtered {
        let (mut decision, executed) = self.decide_query(&analysis, ex);
        if self.p.approvals_on {
            decision = decide::no_prepared_approvals(&analysis, decision);
        }
        if decision == Decision::Allow {
            let room = decide::prepares(&analysis)
                .find_map(|name| refusals::room_to_prepare(ex, name, sql.len()));
            if let Some(r) = room {
                decision = Decision::Deny(r);
            }
        }
        let sql: Arc<str> = Arc::from(sql);
        let record = self.record(Note {
            approval: None,
            sql: sql.clone(),
            params: Vec::new(),
            analysis: &analysis,
            executed: &executed,
            decision: &decision,
            simple: true,
            settles: false,
        });
        match decision {
            Decision::Allow => {
                if let Some(reason) = decide::reason_setting(&analysis, &sql) {
                    self.reason = reason;
                }
                let effects = decide::effects(&analysis, &sql, self.p.policy_version);
                let ddl = decide::has_ddl(&analysis)
                    || executed.iter().any(|p| decide::has_ddl(&p.analysis));
                Filtered {
                    action: Action::Forward(Sent::Query { effects }),
                    record,
                    ddl,
                }
            }
            Decision::RequireApproval(refusal) if self.p.approvals_on => {
                hold(frame, refusal, sql, analysis, None, record)
            }
            d => self.refuse_query(d, "query", record),
        }
    }

    fn parse(
        &mut self,
        frame: &Frame,
        name: &str,
        sql: &str,
        analysis: Arc<Analysis>,
        ex: &Exchange,
    ) -> Filtered {
        let mut decision = self.decide(&analysis);
        if decision == Decision::Allow {
            decision = self
                .decide_executes(&analysis, ex, false, &mut Vec::new())
                .unwrap_or(Decision::Allow);
        }
        if self.p.approvals_on {
            decision = decide::no_prepared_approvals(&analysis, decision);
        }
        if decision == Decision::Allow {
            let room = std::iter::once(name)
                .chain(decide::prepares(&analysis))
                .find_map(|n| refusals::room_to_prepare(ex, n, sql.len()));
            if let Some(r) = room {
                decision = Decision::Deny(r);
            }
        }
        let sql: Arc<str> = Arc::from(sql);
        match decision {
            Decision::Allow => Filtered {
                action: Action::Forward(Sent::Parse {
                    name: name.to_owned(),
                    // A PREPARE / DEALLOCATE / DISCARD ALL sent with Parse changes the
                    // session's names when it is executed.
                    statement: Some(Prepared::with_effect(
                        sql.clone(),
                        analysis.clone(),
                        self.p.policy_version,
                        decide::effect_of(&analysis, &sql, self.p.policy_version),
                    )),
                }),
                record: None,
                ddl: decide::has_ddl(&analysis),
            },
            Decision::RequireApproval(refusal) if self.p.approvals_on => {
                hold(frame, refusal, sql, analysis, Some(name.to_owned()), None)
            }
            decision => {
                // Recorded now: a refused statement never reaches an Execute.
                let record = self.record(Note {
                    approval: None,
                    sql,
                    params: Vec::new(),
                    analysis: &analysis,
                    executed: &[],
                    decision: &decision,
                    simple: false,
                    settles: false,
                });
                self.refuse_parse(name, decision, "parse", record)
            }
        }
    }

    fn bind(&mut self, bind: &Bind<'_>, ex: &Exchange) -> Filtered {
        let candidates = ex.statement_candidates(bind.statement);
        let refusal = if candidates.is_empty() {
            Some(if ex.was_refused(bind.statement) {
                Decision::Deny(refusals::refused_statement(bind.statement))
            } else {
                Decision::Deny(refusals::unknown_statement(bind.statement))
            })
        } else if refusals::is_ambiguous_unnamed(bind.statement, &candidates) {
            Some(Decision::Deny(refusals::ambiguous_unnamed()))
        } else if bind.portal.len() > MAX_NAME_BYTES {
            Some(Decision::Deny(refusals::name_too_long(MAX_NAME_BYTES)))
        } else if !bind.portal.is_empty()
            && ex.portal(bind.portal).is_none()
            && ex.portal_count() >= MAX_PORTALS
        {
            Some(Decision::Deny(refusals::limit("portals", MAX_PORTALS)))
        } else {
            candidates
                .iter()
                .find_map(|c| self.may_run(bind.statement, c, ex))
        };
        let Some(refusal) = refusal else {
            let bound = ex.statement(bind.statement).map(|statement| {
                Arc::new(Portal {
                    statement: statement.clone(),
                    params: if self.p.audit_on {
                        params_of(bind)
                    } else {
                        Vec::new()
                    },
                })
            });
            return forward(Sent::Bind {
                portal: bind.portal.to_owned(),
                bound,
            });
        };
        let (sql, analysis) = candidates
            .first()
            .map(|p| (p.sql.clone(), p.analysis.clone()))
            .unwrap_or_else(|| (Arc::from(""), Arc::new(Analysis::Parsed(Vec::new()))));
        let record = self.record(Note {
            approval: None,
            sql,
            params: Vec::new(),
            analysis: &analysis,
            executed: &[],
            decision: &refusal,
            simple: false,
            settles: false,
        });
        let (token, mut bytes) = self.token();
        write::bind(&mut bytes, bind.portal, &token, bind.rest());
        self.log_refusal(&refusal, "bind");
        Filtered {
            action: Action::Substitute {
                bytes,
                sent: Sent::Bind {
                    portal: bind.portal.to_owned(),
                    bound: None,
                },
                token,
                refusal: into_refusal(refusal),
            },
            record,
            ddl: false,
        }
    }

    /// Whether a prepared statement may run once more now: `None` if so, else the refusal.
    /// An approved statement runs once; one decided under an older policy is decided again.
    fn may_run(&mut self, name: &str, p: &Arc<Prepared>, ex: &Exchange) -> Option<Decision> {
        if self.audit_down {
            return Some(Decision::Deny(refusals::audit_unavailable()));
        }
        // `EXECUTE name` sent with Parse: what it runs is decided when it runs.
        if let Some(d) = self.decide_executes(&p.analysis, ex, true, &mut Vec::new()) {
            return Some(d);
        }
        if p.one_shot() {
            return (!p.take_use()).then(|| Decision::Deny(refusals::approval_used(name)));
        }
        if p.version() == self.p.policy_version {
            return None;
        }
        match self.decide(&p.analysis) {
            Decision::Allow => {
                p.set_version(self.p.policy_version);
                None
            }
            d => Some(d),
        }
    }

    fn execute(&mut self, portal: &str, ex: &Exchange) -> Filtered {
        if self.audit_down {
            let (token, mut bytes) = self.token();
            write::execute(&mut bytes, &token, 0);
            return substitute(
                bytes,
                Sent::Execute {
                    portal: portal.to_owned(),
                },
                token,
                refusals::audit_unavailable(),
            );
        }
        let (sql, analysis, params) = match ex.portal(portal) {
            Some(p) => (
                p.statement.sql.clone(),
                p.statement.analysis.clone(),
                p.params.clone(),
            ),
            None => (
                Arc::from(format!("-- portal {portal}").as_str()),
                Arc::new(Analysis::Parsed(Vec::new())),
                Vec::new(),
            ),
        };
        let record = self.record(Note {
            approval: None,
            sql,
            params,
            analysis: &analysis,
            executed: &[],
            decision: &Decision::Allow,
            simple: false,
            settles: false,
        });
        // DDL runs when its portal is executed (also a Parse of `EXECUTE name` of prepared DDL).
        let ddl = decide::has_ddl(&analysis)
            || decide::executes(&analysis).into_iter().any(|name| {
                ex.statement_candidates(name)
                    .iter()
                    .any(|p| decide::has_ddl(&p.analysis))
            });
        Filtered {
            action: Action::Forward(Sent::Execute {
                portal: portal.to_owned(),
            }),
            record,
            ddl,
        }
    }

    /// A reviewer approved the held statement: record it (with the review) and forward it.
    pub fn release(&mut self, held: &Held, review: &str) -> Filtered {
        let record = self.record(Note {
            approval: Some(review.to_owned()),
            sql: held.sql.clone(),
            params: Vec::new(),
            analysis: &held.analysis,
            executed: &[],
            decision: &Decision::Allow,
            simple: held.parse.is_none(),
            settles: true,
        });
        let sent = match &held.parse {
            Some(name) => Sent::Parse {
                name: name.clone(),
                statement: Some(Prepared::approved(
                    held.sql.clone(),
                    held.analysis.clone(),
                    self.p.policy_version,
                    review,
                    decide::effect_of(&held.analysis, &held.sql, self.p.policy_version),
                )),
            },
            None => Sent::Query {
                effects: decide::effects(&held.analysis, &held.sql, self.p.policy_version),
            },
        };
        Filtered {
            action: Action::Forward(sent),
            record,
            ddl: decide::has_ddl(&held.analysis),
        }
    }

    /// The held statement was denied, timed out or withdrawn: the client gets `refusal` in its
    /// place, exactly as for any refused statement.
    pub fn reject(&mut self, held: &Held, review: &str, refusal: Refusal) -> Filtered {
        let record = self.record(Note {
            approval: Some(review.to_owned()),
            sql: held.sql.clone(),
            params: Vec::new(),
            analysis: &held.analysis,
            executed: &[],
            decision: &Decision::RequireApproval(refusal.clone()),
            simple: held.parse.is_none(),
            settles: true,
        });
        match &held.parse {
            Some(name) => self.refuse_parse(name, Decision::Deny(refusal), "held", record),
            None => self.refuse_query(Decision::Deny(refusal), "held", record),
        }
    }

    fn decide(&self, analysis: &Analysis) -> Decision {
        if self.audit_down {
            return Decision::Deny(refusals::audit_unavailable());
        }
        if decide::uses_reserved_name(analysis) {
            return Decision::Deny(refusals::reserved_name());
        }
        let decision = self.p.policy.decide(&self.p.role, analysis, &[]);
        if matches!(decision, Decision::Deny(_)) {
            return decision;
        }
        // A write no approval can make run is refused now, not sent to a reviewer.
        if let Some(refused) = decide::masked_write(&self.p.role, &self.p.unwritable, analysis) {
            return refused;
        }
        if decision != Decision::Allow {
            return decision;
        }
        decide::phi_predicate(&self.p.role, &self.p.predicate_guarded, analysis)
            .unwrap_or(Decision::Allow)
    }

    /// A Query's decision, with the statements its SQL-level `EXECUTE`s run.
    fn decide_query(
        &mut self,
        analysis: &Analysis,
        ex: &Exchange,
    ) -> (Decision, Vec<Arc<Prepared>>) {
        let mut executed = Vec::new();
        let decision = match self.decide(analysis) {
            Decision::Allow => self
                .decide_executes(analysis, ex, true, &mut executed)
                .unwrap_or(Decision::Allow),
            d => d,
        };
        (decision, executed)
    }

    /// A SQL-level `EXECUTE` (also inside `EXPLAIN`, also sent with Parse) is decided as the
    /// statement it runs, whichever of the statements its name may denote: one unknown to the
    /// gateway is refused; one approved once runs once (`consume`: this is that run).
    fn decide_executes(
        &mut self,
        analysis: &Analysis,
        ex: &Exchange,
        consume: bool,
        executed: &mut Vec<Arc<Prepared>>,
    ) -> Option<Decision> {
        for name in decide::executes(analysis) {
            let candidates = ex.statement_candidates(name);
            if candidates.is_empty() {
                return Some(Decision::Deny(refusals::unknown_statement(name)));
            }
            for c in candidates {
                let verdict = if c.one_shot() {
                    let left = if consume { c.take_use() } else { c.has_use() };
                    (!left).then(|| Decision::Deny(refusals::approval_used(name)))
                } else {
                    Some(self.decide(&c.analysis)).filter(|d| *d != Decision::Allow)
                };
                executed.push(c);
                if verdict.is_some() {
                    return verdict;
                }
            }
        }
        None
    }

    fn refuse_query(&mut self, decision: Decision, what: &str, record: Option<Record>) -> Filtered {
        self.log_refusal(&decision, what);
        let (token, mut bytes) = self.token();
        write::query(&mut bytes, &token);
        Filtered {
            action: Action::Substitute {
                bytes,
                sent: Sent::Query {
                    effects: Vec::new(),
                },
                token,
                refusal: into_refusal(decision),
            },
            record,
            ddl: false,
        }
    }

    fn refuse_parse(
        &mut self,
        name: &str,
        decision: Decision,
        what: &str,
        record: Option<Record>,
    ) -> Filtered {
        self.log_refusal(&decision, what);
        let (token, mut bytes) = self.token();
        write::parse(&mut bytes, name, &token);
        Filtered {
            action: Action::Substitute {
                bytes,
                sent: Sent::Parse {
                    name: name.to_owned(),
                    statement: None,
                },
                token,
                refusal: into_refusal(decision),
            },
            record,
            ddl: false,
        }
    }

    fn log_refusal(&self, decision: &Decision, what: &str) {
        let rule = match decision {
            Decision::Deny(r) | Decision::RequireApproval(r) => r.rule.as_str(),
            Decision::Allow => "internal",
        };
        tracing::info!(
            subject = %self.p.identity.subject,
            role = %self.p.identity.role,
            rule = %rule,
            kind = what,
            "statement refused"
        );
    }

    /// A fresh substitute token, and a buffer for the substitute message. 128 random bits
    /// each time: a client that sees one (PostgreSQL's DEBUG notices name them) cannot tell the
    /// next, so nothing it prepares, declares or opens (a refcursor is named by a string) can
    /// stand where a substitute must find nothing.
    fn token(&mut self) -> (String, BytesMut) {
        let id: u128 = rand::thread_rng().gen();
        (format!("{TOKEN_PREFIX}{id:032x}"), BytesMut::new())
    }
}

/// The prefix of every substitute token: a syntax error or a name no client chooses.
const TOKEN_PREFIX: &str = "phigate_denied_";

/// Hold the message for review (its record, if any, goes first).
fn hold(
    frame: &Frame,
    refusal: Refusal,
    sql: Arc<str>,
    analysis: Arc<Analysis>,
    parse: Option<String>,
    record: Option<Record>,
) -> Filtered {
    Filtered {
        action: Action::Hold(Held {
            refusal,
            frame: Bytes::copy_from_slice(frame.as_bytes()),
            sql,
            analysis,
            parse,
        }),
        record,
        ddl: false,
    }
}

fn forward(sent: Sent) -> Filtered {
    Filtered {
        action: Action::Forward(sent),
        record: None,
        ddl: false,
    }
}

fn substitute(bytes: BytesMut, sent: Sent, token: String, refusal: Refusal) -> Filtered {
    Filtered {
        action: Action::Substitute {
            bytes,
            sent,
            token,
            refusal,
        },
        record: None,
        ddl: false,
    }
}

fn into_refusal(d: Decision) -> Refusal {
    match d {
        Decision::Deny(r) | Decision::RequireApproval(r) => r,
        Decision::Allow => refusals::internal(),
    }
}

fn params_of(bind: &Bind<'_>) -> Vec<Option<phigate_audit::Param>> {
    bind.details()
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
        .unwrap_or_default()
}
