//! Reading sessions back: `phigate sessions list` and `phigate replay` (and their HTTP
//! twins). A session's story comes from two places that prove each other: the audit log
//! (who, which statements — redacted as the audit keeps them —, decisions, reviews, and the
//! recording's digest) and the recording (what came back, when).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use phigate_audit::{Event, StatementRecord};
use phigate_wire::sqlstate;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::file;
use super::Ev;

/// Which sessions `sessions list` shows; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub subject: Option<String>,
    pub role: Option<String>,
    /// Sessions active at some point in [since, until) (RFC 3339 prefixes).
    pub since: Option<String>,
    pub until: Option<String>,
    /// A statement of the session touched this table (`name` or `schema.name`).
    pub table: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RecordingRef {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub events: u64,
    pub encrypted: bool,
    pub truncated: bool,
    pub complete: bool,
}

/// One line of `sessions list`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SessionRow {
    pub session: String,
    pub started: String,
    pub ended: Option<String>,
    pub subject: String,
    pub role: String,
    pub issuer: String,
    pub client_addr: String,
    pub application_name: Option<String>,
    pub statements: u64,
    pub denied: u64,
    pub held: u64,
    /// `schema.table` touched by any statement.
    pub tables: BTreeSet<String>,
    pub end_reason: Option<String>,
    pub recording: Option<RecordingRef>,
}

impl SessionRow {
    /// The row a `session_start` record opens (`None` for any other record).
    fn opened_by(r: phigate_audit::Record) -> Option<SessionRow> {
        let Event::SessionStart {
            session,
            subject,
            role,
            issuer,
            client_addr,
            application_name,
            ..
        } = r.event
        else {
            return None;
        };
        Some(SessionRow {
            session,
            started: r.ts,
            subject,
            role,
            issuer,
            client_addr,
            application_name,
            ..SessionRow::default()
        })
    }
}

impl RecordingRef {
    /// What a `recording` record says: its session, the recording, and the error when it could
    /// not be finished (`None` for any other record).
    fn sealed_by(event: Event) -> Option<(String, RecordingRef, Option<String>)> {
        let Event::Recording {
            session,
            file,
            sha256,
            bytes,
            events,
            encrypted,
            truncated,
            complete,
            error,
        } = event
        else {
            return None;
        };
        let rec = RecordingRef {
            file,
            sha256,
            bytes,
            events,
            encrypted,
            truncated,
            complete,
        };
        Some((session, rec, error))
    }
}

fn table_matches(entry: &str, want: &str) -> bool {
    let rel = entry.split(':').next().unwrap_or(entry);
    rel == want || rel.rsplit('.').next() == Some(want)
}

/// The sessions in the audit log of `audit_dir`, oldest first.
pub fn list(audit_dir: &Path, filter: &ListFilter) -> std::io::Result<Vec<SessionRow>> {
    let mut rows: BTreeMap<String, SessionRow> = BTreeMap::new();
    let mut order = Vec::new();
    phigate_audit::verify::read_records(audit_dir, |r| {
        let ts = r.ts.clone();
        match r.event {
            Event::SessionStart { .. } => {
                if let Some(row) = SessionRow::opened_by(r) {
                    order.push(row.session.clone());
                    rows.insert(row.session.clone(), row);
                }
            }
            Event::Statement(st) => {
                if let Some(row) = rows.get_mut(&st.session) {
                    row.statements += 1;
                    // A held statement has two records: the hold, then the decision.
                    match st.decision.as_str() {
                        "deny" => row.denied += 1,
                        "require_approval" if st.approval.is_none() => row.held += 1,
                        _ => {}
                    }
                    for t in &st.tables {
                        row.tables
                            .insert(t.split(':').next().unwrap_or(t).to_owned());
                    }
                }
            }
            Event::SessionEnd {
                session, reason, ..
            } => {
                if let Some(row) = rows.get_mut(&session) {
                    row.ended = Some(ts);
                    row.end_reason = Some(reason);
                }
            }
            Event::Recording { .. } => {
                if let Some((session, rec, _)) = RecordingRef::sealed_by(r.event) {
                    if let Some(row) = rows.get_mut(&session) {
                        row.recording = Some(rec);
                    }
                }
            }
            _ => {}
        }
        true
    })?;
    let mut out = Vec::new();
    for id in order {
        let Some(row) = rows.remove(&id) else {
            continue;
        };
        if filter.subject.as_deref().is_some_and(|s| s != row.subject)
            || filter.role.as_deref().is_some_and(|s| s != row.role)
            || filter
                .table
                .as_deref()
                .is_some_and(|t| !row.tables.iter().any(|e| table_matches(e, t)))
        {
            continue;
        }
        // Active in the range: started before its end, not ended before its start.
        if filter
            .until
            .as_deref()
            .is_some_and(|u| row.started.as_str() >= u)
            || filter
                .since
                .as_deref()
                .is_some_and(|s| row.ended.as_deref().is_some_and(|e| e < s))
        {
            continue;
        }
        out.push(row);
    }
    Ok(out)
}

