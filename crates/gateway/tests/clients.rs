//! Real clients through the gateway and directly, with the same results: psql (scripts, `\copy`
//! both ways, Ctrl-C), pgbench in every query mode, tokio-postgres (extended protocol, binary,
//! pipelining, COPY), psycopg 3, asyncpg, node-postgres and JDBC.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use phigate_testkit::{run, Cluster, Gateway, GatewayOptions, APP_PASSWORD, APP_USER, DATABASE};

fn cluster() -> &'static Cluster {
    phigate_testkit::clinic(phigate::demo::SEED_SQL)
}

fn gateway() -> Gateway {
    Gateway::start(
        Path::new(env!("CARGO_BIN_EXE_phigate")),
        GatewayOptions::for_cluster(cluster()),
    )
    .expect("gateway starts")
}

/// The same database login the gateway uses, without the gateway.
fn direct_conninfo() -> String {
    format!(
        "host=127.0.0.1 port={} dbname={DATABASE} user={APP_USER} password={APP_PASSWORD} sslmode=disable",
        cluster().port()
    )
}

fn direct_url() -> String {
    format!(
        "postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
        cluster().port()
    )
}

/// Driver scripts use LISTEN/NOTIFY channels with fixed names; run them one at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn psql(conninfo: &str, script: &str, dir: &Path) -> (bool, String, String) {
    let script_path = dir.join("script.sql");
    std::fs::write(&script_path, script).expect("write script");
    run(Command::new("psql")
        .arg("-X")
        .args(["-v", "ON_ERROR_STOP=0", "-f", "script.sql"])
        .arg(conninfo)
        .current_dir(dir))
    .expect("psql runs")
}

const PSQL_SCRIPT: &str = r#"
\pset pager off
SELECT count(*) AS patients, count(DISTINCT ssn) AS ssns FROM patients;
SELECT id, mrn, last_name, date_of_birth, zip FROM patients ORDER BY id LIMIT 5;
SELECT d.name, count(*) FROM encounters e JOIN departments d ON d.id = e.department_id GROUP BY 1 ORDER BY 1;
SELECT $$dollar 'quoted'$$ AS s, E'tab\there' AS e, NULL::int AS n, 1.5::numeric(10,3) AS x, '{1,2}'::int[] AS a;
CREATE TEMP TABLE t (id int PRIMARY KEY, note text);
\copy t FROM 'in.csv' WITH (FORMAT csv)
SELECT * FROM t ORDER BY id;
\copy (SELECT id, mrn FROM patients WHERE id <= 20 ORDER BY id) TO 'out.csv' WITH (FORMAT csv, HEADER)
BEGIN;
INSERT INTO t VALUES (100, 'in tx');
SAVEPOINT s1;
INSERT INTO t VALUES (100, 'duplicate');
ROLLBACK TO s1;
COMMIT;
SELECT count(*) FROM t;
SELECT 1/0;
SELECT 'still alive' AS status;
PREPARE q(int) AS SELECT mrn FROM patients WHERE id = $1;
EXECUTE q(42);
DEALLOCATE q;
DO $$ BEGIN RAISE NOTICE 'notice from the server %', 7; END $$;
LISTEN psql_channel;
NOTIFY psql_channel, 'hello';
SELECT 1 \; SELECT 2 \; SELECT 3;
SELECT repeat('x', 100000) = repeat('x', 100000) AS big;
\d departments
"#;

#[test]
fn psql_script_gives_the_same_output_through_the_gateway() {
    let gw = gateway();
    let mut outputs = Vec::new();
    for conninfo in [direct_conninfo(), gw.conninfo("agent")] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("in.csv"),
            "1,alpha\n2,\"with, comma\"\n3,\n",
        )
        .expect("csv");
        let (_, stdout, stderr) = psql(&conninfo, PSQL_SCRIPT, dir.path());
        let copied =
            std::fs::read_to_string(dir.path().join("out.csv")).expect("\\copy to wrote a file");
        // psql prints the server's pid with async notifications; that differs per session.
        let stdout = stdout
            .lines()
            .map(|l| match l.find("received from server process with PID") {
                Some(i) => &l[..i],
                None => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        outputs.push((stdout, stderr, copied));
    }
    let (direct, through) = (&outputs[0], &outputs[1]);
    assert!(
        direct.0.contains("10000 | 10000"),
        "direct output:\n{}",
        direct.0
    );
    assert!(
        direct.2.starts_with("id,mrn\n1,MRN-"),
        "copy out: {}",
        direct.2
    );
    assert!(direct.1.contains("division by zero"), "{}", direct.1);
    assert!(
        direct.1.contains("notice from the server 7"),
        "{}",
        direct.1
    );
    assert!(
        direct
            .0
            .contains("Asynchronous notification \"psql_channel\" with payload \"hello\""),
        "{}",
        direct.0
    );
    assert_eq!(direct.0, through.0, "stdout differs");
    assert_eq!(direct.1, through.1, "stderr differs");
    assert_eq!(direct.2, through.2, "\\copy output differs");
}

