//! Just-in-time approval with real clients: a held statement waits on the wire until a reviewer
//! decides through the HTTP API (the CLI's path); approved, it runs exactly once; denied, timed
//! out or withdrawn (cancel, disconnect), it never runs. Separation of duties; the extended
//! protocol; transaction blocks; pipelined messages behind a held one; a gateway restart while
//! a review is pending.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use phigate_testkit::{sha256_hex, Cluster, Gateway, GatewayOptions};
use serde_json::Value;
use tokio_postgres::NoTls;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn cluster() -> &'static Cluster {
    phigate_testkit::clinic(
        "CREATE TABLE notes (id serial PRIMARY KEY, body text);\n\
         CREATE TABLE departments (id int PRIMARY KEY, name text);",
    )
}

const POLICY: &str = r#"
[[role]]
name = "ai-agent"
[[role.grant]]
schema = "public"
actions = ["select", "write"]

[[role]]
name = "reviewer"

[[rule]]
name = "writes-need-approval"
roles = ["ai-agent"]
kinds = ["write"]
action = "require_approval"
hint = "A reviewer approves agent writes."
"#;

/// A person who may both write as the agent and review: separation of duties applies.
const BOTH_TOKEN: &str = "tok-both-roles-for-separation-of-duties";

fn gateway() -> Gateway {
    gateway_with("")
}