/// What a statement step's review said.
#[derive(Debug, Clone, Serialize)]
pub struct HeldInfo {
    pub t_ms: f64,
    pub review: String,
    pub status: Option<String>,
    pub by: Option<String>,
    pub reason: Option<String>,
}

/// How the database finished a statement (its `statement_end` record).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub sqlstate: String,
    pub rows: Option<u64>,
    pub command: Option<String>,
    pub duration_us: u64,
}

/// One step: a statement the client sent and everything it received until the next one.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub t_ms: f64,
    /// The statement's number in the session (absent for what came before any statement).
    pub n: Option<u64>,
    pub statement: Option<StatementRecord>,
    pub held: Option<HeldInfo>,
    pub received: Vec<Ev>,
    pub outcome: Option<Outcome>,
}

/// The recording's integrity, as replay found it.
#[derive(Debug, Clone, Serialize)]
pub struct Integrity {
    pub file: String,
    /// The audit log holds the recording's digest (the session ended).
    pub sealed: bool,
    /// The file hashes to that digest.
    pub verified: bool,
    pub encrypted: bool,
    /// The file ends without its last chunk (a crash, or the session still runs).
    pub incomplete: bool,
    pub truncated: bool,
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub session: SessionRow,
    pub recording: Integrity,
    pub steps: Vec<Step>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no session {0} in the audit log")]
    UnknownSession(String),
    #[error("session {0} has no recording (its role records nothing, recordings were off, or the directory was full)")]
    NoRecording(String),
    #[error("the recording of session {session} was altered: its digest differs from audit record {seq}; run `phigate audit verify`")]
    Altered { session: String, seq: u64 },
    #[error("{0}")]
    Read(String),
}

/// Loads session `id`: its audit records, its recording (checked against the digest the
/// audit log holds), merged into steps.
pub fn load(
    audit_dir: &Path,
    recordings_dir: &Path,
    id: &str,
    key: Option<&file::Key>,
) -> Result<Replay, ReplayError> {
    let Story {
        row,
        mut statements,
        mut ends,
        decided,
        sealed,
    } = read_story(audit_dir, id)?;
    let mut row = row;
    let (name, raw, verified) = read_recording(recordings_dir, id, sealed.as_ref())?;
    let (lines, notes) =
        file::parse(raw, key).map_err(|e| ReplayError::Read(format!("{name}: {e}")))?;
    let mut events = Vec::new();
    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let ev: Ev = serde_json::from_slice(line)
            .map_err(|e| ReplayError::Read(format!("{name}: not a recording event: {e}")))?;
        events.push(ev);
    }
    let mut truncated = sealed.as_ref().is_some_and(|(_, r)| r.truncated);
    let (steps, mode) = merge(events, &mut statements, &mut ends, &decided, &mut truncated);
    if row.statements == 0 {
        row.statements = steps.iter().filter(|s| s.n.is_some()).count() as u64;
    }
    row.recording = sealed.map(|(_, r)| r);
    Ok(Replay {
        session: row,
        recording: Integrity {
            file: name,
            sealed: verified,
            verified,
            encrypted: notes.encrypted,
            incomplete: notes.incomplete,
            truncated,
            mode,
        },
        steps,
    })
}

/// What the audit log says of one session.
struct Story {
    row: SessionRow,
    statements: HashMap<u64, StatementRecord>,
    ends: HashMap<u64, Outcome>,
    /// Review id → (status, by, reason).
    decided: HashMap<String, (String, Option<String>, Option<String>)>,
    /// The `recording` record that sealed its file: (seq, what it says).
    sealed: Option<(u64, RecordingRef)>,
}

