//! The exhaustive walk over a parse tree converted to a generic value.
//!
//! Nodes in `Node` fields appear as `{"node": {"SelectStmt": {...}}}`; nodes in typed fields
//! (e.g. `InsertStmt.relation`) appear as bare objects. So relations and function calls are
//! recognised by their shape (`relname` + `inh`; `funcname` + `agg_star`), and statement nodes
//! by their tag, wherever they are.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::{Access, Action, DdlKind, FuncName, Kind, RelName, Statement};

mod nested;

/// Analyses every top-level statement of a parse tree. `None` if the tree has an unexpected
/// shape (which the caller treats as "cannot analyse").
pub fn analyze_tree(tree: &Value) -> Option<Vec<Statement>> {
    let stmts = tree.get("stmts")?.as_array()?;
    let mut out = Vec::with_capacity(stmts.len());
    for raw in stmts {
        let node = raw.get("stmt")?.get("node")?.as_object()?;
        let (tag, body) = node.iter().next()?;
        out.push(statement(tag, body));
    }
    Some(out)
}

/// `SELECT ... INTO`: PostgreSQL takes the INTO of a set operation from its leftmost branch.
fn selects_into(body: &Value) -> bool {
    !is_null(body.get("into_clause"))
        || body
            .get("larg")
            .map(|l| l.get("SelectStmt").unwrap_or(l))
            .is_some_and(selects_into)
}

fn kind_of(tag: &str, body: &Value) -> Kind {
    match tag {
        "SelectStmt" if selects_into(body) => Kind::Ddl(DdlKind::Create),
        "SelectStmt" => Kind::Select,
        "InsertStmt" => Kind::Insert,
        "UpdateStmt" => Kind::Update,
        "DeleteStmt" => Kind::Delete,
        "MergeStmt" => Kind::Merge,
        "TruncateStmt" => Kind::Truncate,
        "CopyStmt" => Kind::Copy,
        "ExplainStmt" => Kind::Explain,
        "PrepareStmt" => Kind::Prepare,
        "ExecuteStmt" => Kind::Execute,
        "DeallocateStmt" => Kind::Deallocate,
        "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" => Kind::Cursor,
        "DoStmt" => Kind::Do,
        "CallStmt" => Kind::Call,
        "VariableSetStmt" => Kind::Set,
        "VariableShowStmt" => Kind::Show,
        // SET CONSTRAINTS only changes when the current transaction checks its constraints.
        "TransactionStmt" | "ConstraintsSetStmt" => Kind::Transaction,
        "ListenStmt" | "UnlistenStmt" => Kind::Listen,
        "NotifyStmt" => Kind::Notify,
        "GrantStmt"
        | "GrantRoleStmt"
        | "CreateRoleStmt"
        | "AlterRoleStmt"
        | "AlterRoleSetStmt"
        | "DropRoleStmt"
        | "AlterDefaultPrivilegesStmt"
        | "ReassignOwnedStmt"
        | "DropOwnedStmt"
        | "AlterOwnerStmt"
        | "CreatePolicyStmt"
        | "AlterPolicyStmt" => Kind::Privilege,
        "LockStmt" => Kind::Lock,
        "VacuumStmt" | "ClusterStmt" | "ReindexStmt" | "CheckPointStmt" => Kind::Maintenance,
        "DiscardStmt" => Kind::Session,
        "DropStmt"
        | "DropdbStmt"
        | "DropTableSpaceStmt"
        | "DropSubscriptionStmt"
        | "DropUserMappingStmt" => Kind::Ddl(DdlKind::Drop),
        t if t.starts_with("Create")
            || t.starts_with("Define")
            || t == "IndexStmt"
            || t == "ViewStmt"
            || t == "RuleStmt"
            || t == "CompositeTypeStmt" =>
        {
            Kind::Ddl(DdlKind::Create)
        }
        t if t.starts_with("Alter")
            || t.starts_with("Rename")
            || t == "CommentStmt"
            || t == "SecLabelStmt"
            || t == "RefreshMatViewStmt"
            || t == "ImportForeignSchemaStmt" =>
        {
            Kind::Ddl(DdlKind::Alter)
        }
        other => Kind::Other(other.to_owned()),
    }
}

