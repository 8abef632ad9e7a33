use super::*;

fn policy() -> Policy {
    let text = r#"
[[role]]
name = "ai-agent"
[[role.grant]]
schema = "public"
tables = ["patients", "encounters"]
actions = ["select"]

[[role]]
name = "clinician"
[[role.grant]]
schema = "public"
actions = ["select", "write"]

[[role]]
name = "admin"
restricted = false
[[role.grant]]
schema = "*"
actions = ["*"]

[[role]]
name = "auditor"
read_only = true
[[role.grant]]
schema = "public"
actions = ["*"]

[[role]]
name = "reviewer"

[[role]]
name = "intake"
[[role.grant]]
schema = "public"
tables = ["lab_results"]
actions = ["insert"]

[[rule]]
name = "agent-writes-need-approval"
roles = ["ai-agent"]
kinds = ["write", "ddl", "lock"]
action = "require_approval"

[[rule]]
name = "destructive-ddl"
roles = ["admin"]
kinds = ["destructive"]
action = "require_approval"
"#;
    #[derive(serde::Deserialize)]
    struct File {
        role: Vec<RoleConfig>,
        rule: Vec<RuleConfig>,
    }
    let f: File = toml::from_str(text).expect("test policy parses");
    let builtins: HashSet<String> = [
        "count",
        "max",
        "now",
        "lower",
        "upper",
        "pg_read_file",
        "set_config",
        "current_setting",
        "pg_sleep",
        "pg_stat_get_activity",
        "pg_stat_get_backend_activity",
        "pg_stat_get_backend_idset",
        "pg_terminate_backend",
        "ts_stat",
        "generate_series",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(
        [
            "=", "<>", "<", ">", "<=", ">=", "+", "-", "*", "/", "||", "~~", "~~*", "!~~", "~",
        ]
        .iter()
        .map(|op| format!("operator {op}")),
    )
    .collect();
    Policy::new(&f.role, &f.rule)
        .expect("valid")
        .with_builtins(Arc::new(builtins))
}

fn decide(role: &str, sql: &str) -> Decision {
    let p = policy();
    let role = p.role(role).expect("role");
    p.decide(&role, &phigate_sql::analyze(sql), &[])
}

fn verdict(d: &Decision) -> String {
    match d {
        Decision::Allow => "allow".into(),
        Decision::Deny(r) => format!("deny:{}", r.rule),
        Decision::RequireApproval(r) => format!("approve:{}", r.rule),
    }
}

#[test]
fn decisions_table() {
    let cases: &[(&str, &str, &str)] = &[
        ("ai-agent", "SELECT * FROM patients", "allow"),
        ("ai-agent", "select count(*) from PUBLIC.Patients", "allow"),
        ("ai-agent", "SELECT * FROM lab_results", "deny:grants"),
        (
            "ai-agent",
            "DELETE FROM patients",
            "approve:agent-writes-need-approval",
        ),
        (
            "ai-agent",
            "WITH d AS (DELETE FROM patients RETURNING *) SELECT * FROM d",
            "approve:agent-writes-need-approval",
        ),
        (
            "ai-agent",
            "SELECT 1; DROP TABLE patients",
            "approve:agent-writes-need-approval",
        ),
        (
            "ai-agent",
            "SELECT pg_read_file('/etc/passwd')",
            "deny:dangerous-function",
        ),
        (
            "ai-agent",
            "SELECT set_config('role', 'postgres', false)",
            "deny:role-switch",
        ),
        // Opaque code is held to the rules about what it could do.
        (
            "admin",
            "DO $$ BEGIN EXECUTE 'DROP TABLE patients'; END $$",
            "approve:destructive-ddl",
        ),
        ("admin", "CALL public.cleanup()", "approve:destructive-ddl"),
        // Catalog writes would unpin settings (pg_settings) or worse.
        (
            "admin",
            "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
            "deny:catalog-write",
        ),
        // Setting it to the value it is pinned to changes nothing.
        ("admin", "SET standard_conforming_strings TO on", "allow"),
        ("admin", "SET standard_conforming_strings = 1", "allow"),
        (
            "admin",
            "SET LOCAL standard_conforming_strings = false",
            "deny:pinned-setting",
        ),
        // A trusted role may change its encoding (the gateway follows it, and ends the
        // session for one it cannot analyse); a restricted role sets it when it connects.
        ("admin", "SET client_encoding TO 'LATIN1'", "allow"),
        ("admin", "SET NAMES 'WIN1252'", "allow"),
        (
            "ai-agent",
            "SET client_encoding TO 'LATIN1'",
            "deny:pinned-setting",
        ),
        ("ai-agent", "SET NAMES 'LATIN1'", "deny:pinned-setting"),
        (
            "ai-agent",
            "SELECT set_config('client_encoding', 'LATIN1', false)",
            "deny:pinned-setting",
        ),
        (
            "ai-agent",
            "SELECT set_config('jit', 'off', false)",
            "allow",
        ),
        (
            "ai-agent",
            "SELECT current_setting('jit'), set_config('jit', 'off', false)",
            "allow",
        ),
        (
            "ai-agent",
            "SELECT set_config('search_path', 'evil', true)",
            "deny:pinned-setting",
        ),
        (
            "admin",
            "SELECT set_config('work_mem', '8MB', false)",
            "allow",
        ),
        (
            "admin",
            "SELECT set_config(lower('STANDARD_CONFORMING_STRINGS'), 'off', false)",
            "deny:pinned-setting",
        ),
        (
            "admin",
            "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false)",
            "deny:pinned-setting",
        ),
        // The identity settings the gateway sets for the database: nobody changes them.
        (
            "admin",
            "SET phigate.subject = 'someone'",
            "deny:pinned-setting",
        ),
        (
            "ai-agent",
            "SET LOCAL phigate.role = 'admin'",
            "deny:pinned-setting",
        ),
        ("admin", "RESET phigate.subject", "deny:pinned-setting"),
        ("ai-agent", "SET phigate.reason = 'coding fix'", "allow"),
        (
            "ai-agent",
            "SET phigate.reasons = 'x'",
            "deny:pinned-setting",
        ),
        (
            "admin",
            "SELECT set_config('phigate.subject', 'someone', false)",
            "deny:pinned-setting",
        ),
        (
            "ai-agent",
            "SELECT current_setting('phigate.subject')",
            "allow",
        ),
        // The masking token function, by any spelling: no dictionary oracle.
        (
            "admin",
            "SELECT phigate_token('Jane')",
            "deny:gateway-internal",
        ),
        (
            "ai-agent",
            "SELECT ('Jane'::text).phigate_token",
            "deny:gateway-internal",
        ),
        (
            "ai-agent",
            "SELECT (x).PHIGATE_TOKEN FROM (VALUES ('Smith')) v(x)",
            "deny:gateway-internal",
        ),
        ("ai-agent", "SET ROLE postgres", "deny:role-switch"),
        ("ai-agent", "SET search_path = evil", "deny:pinned-setting"),
        ("ai-agent", "SET application_name = 'x'", "allow"),
        (
            "ai-agent",
            "DO $$ BEGIN DELETE FROM patients; END $$",
            "deny:opaque-code",
        ),
        ("ai-agent", "SELECT * FROM pg_stats", "deny:catalog-leak"),
        (
            "ai-agent",
            "SELECT query FROM pg_catalog.pg_stat_activity",
            "deny:catalog-leak",
        ),
        ("ai-agent", "SELECT relname FROM pg_class", "allow"),
        ("ai-agent", "SELECT my_func(1)", "deny:unknown-function"),
        // An operator runs a function: one only user-defined functions implement is unknown.
        ("ai-agent", "SELECT 1 ### 2", "deny:unknown-function"),
        ("ai-agent", "SELECT OPERATOR(public.###) 1", "deny:unknown-function"),
        ("ai-agent", "SELECT OPERATOR(public.=) 1", "deny:unknown-function"),
        ("ai-agent", "SELECT 1 WHERE 1 ### ANY (SELECT 2)", "deny:unknown-function"),
        ("ai-agent", "SELECT 1 ORDER BY 1 USING ###", "deny:unknown-function"),
        ("ai-agent", "SELECT 1 WHERE 1 = 1 AND 2 BETWEEN 1 AND 3", "allow"),
        ("ai-agent", "SELECT OPERATOR(pg_catalog.+) 1", "allow"),
        (
            "ai-agent",
            "COPY patients TO PROGRAM 'curl x'",
            "deny:server-copy",
        ),
        ("ai-agent", "COPY patients TO STDOUT", "allow"),
        (
            "ai-agent",
            "COPY patients FROM STDIN",
            "approve:agent-writes-need-approval",
        ),
        (
            "ai-agent",
            "EXPLAIN ANALYZE DELETE FROM patients",
            "approve:agent-writes-need-approval",
        ),
        (
            "ai-agent",
            "PREPARE p AS DELETE FROM patients",
            "approve:agent-writes-need-approval",
        ),
        ("ai-agent", "selec 1", "deny:syntax"),
        (
            "ai-agent",
            "SELECT * FROM (SELECT * FROM lab_results) s",
            "deny:grants",
        ),
        (
            "ai-agent",
            "SELECT (SELECT max(value) FROM lab_results)",
            "deny:grants",
        ),
        (
            "ai-agent",
            "SELECT * FROM patients LIMIT (SELECT count(*) FROM lab_results)",
            "deny:grants",
        ),
        ("clinician", "INSERT INTO lab_results VALUES (1)", "allow"),
        ("clinician", "TRUNCATE lab_results", "deny:grants"),
        ("clinician", "CREATE TABLE x (a int)", "deny:grants"),
        ("admin", "CREATE TABLE x (a int)", "allow"),
        ("admin", "DROP TABLE patients", "approve:destructive-ddl"),
        ("admin", "TRUNCATE patients", "approve:destructive-ddl"),
        ("admin", "SET ROLE postgres", "allow"),
        (
            "admin",
            "SELECT pg_read_file('x')",
            "deny:dangerous-function",
        ),
        ("auditor", "SELECT * FROM lab_results", "allow"),
        (
            "auditor",
            "UPDATE lab_results SET value = 1",
            "deny:read-only",
        ),
        (
            "auditor",
            "SELECT * FROM lab_results FOR UPDATE",
            "deny:read-only",
        ),
        // PostgreSQL opens the target of INSERT / UPDATE / DELETE as a table even when a CTE of
        // the same name is in scope: the CTE must not hide it.
        (
            "reviewer",
            "WITH lab_results AS (SELECT 1 AS id) DELETE FROM lab_results",
            "deny:grants",
        ),
        (
            "reviewer",
            "WITH patients AS (SELECT 1) UPDATE patients SET city = 'x'",
            "deny:grants",
        ),
        (
            "reviewer",
            "WITH d AS (SELECT 1) INSERT INTO d VALUES (1)",
            "deny:grants",
        ),
        (
            "reviewer",
            "WITH a AS (SELECT 1), b AS (DELETE FROM a RETURNING 1) SELECT * FROM b",
            "deny:grants",
        ),
        (
            "clinician",
            "WITH patients AS (SELECT 1) SELECT * INTO patients FROM patients",
            "deny:grants",
        ),
        (
            "reviewer",
            "WITH lab_results AS (SELECT 1 AS id) SELECT * FROM lab_results",
            "allow",
        ),
        // A pg_-prefixed name is a catalog relation only if the catalog has it.
        ("reviewer", "SELECT * FROM pg_notes", "deny:grants"),
        ("reviewer", "SELECT relname FROM pg_class", "allow"),
        ("reviewer", "SELECT * FROM pg_stats", "deny:catalog-leak"),
        // Field notation calls functions: `(x).f` is `f(x)`.
        (
            "ai-agent",
            "SELECT ('/etc/passwd'::text).pg_read_file",
            "deny:dangerous-function",
        ),
        (
            "admin",
            "SELECT (0).pg_terminate_backend",
            "deny:dangerous-function",
        ),
        (
            "ai-agent",
            "SELECT (1).pg_stat_get_backend_activity",
            "deny:catalog-leak",
        ),
        ("ai-agent", "SELECT p.id, (p).mrn FROM patients p", "allow"),
        // Functions that run SQL text or show other sessions' statements.
        (
            "reviewer",
            "SELECT * FROM ts_stat('SELECT to_tsvector(ssn) FROM patients')",
            "deny:dangerous-function",
        ),
        (
            "ai-agent",
            "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
            "deny:catalog-leak",
        ),
        // Dangerous in any schema (extensions live where they are installed).
        (
            "admin",
            "SELECT ext.dblink_exec('dbname=x', 'DROP TABLE t')",
            "deny:dangerous-function",
        ),
        // What a guard refuses is denied, not held for approval.
        (
            "ai-agent",
            "COPY patients FROM PROGRAM 'id'",
            "deny:server-copy",
        ),
        (
            "ai-agent",
            "DELETE FROM patients WHERE pg_read_file('/etc/passwd') IS NULL",
            "deny:dangerous-function",
        ),
        // Row locks are locks for rules too, as LOCK TABLE is.
        (
            "ai-agent",
            "SELECT * FROM patients FOR UPDATE",
            "approve:agent-writes-need-approval",
        ),
        // A locking clause reaches the tables of sub-queries and LATERAL in FROM, and a
        // sub-link's own clause locks its tables; a WITH query's tables are not locked by the
        // outer clause.
        (
            "ai-agent",
            "SELECT id FROM (SELECT id FROM patients) s FOR UPDATE",
            "approve:agent-writes-need-approval",
        ),
        (
            "ai-agent",
            "SELECT * FROM lab_results l, LATERAL (SELECT id FROM patients p WHERE p.id = l.patient_id) x FOR NO KEY UPDATE OF x",
            "approve:agent-writes-need-approval",
        ),
        (
            "ai-agent",
            "SELECT * FROM lab_results WHERE patient_id IN (SELECT id FROM patients FOR SHARE)",
            "approve:agent-writes-need-approval",
        ),
        (
            "ai-agent",
            "WITH w AS (SELECT id FROM patients FOR KEY SHARE) SELECT * FROM w",
            "approve:agent-writes-need-approval",
        ),
        (
            "ai-agent",
            "SELECT * FROM ((SELECT id FROM patients) UNION ALL (SELECT id FROM patients)) u FOR UPDATE",
            "approve:agent-writes-need-approval",
        ),
        (
            "ai-agent",
            "LOCK TABLE patients",
            "approve:agent-writes-need-approval",
        ),
        // standard_conforming_strings = off would make the database read string literals
        // differently from phigate: nobody may change it, in the session or for later ones.
        (
            "ai-agent",
            "SET standard_conforming_strings = off",
            "deny:pinned-setting",
        ),
        (
            "admin",
            "SET standard_conforming_strings TO off",
            "deny:pinned-setting",
        ),
        (
            "admin",
            "ALTER DATABASE clinic SET standard_conforming_strings = off",
            "deny:pinned-setting",
        ),
        (
            "admin",
            "ALTER ROLE app SET standard_conforming_strings = off",
            "deny:pinned-setting",
        ),
        ("admin", "ALTER ROLE app SET work_mem = '8MB'", "allow"),
        (
            "ai-agent",
            "ALTER ROLE app SET search_path = evil",
            "deny:pinned-setting",
        ),
        // ON CONFLICT DO NOTHING only inserts; DO UPDATE updates too.
        (
            "intake",
            "INSERT INTO lab_results VALUES (1) ON CONFLICT DO NOTHING",
            "allow",
        ),
        (
            "intake",
            "INSERT INTO lab_results VALUES (1) ON CONFLICT (id) DO UPDATE SET value = 2",
            "deny:grants",
        ),
        // SET CONSTRAINTS is transaction control, not an unknown statement.
        ("clinician", "SET CONSTRAINTS ALL DEFERRED", "allow"),
    ];
    let mut failures = Vec::new();
    for (role, sql, want) in cases {
        let got = verdict(&decide(role, sql));
        if got != *want {
            failures.push(format!("{role}: {sql}\n   want {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn catalog_relations_are_sorted_for_binary_search() {
    let list = builtin::CATALOG_RELATIONS;
    assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    for name in ["pg_class", "pg_stats", "pg_stat_activity", "pg_views"] {
        assert!(builtin::is_catalog_name(name), "{name}");
    }
    assert!(!builtin::is_catalog_name("pg_notes"));
}

#[test]
fn denial_names_the_rule_and_statement() {
    let Decision::Deny(r) = decide("ai-agent", "SELECT * FROM lab_results") else {
        panic!("must deny")
    };
    assert_eq!(
        r.message,
        "phigate: SELECT on public.lab_results denied by rule grants"
    );
    assert_eq!(r.sqlstate, "42501");
    assert!(r.hint.contains("ai-agent"));
}

#[test]
fn bad_config_is_rejected() {
    let role = RoleConfig {
        name: "r".into(),
        restricted: true,
        read_only: false,
        search_path: vec!["public".into()],
        statement_timeout: Some("soon".into()),
        idle_timeout: None,
        transaction_timeout: None,
        max_sessions: None,
        allow_functions: vec![],
        grants: vec![],
        masked: false,
        masking: Default::default(),
        phi_predicates: RuleAction::Deny,
        record: None,
    };
    assert!(matches!(
        Policy::new(&[role], &[]),
        Err(PolicyError::BadDuration { .. })
    ));
}

#[test]
fn reading_a_view_counts_as_reading_what_is_under_it() {
    let rel = |s: &str, n: &str| RelName {
        schema: Some(s.into()),
        name: n.into(),
    };
    let mut views = HashMap::new();
    // patient_summary reads patients; lab_view reads lab_results through another view.
    views.insert(
        rel("public", "patient_summary"),
        vec![rel("public", "patients")],
    );
    views.insert(
        rel("public", "inner_labs"),
        vec![rel("public", "lab_results")],
    );
    views.insert(rel("public", "lab_view"), vec![rel("public", "inner_labs")]);
    let text = r#"
[[role]]
name = "viewer"
[[role.grant]]
schema = "public"
tables = ["patient_summary", "lab_view", "inner_labs", "patients"]
actions = ["select"]
"#;
    #[derive(serde::Deserialize)]
    struct File {
        role: Vec<RoleConfig>,
    }
    let f: File = toml::from_str(text).expect("parses");
    let p = Policy::new(&f.role, &[])
        .expect("valid")
        .with_views(Arc::new(views));
    let role = p.role("viewer").expect("role");
    let d = |sql: &str| verdict(&p.decide(&role, &phigate_sql::analyze(sql), &[]));
    assert_eq!(d("SELECT * FROM patient_summary"), "allow");
    // lab_view is granted, but lab_results under it is not.
    assert_eq!(d("SELECT * FROM lab_view"), "deny:grants");
    let Decision::Deny(r) = p.decide(&role, &phigate_sql::analyze("SELECT * FROM lab_view"), &[])
    else {
        panic!("must deny")
    };
    assert!(r.message.contains("public.lab_results"), "{}", r.message);
}

#[test]
fn restricted_roles_have_no_cross_session_side_channels_or_unbounded_settings() {
    let text = r#"
[[role]]
name = "masked-agent"
masked = true
[[role.grant]]
schema = "public"
tables = ["patients"]
actions = ["select"]

[[role]]
name = "clinician"
[[role.grant]]
schema = "public"
tables = ["patients"]
actions = ["select"]
"#;
    #[derive(serde::Deserialize)]
    struct File {
        role: Vec<RoleConfig>,
    }
    let f: File = toml::from_str(text).expect("parses");
    let p = Policy::new(&f.role, &[]).expect("valid");
    let d = |role: &str, sql: &str| {
        let role = p.role(role).expect("role");
        verdict(&p.decide(&role, &phigate_sql::analyze(sql), &[]))
    };
    for sql in [
        "SELECT pg_try_advisory_lock(42)",
        "SELECT pg_try_advisory_xact_lock(1, 2)",
        "SELECT pg_advisory_lock_shared(42)",
        "SELECT pg_catalog.pg_try_advisory_lock_shared(42)",
    ] {
        assert_eq!(d("clinician", sql), "deny:advisory-lock", "{sql}");
        assert_eq!(d("masked-agent", sql), "deny:advisory-lock", "{sql}");
    }
    // Nothing that outlives the transaction (a reload, the timeouts).
    for sql in [
        "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM patients",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
    ] {
        assert_eq!(d("clinician", sql), "deny:outlives-transaction", "{sql}");
    }
    assert_ne!(
        d("clinician", "DECLARE c CURSOR FOR SELECT * FROM patients"),
        "deny:outlives-transaction"
    );
    // Giving back is fine (connection pools call it on every reset).
    assert_ne!(
        d("clinician", "SELECT pg_advisory_unlock_all()"),
        "deny:advisory-lock"
    );
    // Notification payloads are not masked: a masked role may not receive them.
    assert_eq!(d("masked-agent", "LISTEN ch"), "deny:masked-listen");
    assert_eq!(d("masked-agent", "UNLISTEN *"), "allow");
    assert_eq!(d("clinician", "LISTEN ch"), "allow");
    // Resource settings are not the caller's to raise.
    assert_eq!(
        d("clinician", "SET work_mem = '2047GB'"),
        "deny:pinned-setting"
    );
    assert_eq!(
        d(
            "clinician",
            "SELECT set_config('work_mem', '2047GB', false)"
        ),
        "deny:pinned-setting"
    );
    assert_eq!(d("clinician", "SET enable_seqscan = off"), "allow");
}
