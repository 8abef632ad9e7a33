//! `phigate audit`: verify the log, search it, export it, report on it.

use crate::text::{self, display};
use std::path::PathBuf;

use clap::Subcommand;

use super::{plural, time_bound, AuditDir};

/// A statement record's decision.
#[derive(Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum DecisionArg {
    Allow,
    Deny,
    RequireApproval,
}

/// A record type (docs/audit.md).
#[derive(Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum RecordType {
    GatewayStart,
    GatewayStop,
    SessionStart,
    SessionEnd,
    Statement,
    StatementEnd,
    LoginFailed,
    ConfigReload,
    ReviewRequested,
    ReviewNotified,
    ReviewApproval,
    ReviewDecided,
    Recording,
    RecordingReplayed,
    AuditRecovered,
    AuditRepaired,
    AuditUnsynced,
    ConsoleSignin,
    ConsoleSignout,
}

fn value_name(v: impl clap::ValueEnum) -> Option<String> {
    v.to_possible_value().map(|p| p.get_name().to_owned())
}

/// Search criteria shared by search and export.
#[derive(clap::Args)]
pub struct AuditFilter {
    /// Records naming this individual in any role (who ran it, asked for the review,
    /// approved or denied it, replayed the recording, whose credential failed), and the
    /// records of its sessions and reviews.
    #[arg(long)]
    subject: Option<String>,
    /// Records of this role.
    #[arg(long)]
    role: Option<String>,
    /// Statements touching a table, `name` or `schema.name`.
    #[arg(long)]
    table: Option<String>,
    /// Statements reading a PHI column, masked or in the clear (`column`, `table.column` or
    /// `schema.table.column`).
    #[arg(long)]
    column: Option<String>,
    /// From this time: RFC 3339, a date (2026-11-29), or an age such as 24h or 7d.
    #[arg(long)]
    since: Option<String>,
    /// Until this time (same forms).
    #[arg(long)]
    until: Option<String>,
    /// Statements with this decision.
    #[arg(long, value_enum)]
    decision: Option<DecisionArg>,
    /// Records of this session.
    #[arg(long)]
    session: Option<String>,
    /// Records of this type.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    kind: Option<RecordType>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Prove the log whole: exits non-zero and names the first bad record on modification,
    /// deletion, reordering or truncation.
    Verify {
        #[command(flatten)]
        dir: AuditDir,
        /// The trusted public key file; default: the one beside the log.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// A directory holding a copy of the checkpoints (repeatable).
        #[arg(long)]
        mirror: Vec<PathBuf>,
        /// Where the session recordings are (default: the data directory's recordings/, when
        /// it exists); each one the log seals is hashed again.
        #[arg(long)]
        recordings_dir: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Records matching the criteria, one JSON object per line.
    Search {
        #[command(flatten)]
        dir: AuditDir,
        #[command(flatten)]
        filter: AuditFilter,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Every matching record as JSON lines or CSV.
    Export {
        #[command(flatten)]
        dir: AuditDir,
        #[command(flatten)]
        filter: AuditFilter,
        /// `jsonl` (one record per line, as stored) or `csv` (a column per field).
        #[arg(long, value_parser = ["jsonl", "csv"], default_value = "jsonl")]
        format: String,
    },
    /// An access report for a compliance officer: per identity, the tables it touched, rows,
    /// masked or not, refusals and holds, reviews decided; the approvals; failed logins.
    Report {
        #[command(flatten)]
        dir: AuditDir,
        /// From this time: RFC 3339, a date (2026-11-29), or an age such as 24h or 7d.
        #[arg(long)]
        since: Option<String>,
        /// Until this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl AuditFilter {
    fn build(&self) -> anyhow::Result<phigate_audit::query::Filter> {
        Ok(phigate_audit::query::Filter {
            subject: self.subject.clone(),
            role: self.role.clone(),
            table: self.table.clone(),
            column: self.column.clone(),
            since: time_bound(&self.since)?,
            until: time_bound(&self.until)?,
            decision: self.decision.and_then(value_name),
            session: self.session.clone(),
            kind: self.kind.and_then(value_name),
        })
    }
}

pub fn run(command: AuditCommand) -> anyhow::Result<()> {
    use phigate_audit::query;
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match command {
        AuditCommand::Verify {
            dir,
            public_key,
            mirror,
            recordings_dir,
            json,
        } => {
            let places = dir.places()?;
            let recordings = recordings_dir.or_else(|| places.recordings.filter(|d| d.is_dir()));
            let dir = places.log;
            let key_path = public_key.unwrap_or_else(|| dir.join(phigate_audit::store::PUBLIC_KEY));
            let key = phigate_audit::PublicKey::load(&key_path)?;
            for m in &mirror {
                let copy =
                    phigate_audit::PublicKey::load(&m.join(phigate_audit::store::PUBLIC_KEY))?;
                if copy != key {
                    anyhow::bail!("{}: the mirror names another signing key", m.display());
                }
            }
            let nodes = cluster_nodes(&dir);
            let mut reports = Vec::new();
            let checked = std::iter::once((None, dir.clone(), Some(key), mirror, recordings))
                .chain(nodes.into_iter().map(|(id, data)| {
                    let log = data.join("audit");
                    let rec = Some(data.join("recordings")).filter(|d| d.is_dir());
                    (Some(id), log, None, Vec::new(), rec)
                }));
            for (node, log, key, mirror, recordings) in checked {
                if !log.is_dir() {
                    // A node's log gone is a log not intact.
                    anyhow::bail!(
                        "node {}: audit log NOT intact: no log at {}",
                        text::display(node.as_deref().unwrap_or_default()),
                        log.display()
                    );
                }
                let key = match key {
                    Some(k) => k,
                    None => {
                        phigate_audit::PublicKey::load(&log.join(phigate_audit::store::PUBLIC_KEY))?
                    }
                };
                let name = node
                    .as_deref()
                    .map(|n| format!("node {n}: "))
                    .unwrap_or_default();
                match phigate_audit::verify::verify(&log, &key, &mirror, recordings.as_deref()) {
                    Ok(report) => {
                        if !json {
                            print_verified(&mut out, &name, &report, recordings.is_some())?;
                        }
                        reports.push((node, report));
                    }
                    Err(f) => {
                        if json {
                            writeln!(
                                out,
                                "{}",
                                serde_json::json!({"ok": false, "node": node, "failure": f})
                            )?;
                            out.flush()?;
                        }
                        let place = match (&f.file, f.line) {
                            (Some(file), Some(line)) => format!(" ({file}, line {line})"),
                            (Some(file), None) => format!(" ({file})"),
                            _ => String::new(),
                        };
                        anyhow::bail!("{name}audit log NOT intact: {}{place}", f.what);
                    }
                }
            }
            if json {
                let mut reports = reports.into_iter();
                let first = reports.next().map(|(_, r)| r);
                let mut doc = serde_json::json!({"ok": true, "report": first});
                let nodes: Vec<_> = reports
                    .map(|(n, r)| serde_json::json!({"node_id": n, "report": r}))
                    .collect();
                if !nodes.is_empty() {
                    doc["nodes"] = serde_json::Value::Array(nodes);
                }
                writeln!(out, "{doc}")?;
            }
        }
        AuditCommand::Search { dir, filter, limit } => {
            let dir = dir.places()?.log;
            for r in query::search(&dir, &filter.build()?, limit)? {
                writeln!(out, "{}", text::json(serde_json::to_string(&r)?))?;
            }
        }
        AuditCommand::Export {
            dir,
            filter,
            format,
        } => {
            let dir = dir.places()?.log;
            let filter = filter.build()?;
            let mut matcher = filter.matcher();
            if format == "csv" {
                writeln!(out, "{}", query::CSV_HEADER)?;
            }
            let mut failed = None;
            phigate_audit::verify::read_records(&dir, |r| {
                if matcher.matches(&r) {
                    let line = if format == "csv" {
                        Ok(display(&query::csv_row(&r)).into_owned())
                    } else {
                        serde_json::to_string(&r).map(text::json)
                    };
                    let written = line
                        .map_err(std::io::Error::other)
                        .and_then(|l| writeln!(out, "{l}"));
                    if let Err(e) = written {
                        failed = Some(e);
                        return false;
                    }
                }
                true
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        AuditCommand::Report {
            dir,
            since,
            until,
            json,
        } => {
            let dir = dir.places()?.log;
            let report = query::report(
                &dir,
                time_bound(&since)?.as_deref(),
                time_bound(&until)?.as_deref(),
            )?;
            if json {
                writeln!(
                    out,
                    "{}",
                    text::json(serde_json::to_string_pretty(&report)?)
                )?;
            } else {
                super::audit_report::write(&mut out, &report)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The other nodes of a demo cluster whose first node's log is `log`
/// (`<data_dir>/nodes/<node_id>/data`), by node id: every directory there, so that a node
/// whose log is missing fails the verification.
fn cluster_nodes(log: &std::path::Path) -> Vec<(String, PathBuf)> {
    let Some(root) = log.parent().filter(|_| log.ends_with("audit")) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(root.join("nodes")) else {
        return Vec::new();
    };
    let mut nodes: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path().join("data"),
            )
        })
        .collect();
    nodes.sort();
    nodes
}

/// What `audit verify` prints for one intact log (`name`: which node's, in a cluster).
fn print_verified(
    out: &mut impl std::io::Write,
    name: &str,
    report: &phigate_audit::verify::Report,
    recordings: bool,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "{name}ok: {} (seq {}..{}) in {}; {} signed by key {}; last checkpoint at {}, {} after it",
        plural(report.records, "record", "records"),
        report.first_seq,
        report.last_seq,
        plural(report.segments as u64, "segment", "segments"),
        plural(report.checkpoints as u64, "checkpoint", "checkpoints"),
        report.key_id,
        report.last_checkpoint_seq,
        plural(report.unsigned_tail, "record", "records")
    )?;
    if recordings {
        writeln!(
            out,
            "{name}ok: {} {} their digests",
            plural(report.recordings, "session recording", "session recordings"),
            if report.recordings == 1 {
                "matches"
            } else {
                "match"
            }
        )?;
    }
    for w in &report.warnings {
        writeln!(out, "{name}warning: {w}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    #[test]
    fn the_choices_are_the_logs_own() {
        let names = |v: &[super::RecordType]| -> Vec<String> {
            v.iter().filter_map(|x| super::value_name(*x)).collect()
        };
        assert_eq!(
            names(super::RecordType::value_variants()),
            phigate_audit::record::TYPES
        );
        let decisions: Vec<String> = super::DecisionArg::value_variants()
            .iter()
            .filter_map(|x| super::value_name(*x))
            .collect();
        assert_eq!(decisions, phigate_audit::record::DECISIONS);
    }
}