/// Reads session `id`'s records from the audit log.
fn read_story(audit_dir: &Path, id: &str) -> Result<Story, ReplayError> {
    let mut row: Option<SessionRow> = None;
    let mut statements: HashMap<u64, StatementRecord> = HashMap::new();
    let mut ends: HashMap<u64, Outcome> = HashMap::new();
    let mut decided: HashMap<String, (String, Option<String>, Option<String>)> = HashMap::new();
    let mut sealed: Option<(u64, RecordingRef)> = None;
    let mut failed: Option<String> = None;
    let read = phigate_audit::verify::read_records(audit_dir, |r| {
        let (seq, ts) = (r.seq, r.ts.clone());
        match r.event {
            Event::SessionStart { ref session, .. } if session == id => {
                row = SessionRow::opened_by(r);
            }
            Event::Statement(st) if st.session == id => {
                statements.insert(st.n, st);
            }
            Event::StatementEnd {
                session,
                n,
                sqlstate,
                rows,
                command,
                duration_us,
            } if session == id => {
                ends.insert(
                    n,
                    Outcome {
                        sqlstate,
                        rows,
                        command,
                        duration_us,
                    },
                );
            }
            Event::ReviewDecided {
                review,
                status,
                by,
                reason,
                break_glass,
            } => {
                let status = if break_glass {
                    format!("{status} (BREAK-GLASS)")
                } else {
                    status
                };
                decided.insert(review, (status, by, reason));
            }
            Event::Recording { ref session, .. } if session == id => {
                if let Some((_, rec, error)) = RecordingRef::sealed_by(r.event) {
                    failed = error;
                    sealed = Some((seq, rec));
                }
            }
            Event::SessionEnd {
                session,
                reason,
                statements: n,
                ..
            } if session == id => {
                if let Some(row) = &mut row {
                    row.ended = Some(ts);
                    row.end_reason = Some(reason);
                    row.statements = n;
                }
            }
            _ => {}
        }
        true
    });
    read.map_err(|e| ReplayError::Read(e.to_string()))?;
    let row = row.ok_or_else(|| ReplayError::UnknownSession(id.to_owned()))?;
    if let Some(e) = failed {
        return Err(ReplayError::Read(format!(
            "the recording of session {id} could not be finished: {e}"
        )));
    }
    Ok(Story {
        row,
        statements,
        ends,
        decided,
        sealed,
    })
}

/// The recording's file name, its bytes, and whether they match the digest the audit log
/// sealed. The file: the one the audit log sealed, else one still being written (or cut short).
fn read_recording(
    recordings_dir: &Path,
    id: &str,
    sealed: Option<&(u64, RecordingRef)>,
) -> Result<(String, Vec<u8>, bool), ReplayError> {
    let (path, name) = match sealed {
        Some((_, r)) if is_plain_name(&r.file) => (recordings_dir.join(&r.file), r.file.clone()),
        Some((seq, _)) => {
            return Err(ReplayError::Altered {
                session: id.to_owned(),
                seq: *seq,
            })
        }
        None => {
            let found = ["jsonl.gz", "jsonl.gz.enc"].iter().find_map(|ext| {
                let name = format!("{id}.{ext}.part");
                let p = recordings_dir.join(&name);
                p.exists().then_some((p, name))
            });
            found.ok_or_else(|| ReplayError::NoRecording(id.to_owned()))?
        }
    };
    // One read: the bytes whose digest is checked are the bytes shown.
    let raw = std::fs::read(&path).map_err(|e| ReplayError::Read(format!("{name}: {e}")))?;
    let mut verified = false;
    if let Some((seq, r)) = sealed {
        if hex::encode(Sha256::digest(&raw)) != r.sha256 {
            return Err(ReplayError::Altered {
                session: id.to_owned(),
                seq: *seq,
            });
        }
        verified = true;
    }
    Ok((name, raw, verified))
}

