//! Least privilege with PostgreSQL's own parser: a corpus of (statement, identity, decision)
//! cases under the demo policy, each run through the real gateway over the simple and the
//! extended protocol, and proof from the database's own statement log (`log_statement = all`)
//! that nothing refused ever reached it. Then PostgreSQL's transaction and pipeline semantics
//! after a refusal, on the wire.
//!
//! The cluster is this binary's own (not `testkit::clinic`): its log must hold only what this
//! binary sent, and every case carries a unique marker (`/* [pc-042-s] */`) so the log can be
//! searched for it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use phigate_testkit::raw::{
    bind, close_statement, describe_statement, execute, parse, pbe, sync, tags, Msg, Raw,
};
use phigate_testkit::{Cluster, ClusterOptions, Gateway, GatewayOptions, APP_PASSWORD, APP_USER};
use tokio_postgres::{Client, NoTls};

const AGENT_RULE: &str = "agent-changes-need-approval";
const ADMIN_RULE: &str = "destructive-ddl-needs-approval";
/// Files the refused server-side COPY and large-object cases name: they must never appear.
const COPY_FILE: &str = "/tmp/phigate-policy-corpus.out";
const PROGRAM_FILE: &str = "/tmp/phigate-policy-corpus.program";
const LO_FILE: &str = "/tmp/phigate-policy-corpus.lo";

/// This binary's cluster: every statement it receives is in its log.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<&'static Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start(ClusterOptions {
            settings: vec![("log_statement".into(), "all".into())],
            ..Default::default()
        })
        .expect("the test PostgreSQL starts");
        phigate_testkit::prepare_clinic(&cluster, phigate::demo::SEED_SQL)
            .expect("the clinic dataset loads");
        cluster
            .leak_for_process()
            .expect("the cluster is kept for the process")
    })
}

/// The demo policy, as the `[[role]]` / `[[rule]]` tables of a config file.
fn demo_policy() -> String {
    let mut t = toml::Table::new();
    t.insert(
        "role".into(),
        toml::Value::try_from(phigate::demo::demo_roles()).expect("roles serialize"),
    );
    t.insert(
        "rule".into(),
        toml::Value::try_from(phigate::demo::demo_rules()).expect("rules serialize"),
    );
    t.insert(
        "phi".into(),
        toml::Value::try_from(phigate::demo::demo_phi()).expect("PHI tags serialize"),
    );
    toml::to_string(&t).expect("policy serializes")
}

fn gateway() -> Gateway {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = demo_policy();
    // This corpus is about decisions: statements that need approval are refused at once (with
    // approvals on they would wait for a reviewer; tests/approvals.rs covers that).
    opts.extra = "[approvals]\nenabled = false\n".into();
    Gateway::start(Path::new(env!("CARGO_BIN_EXE_phigate")), opts).expect("gateway starts")
}

async fn connect(gw: &Gateway, identity: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&gw.conninfo(identity), NoTls)
        .await
        .unwrap_or_else(|e| panic!("{identity} connects: {e}\n{}", gw.log()));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The gateway's login, straight to the database.
