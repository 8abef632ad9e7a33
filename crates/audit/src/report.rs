//! The access report: per identity, what it did (sessions, statements, tables and rows, masked
//! or not, refusals, holds and how they ended) and what it decided as a reviewer; the approvals
//! (who approved what, when, why); the failed logins.
//!
//! A held statement leaves two `statement` records: the hold (`require_approval`, no
//! `approval`) and its settlement (`allow` with the review in `approval` when it ran;
//! `require_approval` with the review when it was denied, timed out or was withdrawn). The
//! report counts the statement once, as sent, and says how its hold ended.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::query::in_range;
use crate::record::{reviewers, Event, Record, StatementRecord};
use crate::verify::read_records;

#[derive(Debug, Default, Serialize)]
pub struct TableAccess {
    pub statements: u64,
    pub rows: u64,
    pub actions: BTreeSet<String>,
    /// PHI columns that left masked; empty while no masking policy applies.
    pub masked_columns: BTreeSet<String>,
    /// Whether every result from this table left masked (false: some rows left in the clear).
    pub masked: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct IdentityReport {
    pub subject: String,
    pub roles: BTreeSet<String>,
    pub sessions: u64,
    /// Statements it sent (a held statement once, however its hold ended).
    pub statements: u64,
    /// Refused by a rule or a guard.
    pub denied: u64,
    /// Held for a reviewer.
    pub approvals_required: u64,
    /// Held statements that ran once approved.
    pub approved: u64,
    /// Held statements that did not run: denied by a reviewer, timed out, withdrawn.
    pub held_refused: u64,
    /// As a reviewer: reviews it approved (alone or as one of several approvers).
    pub reviews_approved: u64,
    /// As a reviewer: reviews it denied.
    pub reviews_denied: u64,
    /// Failed logins whose credential named this identity (or, for an identity shown as
    /// `(failed login as USER)`, that named nobody the gateway could trust).
    pub failed_logins: u64,
    pub tables: BTreeMap<String, TableAccess>,
    /// Statements refused by a rule, and held statements that did not run.
    pub denials: Vec<Denial>,
}

#[derive(Debug, Serialize)]
pub struct Denial {
    pub ts: String,
    pub seq: u64,
    pub rule: Option<String>,
    pub text: String,
    /// For a held statement that did not run: its review.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<String>,
}

/// One approved review: who approved what, when, why.
#[derive(Debug, Serialize)]
pub struct ApprovalEntry {
    pub review: String,
    /// When it was approved (the `review_decided` record).
    pub ts: String,
    pub seq: u64,
    /// Who asked, as which role, held by which rule (`elevation`: an access request).
    pub requester: Option<String>,
    pub role: Option<String>,
    pub rule: Option<String>,
    pub justification: Option<String>,
    /// Who approved (several approvers: `ann, bob`), and why.
    pub by: Option<String>,
    pub reason: Option<String>,
    pub break_glass: bool,
    /// The statement that ran under it (as recorded: redacted unless the log keeps text).
    pub statement: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FailedLogin {
    pub ts: String,
    pub seq: u64,
    /// The individual the credential named, when the gateway could tell.
    pub subject: Option<String>,
    pub user: String,
    pub client_addr: String,
    pub reason: String,
    pub via: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct AccessReport {
    pub since: Option<String>,
    pub until: Option<String>,
    pub identities: Vec<IdentityReport>,
    pub approvals: Vec<ApprovalEntry>,
    pub failed_logins: Vec<FailedLogin>,
}

/// What `review_requested` said, kept for the approval that ends the review.
struct Requested {
    subject: String,
    role: String,
    rule: String,
    justification: Option<String>,
}

/// The report's state while the log is read. Bound: one entry per identity, per statement
/// awaiting its end record, and per review in the log (reports are made off-line, from the
/// whole log).
#[derive(Default)]
struct Builder {
    by_subject: BTreeMap<String, IdentityReport>,
    /// (session, n) → (subject, tables) of allowed statements awaiting their end record.
    open: HashMap<(String, u64), (String, Vec<String>)>,
    requested: HashMap<String, Requested>,
    /// review → the text of the statement that ran under it.
    ran: HashMap<String, String>,
    approvals: Vec<ApprovalEntry>,
    failed: Vec<FailedLogin>,
}

impl Builder {
    fn identity(&mut self, subject: &str) -> &mut IdentityReport {
        self.by_subject.entry(subject.to_owned()).or_default()
    }

    fn statement(&mut self, r: &Record, st: &StatementRecord) {
        let e = self.identity(&st.subject);
        e.roles.insert(st.role.clone());
        match (st.decision.as_str(), &st.approval) {
            ("allow", Some(review)) => {
                e.approved += 1;
                self.ran.insert(review.clone(), st.text.clone());
                self.allowed(st);
            }
            ("allow", None) => {
                e.statements += 1;
                self.allowed(st);
            }
            ("require_approval", None) => {
                e.statements += 1;
                e.approvals_required += 1;
            }
            (_, review) => {
                if review.is_some() {
                    e.held_refused += 1;
                } else {
                    e.statements += 1;
                    e.denied += 1;
                }
                e.denials.push(Denial {
                    ts: r.ts.clone(),
                    seq: r.seq,
                    rule: st.rule.clone(),
                    text: st.text.clone(),
                    review: review.clone(),
                });
            }
        }
    }

    fn allowed(&mut self, st: &StatementRecord) {
        let e = self.by_subject.entry(st.subject.clone()).or_default();
        let mut rels = Vec::new();
        for t in &st.tables {
            let (rel, action) = t.split_once(':').unwrap_or((t, ""));
            let ta = e
                .tables
                .entry(rel.to_owned())
                .or_insert_with(|| TableAccess {
                    masked: true,
                    ..Default::default()
                });
            ta.statements += 1;
            if !action.is_empty() {
                ta.actions.insert(action.to_owned());
            }
            ta.masked_columns.extend(st.masked_columns.iter().cloned());
            if st.masked_columns.is_empty() {
                ta.masked = false;
            }
            rels.push(rel.to_owned());
        }
        self.open
            .insert((st.session.clone(), st.n), (st.subject.clone(), rels));
    }

    fn statement_end(&mut self, session: &str, n: u64, rows: Option<u64>) {
        let Some((subject, rels)) = self.open.remove(&(session.to_owned(), n)) else {
            return;
        };
        if let (Some(rows), Some(e)) = (rows, self.by_subject.get_mut(&subject)) {
            for rel in rels {
                if let Some(ta) = e.tables.get_mut(&rel) {
                    ta.rows += rows;
                }
            }
        }
    }

    fn decided(&mut self, r: &Record) {
        let Event::ReviewDecided {
            review,
            status,
            by,
            reason,
            break_glass,
        } = &r.event
        else {
            return;
        };
        let names: Vec<String> = by
            .as_deref()
            .map(|b| reviewers(b).map(str::to_owned).collect())
            .unwrap_or_default();
        match status.as_str() {
            "approved" => {
                for n in &names {
                    self.identity(n).reviews_approved += 1;
                }
                let asked = self.requested.get(review);
                self.approvals.push(ApprovalEntry {
                    review: review.clone(),
                    ts: r.ts.clone(),
                    seq: r.seq,
                    requester: asked.map(|a| a.subject.clone()),
                    role: asked.map(|a| a.role.clone()),
                    rule: asked.map(|a| a.rule.clone()),
                    justification: asked.and_then(|a| a.justification.clone()),
                    by: by.clone(),
                    reason: reason.clone(),
                    break_glass: *break_glass,
                    statement: None,
                });
            }
            "denied" => {
                for n in &names {
                    self.identity(n).reviews_denied += 1;
                }
            }
            _ => {}
        }
    }

    fn record(&mut self, r: &Record, since: Option<&str>, until: Option<&str>) {
        // Who asked for a review is kept even from before the period: its approval may fall
        // inside it.
        if let Event::ReviewRequested {
            review,
            subject,
            role,
            rule,
            justification,
            ..
        } = &r.event
        {
            self.requested.insert(
                review.clone(),
                Requested {
                    subject: subject.clone(),
                    role: role.clone(),
                    rule: rule.clone(),
                    justification: justification.clone(),
                },
            );
        }
        if !in_range(&r.ts, since, until) {
            return;
        }
        match &r.event {
            Event::SessionStart { subject, role, .. } => {
                let e = self.identity(subject);
                e.sessions += 1;
                e.roles.insert(role.clone());
            }
            Event::Statement(st) => self.statement(r, st),
            Event::StatementEnd {
                session, n, rows, ..
            } => self.statement_end(session, *n, *rows),
            Event::ReviewDecided { .. } => self.decided(r),
            Event::LoginFailed {
                client_addr,
                user,
                reason,
                via,
                subject,
            } => {
                let who = subject
                    .clone()
                    .unwrap_or_else(|| format!("(failed login as {user})"));
                self.identity(&who).failed_logins += 1;
                self.failed.push(FailedLogin {
                    ts: r.ts.clone(),
                    seq: r.seq,
                    subject: subject.clone(),
                    user: user.clone(),
                    client_addr: client_addr.clone(),
                    reason: reason.clone(),
                    via: via.clone(),
                });
            }
            _ => {}
        }
    }

    fn finish(mut self, since: Option<&str>, until: Option<&str>) -> AccessReport {
        for a in &mut self.approvals {
            a.statement = self.ran.get(&a.review).cloned();
        }
        AccessReport {
            since: since.map(str::to_owned),
            until: until.map(str::to_owned),
            identities: self
                .by_subject
                .into_iter()
                .map(|(subject, mut r)| {
                    r.subject = subject;
                    r
                })
                .collect(),
            approvals: self.approvals,
            failed_logins: self.failed,
        }
    }
}

/// The access report over the records from `since` (inclusive) to `until` (exclusive).
pub fn report(
    dir: &Path,
    since: Option<&str>,
    until: Option<&str>,
) -> std::io::Result<AccessReport> {
    let mut b = Builder::default();
    read_records(dir, |r| {
        b.record(&r, since, until);
        true
    })?;
    Ok(b.finish(since, until))
}
