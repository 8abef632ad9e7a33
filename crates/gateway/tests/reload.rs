//! SIGHUP reloads the configuration atomically: the policy (a session keeps its snapshot until
//! its transaction ends), identities (a removed one is logged out), TLS certificates, the
//! approvals webhook; a broken file leaves everything in place; what needs a restart is named.

use std::path::Path;
use std::process::Command;

use phigate_testkit::{Gateway, GatewayOptions};
use tokio_postgres::NoTls;

const DENY_LABS: &str = r#"
[[role]]
name = "ai-agent"
[[role.grant]]
schema = "public"
tables = ["patients"]
actions = ["select"]
"#;

const ALLOW_LABS: &str = r#"
[[role]]
name = "ai-agent"
[[role.grant]]
schema = "public"
tables = ["patients", "lab_results"]
actions = ["select"]
"#;

fn db_message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_else(|| err.to_string())
}

#[tokio::test]
async fn sighup_swaps_the_policy_between_transactions() {
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let mut opts = GatewayOptions::for_cluster(cluster);
    // Only the agent has a policy: the other test identities must go for this gateway.
    opts.policy = DENY_LABS.into();
    let gw =
        Gateway::start_with_identities(Path::new(env!("CARGO_BIN_EXE_phigate")), opts, &["agent"])
            .expect("gateway");
    let config = gw.dir().join("phigate.toml");
    let (client, conn) = tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);

    let err = client
        .simple_query("SELECT count(*) FROM lab_results")
        .await
        .expect_err("denied");
    assert!(
        db_message(&err).contains("denied by rule grants"),
        "{err:?}"
    );

    // Open a transaction under the old policy, then reload.
    client.batch_execute("BEGIN").await.expect("begin");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace(DENY_LABS, ALLOW_LABS)).expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 1).expect("log line");
    let err = client
        .simple_query("SELECT count(*) FROM lab_results")
        .await
        .expect_err("old snapshot");
    assert!(
        db_message(&err).contains("denied by rule grants"),
        "{err:?}"
    );
    client.batch_execute("ROLLBACK").await.expect("rollback");

    // The next transaction runs under the new policy.
    let rows = client
        .query_one("SELECT count(*) FROM lab_results", &[])
        .await
        .expect("allowed now");
    assert_eq!(rows.get::<_, i64>(0), 40_000);

    // A statement prepared under the generous policy is decided again after a reload that
    // takes the grant away (extended protocol and SQL-level PREPARE alike).
    let stmt = client
        .prepare("SELECT count(*) FROM lab_results")
        .await
        .expect("prepare");
    client
        .batch_execute("PREPARE labs AS SELECT count(*) FROM lab_results")
        .await
        .expect("PREPARE");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace(ALLOW_LABS, DENY_LABS)).expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 2).expect("log line");
    let err = client
        .query_one(&stmt, &[])
        .await
        .expect_err("prepared under the old policy");
    assert!(
        db_message(&err).contains("denied by rule grants"),
        "{err:?}"
    );
    let err = client
        .simple_query("EXECUTE labs")
        .await
        .expect_err("SQL-level prepared");
    assert!(
        db_message(&err).contains("denied by rule grants"),
        "{err:?}"
    );
    std::fs::write(&config, text).expect("restore");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 3).expect("log line");

    // A broken file is refused and the running policy stays.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("actions = [\"select\"]", "actions = [\"selct\"]"),
    )
    .expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reload failed", 1)
        .expect("log line");
    let rows = client
        .query_one("SELECT count(*) FROM lab_results", &[])
        .await
        .expect("still allowed");
    assert_eq!(rows.get::<_, i64>(0), 40_000);
}

/// A COPY FROM STDIN over the extended protocol makes PostgreSQL ignore the Sync sent with it:
/// the session must still come to rest afterwards, or no reload would ever reach it.
#[tokio::test]
async fn a_reload_reaches_a_session_after_an_extended_copy() {
    use futures_util::SinkExt;
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let mut opts = GatewayOptions::for_cluster(cluster);
    // The scratch table the COPY fills (a temp table is checked like a table in the role's
    // search_path schema).
    opts.policy = format!(
        "{ALLOW_LABS}[[role.grant]]\nschema = \"public\"\ntables = [\"c\"]\nactions = [\"ddl\", \"insert\"]\n"
    );
    let gw =
        Gateway::start_with_identities(Path::new(env!("CARGO_BIN_EXE_phigate")), opts, &["agent"])
            .expect("gateway");
    let config = gw.dir().join("phigate.toml");
    let (client, conn) = tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TEMP TABLE c (v int)")
        .await
        .expect("temp table");
    for _ in 0..3 {
        let sink = client.copy_in("COPY c FROM STDIN").await.expect("copy in");
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1\n2\n"))
            .await
            .expect("data");
        sink.finish().await.expect("copy done");
    }
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace(ALLOW_LABS, DENY_LABS)).expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 1).expect("log line");
    let err = client
        .simple_query("SELECT count(*) FROM lab_results")
        .await
        .expect_err("new policy");
    assert!(
        db_message(&err).contains("denied by rule grants"),
        "{err:?}"
    );
}

