//! `phigate audit`: verify the log, search it, export it, report on it.

use crate::text::{self, display};
use std::path::PathBuf;

use clap::Subcommand;

use super::{audit_dir, time_bound, AuditDir};

/// Search criteria shared by search, export and report.
#[derive(clap::Args)]
pub struct AuditFilter {
    #[arg(long)]
    subject: Option<String>,
    #[arg(long)]
    role: Option<String>,
    /// A table, `name` or `schema.name`.
    #[arg(long)]
    table: Option<String>,
    /// A (masked) PHI column.
    #[arg(long)]
    column: Option<String>,
    /// From this time: RFC 3339, a date (2026-11-29), or an age such as 24h or 7d.
    #[arg(long)]
    since: Option<String>,
    /// Until this time (same forms).
    #[arg(long)]
    until: Option<String>,
    /// allow, deny or require_approval.
    #[arg(long)]
    decision: Option<String>,
    #[arg(long)]
    session: Option<String>,
    /// Record type: statement, statement_end, session_start, login_failed, ...
    #[arg(long = "type")]
    kind: Option<String>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Prove the log whole: exits non-zero and names the first bad record on modification,
    /// deletion, reordering or truncation.
    Verify {
        #[command(flatten)]
        dir: AuditDir,
        /// The trusted public key (hex); default: the one beside the log.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// A directory holding a copy of the checkpoints (repeatable).
        #[arg(long)]
        mirror: Vec<PathBuf>,
        /// Where the session recordings are (default: the data directory's recordings/, when
        /// it exists); each one the log seals is hashed again.
        #[arg(long)]
        recordings_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Records matching the criteria, one JSON object per line.
    Search {
        #[command(flatten)]
        dir: AuditDir,
        #[command(flatten)]
        filter: AuditFilter,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Every matching record as JSON lines or CSV.
    Export {
        #[command(flatten)]
        dir: AuditDir,
        #[command(flatten)]
        filter: AuditFilter,
        #[arg(long, value_parser = ["jsonl", "csv"], default_value = "jsonl")]
        format: String,
    },
    /// An access report for a compliance officer: per identity, the tables it touched, rows,
    /// masked or not, denials and approvals.
    Report {
        #[command(flatten)]
        dir: AuditDir,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
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
            decision: self.decision.clone(),
            session: self.session.clone(),
            kind: self.kind.clone(),
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
            let recordings = recordings_dir.or_else(|| {
                let d = dir.data_dir.join("recordings");
                d.is_dir().then_some(d)
            });
            let dir = audit_dir(&dir)?;
            let key_path = public_key.unwrap_or_else(|| dir.join(phigate_audit::store::PUBLIC_KEY));
            let key = phigate_audit::PublicKey::load(&key_path)?;
            for m in &mirror {
                let copy =
                    phigate_audit::PublicKey::load(&m.join(phigate_audit::store::PUBLIC_KEY))?;
                if copy != key {
                    anyhow::bail!("{}: the mirror names another signing key", m.display());
                }
            }
            match phigate_audit::verify::verify(&dir, &key, &mirror, recordings.as_deref()) {
                Ok(report) => {
                    if json {
                        writeln!(out, "{}", serde_json::json!({"ok": true, "report": report}))?;
                    } else {
                        writeln!(
                            out,
                            "ok: {} records (seq {}..{}) in {} segment(s); {} checkpoint(s) signed by key {}; last checkpoint at {}, {} record(s) after it",
                            report.records,
                            report.first_seq,
                            report.last_seq,
                            report.segments,
                            report.checkpoints,
                            report.key_id,
                            report.last_checkpoint_seq,
                            report.unsigned_tail
                        )?;
                        if recordings.is_some() {
                            writeln!(
                                out,
                                "ok: {} session recording(s) match their digests",
                                report.recordings
                            )?;
                        }
                        for w in &report.warnings {
                            writeln!(out, "warning: {w}")?;
                        }
                    }
                }
                Err(f) => {
                    if json {
                        writeln!(out, "{}", serde_json::json!({"ok": false, "failure": f}))?;
                        out.flush()?;
                    }
                    let place = match (&f.file, f.line) {
                        (Some(file), Some(line)) => format!(" ({file}, line {line})"),
                        (Some(file), None) => format!(" ({file})"),
                        _ => String::new(),
                    };
                    anyhow::bail!("audit log NOT intact: {}{place}", f.what);
                }
            }
        }
        AuditCommand::Search { dir, filter, limit } => {
            let dir = audit_dir(&dir)?;
            for r in query::search(&dir, &filter.build()?, limit)? {
                writeln!(out, "{}", text::json(serde_json::to_string(&r)?))?;
            }
        }
        AuditCommand::Export {
            dir,
            filter,
            format,
        } => {
            let dir = audit_dir(&dir)?;
            let filter = filter.build()?;
            if format == "csv" {
                writeln!(out, "{}", query::CSV_HEADER)?;
            }
            let mut failed = None;
            phigate_audit::verify::read_records(&dir, |r| {
                if filter.matches(&r) {
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
            let dir = audit_dir(&dir)?;
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
                write_report(&mut out, &report)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn write_report(
    out: &mut impl std::io::Write,
    r: &phigate_audit::query::AccessReport,
) -> std::io::Result<()> {
    writeln!(
        out,
        "Access report, {} to {}",
        display(r.since.as_deref().unwrap_or("the beginning")),
        display(r.until.as_deref().unwrap_or("now"))
    )?;
    for id in &r.identities {
        writeln!(out)?;
        writeln!(
            out,
            "{}  roles: {}  sessions: {}  statements: {}  denied: {}  held for approval: {}  approved: {}  failed logins: {}",
            display(&id.subject),
            display(&id.roles.iter().cloned().collect::<Vec<_>>().join(",")),
            id.sessions,
            id.statements,
            id.denied,
            id.approvals_required,
            id.approved,
            id.failed_logins
        )?;
        for (table, t) in &id.tables {
            let masked = if t.masked {
                format!(
                    "masked ({})",
                    display(
                        &t.masked_columns
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                )
            } else {
                "NOT masked".to_owned()
            };
            writeln!(
                out,
                "  {:<32} {:>6} statements {:>10} rows  {}  {}",
                display(table),
                t.statements,
                t.rows,
                t.actions.iter().cloned().collect::<Vec<_>>().join("/"),
                masked
            )?;
        }
        for d in &id.denials {
            writeln!(
                out,
                "  refused #{} {} by rule {}: {}",
                d.seq,
                display(&d.ts),
                display(d.rule.as_deref().unwrap_or("?")),
                display(&d.text)
            )?;
        }
    }
    Ok(())
}