#[test]
fn psql_ctrl_c_cancels_a_running_statement() {
    let gw = gateway();
    let started = Instant::now();
    let child = Command::new("psql")
        .args(["-X", "-c", "SELECT pg_sleep(30)"])
        .arg(gw.conninfo("agent"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql starts");
    std::thread::sleep(Duration::from_millis(1500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("psql ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "stderr: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cancel took {:?}",
        started.elapsed()
    );
    // The gateway logged that it relayed the cancel to the database.
    gw.wait_log("cancel request", 1).expect("logged");
}

#[test]
fn pgbench_runs_without_errors_in_every_query_mode() {
    let gw = gateway();
    let (ok, _, err) = run(Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", "--no-vacuum"])
        .arg(direct_conninfo()))
    .expect("pgbench -i");
    // Another test binary run may have created them already; either way they must exist now.
    assert!(ok || err.contains("already exists"), "pgbench -i: {err}");
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = run(Command::new("pgbench")
            .args(["-n", "-S", "-T", "3", "-c", "4", "-j", "2", "-M", mode])
            .arg(gw.conninfo("agent")))
        .expect("pgbench runs");
        assert!(ok, "pgbench -M {mode} failed:\n{out}\n{err}\n{}", gw.log());
        assert!(
            out.contains("number of failed transactions: 0"),
            "-M {mode}:\n{out}"
        );
        let tx: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse().ok())
            .expect("transaction count in pgbench output");
        assert!(tx > 100, "-M {mode}: only {tx} transactions");
    }
}

#[tokio::test]
async fn tokio_postgres_extended_binary_pipelining_and_copy() {
    use futures_util::{SinkExt, StreamExt, TryStreamExt};
    let gw = gateway();
    let (client, conn) = tokio_postgres::connect(&gw.conninfo("clinician"), tokio_postgres::NoTls)
        .await
        .expect("connects through the gateway");
    tokio::spawn(conn);

    // Extended protocol with binary parameters and results of several types.
    let row = client
        .query_one(
            "SELECT $1::int8 + 1, $2::text || '!', $3::bytea, $4::float8 * 2, $5::bool, $6::int4",
            &[
                &41i64,
                &"hi",
                &vec![0u8, 1, 255],
                &1.25f64,
                &true,
                &None::<i32>,
            ],
        )
        .await
        .expect("typed query");
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, Vec<u8>>(2), vec![0u8, 1, 255]);
    assert_eq!(row.get::<_, f64>(3), 2.5);
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, Option<i32>>(5), None);

    // A named statement reused, compared with the direct path.
    let stmt = client
        .prepare("SELECT mrn, ssn FROM patients WHERE id = $1")
        .await
        .expect("prepare");
    let (direct, dconn) = tokio_postgres::connect(&direct_conninfo(), tokio_postgres::NoTls)
        .await
        .expect("direct connection");
    tokio::spawn(dconn);
    for id in [1i32, 500, 9999] {
        let via = client.query_one(&stmt, &[&id]).await.expect("via gateway");
        let dir = direct
            .query_one("SELECT mrn, ssn FROM patients WHERE id = $1", &[&id])
            .await
            .expect("direct");
        assert_eq!(via.get::<_, String>(0), dir.get::<_, String>(0));
        assert_eq!(via.get::<_, String>(1), dir.get::<_, String>(1));
    }

    // Pipelining: many queries in flight on one connection at once.
    let futures = (0..50i32).map(|i| {
        let client = &client;
        async move {
            client
                .query_one("SELECT $1::int4 * 2", &[&i])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    });
    let results = futures_util::future::try_join_all(futures)
        .await
        .expect("pipelined queries");
    assert_eq!(results, (0..50).map(|i| i * 2).collect::<Vec<_>>());

    // COPY in and out.
    client
        .batch_execute("CREATE TEMP TABLE c (id int, v text)")
        .await
        .expect("temp table");
    let sink = client
        .copy_in("COPY c FROM STDIN")
        .await
        .expect("copy in starts");
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..20_000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone()))
        .await
        .expect("copy data");
    let copied = sink.finish().await.expect("copy done");
    assert_eq!(copied, 20_000);
    let out = client
        .copy_out("COPY (SELECT * FROM c ORDER BY id) TO STDOUT")
        .await
        .expect("copy out");
    let chunks: Vec<bytes::Bytes> = out.try_collect().await.expect("copy out data");
    let text: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(String::from_utf8(text).expect("utf8"), data);

    // An error inside a transaction leaves it failed, exactly as PostgreSQL does.
    client.batch_execute("BEGIN").await.expect("begin");
    let err = client
        .query("SELECT 1/0", &[])
        .await
        .expect_err("division by zero");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    let err = client
        .query("SELECT 1", &[])
        .await
        .expect_err("transaction is aborted");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    client.batch_execute("ROLLBACK").await.expect("rollback");
    let rows = client
        .simple_query("SELECT 'ok'")
        .await
        .expect("simple query after rollback");
    assert!(rows.iter().any(
        |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("ok"))
    ));

    // Server-side portals: fetch a large result in batches inside a transaction.
    let mut client = client;
    let tx = client.transaction().await.expect("tx");
    let portal = tx
        .bind("SELECT id FROM patients ORDER BY id", &[])
        .await
        .expect("bind portal");
    let mut total = 0usize;
    loop {
        let batch = tx.query_portal(&portal, 1000).await.expect("fetch");
        if batch.is_empty() {
            break;
        }
        total += batch.len();
    }
    assert_eq!(total, 10_000);
    tx.commit().await.expect("commit");
    let _ = StreamExt::next(&mut futures_util::stream::empty::<()>()).await;
}

