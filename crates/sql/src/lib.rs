//! Statement analysis over PostgreSQL's own parser (libpg_query, via the `pg_query` crate).
//!
//! phigate decides from the parse tree, never from the SQL text: comments, quoting, case,
//! dollar quoting and unicode escapes are gone by the time we look. [`analyze`] turns a
//! statement string (one or many statements) into an [`Analysis`]: for each statement its kind,
//! every relation it touches and how (read, insert, update, delete, truncate, DDL), every
//! function it calls, the settings it changes, and the flags policy cares about (opaque code in
//! `DO`, `COPY ... PROGRAM`, `EXPLAIN ANALYZE`, ...).
//!
//! The tree is walked exhaustively: it is converted to a generic value and every field of every
//! node is visited, so a relation or a function call nested where nobody expected it (a CTE, a
//! subquery in `LIMIT`, a function in `FROM`, an `ON CONFLICT` clause) is still found. Relations
//! and function calls are recognised by shape, wherever they sit.
//!
//! [`Analyzer`] caches analyses by statement text: a repeated statement costs a hash lookup.

mod normalize;
mod walk;

pub use normalize::{cache_key, redact_literals};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use walk::analyze_tree;

/// The setting name recorded for `set_config(<expression>, ...)`: phigate cannot tell which
/// setting it changes, so policy refuses it for every role.
pub const DYNAMIC_SETTING: &str = "(computed setting name)";

/// A relation as written in the statement. `schema` is `None` when the name was unqualified; the
/// caller resolves it with the session's search_path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelName {
    pub schema: Option<String>,
    pub name: String,
}

impl std::fmt::Display for RelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A function as called. `schema` is `None` when unqualified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FuncName {
    pub schema: Option<String>,
    pub name: String,
}

impl std::fmt::Display for FuncName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// How a statement touches a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Select,
    Insert,
    Update,
    Delete,
    Truncate,
    /// Row locks (`SELECT ... FOR UPDATE`, `LOCK TABLE`).
    Lock,
    /// Creating, altering or dropping it.
    Ddl,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Select => "select",
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Truncate => "truncate",
            Action::Lock => "lock",
            Action::Ddl => "ddl",
        }
    }

    pub fn is_write(self) -> bool {
        !matches!(self, Action::Select)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Access {
    pub relation: RelName,
    pub action: Action,
}

/// What a statement is, as policy rules name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Truncate,
    Copy,
    Explain,
    Prepare,
    Execute,
    Deallocate,
    Cursor,
    Do,
    Call,
    Set,
    Show,
    Transaction,
    Listen,
    Notify,
    Privilege,
    Lock,
    Maintenance,
    Session,
    Ddl(DdlKind),
    /// A statement type phigate does not classify; restricted roles are refused it.
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdlKind {
    Create,
    Alter,
    Drop,
}

impl Kind {
    /// The names policy rules use (`kinds = ["ddl", "drop"]`): the specific one and its family.
    pub fn names(&self) -> &'static [&'static str] {
        match self {
            Kind::Select => &["select"],
            Kind::Insert => &["insert", "write"],
            Kind::Update => &["update", "write"],
            Kind::Delete => &["delete", "write"],
            Kind::Merge => &["merge", "write"],
            Kind::Truncate => &["truncate", "write", "destructive"],
            Kind::Copy => &["copy"],
            Kind::Explain => &["explain"],
            Kind::Prepare => &["prepare"],
            Kind::Execute => &["execute"],
            Kind::Deallocate => &["deallocate"],
            Kind::Cursor => &["cursor"],
            // Opaque code can do anything a statement can: rules about writes, DDL and privilege
            // changes apply to it as if it did all of them.
            Kind::Do => &["do", "write", "ddl", "destructive", "privilege"],
            Kind::Call => &["call", "write", "ddl", "destructive", "privilege"],
            Kind::Set => &["set"],
            Kind::Show => &["show"],
            Kind::Transaction => &["transaction"],
            Kind::Listen => &["listen"],
            Kind::Notify => &["notify"],
            Kind::Privilege => &["privilege"],
            Kind::Lock => &["lock"],
            Kind::Maintenance => &["maintenance"],
            Kind::Session => &["session"],
            Kind::Ddl(DdlKind::Create) => &["ddl", "create"],
            Kind::Ddl(DdlKind::Alter) => &["ddl", "alter"],
            Kind::Ddl(DdlKind::Drop) => &["ddl", "drop", "destructive"],
            Kind::Other(_) => &["other"],
        }
    }

    pub fn label(&self) -> &str {
        match self {
            Kind::Other(tag) => tag,
            other => other.names()[0],
        }
    }
}

