//! Pure functions of an analysis that the guard's decisions are made of.

use std::collections::BTreeMap;
use std::sync::Arc;

use phigate_policy::{Decision, Role, RuleAction};
use phigate_sql::{Analysis, Kind, Statement};

use super::refusals;
use crate::session::relay::exchange::{Effect, Portal, Prepared};

/// The top-level statements of an analysis and what they hold inside, at any depth (PREPARE's,
/// EXPLAIN's and DECLARE's statement, CREATE TABLE AS EXECUTE's, EXPLAIN of that).
pub fn all_statements(analysis: &Analysis) -> impl Iterator<Item = &Statement> {
    let stmts: &[Statement] = match analysis {
        Analysis::Parsed(stmts) => stmts,
        Analysis::Invalid { .. } => &[],
    };
    stmts
        .iter()
        .flat_map(|st| std::iter::successors(Some(st), |s| s.inner.as_deref()))
}

/// Allowed DDL may change views: the catalog is read again once it commits.
pub fn has_ddl(analysis: &Analysis) -> bool {
    all_statements(analysis).any(|s| matches!(s.kind, Kind::Ddl(_)))
}

/// Whether a SQL-level `PREPARE`, `EXECUTE`, `DEALLOCATE` or cursor statement names a statement
/// or portal the gateway keeps for itself (`refusals::RESERVED`).
pub fn uses_reserved_name(analysis: &Analysis) -> bool {
    all_statements(analysis).any(|s| {
        matches!(
            s.kind,
            Kind::Prepare | Kind::Execute | Kind::Deallocate | Kind::Cursor
        ) && s.name.as_deref().is_some_and(super::refusals::is_reserved)
    })
}

/// The names SQL-level `EXECUTE` runs, at the top level or inside `EXPLAIN`.
pub fn executes(analysis: &Analysis) -> Vec<&str> {
    all_statements(analysis)
        .filter(|s| s.kind == Kind::Execute)
        .filter_map(|s| s.name.as_deref())
        .collect()
}

/// The names SQL-level `PREPARE` creates.
pub fn prepares(analysis: &Analysis) -> impl Iterator<Item = &str> {
    let stmts: &[Statement] = match analysis {
        Analysis::Parsed(stmts) => stmts,
        Analysis::Invalid { .. } => &[],
    };
    stmts
        .iter()
        .filter(|s| s.kind == Kind::Prepare)
        .filter_map(|s| s.name.as_deref())
}

/// What each top-level statement of an allowed Query does to the session's prepared
/// statements, in order (one entry per statement, as PostgreSQL sends one CommandComplete per
/// statement).
pub fn effects(analysis: &Analysis, sql: &Arc<str>, version: u64) -> Vec<Option<Effect>> {
    let Analysis::Parsed(stmts) = analysis else {
        return Vec::new();
    };
    stmts
        .iter()
        .map(|st| match (&st.kind, st.name.as_deref()) {
            (Kind::Prepare, Some(name)) => {
                // What EXECUTE will run: the statement inside.
                let inner = st.inner.as_deref().unwrap_or(st);
                Some(Effect::Prepare {
                    name: name.to_owned(),
                    statement: Prepared::new(
                        sql.clone(),
                        Arc::new(Analysis::Parsed(vec![inner.clone()])),
                        version,
                    ),
                })
            }
            (Kind::Deallocate, None) => Some(Effect::DeallocateAll),
            (Kind::Deallocate, Some(name)) => Some(Effect::Deallocate {
                name: name.to_owned(),
            }),
            (Kind::Session, Some("all")) if st.node == "DiscardStmt" => Some(Effect::DiscardAll),
            // A SQL cursor is a portal: an Execute of its name runs what it declared.
            (Kind::Cursor, Some(name)) if st.node == "DeclareCursorStmt" => {
                let inner = st.inner.as_deref().unwrap_or(st);
                Some(Effect::Bind {
                    portal: name.to_owned(),
                    bound: Arc::new(Portal {
                        statement: Prepared::new(
                            sql.clone(),
                            Arc::new(Analysis::Parsed(vec![inner.clone()])),
                            version,
                        ),
                        params: Vec::new(),
                    }),
                })
            }
            (Kind::Cursor, Some(name)) if st.node == "ClosePortalStmt" => {
                Some(Effect::ClosePortal {
                    name: name.to_owned(),
                })
            }
            (Kind::Cursor, None) if st.node == "ClosePortalStmt" => Some(Effect::CloseAllPortals),
            _ => None,
        })
        .collect()
}

/// The effect of a single statement (Parse takes one): what running it does to the session's
/// names, if anything.
pub fn effect_of(analysis: &Analysis, sql: &Arc<str>, version: u64) -> Option<Effect> {
    effects(analysis, sql, version).into_iter().flatten().next()
}

