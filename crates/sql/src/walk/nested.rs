//! Statements that hold a statement of their own: EXPLAIN, PREPARE, DECLARE, and CREATE TABLE
//! AS EXECUTE.

use serde_json::Value;

use super::{dedup, explain_analyzes, kind_of, node_of, str_field, Walker};
use crate::{Action, Statement};

/// `CREATE TABLE ... AS EXECUTE name`.
pub(super) fn executes_prepared(body: &Value) -> bool {
    body.get("query")
        .and_then(node_of)
        .is_some_and(|(t, _)| t == "ExecuteStmt")
}

impl Walker<'_> {
    /// `CREATE TABLE ... AS EXECUTE name`: what runs is the prepared statement, as for `EXPLAIN
    /// EXECUTE` (an `inner` statement of kind Execute, with its name); the new table is DDL.
    pub(super) fn create_as_execute(&mut self, body: &Value) {
        self.inner_statement(body);
        self.walk_except(body, &["query"], Action::Ddl);
    }

    /// EXPLAIN, PREPARE and DECLARE hold a statement of their own: analysed on its own as
    /// `inner`, and what it touches is what the outer statement touches.
    pub(super) fn nested_statement(&mut self, tag: &str, body: &Value) {
        if tag == "ExplainStmt" {
            self.st.explain_analyze = explain_analyzes(body);
        }
        if tag == "PrepareStmt" {
            self.st.name = Some(str_field(body, "name").to_owned());
        }
        if tag == "DeclareCursorStmt" {
            self.st.name = Some(str_field(body, "portalname").to_owned());
            // CURSOR_OPT_HOLD: the cursor outlives the transaction.
            let options = body.get("options").and_then(Value::as_i64).unwrap_or(0);
            self.st.outlives_transaction |= options & 0x0020 != 0;
        }
        self.inner_statement(body);
        self.walk_except(body, &["query"], Action::Select);
    }

    /// The statement in `body`'s `query`, analysed on its own as `inner`; what it touches is
    /// what the outer statement touches.
    fn inner_statement(&mut self, body: &Value) {
        if let Some((itag, ibody)) = body.get("query").and_then(node_of) {
            let mut inner = Statement::new(kind_of(itag, ibody), itag);
            let mut w = Walker {
                st: &mut inner,
                scopes: self.scopes.clone(),
            };
            w.statement_node(itag, ibody, None);
            dedup(&mut inner);
            // The outer statement touches whatever the inner one does.
            self.st.accesses.extend(inner.accesses.iter().cloned());
            self.st.functions.extend(inner.functions.iter().cloned());
            self.st
                .attribute_calls
                .extend(inner.attribute_calls.iter().cloned());
            self.st.operators.extend(inner.operators.iter().cloned());
            self.st.opaque |= inner.opaque;
            self.st.copy_program |= inner.copy_program;
            self.st.copy_file |= inner.copy_file;
            self.st.settings.extend(inner.settings.iter().cloned());
            self.st.inner = Some(Box::new(inner));
        }
    }
}