/// One statement of a statement string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub kind: Kind,
    /// The parse node's name, e.g. `SelectStmt`, for logs and audit.
    pub node: String,
    pub accesses: Vec<Access>,
    pub functions: Vec<FuncName>,
    /// Names used in field notation (`(x).name`, `t.name`): PostgreSQL calls the one-argument
    /// function `name(x)` when `x` has no field of that name, so these may be function calls
    /// too. Policy checks them against the functions it refuses by name.
    pub attribute_calls: Vec<FuncName>,
    /// Operators used (`=`, `OPERATOR(public.###)`, `x ### ANY (...)`, `ORDER BY x USING <`):
    /// each runs a function, and a user-defined one may run anything. Not resolved by type: a
    /// name is what the policy can check.
    pub operators: Vec<FuncName>,
    /// Settings changed (`SET name`, `RESET name`; `RESET ALL` is `all`; also the setting of
    /// `ALTER ROLE / DATABASE / SYSTEM ... SET name`), lower case.
    pub settings: Vec<String>,
    /// PREPARE / EXECUTE / DEALLOCATE name, DECLARE cursor name.
    pub name: Option<String>,
    /// Executes code phigate cannot see into (`DO`).
    pub opaque: bool,
    /// `COPY ... PROGRAM`.
    pub copy_program: bool,
    /// `COPY ... TO/FROM 'file'` on the server.
    pub copy_file: bool,
    /// `EXPLAIN ANALYZE`: the inner statement runs.
    pub explain_analyze: bool,
    /// Leaves state behind that outlives its transaction: `DECLARE ... WITH HOLD`,
    /// `PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`.
    pub outlives_transaction: bool,
    /// For PREPARE, DECLARE and EXPLAIN: the statement inside, analysed on its own.
    pub inner: Option<Box<Statement>>,
    /// Column names (lower case, unqualified) used to filter, join, sort or group rows: in
    /// WHERE, HAVING, ORDER BY, GROUP BY, DISTINCT ON, JOIN ... ON / USING, window clauses.
    /// Over-approximate: names in a subquery inside those clauses count too.
    pub predicate_columns: Vec<String>,
    /// Columns an INSERT, UPDATE, ON CONFLICT DO UPDATE or MERGE names as its targets, with the
    /// relation they belong to (lower case). An INSERT without a column list names none: the
    /// values go to the table's columns by position.
    pub assigned: Vec<(RelName, String)>,
}

impl Statement {
    fn new(kind: Kind, node: &str) -> Self {
        Statement {
            kind,
            node: node.to_owned(),
            accesses: Vec::new(),
            functions: Vec::new(),
            attribute_calls: Vec::new(),
            operators: Vec::new(),
            settings: Vec::new(),
            name: None,
            opaque: false,
            copy_program: false,
            copy_file: false,
            explain_analyze: false,
            outlives_transaction: false,
            inner: None,
            predicate_columns: Vec::new(),
            assigned: Vec::new(),
        }
    }
}

/// The analysis of one statement string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Analysis {
    Parsed(Vec<Statement>),
    /// The parser refused it: its message, and a byte position when it names a token.
    Invalid {
        message: String,
        position: Option<usize>,
    },
}

/// Statements longer than this are refused unanalysed: parsing cost and the parse tree's memory
/// grow with the text, and one session must not stall the others.
pub const MAX_ANALYZED_BYTES: usize = 1 << 20;

/// Texts longer than this are analysed but not cached.
pub const MAX_CACHED_BYTES: usize = 16 * 1024;