async fn direct() -> Client {
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={} user={APP_USER} password={APP_PASSWORD} sslmode=disable",
        cluster().port(),
        phigate_testkit::DATABASE
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .expect("direct connection");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

/// `want`: `allow`, `deny:<rule>`, `approval:<rule>` (`approval:agent` and `approval:admin` name
/// the demo's two rules), then for allowed statements optional modifiers:
/// `!CODE` the database refuses it with CODE over both protocols, `s!CODE` / `x!CODE` over the
/// simple / extended protocol only; `copy` it is a `COPY ... TO STDOUT`; `nolog` the database
/// logs nothing for it (an empty statement).
#[rustfmt::skip]
const CASES: &[(&str, &str, &str)] = &[
    // --- Allowed work of each role -------------------------------------------------------------
    ("agent", "SELECT count(*) FROM patients", "allow"),
    ("agent", "SELECT e.id, p.mrn FROM encounters e JOIN patients p ON p.id = e.patient_id ORDER BY e.id LIMIT 1", "allow"),
    ("agent", "SELECT drug, count(*) FROM prescriptions GROUP BY drug ORDER BY 2 DESC LIMIT 3", "allow"),
    ("agent", "SELECT avg(value) FROM lab_results WHERE test = 'HbA1c'", "allow"),
    ("agent", "SELECT name FROM departments ORDER BY id", "allow"),
    ("agent", "SELECT count(*) FROM patients NATURAL JOIN encounters", "allow"),
    ("agent", "SELECT p.id, x.n FROM patients p, LATERAL (SELECT count(*) AS n FROM lab_results l WHERE l.patient_id = p.id) x ORDER BY p.id LIMIT 2", "allow"),
    ("agent", "COPY (SELECT id, mrn FROM patients ORDER BY id LIMIT 3) TO STDOUT", "allow copy"),
    ("agent", "COPY departments TO STDOUT (FORMAT csv)", "allow copy"),
    ("clinician", "SELECT count(*) FROM lab_results", "allow"),
    ("clinician", "INSERT INTO departments (id, name, floor) SELECT max(id) + 1, 'pc-clinic-' || (max(id) + 1), 7 FROM departments WHERE id < 1000", "allow"),
    ("clinician", "UPDATE patients SET city = city WHERE id = 1", "allow"),
    ("clinician", "DELETE FROM lab_results WHERE id = -1", "allow"),
    ("clinician", "INSERT INTO departments (id, name, floor) VALUES (12, 'Infectious Disease', 6) ON CONFLICT (id) DO UPDATE SET floor = EXCLUDED.floor", "allow"),
    ("clinician", "MERGE INTO departments d USING (SELECT 1 AS id) s ON d.id = s.id WHEN MATCHED THEN UPDATE SET floor = d.floor", "allow"),
    ("clinician", "WITH x AS (DELETE FROM lab_results WHERE id = -1 RETURNING id) SELECT count(*) FROM x", "allow"),
    ("clinician", "UPDATE encounters e SET notes = e.notes FROM patients p WHERE p.id = e.patient_id AND p.id = -1", "allow"),
    ("clinician", "BEGIN", "allow"),
    ("clinician", "SELECT count(*) FROM encounters", "allow"),
    ("clinician", "COMMIT", "allow"),
    ("clinician", "EXPLAIN ANALYZE DELETE FROM lab_results WHERE id = -1", "allow"),
    ("admin", "CREATE TABLE IF NOT EXISTS pc_admin_t (id int PRIMARY KEY, note text)", "allow"),
    ("admin", "ALTER TABLE pc_admin_t ADD COLUMN IF NOT EXISTS extra int", "allow"),
    ("admin", "CREATE INDEX IF NOT EXISTS pc_admin_t_note ON pc_admin_t (note)", "allow"),
    ("admin", "CREATE OR REPLACE VIEW pc_admin_v AS SELECT id, mrn FROM patients", "allow"),
    ("admin", "COMMENT ON TABLE pc_admin_t IS 'policy corpus'", "allow"),
    ("admin", "GRANT SELECT ON departments TO phigate_app", "allow"),
    ("admin", "VACUUM (ANALYZE) departments", "allow"),
    ("admin", "SELECT count(*) FROM pg_stats WHERE tablename = 'patients'", "allow"),
    ("admin", "DO $$ BEGIN PERFORM 1; END $$", "approval:destructive-ddl-needs-approval"), // opaque: held to the rules about DDL
    ("admin", "CREATE TABLE IF NOT EXISTS pc_admin_ctas AS SELECT id, name FROM departments", "allow"),
    ("admin", "SELECT id, name INTO pc_admin_into FROM departments", "allow x!42P07"),
    ("admin", "SET search_path = public", "allow"),
    ("admin", "LOCK TABLE pc_admin_t", "allow !25P01"),
    ("admin", "SET ROLE postgres", "allow !42501"),
    ("admin", "SET SESSION AUTHORIZATION postgres", "allow !42501"),
    ("admin", "RESET ROLE", "allow"),
    ("admin", "CALL pc_no_such_procedure()", "approval:destructive-ddl-needs-approval"),
    // The gateway's login may manage the masking logins (CREATEROLE), never a superuser.
    ("admin", "ALTER ROLE postgres CONNECTION LIMIT 5", "allow !42501"),
    ("admin", "SELECT * FROM \"PUBLIC\".\"patients\"", "allow !42P01"),
    ("admin", "CREATE TABLE IF NOT EXISTS pg_pc_notes (note text)", "allow"),
    ("admin", "INSERT INTO pg_pc_notes VALUES ('not for the reviewer')", "allow"),
    ("admin", "DROP TABLE IF EXISTS pc_admin_t", "approval:admin"),
    ("admin", "TRUNCATE pc_admin_t", "approval:admin"),
    ("admin", "DROP VIEW pc_admin_v", "approval:admin"),
    ("admin", "COMMIT; DROP TABLE lab_results", "approval:admin"),
    ("admin", "SELECT pg_read_file('/etc/passwd')", "deny:dangerous-function"),
    ("admin", "SELECT lo_import('/etc/passwd')", "deny:dangerous-function"),
    ("admin", "SELECT set_config('work_mem', '8MB', false)", "allow"),
    ("admin", "SELECT pc_ext.dblink_exec('dbname=clinic', 'DELETE FROM patients')", "deny:dangerous-function"),
    ("admin", "COPY patients TO '/tmp/phigate-policy-corpus.out'", "deny:server-copy"),
    ("admin", "COPY (SELECT 1) TO PROGRAM 'touch /tmp/phigate-policy-corpus.program'", "deny:server-copy"),
    ("reviewer", "SELECT 1", "allow"),
    ("reviewer", "SELECT now() > '2000-01-01'::timestamptz", "allow"),
    ("reviewer", "SELECT * FROM generate_series(1, 3) AS g(n)", "allow"),
    ("reviewer", "SHOW search_path", "allow"),
    ("reviewer", "SELECT count(*) FROM patients", "deny:grants"),
    ("reviewer", "SELECT * FROM pc_admin_v", "deny:grants"),
    ("reviewer", "TABLE lab_results", "deny:grants"),
    ("reviewer", "SELECT * FROM ONLY lab_results", "deny:grants"),
    ("reviewer", "SELECT l FROM lab_results l", "deny:grants"),
    ("reviewer", "SELECT 1 FROM patients TABLESAMPLE SYSTEM (1)", "deny:grants"),
    ("reviewer", "COPY lab_results TO STDOUT", "deny:grants"),
    ("reviewer", "COPY (SELECT ssn FROM patients) TO STDOUT", "deny:grants"),
    ("reviewer", "UPDATE patients SET last_name = 'pwned'", "deny:grants"),
    ("reviewer", "INSERT INTO departments VALUES ((SELECT max(id) FROM lab_results), 'pc-reviewer', 1)", "deny:grants"),
    ("reviewer", "MERGE INTO departments d USING lab_results l ON false WHEN NOT MATCHED THEN DO NOTHING", "deny:grants"),
    ("agent", "SELECT * FROM pc_admin_v", "deny:grants"),
    ("agent", "SELECT * FROM pc_admin_t", "deny:grants"),
    ("agent", "INSERT INTO departments VALUES (666, 'pc-refused', 1)", "approval:agent"),
    // A masked column cannot be written through the agent's view: refused, never held.
    ("agent", "UPDATE patients SET last_name = 'pwned'", "deny:masked-column-write"),
    ("agent", "UPDATE patients SET state = 'ZZ' WHERE id = -1", "approval:agent"),
    ("agent", "INSERT INTO patients (id, ssn) VALUES (-1, '000-00-0000')", "deny:masked-column-write"),
    ("agent", "MERGE INTO departments d USING (SELECT 1 AS id) s ON d.id = s.id WHEN MATCHED THEN DELETE", "approval:agent"),
    ("agent", "INSERT INTO departments VALUES (12, 'x', 1) ON CONFLICT DO NOTHING", "approval:agent"),
    // --- Comments in every position ------------------------------------------------------------
    ("reviewer", "SELECT * FROM /* hidden */ lab_results", "deny:grants"),
    ("reviewer", "SELECT * FROM -- a comment\nlab_results", "deny:grants"),
    ("reviewer", "SELECT /* outer /* nested */ still a comment */ * FROM lab_results", "deny:grants"),
    ("reviewer", "SELECT * FROM public/**/./**/lab_results", "deny:grants"),
    ("agent", "/* DELETE FROM patients; */ SELECT 1", "allow"),
    ("agent", "SELECT 1 -- ; DELETE FROM patients", "allow"),
    ("agent", "SELECT 1 /* ; DROP TABLE patients; */", "allow"),
    ("agent", "SELECT 1 /* /* nested */ ; DELETE FROM patients; */", "allow"),
    ("agent", "DELETE/**/FROM/**/patients", "approval:agent"),
    ("agent", "DELETE -- comment\nFROM patients", "approval:agent"),
    ("agent", "SELECT '/*'; DELETE FROM patients; SELECT '*/'", "approval:agent"),
    ("agent", "SELECT 1 /* unterminated", "deny:syntax"),
    ("agent", "-- nothing but a comment", "allow nolog"),
    // --- Quoting and case ----------------------------------------------------------------------
    ("agent", "SELECT count(*) FROM \"patients\"", "allow"),
    // Allowed by policy; the masked agent's database login cannot read the table itself, only
    // its masking view (unqualified `patients`): the database refuses.
    ("agent", "SELECT count(*) FROM \"public\".\"patients\"", "allow !42501"),
    ("agent", "SELECT count(*) FROM PUBLIC.PATIENTS", "allow !42501"),
    ("agent", "SELECT count(*) FROM \"PUBLIC\".\"patients\"", "deny:grants"),
    ("agent", "SELECT count(*) FROM \"Patients\"", "deny:grants"),
    ("reviewer", "SELECT * FROM \"lab_results\"", "deny:grants"),
    ("reviewer", "sElEcT * fRoM LaB_ReSuLtS", "deny:grants"),
    ("agent", "DELETE FROM \"patients\"", "approval:agent"),
    ("agent", "dElEtE fRoM pAtIeNtS", "approval:agent"),
    // --- Unicode escapes -----------------------------------------------------------------------
    ("agent", "SELECT count(*) FROM U&\"p\\0061tients\"", "allow"),
    ("agent", "SELECT U&'\\0041' AS a", "allow"),
    ("reviewer", "SELECT * FROM U&\"l\\0061b_results\"", "deny:grants"),
    ("reviewer", "SELECT * FROM U&\"!006Cab_results\" UESCAPE '!'", "deny:grants"),
    ("agent", "DELETE FROM U&\"p\\0061tients\"", "approval:agent"),
    // --- Dollar quoting and string literals ----------------------------------------------------
    ("agent", "SELECT $$; DELETE FROM patients; $$ AS s", "allow"),
    ("agent", "SELECT $x$ $$ ; DROP TABLE patients; $$ $x$", "allow"),
    ("agent", "SELECT E'\\'; DELETE FROM patients; --'", "allow"),
    ("reviewer", "SELECT $q$lab_results$q$ AS t", "allow"),
    ("agent", "SELECT $a$x$a$; DELETE FROM patients", "approval:agent"),
    ("agent", "SELECT 'unterminated", "deny:syntax"),
    // --- CTEs: nesting, shadowing, data-modifying ----------------------------------------------
    ("reviewer", "WITH a AS (WITH b AS (SELECT * FROM lab_results) SELECT * FROM b) SELECT count(*) FROM a", "deny:grants"),
    ("reviewer", "WITH lab_results AS (SELECT 1 AS id) SELECT * FROM lab_results", "allow"),
    ("reviewer", "WITH lab_results AS (SELECT * FROM lab_results) SELECT count(*) FROM lab_results", "deny:grants"),
    ("reviewer", "WITH patients AS (SELECT 1 AS id) SELECT count(*) FROM public.patients", "deny:grants"),
    ("reviewer", "SELECT * FROM (WITH lab_results AS (SELECT 1 AS id) SELECT * FROM lab_results) s, lab_results l LIMIT 1", "deny:grants"),
    ("reviewer", "(WITH lab_results AS (SELECT 1 AS id) SELECT id FROM lab_results) UNION ALL SELECT id FROM lab_results", "deny:grants"),
    ("reviewer", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r", "allow"),
    ("reviewer", "WITH lab_results AS (SELECT 1 AS id) DELETE FROM lab_results", "deny:grants"),
    ("reviewer", "WITH patients AS (SELECT 1) UPDATE patients SET last_name = 'pwned'", "deny:grants"),
    ("reviewer", "WITH departments AS (SELECT 1) INSERT INTO departments VALUES (667, 'pc-cte', 1)", "deny:grants"),
    ("reviewer", "WITH a AS (SELECT 1 AS id), b AS (DELETE FROM a RETURNING id) SELECT * FROM b", "deny:grants"),
    ("agent", "WITH x AS (DELETE FROM patients WHERE id = -1 RETURNING *) SELECT count(*) FROM x", "approval:agent"),
    ("agent", "WITH x AS (UPDATE patients SET city = 'x' WHERE id = -1 RETURNING id) SELECT 1", "deny:masked-column-write"),
    ("agent", "WITH x AS (UPDATE patients SET state = 'ZZ' WHERE id = -1 RETURNING id) SELECT 1", "approval:agent"),
    ("agent", "WITH a AS (SELECT 1), b AS (INSERT INTO departments VALUES (668, 'pc-agent', 1) RETURNING id) SELECT * FROM a", "approval:agent"),
    ("agent", "SELECT * FROM patients WHERE id IN (WITH d AS (DELETE FROM lab_results RETURNING patient_id) SELECT patient_id FROM d)", "approval:agent"),
    ("clinician", "SELECT * FROM patients WHERE id IN (WITH d AS (DELETE FROM lab_results WHERE id = -1 RETURNING patient_id) SELECT patient_id FROM d)", "allow !0A000"),
    // --- Subqueries in every clause ------------------------------------------------------------
    ("reviewer", "SELECT (SELECT count(*) FROM lab_results)", "deny:grants"),
    ("reviewer", "SELECT * FROM (SELECT * FROM lab_results) s LIMIT 1", "deny:grants"),
    ("reviewer", "SELECT 1 WHERE EXISTS (SELECT 1 FROM lab_results)", "deny:grants"),
    ("reviewer", "SELECT count(*) FROM generate_series(1, 2) g HAVING count(*) < (SELECT count(*) FROM lab_results)", "deny:grants"),
    ("reviewer", "SELECT 1 ORDER BY (SELECT max(id) FROM lab_results)", "deny:grants"),
    ("reviewer", "SELECT 1 LIMIT (SELECT count(*) FROM lab_results)", "deny:grants"),
    ("reviewer", "SELECT 1 OFFSET (SELECT count(*) FROM lab_results)", "deny:grants"),
    ("reviewer", "SELECT 1 FROM generate_series(1, 2) a JOIN generate_series(1, 2) b ON a = (SELECT min(id) FROM lab_results)", "deny:grants"),
    ("reviewer", "VALUES ((SELECT max(value) FROM lab_results))", "deny:grants"),
    ("reviewer", "SELECT n FROM generate_series(1, 2) n GROUP BY n, (SELECT 1 FROM lab_results LIMIT 1)", "deny:grants"),
    ("reviewer", "SELECT sum(n) OVER (ORDER BY (SELECT max(id) FROM lab_results)) FROM generate_series(1, 2) n", "deny:grants"),
    ("reviewer", "SELECT CASE WHEN true THEN (SELECT test FROM lab_results LIMIT 1) END", "deny:grants"),
    ("reviewer", "SELECT coalesce(NULL, (SELECT test FROM lab_results LIMIT 1))", "deny:grants"),
    ("reviewer", "SELECT ARRAY(SELECT id FROM lab_results LIMIT 3)", "deny:grants"),
    ("reviewer", "SELECT 1 = ANY (SELECT id FROM lab_results)", "deny:grants"),
    ("reviewer", "SELECT * FROM generate_series(1, 2) g, LATERAL (SELECT * FROM lab_results l WHERE l.id = g) x", "deny:grants"),
    ("reviewer", "SELECT count(*) FILTER (WHERE n IN (SELECT id FROM lab_results)) FROM generate_series(1, 2) n", "deny:grants"),
    ("reviewer", "SELECT * FROM generate_series(1, (SELECT count(*)::int FROM lab_results))", "deny:grants"),
    ("reviewer", "SELECT 1 UNION SELECT id FROM lab_results", "deny:grants"),
    ("agent", "SELECT (SELECT count(*) FROM pg_statistic)", "deny:catalog-leak"),
    ("agent", "SELECT * FROM patients WHERE id = (SELECT max(id) FROM pc_admin_t)", "deny:grants"),
    ("agent", "SELECT count(*) FROM patients p JOIN encounters e ON e.patient_id = p.id AND e.id IN (SELECT id FROM pc_admin_t)", "deny:grants"),
    // --- Functions in FROM and elsewhere -------------------------------------------------------
    ("agent", "SELECT * FROM pg_read_file('/etc/passwd') AS f", "deny:dangerous-function"),
    ("agent", "SELECT * FROM pg_catalog.pg_ls_dir('.') AS d", "deny:dangerous-function"),
    ("agent", "SELECT * FROM ROWS FROM (generate_series(1, 2), pg_ls_dir('.')) AS r", "deny:dangerous-function"),
    ("agent", "SELECT \"pg_read_file\"('/etc/passwd')", "deny:dangerous-function"),
    ("agent", "SELECT PG_CATALOG.PG_READ_FILE('/etc/passwd')", "deny:dangerous-function"),
    ("agent", "SELECT ('/etc/passwd'::text).pg_read_file", "deny:dangerous-function"),
    ("agent", "SELECT (0).pg_terminate_backend", "deny:dangerous-function"),
    ("agent", "SELECT (12345::oid).lo_unlink", "deny:dangerous-function"),
    ("agent", "SELECT (pg_backend_pid()).pg_stat_get_backend_activity", "deny:catalog-leak"),
    ("agent", "SELECT p.id, (p).mrn FROM patients p ORDER BY p.id LIMIT 1", "allow"),
    ("reviewer", "SELECT * FROM ts_stat('SELECT to_tsvector(ssn) FROM patients')", "deny:dangerous-function"),
    ("reviewer", "SELECT ('SELECT to_tsvector(ssn) FROM patients'::text).ts_stat", "deny:dangerous-function"),
    ("reviewer", "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery FROM patients')", "deny:dangerous-function"),
    ("reviewer", "SELECT query_to_xml('SELECT * FROM lab_results', true, true, '')", "deny:dangerous-function"),
    ("agent", "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s", "deny:catalog-leak"),
    ("agent", "SELECT my_unknown_function(1)", "deny:unknown-function"),
    ("agent", "SELECT public.lower('X')", "deny:unknown-function"),
    ("agent", "SELECT lower('X'), pg_catalog.upper('y'), length('abc')", "allow"),
    // --- Multi-statement messages --------------------------------------------------------------
    ("agent", "COMMIT; DROP TABLE lab_results", "approval:agent"),
    ("clinician", "COMMIT; DROP TABLE lab_results", "deny:grants"),
    ("reviewer", "COMMIT; DROP TABLE lab_results", "deny:grants"),
    ("agent", "SELECT 1; DELETE FROM patients", "approval:agent"),
    ("reviewer", "SELECT 1; DELETE FROM patients", "deny:grants"),
    ("clinician", "SELECT 1; DELETE FROM lab_results WHERE id = -1", "allow x!42601"),
    ("agent", "SELECT 1; SET ROLE postgres", "deny:role-switch"),
    ("agent", "BEGIN; UPDATE patients SET last_name = 'pwned'; COMMIT", "deny:masked-column-write"),
    ("agent", "BEGIN; UPDATE patients SET state = 'ZZ' WHERE id = -1; COMMIT", "approval:agent"),
    ("reviewer", "SELECT 1; SELEC 2", "deny:syntax"),
    // --- Server-side COPY ----------------------------------------------------------------------
    ("agent", "COPY patients TO PROGRAM 'touch /tmp/phigate-policy-corpus.program'", "deny:server-copy"),
    ("agent", "COPY patients FROM PROGRAM 'id'", "deny:server-copy"),
    ("agent", "COPY (SELECT * FROM patients) TO PROGRAM 'cat'", "deny:server-copy"),
    ("reviewer", "COPY patients TO '/tmp/phigate-policy-corpus.out'", "deny:server-copy"),
    ("clinician", "copy lab_results from '/etc/passwd'", "deny:server-copy"),
    ("agent", "COPY patients FROM STDIN", "approval:agent"),
    // What a guard refuses is denied outright, not held for an approval.
    ("agent", "DELETE FROM patients WHERE id = -1 AND pg_read_file('/etc/passwd') IS NOT NULL", "deny:dangerous-function"),
    ("agent", "WITH d AS (DELETE FROM patients WHERE id = -1 RETURNING id) SELECT * FROM d, pg_stats", "deny:catalog-leak"),
    // --- Large objects, dblink, set_config -----------------------------------------------------
    ("agent", "SELECT lo_import('/etc/passwd')", "deny:dangerous-function"),
    ("agent", "SELECT lo_export(1, '/tmp/phigate-policy-corpus.lo')", "deny:dangerous-function"),
    ("reviewer", "SELECT lo_get(1)", "deny:dangerous-function"),
    ("agent", "SELECT * FROM pg_largeobject", "deny:catalog-leak"),
    ("agent", "SELECT * FROM dblink('dbname=clinic', 'SELECT ssn FROM patients') AS t(ssn text)", "deny:dangerous-function"),
    ("clinician", "SELECT public.dblink_exec('dbname=clinic', 'DROP TABLE patients')", "deny:dangerous-function"),
    ("agent", "SELECT set_config('search_path', 'evil', false)", "deny:pinned-setting"),
    ("clinician", "SELECT pg_catalog.set_config('statement_timeout', '0', false)", "deny:pinned-setting"),
    // --- Role switching and settings -----------------------------------------------------------
    ("agent", "SET ROLE postgres", "deny:role-switch"),
    ("agent", "SET SESSION AUTHORIZATION postgres", "deny:role-switch"),
    ("agent", "RESET ROLE", "deny:role-switch"),
    ("clinician", "SET LOCAL ROLE phigate_app", "deny:role-switch"),
    ("reviewer", "RESET SESSION AUTHORIZATION", "deny:role-switch"),
    ("agent", "SET search_path = evil, public", "deny:pinned-setting"),
    ("agent", "SET SCHEMA 'evil'", "deny:pinned-setting"),
    ("agent", "set \"search_path\" to pg_temp, public", "deny:pinned-setting"),
    ("clinician", "SET statement_timeout = 0", "deny:pinned-setting"),
    ("agent", "RESET ALL", "deny:pinned-setting"),
    ("clinician", "UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'", "deny:catalog-write"),
    // standard_conforming_strings = off would let `'\'` continue a string the parser ends.
    ("reviewer", "SET standard_conforming_strings = off", "deny:pinned-setting"),
    ("admin", "SET standard_conforming_strings = off", "deny:pinned-setting"),
    ("admin", "ALTER DATABASE clinic SET standard_conforming_strings = off", "deny:pinned-setting"),
    ("reviewer", "SELECT '\\', ' ; DELETE FROM lab_results; -- '", "allow"),
    ("admin", "SELECT '\\', ' ; DROP TABLE pc_admin_ctas; -- '", "allow"),
    ("agent", "SET application_name = 'pc-agent'", "allow"),
    ("agent", "SET TIME ZONE 'UTC'", "allow"),
    ("agent", "SHOW statement_timeout", "allow"),
    // --- DO and CALL ---------------------------------------------------------------------------
    ("agent", "DO $$ BEGIN DELETE FROM patients; END $$", "deny:opaque-code"),
    ("clinician", "DO LANGUAGE plpgsql $body$ BEGIN PERFORM 1; END $body$", "deny:opaque-code"),
    ("reviewer", "CALL pc_proc()", "deny:unknown-function"),
    ("agent", "CALL pc_proc()", "deny:unknown-function"),
    // --- PREPARE / EXECUTE ---------------------------------------------------------------------
    ("agent", "PREPARE pc_del AS DELETE FROM patients", "approval:agent"),
    // The refused PREPARE created nothing: the gateway knows the session holds no such
    // statement, and answers as PostgreSQL would (26000) without forwarding it.
    ("agent", "EXECUTE pc_del", "deny:unknown-statement"),
    ("clinician", "PREPARE pc_sel AS SELECT count(*) FROM lab_results", "allow x!42P05"),
    ("clinician", "EXECUTE pc_sel", "allow"),
    ("clinician", "DEALLOCATE pc_sel", "allow x!26000"),
    ("reviewer", "PREPARE pc_rev AS SELECT * FROM lab_results", "deny:grants"),
    // --- Cursors -------------------------------------------------------------------------------
    ("reviewer", "DECLARE pc_c CURSOR FOR SELECT * FROM lab_results", "deny:grants"),
    ("agent", "DECLARE pc_c CURSOR FOR SELECT id FROM lab_results", "allow !25P01"),
    // A cursor WITH HOLD outlives its transaction, a policy reload and the timeouts.
    ("agent", "DECLARE pc_h CURSOR WITH HOLD FOR SELECT id FROM lab_results ORDER BY id", "deny:outlives-transaction"),
    ("agent", "FETCH 2 FROM pc_h", "allow !34000"),
    ("agent", "CLOSE pc_h", "allow !34000"),
    ("agent", "DECLARE pc_d CURSOR WITH HOLD FOR DELETE FROM patients RETURNING id", "deny:syntax"),
    // --- EXPLAIN -------------------------------------------------------------------------------
    ("agent", "EXPLAIN SELECT * FROM patients", "allow"),
    ("agent", "EXPLAIN (ANALYZE false) SELECT 1", "allow"),
    ("agent", "EXPLAIN DELETE FROM patients", "approval:agent"),
    ("agent", "EXPLAIN ANALYZE DELETE FROM patients", "approval:agent"),
    ("agent", "EXPLAIN (ANALYZE, BUFFERS) UPDATE patients SET last_name = 'pwned'", "deny:masked-column-write"),
    ("agent", "EXPLAIN (ANALYZE, BUFFERS) UPDATE patients SET state = 'ZZ' WHERE id = -1", "approval:agent"),
    ("agent", "EXPLAIN ANALYZE SELECT * INTO pc_agent_into FROM patients", "approval:agent"),
    ("reviewer", "EXPLAIN SELECT * FROM lab_results", "deny:grants"),
    // --- SELECT INTO, CREATE TABLE AS, CREATE VIEW ---------------------------------------------
    ("agent", "SELECT * INTO pc_agent_into FROM patients", "approval:agent"),
    ("clinician", "SELECT * INTO pc_clin_into FROM patients", "deny:grants"),
    ("agent", "CREATE TABLE pc_agent_ctas AS SELECT * FROM patients", "approval:agent"),
    ("reviewer", "CREATE TABLE pc_rev_ctas AS SELECT * FROM lab_results", "deny:grants"),
    ("clinician", "CREATE VIEW pc_clin_v AS SELECT * FROM patients", "deny:grants"),
    ("agent", "CREATE TEMP VIEW pc_agent_v AS SELECT 1", "approval:agent"),
    // --- TRUNCATE, GRANT, roles ----------------------------------------------------------------
    ("agent", "TRUNCATE patients", "approval:agent"),
    ("clinician", "TRUNCATE lab_results", "deny:grants"),
    ("reviewer", "TRUNCATE TABLE ONLY lab_results CASCADE", "deny:grants"),
    ("agent", "GRANT ALL ON patients TO PUBLIC", "approval:agent"),
    ("clinician", "GRANT SELECT ON patients TO PUBLIC", "deny:grants"),
    ("reviewer", "REVOKE ALL ON lab_results FROM phigate_app", "deny:grants"),
    ("agent", "ALTER ROLE phigate_app SET search_path = evil", "deny:pinned-setting"),
    ("clinician", "ALTER ROLE CURRENT_USER SET statement_timeout = 0", "deny:pinned-setting"),
    ("reviewer", "CREATE ROLE pc_evil SUPERUSER", "deny:grants"),
    // --- Maintenance and locks -----------------------------------------------------------------
    ("agent", "VACUUM patients", "approval:agent"),
    ("clinician", "VACUUM lab_results", "deny:grants"),
    ("reviewer", "ANALYZE", "deny:grants"),
    ("clinician", "REINDEX TABLE patients", "deny:grants"),
    ("reviewer", "CHECKPOINT", "deny:grants"),
    ("agent", "LOCK TABLE patients IN ACCESS EXCLUSIVE MODE", "approval:agent"),
    ("clinician", "LOCK TABLE lab_results", "deny:grants"),
    ("agent", "SELECT * FROM patients WHERE id = 1 FOR UPDATE", "approval:agent"),
    ("agent", "SELECT * FROM (SELECT * FROM patients FOR UPDATE) s", "approval:agent"),
    ("clinician", "SELECT * FROM lab_results WHERE id = 1 FOR UPDATE", "deny:grants"),
    ("reviewer", "SELECT 1 FROM lab_results FOR SHARE", "deny:grants"),
    // --- DDL -----------------------------------------------------------------------------------
    ("agent", "ALTER TABLE patients ADD COLUMN pc_agent_col int", "approval:agent"),
    ("clinician", "ALTER TABLE patients ADD COLUMN pc_clin_col int", "deny:grants"),
    ("clinician", "CREATE TABLE pc_clin_t (a int)", "deny:grants"),
    ("clinician", "DROP TABLE lab_results", "deny:grants"),
    ("agent", "DROP TABLE IF EXISTS lab_results CASCADE", "approval:agent"),
    ("reviewer", "CREATE FUNCTION pc_f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", "deny:grants"),
    ("clinician", "CREATE INDEX pc_clin_idx ON patients (city)", "deny:grants"),
    ("agent", "COMMENT ON TABLE patients IS 'pwned'", "approval:agent"),
    ("clinician", "ALTER SYSTEM SET log_statement = 'none'", "deny:pinned-setting"),
    ("clinician", "ALTER SYSTEM RESET ALL", "deny:pinned-setting"),
    ("reviewer", "ALTER DATABASE clinic RESET ALL", "deny:pinned-setting"),
    ("agent", "LOAD 'auto_explain'", "deny:unclassified"),
    // --- Catalog: leaks and innocent reads -----------------------------------------------------
    ("agent", "SELECT * FROM pg_stats WHERE tablename = 'patients'", "deny:catalog-leak"),
    ("agent", "SELECT * FROM pg_catalog.pg_stats", "deny:catalog-leak"),
    ("clinician", "SELECT * FROM PG_CATALOG.\"pg_stats\"", "deny:catalog-leak"),
    ("agent", "SELECT stavalues1 FROM pg_statistic", "deny:catalog-leak"),
    ("agent", "TABLE pg_catalog.pg_statistic", "deny:catalog-leak"),
    ("reviewer", "SELECT query FROM pg_stat_activity", "deny:catalog-leak"),
    ("agent", "SELECT rolpassword FROM pg_authid", "deny:catalog-leak"),
    ("reviewer", "SELECT * FROM pg_shadow", "deny:catalog-leak"),
    ("clinician", "SELECT * FROM pg_stats_ext", "deny:catalog-leak"),
    ("agent", "SELECT * FROM pg_stat_get_activity(NULL)", "deny:catalog-leak"),
    ("agent", "SELECT relname FROM pg_class WHERE relkind = 'r' LIMIT 5", "allow"),
    ("agent", "SELECT table_name FROM information_schema.tables LIMIT 5", "allow"),
    ("clinician", "SELECT nspname FROM pg_catalog.pg_namespace", "allow"),
    ("reviewer", "SELECT relname FROM pg_class WHERE relname = 'patients'", "allow"),
    ("reviewer", "SELECT column_name FROM information_schema.columns WHERE table_name = 'patients'", "allow"),
    ("agent", "SELECT count(*) FROM pg_roles", "allow"),
    // A user table whose name starts with pg_ is not a catalog.
    ("reviewer", "SELECT * FROM pg_pc_notes", "deny:grants"),
    ("agent", "SELECT * FROM pg_pc_notes", "deny:grants"),
    ("reviewer", "SELECT * FROM public.pg_pc_notes", "deny:grants"),
    // --- LISTEN / NOTIFY -----------------------------------------------------------------------
    // Notification payloads are not masked: a masked role may not LISTEN (UNLISTEN is harmless).
    ("agent", "LISTEN pc_channel", "deny:masked-listen"),
    ("reviewer", "NOTIFY pc_channel, 'hello'", "allow"),
    ("clinician", "SELECT pg_notify('pc_channel', 'x')", "allow"),
    ("agent", "UNLISTEN *", "allow"),
    // --- Transaction control -------------------------------------------------------------------
    ("reviewer", "BEGIN", "allow"),
    ("reviewer", "SAVEPOINT pc_s", "allow"),
    ("reviewer", "ROLLBACK TO SAVEPOINT pc_s", "allow"),
    ("reviewer", "RELEASE SAVEPOINT pc_s", "allow"),
    ("reviewer", "COMMIT", "allow"),
    ("agent", "START TRANSACTION READ ONLY", "allow"),
    ("agent", "SELECT count(*) FROM departments", "allow"),
    ("agent", "ROLLBACK", "allow"),
    ("agent", "ABORT", "allow"),
    ("clinician", "SET CONSTRAINTS ALL DEFERRED", "allow"),
    ("agent", "DISCARD ALL", "allow"),
    // --- Syntax errors -------------------------------------------------------------------------
    ("agent", "SELEC 1", "deny:syntax"),
    ("reviewer", "SELECT * FROM", "deny:syntax"),
    ("agent", "DELETE FROM patients WHERE", "deny:syntax"),
    ("clinician", "DROP TABLE lab_results;; DELET", "deny:syntax"),
];

#[derive(Debug, Clone, PartialEq)]
enum Want {
    Allow {
        simple: Option<String>,
        extended: Option<String>,
        copy: bool,
        logged: bool,
    },
    Refuse {
        approval: bool,
        rule: String,
    },
}

impl Want {
    fn parse(spec: &str) -> Want {
        let mut words = spec.split_whitespace();
        let decision = words.next().expect("a decision");
        let rule_name = |r: &str| match r {
            "agent" => AGENT_RULE.to_owned(),
            "admin" => ADMIN_RULE.to_owned(),
            other => other.to_owned(),
        };
        if let Some(rule) = decision.strip_prefix("deny:") {
            return Want::Refuse {
                approval: false,
                rule: rule_name(rule),
            };
        }
        if let Some(rule) = decision.strip_prefix("approval:") {
            return Want::Refuse {
                approval: true,
                rule: rule_name(rule),
            };
        }
        assert_eq!(decision, "allow", "bad want {spec}");
        let (mut simple, mut extended, mut copy, mut logged) = (None, None, false, true);
        for w in words {
            if let Some(code) = w.strip_prefix("s!") {
                simple = Some(code.to_owned());
            } else if let Some(code) = w.strip_prefix("x!") {
                extended = Some(code.to_owned());
            } else if let Some(code) = w.strip_prefix('!') {
                simple = Some(code.to_owned());
                extended = Some(code.to_owned());
            } else if w == "copy" {
                copy = true;
            } else if w == "nolog" {
                logged = false;
            } else {
                panic!("bad modifier {w} in {spec}");
            }
        }
        Want::Allow {
            simple,
            extended,
            copy,
            logged,
        }
    }

    fn refused(&self) -> bool {
        matches!(self, Want::Refuse { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Proto {
    Simple,
    Extended,
}

impl Proto {
    fn letter(self) -> char {
        match self {
            Proto::Simple => 's',
            Proto::Extended => 'x',
        }
    }
}

fn marker(case: usize, proto: Proto) -> String {
    format!("[pc-{:03}-{}]", case + 1, proto.letter())
}

/// An error as the client saw it: SQLSTATE (empty if not from the server) and message.
#[derive(Debug)]
struct Failure {
    code: String,
    message: String,
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => Failure {
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
            },
            None => Failure {
                code: String::new(),
                message: e.to_string(),
            },
        }
    }
}

async fn run_tokio(client: &Client, proto: Proto, sql: &str, copy: bool) -> Result<(), Failure> {
    use futures_util::StreamExt;
    match proto {
        Proto::Simple => client
            .simple_query(sql)
            .await
            .map(|_| ())
            .map_err(Into::into),
        Proto::Extended if copy => {
            let stream = client.copy_out(sql).await?;
            futures_util::pin_mut!(stream);
            while let Some(chunk) = stream.next().await {
                chunk?;
            }
            Ok(())
        }
        Proto::Extended => {
            let statement = client.prepare(sql).await?;
            client.query(&statement, &[]).await?;
            Ok(())
        }
    }
}

/// Checks one outcome against the expectation; `Err` describes the mismatch.
fn judge(want: &Want, proto: Proto, got: &Result<(), Failure>) -> Result<(), String> {
    match (want, got) {
        (
            Want::Allow {
                simple, extended, ..
            },
            got,
        ) => {
            let expected = match proto {
                Proto::Simple => simple,
                Proto::Extended => extended,
            };
            match (expected, got) {
                (None, Ok(())) => Ok(()),
                (None, Err(f)) => Err(format!("want success, got {} {}", f.code, f.message)),
                (Some(code), Ok(())) => Err(format!("want database error {code}, got success")),
                (Some(code), Err(f)) => {
                    if &f.code != code {
                        Err(format!(
                            "want database error {code}, got {} {}",
                            f.code, f.message
                        ))
                    } else if f.message.starts_with("phigate:") {
                        Err(format!(
                            "want the database's error {code}, got the gateway's: {}",
                            f.message
                        ))
                    } else {
                        Ok(())
                    }
                }
            }
        }
        (Want::Refuse { .. }, Ok(())) => Err("want a refusal, got success".into()),
        (Want::Refuse { approval, rule }, Err(f)) => {
            let (code, needle) = if rule == "syntax" {
                ("42601", "phigate: ".to_owned())
            } else if rule == "unknown-statement" {
                (
                    "26000",
                    "does not exist (rule unknown-statement)".to_owned(),
                )
            } else if *approval {
                ("42501", format!("requires approval by rule {rule}"))
            } else {
                ("42501", format!("denied by rule {rule}"))
            };
            // The guard's own refusals name their rule in parentheses.
            let own = !*approval && f.message.contains(&format!("(rule {rule})"));
            if f.code == code
                && f.message.starts_with("phigate: ")
                && (f.message.contains(&needle) || own)
            {
                Ok(())
            } else {
                Err(format!(
                    "want {code} '{needle}', got {} {}",
                    f.code, f.message
                ))
            }
        }
    }
}

#[tokio::test]
async fn corpus_decides_like_the_policy_says_and_nothing_refused_reaches_the_database() {
    assert!(CASES.len() >= 150, "{} cases", CASES.len());
    for f in [COPY_FILE, PROGRAM_FILE, LO_FILE] {
        let _ = std::fs::remove_file(f);
    }
    let gw = gateway();
    let db = direct().await;
    let lo_before = count(&db, "SELECT count(*) FROM pg_largeobject_metadata").await;
    let mut clients = HashMap::new();
    for identity in ["agent", "clinician", "admin", "reviewer"] {
        clients.insert(identity, connect(&gw, identity).await);
    }
    let mut failures = Vec::new();
    for (i, (identity, sql, spec)) in CASES.iter().enumerate() {
        let want = Want::parse(spec);
        let client = clients.get(identity).expect("known identity");
        for proto in [Proto::Simple, Proto::Extended] {
            let text = format!("/* {} */ {sql}", marker(i, proto));
            let copy = matches!(want, Want::Allow { copy: true, .. });
            let got = if copy && proto == Proto::Simple {
                let mut raw = Raw::login(&gw, identity);
                raw.query(&text)
                    .into_iter()
                    .find(|m| m.tag == b'E')
                    .map_or(Ok(()), |e| {
                        Err(Failure {
                            code: e.code(),
                            message: e.message(),
                        })
                    })
            } else {
                run_tokio(client, proto, &text, copy).await
            };
            if let Err(why) = judge(&want, proto, &got) {
                failures.push(format!(
                    "case {} ({identity}, {proto:?}): {sql}\n    want {spec}: {why}",
                    i + 1
                ));
            }
        }
    }

    // The database's own log: no refused statement ever reached it; every allowed one did.
    let log = cluster().server_log();
    assert!(
        log.contains("phigate_denied_"),
        "refusals reach the database as tokens"
    );
    for (i, (identity, sql, spec)) in CASES.iter().enumerate() {
        let want = Want::parse(spec);
        for proto in [Proto::Simple, Proto::Extended] {
            let m = marker(i, proto);
            let logged = log.contains(&m);
            if want.refused() && logged {
                failures.push(format!(
                    "case {} ({identity}, {proto:?}) was refused but the database logged it: {sql}",
                    i + 1
                ));
            }
            if matches!(want, Want::Allow { logged: true, .. }) && !logged {
                failures.push(format!(
                    "case {} ({identity}, {proto:?}) was allowed but the database never saw it: {sql}",
                    i + 1
                ));
            }
        }
    }

    // And its state: nothing refused changed anything.
    for (sql, want) in [
        ("SELECT count(*) FROM patients", 10_000),
        ("SELECT count(*) FROM lab_results", 40_000),
        ("SELECT count(*) FROM encounters", 30_000),
        ("SELECT count(*) FROM prescriptions", 20_000),
        ("SELECT count(*) FROM patients WHERE last_name = 'pwned'", 0),
        ("SELECT count(*) FROM departments WHERE id IN (666, 667, 668) OR name IN ('pc-refused', 'pc-cte', 'pc-agent', 'pc-reviewer')", 0),
        // The clinician's two allowed inserts (one per protocol).
        ("SELECT count(*) FROM departments WHERE name LIKE 'pc-clinic-%'", 2),
        ("SELECT count(*) FROM information_schema.columns WHERE column_name IN ('pc_agent_col', 'pc_clin_col')", 0),
        ("SELECT count(*) FROM pg_class WHERE relname IN ('pc_agent_into', 'pc_agent_ctas', 'pc_clin_into', 'pc_rev_ctas', 'pc_clin_v', 'pc_clin_t', 'pc_clin_idx')", 0),
        // The admin's allowed DDL happened; the refused DROP / TRUNCATE did not.
        ("SELECT count(*) FROM pg_class WHERE relname IN ('pc_admin_t', 'pc_admin_v', 'pc_admin_ctas', 'pc_admin_into', 'pg_pc_notes')", 5),
        ("SELECT count(*) FROM pg_roles WHERE rolname = 'pc_evil'", 0),
        ("SELECT count(*) FROM pg_proc WHERE proname = 'pc_f'", 0),
        ("SELECT count(*) FROM pg_db_role_setting", 0),
        ("SELECT count(*) WHERE has_table_privilege('public', 'public.patients', 'SELECT')", 0),
        ("SELECT count(*) WHERE has_table_privilege('phigate_app', 'public.lab_results', 'SELECT')", 1),
        ("SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'patients' AND last_vacuum IS NOT NULL", 0),
        ("SELECT count(*) FROM pg_description WHERE description = 'pwned'", 0),
    ] {
        let got = count(&db, sql).await;
        if got != want {
            failures.push(format!("state: {sql}\n    want {want}, got {got}"));
        }
    }
    let lo_after = count(&db, "SELECT count(*) FROM pg_largeobject_metadata").await;
    if lo_after != lo_before {
        failures.push(format!(
            "large objects: {lo_before} before, {lo_after} after"
        ));
    }
    for f in [COPY_FILE, PROGRAM_FILE, LO_FILE] {
        if Path::new(f).exists() {
            failures.push(format!("{f} was written"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases × 2 protocols went wrong:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Transaction and pipeline semantics after a refusal
// ---------------------------------------------------------------------------------------------

fn error_of(msgs: &[Msg]) -> &Msg {
    msgs.iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("an error in {msgs:?}"))
}

fn assert_refusal(msgs: &[Msg], needle: &str) {
    let e = error_of(msgs);
    assert_eq!(e.code(), "42501", "{e:?}");
    assert!(
        e.message().starts_with("phigate: ") && e.message().contains(needle),
        "{}",
        e.message()
    );
}

/// Whether the server log has `needle`. PostgreSQL writes a statement's log line before it
/// runs it (and before it answers the client), so a log read after the answer is complete.
fn logged(needle: &str) -> bool {
    cluster().server_log().contains(needle)
}

#[tokio::test]
async fn outside_a_transaction_a_refusal_leaves_the_session_usable() {
    let gw = gateway();
    let mut raw = Raw::login(&gw, "agent");
    let msgs = raw.query("/* [tx-out-1] */ DELETE FROM patients");
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_refusal(
        &msgs,
        "requires approval by rule agent-changes-need-approval",
    );
    assert_eq!(msgs[1].status(), 'I');
    let msgs = raw.query("SELECT count(*) FROM patients");
    assert_eq!(tags(&msgs), "TDCZ", "{msgs:?}");
    assert_eq!(msgs[3].status(), 'I');

    // The same through a driver, both protocols, on one connection.
    let client = connect(&gw, "reviewer").await;
    for _ in 0..3 {
        let e = client
            .simple_query("/* [tx-out-2] */ SELECT * FROM lab_results")
            .await
            .expect_err("refused");
        assert_eq!(Failure::from(e).code, "42501");
        let e = client
            .prepare("/* [tx-out-3] */ SELECT * FROM lab_results")
            .await
            .expect_err("refused");
        assert_eq!(Failure::from(e).code, "42501");
        let row = client.query_one("SELECT 41 + 1", &[]).await.expect("works");
        assert_eq!(row.get::<_, i32>(0), 42);
        client.batch_execute("SELECT 1").await.expect("works");
    }
    for m in ["[tx-out-1]", "[tx-out-2]", "[tx-out-3]"] {
        assert!(!logged(m), "{m} reached the database");
    }
    assert_eq!(
        count(&direct().await, "SELECT count(*) FROM patients").await,
        10_000
    );
}

#[tokio::test]
async fn inside_a_transaction_a_refusal_fails_it_on_both_sides() {
    let gw = gateway();
    let db = direct().await;
    let mut raw = Raw::login(&gw, "clinician");
    assert_eq!(raw.query("BEGIN").last().expect("Z").status(), 'T');
    let msgs = raw.query("/* [tx-in-1] */ INSERT INTO departments VALUES (9101, 'pc-tx-9101', 1)");
    assert_eq!(msgs[0].command(), "INSERT 0 1");
    assert_eq!(msgs.last().expect("Z").status(), 'T');
    let msgs = raw.query("/* [tx-in-2] */ TRUNCATE lab_results");
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_refusal(&msgs, "denied by rule grants");
    assert_eq!(msgs[1].status(), 'E', "the transaction failed");
    let msgs = raw.query("SELECT 1");
    let e = error_of(&msgs);
    assert_eq!(e.code(), "25P02");
    assert!(
        e.message().contains("current transaction is aborted"),
        "{e:?}"
    );
    assert_eq!(msgs.last().expect("Z").status(), 'E');
    let msgs = raw.query("COMMIT");
    assert_eq!(msgs[0].command(), "ROLLBACK", "the server rolls back");
    assert_eq!(msgs.last().expect("Z").status(), 'I');
    assert_eq!(
        count(&db, "SELECT count(*) FROM departments WHERE id = 9101").await,
        0
    );
    assert!(logged("[tx-in-1]"));
    assert!(!logged("[tx-in-2]"));

    // A savepoint recovers from a refusal as from any error.
    raw.query("BEGIN");
    raw.query("INSERT INTO departments VALUES (9102, 'pc-tx-9102', 1)");
    raw.query("SAVEPOINT s");
    assert_refusal(
        &raw.query("DROP TABLE lab_results"),
        "denied by rule grants",
    );
    assert_eq!(
        raw.query("ROLLBACK TO SAVEPOINT s")
            .last()
            .expect("Z")
            .status(),
        'T'
    );
    raw.query("INSERT INTO departments VALUES (9103, 'pc-tx-9103', 1)");
    assert_eq!(raw.query("COMMIT")[0].command(), "COMMIT");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM departments WHERE id IN (9102, 9103)"
        )
        .await,
        2
    );

    // The extended protocol through a driver: the refused Parse fails the transaction too.
    let mut client = connect(&gw, "clinician").await;
    let tx = client.transaction().await.expect("begin");
    tx.execute(
        "INSERT INTO departments VALUES (9104, 'pc-tx-9104', 1)",
        &[],
    )
    .await
    .expect("insert");
    let e = tx
        .prepare("/* [tx-in-3] */ DELETE FROM pc_admin_t")
        .await
        .expect_err("refused");
    assert_eq!(Failure::from(e).code, "42501");
    let e = tx.query("SELECT 1", &[]).await.expect_err("aborted");
    assert_eq!(Failure::from(e).code, "25P02");
    tx.commit()
        .await
        .expect("COMMIT of a failed transaction is a rollback, not an error");
    assert_eq!(
        count(&db, "SELECT count(*) FROM departments WHERE id = 9104").await,
        0
    );
    assert!(!logged("[tx-in-3]"));
    // And the session goes on.
    client.batch_execute("SELECT 1").await.expect("usable");
}

#[tokio::test]
async fn in_a_pipeline_nothing_after_the_refusal_runs_until_sync() {
    let gw = gateway();
    let db = direct().await;
    let mut raw = Raw::login(&gw, "clinician");
    // Three statements, one Sync: the second is refused.
    raw.send(
        &[
            pbe("/* [pipe-1] */ INSERT INTO departments VALUES (9201, 'pc-pipe-9201', 1)"),
            pbe("/* [pipe-2] */ TRUNCATE lab_results"),
            pbe("/* [pipe-3] */ INSERT INTO departments VALUES (9203, 'pc-pipe-9203', 1)"),
            sync(),
        ]
        .concat(),
    );
    let msgs = raw.until_ready();
    assert_eq!(tags(&msgs), "12CEZ", "{msgs:?}");
    assert_eq!(msgs[2].command(), "INSERT 0 1");
    assert_refusal(&msgs, "denied by rule grants");
    assert_eq!(msgs[4].status(), 'I');
    // As in PostgreSQL: the implicit transaction up to Sync failed, so the first insert is
    // gone too, and the third never ran.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM departments WHERE id IN (9201, 9203)"
        )
        .await,
        0
    );
    assert!(logged("[pipe-1]"));
    assert!(!logged("[pipe-2]"));
    assert!(!logged("[pipe-3]"));
    // The session continues after Sync.
    let msgs = raw.query("SELECT 1");
    assert_eq!(tags(&msgs), "TDCZ", "{msgs:?}");

    // Inside an explicit transaction the pipeline's failure fails the transaction.
    raw.query("BEGIN");
    raw.send(
        &[
            pbe("INSERT INTO departments VALUES (9204, 'pc-pipe-9204', 1)"),
            pbe("/* [pipe-4] */ SELECT * FROM pg_stats"),
            pbe("/* [pipe-5] */ SELECT 1"),
            sync(),
        ]
        .concat(),
    );
    let msgs = raw.until_ready();
    assert_eq!(tags(&msgs), "12CEZ", "{msgs:?}");
    assert_refusal(&msgs, "denied by rule catalog-leak");
    assert_eq!(msgs[4].status(), 'E');
    assert_eq!(raw.query("COMMIT")[0].command(), "ROLLBACK");
    assert_eq!(
        count(&db, "SELECT count(*) FROM departments WHERE id = 9204").await,
        0
    );
    assert!(!logged("[pipe-4]") && !logged("[pipe-5]"));

    // tokio-postgres pipelining: each query has its own Sync, so only the refused one fails,
    // and the answers arrive in order.
    let client = connect(&gw, "agent").await;
    let (a, b, c, d) = tokio::join!(
        client.query("SELECT 1::int", &[]),
        client.query("/* [pipe-6] */ DELETE FROM patients", &[]),
        client.query("SELECT 3::int", &[]),
        client.simple_query("/* [pipe-7] */ SELECT * FROM pg_statistic"),
    );
    assert_eq!(a.expect("first")[0].get::<_, i32>(0), 1);
    let e = Failure::from(b.expect_err("refused"));
    assert!(e.message.contains("requires approval by rule"), "{e:?}");
    assert_eq!(c.expect("third")[0].get::<_, i32>(0), 3);
    assert_eq!(Failure::from(d.expect_err("refused")).code, "42501");
    assert!(!logged("[pipe-6]") && !logged("[pipe-7]"));
    assert_eq!(count(&db, "SELECT count(*) FROM patients").await, 10_000);
}

#[tokio::test]
async fn a_statement_whose_parse_was_refused_cannot_be_bound_or_described() {
    let gw = gateway();
    let db = direct().await;
    let mut raw = Raw::login(&gw, "agent");
    raw.send(
        &[
            parse("pc_bad", "/* [bind-1] */ DELETE FROM patients"),
            sync(),
        ]
        .concat(),
    );
    let msgs = raw.until_ready();
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_refusal(
        &msgs,
        "requires approval by rule agent-changes-need-approval",
    );

    raw.send(&[bind("", "pc_bad"), execute(""), sync()].concat());
    let msgs = raw.until_ready();
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_refusal(&msgs, "prepared statement \"pc_bad\" was refused");
    assert_eq!(msgs[1].status(), 'I');

    raw.send(&[describe_statement("pc_bad"), sync()].concat());
    let msgs = raw.until_ready();
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_refusal(&msgs, "prepared statement \"pc_bad\" was refused");

    // Parse, Bind, Execute of a refused statement in one go: one refusal, nothing runs.
    raw.send(
        &[
            parse("pc_bad2", "/* [bind-2] */ DELETE FROM patients"),
            bind("", "pc_bad2"),
            execute(""),
            sync(),
        ]
        .concat(),
    );
    let msgs = raw.until_ready();
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");

    // Inside a transaction the refused Bind fails it, as a missing statement would.
    raw.query("BEGIN");
    raw.send(&[bind("", "pc_bad"), execute(""), sync()].concat());
    let msgs = raw.until_ready();
    assert_refusal(&msgs, "was refused");
    assert_eq!(msgs.last().expect("Z").status(), 'E');
    raw.query("ROLLBACK");

    // Closing it and parsing an allowed statement under the same name works.
    raw.send(&[close_statement("pc_bad"), sync()].concat());
    assert_eq!(tags(&raw.until_ready()), "3Z");
    raw.send(
        &[
            parse("pc_bad", "SELECT count(*) FROM patients"),
            bind("", "pc_bad"),
            execute(""),
            sync(),
        ]
        .concat(),
    );
    let msgs = raw.until_ready();
    assert_eq!(tags(&msgs), "12DCZ", "{msgs:?}");

    assert!(!logged("[bind-1]") && !logged("[bind-2]"));
    assert_eq!(count(&db, "SELECT count(*) FROM patients").await, 10_000);
}

/// PostgreSQL applies any startup parameter it does not know as a setting (as `-c name=value`).
/// `standard_conforming_strings = off` makes the database lex `'\'` differently from the
/// gateway's parser: a statement the gateway reads as one harmless SELECT of two strings runs as
/// `SELECT ...; DELETE ...`. The gateway must refuse that parameter or pin the setting.
#[tokio::test]
async fn startup_parameters_cannot_change_how_statements_are_read() {
    let gw = gateway();
    let db = direct().await;
    let marker = "[startup-1]";
    let Ok(mut raw) = Raw::try_login(&gw, "reviewer", &[("standard_conforming_strings", "off")])
    else {
        return; // refused at login: fine
    };
    let msgs = raw.query("SHOW standard_conforming_strings");
    let value = msgs
        .iter()
        .find(|m| m.tag == b'D')
        .map(|m| String::from_utf8_lossy(&m.body[6..]).into_owned());
    let msgs = raw.query(&format!(
        "/* {marker} */ SELECT '\\', ' ; DELETE FROM lab_results WHERE id = -1; -- '"
    ));
    assert!(
        !msgs.iter().any(|m| m.tag == b'C' && m.command().starts_with("DELETE")),
        "standard_conforming_strings = {value:?} from a startup parameter smuggled a DELETE past the gateway: {msgs:?}"
    );
    assert_eq!(
        value.as_deref(),
        Some("on"),
        "the gateway pins standard_conforming_strings"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM lab_results").await, 40_000);
}
