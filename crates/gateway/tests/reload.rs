//! SIGHUP reloads the policy atomically; a session keeps its snapshot until its transaction
//! ends; a broken file leaves the running policy in place.

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

fn hup(gw: &Gateway) {
    let ok = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
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
    hup(&gw);
    gw.wait_log("policy reloaded", 1).expect("log line");
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
    hup(&gw);
    gw.wait_log("policy reloaded", 2).expect("log line");
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
    hup(&gw);
    gw.wait_log("policy reloaded", 3).expect("log line");

    // A broken file is refused and the running policy stays.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("actions = [\"select\"]", "actions = [\"selct\"]"),
    )
    .expect("rewrite");
    hup(&gw);
    gw.wait_log("policy reload failed", 1).expect("log line");
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
    hup(&gw);
    gw.wait_log("policy reloaded", 1).expect("log line");
    let err = client
        .simple_query("SELECT count(*) FROM lab_results")
        .await
        .expect_err("new policy");
    assert!(
        db_message(&err).contains("denied by rule grants"),
        "{err:?}"
    );
}
