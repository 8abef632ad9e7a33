//! The gateway's own refusals: what the client reads when a message is not forwarded. Each
//! names its rule; none carries client data beyond a statement name the client chose.

use phigate_policy::{Decision, Refusal};
use phigate_wire::frontend::{FrontendMessage, Target};
use phigate_wire::sqlstate;

use super::{MAX_NAME_BYTES, MAX_PREPARED, MAX_PREPARED_BYTES};
use crate::session::relay::exchange::Exchange;

fn refusal(rule: &str, message: String, hint: &str, code: &'static str) -> Refusal {
    Refusal {
        rule: rule.into(),
        message,
        hint: hint.into(),
        sqlstate: code,
        position: None,
    }
}

pub fn deny(r: Refusal) -> Decision {
    Decision::Deny(r)
}

/// Nothing runs while the audit log cannot be written.
pub fn audit_unavailable() -> Refusal {
    refusal(
        "audit-unavailable",
        "phigate: statement refused: the audit log cannot be written".into(),
        "Nothing runs unaudited. Try again shortly; the gateway's health endpoint shows the audit state.",
        sqlstate::IO_ERROR,
    )
}

/// A Bind or Describe of a statement whose Parse was refused.
pub fn refused_statement(name: &str) -> Refusal {
    refusal(
        "refused-statement",
        format!("phigate: prepared statement \"{name}\" was refused and cannot be used"),
        "Its Parse was refused; see the earlier error.",
        sqlstate::INSUFFICIENT_PRIVILEGE,
    )
}

/// A statement the session does not hold (as far as the gateway can prove): PostgreSQL's own
/// answer, from the gateway.
pub fn unknown_statement(name: &str) -> Refusal {
    refusal(
        "unknown-statement",
        format!("phigate: prepared statement \"{name}\" does not exist (rule unknown-statement)"),
        "Prepare it (Parse or PREPARE) in this session first.",
        sqlstate::INVALID_SQL_STATEMENT_NAME,
    )
}

/// The one execution an approval covered has happened.
pub fn approval_used(name: &str) -> Refusal {
    refusal(
        "approval-used",
        format!("phigate: the approval of statement \"{name}\" covered one execution"),
        "Send the statement again (Parse) for a new review.",
        sqlstate::INSUFFICIENT_PRIVILEGE,
    )
}

/// The legacy fast path names a function by OID: phigate cannot tell which one it is, so no
/// role may use it (set_config by OID would unpin any setting).
pub fn function_call() -> Refusal {
    refusal(
        "function-call-message",
        "phigate: the FunctionCall protocol message denied by rule function-call-message".into(),
        "Call functions with SELECT so phigate can see which one.",
        sqlstate::INSUFFICIENT_PRIVILEGE,
    )
}

/// A per-session bound was reached.
pub fn limit(what: &str, max: usize) -> Refusal {
    refusal(
        "session-limit",
        format!("phigate: this session holds the most {what} it may ({max})"),
        "Close or DEALLOCATE some first.",
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
    )
}

/// A statement or portal name longer than the gateway keeps.
pub fn name_too_long(max: usize) -> Refusal {
    refusal(
        "session-limit",
        format!("phigate: statement and portal names are limited to {max} bytes"),
        "PostgreSQL keeps only the first 63 bytes of a name; use a shorter one.",
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
    )
}

/// A statement that needs approval cannot be approved inside PREPARE (one approval would then
/// cover any number of EXECUTEs).
pub fn prepared_approval(rule: &str) -> Refusal {
    refusal(
        rule,
        format!("phigate: a statement that needs approval (rule {rule}) cannot be prepared with PREPARE"),
        "Send the statement itself; it waits for a reviewer and runs once.",
        sqlstate::INSUFFICIENT_PRIVILEGE,
    )
}

/// A refused message whose decision carried no refusal of its own.
pub fn internal() -> Refusal {
    refusal(
        "internal",
        "phigate: statement refused".into(),
        "",
        sqlstate::INSUFFICIENT_PRIVILEGE,
    )
}

/// A masked role's write to a column its masking view computes: no approval can make it run.
pub fn masked_write(col: &str, table: &str, role: &str) -> Refusal {
    refusal(
        "masked-column-write",
        format!(
            "phigate: the PHI column {col} of {table} is masked for role {role} and cannot be written (rule masked-column-write)"
        ),
        "This role sees the column through a masking view, which the database cannot write through, so no approval can make it run. Ask someone whose role sees the column unmasked to make this change.",
        sqlstate::INSUFFICIENT_PRIVILEGE,
    )
}