fn statement(tag: &str, body: &Value) -> Statement {
    let mut st = Statement::new(kind_of(tag, body), tag);
    let mut w = Walker {
        st: &mut st,
        scopes: Vec::new(),
    };
    w.statement_node(tag, body, None);
    dedup(&mut st);
    st
}

/// Parse-tree fields whose columns decide which rows come back, or in which order.
const PREDICATE_KEYS: &[&str] = &[
    "where_clause",
    "having_clause",
    "sort_clause",
    "group_clause",
    "distinct_clause",
    "quals",
    "partition_clause",
    "order_clause",
    "agg_filter",
    "agg_order",
    "join_condition",
    "condition",
];

/// The last name of every ColumnRef under `v` (`p.ssn` → `ssn`), lower case.
fn column_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| column_names(i, out)),
        Value::Object(map) => {
            if let Some(body) = map.get("ColumnRef") {
                if let Some(last) = strings(body.get("fields")).pop() {
                    let last = last.to_lowercase();
                    if !out.contains(&last) {
                        out.push(last);
                    }
                }
            }
            map.values().for_each(|i| column_names(i, out));
        }
        _ => {}
    }
}

fn dedup(st: &mut Statement) {
    let mut seen = HashSet::new();
    st.accesses.retain(|a| seen.insert(a.clone()));
    let mut seen = HashSet::new();
    st.functions.retain(|f| seen.insert(f.clone()));
    let mut seen = HashSet::new();
    st.attribute_calls.retain(|f| seen.insert(f.clone()));
    let mut seen = HashSet::new();
    st.operators.retain(|f| seen.insert(f.clone()));
}