/// Waits until `phigate audit search` shows `n` records of `kind`.
fn wait_records(gw: &Gateway, kind: &str, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let got = gw.audit_records(kind);
        if got.len() >= n {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("fewer than {n} {kind} records:\n{}", gw.log());
}

/// The test kit's config without the clinician's `[[identity]]` table (its header, subject,
/// token and roles lines).
fn without_clinician(text: &str) -> String {
    let start = text
        .find("[[identity]]\nsubject = \"clinician@test.phigate\"")
        .expect("clinician's table");
    let end = start
        + text[start..]
            .find("roles = [\"clinician\"]\n")
            .expect("roles line")
        + "roles = [\"clinician\"]\n".len();
    text.replace(&text[start..end], "")
}

/// Offboarding by config: the `[[identity]]` removed from the file and reloaded can no longer
/// log in, and its live session ends at once; the others go on. A setting only a restart can
/// apply is named in the log and in the `config_reload` record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_identity_is_logged_out_and_restart_only_changes_are_named() {
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let gw = Gateway::start_with_identities(
        Path::new(env!("CARGO_BIN_EXE_phigate")),
        GatewayOptions::for_cluster(cluster),
        &["agent", "clinician"],
    )
    .expect("gateway");
    let config = gw.dir().join("phigate.toml");
    let (clinician, conn) = tokio_postgres::connect(&gw.conninfo("clinician"), NoTls)
        .await
        .expect("connect");
    let clinician_conn = tokio::spawn(conn);
    let (agent, conn) = tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    clinician.simple_query("SELECT 1").await.expect("works");

    let text = std::fs::read_to_string(&config).expect("config");
    let edited =
        without_clinician(&text).replace("shutdown_grace_secs = 5", "shutdown_grace_secs = 7");
    std::fs::write(&config, edited).expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 1).expect("log line");

    // The live session ended: the gateway closed it, saying why.
    let err = clinician
        .simple_query("SELECT 1")
        .await
        .expect_err("a removed identity's session went on");
    assert!(
        db_message(&err).contains("revoked") || err.is_closed(),
        "{err:?}"
    );
    let _ = clinician_conn.await;
    // The gateway logs the session's end (it may do so just after the client saw it).
    gw.wait_log("credential revoked", 1)
        .expect("the session's end is logged");
    // And it cannot log in again.
    let err = tokio_postgres::connect(&gw.conninfo("clinician"), NoTls)
        .await
        .err()
        .expect("a removed identity logged in");
    assert!(
        db_message(&err).contains("authentication failed"),
        "{err:?}"
    );
    agent.simple_query("SELECT 1").await.expect("others go on");

    assert!(
        gw.log()
            .contains("take effect only after a restart: listen.shutdown_grace_secs"),
        "{}",
        gw.log()
    );
    let reloads = wait_records(&gw, "config_reload", 1);
    let last = reloads.last().expect("record");
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(
        last["needs_restart"],
        serde_json::json!(["listen.shutdown_grace_secs"]),
        "{last}"
    );

    // A file that does not validate changes nothing, and says why.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("roles = [\"ai-agent\"]", "roles = [\"nobody\"]"),
    )
    .expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reload failed", 1)
        .expect("log line");
    let reloads = wait_records(&gw, "config_reload", 2);
    let last = reloads.last().expect("record");
    assert_eq!(last["ok"], false, "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap_or_default()
            .contains("role nobody is not defined"),
        "{last}"
    );
    agent
        .simple_query("SELECT 1")
        .await
        .expect("still admitted");
}

fn tls_table(certs: &phigate_testkit::Certs) -> String {
    format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nrequire = true\n",
        certs.cert().display(),
        certs.key().display()
    )
}