/// A masked role conditioning on a non-tokenized PHI column.
pub fn phi_predicate(col: &str, table: &str, role: &str) -> Refusal {
    refusal(
        "phi-predicate",
        format!(
            "phigate: filtering, joining, sorting or grouping on the PHI column {col} of {table} is not allowed for role {role} (rule phi-predicate)"
        ),
        "A condition on a masked value reveals it a little at a time. Use ids or codes; tokenized columns (names, MRNs) may be joined and grouped on.",
        sqlstate::INSUFFICIENT_PRIVILEGE,
    )
}

/// Whether the session may prepare one more statement `name` of `bytes` of text.
pub fn room_to_prepare(ex: &Exchange, name: &str, bytes: usize) -> Option<Refusal> {
    if name.len() > MAX_NAME_BYTES {
        return Some(name_too_long(MAX_NAME_BYTES));
    }
    if name.is_empty() || ex.statement(name).is_some() {
        return None;
    }
    if ex.prepared_count() >= MAX_PREPARED {
        return Some(limit("prepared statements", MAX_PREPARED));
    }
    if ex.prepared_bytes() + bytes > MAX_PREPARED_BYTES {
        return Some(limit("bytes of prepared statements", MAX_PREPARED_BYTES));
    }
    None
}

/// Whether a statement or portal name the message carries is longer than PostgreSQL keeps.
/// The gateway's refusal of a message for the names it carries, before anything else: a name
/// PostgreSQL would cut short, a name reserved for the gateway, or a Describe of the unnamed
/// statement while what it is stays ambiguous.
pub fn of_names(msg: &FrontendMessage<'_>, ex: &Exchange) -> Option<Refusal> {
    if too_long_name(msg) {
        return Some(name_too_long(MAX_NAME_BYTES));
    }
    if names_reserved(msg) {
        return Some(reserved_name());
    }
    match msg {
        FrontendMessage::Describe {
            target: Target::Statement,
            name: "",
        } if is_ambiguous_unnamed("", &ex.statement_candidates("")) => Some(ambiguous_unnamed()),
        _ => None,
    }
}

/// The prefixes of the names the gateway gives what it sends the database: the statement
/// cache's statements and the refusals' substitutes (a statement or portal that must not
/// exist). No client may name a statement or a portal with them.
pub const RESERVED: [&str; 2] = ["phigate_stmt_", "phigate_denied_"];

/// Whether a statement or portal name is the gateway's (compared without ASCII case).
pub fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|prefix| {
        name.get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    })
}

/// Whether a message names a statement or portal by a name reserved for the gateway.
pub fn names_reserved(msg: &FrontendMessage<'_>) -> bool {
    match msg {
        FrontendMessage::Parse(p) => is_reserved(p.name),
        FrontendMessage::Bind(b) => is_reserved(b.statement) || is_reserved(b.portal),
        FrontendMessage::Describe { name, .. } | FrontendMessage::Close { name, .. } => {
            is_reserved(name)
        }
        FrontendMessage::Execute { portal, .. } => is_reserved(portal),
        _ => false,
    }
}

/// A statement name the gateway keeps for itself.
pub fn reserved_name() -> Refusal {
    refusal(
        "reserved-name",
        format!(
            "phigate: statement and portal names starting with \"{}\" or \"{}\" are reserved for the gateway",
            RESERVED[0], RESERVED[1]
        ),
        "Choose another name.",
        sqlstate::INVALID_SQL_STATEMENT_NAME,
    )
}

/// A Bind or Describe of the unnamed statement while what it is depends on answers still to
/// come.
pub fn ambiguous_unnamed() -> Refusal {
    refusal(
        "ambiguous-unnamed",
        "phigate: the unnamed statement may still be one of several statements in flight".into(),
        "Send Sync and read the results of the earlier messages first, or Parse the statement again before binding it.",
        sqlstate::INVALID_SQL_STATEMENT_NAME,
    )
}

/// Whether what the unnamed statement is when a message runs depends on answers still to come
/// (more than one candidate): the statement the audit would record and the one the database
/// runs may differ, and a cached candidate runs under another name.
pub fn is_ambiguous_unnamed(
    name: &str,
    candidates: &[std::sync::Arc<crate::session::relay::exchange::Prepared>],
) -> bool {
    name.is_empty() && candidates.len() > 1
}

pub fn too_long_name(msg: &FrontendMessage<'_>) -> bool {
    let long = |n: &str| n.len() > MAX_NAME_BYTES;
    match msg {
        FrontendMessage::Parse(p) => long(p.name),
        FrontendMessage::Bind(b) => long(b.portal) || long(b.statement),
        FrontendMessage::Describe { name, .. } | FrontendMessage::Close { name, .. } => long(name),
        FrontendMessage::Execute { portal, .. } => long(portal),
        _ => false,
    }
}
