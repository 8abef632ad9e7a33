//! Reading a view counts as reading what is under it: the gateway learns views and their base
//! relations from the database's catalog, and again after DDL.

use std::path::Path;

use phigate_testkit::{Gateway, GatewayOptions};
use tokio_postgres::{Client, NoTls};

const POLICY: &str = r#"
[[role]]
name = "ai-agent"
[[role.grant]]
schema = "public"
tables = ["departments", "department_names", "patient_ssns"]
actions = ["select"]

[[role]]
name = "admin"
restricted = false
[[role.grant]]
schema = "*"
actions = ["*"]
"#;

async fn connect(gw: &Gateway, who: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&gw.conninfo(who), NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

fn message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_else(|| err.to_string())
}

#[tokio::test]
async fn a_granted_view_does_not_open_the_tables_under_it() {
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let mut opts = GatewayOptions::for_cluster(cluster);
    opts.policy = POLICY.into();
    let gw = Gateway::start_with_identities(
        Path::new(env!("CARGO_BIN_EXE_phigate")),
        opts,
        &["agent", "admin"],
    )
    .expect("gateway");
    // The agent's session exists before the views do.
    let agent = connect(&gw, "agent").await;
    let admin = connect(&gw, "admin").await;
    admin
        .batch_execute(
            "CREATE VIEW department_names AS SELECT id, name FROM departments; \
             CREATE VIEW patient_ssns AS SELECT id, ssn FROM patients; \
             CREATE VIEW ssn_layer AS SELECT * FROM patient_ssns",
        )
        .await
        .expect("admin creates views");

    let n: i64 = agent
        .query_one("SELECT count(*) FROM department_names", &[])
        .await
        .expect("a view over granted tables")
        .get(0);
    assert_eq!(n, 12);

    let log = gw.log();
    let Err(err) = agent.query("SELECT ssn FROM patient_ssns", &[]).await else {
        panic!("a view over patients was read; gateway log:\n{log}");
    };
    assert_eq!(
        message(&err),
        "phigate: SELECT on public.patients denied by rule grants"
    );
    let err = agent
        .simple_query("SELECT ssn FROM patient_ssns")
        .await
        .expect_err("simple protocol too");
    assert!(
        message(&err).contains("public.patients denied by rule grants"),
        "{err:?}"
    );
    // Through a view over that view too, once ssn_layer is granted: still patients.
    let err = agent
        .simple_query("SELECT * FROM ssn_layer")
        .await
        .expect_err("ungranted view");
    assert!(
        message(&err).contains("public.ssn_layer denied by rule grants"),
        "{err:?}"
    );
}
