//! Search, export and the access report, over the records as stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::record::{Event, Record};
use crate::verify::read_records;

/// Search criteria; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub subject: Option<String>,
    pub role: Option<String>,
    /// `table` or `schema.table`.
    pub table: Option<String>,
    pub column: Option<String>,
    /// RFC 3339 bounds (inclusive since, exclusive until).
    pub since: Option<String>,
    pub until: Option<String>,
    /// `allow`, `deny`, `require_approval`.
    pub decision: Option<String>,
    pub session: Option<String>,
    /// Record type (`statement`, `session_start`, ...).
    pub kind: Option<String>,
}

fn table_matches(entry: &str, want: &str) -> bool {
    let rel = entry.split(':').next().unwrap_or(entry);
    rel == want || rel.rsplit('.').next() == Some(want)
}

/// RFC 3339 timestamps in UTC with the same precision compare as strings; bounds given with
/// less precision (a date, or seconds) compare correctly as prefixes.
fn in_range(ts: &str, since: Option<&str>, until: Option<&str>) -> bool {
    since.is_none_or(|s| ts >= s) && until.is_none_or(|u| ts < u)
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        if !in_range(&r.ts, self.since.as_deref(), self.until.as_deref()) {
            return false;
        }
        if self.kind.as_deref().is_some_and(|k| k != r.kind()) {
            return false;
        }
        if self
            .session
            .as_deref()
            .is_some_and(|s| r.session() != Some(s))
        {
            return false;
        }
        if self
            .subject
            .as_deref()
            .is_some_and(|s| r.subject() != Some(s))
        {
            return false;
        }
        if self.role.as_deref().is_some_and(|s| r.role() != Some(s)) {
            return false;
        }
        let needs_statement =
            self.table.is_some() || self.column.is_some() || self.decision.is_some();
        if needs_statement {
            let Event::Statement(st) = &r.event else {
                return false;
            };
            if self
                .table
                .as_deref()
                .is_some_and(|t| !st.tables.iter().any(|e| table_matches(e, t)))
            {
                return false;
            }
            if self.column.as_deref().is_some_and(|c| {
                !st.masked_columns
                    .iter()
                    .any(|m| m == c || m.rsplit('.').next() == Some(c))
            }) {
                return false;
            }
            if self.decision.as_deref().is_some_and(|d| st.decision != d) {
                return false;
            }
        }
        true
    }
}

/// Every matching record, in order.
pub fn search(dir: &Path, filter: &Filter, limit: usize) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    read_records(dir, |r| {
        if filter.matches(&r) {
            out.push(r);
        }
        out.len() < limit
    })?;
    Ok(out)
}

/// CSV columns of the export: one row per record, the common fields and the statement's.
pub const CSV_HEADER: &str =
    "seq,ts,type,session,subject,role,decision,rule,tables,text,sqlstate,rows,hash_prev";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub fn csv_row(r: &Record) -> String {
    let (decision, rule, tables, text, sqlstate, rows) = match &r.event {
        Event::Statement(s) => (
            s.decision.clone(),
            s.rule.clone().unwrap_or_default(),
            s.tables.join(" "),
            s.text.clone(),
            String::new(),
            String::new(),
        ),
        Event::StatementEnd { sqlstate, rows, .. } => (
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            sqlstate.clone(),
            rows.map(|r| r.to_string()).unwrap_or_default(),
        ),
        _ => Default::default(),
    };
    [
        r.seq.to_string(),
        r.ts.clone(),
        r.kind().to_owned(),
        r.session().unwrap_or_default().to_owned(),
        r.subject().unwrap_or_default().to_owned(),
        r.role().unwrap_or_default().to_owned(),
        decision,
        rule,
        tables,
        text,
        sqlstate,
        rows,
        r.prev.clone(),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

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
    pub statements: u64,
    pub denied: u64,
    pub approvals_required: u64,
    pub approved: u64,
    pub failed_logins: u64,
    pub tables: BTreeMap<String, TableAccess>,
    pub denials: Vec<Denial>,
}

#[derive(Debug, Serialize)]
pub struct Denial {
    pub ts: String,
    pub seq: u64,
    pub rule: Option<String>,
    pub text: String,
}

#[derive(Debug, Default, Serialize)]
pub struct AccessReport {
    pub since: Option<String>,
    pub until: Option<String>,
    pub identities: Vec<IdentityReport>,
}

/// Per identity: which tables (and PHI columns) it touched, how many rows, masked or not,
/// denials and approvals.
pub fn report(
    dir: &Path,
    since: Option<&str>,
    until: Option<&str>,
) -> std::io::Result<AccessReport> {
    let mut by_subject: BTreeMap<String, IdentityReport> = BTreeMap::new();
    // (session, n) → (subject, tables) of statements awaiting their end record.
    let mut open: HashMap<(String, u64), (String, Vec<String>)> = HashMap::new();
    read_records(dir, |r| {
        if !in_range(&r.ts, since, until) {
            return true;
        }
        match &r.event {
            Event::SessionStart { subject, role, .. } => {
                let e = by_subject.entry(subject.clone()).or_default();
                e.sessions += 1;
                e.roles.insert(role.clone());
            }
            Event::Statement(st) => {
                let e = by_subject.entry(st.subject.clone()).or_default();
                e.roles.insert(st.role.clone());
                e.statements += 1;
                if st.approval.is_some() {
                    e.approved += 1;
                }
                match st.decision.as_str() {
                    "allow" => {
                        let mut rels = Vec::new();
                        for t in &st.tables {
                            let (rel, action) = t.split_once(':').unwrap_or((t, ""));
                            let ta =
                                e.tables
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
                        open.insert((st.session.clone(), st.n), (st.subject.clone(), rels));
                    }
                    d => {
                        if d == "require_approval" {
                            e.approvals_required += 1;
                        } else {
                            e.denied += 1;
                        }
                        e.denials.push(Denial {
                            ts: r.ts.clone(),
                            seq: r.seq,
                            rule: st.rule.clone(),
                            text: st.text.clone(),
                        });
                    }
                }
            }
            Event::StatementEnd {
                session, n, rows, ..
            } => {
                if let Some((subject, rels)) = open.remove(&(session.clone(), *n)) {
                    if let (Some(rows), Some(e)) = (rows, by_subject.get_mut(&subject)) {
                        for rel in rels {
                            if let Some(ta) = e.tables.get_mut(&rel) {
                                ta.rows += rows;
                            }
                        }
                    }
                }
            }
            Event::LoginFailed { user, .. } => {
                by_subject
                    .entry(format!("(failed login as {user})"))
                    .or_default()
                    .failed_logins += 1;
            }
            _ => {}
        }
        true
    })?;
    Ok(AccessReport {
        since: since.map(str::to_owned),
        until: until.map(str::to_owned),
        identities: by_subject
            .into_iter()
            .map(|(subject, mut r)| {
                r.subject = subject;
                r
            })
            .collect(),
    })
}