/// Parses and analyses `sql`. Never panics: a failure anywhere is an `Invalid` analysis, which
/// policy refuses.
pub fn analyze(sql: &str) -> Analysis {
    if sql.len() > MAX_ANALYZED_BYTES {
        return Analysis::Invalid {
            message: format!(
                "statement of {} bytes exceeds the {MAX_ANALYZED_BYTES}-byte limit for analysis",
                sql.len()
            ),
            position: None,
        };
    }
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0));
    let result = match parsed {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let message = match e {
                pg_query::Error::Parse(m) => m,
                other => other.to_string(),
            };
            let position = error_position(sql, &message);
            return Analysis::Invalid { message, position };
        }
        Err(_) => {
            return Analysis::Invalid {
                message: "statement could not be analysed".into(),
                position: None,
            }
        }
    };
    match serde_json::to_value(&result.protobuf) {
        Ok(tree) => match std::panic::catch_unwind(|| analyze_tree(&tree)) {
            Ok(Some(stmts)) => Analysis::Parsed(stmts),
            _ => Analysis::Invalid {
                message: "statement could not be analysed".into(),
                position: None,
            },
        },
        Err(_) => Analysis::Invalid {
            message: "statement could not be analysed".into(),
            position: None,
        },
    }
}

/// `syntax error at or near "X"`: the 1-based character position of the first `X` (what
/// PostgreSQL would report for the usual case of a single occurrence).
fn error_position(sql: &str, message: &str) -> Option<usize> {
    let token = message.split("at or near \"").nth(1)?.strip_suffix('"')?;
    let byte = sql.find(token)?;
    Some(sql[..byte].chars().count() + 1)
}

/// Analyses with a cache keyed by statement text. Bounded: when full, it starts over (cheap, and
/// a working set that large is not a cache's to keep).
pub struct Analyzer {
    cache: Mutex<HashMap<Arc<str>, Arc<Analysis>>>,
    capacity: usize,
}

impl Analyzer {
    pub fn new(capacity: usize) -> Self {
        Analyzer {
            cache: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        let key = cache_key(sql);
        if let Some(hit) = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(key.as_ref()).cloned())
        {
            return hit;
        }
        let analysis = Arc::new(analyze(sql));
        // A parser error quotes the offending token, which may be a number: an invalid
        // statement is cached under its exact text only.
        let key: &str = match (&*analysis, &key) {
            (Analysis::Invalid { .. }, std::borrow::Cow::Owned(_)) => sql,
            _ => key.as_ref(),
        };
        if key.len() > MAX_CACHED_BYTES {
            return analysis;
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= self.capacity {
                cache.clear();
            }
            cache.insert(Arc::from(key), analysis.clone());
        }
        analysis
    }