fn is_null(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The strings of a list of `{"node": {"String": {"sval": ..}}}`.
fn strings(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("node")?.get("String")?.get("sval")?.as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

struct Walker<'a> {
    st: &'a mut Statement,
    /// CTE names visible at this point, innermost last.
    scopes: Vec<HashSet<String>>,
}

impl Walker<'_> {
    /// Handles a statement node (top level or nested). `ctx` is the action implied for bare
    /// relations found in it when the statement type does not say otherwise.
    fn statement_node(&mut self, tag: &str, body: &Value, ctx: Option<Action>) {
        if let Some(map) = body.as_object() {
            self.predicates(map);
        }
        // `ALTER ROLE / DATABASE / SYSTEM ... SET name`: the setting changes for later sessions.
        if matches!(
            tag,
            "AlterRoleSetStmt" | "AlterDatabaseSetStmt" | "AlterSystemStmt"
        ) {
            if let Some(set) = body.get("setstmt").filter(|v| v.is_object()) {
                self.st.settings.push(setting_name(set));
            }
        }
        let pushed = self.enter_with(body);
        match tag {
            "SelectStmt" => {
                if let Some(into) = body.get("into_clause").filter(|v| !v.is_null()) {
                    // The table created is a table whatever CTEs are in scope.
                    self.unscoped(|w| w.walk(into, Action::Ddl));
                }
                if body
                    .get("locking_clause")
                    .and_then(Value::as_array)
                    .is_some_and(|l| !l.is_empty())
                {
                    self.locked_in(body.get("from_clause"));
                }
                self.walk_except(body, &["into_clause", "with_clause"], Action::Select);
            }
            "InsertStmt" => {
                self.target(body, Action::Insert);
                self.assigned(body, &["cols"]);
                if let Some(conflict) = body.get("on_conflict_clause").filter(|v| !v.is_null()) {
                    self.assigned_to(body, conflict, &["target_list"]);
                }
                // ON CONFLICT DO UPDATE updates; DO NOTHING (action 2) only inserts.
                if let Some(conflict) = body.get("on_conflict_clause").filter(|v| !v.is_null()) {
                    if conflict.get("action").and_then(Value::as_i64) != Some(2) {
                        self.target(body, Action::Update);
                    }
                }
                self.walk_except(body, &["relation", "with_clause"], Action::Select);
            }
            "UpdateStmt" => {
                self.target(body, Action::Update);
                self.assigned(body, &["target_list"]);
                self.walk_except(body, &["relation", "with_clause"], Action::Select);
            }
            "DeleteStmt" => {
                self.target(body, Action::Delete);
                self.walk_except(body, &["relation", "with_clause"], Action::Select);
            }
            "MergeStmt" => {
                for a in [Action::Insert, Action::Update, Action::Delete] {
                    self.target(body, a);
                }
                for clause in body
                    .get("merge_when_clauses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let clause = clause.get("node").unwrap_or(clause);
                    if let Some(when) = clause.get("MergeWhenClause") {
                        self.assigned_to(body, when, &["target_list"]);
                    }
                }
                self.walk_except(body, &["relation", "with_clause"], Action::Select);
            }
            "TruncateStmt" => self.walk(body, Action::Truncate),
            "LockStmt" => self.walk(body, Action::Lock),
            "CopyStmt" => {
                let is_from = body
                    .get("is_from")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                self.target(
                    body,
                    if is_from {
                        Action::Insert
                    } else {
                        Action::Select
                    },
                );
                self.st.copy_program |= body
                    .get("is_program")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                self.st.copy_file |= !str_field(body, "filename").is_empty();
                self.walk_except(body, &["relation"], Action::Select);
            }
            "ExplainStmt" | "PrepareStmt" | "DeclareCursorStmt" => self.nested_statement(tag, body),
            "CreateTableAsStmt" if nested::executes_prepared(body) => self.create_as_execute(body),
            // `DEALLOCATE ALL` has no name (a statement may be called "all": `DEALLOCATE
            // "all"` drops only that one).
            "ExecuteStmt" | "DeallocateStmt" => {
                let name = str_field(body, "name");
                let all = body.get("isall").and_then(Value::as_bool).unwrap_or(false);
                self.st.name = (!name.is_empty() && !all).then(|| name.to_owned());
                self.walk(body, Action::Select);
            }
            "DoStmt" => self.st.opaque = true,
            "DiscardStmt" | "ClosePortalStmt" | "TransactionStmt" => {
                self.session_statement(tag, body)
            }
            "VariableSetStmt" => {
                // Setting standard_conforming_strings to the value it is pinned to changes
                // nothing (drivers' own test suites do it before testing quoting).
                if !keeps_standard_strings(body) {
                    self.st.settings.push(setting_name(body));
                }
                self.walk(body, Action::Select);
            }
            "DropStmt" => {
                for name in body
                    .get("objects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let parts = strings(
                        name.get("node")
                            .and_then(|n| n.get("List"))
                            .and_then(|l| l.get("items")),
                    );
                    if let Some((last, rest)) = parts.split_last() {
                        let relation = RelName {
                            schema: rest.last().cloned(),
                            name: last.clone(),
                        };
                        self.st.accesses.push(Access {
                            relation,
                            action: Action::Ddl,
                        });
                    }
                }
                self.walk(body, Action::Ddl);
            }
            _ => {
                let action = ctx.unwrap_or(match self.st.kind {
                    Kind::Select => Action::Select,
                    _ if tag.ends_with("Stmt") => Action::Ddl,
                    _ => Action::Select,
                });
                self.walk(body, action);
            }
        }
        if pushed {
            self.scopes.pop();
        }
    }

    /// If `body` has a WITH clause: walks the CTE bodies (each sees the CTEs before it, or all of
    /// them when RECURSIVE) and pushes the CTE names for the rest of the statement.
    fn enter_with(&mut self, body: &Value) -> bool {
        let Some(with) = body.get("with_clause").filter(|v| !v.is_null()) else {
            return false;
        };
        let recursive = with
            .get("recursive")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let ctes: Vec<(&str, Option<&Value>)> = with
            .get("ctes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("node")?.get("CommonTableExpr"))
            .map(|c| (str_field(c, "ctename"), c.get("ctequery")))
            .collect();
        let all: HashSet<String> = ctes.iter().map(|(n, _)| (*n).to_owned()).collect();
        let mut visible = HashSet::new();
        for (name, query) in &ctes {
            self.scopes.push(if recursive {
                all.clone()
            } else {
                visible.clone()
            });
            if let Some(q) = query {
                self.walk(q, Action::Select);
            }
            self.scopes.pop();
            visible.insert((*name).to_owned());
        }
        self.scopes.push(all);
        true
    }

    /// The target of INSERT / UPDATE / DELETE / MERGE / COPY. PostgreSQL opens it as a table
    /// even when a CTE of the same name is in scope (`WITH t AS (...) DELETE FROM t` deletes
    /// from the table `t`), so CTE names do not shadow it.
    fn target(&mut self, body: &Value, action: Action) {
        if let Some(rel) = body.get("relation").filter(|v| !v.is_null()) {
            self.unscoped(|w| w.walk(rel, action));
        }
    }

    /// The columns `body`'s lists under `keys` assign (ResTarget names) in `body`'s target.
    fn assigned(&mut self, body: &Value, keys: &[&str]) {
        self.assigned_to(body, body, keys);
    }

    /// The columns `lists`' entries under `keys` assign in the target relation of `stmt`.
    fn assigned_to(&mut self, stmt: &Value, lists: &Value, keys: &[&str]) {
        let Some(rel) = stmt.get("relation").and_then(Value::as_object) else {
            return;
        };
        let relation = RelName {
            schema: rel
                .get("schemaname")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            name: rel
                .get("relname")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        };
        for key in keys {
            for item in lists
                .get(*key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let item = item.get("node").unwrap_or(item);
                let name = item
                    .get("ResTarget")
                    .and_then(|t| t.get("name"))
                    .and_then(Value::as_str);
                if let Some(name) = name.filter(|n| !n.is_empty()) {
                    let pair = (relation.clone(), name.to_lowercase());
                    if !self.st.assigned.contains(&pair) {
                        self.st.assigned.push(pair);
                    }
                }
            }
        }
    }

    /// Runs `f` with no CTE names in scope.
    fn unscoped(&mut self, f: impl FnOnce(&mut Self)) {
        let saved = std::mem::take(&mut self.scopes);
        f(self);
        self.scopes = saved;
    }

    /// DISCARD, CLOSE and transaction control: what they name, and whether they leave state
    /// behind the transaction.
    fn session_statement(&mut self, tag: &str, body: &Value) {
        match tag {
            // CLOSE name; CLOSE ALL has no name.
            "ClosePortalStmt" => {
                let name = str_field(body, "portalname");
                self.st.name = (!name.is_empty()).then(|| name.to_owned());
            }
            "TransactionStmt" => {
                use pg_query::protobuf::TransactionStmtKind as T;
                let kind = body
                    .get("kind")
                    .and_then(Value::as_i64)
                    .and_then(|k| T::try_from(k as i32).ok());
                self.st.outlives_transaction |= matches!(
                    kind,
                    Some(
                        T::TransStmtPrepare
                            | T::TransStmtCommitPrepared
                            | T::TransStmtRollbackPrepared
                    )
                );
                self.walk(body, Action::Select);
            }
            // DISCARD ALL | PLANS | SEQUENCES | TEMP: the name says which (`all` drops every
            // prepared statement and portal of the session).
            "DiscardStmt" => {
                // The parse tree's enum, by number; an unknown one is taken for ALL (the name
                // then drops every statement from the gateway's view: fail closed).
                let target = body
                    .get("target")
                    .and_then(Value::as_i64)
                    .and_then(|n| pg_query::protobuf::DiscardMode::try_from(n as i32).ok())
                    .map_or("DISCARD_ALL", |m| m.as_str_name());
                let target = target.strip_prefix("DISCARD_").unwrap_or(target);
                self.st.name = Some(target.to_ascii_lowercase());
            }
            _ => {}
        }
    }

    /// The relations a locking clause locks: every table in FROM, also inside subqueries and
    /// joins there (PostgreSQL applies the clause to a sub-query's tables), but not what a
    /// WITH query or a sub-link reads.
    fn locked_in(&mut self, v: Option<&Value>) {
        if let Some(v) = v {
            let mut found = Vec::new();
            collect_locked(v, &mut found);
            for rv in found {
                self.range_var(rv, Action::Lock);
            }
        }
    }

    /// Columns that filter, join, sort or group rows: an oracle on their values even when the
    /// values themselves are not returned.
    fn predicates(&mut self, map: &Map<String, Value>) {
        for key in PREDICATE_KEYS {
            if let Some(v) = map.get(*key).filter(|v| !v.is_null()) {
                column_names(v, &mut self.st.predicate_columns);
            }
        }
        // JOIN ... USING (a, b) lists bare names.
        if let Some(names) = map.get("using_clause") {
            for n in strings(Some(names)) {
                let n = n.to_lowercase();
                if !self.st.predicate_columns.contains(&n) {
                    self.st.predicate_columns.push(n);
                }
            }
        }
    }

    fn walk_except(&mut self, body: &Value, skip: &[&str], action: Action) {
        if let Some(map) = body.as_object() {
            for (k, v) in map {
                if !skip.contains(&k.as_str()) {
                    self.walk(v, action);
                }
            }
        }
    }

    fn walk(&mut self, v: &Value, action: Action) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| self.walk(i, action)),
            Value::Object(map) => self.object(map, action),
            _ => {}
        }
    }

    fn object(&mut self, map: &Map<String, Value>, action: Action) {
        if map.contains_key("relname") && map.contains_key("inh") {
            self.range_var(map, action);
            return;
        }
        self.predicates(map);
        // Field notation: PostgreSQL resolves `(x).name` (and `t.name` for a whole-row `t`) to
        // the call `name(x)` when `x` has no such field, e.g. `('/etc/passwd'::text).pg_read_file`.
        if let Some(body) = map.get("AIndirection") {
            self.attribute_names(strings(body.get("indirection")));
        }
        if let Some(body) = map.get("ColumnRef") {
            let fields = strings(body.get("fields"));
            if fields.len() > 1 {
                self.attribute_names(fields.into_iter().skip(1).collect());
            }
        }
        // Operators: an expression's (`A_Expr`: not BETWEEN, whose name is a keyword), a
        // sub-link's (`x op ANY (SELECT ...)`), a sort's (`ORDER BY x USING op`).
        if map.contains_key("lexpr") && map.contains_key("rexpr") && !is_between(map) {
            self.operator(map.get("name"));
        }
        self.operator(map.get("oper_name"));
        self.operator(map.get("use_op"));
        if map.contains_key("funcname") && map.contains_key("agg_star") {
            let parts = strings(map.get("funcname"));
            if let Some((name, rest)) = parts.split_last() {
                let schema = rest.last().cloned();
                // set_config(name, value, is_local) is SET by another spelling: record the
                // setting it changes, or that it changes one nobody can tell.
                if name == "set_config" && matches!(schema.as_deref(), None | Some("pg_catalog")) {
                    self.st.settings.push(set_config_name(map.get("args")));
                }
                self.st.functions.push(FuncName {
                    schema,
                    name: name.clone(),
                });
            }
        }
        // A nested statement (`{"SelectStmt": {...}}` inside a `node`, or a set operation's
        // branches, which are bare SelectStmt bodies with `larg`/`rarg`).
        if map.len() == 1 {
            if let Some((tag, body)) = map.iter().next() {
                if tag.ends_with("Stmt") && body.is_object() {
                    let nested_action = match tag.as_str() {
                        "SelectStmt" => Some(Action::Select),
                        _ => Some(action),
                    };
                    self.statement_node(tag, body, nested_action);
                    return;
                }
            }
        }
        if map.contains_key("with_clause") && map.contains_key("target_list") {
            // A bare SelectStmt body (set operation branch) may carry its own WITH.
            self.statement_node(
                "SelectStmt",
                &Value::Object(map.clone()),
                Some(Action::Select),
            );
            return;
        }
        for v in map.values() {
            self.walk(v, action);
        }
    }

    fn operator(&mut self, name: Option<&Value>) {
        let parts = strings(name);
        if let Some((op, rest)) = parts.split_last() {
            self.st.operators.push(FuncName {
                schema: rest.last().cloned(),
                name: op.clone(),
            });
        }
    }

    fn attribute_names(&mut self, names: Vec<String>) {
        self.st.attribute_calls.extend(
            names
                .into_iter()
                .map(|name| FuncName { schema: None, name }),
        );
    }

    fn range_var(&mut self, map: &Map<String, Value>, action: Action) {
        let name = map
            .get("relname")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let schema = map
            .get("schemaname")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if schema.is_none() && self.scopes.iter().any(|s| s.contains(&name)) {
            return; // a CTE in scope, not a relation
        }
        self.st.accesses.push(Access {
            relation: RelName { schema, name },
            action,
        });
    }
}

