//! The audit record of a call the tool layer refused itself (a write sent to `query`, a NUL,
//! invalid arguments, a table or review not found, the held cap): no session was opened, so
//! the session's own record is missing; without this one an auditor could not see an agent
//! trying to write through `query`. It is a `statement` record like the wire's refusals:
//! `decision: "deny"`, the rule (`mcp-read-only` …), `channel: "mcp"` and the tool, the
//! caller's subject and role, and a session id of its own (no `session_start` precedes it).
//! The text and literals are redacted by the writer as the config says, as for any statement.

use std::sync::Arc;

use crate::auth::Identity;
use crate::state::Shared;

/// The rules of the tool layer's refusals, as audit records name them.
pub mod rule {
    /// `query` or `explain` was sent a statement that does not only read.
    pub const READ_ONLY: &str = "mcp-read-only";
    /// `execute` was sent text that is not one statement it runs (several, COPY with the
    /// client, text that does not parse).
    pub const ONE_STATEMENT: &str = "mcp-one-statement";
    /// An argument held a NUL character.
    pub const NUL: &str = "mcp-nul";
    /// Arguments that do not fit the tool's schema, or an unknown tool.
    pub const ARGUMENTS: &str = "mcp-arguments";
    /// `describe_table` of a table the role may not read or that does not exist;
    /// `approval_wait` of a review that is not the caller's.
    pub const NOT_FOUND: &str = "mcp-not-found";
    /// `execute` past the cap of executes per individual.
    pub const HELD_CAP: &str = "mcp-held-cap";
}

/// The tools an audit record may name (anything else is `unknown`: the name is the client's).
const TOOLS: [&str; 6] = [
    "list_tables",
    "describe_table",
    "query",
    "execute",
    "explain",
    "approval_wait",
];

/// Writes the record of `who`'s call of `tool` (as `role`), refused by `rule`, with the SQL it
/// carried (if any). Queued without waiting: nothing ran.
pub fn record(
    shared: &Shared,
    who: &Identity,
    role: String,
    tool: &str,
    rule: &'static str,
    sql: Option<&str>,
) {
    let Some(audit) = &shared.audit.log else {
        return;
    };
    let tool = TOOLS
        .iter()
        .find(|t| **t == tool)
        .copied()
        .unwrap_or("unknown");
    // A NUL cannot reach the parser (it ends a C string): marked, not kept.
    let sql = sql.unwrap_or_default().replace('\0', "\u{fffd}");
    let (kinds, tables) = if sql.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        crate::session::guard::describe(&phigate_sql::analyze(&sql))
    };
    shared.metrics.statement("deny", false);
    let meta = phigate_audit::StatementRecord {
        session: crate::audit::session_id(),
        subject: who.subject.0.clone(),
        role,
        n: 1,
        protocol: "extended".into(),
        kinds,
        tables,
        decision: "deny".into(),
        rule: Some(rule.into()),
        channel: Some("mcp".into()),
        tool: Some(tool.into()),
        ..Default::default()
    };
    let _ = audit.submit(phigate_audit::Pending::Statement {
        meta,
        sql: Arc::from(sql.as_str()),
        params: Vec::new(),
    });
}
