//! `phigate sessions list`: recorded sessions from the audit log.

use clap::Subcommand;

use super::{time_bound, AuditDir};

#[derive(Subcommand)]
pub enum SessionsCommand {
    /// Sessions in the audit log, oldest first, with their recordings.
    List {
        #[command(flatten)]
        dir: AuditDir,
        /// Sessions of this individual.
        #[arg(long)]
        subject: Option<String>,
        /// Sessions of this role.
        #[arg(long)]
        role: Option<String>,
        /// Sessions active from this time: RFC 3339, a date, or an age such as 24h.
        #[arg(long)]
        since: Option<String>,
        /// ... until this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// Sessions with a statement that touched this table (`name` or `schema.name`).
        #[arg(long)]
        table: Option<String>,
        /// Print the sessions as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: SessionsCommand) -> anyhow::Result<()> {
    use std::io::Write;
    let SessionsCommand::List {
        dir,
        subject,
        role,
        since,
        until,
        table,
        json,
    } = command;
    let filter = crate::recording::replay::ListFilter {
        subject,
        role,
        since: time_bound(&since)?,
        until: time_bound(&until)?,
        table,
    };
    let rows = crate::recording::replay::list(&dir.places()?.log, &filter)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        writeln!(
            out,
            "{}",
            crate::text::json(serde_json::to_string_pretty(&rows)?)
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<18} {:<27} {:<28} {:<12} {:>5} {:>6}  {:<10} TABLES",
        "SESSION", "STARTED", "SUBJECT", "ROLE", "STMTS", "DENIED", "RECORDING"
    )?;
    use crate::recording::replay::clean;
    for r in &rows {
        let rec = match &r.recording {
            Some(x) if x.encrypted => format!("{}B enc", x.bytes),
            Some(x) => format!("{}B", x.bytes),
            None if r.ended.is_none() => "open".into(),
            None => "-".into(),
        };
        writeln!(
            out,
            "{:<18} {:<27} {:<28} {:<12} {:>5} {:>6}  {:<10} {}",
            clean(&r.session),
            clean(&r.started),
            clean(&r.subject),
            clean(&r.role),
            r.statements,
            r.denied,
            rec,
            clean(&r.tables.iter().cloned().collect::<Vec<_>>().join(","))
        )?;
    }
    Ok(())
}
