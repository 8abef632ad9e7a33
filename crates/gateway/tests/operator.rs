//! What an auditor and an operator read, from a real gateway in front of a real PostgreSQL: the
//! CSV export carries every documented field of every record it holds; `audit search` finds an
//! individual in any role; the access report's counts agree with the records, holds that were
//! approved are not refusals, reviewers are credited, approvals have their own section.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use phigate_testkit::{Cluster, Gateway, GatewayOptions};
use serde_json::Value;
use tokio_postgres::NoTls;

mod operator_support;
use operator_support::{documented_fields, parse_csv};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn cluster() -> &'static Cluster {
    phigate_testkit::clinic(
        "CREATE TABLE notes (id serial PRIMARY KEY, body text);\n\
         CREATE TABLE patients (id int PRIMARY KEY, name text, ssn text);\n\
         INSERT INTO patients VALUES (1, 'Ada Quill', '123-45-6789');",
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
name = "no-deletes"
roles = ["ai-agent"]
kinds = ["delete"]
action = "deny"

[[rule]]
name = "writes-need-approval"
roles = ["ai-agent"]
kinds = ["write"]
action = "require_approval"

[[phi]]
table = "public.patients"
columns = { name = "name", ssn = "ssn" }
"#;

fn phigate(args: &[&str]) -> (bool, String, String) {
    phigate_testkit::run(Command::new(bin()).args(args)).expect("run phigate")
}

async fn connect(info: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(info, NoTls).await.expect("connect");
    tokio::spawn(conn);
    c
}

/// Waits for the one pending review and decides it.
async fn decide(gw: &Gateway, verb: &str, reason: &str) -> String {
    let http = format!("http://127.0.0.1:{}", gw.http_port);
    let token = gw.token("reviewer").to_owned();
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let v: Value = client
            .get(format!("{http}/v1/reviews"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if let Some(id) = v["reviews"][0]["id"].as_str() {
            let resp = client
                .post(format!("{http}/v1/reviews/{id}/{verb}"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "reason": reason }))
                .send()
                .await
                .expect("decide");
            assert_eq!(resp.status().as_u16(), 200, "{verb} {id}");
            return id.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no pending review appeared");
}

/// A session's worth of everything the report counts: reads, a refusal, three holds (two
/// approved, one denied), an unmasked read of PHI, failed logins; then a graceful stop.
async fn activity(gw: &Gateway) -> Vec<String> {
    let agent = connect(&gw.conninfo("agent")).await;
    agent
        .simple_query("SELECT count(*) FROM notes")
        .await
        .expect("read");
    // Statement texts carry an escape sequence: the text report must not replay it.
    let refused = agent
        .simple_query("DELETE FROM notes WHERE body = '\u{1b}[2J'")
        .await;
    assert!(refused.is_err(), "the DELETE is refused");
    let mut reviews = Vec::new();
    for (i, verb) in ["approve", "approve", "deny"].into_iter().enumerate() {
        let sql = format!("INSERT INTO notes (body) VALUES ('n{i}\u{1b}[2J')");
        let insert = agent.simple_query(&sql);
        let reason = format!("checked {i}");
        let (ran, id) = tokio::join!(insert, decide(gw, verb, &reason));
        assert_eq!(ran.is_ok(), verb == "approve", "{verb}: {ran:?}");
        reviews.push(id);
    }
    let clinician = connect(&gw.conninfo("clinician")).await;
    clinician
        .simple_query("SELECT name FROM patients")
        .await
        .expect("clinician reads PHI");
    // A genuine credential asking for a role it may not have: the record names its subject.
    let wrong_role = format!(
        "host=127.0.0.1 port={} dbname=clinic user=clinician password={} sslmode=disable",
        gw.pg_port,
        gw.token("agent")
    );
    assert!(tokio_postgres::connect(&wrong_role, NoTls).await.is_err());
    // An unknown credential names nobody.
    let unknown = format!(
        "host=127.0.0.1 port={} dbname=clinic user=ai-agent password=not-a-token sslmode=disable",
        gw.pg_port
    );
    assert!(tokio_postgres::connect(&unknown, NoTls).await.is_err());
    drop(agent);
    drop(clinician);
    reviews
}

fn gateway() -> Gateway {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = POLICY.into();
    opts.extra = "[audit]\nstatement_text = \"full\"\nreader_roles = [\"reviewer\"]\n".into();
    Gateway::start_with_identities(bin(), opts, &["agent", "clinician", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

/// A record's field as the CSV export writes it.
fn expected_cell(column: &str, v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items)
            if ["tables", "kinds", "masked_columns", "unmasked_columns"].contains(&column) =>
        {
            items
                .iter()
                .map(|i| i.as_str().expect("a name").to_owned())
                .collect::<Vec<_>>()
                .join(" ")
        }
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_for_an_auditor() {
    let mut gw = gateway();
    let reviews = activity(&gw).await;
    check_review_show(&gw, &reviews[0]);
    check_http_search(&gw);
    gw.terminate().expect("SIGTERM");
    gw.wait_exit(Duration::from_secs(20)).expect("stops");
    let dd = gw.data_dir();
    let dd = dd.to_str().expect("utf-8");

    let (ok, out, err) = phigate(&["audit", "export", "--data-dir", dd]);
    assert!(ok, "{err}");
    let records = jsonl(&out);
    check_csv(dd, &records);
    check_search(dd, &records);
    check_report(dd, &records, &reviews);
    // The config names the same deployment.
    let config = gw.config_path();
    let (ok, by_config, err) = phigate(&[
        "audit",
        "export",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(by_config, out);
}

/// The HTTP API searches the same way, and refuses what would match nothing.
fn check_http_search(gw: &Gateway) {
    let token = gw.token("reviewer");
    let (code, body) = gw
        .http_as(
            "GET",
            "/v1/audit/records?subject=reviewer@test.phigate",
            token,
            None,
        )
        .expect("search");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let decided = v["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["type"] == "review_decided")
        .count();
    assert_eq!(decided, 3, "{body}");
    for q in ["type=statment", "decision=refused"] {
        let (code, body) = gw
            .http_as("GET", &format!("/v1/audit/records?{q}"), token, None)
            .expect("search");
        assert_eq!(code, 400, "{q}: {body}");
        assert!(body.contains("is not one of"), "{body}");
    }
}

/// `review show` is for a person; `--json` for a program.
fn check_review_show(gw: &Gateway, id: &str) {
    let show = |json: bool| {
        let mut c = Command::new(bin());
        c.args(["review", "show", id])
            .env("PHIGATE_TOKEN", gw.token("reviewer"));
        if json {
            // The deployment named by its config, like the audit commands.
            c.arg("--json").arg("--config").arg(gw.config_path());
        } else {
            c.env("PHIGATE_URL", format!("http://127.0.0.1:{}", gw.http_port));
        }
        phigate_testkit::run(&mut c).expect("review show")
    };
    let (ok, text, err) = show(false);
    assert!(ok, "{err}");
    assert!(!text.trim_start().starts_with('{'), "{text}");
    assert!(
        text.contains(&format!(
            "{id}  approved  agent@test.phigate as ai-agent  rule writes-need-approval"
        )),
        "{text}"
    );
    assert!(
        text.contains("decided by reviewer@test.phigate at "),
        "{text}"
    );
    assert!(text.contains(": checked 0"), "{text}");
    assert!(
        !text.contains('\u{1b}') && text.contains("\\u{1b}"),
        "{text}"
    );
    let (ok, json, err) = show(true);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["id"], id);
    let (ok, _, err) = phigate(&["review", "show", "../../v1/audit/records"]);
    assert!(!ok && err.contains("not a review id"), "{err}");
}

/// Every documented field is a column; every field of every real record is in its column.
fn check_csv(dd: &str, records: &[Value]) {
    let (ok, csv, err) = phigate(&["audit", "export", "--data-dir", dd, "--format", "csv"]);
    assert!(ok, "{err}");
    let rows = parse_csv(&csv);
    let header = &rows[0];
    assert_eq!(
        header[..13].join(","),
        "seq,ts,type,session,subject,role,decision,rule,tables,text,sqlstate,rows,hash_prev",
        "the original columns stay first, in their order"
    );
    let docs = documented_fields();
    for (kind, fields) in &docs {
        for f in fields {
            assert!(header.contains(f), "{kind}.{f} has no CSV column");
        }
    }
    assert_eq!(rows.len(), records.len() + 1);
    let mut filled: BTreeMap<String, usize> = BTreeMap::new();
    for (row, rec) in rows[1..].iter().zip(records) {
        assert_eq!(row.len(), header.len());
        let kind = rec["type"].as_str().expect("type");
        for (key, v) in rec.as_object().expect("object") {
            let column = if key == "prev" { "hash_prev" } else { key };
            let at = header
                .iter()
                .position(|h| h == column)
                .unwrap_or_else(|| panic!("{kind}.{key} has no column"));
            let want = expected_cell(column, v);
            if want.chars().any(char::is_control) {
                assert!(!row[at].chars().any(char::is_control), "{}", row[at]);
                assert!(row[at].contains("\\u{1b}"), "{}", row[at]);
            } else {
                assert_eq!(row[at], want, "{kind}.{key}");
            }
            if !want.is_empty() {
                *filled.entry(format!("{kind}.{key}")).or_default() += 1;
            }
        }
    }
    // The fields a compliance officer asked for, filled from these real records.
    for f in [
        "review_decided.by",
        "review_decided.status",
        "review_decided.reason",
        "login_failed.client_addr",
        "login_failed.reason",
        "login_failed.subject",
        "review_requested.subject",
        "review_requested.rule",
        "statement.approval",
        "statement.unmasked_columns",
        "session_start.client_addr",
        "statement_end.duration_us",
        "gateway_stop.reason",
    ] {
        assert!(filled.contains_key(f), "{f} never filled: {filled:?}");
    }
}

fn search(dd: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "search", "--data-dir", dd];
    all.extend(args);
    let (ok, out, err) = phigate(&all);
    assert!(ok, "{err}");
    jsonl(&out)
}

fn check_search(dd: &str, records: &[Value]) {
    // The reviewer never ran a statement; the records name them as the one who decided.
    let by_reviewer = search(dd, &["--subject", "reviewer@test.phigate"]);
    let decided = by_reviewer
        .iter()
        .filter(|r| r["type"] == "review_decided")
        .count();
    assert_eq!(decided, 3, "{by_reviewer:?}");
    // The agent: its sessions' records, its reviews (denied included), its failed login.
    let agent = search(dd, &["--subject", "agent@test.phigate"]);
    let types: Vec<&str> = agent.iter().filter_map(|r| r["type"].as_str()).collect();
    for t in [
        "session_start",
        "statement",
        "statement_end",
        "session_end",
        "review_requested",
        "review_decided",
        "login_failed",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    let requested = records
        .iter()
        .filter(|r| r["type"] == "review_requested")
        .count();
    assert_eq!(
        agent
            .iter()
            .filter(|r| r["type"] == "review_decided")
            .count(),
        requested
    );
    assert!(!agent
        .iter()
        .any(|r| r["subject"] == "clinician@test.phigate"));
    // An unmasked read of a PHI column.
    for c in ["name", "patients.name", "public.patients.ssn"] {
        let hits = search(dd, &["--column", c]);
        assert!(
            hits.iter()
                .any(|r| r["subject"] == "clinician@test.phigate"),
            "{c}: {hits:?}"
        );
    }
    // Unknown values are refused, not silently matched against nothing.
    for bad in [["--type", "statment"], ["--decision", "refused"]] {
        let mut all = vec!["audit", "search", "--data-dir", dd];
        all.extend(bad);
        let (ok, _, err) = phigate(&all);
        assert!(!ok && err.contains("possible values"), "{err}");
    }
}

/// The report's figures, counted again from the records.
#[derive(Default, Debug, PartialEq)]
struct Counts {
    sessions: u64,
    statements: u64,
    denied: u64,
    approvals_required: u64,
    approved: u64,
    held_refused: u64,
    reviews_approved: u64,
    reviews_denied: u64,
    failed_logins: u64,
}

fn count_records(records: &[Value]) -> BTreeMap<String, Counts> {
    let mut by: BTreeMap<String, Counts> = BTreeMap::new();
    for r in records {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        match r["type"].as_str().unwrap_or_default() {
            "session_start" => by.entry(s("subject")).or_default().sessions += 1,
            "statement" => {
                let c = by.entry(s("subject")).or_default();
                let under_review = !r["approval"].is_null();
                match (r["decision"].as_str().unwrap_or_default(), under_review) {
                    ("allow", true) => c.approved += 1,
                    ("require_approval", true) => c.held_refused += 1,
                    (d, false) => {
                        c.statements += 1;
                        c.denied += u64::from(d == "deny");
                        c.approvals_required += u64::from(d == "require_approval");
                    }
                    _ => {}
                }
            }
            "review_decided" => {
                for who in s("by").split(", ").filter(|w| !w.is_empty()) {
                    let c = by.entry(who.to_owned()).or_default();
                    match r["status"].as_str() {
                        Some("approved") => c.reviews_approved += 1,
                        Some("denied") => c.reviews_denied += 1,
                        _ => {}
                    }
                }
            }
            "login_failed" => {
                let who = r["subject"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("(failed login as {})", s("user")));
                by.entry(who).or_default().failed_logins += 1;
            }
            _ => {}
        }
    }
    by
}

fn check_report(dd: &str, records: &[Value], reviews: &[String]) {
    let (ok, out, err) = phigate(&["audit", "report", "--data-dir", dd, "--json"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).expect("report");
    let mut reported = BTreeMap::new();
    for id in report["identities"].as_array().expect("identities") {
        let n = |k: &str| id[k].as_u64().unwrap_or_else(|| panic!("{k}"));
        reported.insert(
            id["subject"].as_str().expect("subject").to_owned(),
            Counts {
                sessions: n("sessions"),
                statements: n("statements"),
                denied: n("denied"),
                approvals_required: n("approvals_required"),
                approved: n("approved"),
                held_refused: n("held_refused"),
                reviews_approved: n("reviews_approved"),
                reviews_denied: n("reviews_denied"),
                failed_logins: n("failed_logins"),
            },
        );
    }
    assert_eq!(reported, count_records(records));
    // And against what the test did.
    let agent = &reported["agent@test.phigate"];
    assert_eq!(
        (agent.statements, agent.denied, agent.approvals_required),
        (5, 1, 3)
    );
    assert_eq!((agent.approved, agent.held_refused), (2, 1));
    assert_eq!(agent.failed_logins, 1, "the credential named the agent");
    let reviewer = &reported["reviewer@test.phigate"];
    assert_eq!((reviewer.reviews_approved, reviewer.reviews_denied), (2, 1));
    let approvals = report["approvals"].as_array().expect("approvals");
    assert_eq!(approvals.len(), 2);
    for (a, id) in approvals.iter().zip(reviews) {
        assert_eq!(&a["review"], id);
        assert_eq!(a["by"], "reviewer@test.phigate");
        assert_eq!(a["requester"], "agent@test.phigate");
        assert_eq!(a["rule"], "writes-need-approval");
        assert!(a["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("checked"));
        assert!(a["statement"]
            .as_str()
            .unwrap_or_default()
            .starts_with("INSERT INTO notes"));
    }
    let failed = report["failed_logins"].as_array().expect("failed logins");
    assert_eq!(failed.len(), 2);

    let (ok, text, err) = phigate(&["audit", "report", "--data-dir", dd]);
    assert!(ok, "{err}");
    assert!(
        !text.contains('\u{1b}'),
        "an escape sequence reached the terminal"
    );
    let refused: Vec<&str> = text.lines().filter(|l| l.contains("refused #")).collect();
    assert_eq!(refused.len(), 1, "only the DELETE was refused: {text}");
    assert!(refused[0].contains("DELETE"), "{text}");
    assert_eq!(text.matches("held, not run").count(), 1, "{text}");
    assert!(text.contains("Approvals (2)"), "{text}");
    assert!(text.contains("as reviewer: approved 2, denied 1"), "{text}");
    assert!(
        text.contains("agent@test.phigate from 127.0.0.1"),
        "the failed login names the subject: {text}"
    );
    assert!(
        !text.contains("1 statements") && !text.contains(" ;"),
        "{text}"
    );
}

/// A config of this test's database, without an HTTP listener unless `extra` adds one.
fn config_file(dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    let c = cluster();
    let text = format!(
        "data_dir = \"{data}\"\n\n[listen]\naddress = \"127.0.0.1:0\"\n{extra}\n\n\
         [upstream]\nhost = \"{host}\"\nport = {port}\ndatabase = \"clinic\"\nuser = \"{user}\"\npassword = \"{pw}\"\n",
        data = dir.join("data").display(),
        host = c.host(),
        port = c.port(),
        user = phigate_testkit::APP_USER,
        pw = phigate_testkit::APP_PASSWORD,
    );
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn check(path: &Path, connect: bool) -> (bool, String, String) {
    let mut args = vec!["check", "--config", path.to_str().expect("utf-8")];
    if connect {
        args.push("--connect");
    }
    phigate(&args)
}

/// An OpenID provider's discovery document, served on loopback for as long as the test runs.
fn discovery_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("addr"));
    let doc =
        serde_json::json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") }).to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let mut stream = stream;
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                doc.len()
            );
        }
    });
    issuer
}

#[test]
fn check_points_at_the_line_and_lists_valid_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let roles = "\n[[role]]\nname = \"ai-agent\"\n[[role.grant]]\nschema = \"public\"\nactions = [\"select\"]\n\n[[role]]\nname = \"reviewer\"\n";
    // An unknown role in a rule: line 21 is `roles = ["ai-agnet"]`, the value at column 10.
    let path = config_file(
        dir.path(),
        "role.toml",
        &format!("{roles}\n[[rule]]\nname = \"r\"\nroles = [\"ai-agnet\"]\naction = \"deny\"\n"),
    );
    let text = std::fs::read_to_string(&path).expect("read");
    let line = text
        .lines()
        .position(|l| l.contains("ai-agnet"))
        .expect("line")
        + 1;
    let (ok, _, err) = check(&path, false);
    assert!(!ok);
    assert!(
        err.contains(&format!("line {line}, column 10: rule r: unknown role ai-agnet (defined roles: ai-agent, reviewer)")),
        "{err}"
    );
    // An unknown statement kind: the valid ones are listed.
    let path = config_file(
        dir.path(),
        "kind.toml",
        &format!("{roles}\n[[rule]]\nname = \"r\"\nkinds = [\"wirte\"]\naction = \"deny\"\n"),
    );
    let (ok, _, err) = check(&path, false);
    assert!(
        !ok && err.contains("unknown statement kind wirte (valid kinds: select, insert"),
        "{err}"
    );
    assert!(err.contains(", column 10: "), "{err}");
    // Any other check names its place too.
    let path = config_file(
        dir.path(),
        "identity.toml",
        &format!("{roles}\n[[identity]]\nsubject = \"a@b\"\ntoken_sha256 = \"abc\"\nroles = [\"ai-agent\"]\n"),
    );
    let (ok, _, err) = check(&path, false);
    let text = std::fs::read_to_string(&path).expect("read");
    let line = text.lines().position(|l| l.contains("a@b")).expect("line") + 1;
    assert!(
        !ok && err.contains(&format!(
            "line {line}, column 1: identity a@b: token_sha256 must be 64 hex digits"
        )),
        "{err}"
    );
    // Approvals on, a rule that holds, no HTTP listener: every hold would time out.
    let holds = format!(
        "{roles}\n[[rule]]\nname = \"hold\"\nkinds = [\"write\"]\naction = \"require_approval\"\n"
    );
    let path = config_file(dir.path(), "approvals.toml", &holds);
    let (ok, _, err) = check(&path, false);
    assert!(
        !ok && err.contains("listen.http_address is not set"),
        "{err}"
    );
    // The gateway refuses to start with it too.
    let (ok, _, err) = phigate(&["serve", "--config", path.to_str().expect("utf-8")]);
    assert!(
        !ok && err.contains("listen.http_address is not set"),
        "{err}"
    );
    let path = config_file(
        dir.path(),
        "approvals-off.toml",
        &format!("{holds}\n[approvals]\nenabled = false\n"),
    );
    let (ok, out, err) = check(&path, false);
    assert!(ok, "{out}{err}");

    // Warnings: a rule after a broader one; a login client whose tokens would be refused.
    let path = config_file(
        dir.path(),
        "warn.toml",
        &format!(
            "{roles}\n[[rule]]\nname = \"no-writes\"\nkinds = [\"write\"]\naction = \"deny\"\n\n\
             [[rule]]\nname = \"agent-updates\"\nroles = [\"ai-agent\"]\nkinds = [\"update\"]\naction = \"require_approval\"\n\n\
             [approvals]\nenabled = false\n\n\
             [[auth.oidc]]\nname = \"corp\"\nissuer = \"https://idp.example\"\naudience = [\"phigate\"]\nclient_id = \"phigate-cli\"\n"
        ),
    );
    let (ok, out, err) = check(&path, false);
    assert!(ok, "{err}");
    assert!(
        out.contains("rule agent-updates never applies: rule no-writes, before it"),
        "{out}"
    );
    assert!(
        out.contains("client_id phigate-cli is not in audience"),
        "{out}"
    );
    assert_eq!(out.matches("warning: ").count(), 2, "{out}");
    assert!(out.contains("ok (2 warnings)"), "{out}");
    assert!(
        out.lines()
            .filter(|l| l.starts_with("warning"))
            .all(|l| l.contains(", column ")),
        "{out}"
    );
}

#[test]
fn check_connect_reaches_the_database_certificates_and_issuers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = discovery_server();
    let good = format!(
        "\n[[role]]\nname = \"clinician\"\n[[role.grant]]\nschema = \"public\"\ntables = [\"patients\", \"notes\"]\nactions = [\"select\"]\n\n\
         [[phi]]\ntable = \"public.patients\"\ncolumns = {{ name = \"name\", ssn = \"ssn\" }}\n\n\
         [[auth.oidc]]\nname = \"corp\"\nissuer = \"{issuer}\"\naudience = [\"phigate\"]\n"
    );
    let path = config_file(dir.path(), "good.toml", &good);
    let (ok, out, err) = check(&path, true);
    assert!(ok, "{out}{err}");

    let closed = phigate_testkit::free_port().expect("port");
    let bad = good
        .replace("\"patients\", \"notes\"", "\"patients\", \"appointments\"")
        .replace("ssn = \"ssn\"", "social = \"ssn\"")
        .replace(&issuer, &format!("http://127.0.0.1:{closed}"))
        + &format!(
            "\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("missing.pem").display(),
            dir.path().join("missing.key").display()
        );
    let path = config_file(dir.path(), "bad.toml", &bad);
    let (ok, out, err) = check(&path, true);
    assert!(!ok, "{out}");
    for want in [
        "role clinician: grant on public.appointments: no such table or view",
        "[[phi]] public.patients: no column social",
        "auth.oidc corp: ",
        "[tls]: ",
    ] {
        assert!(out.contains(want), "{want}: {out} {err}");
    }
    assert!(err.contains("4 problems found by --connect"), "{err}");
    assert!(
        !out.contains("patients: no such") && !out.contains("no column name"),
        "{out}"
    );
}