/// What `set_config`'s first argument names: a string constant, lower case, or
/// [`crate::DYNAMIC_SETTING`] when it is computed.
fn set_config_name(args: Option<&Value>) -> String {
    args.and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|a| {
            a.get("node")?
                .get("AConst")?
                .get("val")?
                .get("Sval")?
                .get("sval")?
                .as_str()
        })
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| crate::DYNAMIC_SETTING.to_owned())
}

/// The setting a `VariableSetStmt` body changes, lower case; `all` for `RESET ALL`.
fn setting_name(set: &Value) -> String {
    // kind 6 = VAR_RESET_ALL.
    if set.get("kind").and_then(Value::as_i64) == Some(6) {
        "all".to_owned()
    } else {
        str_field(set, "name").to_ascii_lowercase()
    }
}

/// `SET [LOCAL] standard_conforming_strings TO on` (or `true`, `yes`, `1`): a constant that
/// leaves the setting as the gateway pins it.
fn keeps_standard_strings(set: &Value) -> bool {
    // kind 1 = VAR_SET_VALUE.
    if set.get("kind").and_then(Value::as_i64) != Some(1)
        || !str_field(set, "name").eq_ignore_ascii_case("standard_conforming_strings")
    {
        return false;
    }
    let Some([arg]) = set.get("args").and_then(Value::as_array).map(Vec::as_slice) else {
        return false;
    };
    let Some(("AConst", c)) = node_of(arg) else {
        return false;
    };
    let val = c.get("val");
    let text = val
        .and_then(|v| v.get("Sval"))
        .and_then(|v| v.get("sval"))
        .and_then(Value::as_str);
    let int = val
        .and_then(|v| v.get("Ival"))
        .and_then(|v| v.get("ival"))
        .and_then(Value::as_i64);
    matches!(
        text.map(str::to_ascii_lowercase).as_deref(),
        Some("on" | "true" | "yes" | "1")
    ) || int == Some(1)
}

