//! The content detectors, the second net: an identifier that sits in a column nobody tagged
//! reaches the masked agent masked — in rows (text and binary results), COPY text and CSV, and
//! errors — while the clinician sees it as stored.

use std::path::Path;

use phigate_testkit::{Cluster, Gateway, GatewayOptions};
use tokio_postgres::{NoTls, SimpleQueryMessage};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn clinic() -> &'static Cluster {
    phigate_testkit::clinic(phigate::demo::SEED_SQL)
}

const DOSE: &str =
    "5 mg; questions: call 555-867-5309 or jo.smith@example.com, SSN 078-05-1120, from 10.1.2.3";
const MASKED: &str =
    "5 mg; questions: call ***-***-**** or **.*****@*******.***, SSN ***-**-****, from **.*.*.*";

async fn connect(gw: &Gateway, who: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&gw.conninfo(who), NoTls)
        .await
        .unwrap_or_else(|e| panic!("{who} connects: {e}\n{}", gw.log()));
    tokio::spawn(conn);
    c
}

fn simple_value(msgs: &[SimpleQueryMessage]) -> String {
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_in_untagged_columns_reach_the_agent_masked() {
    // A dose field (untagged) that someone filled with contact details.
    clinic()
        .psql(
            "clinic",
            &format!(
                "INSERT INTO prescriptions (id, patient_id, encounter_id, drug, dose, prescribed_at) \
                 SELECT 990001, patient_id, id, 'lisinopril', '{DOSE}', now() FROM encounters ORDER BY id LIMIT 1"
            ),
        )
        .expect("seed the row");
    let mut opts = GatewayOptions::for_cluster(clinic());
    opts.policy = phigate::demo::policy_toml().expect("policy TOML");
    opts.extra = "[approvals]\nenabled = false\n".into();
    let gw = Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let agent = connect(&gw, "agent").await;
    let clinician = connect(&gw, "clinician").await;
    let sql = "SELECT dose FROM prescriptions WHERE id = 990001";

    // Text results (simple protocol) and binary results (extended protocol).
    let seen = simple_value(&agent.simple_query(sql).await.expect("simple"));
    assert_eq!(seen, MASKED);
    let row = agent.query_one(sql, &[]).await.expect("extended");
    assert_eq!(row.get::<_, String>(0), MASKED);
    // A prepared statement executed again (no RowDescription in that exchange).
    let stmt = agent.prepare(sql).await.expect("prepare");
    for _ in 0..2 {
        let row = agent.query_one(&stmt, &[]).await.expect("execute");
        assert_eq!(row.get::<_, String>(0), MASKED);
    }
    // Inside an expression, JSON and an array.
    let seen = simple_value(
        &agent
            .simple_query(
                "SELECT json_build_object('d', dose)::text || array[dose]::text FROM prescriptions WHERE id = 990001",
            )
            .await
            .expect("json"),
    );
    assert!(
        !seen.contains("867-5309") && !seen.contains("jo.smith") && !seen.contains("1120"),
        "{seen}"
    );

    // COPY text and CSV.
    for format in ["text", "csv"] {
        let copy = format!(
            "COPY (SELECT dose FROM prescriptions WHERE id = 990001) TO STDOUT WITH (FORMAT {format})"
        );
        let stream = agent.copy_out(copy.as_str()).await.expect("copy out");
        let mut stream = std::pin::pin!(stream);
        let mut data = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            data.extend_from_slice(&chunk.expect("chunk"));
        }
        let text = String::from_utf8(data).expect("utf-8");
        assert!(text.contains(MASKED), "{format}: {text}");
    }

    // An error quoting the value.
    let err = agent
        .simple_query("SELECT dose::int FROM prescriptions WHERE id = 990001")
        .await
        .expect_err("not an integer");
    let message = err
        .as_db_error()
        .expect("a database error")
        .message()
        .to_owned();
    assert!(message.contains(MASKED), "{message}");

    // The clinician (unmasked) sees it as stored.
    let seen = simple_value(&clinician.simple_query(sql).await.expect("clinician"));
    assert_eq!(seen, DOSE);
}
