//! PHI masking: nothing raw leaves for a masked role, by any path.
//!
//! The demo policy (the agent is masked) in front of the demo dataset. The test reads every PHI
//! value through a direct connection, then runs a corpus of queries as the agent — plain
//! columns, expressions, whole rows, JSON, aggregates, CTEs, set operations, subqueries,
//! cursors, prepared statements, COPY in three formats, errors that quote values, predicates,
//! catalog and statistics probes — over the simple and the extended protocol, text and binary
//! results, with tokio-postgres and psycopg, and asserts that no PHI value appears anywhere in
//! what came back: rows, errors, notices, COPY data.

use std::path::Path;
use std::process::Command;

use phigate_testkit::{Gateway, GatewayOptions};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{NoTls, SimpleQueryMessage};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

mod mask_corpus;

use mask_corpus::{clinic, Leaks, COPIES, CORPUS, SIMPLE_ONLY};

fn demo_gateway(extra: &str) -> Gateway {
    let mut opts = GatewayOptions::for_cluster(clinic());
    opts.policy = phigate::demo::policy_toml().expect("policy TOML");
    // Writes the agent tries are refused at once rather than held for a reviewer.
    opts.extra = format!("[approvals]\nenabled = false\n{extra}");
    Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

/// Any column's bytes as sent (text or binary), for the leak check.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

type Notices = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The agent's connection; notices are collected for the leak check.
async fn agent(gw: &Gateway) -> (tokio_postgres::Client, Notices) {
    let (client, mut conn) = tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .expect("agent connects");
    let notices = Notices::default();
    let sink = notices.clone();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = msg {
                if let Ok(mut v) = sink.lock() {
                    v.push(format!("{} {:?} {:?}", n.message(), n.detail(), n.where_()));
                }
            }
        }
    });
    (client, notices)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_phi_leaves_for_the_agent_by_any_path_tokio_postgres() {
    let gw = demo_gateway("");
    let mut leaks = Leaks::new();
    let (client, notices) = agent(&gw).await;
    let mut answered = 0;
    let mut refused = 0;
    // Simple protocol (text results).
    for sql in CORPUS.iter().chain(SIMPLE_ONLY) {
        match client.simple_query(sql).await {
            Ok(msgs) => {
                answered += 1;
                for m in msgs {
                    if let SimpleQueryMessage::Row(row) = m {
                        for i in 0..row.len() {
                            if let Some(v) = row.get(i) {
                                leaks.check(sql, v.as_bytes());
                            }
                        }
                    }
                }
            }
            Err(e) => {
                refused += 1;
                leaks.check_error(sql, &e);
            }
        }
    }
    // Extended protocol, binary results.
    for sql in CORPUS {
        let stmt = match client.prepare(sql).await {
            Ok(s) => s,
            Err(e) => {
                leaks.check_error(sql, &e);
                continue;
            }
        };
        match client.query(&stmt, &[]).await {
            Ok(rows) => {
                for row in rows {
                    for i in 0..row.len() {
                        if let Ok(Some(Raw(v))) = row.try_get::<_, Option<Raw>>(i) {
                            leaks.check(sql, &v);
                        }
                    }
                }
            }
            Err(e) => leaks.check_error(sql, &e),
        }
    }
    // COPY TO STDOUT: text, csv, binary.
    for sql in COPIES {
        match client.copy_out(*sql).await {
            Ok(stream) => {
                use futures_util::TryStreamExt;
                let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap_or_default();
                for c in chunks {
                    leaks.check(sql, &c);
                }
            }
            Err(e) => leaks.check_error(sql, &e),
        }
    }
    for n in notices.lock().map(|v| v.clone()).unwrap_or_default() {
        leaks.check("notice", n.as_bytes());
    }
    assert!(CORPUS.len() + SIMPLE_ONLY.len() + COPIES.len() >= 80);
    // The corpus is not all refusals: the agent does get (masked) data.
    assert!(
        answered > 50,
        "only {answered} queries answered ({refused} refused)"
    );
    assert!(
        leaks.checked > 1_000_000,
        "only {} bytes checked",
        leaks.checked
    );
}

/// The same corpus through psycopg 3, text and binary: every value decoded by its type.
#[test]
fn no_phi_leaves_for_the_agent_psycopg_and_types_decode() {
    let gw = demo_gateway("");
    let mut leaks = Leaks::new();
    let python = std::env::var("PHIGATE_PYTHON").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/clients-venv/bin/python")
            .display()
            .to_string()
    });
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/python/mask_corpus.py");
    let corpus: Vec<&str> = CORPUS.iter().chain(SIMPLE_ONLY).copied().collect();
    let out = Command::new(python)
        .arg(script)
        .arg(gw.conninfo("agent"))
        .arg(serde_json::to_string(&corpus).expect("json"))
        .arg(serde_json::to_string(COPIES).expect("json"))
        .output()
        .expect("python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psycopg corpus failed: {stderr}");
    leaks.check("psycopg output", &out.stdout);
    leaks.check("psycopg errors", &out.stderr);
    let summary = stderr.lines().last().unwrap_or_default();
    assert!(summary.starts_with("ok"), "{stderr}");
    assert!(
        leaks.checked > 1_000_000,
        "only {} bytes checked",
        leaks.checked
    );
}