/// An `A_Expr` of a BETWEEN form: its name is the keyword, not an operator.
fn is_between(map: &Map<String, Value>) -> bool {
    use pg_query::protobuf::AExprKind as K;
    let kind = map.get("kind").and_then(Value::as_i64).unwrap_or(0);
    (K::AexprBetween as i64..=K::AexprNotBetweenSym as i64).contains(&kind)
}

fn node_of(v: &Value) -> Option<(&str, &Value)> {
    let (tag, body) = v.get("node")?.as_object()?.iter().next()?;
    Some((tag.as_str(), body))
}

/// Keys of FROM-clause nodes whose relations a locking clause does not reach: conditions,
/// output lists, WITH queries, functions. Anything else is followed (fail closed: an unknown
/// node counts as locking).
const NOT_LOCKED: &[&str] = &[
    "quals",
    "where_clause",
    "target_list",
    "having_clause",
    "with_clause",
    "functions",
    "sort_clause",
    "group_clause",
    "distinct_clause",
    "window_clause",
    "values_lists",
    "limit_offset",
    "limit_count",
    "locking_clause",
    "tablesample",
];

fn collect_locked<'a>(v: &'a Value, out: &mut Vec<&'a Map<String, Value>>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect_locked(i, out)),
        Value::Object(map) => {
            if map.contains_key("relname") && map.contains_key("inh") {
                out.push(map);
            } else {
                for (k, v) in map {
                    if !NOT_LOCKED.contains(&k.as_str()) {
                        collect_locked(v, out);
                    }
                }
            }
        }
        _ => {}
    }
}

/// `EXPLAIN (ANALYZE)`, `EXPLAIN (ANALYZE true)`, `EXPLAIN ANALYZE`: yes. `(ANALYZE false)`: no.
fn explain_analyzes(body: &Value) -> bool {
    body.get("options")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|o| {
            let Some(def) = o.get("node").and_then(|n| n.get("DefElem")) else {
                return false;
            };
            if str_field(def, "defname") != "analyze" {
                return false;
            }
            match def.get("arg").and_then(|a| a.get("node")) {
                None => true,
                Some(arg) => {
                    let text = arg.to_string().to_ascii_lowercase();
                    // Only the keyword forms turn it off. A numeric argument counts as "on"
                    // whatever its value: the analysis never depends on a number (the cache
                    // folds numeric literals, see normalize.rs).
                    !(text.contains("false") || text.contains("\"off\""))
                }
            }
        })
}
