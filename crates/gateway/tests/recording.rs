//! Session recordings with real clients: a psql session of the demo agent (allowed, denied,
//! held and approved, failing statements) replays with the steps and results psql showed; the
//! agent's recording holds no raw PHI of the demo dataset; the clinician's is encrypted; a
//! tampered recording fails `audit verify` and replay; caps hold; a recording a `kill -9` cut
//! short is sealed at the next start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aho_corasick::AhoCorasick;
use phigate_testkit::{run, Gateway, GatewayOptions};
use serde_json::Value;
use tokio_postgres::NoTls;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn phigate(args: &[&str]) -> (bool, String, String) {
    run(Command::new(bin()).args(args)).expect("phigate runs")
}

/// A running `phigate demo`, stopped (SIGTERM) when dropped.
struct Demo {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    ready: Value,
    data_dir: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

impl Demo {
    fn start() -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready_file = dir.path().join("ready.json");
        let data_dir = dir.path().join("state");
        let log = std::fs::File::create(dir.path().join("demo.log")).expect("log");
        let child = Command::new(bin())
            .args(["demo", "--pg-port", "0", "--http-port", "0", "--ready-file"])
            .arg(&ready_file)
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("phigate demo starts");
        let started = Instant::now();
        while !ready_file.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "demo not ready:\n{}",
                std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let ready = serde_json::from_slice(&std::fs::read(&ready_file).expect("ready"))
            .expect("ready JSON");
        Demo {
            child,
            _dir: dir,
            ready,
            data_dir,
        }
    }

    fn conninfo(&self, who: &str) -> (String, String) {
        let pg = &self.ready["postgres"];
        let id = &self.ready["identities"][who];
        (
            format!(
                "host={} port={} dbname=clinic user={} sslmode=disable",
                pg["host"].as_str().expect("host"),
                pg["port"],
                id["user"].as_str().expect("user")
            ),
            id["password"].as_str().expect("password").to_owned(),
        )
    }

    /// psql as `who`, unaligned rows only, not stopping at errors.
    fn psql_file(&self, who: &str, script: &Path) -> (bool, String, String) {
        let (info, password) = self.conninfo(who);
        run(Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "|",
                "-v",
                "ON_ERROR_STOP=0",
                "-f",
            ])
            .arg(script)
            .arg(info)
            .env("PGPASSWORD", password))
        .expect("psql")
    }

    fn upstream_psql(&self, sql: &str) -> String {
        let up = &self.ready["upstream"];
        let (ok, out, err) = run(Command::new("psql")
            .args(["-X", "-A", "-t", "-c", sql])
            .arg(format!(
                "host={} port={} dbname={} user={} sslmode=disable",
                up["host"].as_str().expect("host"),
                up["port"],
                up["database"].as_str().expect("db"),
                up["user"].as_str().expect("user")
            ))
            .env("PGPASSWORD", up["password"].as_str().expect("password")))
        .expect("psql");
        assert!(ok, "{err}");
        out
    }

    fn dd(&self) -> &str {
        self.data_dir.to_str().expect("utf-8")
    }

    /// The subject's sessions whose recordings are sealed, waiting for `n` of them.
    fn sealed_sessions(&self, subject: &str, n: usize) -> Vec<Value> {
        sealed_sessions(self.dd(), subject, n)
    }
}

