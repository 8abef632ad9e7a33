//! `/metrics` after real traffic: sessions by role, statements by decision (allowed, refused,
//! held, masked), holds pending, failed logins by reason and where, and the statement and audit
//! fsync latency histograms agree with what the test did.

use std::path::Path;
use std::time::Duration;

use phigate_testkit::{Cluster, Gateway, GatewayOptions};
use tokio_postgres::NoTls;

fn clinic() -> &'static Cluster {
    phigate_testkit::clinic(phigate::demo::SEED_SQL)
}

/// The value of the sample `series` (name and labels, exactly as rendered).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .trim()
        .parse()
        .expect("number")
}

fn scrape(gw: &Gateway) -> String {
    let (code, body) = gw.http_get("/metrics").expect("metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// The `duration_us` of every `statement_end` record.
fn statement_ends(gw: &Gateway) -> Vec<u64> {
    gw.audit_records("statement_end")
        .iter()
        .map(|v| v["duration_us"].as_u64().expect("duration_us"))
        .collect()
}

async fn connect(gw: &Gateway, who: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&gw.conninfo(who), NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_traffic() {
    let mut opts = GatewayOptions::for_cluster(clinic());
    opts.policy = phigate::demo::policy_toml().expect("policy TOML");
    opts.extra = "[approvals]\ntimeout_secs = 2\n".into();
    let gw = Gateway::start(Path::new(env!("CARGO_BIN_EXE_phigate")), opts).expect("gateway");

    let before = scrape(&gw);
    assert_eq!(
        sample(&before, "phigate_sessions_by_role{role=\"ai-agent\"}"),
        0.0
    );
    assert_eq!(
        sample(&before, "phigate_statements_total{decision=\"allow\"}"),
        0.0
    );

    let agent = connect(&gw, "agent").await;
    let clinician = connect(&gw, "clinician").await;
    // Allowed: three masked reads by the agent, two plain ones by the clinician.
    for _ in 0..3 {
        agent
            .simple_query("SELECT first_name FROM patients LIMIT 1")
            .await
            .expect("masked read");
    }
    for _ in 0..2 {
        clinician.simple_query("SELECT 1").await.expect("read");
    }
    // Refused: a server file read.
    agent
        .simple_query("SELECT pg_read_file('/etc/passwd')")
        .await
        .expect_err("refused");
    // Two failed logins on the wire, one on the HTTP API.
    for _ in 0..2 {
        let bad = gw
            .conninfo("agent")
            .replace(gw.token("agent"), "not-a-token");
        tokio_postgres::connect(&bad, NoTls)
            .await
            .err()
            .expect("bad token refused");
    }
    let (code, _) = gw
        .http_as("GET", "/v1/reviews", "not-a-token", None)
        .expect("http");
    assert_eq!(code, 401);

    // Held: the agent's write waits for a reviewer (and expires after 2 s).
    let held =
        agent.simple_query("UPDATE encounters SET diagnosis_code = diagnosis_code WHERE false");
    let watch = async {
        for _ in 0..100 {
            let m = scrape(&gw);
            if sample(&m, "phigate_holds_pending") == 1.0 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the hold never showed in /metrics");
    };
    let (held, during) = tokio::join!(held, watch);
    held.expect_err("expired");
    assert_eq!(
        sample(&during, "phigate_sessions_by_role{role=\"ai-agent\"}"),
        1.0
    );
    assert_eq!(
        sample(&during, "phigate_sessions_by_role{role=\"clinician\"}"),
        1.0
    );
    assert_eq!(
        sample(&during, "phigate_sessions_by_role{role=\"admin\"}"),
        0.0
    );

    let m = scrape(&gw);
    assert_eq!(sample(&m, "phigate_holds_pending"), 0.0, "{m}");
    assert_eq!(
        sample(&m, "phigate_statements_total{decision=\"allow\"}"),
        5.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "phigate_statements_total{decision=\"deny\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "phigate_statements_total{decision=\"require_approval\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(sample(&m, "phigate_statements_masked_total"), 3.0, "{m}");
    // The hold ended without approval (it expired).
    assert_eq!(
        sample(&m, "phigate_holds_total{outcome=\"refused\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "phigate_holds_total{outcome=\"approved\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "phigate_login_failures_total{reason=\"invalid_credentials\",via=\"wire\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "phigate_login_failures_total{reason=\"invalid_credentials\",via=\"http\"}"
        ),
        1.0,
        "{m}"
    );
    // Every statement the database answered was timed, as its `statement_end` record says
    // (the allowed ones, and the refusals the database rejected in their place), and the
    // histogram agrees with the records' durations.
    let count = sample(&m, "phigate_statement_duration_seconds_count");
    // (The records are written in the background: wait for the last one.)
    let mut ends = statement_ends(&gw);
    for _ in 0..100 {
        if ends.len() as f64 >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ends = statement_ends(&gw);
    }
    assert!(ends.len() >= 5, "{ends:?}");
    assert_eq!(ends.len() as f64, count, "{m}");
    assert_eq!(
        sample(&m, "phigate_statement_duration_seconds_bucket{le=\"+Inf\"}"),
        count,
        "{m}"
    );
    let under_1s = ends.iter().filter(|us| **us <= 1_000_000).count() as f64;
    assert_eq!(
        sample(&m, "phigate_statement_duration_seconds_bucket{le=\"1\"}"),
        under_1s,
        "{m}"
    );
    let sum: u64 = ends.iter().sum();
    let rendered = sample(&m, "phigate_statement_duration_seconds_sum");
    assert!(
        (rendered - sum as f64 / 1e6).abs() < 1e-6,
        "{rendered} vs {sum} µs"
    );
    assert!(m.contains("# TYPE phigate_statement_duration_seconds histogram"));
    let fsyncs = sample(&m, "phigate_audit_fsyncs_total");
    assert!(fsyncs >= 1.0, "{m}");
    assert_eq!(
        sample(&m, "phigate_audit_fsync_duration_seconds_count"),
        fsyncs,
        "{m}"
    );
    // The decisions agree with the audit log's statement records (a hold's end adds one).
    let statements = gw.audit_records("statement");
    for d in ["allow", "deny"] {
        let n = statements.iter().filter(|r| r["decision"] == d).count() as f64;
        let series = format!("phigate_statements_total{{decision=\"{d}\"}}");
        assert_eq!(sample(&m, &series), n, "{d}: {m}");
    }
    let held = statements
        .iter()
        .filter(|r| r["decision"] == "require_approval")
        .count() as f64;
    assert_eq!(held, 2.0, "held, then its expiry: {statements:?}");
    // The existing names stay.
    for name in [
        "phigate_sessions ",
        "phigate_connections ",
        "phigate_audit_records_total ",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }

    drop(agent);
    drop(clinician);
    for _ in 0..100 {
        let m = scrape(&gw);
        if sample(&m, "phigate_sessions_by_role{role=\"ai-agent\"}") == 0.0
            && sample(&m, "phigate_sessions_by_role{role=\"clinician\"}") == 0.0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sessions by role did not go back to 0");
}