/// Merges the recording's events with the audit's statements, outcomes and review decisions
/// into steps; returns them and the recording's mode. Sets `truncated` when events were left
/// out.
fn merge(
    events: Vec<Ev>,
    statements: &mut HashMap<u64, StatementRecord>,
    ends: &mut HashMap<u64, Outcome>,
    decided: &HashMap<String, (String, Option<String>, Option<String>)>,
    truncated: &mut bool,
) -> (Vec<Step>, Option<String>) {
    let mut mode = None;
    let mut steps: Vec<Step> = Vec::new();
    for ev in events {
        match ev {
            Ev::Start { mode: m, .. } => mode = Some(m),
            // The statement just sent waits for a reviewer; its decision comes back as the
            // next statement (the same text, with the review as its approval).
            Ev::Held { t, review } => {
                let d = decided.get(&review).cloned();
                let info = HeldInfo {
                    t_ms: ms(t),
                    review,
                    status: d.as_ref().map(|d| d.0.clone()),
                    by: d.as_ref().and_then(|d| d.1.clone()),
                    reason: d.and_then(|d| d.2),
                };
                if let Some(last) = steps.last_mut() {
                    last.held = Some(info);
                }
            }
            Ev::Statement { t, n } => {
                steps.push(Step {
                    t_ms: ms(t),
                    n: Some(n),
                    statement: statements.remove(&n),
                    held: None,
                    received: Vec::new(),
                    outcome: ends.remove(&n),
                });
            }
            Ev::End { t, reason } => steps.push(Step {
                t_ms: ms(t),
                n: None,
                statement: None,
                held: None,
                received: vec![Ev::End { t, reason }],
                outcome: None,
            }),
            ev => {
                if matches!(ev, Ev::Truncated { .. } | Ev::Gap { .. }) {
                    *truncated = true;
                }
                if steps.is_empty() {
                    steps.push(Step {
                        t_ms: 0.0,
                        n: None,
                        statement: None,
                        held: None,
                        received: Vec::new(),
                        outcome: None,
                    });
                }
                if let Some(last) = steps.last_mut() {
                    last.received.push(ev);
                }
            }
        }
    }
    (steps, mode)
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != ".."
}

fn ms(t: u64) -> f64 {
    t as f64 / 1000.0
}

/// The session's header, as `phigate replay` prints it first.
pub fn render_header(r: &Replay, out: &mut impl Write) -> std::io::Result<()> {
    let s = &r.session;
    line(
        out,
        &format!(
            "session {}  {} as role {} ({}), from {}{}",
            s.session,
            s.subject,
            s.role,
            s.issuer,
            s.client_addr,
            s.application_name
                .as_deref()
                .map(|a| format!(", {a}"))
                .unwrap_or_default()
        ),
    )?;
    line(
        out,
        &format!(
            "started {}; {}",
            s.started,
            match (&s.ended, &s.end_reason) {
                (Some(at), Some(why)) => format!("ended {at}: {why}"),
                _ => "not ended (still running, or the gateway stopped without ending it)".into(),
            }
        ),
    )?;
    let rec = &r.recording;
    let proof = if rec.verified {
        "digest matches the audit log"
    } else {
        "NOT sealed in the audit log yet"
    };
    line(
        out,
        &format!(
            "recording {}: {proof}; results {}{}{}{}",
            rec.file,
            match rec.mode.as_deref() {
                Some("rows") => "as received (rows capped per result)",
                _ => "by shape only (columns, row counts, error codes)",
            },
            if rec.encrypted {
                "; encrypted at rest"
            } else {
                ""
            },
            if rec.incomplete { "; INCOMPLETE" } else { "" },
            if rec.truncated {
                "; some events left out (caps)"
            } else {
                ""
            },
        ),
    )?;
    writeln!(out)
}

