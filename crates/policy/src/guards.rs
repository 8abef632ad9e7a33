//! The built-in guards: what no rule or grant can allow (dangerous functions, server files,
//! pinned settings, catalog writes) and, for restricted roles, what phigate cannot see into or
//! what would reach other sessions.

use phigate_sql::{Action, RelName, Statement};

use super::*;

impl Policy {
    /// The built-in guards. `Some` refuses.
    pub(crate) fn guards(
        &self,
        role: &Role,
        st: &Statement,
        resolved: &[(RelName, Action)],
    ) -> Option<Decision> {
        // Field notation may call a function too (`('/etc/passwd'::text).pg_read_file`).
        for f in st.functions.iter().chain(&st.attribute_calls) {
            // The functions the gateway provisions in the database (masking tokens) are for its
            // views only: called directly they would compute the token of any guessed value.
            if f.name.to_ascii_lowercase().starts_with("phigate_") {
                return Some(deny(
                    "gateway-internal",
                    format!("phigate: function {f} denied by rule gateway-internal"),
                    "It belongs to phigate's masking; masked values come from the tables themselves.".into(),
                ));
            }
            let allowed = role.allow_functions.contains(&f.to_string())
                || role.allow_functions.contains(&f.name);
            if !allowed && builtin::is_dangerous(f) {
                return Some(deny("dangerous-function", format!("phigate: function {f} denied by rule dangerous-function"), "It reads or writes server files, large objects, other databases, backends or settings; an administrator can allow it per role with allow_functions.".into()));
            }
        }
        if let Some(f) = st
            .functions
            .iter()
            .chain(&st.attribute_calls)
            .find(|f| builtin::is_advisory_lock(&f.name))
        {
            let allowed = role.allow_functions.contains(&f.to_string())
                || role.allow_functions.contains(&f.name);
            if !allowed {
                return Some(deny(
                    "advisory-lock",
                    format!("phigate: function {f} denied by rule advisory-lock"),
                    "Advisory locks are shared with every other session of the database.".into(),
                ));
            }
        }
        if st.copy_program || st.copy_file {
            return Some(deny(
                "server-copy",
                "phigate: COPY to or from a server file or program denied by rule server-copy"
                    .into(),
                "Use COPY ... FROM STDIN / TO STDOUT (psql: \\copy).".into(),
            ));
        }
        if let Some(s) = st.settings.iter().find(|s| {
            builtin::PINNED_FOR_ALL.contains(&s.as_str())
                || (s.starts_with(builtin::IDENTITY_SETTINGS_PREFIX)
                    && *s != builtin::REASON_SETTING)
                || *s == phigate_sql::DYNAMIC_SETTING
        }) {
            return Some(deny(
                "pinned-setting",
                format!("phigate: SET {s} denied by rule pinned-setting"),
                if s.starts_with(builtin::IDENTITY_SETTINGS_PREFIX) {
                    "The phigate.* settings carry the caller's identity for the database; they are set by the gateway.".into()
                } else {
                    "phigate reads statements as PostgreSQL does with standard_conforming_strings = on; it cannot change.".into()
                },
            ));
        }
        if let Some((rel, action)) = resolved
            .iter()
            .find(|(rel, a)| a.is_write() && builtin::is_catalog(rel))
        {
            return Some(deny(
                "catalog-write",
                format!(
                    "phigate: {} on {rel} denied by rule catalog-write",
                    action.as_str().to_uppercase()
                ),
                "The system catalogs (pg_settings included) are not written through phigate."
                    .into(),
            ));
        }
        if !role.restricted {
            return None;
        }
        if st.opaque {
            return Some(deny(
                "opaque-code",
                "phigate: DO blocks denied by rule opaque-code".into(),
                "phigate cannot see what a DO block does; run the statements themselves.".into(),
            ));
        }
        if let Some(d) = cross_session(role, st) {
            return Some(d);
        }
        for s in &st.settings {
            if s == "role" || s == "session_authorization" {
                return Some(deny(
                    "role-switch",
                    "phigate: SET ROLE / SET SESSION AUTHORIZATION denied by rule role-switch"
                        .into(),
                    "Connect as the role you need (the startup user).".into(),
                ));
            }
            if !builtin::SAFE_SETTINGS.contains(&s.as_str()) {
                return Some(deny("pinned-setting", format!("phigate: SET {s} denied by rule pinned-setting"), format!("Role {} may only change display settings such as DateStyle or application_name.", role.name)));
            }
        }
        if let Some((rel, _)) = resolved.iter().find(|(rel, _)| builtin::leaks_data(rel)) {
            return Some(deny("catalog-leak", format!("phigate: reading {rel} denied by rule catalog-leak"), "Statistics and activity views expose table contents and other sessions' statements.".into()));
        }
        for f in &st.functions {
            let allowed = role.allow_functions.contains(&f.to_string())
                || role.allow_functions.contains(&f.name);
            let builtin = match f.schema.as_deref() {
                None | Some("pg_catalog") => self.builtins.contains(&f.name),
                Some(_) => false,
            };
            if !allowed && !builtin {
                return Some(deny("unknown-function", format!("phigate: function {f} denied by rule unknown-function"), format!("Role {} may call PostgreSQL's built-in functions and those in its allow_functions; phigate cannot tell what {f} does.", role.name)));
            }
            if !allowed && builtin::leaks_via_function(&f.name) {
                return Some(deny(
                    "catalog-leak",
                    format!("phigate: function {f} denied by rule catalog-leak"),
                    "It exposes other sessions' statements or table contents.".into(),
                ));
            }
        }
        if let Some(d) = self.unknown_operator(role, st) {
            return Some(d);
        }
        for f in &st.attribute_calls {
            if !role.allow_functions.contains(&f.name) && builtin::leaks_via_function(&f.name) {
                return Some(deny(
                    "catalog-leak",
                    format!("phigate: function {f} denied by rule catalog-leak"),
                    "It exposes other sessions' statements or table contents.".into(),
                ));
            }
        }
        if matches!(st.kind, Kind::Call) && st.functions.is_empty() {
            return Some(deny(
                "unknown-function",
                "phigate: CALL denied by rule unknown-function".into(),
                String::new(),
            ));
        }
        if let Kind::Other(tag) = &st.kind {
            return Some(deny(
                "unclassified",
                format!("phigate: {tag} denied by rule unclassified"),
                "phigate does not let restricted roles run statements it does not classify.".into(),
            ));
        }
        None
    }