/// Statements whose running changes nothing that phigate can see: SELECT that calls no function
/// (a function may write) and writes or locks nothing, and SHOW. With `audit.read_durability =
/// "results"` their record need only be written, not durable, before they run; their results
/// wait for durability. (A view, an RLS policy or a user-defined operator can still call a
/// function the statement does not name: hence the opt-in.)
pub fn changes_nothing(analysis: &Analysis) -> bool {
    match analysis {
        Analysis::Parsed(stmts) => {
            !stmts.is_empty()
                && stmts.iter().all(|st| match st.kind {
                    Kind::Select => {
                        st.functions.is_empty()
                            && st.attribute_calls.is_empty()
                            && st.inner.is_none()
                            && st.accesses.iter().all(|a| !a.action.is_write())
                    }
                    // Not transaction control: COMMIT runs deferred triggers, COMMIT PREPARED
                    // commits another session's work, SET CONSTRAINTS fires triggers.
                    Kind::Show => true,
                    _ => false,
                })
        }
        Analysis::Invalid { .. } => false,
    }
}

/// A statement that needs approval cannot be approved inside PREPARE: it is refused, asking
/// for the statement itself.
pub fn no_prepared_approvals(analysis: &Analysis, decision: Decision) -> Decision {
    let Decision::RequireApproval(r) = &decision else {
        return decision;
    };
    let prepares = matches!(analysis, Analysis::Parsed(stmts) if stmts.iter().any(|s| s.kind == Kind::Prepare));
    if !prepares {
        return decision;
    }
    refusals::deny(refusals::prepared_approval(&r.rule))
}

/// A masked role filtering, joining, sorting or grouping on a non-tokenized PHI column of a
/// table it reads: refused or held as its `phi_predicates` says.
pub fn phi_predicate(
    role: &Role,
    guarded: &BTreeMap<String, Vec<String>>,
    analysis: &Analysis,
) -> Option<Decision> {
    if guarded.is_empty() || role.phi_predicates == RuleAction::Allow {
        return None;
    }
    for st in all_statements(analysis) {
        for access in &st.accesses {
            let rel = &access.relation;
            let tables = guarded.iter().filter(|(key, _)| match &rel.schema {
                Some(s) => **key == format!("{s}.{}", rel.name),
                None => key.rsplit('.').next() == Some(rel.name.as_str()),
            });
            for (table, cols) in tables {
                if let Some(col) = st.predicate_columns.iter().find(|c| cols.contains(c)) {
                    let refusal = refusals::phi_predicate(col, table, &role.name);
                    return Some(match role.phi_predicates {
                        RuleAction::RequireApproval => Decision::RequireApproval(refusal),
                        _ => Decision::Deny(refusal),
                    });
                }
            }
        }
    }
    None
}

/// A masked role's write that assigns a column its masking view computes: the database can
/// never run it (`cannot update column ... of view`), so it is refused at once rather than held
/// for a reviewer whose approval would be wasted.
pub fn masked_write(
    role: &Role,
    unwritable: &BTreeMap<String, Vec<String>>,
    analysis: &Analysis,
) -> Option<Decision> {
    if unwritable.is_empty() {
        return None;
    }
    for st in all_statements(analysis) {
        for (rel, col) in &st.assigned {
            // The names in the refusal are the configured ones, never the client's text.
            let hit = unwritable
                .iter()
                .filter(|(key, _)| match &rel.schema {
                    Some(s) => **key == format!("{s}.{}", rel.name),
                    None => key.rsplit('.').next() == Some(rel.name.as_str()),
                })
                .find_map(|(table, cols)| {
                    let c = cols.iter().find(|c| c.eq_ignore_ascii_case(col))?;
                    Some((table, c))
                });
            if let Some((table, c)) = hit {
                return Some(refusals::deny(refusals::masked_write(c, table, &role.name)));
            }
        }
    }
    None
}

/// `SET phigate.reason = '...'` (or `RESET phigate.reason`), alone in its Query: the session's
/// justification from now on (`Some(None)`: reset). `SET LOCAL` and `set_config()` are not
/// followed.
pub fn reason_setting(analysis: &Analysis, sql: &str) -> Option<Option<String>> {
    let Analysis::Parsed(stmts) = analysis else {
        return None;
    };
    let [st] = stmts.as_slice() else {
        return None;
    };
    if st.settings != [phigate_policy::REASON_SETTING] {
        return None;
    }
    let words: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(str::to_ascii_lowercase)
        .collect();
    match words.first().map(String::as_str) {
        Some("reset") => Some(None),
        Some("set") if words.get(1).is_none_or(|w| w != "local") => {
            let (_, literals) = phigate_sql::redact_literals(sql);
            let [only] = literals.as_slice() else {
                return None;
            };
            Some(
                only.strip_prefix('\'')
                    .and_then(|l| l.strip_suffix('\''))
                    .map(|inner| inner.replace("''", "'").trim().chars().take(500).collect())
                    .filter(|r: &String| !r.is_empty()),
            )
        }
        _ => None,
    }
}