/// One step, as the terminal shows it.
pub fn render_step(step: &Step, out: &mut impl Write) -> std::io::Result<()> {
    let t = step.t_ms / 1000.0;
    let clock = format!("[{:02}:{:06.3}]", (t / 60.0) as u64, t % 60.0);
    match (&step.n, &step.statement) {
        (Some(n), Some(st)) => {
            line(out, &format!("{clock} #{n} → {}", one_line(&st.text)))?;
            if !st.literals.is_empty() || !st.params.is_empty() {
                let lits: Vec<_> = st.literals.iter().map(String::as_str).collect();
                let params: Vec<_> = st
                    .params
                    .iter()
                    .map(|p| p.as_deref().unwrap_or("NULL"))
                    .collect();
                line(
                    out,
                    &format!(
                        "            values: {}",
                        lits.iter()
                            .chain(params.iter())
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )?;
            }
            let rule = st.rule.as_deref().unwrap_or("policy");
            let mut verdict = match (st.decision.as_str(), &st.approval) {
                ("allow", Some(review)) => format!("ran: review {review} approved it"),
                ("allow", None) => "allowed".to_owned(),
                ("deny", _) => format!("DENIED by rule {rule}"),
                ("require_approval", Some(review)) => {
                    format!("did not run: review {review} did not approve it (rule {rule})")
                }
                ("require_approval", None) => format!("needs approval (rule {rule})"),
                (d, _) => format!("{d} (rule {rule})"),
            };
            if let Some(h) = &step.held {
                verdict.push_str(&format!(
                    "; HELD for review {} → {}{}{}",
                    h.review,
                    h.status.as_deref().unwrap_or("undecided"),
                    h.by.as_deref()
                        .map(|b| format!(" by {b}"))
                        .unwrap_or_default(),
                    h.reason
                        .as_deref()
                        .map(|r| format!(": {}", one_line(r)))
                        .unwrap_or_default()
                ));
            }
            if !st.masked_columns.is_empty() {
                verdict.push_str(&format!("; masked: {}", masked_summary(&st.masked_columns)));
            }
            line(out, &format!("            {verdict}"))?;
        }
        (Some(n), None) => line(out, &format!("{clock} #{n} → (no audit record)"))?,
        (None, _) if matches!(step.received.first(), Some(Ev::End { .. })) => {
            write!(out, "{} ", clean(&clock))?
        }
        (None, _) => line(out, &format!("{clock} before any statement"))?,
    }
    for ev in &step.received {
        match ev {
            Ev::Columns { names, .. } => {
                line(out, &format!("            ┌ {}", names.join(" | ")))?
            }
            Ev::Row { values, .. } => {
                let cells: Vec<_> = values
                    .iter()
                    .map(|v| v.as_deref().map_or("NULL".to_owned(), one_line))
                    .collect();
                line(out, &format!("            │ {}", cells.join(" | ")))?
            }
            Ev::CopyData { data, .. } => {
                line(out, &format!("            │ {}", one_line(data.trim_end())))?
            }
            Ev::Complete { tag, rows_kept, .. } => {
                let shown = tag
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|n| n > rows_kept && *rows_kept > 0)
                    .map(|n| format!("  ({rows_kept} of {n} rows recorded)"))
                    .unwrap_or_default();
                line(out, &format!("            └ {tag}{shown}"))?
            }
            Ev::Suspended { .. } => line(out, "            └ (portal suspended)")?,
            Ev::Empty { .. } => line(out, "            └ (empty query)")?,
            Ev::Error(m) | Ev::Notice(m) => {
                let text = m.message.as_deref().unwrap_or("(message not recorded)");
                line(
                    out,
                    &format!("            ! {} {} {}", m.severity, m.code, one_line(text)),
                )?;
                if let Some(d) = &m.detail {
                    line(out, &format!("              DETAIL: {}", one_line(d)))?;
                }
                if let Some(h) = &m.hint {
                    line(out, &format!("              HINT: {}", one_line(h)))?;
                }
            }
            Ev::Gap { events, .. } => line(
                out,
                &format!("            … {events} events not recorded (writer behind)"),
            )?,
            Ev::Truncated { why, .. } => {
                line(out, &format!("            … recording stops: {why}"))?
            }
            Ev::End { reason, .. } => line(out, &format!("session ended: {}", one_line(reason)))?,
            Ev::Ready { .. } | Ev::Start { .. } | Ev::Statement { .. } | Ev::Held { .. } => {}
        }
    }
    if let Some(o) = &step.outcome {
        if o.sqlstate != sqlstate::SUCCESSFUL_COMPLETION || o.duration_us > 0 {
            line(
                out,
                &format!(
                    "            ({:.1} ms{})",
                    o.duration_us as f64 / 1000.0,
                    if o.sqlstate == sqlstate::SUCCESSFUL_COMPLETION {
                        String::new()
                    } else {
                        format!(", SQLSTATE {}", o.sqlstate)
                    }
                ),
            )?;
        }
    }
    Ok(())
}

/// Writes one line of the terminal replay: control and format characters (escape sequences,
/// bidirectional overrides) from recorded data cannot reach the terminal.
fn line(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    writeln!(out, "{}", clean(text))
}

/// `text` with every control or invisible format character shown as `\u{..}`.
pub fn clean(text: &str) -> String {
    crate::text::display(text).into_owned()
}

/// `public.patients.ssn, public.patients.zip` → `public.patients (ssn, zip)`.
fn masked_summary(columns: &[String]) -> String {
    let mut by_table: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in columns {
        let (table, col) = c.rsplit_once('.').unwrap_or(("", c));
        by_table.entry(table).or_default().push(col);
    }
    by_table
        .iter()
        .map(|(t, cols)| format!("{t} ({})", cols.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn one_line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 200 {
        let cut: String = flat.chars().take(200).collect();
        format!("{cut}…")
    } else {
        flat
    }
}