/// What the agent sees is still useful: tokens are deterministic (joins and GROUP BY work),
/// SSNs show the last four, birth dates the year; the clinician sees real values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_values_are_useful_and_typed() {
    let gw = demo_gateway("");
    let (agent, conn) = tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .expect("agent");
    tokio::spawn(conn);
    let (clinician, conn) = tokio_postgres::connect(&gw.conninfo("clinician"), NoTls)
        .await
        .expect("clinician");
    tokio::spawn(conn);
    let q = "SELECT first_name, ssn, date_of_birth, zip, email, mrn FROM patients WHERE id = 42";
    let a = agent.query_one(q, &[]).await.expect("agent row");
    let c = clinician.query_one(q, &[]).await.expect("clinician row");
    let real_ssn: String = c.get(1);
    let masked_ssn: String = a.get(1);
    assert_eq!(
        masked_ssn,
        format!("***-**-{}", &real_ssn[real_ssn.len() - 4..])
    );
    let first: String = a.get(0);
    assert!(
        first.starts_with("tok_") && first != c.get::<_, String>(0),
        "{first}"
    );
    let dob: chrono::NaiveDate = a.get(2);
    let real_dob: chrono::NaiveDate = c.get(2);
    assert_eq!(
        (
            dob.format("%m-%d").to_string(),
            dob.format("%Y").to_string()
        ),
        ("01-01".into(), real_dob.format("%Y").to_string())
    );
    let zip: String = a.get(3);
    assert!(zip.ends_with("**") && zip.len() == 5, "{zip}");
    // Deterministic: the same value gives the same token, so GROUP BY and joins work.
    let again: String = agent
        .query_one("SELECT first_name FROM patients WHERE id = 42", &[])
        .await
        .expect("again")
        .get(0);
    assert_eq!(again, first);
    let joined: i64 = agent
        .query_one(
            "SELECT count(*) FROM patients a JOIN patients b ON a.mrn = b.mrn",
            &[],
        )
        .await
        .expect("join on tokens")
        .get(0);
    assert_eq!(joined, 10_000);
    let groups: i64 = agent
        .query_one("SELECT count(DISTINCT last_name) FROM patients", &[])
        .await
        .expect("distinct")
        .get(0);
    let real_groups: i64 = clinician
        .query_one("SELECT count(DISTINCT last_name) FROM patients", &[])
        .await
        .expect("distinct")
        .get(0);
    assert_eq!(groups, real_groups, "tokens keep distinct values distinct");
    // The token is HMAC-SHA-256 under the key in the data directory.
    let key = std::fs::read(gw.data_dir().join("keys/masking-token.key")).expect("token key");
    let real_first: String = c.get(0);
    assert_eq!(
        first,
        format!(
            "tok_{}",
            &phigate::masking::column_token(&key, &real_first)[..16]
        )
    );
    // Other tables with no PHI pass unchanged; free text is redacted.
    let note: String = agent
        .query_one("SELECT notes FROM encounters LIMIT 1", &[])
        .await
        .expect("note")
        .get(0);
    assert_eq!(note, "[redacted]");
}

/// A new token key (and a reload) changes every token; the same key gives the same tokens
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_key_rotation() {
    // A session that began under the old key while the reload retires it may fail: the
    // rotation is judged by sessions that begin after it.
    let try_token = |gw: &Gateway| {
        let info = gw.conninfo("agent");
        async move {
            let (c, conn) = tokio_postgres::connect(&info, NoTls).await.ok()?;
            tokio::spawn(conn);
            c.query_one("SELECT last_name FROM patients WHERE id = 7", &[])
                .await
                .ok()
                .map(|r| r.get::<_, String>(0))
        }
    };
    let token = |gw: &Gateway| {
        let t = try_token(gw);
        async move { t.await.expect("the agent reads a token") }
    };
    let gw = demo_gateway("");
    let before = token(&gw).await;
    let key_file = gw.data_dir().join("keys/masking-token.key");
    let old_key = std::fs::read(&key_file).expect("key");
    let old_login = phigate::masking::login_name("ai-agent", &old_key);
    let exists = |login: &str| {
        clinic()
            .psql(
                "postgres",
                &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{login}'"),
            )
            .expect("psql")
            .trim()
            .to_owned()
    };
    assert_eq!(exists(&old_login), "1");
    std::fs::write(&key_file, [9u8; 32]).expect("new key");
    gw.reload().expect("SIGHUP");
    let mut after = before.clone();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Some(t) = try_token(&gw).await {
            after = t;
            if after != before {
                break;
            }
        }
    }
    assert_ne!(after, before, "the token did not change with the key");
    assert!(after.starts_with("tok_"));
    assert_eq!(token(&gw).await, after, "deterministic under the new key");
    // The login made under the old key (which holds the old key in the database) is gone.
    assert_eq!(exists(&old_login), "0", "{}", gw.log());
    let new_login = phigate::masking::login_name("ai-agent", &[9u8; 32]);
    assert_eq!(exists(&new_login), "1");
}

