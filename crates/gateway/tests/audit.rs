//! The audit log as an auditor relies on it: complete (every statement PostgreSQL ran has a
//! record with the right identity, even after `kill -9`), tamper-evident (`phigate audit
//! verify` names the first bad record), fail-closed (a full disk refuses statements), and
//! readable (search, export, the access report).
//!
//! PostgreSQL itself is the witness: the test cluster logs every statement
//! (`log_statement = all`) with the session's `application_name`, which carries the subject.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use phigate_testkit::{Cluster, ClusterOptions, Gateway, GatewayOptions};
use serde_json::Value;
use tokio_postgres::NoTls;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

const SEED: &str = "
CREATE TABLE patients (id int PRIMARY KEY, name text, ssn text);
INSERT INTO patients SELECT g, 'Patient ' || g, lpad(g::text, 9, '0') FROM generate_series(1, 50) g;
CREATE TABLE notes (id serial PRIMARY KEY, author text, body text);
";

const POLICY: &str = r#"
[[role]]
name = "ai-agent"
[[role.grant]]
schema = "public"
tables = ["patients"]
actions = ["select"]
[[role.grant]]
schema = "public"
tables = ["notes"]
actions = ["select", "insert"]

[[role]]
name = "clinician"
[[role.grant]]
schema = "public"
actions = ["*"]
"#;

/// A cluster of this test binary's own that logs every statement with its application_name.
fn witness() -> &'static Cluster {
    static CLUSTER: std::sync::OnceLock<&'static Cluster> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start(ClusterOptions {
            settings: vec![
                ("log_statement".into(), "all".into()),
                ("log_line_prefix".into(), "%m [%p] app=%a ".into()),
                ("max_connections".into(), "200".into()),
            ],
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("cannot start the witness cluster: {e}"));
        phigate_testkit::prepare_clinic(&cluster, SEED)
            .unwrap_or_else(|e| panic!("cannot seed: {e}"));
        cluster
            .leak_for_process()
            .unwrap_or_else(|e| panic!("cannot keep the cluster: {e}"))
    })
}

fn gateway(audit: &str) -> Gateway {
    let mut opts = GatewayOptions::for_cluster(witness());
    opts.policy = POLICY.to_owned();
    opts.extra = format!("[audit]\nstatement_text = \"full\"\n{audit}\n");
    Gateway::start_with_identities(bin(), opts, &["agent", "clinician"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

async fn connect(gw: &Gateway, who: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&gw.conninfo(who), NoTls)
        .await
        .unwrap_or_else(|e| panic!("{who}: {e:?}"));
    tokio::spawn(conn);
    client
}

fn phigate(args: &[&str]) -> (bool, String, String) {
    phigate_testkit::run(Command::new(bin()).args(args)).expect("run phigate")
}

fn records(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for seg in phigate_audit::store::segments(dir).expect("segments") {
        let text = std::fs::read_to_string(seg).expect("segment");
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                out.push(v);
            }
        }
    }
    out
}

/// What PostgreSQL ran for gateway sessions: (subject, statement text), from its log.
fn database_statements(cluster: &Cluster, gw_marker: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in cluster.server_log().lines() {
        let Some((prefix, rest)) = line.split_once(" LOG:  ") else {
            continue;
        };
        let text = if let Some(t) = rest.strip_prefix("statement: ") {
            t
        } else if let Some(t) = rest.strip_prefix("execute ") {
            match t.split_once(": ") {
                Some((_, t)) => t,
                None => continue,
            }
        } else {
            continue;
        };
        let Some(app) = prefix.split_once("app=").map(|(_, a)| a) else {
            continue;
        };
        let Some(subject) = app
            .split_once("phigate:")
            .map(|(_, s)| s.trim_end_matches(')'))
        else {
            continue; // not a gateway session (the gateway's own catalog reads, the test's)
        };
        if !text.contains(gw_marker) {
            continue;
        }
        out.push((subject.to_owned(), text.to_owned()));
    }
    out
}