/// `SELECT 42` through psql with `sslmode=verify-full` against `ca`.
fn psql_verified(gw: &Gateway, ca: &Path) -> (bool, String) {
    let conninfo = format!(
        "host=localhost port={} dbname=clinic user=ai-agent sslmode=verify-full sslrootcert={}",
        gw.pg_port,
        ca.display()
    );
    let out = Command::new("psql")
        .args([&conninfo, "-XAtc", "SELECT 42"])
        .env("PGPASSWORD", gw.token("agent"))
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql");
    (
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "42",
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A certificate rotated in place (new files at the configured paths) and a SIGHUP: the next
/// handshake gets the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_tls_certificate_is_served_to_the_next_handshake() {
    let old = phigate_testkit::Certs::generate().expect("certs");
    let new = phigate_testkit::Certs::generate().expect("certs");
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let mut opts = GatewayOptions::for_cluster(cluster);
    opts.extra = tls_table(&old);
    let gw =
        Gateway::start_with_identities(Path::new(env!("CARGO_BIN_EXE_phigate")), opts, &["agent"])
            .expect("gateway");
    let (ok, err) = psql_verified(&gw, &old.ca());
    assert!(ok, "{err}");
    let (ok, _) = psql_verified(&gw, &new.ca());
    assert!(!ok, "the new CA verified the old certificate");

    std::fs::copy(new.cert(), old.cert()).expect("rotate cert");
    std::fs::copy(new.key(), old.key()).expect("rotate key");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 1).expect("log line");
    let (ok, err) = psql_verified(&gw, &new.ca());
    assert!(ok, "the rotated certificate was not served: {err}");
    let (ok, _) = psql_verified(&gw, &old.ca());
    assert!(!ok, "the old certificate is still served");
}

/// A webhook receiver that answers 200 and keeps every JSON body it gets.
fn webhook() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let body = loop {
                let n = conn.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body[..len].to_owned());
                    }
                }
            };
            if let Some(v) = body.and_then(|b| serde_json::from_str(&b).ok()) {
                if let Ok(mut g) = sink.lock() {
                    g.push(v);
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, got)
}

/// `approvals.webhook_url` changed and reloaded: the next hold is announced at the new URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_webhook_receives_the_next_hold() {
    let (first_url, first) = webhook();
    let (second_url, second) = webhook();
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let mut opts = GatewayOptions::for_cluster(cluster);
    opts.extra = format!("[approvals]\ntimeout_secs = 2\nwebhook_url = \"{first_url}\"\n");
    opts.policy = format!(
        "{}\n[[rule]]\nname = \"writes-need-approval\"\nroles = [\"ai-agent\"]\nkinds = [\"write\"]\naction = \"require_approval\"\n",
        phigate_testkit::PASS_THROUGH_POLICY
    );
    let gw = Gateway::start(Path::new(env!("CARGO_BIN_EXE_phigate")), opts).expect("gateway");
    let config = gw.dir().join("phigate.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace(&first_url, &second_url)).expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 1).expect("log line");

    let (agent, conn) = tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let err = agent
        .simple_query("INSERT INTO patients (id) VALUES (-1)")
        .await
        .expect_err("held, then expired");
    assert!(db_message(&err).contains("review"), "{err:?}");
    let mut requested = false;
    for _ in 0..100 {
        requested = second
            .lock()
            .map(|g| g.iter().any(|v| v["event"] == "review.requested"))
            .unwrap_or(false);
        if requested {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(requested, "the new webhook got no review.requested");
    assert!(
        first.lock().map(|g| g.is_empty()).unwrap_or(false),
        "the old webhook was still used"
    );
}

/// A role removed from the file ends the sessions that hold it, API keys' included (their role
/// is written in the key); `audit.reader_roles` follows the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_role_ends_its_sessions_and_audit_readers_follow_the_file() {
    const ADMIN: &str = "[[role]]\nname = \"admin\"\nrestricted = false\n[[role.grant]]\nschema = \"*\"\nactions = [\"*\"]\n";
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let mut opts = GatewayOptions::for_cluster(cluster);
    opts.extra = "[audit]\nreader_roles = []\n".into();
    assert!(opts.policy.contains(ADMIN));
    let gw = Gateway::start_with_identities(
        Path::new(env!("CARGO_BIN_EXE_phigate")),
        opts,
        &["agent", "reviewer"],
    )
    .expect("gateway");
    let config = gw.dir().join("phigate.toml");
    let cfg = config.to_str().expect("path");
    let out = Command::new(env!("CARGO_BIN_EXE_phigate"))
        .args([
            "keys", "create", "--name", "ops", "--role", "admin", "--config", cfg,
        ])
        .output()
        .expect("keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let conninfo = gw
        .conninfo("agent")
        .replace(gw.token("agent"), &key)
        .replace("user=ai-agent", "user=admin");
    let (admin, conn) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .expect("API key session");
    let conn = tokio::spawn(conn);
    admin.simple_query("SELECT 1").await.expect("works");
    let reader = gw.token("reviewer").to_owned();
    let (code, _) = gw
        .http_as("GET", "/v1/audit/records", &reader, None)
        .expect("http");
    assert_eq!(code, 403);

    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(ADMIN, "")
            .replace("reader_roles = []", "reader_roles = [\"reviewer\"]"),
    )
    .expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 1).expect("log line");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn)
        .await
        .expect("the session of a removed role was not ended")
        .expect("join");
    let err = ended.expect_err("ended");
    assert!(db_message(&err).contains("revoked"), "{err:?}");
    let (code, body) = gw
        .http_as("GET", "/v1/audit/records", &reader, None)
        .expect("http");
    assert_eq!(code, 200, "{body}");
}

