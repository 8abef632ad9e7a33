//! Search over the records as stored (the export and the access report, re-exported here, live
//! in their own modules).

use std::collections::HashSet;
use std::path::Path;

use crate::record::{Event, Record};
use crate::verify::read_records;

pub use crate::export::{csv_row, CSV_COLUMNS, CSV_HEADER};
pub use crate::report::{
    report, AccessReport, ApprovalEntry, Denial, FailedLogin, IdentityReport, TableAccess,
};

/// Search criteria; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// An individual named in any role: who ran it, asked for the review, approved or denied
    /// it, replayed the recording, or whose credential failed.
    pub subject: Option<String>,
    pub role: Option<String>,
    /// `table` or `schema.table`.
    pub table: Option<String>,
    /// A PHI column (`column`, `table.column` or `schema.table.column`), masked or not.
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
pub(crate) fn in_range(ts: &str, since: Option<&str>, until: Option<&str>) -> bool {
    since.is_none_or(|s| ts >= s) && until.is_none_or(|u| ts < u)
}

impl Filter {
    /// Whether `r` matches on its own (a subject's `statement_end` and the end of its denied
    /// review name no subject: [`Matcher`] finds them too).
    pub fn matches(&self, r: &Record) -> bool {
        self.subject.as_deref().is_none_or(|s| r.names(s)) && self.matches_besides_subject(r)
    }

    fn matches_besides_subject(&self, r: &Record) -> bool {
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
                    .chain(&st.unmasked_columns)
                    .any(|m| column_matches(m, c))
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

/// `schema.table.column` against `column`, `table.column` or the whole name.
fn column_matches(full: &str, want: &str) -> bool {
    full == want || full.ends_with(&format!(".{want}"))
}

/// A filter that follows the log in order, so that a subject's search also finds the records
/// that belong to its sessions and reviews without naming it (`statement_end`, `recording`,
/// `review_decided` of a denied or expired review, `review_notified`).
///
/// Bound: one entry per session and per review of the searched subject among the records
/// read (none without `--subject`).
pub struct Matcher<'a> {
    filter: &'a Filter,
    sessions: HashSet<String>,
    reviews: HashSet<String>,
}

impl Filter {
    pub fn matcher(&self) -> Matcher<'_> {
        Matcher {
            filter: self,
            sessions: HashSet::new(),
            reviews: HashSet::new(),
        }
    }
}

impl Matcher<'_> {
    /// Whether `r` matches; call it for every record, in log order.
    pub fn matches(&mut self, r: &Record) -> bool {
        let Some(who) = self.filter.subject.as_deref() else {
            return self.filter.matches(r);
        };
        // Remember what belongs to the subject whatever the other criteria say, so a session
        // begun before `--since` still counts.
        match &r.event {
            Event::SessionStart {
                session, subject, ..
            } if subject == who => {
                self.sessions.insert(session.clone());
            }
            Event::ReviewRequested {
                review, subject, ..
            } if subject == who => {
                self.reviews.insert(review.clone());
            }
            _ => {}
        }
        let belongs = r.names(who)
            || r.session().is_some_and(|s| self.sessions.contains(s))
            || r.review().is_some_and(|v| self.reviews.contains(v));
        belongs && self.filter.matches_besides_subject(r)
    }
}

/// Every matching record, in order.
pub fn search(dir: &Path, filter: &Filter, limit: usize) -> std::io::Result<Vec<Record>> {
    search_after(dir, filter, 0, limit)
}

/// The matching records after sequence number `after`, in order: keyset pagination (the next
/// page starts after the last `seq` of this one, however the log grows meanwhile). Records
/// before it still go through the matcher, which follows a subject's sessions and reviews.
pub fn search_after(
    dir: &Path,
    filter: &Filter,
    after: u64,
    limit: usize,
) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut matcher = filter.matcher();
    read_records(dir, |r| {
        if matcher.matches(&r) && r.seq > after {
            out.push(r);
        }
        out.len() < limit
    })?;
    Ok(out)
}

/// The last `n` matching records, in order (a session's latest statements): every record is
/// read, only `n` are kept.
pub fn last(dir: &Path, filter: &Filter, n: usize) -> std::io::Result<Vec<Record>> {
    let mut out = std::collections::VecDeque::with_capacity(n + 1);
    let mut matcher = filter.matcher();
    read_records(dir, |r| {
        if matcher.matches(&r) {
            out.push_back(r);
            if out.len() > n {
                out.pop_front();
            }
        }
        true
    })?;
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Event;

    fn log_of(n: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = Vec::new();
        for seq in 1..=n {
            let r = Record {
                seq,
                ts: format!("2026-01-01T00:00:{seq:02}.000000Z"),
                prev: "0".repeat(64),
                event: Event::GatewayStop {
                    reason: format!("stop {seq}"),
                },
            };
            crate::chain::encode(&r, &mut out).expect("encodes");
        }
        std::fs::write(dir.path().join("audit-00000000000000000001.jsonl"), out).expect("write");
        dir
    }

    #[test]
    fn keyset_pages_follow_one_another_without_gaps_or_repeats() {
        let dir = log_of(7);
        let filter = Filter::default();
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = search_after(dir.path(), &filter, after, 3).expect("reads");
            let Some(last) = page.last() else { break };
            after = last.seq;
            seen.extend(page.iter().map(|r| r.seq));
        }
        assert_eq!(seen, (1..=7).collect::<Vec<_>>());
        assert_eq!(search(dir.path(), &filter, 2).expect("reads").len(), 2);
    }

    #[test]
    fn the_last_records_are_the_newest_however_long_the_log() {
        let dir = log_of(50);
        let seqs: Vec<u64> = last(dir.path(), &Filter::default(), 5)
            .expect("reads")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![46, 47, 48, 49, 50]);
    }
}
