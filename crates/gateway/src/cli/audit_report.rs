//! `phigate audit report` as text: everything that came from a client or an identity provider
//! (subjects, roles, statements, reasons) is shown with control characters made visible.

use std::io::Write;

use phigate_audit::query::{AccessReport, IdentityReport};

use super::plural;
use crate::text::display;

fn opt(v: &Option<String>) -> std::borrow::Cow<'_, str> {
    display(v.as_deref().unwrap_or("-"))
}

fn join(items: &std::collections::BTreeSet<String>) -> String {
    items.iter().cloned().collect::<Vec<_>>().join(",")
}

pub fn write(out: &mut impl Write, r: &AccessReport) -> std::io::Result<()> {
    writeln!(
        out,
        "Access report, {} to {}",
        display(r.since.as_deref().unwrap_or("the beginning")),
        display(r.until.as_deref().unwrap_or("now"))
    )?;
    for id in &r.identities {
        identity(out, id)?;
    }
    writeln!(out)?;
    writeln!(out, "Approvals ({})", r.approvals.len())?;
    for a in &r.approvals {
        writeln!(
            out,
            "  {} {}  approved by {}{}: {}",
            display(&a.review),
            display(&a.ts),
            opt(&a.by),
            if a.break_glass { " (BREAK-GLASS)" } else { "" },
            opt(&a.reason)
        )?;
        writeln!(
            out,
            "    asked by {} as {}, rule {}{}",
            opt(&a.requester),
            opt(&a.role),
            opt(&a.rule),
            a.justification
                .as_deref()
                .map(|j| format!(", because: {}", display(j)))
                .unwrap_or_default()
        )?;
        if let Some(st) = &a.statement {
            writeln!(out, "    ran: {}", display(st))?;
        }
    }
    writeln!(out)?;
    writeln!(out, "Failed logins ({})", r.failed_logins.len())?;
    for f in &r.failed_logins {
        writeln!(
            out,
            "  #{} {}  {} from {} as user {} via {}: {}",
            f.seq,
            display(&f.ts),
            f.subject
                .as_deref()
                .map(|s| display(s).into_owned())
                .unwrap_or_else(|| "(unknown credential)".into()),
            display(&f.client_addr),
            display(&f.user),
            opt(&f.via),
            display(&f.reason)
        )?;
    }
    Ok(())
}

fn identity(out: &mut impl Write, id: &IdentityReport) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{}  roles: {}  sessions: {}  statements: {}  denied: {}  held for approval: {} (approved: {}, not run: {})  as reviewer: approved {}, denied {}  failed logins: {}",
        display(&id.subject),
        display(&join(&id.roles)),
        id.sessions,
        id.statements,
        id.denied,
        id.approvals_required,
        id.approved,
        id.held_refused,
        id.reviews_approved,
        id.reviews_denied,
        id.failed_logins
    )?;
    for (table, t) in &id.tables {
        let masked = if t.masked {
            format!("masked ({})", display(&join(&t.masked_columns)))
        } else {
            "NOT masked".to_owned()
        };
        writeln!(
            out,
            "  {:<32} {:>17} {:>15}  {}  {}",
            display(table),
            plural(t.statements, "statement", "statements"),
            plural(t.rows, "row", "rows"),
            join(&t.actions).replace(',', "/"),
            masked
        )?;
    }
    for d in &id.denials {
        let how = match &d.review {
            Some(review) => format!("held, not run (review {})", display(review)),
            None => "refused".to_owned(),
        };
        writeln!(
            out,
            "  {how} #{} {} by rule {}: {}",
            d.seq,
            display(&d.ts),
            display(d.rule.as_deref().unwrap_or("?")),
            display(&d.text)
        )?;
    }
    Ok(())
}
