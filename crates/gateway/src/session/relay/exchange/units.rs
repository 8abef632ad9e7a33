//! The audit's view of the exchange: statements on their way, their completion records, and
//! what a CommandComplete says.

use phigate_wire::Frame;

/// One statement of the audit log on its way through the database.
#[derive(Debug)]
pub struct Unit {
    /// The statement's number in the session.
    pub n: u64,
    pub started: std::time::Instant,
}

/// A statement the database has answered (or skipped): its `statement_end` record.
#[derive(Debug, PartialEq, Eq)]
pub struct Finished {
    pub n: u64,
    pub sqlstate: String,
    pub rows: Option<u64>,
    pub command: Option<String>,
    pub duration_us: u64,
}

/// A CommandComplete's tag without its counts, and its row count: `SELECT 5` → ("SELECT",
/// Some(5)); `INSERT 0 3` → ("INSERT", Some(3)); `DISCARD ALL` → ("DISCARD ALL", None).
pub fn command_tag(frame: &Frame) -> Option<(String, Option<u64>)> {
    let body = frame.body();
    let text = std::str::from_utf8(body.strip_suffix(&[0]).unwrap_or(body)).ok()?;
    let command = text.trim_end_matches(|c: char| c.is_ascii_digit() || c == ' ');
    let rows = text.rsplit(' ').next().and_then(|n| n.parse().ok());
    Some((command.to_owned(), rows))
}

/// The command of a tag, as the audit log names it (`CREATE TABLE` → `CREATE`).
pub(super) fn first_word(command: &str) -> String {
    command.split(' ').next().unwrap_or_default().to_owned()
}

impl super::Exchange {
    /// A statement finished without an answer of its own (consumed by a COPY, skipped after
    /// an error, a review that ended): its `statement_end` now.
    pub fn finish_now(&mut self, unit: Option<Unit>, sqlstate: &str) {
        if let Some(u) = unit {
            self.finished.push(Finished {
                n: u.n,
                sqlstate: sqlstate.to_owned(),
                rows: Some(0),
                command: None,
                duration_us: u.started.elapsed().as_micros() as u64,
            });
        }
    }
}