/// Whether a statement may run code phigate cannot read, which could change session
/// settings unseen until the database reports them: a DO block, a CALL, a function that is
/// not built in, or a built-in that runs SQL given as text.
pub fn may_run_code(policy: &phigate_policy::Policy, a: &phigate_sql::Analysis) -> bool {
    const RUNS_TEXT: &[&str] = &[
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "ts_stat",
        "ts_rewrite",
    ];
    let phigate_sql::Analysis::Parsed(stmts) = a else {
        return true;
    };
    stmts.iter().any(|st| {
        st.opaque
            || matches!(st.node.as_str(), "DoStmt" | "CallStmt")
            || st
                .functions
                .iter()
                .chain(&st.attribute_calls)
                .any(|f| !policy.is_builtin(f) || RUNS_TEXT.contains(&f.name.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_that_change_nothing_skip_the_fsync_before_they_run() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SELECT name, visit_date FROM patients JOIN visits USING (patient_id) WHERE id > 3",
            "SHOW search_path",
        ] {
            assert!(changes_nothing(&phigate_sql::analyze(sql)), "{sql}");
        }
        for sql in [
            // A function may write (a volatile one, nextval, a user's own).
            "SELECT count(*) FROM patients",
            "SELECT nextval('s')",
            // `p.name` calls name(p) if patients has no column "name": unknown without the
            // catalog.
            "SELECT p.name FROM patients p",
            "SELECT * FROM patients FOR UPDATE",
            "WITH d AS (DELETE FROM notes RETURNING id) SELECT id FROM d",
            "SELECT * INTO copy_of FROM patients",
            "INSERT INTO notes (body) VALUES ('x')",
            "EXPLAIN ANALYZE SELECT 1",
            "DO $$ BEGIN END $$",
            "SET search_path = public",
            "SELECT (",
            "COMMIT",
            "COMMIT PREPARED 'x'",
            "SET CONSTRAINTS ALL IMMEDIATE",
        ] {
            assert!(!changes_nothing(&phigate_sql::analyze(sql)), "{sql}");
        }
    }

    #[test]
    fn what_a_query_does_to_prepared_statements() {
        let sql: Arc<str> = Arc::from(
            "PREPARE p AS UPDATE notes SET body = 'x'; DEALLOCATE q; DEALLOCATE ALL; DISCARD ALL; DISCARD PLANS; SELECT 1; DEALLOCATE \"all\"",
        );
        let e = effects(&phigate_sql::analyze(&sql), &sql, 7);
        assert_eq!(e.len(), 7, "one per statement");
        match &e[0] {
            Some(Effect::Prepare { name, statement }) => {
                assert_eq!(name, "p");
                assert_eq!(statement.version(), 7);
                assert_eq!(executes_kinds(statement), vec!["update"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&e[1], Some(Effect::Deallocate { name }) if name == "q"));
        assert!(matches!(e[2], Some(Effect::DeallocateAll)));
        assert!(matches!(e[3], Some(Effect::DiscardAll)));
        assert!(e[4].is_none(), "DISCARD PLANS keeps the statements");
        assert!(e[5].is_none());
        assert!(
            matches!(&e[6], Some(Effect::Deallocate { name }) if name == "all"),
            "a statement called \"all\" is not DEALLOCATE ALL"
        );
        // CREATE TABLE ... AS EXECUTE runs the prepared statement too: it is decided again,
        // takes an approval's one use, and cannot name the gateway's statements.
        let ctas = phigate_sql::analyze("CREATE TEMP TABLE s AS EXECUTE p(5)");
        assert_eq!(executes(&ctas), vec!["p"]);
        assert!(has_ddl(&ctas));
        assert!(uses_reserved_name(&phigate_sql::analyze(
            "CREATE TABLE s AS EXECUTE phigate_stmt_0123_1(6)"
        )));
        assert!(uses_reserved_name(&phigate_sql::analyze(
            "EXPLAIN ANALYZE CREATE TABLE s AS EXECUTE PHIGATE_STMT_0123_1"
        )));
        assert!(!uses_reserved_name(&phigate_sql::analyze(
            "CREATE TABLE phigate_s AS SELECT 1"
        )));
        assert!(uses_reserved_name(&phigate_sql::analyze(
            "DECLARE phigate_denied_1 CURSOR FOR SELECT 1"
        )));
        // SELECT ... INTO in the leftmost branch of a set operation creates a table.
        assert!(has_ddl(&phigate_sql::analyze(
            "SELECT 1 AS n INTO TEMP departments UNION ALL SELECT 2"
        )));
        assert!(!has_ddl(&phigate_sql::analyze(
            "SELECT 1 UNION ALL SELECT 2"
        )));
        assert_eq!(
            executes(&phigate_sql::analyze(
                "EXPLAIN ANALYZE EXECUTE p(1); EXECUTE q"
            )),
            vec!["p", "q"]
        );
    }

    fn executes_kinds(p: &Prepared) -> Vec<String> {
        all_statements(&p.analysis)
            .map(|s| s.kind.label().to_owned())
            .collect()
    }
}