fn gateway_with(approvals_extra: &str) -> Gateway {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = POLICY.into();
    opts.extra = format!(
        "[approvals]\ntimeout_secs = 3\n{approvals_extra}\n\n[[identity]]\nsubject = \"both@test.phigate\"\ntoken_sha256 = \"{}\"\nroles = [\"ai-agent\", \"reviewer\"]\n",
        sha256_hex(BOTH_TOKEN)
    );
    Gateway::start_with_identities(bin(), opts, &["agent", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

async fn connect(info: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(info, NoTls).await.expect("connect");
    tokio::spawn(conn);
    c
}

fn http(gw: &Gateway) -> String {
    format!("http://127.0.0.1:{}", gw.http_port)
}

/// The pending reviews, waiting until `n` are there.
async fn pending(gw: &Gateway, token: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/v1/reviews", http(gw)))
            .bearer_auth(token)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let list = v["reviews"].as_array().cloned().unwrap_or_default();
        if list.len() >= n {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no pending review appeared");
}

/// The id of the first pending review, waiting until there is one.
async fn first_pending(gw: &Gateway, token: &str) -> String {
    pending(gw, token, 1).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

async fn decide(gw: &Gateway, token: &str, id: &str, verb: &str, reason: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/reviews/{id}/{verb}", http(gw)))
        .bearer_auth(token)
        .json(&serde_json::json!({ "reason": reason }))
        .send()
        .await
        .expect("decide");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

fn count(marker: &str) -> String {
    cluster()
        .psql(
            "clinic",
            &format!("SELECT count(*) FROM notes WHERE body = '{marker}'"),
        )
        .expect("count")
        .trim()
        .to_owned()
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| format!("{} {}", d.code().code(), d.message()))
        .unwrap_or_else(|| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_statements_wait_for_a_reviewer() {
    let gw = gateway();
    let reviewer = gw.token("reviewer").to_owned();
    let agent = connect(&gw.conninfo("agent")).await;

    // Extended protocol, approved through the CLI: it runs exactly once.
    let insert = {
        let agent = &agent;
        async move {
            agent
                .execute(
                    "INSERT INTO notes (body) VALUES ($1) /* phigate: reason=log the run */",
                    &[&"approved-once"],
                )
                .await
        }
    };
    let approve = async {
        let list = pending(&gw, &reviewer, 1).await;
        assert_eq!(list[0]["requester"], "agent@test.phigate");
        assert_eq!(list[0]["justification"], "log the run");
        assert!(list[0]["statement"]
            .as_str()
            .unwrap_or_default()
            .contains("INSERT INTO notes"));
        let id = list[0]["id"].as_str().expect("id").to_owned();
        let out = phigate_testkit::run(
            Command::new(bin())
                .args(["review", "approve", &id, "--reason", "fine"])
                .env("PHIGATE_URL", http(&gw))
                .env("PHIGATE_TOKEN", &reviewer),
        )
        .expect("phigate review approve");
        assert!(out.0 && out.1.contains("approved"), "{out:?}");
        id
    };
    let (inserted, id) = tokio::join!(insert, approve);
    assert_eq!(inserted.expect("the approved INSERT"), 1);
    assert_eq!(count("approved-once"), "1");
    // A decided review cannot be decided again.
    let (code, _) = decide(&gw, &reviewer, &id, "approve", "again").await;
    assert_eq!(code, 409);

    // An approval covers one execution of a prepared statement.
    let prepare = agent.prepare("INSERT INTO notes (body) VALUES ($1)");
    let approve = async {
        let id = first_pending(&gw, &reviewer).await;
        decide(&gw, &reviewer, &id, "approve", "one row").await.0
    };
    let (stmt, code) = tokio::join!(prepare, approve);
    assert_eq!(code, 200);
    let stmt = stmt.expect("prepared once approved");
    assert_eq!(
        agent.execute(&stmt, &[&"one-shot"]).await.expect("first"),
        1
    );
    let err = agent
        .execute(&stmt, &[&"one-shot"])
        .await
        .expect_err("a second execution needs a new review");
    assert!(
        db_message(&err).contains("covered one execution"),
        "{err:?}"
    );
    assert_eq!(count("one-shot"), "1");
    // PREPARE of a statement that needs approval is refused (one approval, many EXECUTEs).
    let err = agent
        .simple_query("PREPARE p(text) AS INSERT INTO notes (body) VALUES ($1)")
        .await
        .expect_err("refused");
    assert!(db_message(&err).contains("cannot be prepared"), "{err:?}");

    // Denied: the client gets the reviewer's reason; nothing runs.
    let denied = async {
        agent
            .simple_query("INSERT INTO notes (body) VALUES ('denied')")
            .await
    };
    let deny = async {
        let list = pending(&gw, &reviewer, 1).await;
        let id = list[0]["id"].as_str().expect("id").to_owned();
        assert_eq!(
            decide(&gw, &reviewer, &id, "deny", "not today").await.0,
            200
        );
    };
    let (denied, ()) = tokio::join!(denied, deny);
    let msg = db_message(&denied.expect_err("denied"));
    assert!(
        msg.contains("denied by reviewer@test.phigate: not today"),
        "{msg}"
    );
    assert_eq!(count("denied"), "0");

    // Timed out (3 s here): refused, nothing runs; the session goes on.
    let err = agent
        .simple_query("INSERT INTO notes (body) VALUES ('timeout')")
        .await
        .expect_err("timeout");
    let msg = db_message(&err);
    assert!(
        msg.starts_with("57014") && msg.contains("not decided within 3 s"),
        "{msg}"
    );
    assert_eq!(count("timeout"), "0");
    agent
        .simple_query("SELECT 1")
        .await
        .expect("the session goes on");

    // Inside a transaction block, with a pipelined SELECT behind the held INSERT (simple
    // protocol: the Query messages reach the gateway in order; the SELECT waits behind).
    agent.batch_execute("BEGIN").await.expect("begin");
    let held = agent.simple_query("INSERT INTO notes (body) VALUES ('in-tx')");
    let behind = agent.simple_query("SELECT count(*) FROM notes WHERE body = 'in-tx'");
    let approve = async {
        let id = first_pending(&gw, &reviewer).await;
        decide(&gw, &reviewer, &id, "approve", "ok").await.0
    };
    let (held, behind, code) = tokio::join!(held, behind, approve);
    assert_eq!(code, 200);
    held.expect("held insert");
    let seen = behind
        .expect("pipelined select")
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
    assert_eq!(
        seen.as_deref(),
        Some("1"),
        "the SELECT ran after the INSERT"
    );
    agent.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(count("in-tx"), "1");

    // Separation of duties: a person holding both roles cannot approve their own statement.
    let both = connect(&format!(
        "host=127.0.0.1 port={} dbname=clinic user=ai-agent password={BOTH_TOKEN} sslmode=disable",
        gw.pg_port
    ))
    .await;
    let own = async {
        both.simple_query("INSERT INTO notes (body) VALUES ('own')")
            .await
    };
    let try_self = async {
        let list = pending(&gw, BOTH_TOKEN, 1).await;
        let id = list[0]["id"].as_str().expect("id").to_owned();
        let (code, body) = decide(&gw, BOTH_TOKEN, &id, "approve", "mine").await;
        assert_eq!(code, 403, "{body}");
        assert!(body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("separation of duties"));
        // The agent itself is no reviewer: it hears what an unknown id gets.
        let (code, body) = decide(&gw, gw.token("agent"), &id, "approve", "me").await;
        assert_eq!(code, 404, "{body}");
        assert_eq!(body["error"], "no such review for you");
        assert_eq!(
            decide(&gw, &reviewer, &id, "deny", "ask someone else")
                .await
                .0,
            200
        );
    };
    let (own, ()) = tokio::join!(own, try_self);
    assert!(db_message(&own.expect_err("denied")).contains("ask someone else"));

    // A cancel withdraws the review.
    let cancel = agent.cancel_token();
    let held = agent.simple_query("INSERT INTO notes (body) VALUES ('withdrawn')");
    let withdraw = async {
        let id = first_pending(&gw, &reviewer).await;
        cancel.cancel_query(NoTls).await.expect("cancel");
        id
    };
    let (held, id) = tokio::join!(held, withdraw);
    let msg = db_message(&held.expect_err("withdrawn"));
    assert!(msg.contains("withdrawn"), "{msg}");
    assert_eq!(decide(&gw, &reviewer, &id, "approve", "late").await.0, 409);
    assert_eq!(count("withdrawn"), "0");

    // Every step is in the audit log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dd = gw.data_dir();
    let (ok, out, err) = phigate_testkit::run(Command::new(bin()).args([
        "audit",
        "search",
        "--data-dir",
        dd.to_str().expect("utf-8"),
        "--type",
        "review_decided",
    ]))
    .expect("audit search");
    assert!(ok, "{err}");
    let statuses: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    for s in ["approved", "denied", "expired", "withdrawn"] {
        assert!(statuses.iter().any(|x| x == s), "no {s} in {statuses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_pending_fails_the_client_and_expires_the_review() {
    let mut gw = gateway();
    let reviewer = gw.token("reviewer").to_owned();
    let agent = connect(&gw.conninfo("agent")).await;
    let held = agent.simple_query("INSERT INTO notes (body) VALUES ('restart')");
    let stop = async {
        let id = first_pending(&gw, &reviewer).await;
        gw.terminate().expect("SIGTERM");
        id
    };
    let (held, id) = tokio::join!(held, stop);
    assert!(
        held.is_err(),
        "the held statement must fail when the gateway stops"
    );
    gw.wait_exit(Duration::from_secs(20)).expect("stopped");
    assert_eq!(count("restart"), "0");

    // The same config and data directory, started again: the review is recorded expired.
    let log = std::fs::File::create(gw.dir().join("second.log")).expect("log");
    let mut second = Command::new(bin())
        .args(["serve", "--config"])
        .arg(gw.config_path())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("second gateway");
    let history = gw.data_dir().join("reviews.jsonl");
    let mut expired = false;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&history).unwrap_or_default();
        if text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["id"] == id.as_str() && v["status"] == "expired")
        {
            expired = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = second.kill();
    let _ = second.wait();
    assert!(expired, "review {id} not marked expired after the restart");
    let text = std::fs::read_to_string(&history).unwrap_or_default();
    assert!(
        !text.contains("'restart'"),
        "the history keeps redacted text only"
    );
}

/// A webhook receiver that refuses the first delivery (to see the retry) and keeps the rest.
fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut first = true;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            // Read the headers, then the body by content-length.
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
            let status = if first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            if !first {
                if let Some(v) = body.and_then(|b| serde_json::from_str::<Value>(&b).ok()) {
                    if let Ok(mut g) = sink.lock() {
                        g.push(v);
                    }
                }
            }
            first = false;
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_are_announced_by_webhook_with_retries() {
    let (url, got) = webhook_receiver();
    let gw = gateway_with(&format!("webhook_url = \"{url}\"\n"));
    let reviewer = gw.token("reviewer").to_owned();
    let agent = connect(&gw.conninfo("agent")).await;
    let held = agent.simple_query("INSERT INTO notes (body) VALUES ('hooked-secret-value')");
    let approve = async {
        let id = first_pending(&gw, &reviewer).await;
        // The first delivery is refused; the retry arrives.
        let mut requested = None;
        for _ in 0..60 {
            requested = got
                .lock()
                .ok()
                .and_then(|g| g.iter().find(|v| v["event"] == "review.requested").cloned());
            if requested.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let requested = requested.expect("review.requested delivered after a retry");
        assert_eq!(requested["review"]["id"], id.as_str());
        let statement = requested["review"]["statement"]
            .as_str()
            .unwrap_or_default();
        assert!(
            statement.contains("INSERT INTO notes") && !statement.contains("hooked-secret-value"),
            "{statement}"
        );
        decide(&gw, &reviewer, &id, "approve", "fine").await.0
    };
    let (held, code) = tokio::join!(held, approve);
    assert_eq!(code, 200);
    held.expect("approved");
    let mut decided = false;
    for _ in 0..50 {
        decided = got
            .lock()
            .map(|g| {
                g.iter().any(|v| {
                    v["event"] == "review.decided"
                        && v["review"]["status"] == "approved"
                        && v["review"]["decided_by"] == "reviewer@test.phigate"
                })
            })
            .unwrap_or(false);
        if decided {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(decided, "review.decided not delivered");
    // Each delivery is in the audit log: the first after a retry.
    let mut notified = Vec::new();
    for _ in 0..50 {
        notified = gw.audit_records("review_notified");
        if notified.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        notified
            .iter()
            .any(|r| r["status"] == "pending" && r["delivered"] == true && r["attempts"] == 2),
        "{notified:?}"
    );
    assert!(
        notified
            .iter()
            .any(|r| r["status"] == "approved" && r["delivered"] == true),
        "{notified:?}"
    );
}

const RULES_POLICY: &str = r#"
[[role]]
name = "ai-agent"
[[role.grant]]
schema = "public"
actions = ["select", "write"]

[[role]]
name = "clinician"
[[role.grant]]
schema = "public"
actions = ["select", "write"]

[[role]]
name = "reviewer"

[[rule]]
name = "departments-need-two"
roles = ["ai-agent"]
kinds = ["write"]
relations = ["departments"]
action = "require_approval"
approval = { approvals = 2, timeout_secs = 30 }

[[rule]]
name = "notes-by-fingerprint"
roles = ["ai-agent"]
kinds = ["write"]
relations = ["notes"]
action = "require_approval"
approval = { scope = "fingerprint", scope_minutes = 5 }

[[rule]]
name = "clinician-writes"
roles = ["clinician"]
kinds = ["write"]
action = "require_approval"

[[phi]]
table = "public.notes"
columns = { body = "free_text" }
"#;

const SECOND_REVIEWER: &str = "tok-second-reviewer-for-two-approvals";

async fn approve_break_glass(gw: &Gateway, token: &str, id: &str, reason: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/reviews/{id}/approve", http(gw)))
        .bearer_auth(token)
        .json(&serde_json::json!({ "reason": reason, "break_glass": true }))
        .send()
        .await
        .expect("approve");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

fn departments(id: i32) -> String {
    cluster()
        .psql(
            "clinic",
            &format!("SELECT count(*) FROM departments WHERE id = {id}"),
        )
        .expect("count")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvals_fingerprint_scope_and_break_glass() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = RULES_POLICY.into();
    opts.extra = format!(
        "[approvals]\nbreak_glass_roles = [\"clinician\"]\n\n[[identity]]\nsubject = \"second.reviewer@test.phigate\"\ntoken_sha256 = \"{}\"\nroles = [\"reviewer\"]\n",
        sha256_hex(SECOND_REVIEWER)
    );
    let gw = Gateway::start_with_identities(bin(), opts, &["agent", "clinician", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let reviewer = gw.token("reviewer").to_owned();
    let agent = connect(&gw.conninfo("agent")).await;

    // Two distinct reviewers: one approval leaves the statement waiting.
    let held = agent.simple_query("INSERT INTO departments VALUES (901, 'two approvals')");
    let review = async {
        let id = first_pending(&gw, &reviewer).await;
        let (code, body) = decide(&gw, &reviewer, &id, "approve", "looks right").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "pending");
        assert_eq!(body["approvals_required"], 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(departments(901), "0", "one approval of two ran it");
        let (code, body) = decide(&gw, &reviewer, &id, "approve", "again").await;
        assert_eq!(code, 409, "{body}");
        let (code, body) = decide(&gw, SECOND_REVIEWER, &id, "approve", "agreed").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "approved");
        assert_eq!(
            body["decided_by"],
            "reviewer@test.phigate, second.reviewer@test.phigate"
        );
    };
    let (held, ()) = tokio::join!(held, review);
    held.expect("approved by two");
    assert_eq!(departments(901), "1");

    // Fingerprint scope: once approved, the same statement with other literals runs at once
    // for the same individual, for the rule's minutes. The session's SET phigate.reason is
    // the justification; the review names the PHI columns of the table.
    agent
        .simple_query("SET phigate.reason = 'weekly notes import'")
        .await
        .expect("a session may give its reason");
    let first = agent.simple_query("INSERT INTO notes (body) VALUES ('fp-1')");
    let review = async {
        let list = pending(&gw, &reviewer, 1).await;
        assert_eq!(
            list[0]["justification"], "weekly notes import",
            "{}",
            list[0]
        );
        assert_eq!(
            list[0]["phi_columns"],
            serde_json::json!(["public.notes.body"])
        );
        let id = list[0]["id"].as_str().expect("id").to_owned();
        assert_eq!(
            decide(&gw, &reviewer, &id, "approve", "fine for 5 min")
                .await
                .0,
            200
        );
    };
    let (first, ()) = tokio::join!(first, review);
    first.expect("approved");
    tokio::time::timeout(
        Duration::from_secs(5),
        agent.simple_query("INSERT INTO notes (body) VALUES ('fp-2')"),
    )
    .await
    .expect("covered by the fingerprint approval: no wait")
    .expect("runs");
    assert_eq!(count("fp-2"), "1");
    // Another shape is not covered.
    let other = agent.simple_query("UPDATE notes SET body = 'fp-3' WHERE body = 'fp-2'");
    let review = async {
        let id = first_pending(&gw, &reviewer).await;
        decide(&gw, &reviewer, &id, "deny", "not this one").await
    };
    let (other, (code, _)) = tokio::join!(other, review);
    assert_eq!(code, 200);
    assert!(other.is_err());

    // Break-glass: the clinician approves their own statement, with a real justification.
    let clinician = connect(&gw.conninfo("clinician")).await;
    let own = clinician.simple_query("INSERT INTO notes (body) VALUES ('break-glass')");
    let glass = async {
        let id = first_pending(&gw, &reviewer).await;
        let token = gw.token("clinician").to_owned();
        let (code, body) = approve_break_glass(&gw, &token, &id, "urgent").await;
        assert_eq!(code, 400, "a short justification: {body}");
        let (code, body) =
            approve_break_glass(&gw, &reviewer, &id, "a reviewer is no requester").await;
        assert_eq!(code, 403, "{body}");
        let (code, body) = decide(&gw, &token, &id, "approve", "my own").await;
        assert_eq!(
            code, 403,
            "without break-glass the requester is no reviewer: {body}"
        );
        let (code, body) = approve_break_glass(
            &gw,
            &token,
            &id,
            "patient in cardiac arrest, dosage must be corrected now",
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["break_glass"], true);
    };
    let (own, ()) = tokio::join!(own, glass);
    own.expect("break-glass approved");
    assert_eq!(count("break-glass"), "1");

    // The audit log has each approval, the break-glass decision marked as such.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let partial = gw.audit_records("review_approval");
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert_eq!(partial[0]["count"], 1);
    assert_eq!(partial[0]["required"], 2);
    let decided = gw.audit_records("review_decided");
    assert!(
        decided.iter().any(|r| r["break_glass"] == true
            && r["by"] == "clinician@test.phigate"
            && r["status"] == "approved"),
        "{decided:?}"
    );
    assert!(decided
        .iter()
        .all(|r| r["break_glass"] != true || r["by"] == "clinician@test.phigate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_request_opens_a_role_for_a_while() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = RULES_POLICY.into();
    // An individual signed in through the gateway's issuer (development tokens here), bound to
    // ai-agent by group: elevations are for such sign-ins, never for API keys or static tokens.
    opts.top = "[auth]\ndevelopment = true\n\n[[binding]]\ngroups = [\"agents\"]\nroles = [\"ai-agent\"]\n".into();
    opts.extra =
        "[approvals]\nelevation_roles = [\"clinician\"]\nmax_elevation_minutes = 60\n".into();
    let gw = Gateway::start_with_identities(bin(), opts, &["agent", "clinician", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let mint = || {
        phigate_testkit::run(Command::new(bin()).args([
            "token",
            "mint",
            "--config",
            gw.config_path().to_str().expect("utf-8"),
            "--subject",
            "intern@test.phigate",
            "--group",
            "agents",
        ]))
        .expect("mint")
    };
    // Once, a mint right after the start read a key it could not parse: try a few times, and
    // say what the key file held if it never works.
    let mut minted = mint();
    for _ in 0..10 {
        if minted.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        minted = mint();
    }
    let (ok, minted, err) = minted;
    assert!(
        ok,
        "{err} {:?} {:?}",
        std::fs::read(gw.data_dir().join("keys/token-signing.ed25519.pk8")).map(|b| b.len()),
        std::fs::read_to_string(gw.config_path())
    );
    let agent_token = minted.trim().to_owned();
    let static_token = gw.token("agent").to_owned();
    let reviewer = gw.token("reviewer").to_owned();
    let as_clinician = format!(
        "host=127.0.0.1 port={} dbname=clinic user=clinician password={agent_token} sslmode=disable",
        gw.pg_port
    );
    let refused = tokio_postgres::connect(&as_clinician, NoTls)
        .await
        .err()
        .expect("the agent may not act as clinician yet");
    assert!(db_message(&refused).contains("28000"), "{refused}");

    let cli = |token: &str, args: &[&str]| {
        phigate_testkit::run(
            Command::new(bin())
                .arg("review")
                .args(args)
                .env("PHIGATE_URL", http(&gw))
                .env("PHIGATE_TOKEN", token),
        )
        .expect("phigate review")
    };
    let request = |token: &str, role: &str, minutes: &str, reason: &str| {
        cli(
            token,
            &[
                "request",
                "--role",
                role,
                "--minutes",
                minutes,
                "--reason",
                reason,
            ],
        )
    };
    let (ok, _, err) = request(
        &static_token,
        "clinician",
        "10",
        "a static token asks for it",
    );
    assert!(!ok && err.contains("never elevated"), "{err}");
    let (ok, _, err) = request(&agent_token, "reviewer", "10", "I want to review");
    assert!(!ok && err.contains("cannot be asked for"), "{err}");
    let (ok, _, err) = request(&agent_token, "clinician", "600", "a long shift ahead");
    assert!(!ok && err.contains("minutes is 1 to 60"), "{err}");
    let (ok, out, err) = request(&agent_token, "clinician", "30", "correct a dosage entry");
    assert!(ok, "{err}");
    assert!(
        out.contains("connect with user=clinician for 30 minutes"),
        "{out}"
    );
    let id = first_pending(&gw, &reviewer).await;
    let (code, _) = decide(&gw, &agent_token, &id, "approve", "me").await;
    assert_eq!(code, 403, "the requester is no reviewer");
    assert!(tokio_postgres::connect(&as_clinician, NoTls).await.is_err());
    let (code, body) = decide(&gw, &reviewer, &id, "approve", "for the correction").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["kind"], "elevation");

    // Approved: the agent's own token opens the clinician role (until the elevation ends).
    let clin = connect(&as_clinician).await;
    let rows = clin
        .simple_query("SELECT current_setting('phigate.role'), current_setting('phigate.subject')")
        .await
        .expect("query");
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).map(str::to_owned), r.get(1).map(str::to_owned)))
            }
            _ => None,
        })
        .expect("a row");
    assert_eq!(row.0.as_deref(), Some("clinician"));
    assert_eq!(row.1.as_deref(), Some("intern@test.phigate"));
    // The elevation is this sign-in's: another identity's static token gets nothing.
    let other = format!(
        "host=127.0.0.1 port={} dbname=clinic user=clinician password={static_token} sslmode=disable",
        gw.pg_port
    );
    assert!(tokio_postgres::connect(&other, NoTls).await.is_err());

    tokio::time::sleep(Duration::from_millis(300)).await;
    let decided = gw.audit_records("review_decided");
    assert!(
        decided
            .iter()
            .any(|r| r["review"] == id.as_str() && r["status"] == "approved"),
        "{decided:?}"
    );
}

/// Issue 23 item 6: break-glass is the requester's own, and the requester is an individual:
/// subject *and* issuer. An API key carrying the same subject text (issuer `api-key`) is
/// someone else and may not approve the static identity's statement as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item6_a_namesake_at_another_issuer_cannot_break_glass() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = RULES_POLICY.into();
    opts.extra = "[approvals]\nbreak_glass_roles = [\"clinician\"]\n".into();
    let gw = Gateway::start_with_identities(bin(), opts, &["clinician", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let reviewer = gw.token("reviewer").to_owned();
    let clinician = connect(&gw.conninfo("clinician")).await;
    let own = clinician.simple_query("INSERT INTO notes (body) VALUES ('item6')");
    let glass = async {
        let list = pending(&gw, &reviewer, 1).await;
        let id = list[0]["id"].as_str().expect("id").to_owned();
        let subject = list[0]["requester"].as_str().expect("requester").to_owned();
        assert_eq!(list[0]["issuer"], "static", "{}", list[0]);
        let dir = gw.data_dir();
        let out = std::process::Command::new(bin())
            .args([
                "keys",
                "create",
                "--name",
                "namesake",
                "--role",
                "clinician",
                "--json",
            ])
            .args(["--subject", &subject, "--data-dir"])
            .arg(&dir)
            .output()
            .expect("keys create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let created: Value = serde_json::from_slice(&out.stdout).expect("json");
        let namesake = created["key"].as_str().expect("key").to_owned();
        let (code, body) = approve_break_glass(
            &gw,
            &namesake,
            &id,
            "same subject text, another issuer: not the requester",
        )
        .await;
        // Not the requester, not a reviewer: told what an unknown id gets.
        assert_eq!(code, 404, "{body}");
        assert!(
            body.to_string().contains("no such review for you"),
            "{body}"
        );
        let (code, body) = approve_break_glass(
            &gw,
            gw.token("clinician"),
            &id,
            "patient in cardiac arrest, dosage must be corrected now",
        )
        .await;
        assert_eq!(code, 200, "{body}");
    };
    let (own, ()) = tokio::join!(own, glass);
    own.expect("break-glass approved by the requester herself");
    assert_eq!(count("item6"), "1");
}