    /// An operator is a function call: one whose name no built-in function implements, or
    /// written in another schema than `pg_catalog`, is unknown unless `allow_functions` names
    /// it as `operator <name>`.
    fn unknown_operator(&self, role: &Role, st: &Statement) -> Option<Decision> {
        st.operators.iter().find_map(|op| {
            let key = format!("operator {}", op.name);
            let allowed = role.allow_functions.contains(&key)
                || role.allow_functions.contains(&format!("operator {op}"));
            let builtin = match op.schema.as_deref() {
                None | Some("pg_catalog") => self.builtins.contains(&key),
                Some(_) => false,
            };
            (!allowed && !builtin).then(|| {
                deny(
                    "unknown-function",
                    format!("phigate: operator {op} denied by rule unknown-function"),
                    format!(
                        "Role {} may use the operators PostgreSQL's built-in functions implement \
                         and those in its allow_functions (as \"operator <name>\"); phigate \
                         cannot tell what {op} runs.",
                        role.name
                    ),
                )
            })
        })
    }
}

/// For restricted roles: what would leave state behind for other sessions or outlive the
/// session's own limits (a cursor WITH HOLD, a prepared transaction, LISTEN for a masked role).
fn cross_session(role: &Role, st: &Statement) -> Option<Decision> {
    if st.outlives_transaction {
        return Some(deny(
                "outlives-transaction",
                "phigate: cursors WITH HOLD and prepared transactions denied by rule outlives-transaction".into(),
                "They outlive the transaction (and a policy reload, the session's timeouts and its locks' usual end); use a plain cursor or transaction.".into(),
            ));
    }
    if role.masked && st.node == "ListenStmt" {
        return Some(deny(
            "masked-listen",
            format!(
                "phigate: LISTEN denied by rule masked-listen for masked role {}",
                role.name
            ),
            "Notification payloads are not masked; a masked role cannot receive them.".into(),
        ));
    }
    None
}