    pub fn len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Analyzer {
    fn default() -> Self {
        Analyzer::new(10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicate_columns_are_collected_from_every_clause() {
        let Analysis::Parsed(st) = analyze(
            "SELECT p.id FROM patients p JOIN visits v USING (mrn) JOIN x ON x.a = p.b \
             WHERE p.ssn LIKE '1%' AND p.id IN (SELECT id FROM t WHERE phone = '1') \
             GROUP BY zip HAVING max(dob) > now() ORDER BY last_name",
        ) else {
            panic!("parses");
        };
        let mut cols = st[0].predicate_columns.clone();
        cols.sort();
        for want in ["a", "b", "dob", "last_name", "mrn", "phone", "ssn", "zip"] {
            assert!(
                cols.iter().any(|c| c == want),
                "{want} missing from {cols:?}"
            );
        }
        assert!(!cols.iter().any(|c| c == "~~" || c == "p"), "{cols:?}");
        let Analysis::Parsed(st) = analyze("SELECT ssn, first_name FROM patients") else {
            panic!("parses");
        };
        assert!(st[0].predicate_columns.is_empty());
    }

    #[test]
    fn operators_are_collected_with_their_schema() {
        let ops = |sql: &str| {
            let Analysis::Parsed(st) = analyze(sql) else {
                panic!("parses: {sql}");
            };
            st[0]
                .operators
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(ops("SELECT 1 + 2 = 3"), vec!["=", "+"]);
        assert_eq!(ops("SELECT OPERATOR(public.###) 1"), vec!["public.###"]);
        assert_eq!(ops("SELECT 1 WHERE 1 ### ALL (SELECT 2)"), vec!["###"]);
        assert_eq!(ops("SELECT a FROM t ORDER BY a USING ~<~"), vec!["~<~"]);
        assert_eq!(ops("SELECT 'a' LIKE 'b'"), vec!["~~"]);
        assert_eq!(
            ops("SELECT * FROM (SELECT 1 ### 2) s"),
            vec!["###"],
            "inside a subquery"
        );
        assert!(ops("SELECT 2 BETWEEN 1 AND 3").is_empty());
        assert_eq!(
            ops("EXPLAIN SELECT 1 ### 2"),
            vec!["###"],
            "an inner statement's"
        );
    }

    #[test]
    fn assigned_columns_name_their_relation() {
        let cols = |sql: &str| -> Vec<String> {
            let Analysis::Parsed(st) = analyze(sql) else {
                panic!("{sql} parses");
            };
            st.iter()
                .flat_map(|s| s.assigned.iter())
                .map(|(r, c)| format!("{r}:{c}"))
                .collect()
        };
        assert_eq!(
            cols("UPDATE members SET Email = 'x', plan = 'y' WHERE id = 1"),
            ["members:email", "members:plan"]
        );
        assert_eq!(
            cols("INSERT INTO public.members (name, plan) VALUES ('a', 'b')"),
            ["public.members:name", "public.members:plan"]
        );
        assert_eq!(
            cols("INSERT INTO m (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET zip = '1'"),
            ["m:id", "m:zip"]
        );
        assert_eq!(
            cols("WITH u AS (UPDATE members SET (a, b) = (1, 2) RETURNING id) SELECT * FROM u"),
            ["members:a", "members:b"]
        );
        assert_eq!(
            cols(
                "MERGE INTO m USING s ON m.id = s.id WHEN MATCHED THEN UPDATE SET email = s.e \
                  WHEN NOT MATCHED THEN INSERT (id, zip) VALUES (s.id, s.z)"
            ),
            ["m:email", "m:id", "m:zip"]
        );
        assert!(cols("INSERT INTO members VALUES (1, 'a')").is_empty());
        assert!(cols("DELETE FROM members WHERE id = 1").is_empty());
    }

    /// The cache folds numeric literals; that is only sound if the analysis of a statement and
    /// of its folded key are the same.
    #[test]
    fn analysis_does_not_depend_on_numeric_literals() {
        let corpus = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345",
            "SELECT * FROM patients LIMIT 10 OFFSET 5",
            "EXPLAIN (ANALYZE 1) DELETE FROM patients WHERE id = 3",
            "EXPLAIN (ANALYZE 0) DELETE FROM patients WHERE id = 3",
            "UPDATE encounters SET department_id = 7 WHERE id = 99",
            "SELECT pg_sleep(1.5), pg_terminate_backend(4242)",
            "SET statement_timeout = 5000",
            "FETCH 10 FROM c",
            "SELECT a[1:2], 1e10, 0x1F FROM t WHERE x IN (1, 2, 3)",
            "COPY (SELECT 1) TO STDOUT",
            "SELECT (42).pg_terminate_backend",
            "WITH x AS (SELECT 1 AS n) DELETE FROM t WHERE id = 1",
        ];
        for sql in corpus {
            let key = cache_key(sql);
            assert_ne!(key.as_ref(), sql, "{sql}: nothing folded");
            assert_eq!(analyze(sql), analyze(&key), "{sql}");
        }
    }

    #[test]
    fn invalid_statements_keep_their_own_message() {
        let a = Analyzer::default();
        let one = a.analyze("SELECT 1 2");
        let other = a.analyze("SELECT 5 6");
        assert!(
            matches!(&*one, Analysis::Invalid { message, .. } if message.contains("\"2\"")),
            "{one:?}"
        );
        assert!(
            matches!(&*other, Analysis::Invalid { message, .. } if message.contains("\"6\"")),
            "{other:?}"
        );
    }
}