fn python() -> String {
    std::env::var("PHIGATE_PYTHON").unwrap_or_else(|_| {
        let venv = repo_root().join("target/clients-venv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    })
}

/// Runs a driver check program (`script URL flags...`); it prints one line of JSON.
fn driver_check(program: &str, script: &str, url: &str, flags: &[&str]) -> String {
    let (ok, out, err) =
        run(Command::new(program).arg(script).arg(url).args(flags)).expect("driver program runs");
    assert!(
        ok,
        "{program} {script} {flags:?} failed against {url}:\n{out}\n{err}"
    );
    out
}

#[test]
fn psycopg3_gives_the_same_results_through_the_gateway() {
    let _serial = exclusive();
    let gw = gateway();
    let script = repo_root().join("tests/clients/python/check_psycopg.py");
    let script = script.to_str().expect("utf8 path");
    let py = python();
    let direct = driver_check(&py, script, &direct_url(), &["--cancel"]);
    let through = driver_check(&py, script, &gw.url("agent"), &["--cancel"]);
    assert!(direct.contains("\"named_cursor\""), "{direct}");
    assert_eq!(direct, through);
}

#[test]
fn node_postgres_gives_the_same_results_through_the_gateway() {
    let _serial = exclusive();
    let gw = gateway();
    let script = repo_root().join("tests/clients/node/check_pg.js");
    let script = script.to_str().expect("utf8 path");
    let direct = driver_check("node", script, &direct_url(), &[]);
    let through = driver_check("node", script, &gw.url("agent"), &[]);
    assert!(direct.contains("\"driver\":\"pg\""), "{direct}");
    assert_eq!(direct, through);
}

#[test]
fn asyncpg_gives_the_same_results_through_the_gateway() {
    let _serial = exclusive();
    let gw = gateway();
    let script = repo_root().join("tests/clients/python/check_asyncpg.py");
    let script = script.to_str().expect("utf8 path");
    let py = python();
    let direct = driver_check(&py, script, &direct_url(), &[]);
    let through = driver_check(&py, script, &gw.url("agent"), &[]);
    assert!(direct.contains("\"driver\": \"asyncpg\""), "{direct}");
    assert_eq!(direct, through);
}

#[test]
fn jdbc_gives_the_same_results_through_the_gateway() {
    let _serial = exclusive();
    let gw = gateway();
    let jar = "/usr/share/java/postgresql.jar";
    let classes = tempfile::tempdir().expect("tempdir");
    let source = repo_root().join("tests/clients/java/CheckJdbc.java");
    let (ok, out, err) = run(Command::new("javac")
        .args(["-cp", jar, "-d"])
        .arg(classes.path())
        .arg(&source))
    .expect("javac runs");
    assert!(ok, "javac: {out}{err}");
    let classpath = format!("{jar}:{}", classes.path().display());
    let url = |port: u16, user: &str, password: &str| {
        format!("jdbc:postgresql://127.0.0.1:{port}/{DATABASE}?user={user}&password={password}&sslmode=disable")
    };
    let check = |jdbc_url: String| {
        let (ok, out, err) =
            run(Command::new("java").args(["-cp", &classpath, "CheckJdbc", &jdbc_url]))
                .expect("java runs");
        assert!(ok, "CheckJdbc failed against {jdbc_url}:\n{out}\n{err}");
        out
    };
    let direct = check(url(cluster().port(), APP_USER, APP_PASSWORD));
    let through = check(url(gw.pg_port, Gateway::role("agent"), gw.token("agent")));
    assert!(direct.contains("patients=10000"), "{direct}");
    assert_eq!(direct, through);
}