/// An agent idle in a transaction holds locks on its masking views. A reload that does not
/// change what is masked does not touch the views, so it neither waits for that agent nor
/// fails: a removed identity is logged out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_idle_in_a_transaction_cannot_hold_a_reload_up() {
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let mut opts = GatewayOptions::for_cluster(cluster);
    opts.policy = phigate::demo::policy_toml().expect("policy TOML");
    let gw = Gateway::start_with_identities(
        Path::new(env!("CARGO_BIN_EXE_phigate")),
        opts,
        &["agent", "clinician"],
    )
    .expect("gateway");
    let (agent, conn) = tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    agent
        .batch_execute("BEGIN; SELECT first_name FROM patients LIMIT 1")
        .await
        .expect("a masked read inside a transaction");
    let (clinician, conn) = tokio_postgres::connect(&gw.conninfo("clinician"), NoTls)
        .await
        .expect("connect");
    let clinician_conn = tokio::spawn(conn);
    clinician.simple_query("SELECT 1").await.expect("works");

    let config = gw.dir().join("phigate.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, without_clinician(&text)).expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 1).expect("log line");
    assert!(
        gw.log()
            .contains("masking views unchanged; not re-provisioned"),
        "{}",
        gw.log()
    );
    let err = clinician
        .simple_query("SELECT 1")
        .await
        .expect_err("a removed identity's session went on");
    assert!(
        db_message(&err).contains("revoked") || err.is_closed(),
        "{err:?}"
    );
    let _ = clinician_conn.await;
    let reloads = wait_records(&gw, "config_reload", 1);
    assert_eq!(reloads.last().expect("record")["ok"], true);
    agent
        .batch_execute("COMMIT")
        .await
        .expect("the agent goes on");
}

/// A run of at least `n` hex digits in `text` (key material).
fn hex_run(text: &str, n: usize) -> Option<&str> {
    let b = text.as_bytes();
    let mut start = 0;
    for i in 0..=b.len() {
        if i == b.len() || !b[i].is_ascii_hexdigit() {
            if i - start >= n {
                return Some(&text[start..i]);
            }
            start = i + 1;
        }
    }
    None
}

/// A change to a masked role's masking must not wait for that role's own sessions: an agent
/// idle in a transaction on the views (its locks block re-creating them) has its transaction
/// ended, the reload takes effect, and the next session sees the new masking. The token key
/// never appears in the database's log, even for the attempts that timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masking_change_ends_an_idle_agents_transaction_and_the_key_stays_out_of_the_log() {
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let mut opts = GatewayOptions::for_cluster(cluster);
    opts.policy = phigate::demo::policy_toml().expect("policy TOML");
    let gw = Gateway::start_with_identities(
        Path::new(env!("CARGO_BIN_EXE_phigate")),
        opts,
        &["agent", "clinician"],
    )
    .expect("gateway");
    let (agent, conn) = tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .expect("connect");
    let agent_conn = tokio::spawn(conn);
    let before: String = agent
        .query_one("SELECT zip FROM patients ORDER BY id LIMIT 1", &[])
        .await
        .expect("zip")
        .get(0);
    agent
        .batch_execute("BEGIN; SELECT zip FROM patients LIMIT 1")
        .await
        .expect("a masked read inside a transaction, left open");

    let config = gw.dir().join("phigate.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    // The agent's role comes first: its masking table gets zip = "redact".
    let edited = text.replacen("[role.masking]\n", "[role.masking]\nzip = \"redact\"\n", 1);
    assert_ne!(edited, text);
    std::fs::write(&config, edited).expect("rewrite");
    gw.reload().expect("SIGHUP");
    let reloads = wait_records(&gw, "config_reload", 1);
    let last = reloads.last().expect("record");
    assert_eq!(last["ok"], true, "{last}\n{}", gw.log());
    assert!(
        gw.log()
            .contains("ended the open transactions of masked sessions"),
        "{}",
        gw.log()
    );
    // The idle transaction was ended under the agent.
    assert!(agent.batch_execute("COMMIT").await.is_err());
    let _ = agent_conn.await;
    let (agent, conn) = tokio_postgres::connect(&gw.conninfo("agent"), NoTls)
        .await
        .expect("connect again");
    tokio::spawn(conn);
    let after: String = agent
        .query_one("SELECT zip FROM patients ORDER BY id LIMIT 1", &[])
        .await
        .expect("zip")
        .get(0);
    assert_ne!(before, after, "the new masking is in force");
    let log = cluster.server_log();
    assert!(
        log.contains("lock timeout") || log.contains("canceling statement due to lock timeout"),
        "the provisioning did wait for the agent's lock:\n{log}"
    );
    assert_eq!(hex_run(&log, 128), None, "key material in the server log");
}
