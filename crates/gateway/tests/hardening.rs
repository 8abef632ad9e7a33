//! Findings 12 to 17 of the red-team review (issue 23), each against the real gateway in front
//! of real PostgreSQL: what the data directory's files allow, what a failed login leaves in
//! the audit log, what a reason or a startup parameter can forge, what the review API tells a
//! caller who may not decide.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use phigate_testkit::raw::{password, query, startup_packet, Msg, Raw};
use phigate_testkit::{Cluster, Gateway, GatewayOptions};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn cluster() -> &'static Cluster {
    phigate_testkit::clinic(
        "CREATE TABLE notes (id int PRIMARY KEY, body text);\n\
         INSERT INTO notes VALUES (1, 'n');",
    )
}

const POLICY: &str = r#"
[[role]]
name = "ai-agent"
[[role.grant]]
schema = "public"
actions = ["select", "write"]

[[role]]
name = "clinician"
[[role.grant]]
schema = "public"
actions = ["select"]

[[role]]
name = "reviewer"

[[rule]]
name = "writes-need-approval"
roles = ["ai-agent"]
kinds = ["write"]
action = "require_approval"
"#;

fn gateway() -> Gateway {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = POLICY.into();
    opts.extra = "[approvals]\ntimeout_secs = 30\n\n[audit]\nstatement_text = \"full\"\n".into();
    Gateway::start_with_identities(bin(), opts, &["agent", "clinician", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

fn audit_text(gw: &Gateway) -> String {
    let mut text = String::new();
    for seg in phigate_audit::store::segments(&gw.data_dir().join("audit")).expect("segments") {
        text.push_str(&std::fs::read_to_string(seg).expect("segment"));
    }
    text
}

/// The `login_failed` records, once at least `n` are written (the writer is asynchronous).
fn login_failures(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = audit_text(gw)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["type"] == "login_failed")
            .collect();
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A wire login as `user` with `token` that fails; returns what refused it.
fn failed_login(gw: &Gateway, user: &str, token: &str) -> Msg {
    let mut raw = Raw::connect(gw.pg_port);
    raw.send(&startup_packet(&[("user", user), ("database", "clinic")]));
    let first = raw.read();
    if first.tag == b'E' {
        return first;
    }
    raw.send(&password(token));
    let answer = raw.read();
    assert_eq!(answer.tag, b'E', "the login must fail");
    answer
}

const KEY: &str = "phk_0123456789abcdef_ZxQk2LmN4pR7sT1vW9yB3dF6hJ0kM2n5q8r1t4w";

#[test]
fn item_13_a_credential_typed_as_the_user_is_kept_as_its_keyed_hash() {
    let gw = gateway();
    assert_eq!(KEY.len(), 60);
    failed_login(&gw, KEY, "wrong");
    failed_login(&gw, KEY, "wrong again");
    let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl";
    failed_login(&gw, jwt, "wrong");
    failed_login(&gw, "clinician", "not-the-token");
    let records = login_failures(&gw, 4);
    assert_eq!(records.len(), 4, "{records:?}");
    let users: Vec<&str> = records.iter().filter_map(|r| r["user"].as_str()).collect();
    for u in &users[..3] {
        assert!(
            u.starts_with("hmac:")
                && u.len() == 37
                && u[5..].bytes().all(|b| b.is_ascii_hexdigit()),
            "{users:?}"
        );
    }
    assert_eq!(users[0], users[1], "repeated attempts correlate");
    assert_ne!(users[0], users[2]);
    assert_eq!(users[3], "clinician", "a role name stays readable");
    assert!(records.iter().all(|r| r["via"] == "wire"), "{records:?}");
    let text = audit_text(&gw);
    assert!(
        !text.contains(&KEY[..20]) && !text.contains("eyJhbGci"),
        "{text}"
    );
}

#[test]
fn item_14_failed_credentials_on_the_http_api_are_audited_and_limited() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = POLICY.into();
    opts.extra = "[auth.failed_logins]\nmax_failures = 3\nwindow_secs = 60\n".into();
    let gw = Gateway::start_with_identities(bin(), opts, &["agent", "clinician", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    for _ in 0..2 {
        let (code, body) = gw.http_as("GET", "/v1/reviews", KEY, None).expect("http");
        assert_eq!(code, 401, "{body}");
    }
    let records = login_failures(&gw, 2);
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(r["via"], "http", "{r}");
        assert_eq!(
            r["client_addr"]
                .as_str()
                .map(|a| a.starts_with("127.0.0.1")),
            Some(true)
        );
        assert!(r["reason"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    }
    assert!(!audit_text(&gw).contains(&KEY[..20]));
    // The same limiter as the wire's: one more failure on the wire, and the next guess over
    // HTTP is refused as over the limit.
    failed_login(&gw, "clinician", "wrong");
    let (code, body) = gw
        .http_as("GET", "/v1/reviews", "tok-another-guess-0123", None)
        .expect("http");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("too many failed logins"), "{body}");
}

/// Starts a held write as the agent; returns its raw connection and the review id.
fn held_write(gw: &Gateway) -> (Raw, String) {
    let mut agent = Raw::login(gw, "agent");
    agent.send(&query("INSERT INTO notes VALUES (2, 'held')"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (_, body) = gw
            .http_as("GET", "/v1/reviews", gw.token("reviewer"), None)
            .expect("http");
        let v: Value = serde_json::from_str(&body).expect("json");
        if let Some(id) = v["reviews"][0]["id"].as_str() {
            return (agent, id.to_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no review appeared");
}

#[test]
fn item_15_a_reason_cannot_forge_error_fields() {
    let gw = gateway();
    let (mut agent, id) = held_write(&gw);
    let deny = format!("/v1/reviews/{id}/deny");
    let reviewer = gw.token("reviewer").to_owned();
    for bad in [
        "no\u{0}Cforged\u{0}Mforged".to_owned(),
        "two\nlines".to_owned(),
        "x".repeat(2001),
        "   ".to_owned(),
    ] {
        let json = serde_json::json!({ "reason": bad }).to_string();
        let (code, body) = gw
            .http_as("POST", &deny, &reviewer, Some(&json))
            .expect("http");
        assert_eq!(code, 400, "{bad:?}: {body}");
    }
    let (code, body) = gw
        .http_as(
            "POST",
            &deny,
            &reviewer,
            Some(r#"{"reason": "  not today  "}"#),
        )
        .expect("http");
    assert_eq!(code, 200, "{body}");
    let (msgs, _) = agent.read_until_ready();
    let error = msgs.iter().find(|m| m.tag == b'E').expect("an error");
    assert!(
        error.message().contains("not today"),
        "{:?}",
        error.fields()
    );
    assert!(
        error
            .fields()
            .iter()
            .all(|(t, _)| *t != b'C' || error.code() == "42501"),
        "{:?}",
        error.fields()
    );
}

#[test]
fn item_16_a_newline_in_a_startup_parameter_forges_no_log_line() {
    let gw = gateway();
    let forged = "2026-01-01T00:00:00.000000Z  INFO phigate: FORGED-LINE";
    let name = format!("x\n{forged}");
    let mut raw = Raw::connect(gw.pg_port);
    raw.send(&startup_packet(&[
        ("user", "ai-agent"),
        ("database", "clinic"),
        (&name, "v"),
    ]));
    let _ = raw.read_until_closed();
    drop(raw);
    gw.wait_log("FORGED-LINE", 1)
        .unwrap_or_else(|e| panic!("the parameter is not logged at all: {e}"));
    let log = gw.log();
    for line in log.lines() {
        assert!(!line.starts_with(forged), "a forged line:\n{log}");
        assert!(!line.starts_with("2026-01-01"), "a forged line:\n{log}");
    }
    assert!(log.contains("x\\n2026-01-01"), "{log}");
}

#[test]
fn item_17_deciding_a_review_authenticates_first_and_reveals_no_ids() {
    let gw = gateway();
    let (_agent, id) = held_write(&gw);
    let approve = format!("/v1/reviews/{id}/approve");
    let unknown = "/v1/reviews/r-does-not-exist/approve";
    // No credential: 401 whatever the id and whatever the body.
    for path in [approve.as_str(), unknown] {
        for body in ["not json", r#"{"reason": "fine"}"#] {
            let (code, text) =
                phigate_testkit::http_request(gw.http_port, "POST", path, None, Some(body))
                    .expect("http");
            assert_eq!(code, 401, "{path} {body}: {text}");
            let (code, text) = gw
                .http_as("POST", path, "tok-forged-0123456789", Some(body))
                .expect("http");
            assert_eq!(code, 401, "{path} {body}: {text}");
        }
    }
    // A caller who may not decide it hears what an unknown id gets, approve and deny alike.
    let clinician = gw.token("clinician").to_owned();
    let mut answers = Vec::new();
    for path in [
        approve.clone(),
        unknown.to_owned(),
        format!("/v1/reviews/{id}/deny"),
        "/v1/reviews/r-does-not-exist/deny".to_owned(),
    ] {
        let (code, body) = gw
            .http_as("POST", &path, &clinician, Some(r#"{"reason": "let me"}"#))
            .expect("http");
        answers.push((code, body));
    }
    for (code, body) in &answers {
        assert_eq!(*code, 404, "{answers:?}");
        let v: Value = serde_json::from_str(body).expect("json");
        assert_eq!(v, serde_json::json!({"error": "no such review for you"}));
    }
    let reviewer = gw.token("reviewer").to_owned();
    let (code, body) = gw
        .http_as("POST", unknown, &reviewer, Some(r#"{"reason": "fine"}"#))
        .expect("http");
    assert_eq!(
        (code, body.contains("no such review for you")),
        (404, true),
        "{body}"
    );
    let (code, body) = gw
        .http_as("POST", &approve, &reviewer, Some(r#"{"reason": "fine"}"#))
        .expect("http");
    assert_eq!(code, 200, "{body}");
}

/// Every file and directory under `dir` with a mode looser than owner-only.
fn loose(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let mode = std::fs::symlink_metadata(&d)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            out.push((d.clone(), mode));
        }
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                todo.push(entry.path());
            } else if meta.permissions().mode() & 0o077 != 0 {
                out.push((entry.path(), meta.permissions().mode() & 0o777));
            }
        }
    }
    out
}

#[test]
fn item_12_the_data_directory_is_owner_only() {
    let mut gw = gateway();
    // Everything that writes: audit (full statement text), a review, key files.
    let (mut agent, _) = held_write(&gw);
    gw.approve_next(gw.token("reviewer"), "fine")
        .expect("approve");
    let _ = agent.read_until_ready();
    failed_login(&gw, "clinician", "wrong");
    login_failures(&gw, 1);
    let data = gw.data_dir();
    let found = loose(&data);
    assert!(found.is_empty(), "looser than owner-only: {found:?}");
    let files = walk_count(&data);
    assert!(files >= 4, "the run wrote files: {files}");

    // Loosened while it was stopped: fixed at the next start, with a warning naming the path.
    gw.terminate().expect("terminate");
    gw.wait_exit(Duration::from_secs(20)).expect("exit");
    let segment = phigate_audit::store::segments(&data.join("audit"))
        .expect("segments")
        .pop()
        .expect("a segment");
    std::fs::set_permissions(&segment, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(data.join("audit"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let log_path = gw.dir().join("restart.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new(bin())
        .arg("serve")
        .arg("--config")
        .arg(gw.config_path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && std::net::TcpStream::connect(("127.0.0.1", gw.pg_port)).is_err()
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let found = loose(&data);
    assert!(found.is_empty(), "not fixed at start: {found:?}\n{text}");
    assert!(
        text.contains(&segment.display().to_string()) && text.contains("0644"),
        "no warning naming the file:\n{text}"
    );
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(Result::ok)
        .map(|e| {
            if e.path().is_dir() {
                walk_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}
