//! The web console in a real browser: Debian's chromium driven by `playwright-core`
//! (`tests/console/console.mjs`; `scripts/install-deps` installs chromium, `scripts/client-deps`
//! the npm packages), with axe on every page and a watch for CSP violations.
//!
//! - `phigate demo`: sign in on the development issuer's page, an agent's held UPDATE shows in
//!   the inbox without a reload, a reason-less denial is refused, an approval with a reason lets
//!   the agent's psql finish with `UPDATE 1`, the requester has no decision controls and a
//!   forged POST is refused, audit, sessions, replay, a revoked identity signed out, sign-out.
//! - A gateway trusting the real OpenID provider (`tests/idp/server.mjs`): sign in through its
//!   code flow; left idle past `console.idle_timeout_secs`, the browser is signed out.
//!
//! Screenshots go to `$PHIGATE_CONSOLE_SCREENSHOTS` (`docs/console` refreshes the docs' ones),
//! else to a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phigate_testkit::{Gateway, GatewayOptions};

#[allow(dead_code)]
mod saml_support;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn screenshots(tmp: &Path) -> PathBuf {
    let dir = match std::env::var_os("PHIGATE_CONSOLE_SCREENSHOTS") {
        Some(d) => repo_root().join(d),
        None => tmp.join("screenshots"),
    };
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// Runs the browser script; panics with its output unless it succeeds.
fn browser(args: &[&str]) -> String {
    let script = repo_root().join("tests/console/console.mjs");
    let out = Command::new("node")
        .arg(&script)
        .env("PHIGATE_BIN", env!("CARGO_BIN_EXE_phigate"))
        .args(args)
        .current_dir(repo_root().join("tests/console"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (scripts/client-deps): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stderr}\n{stdout}"
    );
    eprintln!("{stderr}");
    stdout
}

struct Demo {
    child: Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

#[test]
fn demo_console_reviews_audits_and_replays_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready_file = dir.path().join("ready.json");
    let log = std::fs::File::create(dir.path().join("demo.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_phigate"))
        .args(["demo", "--pg-port", "0", "--http-port", "0", "--ready-file"])
        .arg(&ready_file)
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("phigate demo starts");
    let mut demo = Demo { child };
    let read_log = || std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default();
    let started = Instant::now();
    while !ready_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "not ready:\n{}",
            read_log()
        );
        if let Ok(Some(status)) = demo.child.try_wait() {
            panic!("demo exited early ({status}):\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ready_file).expect("ready file")).expect("JSON");
    let http = ready["http"].as_str().expect("http");
    assert_eq!(ready["console"], format!("{http}/console/"));

    let shots = screenshots(dir.path());
    let out = browser(&[
        "demo",
        ready_file.to_str().expect("path"),
        shots.to_str().expect("path"),
    ]);
    assert!(out.contains("\"ok\":true"), "{out}");
    eprintln!("measured: {out}");
    // The decisions are in the audit log exactly as API decisions are.
    let audit = std::fs::read_dir(dir.path().join("state/audit"))
        .expect("audit dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        audit.contains("Checked with the ward: I10 is the right code.")
            && audit.contains("\"type\":\"review_decided\"")
            && audit.contains("\"type\":\"recording_replayed\""),
        "decisions and replays are audited"
    );
    drop(demo);
}

/// A `tests/idp/server.mjs` process.
struct Idp {
    child: Child,
    issuer: String,
}

impl Idp {
    fn start() -> Idp {
        let (child, ready) = phigate_testkit::spawn_ready(
            Command::new("node")
                .arg(repo_root().join("tests/idp/server.mjs"))
                .args(["--port", "0"]),
        )
        .unwrap_or_else(|e| panic!("cannot start the test IdP (run scripts/client-deps): {e}"));
        Idp {
            child,
            issuer: ready["issuer"].as_str().expect("issuer").to_owned(),
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 21: a person signs in to the console through a SAML identity provider in a real
/// browser (the IdP's page posts the signed response cross-origin to the ACS); the identity's
/// group maps to the reviewer role, whose home is the inbox.
#[test]
fn console_signs_in_through_a_saml_identity_provider_in_a_real_browser() {
    let idp = saml_support::Idp::start();
    let gw = saml_support::gateway(&idp);
    let dir = tempfile::tempdir().expect("tempdir");
    let shots = screenshots(dir.path());
    let url = format!("http://127.0.0.1:{}/console/", gw.http_port);
    let out = browser(&[
        "saml",
        &url,
        "reviewer",
        "privacy.officer@hospital.test",
        shots.to_str().expect("path"),
    ]);
    assert!(out.contains("\"ok\":true"), "{out}");
    // Audit records are written in batches.
    let mut signins = Vec::new();
    for _ in 0..50 {
        signins = gw.audit_records("console_signin");
        if !signins.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        signins
            .iter()
            .any(|r| r["subject"] == "privacy.officer@hospital.test" && r["issuer"] == "hospital"),
        "{signins:?}"
    );
}

#[test]
fn console_signs_in_through_a_real_openid_provider_and_logs_off_when_idle() {
    let idp = Idp::start();
    let mut opts = GatewayOptions::for_cluster(phigate_testkit::clinic(phigate::demo::SEED_SQL));
    opts.policy = phigate::demo::policy_toml().expect("policy");
    opts.extra = format!(
        r#"
[[auth.oidc]]
name = "corp"
issuer = "{}"
audience = ["phigate", "phigate-cli"]
groups_claim = "groups"
client_id = "phigate-cli"

[[binding]]
groups = ["reviewers"]
roles = ["reviewer"]
issuer = "corp"

[approvals]
reviewer_roles = ["reviewer"]

[console]
idle_timeout_secs = 3
"#,
        idp.issuer
    );
    let gw = Gateway::start_with_identities(Path::new(env!("CARGO_BIN_EXE_phigate")), opts, &[])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let shots = screenshots(dir.path());
    let url = format!("http://127.0.0.1:{}/console/", gw.http_port);
    let out = browser(&[
        "oidc",
        &url,
        "privacy.officer@demo.phigate",
        "3",
        shots.to_str().expect("path"),
    ]);
    assert!(out.contains("\"ok\":true"), "{out}");
    assert!(
        gw.log().contains("console sign-in"),
        "the sign-in is logged:\n{}",
        gw.log()
    );
}