/// Every statement PostgreSQL ran has an allowed `statement` record of the same subject (a
/// statement run N times has at least N records).
fn assert_complete(db: &[(String, String)], audit: &[Value]) {
    let mut recorded: HashMap<(String, String), usize> = HashMap::new();
    for r in audit
        .iter()
        .filter(|r| r["type"] == "statement" && r["decision"] == "allow")
    {
        let key = (
            r["subject"].as_str().unwrap_or_default().to_owned(),
            r["text"].as_str().unwrap_or_default().to_owned(),
        );
        *recorded.entry(key).or_default() += 1;
    }
    let mut ran: HashMap<(String, String), usize> = HashMap::new();
    for s in db {
        *ran.entry(s.clone()).or_default() += 1;
    }
    assert!(
        !ran.is_empty(),
        "the database log shows no gateway statement"
    );
    for (key, n) in &ran {
        let have = recorded.get(key).copied().unwrap_or(0);
        assert!(
            have >= *n,
            "{key:?} ran {n} time(s) in the database but has {have} audit record(s)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_statement_the_database_ran_has_an_audit_record() {
    let gw = gateway("");
    let marker = format!("m{}", gw.pg_port);
    let agent = connect(&gw, "agent").await;
    let clinician = connect(&gw, "clinician").await;
    // Simple protocol, several statements in one Query, a transaction.
    agent
        .simple_query(&format!(
            "SELECT name FROM patients WHERE id <= 3 /* {marker} */; SELECT count(*) FROM notes /* {marker} */"
        ))
        .await
        .expect("agent reads");
    agent
        .batch_execute(&format!(
            "BEGIN /* {marker} */; INSERT INTO notes (author, body) VALUES ('agent', 'n1 {marker}'); COMMIT /* {marker} */"
        ))
        .await
        .expect("agent writes in a transaction");
    // Extended protocol with parameters.
    for id in 1..=4 {
        agent
            .query(
                &format!("SELECT ssn FROM patients WHERE id = $1 /* {marker} */"),
                &[&id],
            )
            .await
            .expect("agent extended");
    }
    // Denied: never reaches the database, still recorded.
    let err = agent
        .simple_query(&format!("DELETE FROM patients /* {marker} */"))
        .await
        .expect_err("denied");
    assert!(err.to_string().contains("db error") || err.as_db_error().is_some());
    // An error inside the database.
    clinician
        .simple_query(&format!("SELECT 1 / 0 /* {marker} */"))
        .await
        .expect_err("division by zero");
    clinician
        .execute(
            &format!("UPDATE notes SET body = body || '!' WHERE author = $1 /* {marker} */"),
            &[&"agent"],
        )
        .await
        .expect("clinician update");
    drop(agent);
    drop(clinician);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let dir = gw.data_dir().join("audit");
    let audit = records(&dir);
    let db = database_statements(witness(), &marker);
    assert_complete(&db, &audit);

    // The refusal is recorded with its rule, and nothing of it reached the database.
    let denied: Vec<&Value> = audit
        .iter()
        .filter(|r| r["type"] == "statement" && r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["subject"], "agent@test.phigate");
    assert!(!db.iter().any(|(_, t)| t.starts_with("DELETE")));

    // statement_end: rows and SQLSTATE as the client saw them.
    let end_of = |text_part: &str| -> Value {
        let st = audit
            .iter()
            .find(|r| {
                r["type"] == "statement"
                    && r["text"].as_str().is_some_and(|t| t.contains(text_part))
            })
            .unwrap_or_else(|| panic!("no statement {text_part}"));
        audit
            .iter()
            .find(|r| {
                r["type"] == "statement_end" && r["session"] == st["session"] && r["n"] == st["n"]
            })
            .unwrap_or_else(|| panic!("no statement_end for {text_part}"))
            .clone()
    };
    let e = end_of("WHERE id <= 3");
    assert_eq!(e["sqlstate"], "00000");
    assert_eq!(
        e["rows"],
        3 + 1,
        "3 patients + 1 count row in one Query: {e}"
    );
    assert_eq!(end_of("1 / 0")["sqlstate"], "22012");
    assert_eq!(end_of("DELETE FROM patients")["sqlstate"], "42501");
    let upd = end_of("UPDATE notes");
    assert_eq!(
        (upd["sqlstate"].clone(), upd["command"].clone()),
        ("00000".into(), "UPDATE".into())
    );
    // Parameters are kept (full mode here); sessions start and end with the identity.
    // tokio-postgres sends an int4 in binary: shown as hex in full mode.
    assert!(
        audit
            .iter()
            .any(|r| r["type"] == "statement" && r["params"] == serde_json::json!(["\\x00000003"])),
        "no statement with the bound parameter 3"
    );
    assert!(audit.iter().any(|r| r["type"] == "session_start"
        && r["subject"] == "clinician@test.phigate"
        && r["credential"] == "static-token"));

    // The CLI: verify, search, export, report.
    let dd = gw.data_dir();
    let dd = dd.to_str().expect("utf-8");
    let (ok, out, err) = phigate(&["audit", "verify", "--data-dir", dd]);
    assert!(ok, "verify: {out} {err}");
    assert!(out.starts_with("ok:"), "{out}");
    let (ok, out, _) = phigate(&[
        "audit",
        "search",
        "--data-dir",
        dd,
        "--subject",
        "agent@test.phigate",
        "--decision",
        "deny",
    ]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (ok, out, _) = phigate(&[
        "audit",
        "search",
        "--data-dir",
        dd,
        "--table",
        "patients",
        "--type",
        "statement",
    ]);
    assert!(ok);
    assert!(out.lines().count() >= 5, "{out}");
    let (ok, csv, _) = phigate(&["audit", "export", "--data-dir", dd, "--format", "csv"]);
    assert!(ok);
    assert!(csv.starts_with("seq,ts,type"));
    assert_eq!(csv.lines().count(), audit.len() + 1);
    let (ok, report, err) = phigate(&["audit", "report", "--data-dir", dd, "--json"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&report).expect("report JSON");
    let agent_report = report["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .find(|i| i["subject"] == "agent@test.phigate")
        .expect("agent in the report")
        .clone();
    assert_eq!(agent_report["denied"], 1);
    let patients_rows = agent_report["tables"]
        .as_object()
        .expect("tables")
        .iter()
        .filter(|(k, _)| k.ends_with("patients"))
        .map(|(_, v)| v["rows"].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert!(patients_rows >= 3 + 4, "{agent_report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_that_reached_the_database() {
    // Reads that change nothing go to the database once their record is written (not yet
    // durable): a killed process still loses none of them.
    let mut gw = gateway("read_durability = \"results\"\n");
    let marker = format!("k{}", gw.pg_port);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let info = gw.conninfo(if w % 2 == 0 { "agent" } else { "clinician" });
        let marker = marker.clone();
        tasks.push(tokio::spawn(async move {
            let Ok((client, conn)) = tokio_postgres::connect(&info, NoTls).await else {
                return 0;
            };
            tokio::spawn(conn);
            let mut n = 0;
            loop {
                let sql =
                    format!("INSERT INTO notes (author, body) VALUES ('w{w}', '{marker} {n}')");
                if client.simple_query(&sql).await.is_err() {
                    return n;
                }
                let q = format!("SELECT count(*) FROM notes WHERE body LIKE $1 /* {marker} */");
                if client.query(&q, &[&format!("{marker}%")]).await.is_err() {
                    return n;
                }
                // A read that calls no function: forwarded once its record is written, its
                // results held until the record is durable.
                let q = format!("SELECT id FROM notes WHERE author = $1 /* {marker} */");
                if client.query(&q, &[&format!("w{w}")]).await.is_err() {
                    return n;
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    gw.wait_exit(Duration::from_secs(10)).expect("gateway gone");
    let mut done = 0;
    for t in tasks {
        done += t.await.expect("join");
    }
    assert!(done > 10, "the workload barely ran ({done} rounds)");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let dir = gw.data_dir().join("audit");
    assert_complete(&database_statements(witness(), &marker), &records(&dir));
    let dd = gw.data_dir();
    let (ok, out, err) = phigate(&["audit", "verify", "--data-dir", dd.to_str().expect("utf-8")]);
    assert!(ok, "verify after kill -9: {out} {err}");
}

/// Copies the audit directory to a fresh place for one tampering case.
fn copy_of(src: &Path, into: &Path, name: &str) -> PathBuf {
    let dst = into.join(name);
    let ok = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(&dst)
        .status()
        .expect("cp")
        .success();
    assert!(ok);
    dst
}

fn segment(dir: &Path) -> PathBuf {
    phigate_audit::store::segments(dir)
        .expect("segments")
        .pop()
        .expect("a segment")
}

fn rewrite_lines(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    f(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

fn verify(dir: &Path, mirror: Option<&Path>) -> (bool, String) {
    let mut args = vec![
        "audit",
        "verify",
        "--data-dir",
        dir.to_str().expect("utf-8"),
    ];
    if let Some(m) = mirror {
        args.extend(["--mirror", m.to_str().expect("utf-8")]);
    }
    let (ok, out, err) = phigate(&args);
    (ok, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected() {
    let mirror = tempfile::tempdir().expect("mirror");
    let mut gw = gateway(&format!(
        "mirror_dir = \"{}\"\ncheckpoint_every_records = 5\n",
        mirror.path().display()
    ));
    let client = connect(&gw, "clinician").await;
    for i in 0..12 {
        client
            .simple_query(&format!("SELECT {i} AS tamper_test"))
            .await
            .expect("query");
    }
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.terminate().expect("SIGTERM");
    gw.wait_exit(Duration::from_secs(20)).expect("stopped");
    let src = gw.data_dir().join("audit");
    let work = tempfile::tempdir().expect("work");

    let intact = copy_of(&src, work.path(), "intact");
    let (ok, out) = verify(&intact, Some(mirror.path()));
    assert!(ok, "the untouched log must verify: {out}");
    let n = records(&intact).len();
    assert!(n > 25, "{n} records");

    // A flipped byte inside a record.
    let d = copy_of(&src, work.path(), "flip");
    rewrite_lines(&segment(&d), |l| {
        l[10] = l[10].replacen("tamper_test", "tamper_tesT", 1)
    });
    let (ok, out) = verify(&d, None);
    assert!(
        !ok && out.contains("record 11") && out.contains("altered"),
        "{out}"
    );

    // A record deleted.
    let d = copy_of(&src, work.path(), "delete");
    rewrite_lines(&segment(&d), |l| {
        l.remove(7);
    });
    let (ok, out) = verify(&d, None);
    assert!(!ok && out.contains("record 8 is missing"), "{out}");

    // Two records swapped.
    let d = copy_of(&src, work.path(), "swap");
    rewrite_lines(&segment(&d), |l| l.swap(3, 4));
    let (ok, out) = verify(&d, None);
    assert!(
        !ok && out.contains("record 4 is missing or out of order"),
        "{out}"
    );

    // The tail cut off (whole records): the signed checkpoints still name the last record.
    let d = copy_of(&src, work.path(), "truncate");
    rewrite_lines(&segment(&d), |l| l.truncate(l.len() - 3));
    let (ok, out) = verify(&d, None);
    assert!(!ok && out.contains("cut off the end"), "{out}");

    // ... together with the local checkpoints: the mirror still knows.
    let d = copy_of(&src, work.path(), "truncate-all");
    rewrite_lines(&segment(&d), |l| l.truncate(l.len() - 3));
    std::fs::remove_file(d.join("checkpoints.jsonl")).expect("rm checkpoints");
    let (ok, out) = verify(&d, Some(mirror.path()));
    assert!(!ok && out.contains("cut off the end"), "{out}");

    // A checkpoint replaced: moved to an earlier record (the signature no longer matches) ...
    let d = copy_of(&src, work.path(), "checkpoint");
    rewrite_lines(&d.join("checkpoints.jsonl"), |l| {
        let mut cp: Value = serde_json::from_str(&l[0]).expect("checkpoint");
        cp["seq"] = Value::from(cp["seq"].as_u64().unwrap_or(1) - 1);
        l[0] = cp.to_string();
    });
    let (ok, out) = verify(&d, None);
    assert!(!ok && out.contains("not signed by the audit key"), "{out}");

    // ... or re-signed with another key after rewriting history.
    let d = copy_of(&src, work.path(), "resigned");
    let other = phigate_audit::SigningKey::from_pkcs8(
        &phigate_audit::SigningKey::generate_pkcs8().expect("key"),
    )
    .expect("key");
    rewrite_lines(&d.join("checkpoints.jsonl"), |l| {
        let cp: phigate_audit::checkpoint::Checkpoint =
            serde_json::from_str(&l[0]).expect("checkpoint");
        l[0] = serde_json::to_string(&other.sign(cp.seq, &cp.hash, &cp.ts)).expect("json");
    });
    let (ok, out) = verify(&d, None);
    assert!(!ok && out.contains("not signed by the audit key"), "{out}");
}

/// A real full disk: the audit directory on a tiny tmpfs.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "cannot mount a tmpfs (the test needs root)");
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_statements_and_recovers() {
    let base = tempfile::tempdir().expect("dir");
    let disk = Tmpfs::mount(&base.path().join("audit"), "512k");
    let gw = gateway(&format!("dir = \"{}\"\n", disk.0.display()));
    let marker = format!("full{}", gw.pg_port);
    let first = connect(&gw, "clinician").await;
    let second = connect(&gw, "agent").await;
    first.simple_query("SELECT 1").await.expect("works");
    let prepared = second
        .prepare("SELECT count(*) FROM notes")
        .await
        .expect("prepared while the log is healthy");

    // Fill the disk.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=1000"])
        .arg(format!("of={}", disk.0.join("filler").display()))
        .output()
        .expect("dd");

    // The disk's last partly used page still takes a few records; the first statement whose
    // record cannot be written never runs, and its session ends.
    let mut ran = 0;
    let err = loop {
        let sql = format!("INSERT INTO notes (author, body) VALUES ('x', '{marker} {ran}')");
        match first.simple_query(&sql).await {
            Ok(_) => ran += 1,
            Err(e) => break e,
        }
        assert!(ran < 200, "the audit log never filled up");
    };
    let text = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(text.contains("audit log cannot be written"), "{err:?}");
    // Other sessions: refused with a clear error, and they go on.
    let err = second
        .simple_query(&format!(
            "INSERT INTO notes (author, body) VALUES ('y', '{marker} b')"
        ))
        .await
        .expect_err("refused");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "58030");
    assert!(db.message().contains("audit log cannot be written"));
    // Every path: a statement prepared earlier is not bound either.
    let err = second
        .query(&prepared, &[])
        .await
        .expect_err("a statement prepared before the log failed is refused too");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("58030"));
    // New sessions cannot start.
    let refused = tokio_postgres::connect(&gw.conninfo("agent"), NoTls).await;
    assert!(refused.is_err());
    let (code, body) = gw.http_get("/readyz").expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"audit\":\"failing\""), "{body}");

    // Space again: the writer notices within a second or two, and statements run again.
    std::fs::remove_file(disk.0.join("filler")).expect("rm filler");
    let mut recovered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if second.simple_query("SELECT 1").await.is_ok() {
            recovered = true;
            break;
        }
    }
    assert!(
        recovered,
        "statements did not resume after the disk had space again; gateway log:\n{}",
        gw.log()
    );
    // Nothing refused reached the database: exactly the statements that were recorded ran.
    let count = witness()
        .psql(
            "clinic",
            &format!("SELECT count(*) FROM notes WHERE body LIKE '{marker}%'"),
        )
        .expect("count");
    assert_eq!(count.trim(), ran.to_string());
    let audit = records(&disk.0);
    assert!(audit.iter().any(|r| r["type"] == "audit_recovered"));
    let (ok, out) = verify(&disk.0, None);
    assert!(ok, "{out}");
    drop(gw);
}

/// A counter of `/metrics`.
fn metric(gw: &Gateway, name: &str) -> u64 {
    let (code, body) = gw.http_get("/metrics").expect("metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_tier_forwards_without_an_fsync_and_kill_9_loses_nothing() {
    // Records are written before their statements run and flushed in the background (here:
    // not within the test), so no statement waits for an fsync.
    let mut gw = gateway(
        "durability = \"process\"\nflush_interval_ms = 60000\ncheckpoint_every_secs = 3600\n",
    );
    let marker = format!("p{}", gw.pg_port);
    let config = gw.config_path();
    let (ok, out, err) = phigate(&["check", "--config", config.to_str().expect("utf-8")]);
    assert!(ok, "{out} {err}");
    assert!(
        out.contains(
            "a power loss can lose up to 60000 ms of records of statements that ran; \
             a gateway crash loses none"
        ),
        "{out}"
    );
    let clinician = connect(&gw, "clinician").await;
    let agent = connect(&gw, "agent").await;
    let before = metric(&gw, "phigate_audit_fsyncs_total");
    const ROUNDS: u64 = 30;
    for n in 0..ROUNDS {
        let sql = format!("INSERT INTO notes (author, body) VALUES ('p', '{marker} {n}')");
        clinician.simple_query(&sql).await.expect("insert");
        let q = format!("SELECT count(*) FROM notes WHERE body LIKE $1 /* {marker} */");
        agent
            .query(&q, &[&format!("{marker}%")])
            .await
            .expect("select");
    }
    let statements = 2 * ROUNDS;
    let fsyncs = metric(&gw, "phigate_audit_fsyncs_total") - before;
    // The strict tier makes at least one fsync per statement here (each waits for its own).
    assert!(
        fsyncs < statements / 2,
        "{fsyncs} fsyncs for {statements} statements: statements waited for the disk"
    );

    let status = Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    gw.wait_exit(Duration::from_secs(10)).expect("gateway gone");
    let dir = gw.data_dir().join("audit");
    let recorded = records(&dir);
    let ran = database_statements(witness(), &marker);
    assert_eq!(ran.len() as u64, statements, "{ran:?}");
    assert_complete(&ran, &recorded);
    let dd = gw.data_dir();
    let dd = dd.to_str().expect("utf-8");
    let (ok, out, err) = phigate(&["audit", "verify", "--data-dir", dd]);
    assert!(ok, "verify after kill -9: {out} {err}");

    // A crash in the middle of a write (a torn last line) is still cut off at the next start.
    let seg = segment(&dir);
    let mut bytes = std::fs::read(&seg).expect("segment");
    let end = phigate_audit::store::records_of(&bytes).0.len();
    bytes.truncate(end);
    bytes.extend_from_slice(b"{\"seq\":");
    std::fs::write(&seg, &bytes).expect("tear");
    let mut again = Command::new(bin())
        .args(["serve", "--config"])
        .arg(gw.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("restart");
    let connected = async {
        loop {
            if tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), connected)
        .await
        .expect("the gateway starts again");
    let _ = Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status();
    let _ = again.wait();
    let after = records(&dir);
    let repaired = after
        .iter()
        .any(|r| r["type"] == "audit_repaired" && r["bytes_removed"] == 7);
    assert!(repaired, "no audit_repaired record for the torn line");
    let (ok, out, err) = phigate(&["audit", "verify", "--data-dir", dd]);
    assert!(ok, "verify after the repair: {out} {err}");

    // Evidence of the tier: every start records it, and the run killed with -9 is reported
    // once, at the next start (it may have lost records to a power loss), with its pid; the
    // clean stop of the second run leaves nothing to report.
    let starts: Vec<_> = after
        .iter()
        .filter(|r| r["type"] == "gateway_start")
        .collect();
    assert!(starts
        .iter()
        .all(|r| r["durability"] == "process" && r["flush_interval_ms"] == 60000));
    let unsynced: Vec<_> = after
        .iter()
        .filter(|r| r["type"] == "audit_unsynced")
        .collect();
    assert_eq!(unsynced.len(), 1, "{unsynced:?}");
    assert_eq!(unsynced[0]["reason"], "unclean_stop");
    assert_eq!(unsynced[0]["pid"], gw.pid());
    assert_eq!(unsynced[0]["flush_interval_ms"], 60000);
    assert!(
        !dir.join("process-run.json").exists(),
        "a clean stop removes the run marker"
    );
}