fn sealed_sessions(data_dir: &str, subject: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, out, err) = phigate(&[
            "sessions",
            "list",
            "--data-dir",
            data_dir,
            "--subject",
            subject,
            "--json",
        ]);
        assert!(ok, "sessions list: {err}");
        let list: Vec<Value> = serde_json::from_str(&out).expect("sessions JSON");
        let sealed: Vec<Value> = list
            .into_iter()
            .filter(|s| !s["recording"].is_null())
            .collect();
        if sealed.len() >= n {
            return sealed;
        }
        assert!(
            Instant::now() < deadline,
            "{subject}: {} sealed recording(s), want {n}",
            sealed.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn replay_json(data_dir: &str, session: &str, extra: &[&str]) -> Value {
    let mut args = vec!["replay", session, "--data-dir", data_dir, "--json"];
    args.extend_from_slice(extra);
    let (ok, out, err) = phigate(&args);
    assert!(ok, "replay {session}: {err}");
    serde_json::from_str(&out).expect("replay JSON")
}

/// Every event of type `ev` across the replay's steps.
fn events<'a>(replay: &'a Value, ev: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    replay["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["received"].as_array().into_iter().flatten())
        .filter(move |e| e["ev"] == ev)
}

/// The rows of a replay as psql -A -F'|' prints them.
fn rows_as_psql(replay: &Value) -> Vec<String> {
    events(replay, "row")
        .map(|r| {
            r["values"]
                .as_array()
                .expect("values")
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// psql's stderr messages of one severity, in order.
fn psql_messages(stderr: &str, severity: &str) -> Vec<String> {
    let marker = format!("{severity}:  ");
    stderr
        .lines()
        .filter_map(|l| l.split_once(&marker).map(|(_, m)| m.to_owned()))
        .collect()
}

fn replay_messages(replay: &Value, ev: &str) -> Vec<String> {
    events(replay, ev)
        .map(|e| e["message"].as_str().unwrap_or("(none)").to_owned())
        .collect()
}

/// Every PHI value of the demo dataset (at least 4 characters), read directly.
fn phi_values(demo: &Demo) -> Vec<String> {
    let sql = "SELECT concat_ws(E'\\x1f', mrn, first_name, last_name, ssn, date_of_birth::text, \
               email, phone, address, city, zip, insurance_member_id) FROM patients";
    let mut values: HashSet<String> = HashSet::new();
    for row in demo.upstream_psql(sql).lines() {
        for (i, v) in row.split('\u{1f}').enumerate() {
            // Year-generalized dates are January 1st: a birthday on January 1st is not a leak.
            if i == 4 && v.ends_with("-01-01") {
                continue;
            }
            if v.len() >= 4 {
                values.insert(v.to_owned());
            }
        }
    }
    assert!(values.len() > 50_000, "only {} PHI values", values.len());
    values.into_iter().collect()
}

/// The first PHI value found in `bytes` as a whole (not inside a longer run of letters and
/// digits: a ZIP code's digits inside a token's hex are not that ZIP code).
fn leak<'a>(ac: &AhoCorasick, values: &'a [String], bytes: &[u8]) -> Option<&'a str> {
    let word = |b: u8| b.is_ascii_alphanumeric();
    ac.find_overlapping_iter(bytes)
        .find(|m| {
            let before = m.start().checked_sub(1).map(|i| bytes[i]);
            let after = bytes.get(m.end()).copied();
            !before.is_some_and(word) && !after.is_some_and(word)
        })
        .map(|m| values[m.pattern().as_usize()].as_str())
}

fn gunzip(path: &Path) -> Vec<u8> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("gzip");
    assert!(out.status.success(), "gzip -dc {}", path.display());
    out.stdout
}

#[test]
fn a_demo_session_replays_as_the_client_saw_it() {
    let demo = Demo::start();
    let dd = demo.dd().to_owned();
    let scripts = tempfile::tempdir().expect("tempdir");
    let script = scripts.path().join("agent.sql");
    std::fs::write(
        &script,
        "SELECT id, first_name, ssn, date_of_birth, zip FROM patients ORDER BY id LIMIT 5;\n\
         SELECT count(*) FROM patients WHERE ssn LIKE '1%';\n\
         UPDATE encounters SET diagnosis_code = 'I10' WHERE id = 2;\n\
         SELECT 1/0;\n\
         SELECT id, email, phone, last_name FROM patients ORDER BY id LIMIT 3;\n",
    )
    .expect("script");

    // The agent's session; its UPDATE waits for the reviewer, who approves it with the CLI.
    let http = demo.ready["http"].as_str().expect("http").to_owned();
    let (_, reviewer_token) = demo.conninfo("reviewer");
    let review = |args: &[&str]| {
        run(Command::new(bin())
            .arg("review")
            .args(args)
            .env("PHIGATE_URL", &http)
            .env("PHIGATE_TOKEN", &reviewer_token))
        .expect("phigate review")
    };
    let (ok, stdout, stderr) = std::thread::scope(|scope| {
        let agent = scope.spawn(|| demo.psql_file("agent", &script));
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            let (ok, out, err) = review(&["list", "--json"]);
            assert!(ok, "review list: {err}");
            let list: Vec<Value> = serde_json::from_str(&out).expect("JSON");
            if let Some(r) = list.first() {
                break r["id"].as_str().expect("id").to_owned();
            }
            assert!(Instant::now() < deadline, "no review appeared");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (ok, out, err) = review(&["approve", &id, "--reason", "coding fix checked"]);
        assert!(ok, "approve: {out} {err}");
        agent.join().expect("psql thread")
    });
    assert!(ok, "psql: {stderr}");

    let session = demo.sealed_sessions("coding-agent@demo.phigate", 1)[0]["session"]
        .as_str()
        .expect("session")
        .to_owned();
    let replay = replay_json(&dd, &session, &[]);
    assert_eq!(replay["recording"]["verified"], true, "{replay}");
    assert_eq!(replay["recording"]["mode"], "rows");
    assert_eq!(replay["recording"]["encrypted"], false);

    // The steps: what was sent, in order, with the decisions.
    let steps: Vec<&Value> = replay["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| !s["n"].is_null())
        .collect();
    let decisions: Vec<&str> = steps
        .iter()
        .map(|s| s["statement"]["decision"].as_str().expect("decision"))
        .collect();
    assert_eq!(
        decisions,
        [
            "allow",
            "deny",
            "require_approval",
            "allow",
            "allow",
            "allow"
        ],
        "{replay}"
    );
    assert!(steps[0]["statement"]["text"]
        .as_str()
        .expect("text")
        .starts_with("SELECT id, first_name, ssn"));
    // The held UPDATE: the review, who approved it; then the run it allowed.
    assert_eq!(steps[2]["held"]["status"], "approved", "{}", steps[2]);
    assert_eq!(steps[2]["held"]["by"], "privacy.officer@demo.phigate");
    let review_id = steps[2]["held"]["review"].as_str().expect("review");
    assert_eq!(steps[3]["statement"]["approval"], review_id);
    let tags: Vec<&str> = events(&replay, "complete")
        .map(|c| c["tag"].as_str().expect("tag"))
        .collect();
    assert_eq!(tags, ["SELECT 5", "UPDATE 1", "SELECT 3"]);
    assert_eq!(steps[4]["outcome"]["sqlstate"], "22012");

    // The results: exactly what psql printed, row for row, message for message.
    let printed: Vec<String> = stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(rows_as_psql(&replay), printed);
    assert_eq!(printed.len(), 8);
    assert!(
        printed[0].contains("tok_"),
        "the agent saw tokens: {stdout}"
    );
    assert_eq!(
        replay_messages(&replay, "error"),
        psql_messages(&stderr, "ERROR")
    );
    assert_eq!(
        replay_messages(&replay, "notice"),
        psql_messages(&stderr, "NOTICE")
    );
    assert_eq!(psql_messages(&stderr, "ERROR").len(), 2, "{stderr}");

    // The terminal replay tells the same story.
    let (ok, text, err) = phigate(&["replay", &session, "--data-dir", &dd, "--speed", "0"]);
    assert!(ok, "{err}");
    assert!(text.contains("digest matches the audit log"), "{text}");
    assert!(
        text.contains(&format!(
            "HELD for review {review_id} → approved by privacy.officer@demo.phigate"
        )),
        "{text}"
    );
    assert!(text.contains("DENIED by rule phi-predicate"), "{text}");
    assert!(text.contains(&printed[0].replace('|', " | ")), "{text}");

    // No raw PHI of the demo dataset in the agent's recording, on disk or replayed.
    let values = phi_values(&demo);
    let ac = AhoCorasick::new(&values).expect("automaton");
    let file = demo
        .data_dir
        .join("recordings")
        .join(format!("{session}.jsonl.gz"));
    let on_disk = gunzip(&file);
    assert!(on_disk.len() > 1000);
    assert_eq!(leak(&ac, &values, &on_disk), None, "PHI in the recording");
    assert_eq!(
        leak(&ac, &values, replay.to_string().as_bytes()),
        None,
        "PHI in the replay"
    );

    // The clinician sees real values: recorded encrypted, readable only with the key.
    let clin = scripts.path().join("clinician.sql");
    std::fs::write(
        &clin,
        "SELECT first_name, last_name, ssn FROM patients ORDER BY id LIMIT 3;\n",
    )
    .expect("script");
    let (ok, clin_out, err) = demo.psql_file("clinician", &clin);
    assert!(ok, "{err}");
    let clin_rows: Vec<String> = clin_out.lines().map(str::to_owned).collect();
    assert_eq!(clin_rows.len(), 3);
    let clin_session = demo.sealed_sessions("dr.rivera@demo.phigate", 1)[0]["session"]
        .as_str()
        .expect("session")
        .to_owned();
    let enc = demo
        .data_dir
        .join("recordings")
        .join(format!("{clin_session}.jsonl.gz.enc"));
    let raw = std::fs::read(&enc).expect("encrypted recording");
    for row in &clin_rows {
        for value in row.split('|') {
            assert!(
                !raw.windows(value.len()).any(|w| w == value.as_bytes()),
                "{value} in clear on disk"
            );
        }
    }
    let (ok, _, err) = phigate(&["replay", &clin_session, "--data-dir", &dd, "--json"]);
    assert!(!ok && err.contains("encrypted"), "{err}");
    let key = demo.data_dir.join("keys").join("recording.key");
    let clin_replay = replay_json(
        &dd,
        &clin_session,
        &["--key-file", key.to_str().expect("utf-8")],
    );
    assert_eq!(clin_replay["recording"]["encrypted"], true);
    assert_eq!(rows_as_psql(&clin_replay), clin_rows);

    // The HTTP API: the reviewer (an audit reader in the demo) lists and replays sessions.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let get = |path: String, token: &str| {
        rt.block_on(async {
            let resp = reqwest::Client::new()
                .get(format!("{http}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("GET");
            let code = resp.status().as_u16();
            (code, resp.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    let (code, list) = get(
        "/v1/sessions?subject=coding-agent@demo.phigate".into(),
        &reviewer_token,
    );
    assert_eq!(code, 200, "{list}");
    assert!(
        list["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .any(|s| s["session"] == session.as_str()),
        "{list}"
    );
    let (code, over_http) = get(format!("/v1/sessions/{session}"), &reviewer_token);
    assert_eq!(code, 200, "{over_http}");
    assert_eq!(over_http["steps"], replay["steps"]);
    let (_, agent_token) = demo.conninfo("agent");
    let (code, _) = get(format!("/v1/sessions/{session}"), &agent_token);
    assert_eq!(code, 403);
    // The clinician's encrypted recording: not decrypted for a role outside
    // recording.decrypt_roles. Every replay over HTTP is in the audit log.
    let (code, body) = get(format!("/v1/sessions/{clin_session}"), &reviewer_token);
    assert_eq!(code, 403, "{body}");
    assert!(body.to_string().contains("decrypt_roles"), "{body}");
    let (ok, out, err) = phigate(&[
        "audit",
        "search",
        "--data-dir",
        &dd,
        "--type",
        "recording_replayed",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&session) && out.contains("privacy.officer@demo.phigate"),
        "{out}"
    );

    // Verify proves the recordings; one flipped byte is caught, and replay refuses it.
    let (ok, out, err) = phigate(&["audit", "verify", "--data-dir", &dd]);
    assert!(ok, "{out} {err}");
    assert!(
        out.contains("session recording") && out.contains("their digests"),
        "{out}"
    );
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&file, &bytes).expect("tamper");
    let (ok, out, err) = phigate(&["audit", "verify", "--data-dir", &dd]);
    assert!(!ok, "verify passed a tampered recording: {out}");
    assert!(
        err.contains(&format!("the recording of session {session} was altered")),
        "{err}"
    );
    let (ok, _, err) = phigate(&["replay", &session, "--data-dir", &dd, "--json"]);
    assert!(!ok && err.contains("altered"), "{err}");
}

fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("recording.key");
    let key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&path, hex::encode(key)).expect("key");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_and_a_crash_cut_recording_is_sealed_at_the_next_start() {
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let keys = tempfile::tempdir().expect("tempdir");
    let key = key_file(keys.path());
    let mut opts = GatewayOptions::for_cluster(cluster);
    opts.policy = opts.policy.replace(
        "name = \"clinician\"\n",
        "name = \"clinician\"\nrecord = \"rows\"\n",
    );
    opts.extra = format!(
        "[recording]\nmax_rows_per_result = 3\nmax_value_bytes = 8\nkey_file = \"{}\"\n",
        key.display()
    );
    let mut gw = Gateway::start(bin(), opts).expect("gateway");
    let dd = gw.data_dir().to_str().expect("utf-8").to_owned();

    // Rows and values capped; the row count still exact.
    let (client, conn) = tokio_postgres::connect(&gw.conninfo("clinician"), NoTls)
        .await
        .expect("connect");
    let conn = tokio::spawn(conn);
    client
        .simple_query("SELECT g, repeat('x', 20) FROM generate_series(1, 1000) g")
        .await
        .expect("query");
    drop(client);
    let _ = conn.await;
    let s = sealed_sessions(&dd, "clinician@test.phigate", 1);
    let id = s[0]["session"].as_str().expect("id").to_owned();
    let r = replay_json(&dd, &id, &["--key-file", key.to_str().expect("utf-8")]);
    assert_eq!(
        rows_as_psql(&r),
        [
            "1|xxxxxxxx…[20 bytes]",
            "2|xxxxxxxx…[20 bytes]",
            "3|xxxxxxxx…[20 bytes]"
        ]
    );
    let complete: Vec<&Value> = events(&r, "complete").collect();
    assert_eq!(complete[0]["tag"], "SELECT 1000");
    assert_eq!(complete[0]["rows_kept"], 3);

    // The agent role (shape by default, unmasked here): no values, no database messages.
    let (agent, conn) = tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    agent.simple_query("SELECT 'a value'").await.expect("query");
    let err = agent
        .simple_query("SELECT 'secret-text'::int")
        .await
        .expect_err("bad input");
    assert!(err
        .as_db_error()
        .is_some_and(|e| e.message().contains("secret-text")));
    // A second statement a second later: the first chunk is on disk before the crash.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    agent.simple_query("SELECT 2").await.expect("query");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let part = gw.data_dir().join("recordings");
    let parts: Vec<_> = std::fs::read_dir(&part)
        .expect("recordings")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert_eq!(parts.len(), 1, "the agent's open recording");

    let status = Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    gw.wait_exit(Duration::from_secs(10)).expect("gone");

    // The same config started again: the cut recording is sealed (incomplete) into the log.
    let log = std::fs::File::create(gw.dir().join("second.log")).expect("log");
    let mut second = Command::new(bin())
        .args(["serve", "--config"])
        .arg(gw.config_path())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("second gateway");
    let sealed = sealed_sessions(&dd, "agent@test.phigate", 1);
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(sealed[0]["recording"]["complete"], false, "{}", sealed[0]);
    let agent_id = sealed[0]["session"].as_str().expect("id");
    let r = replay_json(&dd, agent_id, &[]);
    assert_eq!(r["recording"]["mode"], "shape");
    assert!(events(&r, "row").next().is_none(), "shape keeps no values");
    let errors: Vec<&Value> = events(&r, "error").collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "22P02");
    assert!(errors[0]["message"].is_null(), "{}", errors[0]);
    let on_disk = gunzip(&part.join(format!("{agent_id}.jsonl.gz")));
    let text = String::from_utf8_lossy(&on_disk);
    assert!(
        !text.contains("secret-text") && !text.contains("a value"),
        "{text}"
    );
    let (ok, out, err) = phigate(&["audit", "verify", "--data-dir", &dd]);
    assert!(ok, "verify after the crash: {out} {err}");

    // A role that would keep unmasked rows without a key is refused at load.
    let cfg = std::fs::read_to_string(gw.config_path()).expect("config");
    let keyless = cfg.replace(&format!("key_file = \"{}\"\n", key.display()), "");
    let path = gw.dir().join("keyless.toml");
    std::fs::write(&path, keyless).expect("write");
    let (ok, _, err) = phigate(&["check", "--config", path.to_str().expect("utf-8")]);
    assert!(!ok && err.contains("must be"), "{err}");
}
