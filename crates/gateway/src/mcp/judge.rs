//! What makes a tool call's SQL acceptable to the tool itself, from PostgreSQL's parse tree
//! (`phigate_sql`): `query` takes exactly one statement that reads, `execute` exactly one
//! statement, `explain` one statement it can explain. The session's policy decides the rest,
//! and `query` and `explain` also run inside a read-only transaction, so the database refuses
//! a write this judgement missed.

use phigate_sql::{Analysis, Kind};

fn parsed(sql: &str) -> Result<Vec<phigate_sql::Statement>, String> {
    match phigate_sql::analyze(sql) {
        Analysis::Parsed(stmts) => Ok(stmts),
        Analysis::Invalid { message, .. } => Err(format!("phigate: {message}")),
    }
}

fn exactly_one(sql: &str) -> Result<phigate_sql::Statement, String> {
    let mut stmts = parsed(sql)?;
    match stmts.len() {
        1 => Ok(stmts.remove(0)),
        0 => Err("phigate: no statement to run".into()),
        n => Err(format!(
            "phigate: one statement per call; this text holds {n} (send them one by one)"
        )),
    }
}

/// Whether `st` only reads: a SELECT (no data-modifying CTE, no row locks) or SHOW.
fn reads(st: &phigate_sql::Statement) -> bool {
    match st.kind {
        Kind::Select => st.inner.is_none() && st.accesses.iter().all(|a| !a.action.is_write()),
        Kind::Show => true,
        _ => false,
    }
}

/// A COPY with the client (`FROM STDIN`, `TO STDOUT`), which no tool runs.
fn copy_with_client(st: &phigate_sql::Statement) -> Result<(), String> {
    if st.kind == Kind::Copy && !st.copy_program && !st.copy_file {
        return Err(
            "phigate: COPY ... FROM STDIN and COPY ... TO STDOUT are not supported over MCP (a \
             tool call has no COPY data stream): read rows with query, add them with INSERT \
             through execute"
                .into(),
        );
    }
    Ok(())
}

/// `query`: exactly one statement, and it reads.
pub fn one_read(sql: &str) -> Result<(), String> {
    let st = exactly_one(sql)?;
    copy_with_client(&st)?;
    if reads(&st) {
        return Ok(());
    }
    Err(format!(
        "phigate: query runs one read-only statement; this is {} (use the execute tool for \
         statements that change data, which may be held for approval)",
        st.kind.label().to_uppercase()
    ))
}

/// `execute`: exactly one statement, and not a COPY with the client (`FROM STDIN`, `TO
/// STDOUT`): a call has no COPY data to give, nor a place for COPY data to go.
pub fn one_statement(sql: &str) -> Result<(), String> {
    copy_with_client(&exactly_one(sql)?)
}

/// `explain`: the EXPLAIN statement to run for `sql`, which must be one `query` would take:
/// `analyze` runs it, and the session's policy judges even a plain EXPLAIN of a write by the
/// write (a rule could hold it for review, which no tool that only reads may open).
pub fn explain(sql: &str, analyze: bool) -> Result<String, String> {
    let st = exactly_one(sql)?;
    if st.kind == Kind::Explain {
        return Err(
            "phigate: pass the statement itself; the explain tool adds EXPLAIN (and ANALYZE \
             with analyze: true)"
                .into(),
        );
    }
    if !matches!(
        st.kind,
        Kind::Select | Kind::Insert | Kind::Update | Kind::Delete | Kind::Merge
    ) {
        return Err(format!(
            "phigate: {} cannot be explained",
            st.kind.label().to_uppercase()
        ));
    }
    if !reads(&st) {
        return Err(format!(
            "phigate: explain takes a statement that only reads, as query does; this one is {} \
             (use the execute tool for statements that change data)",
            st.kind.label().to_uppercase()
        ));
    }
    let text = if analyze {
        format!("EXPLAIN (ANALYZE) {sql}")
    } else {
        format!("EXPLAIN {sql}")
    };
    // The composed text is still one EXPLAIN of that statement (a comment cannot end it).
    let composed = exactly_one(&text)?;
    if composed.kind != Kind::Explain || composed.explain_analyze != analyze {
        return Err("phigate: the statement cannot be explained".into());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_takes_one_read() {
        for ok in [
            "SELECT 1",
            "select * from patients where id = $1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "SHOW search_path",
            "SELECT 1;",
        ] {
            assert!(one_read(ok).is_ok(), "{ok}");
        }
        for bad in [
            "COMMIT; DROP TABLE patients",
            "SELECT 1; SELECT 2",
            "DELETE FROM patients",
            "EXPLAIN ANALYZE DELETE FROM patients",
            "WITH d AS (DELETE FROM patients RETURNING *) SELECT * FROM d",
            "DO $$ BEGIN DELETE FROM patients; END $$",
            "COPY patients TO PROGRAM 'cat'",
            "SET search_path = x",
            "SELECT 1 INTO t",
            "BEGIN",
            "",
            "SELEC 1",
        ] {
            let e = one_read(bad).expect_err(bad);
            assert!(e.starts_with("phigate: "), "{bad}: {e}");
        }
        assert!(one_read("UPDATE t SET a = 1")
            .expect_err("a write")
            .contains("execute"));
    }

    #[test]
    fn execute_refuses_copy_with_the_client() {
        for bad in [
            "COPY departments FROM STDIN",
            "copy departments (id, name) from stdin with (format csv)",
            "COPY departments TO STDOUT",
            "COPY (SELECT * FROM patients) TO STDOUT",
        ] {
            let e = one_statement(bad).expect_err(bad);
            assert!(e.contains("not supported over MCP"), "{bad}: {e}");
            // query says so too, rather than sending the caller to execute.
            let e = one_read(bad).expect_err(bad);
            assert!(e.contains("not supported over MCP"), "{bad}: {e}");
        }
        assert!(one_statement("UPDATE t SET a = 1").is_ok());
        // Server-side COPY is the session policy's to judge.
        assert!(one_statement("COPY t TO '/tmp/x'").is_ok());
    }

    #[test]
    fn explain_polices_analyze_as_execution() {
        assert_eq!(
            explain("SELECT 1", false).as_deref(),
            Ok("EXPLAIN SELECT 1")
        );
        assert_eq!(
            explain("SELECT 1", true).as_deref(),
            Ok("EXPLAIN (ANALYZE) SELECT 1")
        );
        for bad in [
            ("DELETE FROM t", true),
            ("DELETE FROM t", false),
            ("INSERT INTO t VALUES (1)", false),
            ("SELECT * FROM t FOR UPDATE", false),
            ("EXPLAIN ANALYZE DELETE FROM t", false),
            ("SELECT 1; DELETE FROM t", false),
            ("COMMIT; DROP TABLE t", false),
            ("DO $$ BEGIN END $$", false),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                true,
            ),
        ] {
            assert!(explain(bad.0, bad.1).is_err(), "{bad:?}");
        }
    }
}
