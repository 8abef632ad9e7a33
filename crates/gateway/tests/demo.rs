//! `phigate demo`: ready within a minute, each identity connects, SIGTERM cleans everything up.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use phigate_testkit::{http_get, run};

#[test]
fn demo_serves_every_identity_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready_file = dir.path().join("ready.json");
    let data_dir = dir.path().join("state");
    let log = std::fs::File::create(dir.path().join("demo.log")).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_phigate"))
        .args(["demo", "--pg-port", "0", "--http-port", "0", "--ready-file"])
        .arg(&ready_file)
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("phigate demo starts");
    let read_log = || std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default();

    let started = Instant::now();
    while !ready_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready in 60 s:\n{}",
            read_log()
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("demo exited early ({status}):\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ready_file).expect("ready file")).expect("JSON");
    let host = ready["postgres"]["host"].as_str().expect("host");
    let port = ready["postgres"]["port"].as_u64().expect("port");
    assert_eq!(ready["postgres"]["database"], "clinic");

    let psql_as = |name: &str, sql: &str| {
        let id = &ready["identities"][name];
        let user = id["user"].as_str().expect("user");
        let password = id["password"].as_str().expect("password");
        run(Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(format!(
                "host={host} port={port} dbname=clinic user={user} sslmode=disable"
            ))
            .env("PGPASSWORD", password))
        .expect("psql")
    };
    // The demo policy: agent, clinician and admin read the clinical tables; the reviewer has no
    // data access; the agent's changes need approval; the admin's DROP needs approval.
    for name in ["agent", "clinician", "admin"] {
        let (ok, out, err) = psql_as(name, "SELECT count(*) FROM patients");
        assert!(ok, "{name}: {err}");
        assert_eq!(out.trim(), "10000", "{name}");
    }
    let (ok, _, err) = psql_as("reviewer", "SELECT count(*) FROM patients");
    assert!(
        !ok && err.contains("phigate: SELECT on public.patients denied by rule grants"),
        "{err}"
    );
    // The agent's change waits on the wire for a reviewer; the reviewer approves it with the
    // CLI and it runs, once.
    let http = ready["http"].as_str().expect("http").to_owned();
    let reviewer_token = ready["identities"]["reviewer"]["password"]
        .as_str()
        .expect("reviewer token")
        .to_owned();
    let review_cli = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_phigate"))
            .arg("review")
            .args(args)
            .env("PHIGATE_URL", &http)
            .env("PHIGATE_TOKEN", &reviewer_token))
        .expect("phigate review")
    };
    let pending = |want: usize| -> Vec<serde_json::Value> {
        for _ in 0..100 {
            let (ok, out, err) = review_cli(&["list", "--json"]);
            assert!(ok, "review list: {err}");
            let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
            if list.len() >= want {
                return list;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("no review appeared");
    };
    std::thread::scope(|scope| {
        let agent_delete = scope.spawn(|| {
            psql_as(
                "agent",
                "UPDATE encounters SET diagnosis_code = 'I10' WHERE id = 1 /* phigate: reason=coding fix */",
            )
        });
        let list = pending(1);
        assert_eq!(list[0]["requester"], "coding-agent@demo.phigate");
        assert_eq!(list[0]["rule"], "agent-changes-need-approval");
        assert_eq!(list[0]["justification"], "coding fix");
        let id = list[0]["id"].as_str().expect("id").to_owned();
        let (ok, out, err) = review_cli(&["approve", &id, "--reason", "code checked"]);
        assert!(ok && out.contains("approved"), "{out} {err}");
        let (ok, out, err) = agent_delete.join().expect("agent psql");
        assert!(ok, "the approved UPDATE: {err}");
        assert_eq!(out.trim(), "UPDATE 1");
        assert!(err.contains("held for review"), "the notice: {err}");
        // The admin's DROP: denied, with the reviewer's reason.
        let admin_drop = scope.spawn(|| psql_as("admin", "DROP TABLE departments"));
        let id = pending(1)[0]["id"].as_str().expect("id").to_owned();
        let (ok, out, err) = review_cli(&["deny", &id, "--reason", "departments stay"]);
        assert!(ok && out.contains("denied"), "{out} {err}");
        let (ok, _, err) = admin_drop.join().expect("admin psql");
        assert!(
            !ok && err.contains("denied by privacy.officer@demo.phigate: departments stay"),
            "{err}"
        );
    });
    let (ok, out, err) = psql_as(
        "clinician",
        "UPDATE encounters SET attending = attending WHERE id = 1",
    );
    assert!(ok, "clinician update: {err}");
    assert_eq!(out.trim(), "UPDATE 1");
    // TLS with the demo's self-signed certificate, verified.
    let ca = ready["tls"]["ca_file"].as_str().expect("tls.ca_file");
    let id = &ready["identities"]["clinician"];
    let (ok, out, err) = run(Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT 'over tls'"])
        .arg(format!(
            "host=localhost port={port} dbname=clinic user={} sslmode=verify-full sslrootcert={ca}",
            id["user"].as_str().expect("user")
        ))
        .env("PGPASSWORD", id["password"].as_str().expect("password")))
    .expect("psql");
    assert!(ok, "TLS: {err}");
    assert_eq!(out.trim(), "over tls");

    // A token of one identity does not open another identity's role.
    let agent_token = ready["identities"]["agent"]["password"]
        .as_str()
        .expect("token");
    let (ok, _, err) = run(Command::new("psql")
        .args(["-X", "-c", "SELECT 1"])
        .arg(format!(
            "host={host} port={port} dbname=clinic user=admin sslmode=disable"
        ))
        .env("PGPASSWORD", agent_token))
    .expect("psql");
    assert!(!ok && err.contains("may not assume role"), "{err}");

    // The tokens are JWTs of the development issuer: the database sees the individual.
    for name in ["agent", "clinician", "admin", "reviewer"] {
        let (ok, out, err) = psql_as(name, "SELECT current_setting('phigate.subject')");
        assert!(ok, "{name}: {err}");
        assert_eq!(
            out.trim(),
            ready["identities"][name]["subject"]
                .as_str()
                .expect("subject"),
            "{name}"
        );
    }
    // `phigate token mint` against the demo's config signs more tokens the gateway accepts.
    let data_dir = ready["data_dir"].as_str().expect("data_dir");
    let (ok, minted, err) = run(Command::new(env!("CARGO_BIN_EXE_phigate")).args([
        "token",
        "mint",
        "--config",
        &format!("{data_dir}/phigate.toml"),
        "--subject",
        "intern@demo.phigate",
        "--group",
        "agents",
    ]))
    .expect("mint");
    assert!(ok, "{err}");
    let (ok, out, err) = run(Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT current_setting('phigate.subject')",
        ])
        .arg(format!(
            "host={host} port={port} dbname=clinic user=ai-agent sslmode=disable"
        ))
        .env("PGPASSWORD", minted.trim()))
    .expect("psql");
    assert!(ok, "minted token: {err}");
    assert_eq!(out.trim(), "intern@demo.phigate");

    // The upstream entry is a direct superuser connection to the throwaway cluster.
    let up = &ready["upstream"];
    let (ok, out, err) = run(Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
        ])
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
    assert_eq!(out.trim(), "t");

    let http = ready["http"].as_str().expect("http");
    let http_port: u16 = http
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("http port");
    let (code, body) = http_get(http_port, "/readyz").expect("readyz");
    assert_eq!(code, 200, "{body}");

    let pg_data = up["data_dir"].as_str().expect("data_dir").to_owned();
    assert!(Path::new(&pg_data).exists());
    // SIGHUP reloads <data_dir>/phigate.toml, as `phigate serve` does its config: the demo
    // goes on.
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    let reloaded = Instant::now();
    while !read_log().contains("configuration reloaded") {
        assert!(
            reloaded.elapsed() < Duration::from_secs(10),
            "no reload after SIGHUP:\n{}",
            read_log()
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "SIGHUP ended the demo"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The file is the config as it runs: nothing in it waits for a restart.
    assert!(
        !read_log().contains("only after a restart"),
        "{}",
        read_log()
    );
    let (ok, out, err) = psql_as("clinician", "SELECT count(*) > 0 FROM patients");
    assert!(ok, "after the reload: {err}");
    assert_eq!(out.trim(), "t");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "demo did not stop:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", read_log());
    assert!(
        !Path::new(&pg_data).exists(),
        "the throwaway cluster was not deleted"
    );
    assert!(!ready_file.exists(), "the ready file was not removed");
}