/// `phigate discover` proposes tags from names and contents, and prints no sampled value.
#[test]
fn discover_proposes_tags_without_printing_values() {
    let gw = demo_gateway("");
    let out = Command::new(bin())
        .args(["discover", "--config"])
        .arg(gw.config_path())
        .output()
        .expect("discover");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("table = \"public.patients\""), "{text}");
    for line in [
        "ssn = \"ssn\"",
        "email = \"email\"",
        "phone = \"phone\"",
        "zip = \"zip\"",
        "first_name = \"name\"",
        "notes = \"free_text\"",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
    // The proposal parses as config.
    let parsed: toml::Value = toml::from_str(&text).expect("a TOML snippet");
    assert!(parsed.get("phi").is_some());
    let mut leaks = Leaks::new();
    leaks.check("discover output", text.as_bytes());
}

/// Predicates on non-tokenized PHI are refused for the agent (rule phi-predicate); tokens may
/// be joined and grouped on; the clinician is not masked and not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predicates_on_phi_follow_the_policy() {
    let gw = demo_gateway("");
    let (agent, _) = agent(&gw).await;
    for sql in [
        "SELECT id FROM patients WHERE ssn LIKE '1%'",
        "SELECT id FROM patients ORDER BY date_of_birth",
        "SELECT zip, count(*) FROM patients GROUP BY zip",
        "SELECT p.id FROM patients p JOIN encounters e ON e.patient_id = p.id WHERE e.admitted_at > now() - interval '1 year'",
        "SELECT id FROM patients WHERE id IN (SELECT id FROM patients WHERE phone LIKE '%555%')",
    ] {
        let err = agent.simple_query(sql).await.expect_err(sql);
        let db = err.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "42501", "{sql}");
        assert!(db.message().contains("rule phi-predicate"), "{sql}: {}", db.message());
    }
    for sql in [
        "SELECT count(*) FROM patients a JOIN patients b ON a.mrn = b.mrn",
        "SELECT last_name, count(*) FROM patients GROUP BY last_name",
        "SELECT id, ssn FROM patients WHERE id < 10 ORDER BY id",
    ] {
        agent
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let (clinician, conn) = tokio_postgres::connect(&gw.conninfo("clinician"), NoTls)
        .await
        .expect("clinician");
    tokio::spawn(conn);
    clinician
        .simple_query("SELECT id FROM patients WHERE ssn LIKE '1%' ORDER BY date_of_birth")
        .await
        .expect("the clinician is not masked");
}

/// A view (or partition) over a PHI table is never granted to a masked login, even when the
/// role's grants cover every table of the schema: only the masking views show PHI rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_phi_tables_are_not_granted() {
    clinic()
        .psql(
            "clinic",
            "CREATE OR REPLACE VIEW public.patient_names AS SELECT id, first_name, last_name FROM public.patients",
        )
        .expect("view");
    let mut roles = phigate::demo::demo_roles();
    for r in roles.iter_mut().filter(|r| r.name == "ai-agent") {
        r.grants = vec![phigate_policy::GrantConfig {
            schema: "public".into(),
            tables: vec!["*".into()],
            actions: vec!["select".into()],
        }];
    }
    let mut opts = GatewayOptions::for_cluster(clinic());
    opts.policy = phigate::demo::policy_toml_with(roles).expect("policy TOML");
    opts.extra = "[approvals]\nenabled = false\n".into();
    let gw = Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    if tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .is_err()
    {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        panic!("agent cannot connect:\n{}", gw.log());
    }
    let (agent, _) = agent(&gw).await;
    let err = agent
        .simple_query("SELECT * FROM patient_names LIMIT 5")
        .await
        .expect_err("the database refuses");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42501", "{}", db.message());
    // The non-PHI tables the grant covers are readable as before.
    agent
        .simple_query("SELECT count(*) FROM departments")
        .await
        .expect("departments");
}
