//! The MCP server with the official SDK clients: Python `mcp` 2.x (both protocol eras, over
//! Streamable HTTP and through `phigate mcp --stdio`) and TypeScript `@modelcontextprotocol/sdk`,
//! against the demo policy and dataset. What an agent relies on: masked rows and nothing raw
//! (the masking leak corpus through `query`), no write through `query` or `explain` however it
//! is spelled, an approved `execute` runs exactly once and only its sender can wait on it,
//! cancelling a call stops the statement in the database, no credential is a 401 that points
//! to the resource metadata, and every call is audited with `channel: mcp` and its tool.

mod mask_corpus;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mask_corpus::{clinic, Leaks, CORPUS, SIMPLE_ONLY};
use phigate_testkit::{Gateway, GatewayOptions};
use serde_json::{json, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> String {
    std::env::var("PHIGATE_PYTHON").unwrap_or_else(|_| {
        root()
            .join("target/clients-venv/bin/python")
            .display()
            .to_string()
    })
}

fn gateway() -> Gateway {
    let mut opts = GatewayOptions::for_cluster(clinic());
    opts.policy = phigate::demo::policy_toml().expect("policy TOML");
    opts.extra = "[approvals]\ntimeout_secs = 120\n".into();
    Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Python(&'static str),
    TypeScript,
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Http,
    Stdio,
}

/// Runs `calls` as `identity` through `sdk` and returns the driver's report.
fn drive(gw: &Gateway, sdk: Sdk, via: Via, identity: &str, calls: Value) -> Value {
    let http = format!("http://127.0.0.1:{}", gw.http_port);
    let mut plan = json!({"token": gw.token(identity), "calls": calls});
    match via {
        Via::Http => plan["url"] = json!(format!("{http}/mcp")),
        Via::Stdio => {
            plan["stdio"] = json!([bin(), "mcp", "--stdio"]);
            plan["env"] = json!({"PHIGATE_URL": http, "PHIGATE_TOKEN": gw.token(identity)});
        }
    }
    let mut cmd = match sdk {
        Sdk::Python(mode) => {
            plan["mode"] = json!(mode);
            let mut c = Command::new(python());
            c.arg(root().join("tests/clients/mcp/driver.py"));
            c
        }
        Sdk::TypeScript => {
            let mut c = Command::new("node");
            c.arg(root().join("tests/clients/mcp-node/driver.mjs"));
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("MCP client driver");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(plan.to_string().as_bytes())
        .expect("plan");
    let out = child.wait_with_output().expect("driver output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{sdk:?} {via:?} driver failed: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("driver output {stdout:?}: {e}; {stderr}"))
}

fn call(tool: &str, args: Value) -> Value {
    json!({"tool": tool, "args": args})
}

fn count(table: &str) -> String {
    clinic()
        .psql("clinic", &format!("SELECT count(*) FROM {table}"))
        .expect("count")
        .trim()
        .to_owned()
}

const ERAS: [Sdk; 3] = [
    Sdk::Python("legacy"),
    Sdk::Python("2026-07-28"),
    Sdk::TypeScript,
];

/// Every SDK, era and transport: the tools, masked rows, a refusal naming its rule.
#[test]
fn official_clients_get_masked_rows_and_refusals_over_http_and_stdio() {
    let gw = gateway();
    let calls = json!([
        call(
            "query",
            json!({"sql": "SELECT id, ssn, first_name FROM patients WHERE id <= $1 ORDER BY id", "params": [3]})
        ),
        call(
            "query",
            json!({"sql": "SELECT pg_read_file('/etc/passwd')"})
        ),
        call("list_tables", json!({})),
        call("describe_table", json!({"table": "patients"})),
    ]);
    let ssn = clinic()
        .psql("clinic", "SELECT ssn FROM patients WHERE id = 1")
        .expect("ssn");
    for sdk in ERAS {
        for via in [Via::Http, Via::Stdio] {
            let r = drive(&gw, sdk, via, "agent", calls.clone());
            let what = format!("{sdk:?} {via:?}");
            let expected_era = match sdk {
                Sdk::Python("2026-07-28") => "2026-07-28",
                _ => "2025-11-25",
            };
            if !matches!((sdk, via), (Sdk::TypeScript, Via::Stdio)) {
                assert_eq!(r["protocol"], expected_era, "{what}");
            }
            assert_eq!(
                r["tools"],
                json!([
                    "list_tables",
                    "describe_table",
                    "query",
                    "execute",
                    "explain",
                    "approval_wait"
                ]),
                "{what}"
            );
            let rows = &r["results"][0];
            assert_eq!(rows["is_error"], false, "{what}: {rows}");
            assert_eq!(rows["structured"]["row_count"], 3, "{what}");
            assert_eq!(rows["structured"]["truncated"], false, "{what}");
            assert_eq!(
                rows["structured"]["columns"],
                json!([{"name": "id", "type": "int4"}, {"name": "ssn", "type": "text"},
                       {"name": "first_name", "type": "text"}])
            );
            let first = &rows["structured"]["rows"][0];
            assert!(
                first[1].as_str().is_some_and(|s| s.starts_with("***-**-")),
                "{what}: {first}"
            );
            assert!(
                first[2].as_str().is_some_and(|s| s.starts_with("tok_")),
                "{what}: {first}"
            );
            assert!(!rows["text"]
                .as_str()
                .unwrap_or_default()
                .contains(ssn.trim()));
            // The rows in the text content sit inside a boundary the data cannot guess.
            let text = rows["text"].as_str().unwrap_or_default();
            let open = text.find("<untrusted-data-").expect("boundary");
            let tag = &text[open + 1..open + 1 + "untrusted-data-".len() + 16];
            assert!(text.contains(&format!("</{tag}>")), "{what}: {text}");
            let refused = &r["results"][1];
            assert_eq!(refused["is_error"], true, "{what}");
            assert!(
                refused["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("rule dangerous-function"),
                "{what}: {refused}"
            );
            let tables = r["results"][2]["structured"]["tables"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                tables
                    .iter()
                    .any(|t| t["name"] == "patients" && t["phi"] == true),
                "{what}"
            );
            let columns = r["results"][3]["structured"]["columns"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let protection = |c: &str| {
                columns
                    .iter()
                    .find(|x| x["name"] == c)
                    .map(|x| x["protection"].clone())
            };
            assert_eq!(protection("ssn"), Some(json!("masked")), "{what}");
            assert_eq!(protection("mrn"), Some(json!("tokenized")), "{what}");
            assert_eq!(protection("id"), Some(json!("none")), "{what}");
        }
    }
    // tools/list is per identity: the reviewer (no write grant, no rule that holds its
    // statements) is not offered execute, and the list is the same every time.
    for _ in 0..2 {
        let r = drive(&gw, Sdk::Python("legacy"), Via::Http, "reviewer", json!([]));
        assert_eq!(
            r["tools"],
            json!([
                "list_tables",
                "describe_table",
                "query",
                "explain",
                "approval_wait"
            ])
        );
    }
    // Every call is audited: its session starts marked with the channel and the tool, and
    // its statements carry them too.
    let starts: Vec<Value> = gw
        .audit_records("session_start")
        .into_iter()
        .filter(|r| r["channel"] == "mcp")
        .collect();
    assert_eq!(starts.len(), 6 * 4, "one session per call");
    for tool in ["query", "list_tables", "describe_table"] {
        assert!(starts.iter().any(|r| r["tool"] == tool), "{tool}");
    }
    let statements = gw.audit_records("statement");
    let denied = statements
        .iter()
        .filter(|s| {
            s["channel"] == "mcp" && s["tool"] == "query" && s["rule"] == "dangerous-function"
        })
        .count();
    assert_eq!(denied, 6);
}

/// The masking leak corpus through `query`: nothing raw comes back, in rows, text or errors.
#[test]
fn the_masking_corpus_through_query_leaks_nothing() {
    let gw = gateway();
    let mut leaks = Leaks::new();
    let calls: Vec<Value> = CORPUS
        .iter()
        .chain(SIMPLE_ONLY)
        .map(|sql| call("query", json!({"sql": sql, "max_rows": 1000})))
        .collect();
    let r = drive(&gw, Sdk::Python("legacy"), Via::Http, "agent", json!(calls));
    let results = r["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), CORPUS.len() + SIMPLE_ONLY.len());
    leaks.check("MCP query results", r.to_string().as_bytes());
    let answered = results.iter().filter(|x| x["is_error"] == false).count();
    assert!(answered > 50, "only {answered} answered");
    // Multi-statement strings are refused whole.
    for x in &results[CORPUS.len()..] {
        assert_eq!(x["is_error"], true, "{x}");
    }
    assert!(
        leaks.checked > 500_000,
        "only {} bytes checked",
        leaks.checked
    );
}

/// However a write is spelled, `query` and `explain` change nothing, even for a role that may
/// write (the clinician): the analysis refuses it, and the read-only transaction would too.
#[test]
fn no_write_through_query_or_explain() {
    let gw = gateway();
    let before = (count("departments"), count("patients"));
    let marker = std::env::temp_dir().join(format!("phigate-mcp-program-{}", std::process::id()));
    let program = format!("COPY departments TO PROGRAM 'touch {}'", marker.display());
    let attacks = [
        "COMMIT; DROP TABLE departments",
        "SELECT 1; DELETE FROM departments",
        "DELETE FROM departments",
        "EXPLAIN ANALYZE DELETE FROM departments",
        "WITH d AS (DELETE FROM departments RETURNING *) SELECT * FROM d",
        "SELECT set_config('phigate.subject', 'someone-else', false)",
        "DO $$ BEGIN DELETE FROM departments; END $$",
        program.as_str(),
        "SELECT * INTO departments_copy FROM departments",
    ];
    let mut calls: Vec<Value> = attacks
        .iter()
        .map(|sql| call("query", json!({"sql": sql})))
        .collect();
    for (sql, analyze) in [
        ("DELETE FROM departments", true),
        ("EXPLAIN ANALYZE DELETE FROM departments", false),
        (
            "WITH d AS (DELETE FROM departments RETURNING *) SELECT * FROM d",
            true,
        ),
        ("SELECT 1; DROP TABLE departments", false),
    ] {
        calls.push(call("explain", json!({"sql": sql, "analyze": analyze})));
    }
    // A NUL would end the role's or the statement's protocol string early.
    calls.push(call(
        "query",
        json!({"sql": "SELECT 1", "role": "clinician\0options"}),
    ));
    calls.push(call(
        "query",
        json!({"sql": "SELECT 1\0; DELETE FROM departments"}),
    ));
    // explain takes what query would: a plain EXPLAIN of a write is refused too.
    calls.push(call("explain", json!({"sql": "DELETE FROM departments"})));
    calls.push(call(
        "explain",
        json!({"sql": "SELECT name FROM departments"}),
    ));
    let r = drive(
        &gw,
        Sdk::Python("2026-07-28"),
        Via::Http,
        "clinician",
        json!(calls),
    );
    let results = r["results"].as_array().cloned().unwrap_or_default();
    let (refused, plan) = results.split_at(results.len() - 1);
    for (x, c) in refused.iter().zip(&calls) {
        assert_eq!(x["is_error"], true, "{c}: {x}");
    }
    for x in &refused[refused.len() - 3..refused.len() - 1] {
        assert!(
            x["text"].as_str().unwrap_or_default().contains("NUL"),
            "{x}"
        );
    }
    let write = &refused[2]["text"];
    assert!(
        write.as_str().unwrap_or_default().contains("execute"),
        "{write}"
    );
    assert_eq!(plan[0]["is_error"], false, "{}", plan[0]);
    assert!(plan[0]["structured"]["plan"]
        .as_str()
        .unwrap_or_default()
        .contains("on departments"));
    assert_eq!((count("departments"), count("patients")), before);
    assert!(!marker.exists(), "COPY ... PROGRAM ran");
    let copy = clinic()
        .psql(
            "clinic",
            "SELECT count(*) FROM pg_class WHERE relname = 'departments_copy'",
        )
        .expect("catalog");
    assert_eq!(copy.trim(), "0");
    // Each refusal of the tool layer is audited, tied to the caller: a statement record
    // denied by an mcp- rule, with its tool.
    let subject = gw
        .audit_records("session_start")
        .into_iter()
        .find(|r| r["role"] == "clinician")
        .map(|r| r["subject"].clone())
        .expect("a clinician session");
    let denied: Vec<Value> = gw
        .audit_records("statement")
        .into_iter()
        .filter(|r| r["rule"].as_str().is_some_and(|x| x.starts_with("mcp-")))
        .collect();
    for r in &denied {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["channel"], "mcp", "{r}");
        assert_eq!(r["subject"], subject, "{r}");
        assert_eq!(r["role"], "clinician", "{r}");
    }
    let by = |tool: &str, rule: &str| {
        denied
            .iter()
            .filter(|r| r["tool"] == tool && r["rule"] == rule)
            .count()
    };
    // Every query attack but the set_config (a SELECT, refused by the session's policy).
    assert_eq!(
        by("query", "mcp-read-only"),
        attacks.len() - 1,
        "{denied:?}"
    );
    assert_eq!(by("explain", "mcp-read-only"), 5, "{denied:?}");
    assert_eq!(by("query", "mcp-nul"), 2, "{denied:?}");
    assert!(
        denied
            .iter()
            .any(|r| r["tool"] == "query" && r["kinds"] == json!(["delete"])),
        "{denied:?}"
    );
}

/// `execute` of a held statement returns at once; only its sender can wait on it; approved,
/// it runs exactly once.
#[test]
fn approved_execute_runs_exactly_once() {
    let gw = gateway();
    let sql = "UPDATE encounters SET diagnosis_code = diagnosis_code || 'M' WHERE id = 11";
    let read = || {
        clinic()
            .psql(
                "clinic",
                "SELECT diagnosis_code FROM encounters WHERE id = 11",
            )
            .expect("read")
            .trim()
            .to_owned()
    };
    let before = read();
    let r = drive(
        &gw,
        Sdk::Python("legacy"),
        Via::Http,
        "agent",
        json!([call(
            "execute",
            json!({"sql": sql, "justification": "fix a code */ DROP"})
        )]),
    );
    let held = &r["results"][0]["structured"];
    assert_eq!(held["status"], "pending_approval", "{r}");
    let review = held["review_id"].as_str().expect("review id").to_owned();
    assert!(held["expires_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(read(), before, "ran before approval");
    // Someone else's review is not found; its sender's is pending.
    let other = drive(
        &gw,
        Sdk::Python("legacy"),
        Via::Http,
        "clinician",
        json!([call(
            "approval_wait",
            json!({"review_id": review, "timeout_s": 1})
        )]),
    );
    assert_eq!(other["results"][0]["is_error"], true);
    assert!(other["results"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .contains("not found"));
    let waiting = drive(
        &gw,
        Sdk::TypeScript,
        Via::Http,
        "agent",
        json!([call(
            "approval_wait",
            json!({"review_id": review, "timeout_s": 1})
        )]),
    );
    assert_eq!(
        waiting["results"][0]["structured"],
        json!({"status": "pending", "timed_out": true})
    );
    let approved = gw
        .approve_next(gw.token("reviewer"), "checked")
        .expect("approve");
    assert_eq!(approved, review);
    let done = drive(
        &gw,
        Sdk::Python("2026-07-28"),
        Via::Stdio,
        "agent",
        json!([
            call(
                "approval_wait",
                json!({"review_id": review, "timeout_s": 60})
            ),
            call(
                "approval_wait",
                json!({"review_id": review, "timeout_s": 1})
            ),
        ]),
    );
    for x in done["results"].as_array().into_iter().flatten() {
        assert_eq!(
            x["structured"],
            json!({"status": "executed", "rows_affected": 1, "timed_out": false})
        );
    }
    assert_eq!(read(), format!("{before}M"), "ran exactly once");
    // The justification reached the review (a comment that cannot end early).
    let requested = gw.audit_records("review_requested");
    let j = requested
        .iter()
        .find(|r| r["review"] == review.as_str())
        .map(|r| r["justification"].clone());
    assert_eq!(j, Some(json!("fix a code  DROP")));
    let execs: Vec<Value> = gw
        .audit_records("statement")
        .into_iter()
        .filter(|s| s["tool"] == "execute" && s["channel"] == "mcp")
        .collect();
    assert!(
        execs.iter().any(|s| s["approval"] == review.as_str()),
        "{execs:?}"
    );
}

/// Whether a `pg_sleep(n)` of that length runs in the database.
fn sleeping(n: u32) -> bool {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND query LIKE '%pg_sleep({n})%' AND pid <> pg_backend_pid()"
    );
    clinic().psql("clinic", &sql).expect("activity").trim() != "0"
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Cancelling a call (the SDK's own cancellation) stops its statement in the database.
#[test]
fn cancelling_a_call_stops_the_backend_query() {
    let gw = gateway();
    let cases = [
        (Sdk::Python("legacy"), Via::Http, 401),
        (Sdk::Python("2026-07-28"), Via::Http, 402),
        (Sdk::TypeScript, Via::Http, 403),
        (Sdk::TypeScript, Via::Stdio, 404),
    ];
    for (sdk, via, n) in cases {
        cancel_one(&gw, sdk, via, "query", n);
    }
    // A dropped execute: its statement stops, and its internal session ends.
    cancel_one(&gw, Sdk::Python("legacy"), Via::Http, "execute", 405);
    let starts = gw.audit_records("session_start");
    let executes: Vec<&Value> = starts.iter().filter(|r| r["tool"] == "execute").collect();
    assert_eq!(executes.len(), 1, "{starts:?}");
    wait_until("the execute's session never ended", || {
        gw.audit_records("session_end")
            .iter()
            .any(|e| e["session"] == executes[0]["session"])
    });
}

fn cancel_one(gw: &Gateway, sdk: Sdk, via: Via, tool: &str, n: u32) {
    let watcher = std::thread::spawn(move || {
        wait_until("the statement never ran", || sleeping(n));
    });
    let r = drive(
        gw,
        sdk,
        via,
        "agent",
        json!([{"tool": tool, "args": {"sql": format!("SELECT pg_sleep({n})")},
                "cancel_after": 3, "then_sleep": 0.5}]),
    );
    watcher.join().expect("the statement ran before the cancel");
    assert_eq!(r["results"][0]["cancelled"], true, "{sdk:?} {via:?}: {r}");
    wait_until(&format!("{sdk:?} {via:?}: still running"), || !sleeping(n));
}

/// No credential: 401 pointing to the protected-resource metadata; a bad one: 401; a foreign
/// browser Origin: 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_401_and_a_foreign_origin_403() {
    let gw = gateway();
    let base = format!("http://127.0.0.1:{}", gw.http_port);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "curl", "version": "1"}}});
    let http = reqwest::Client::new();
    let post = |token: Option<&str>, origin: Option<&str>| {
        let mut r = http
            .post(format!("{base}/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&init);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let none = post(None, None).await.expect("post");
    assert_eq!(none.status(), 401);
    let challenge = none
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let meta_url = format!("{base}/.well-known/oauth-protected-resource");
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{meta_url}\"")
    );
    let meta: Value = http
        .get(&meta_url)
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["resource"], format!("{base}/mcp"));
    let bad = post(Some("tok-not-a-credential"), None)
        .await
        .expect("post");
    assert_eq!(bad.status(), 401);
    let foreign = post(Some(gw.token("agent")), Some("https://evil.example"))
        .await
        .expect("post");
    assert_eq!(foreign.status(), 403);
    let own = post(Some(gw.token("agent")), Some(&base))
        .await
        .expect("post");
    assert_eq!(own.status(), 200);
    let failed = gw.audit_records("login_failed");
    assert!(failed.iter().any(|r| r["via"] == "mcp"), "{failed:?}");
}

/// An OIDC issuer on loopback (discovery and a JWKS with one ES256 key), signing tokens for
/// the audience a test asks for.
fn oidc_issuer() -> (String, jsonwebtoken::EncodingKey) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use std::io::Read;
    let pair = rcgen::KeyPair::generate().expect("P-256 key");
    let raw = pair.public_key_raw();
    let (x, y) = (&raw[1..33], &raw[33..65]);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
        "kid": "mcp-1", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}]});
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("addr"));
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let body = if path == "/jwks" {
                jwks.to_string()
            } else {
                discovery.to_string()
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (
        issuer,
        jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
    )
}

/// An OIDC token is accepted only for phigate's audience; the protected-resource metadata
/// names its issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oidc_token_for_another_audience_is_refused() {
    let (issuer, key) = oidc_issuer();
    let mut opts = GatewayOptions::for_cluster(clinic());
    opts.policy = phigate::demo::policy_toml().expect("policy TOML");
    opts.extra = format!(
        "[[auth.oidc]]\nname = \"corp\"\nissuer = \"{issuer}\"\naudience = [\"phigate\"]\n\
         groups_claim = \"groups\"\n\n[[binding]]\ngroups = [\"agents\"]\nroles = [\"ai-agent\"]\n"
    );
    let gw = Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let sign = |aud: &str| {
        let now = phigate::auth::jwt::unix_now();
        let claims = json!({"iss": issuer, "aud": aud, "sub": "agent-7", "groups": ["agents"],
                            "iat": now, "exp": now + 600});
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("mcp-1".into());
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    };
    let base = format!("http://127.0.0.1:{}", gw.http_port);
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let post = |token: String| {
        reqwest::Client::new()
            .post(format!("{base}/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .bearer_auth(token)
            .json(&list)
            .send()
    };
    let ours = post(sign("phigate")).await.expect("post");
    assert_eq!(ours.status(), 200);
    assert!(ours.text().await.expect("body").contains("\"query\""));
    let theirs = post(sign("urn:billing")).await.expect("post");
    assert_eq!(theirs.status(), 401);
    assert!(theirs.headers().contains_key("www-authenticate"));
    let meta: Value = reqwest::get(format!("{base}/.well-known/oauth-protected-resource"))
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert!(
        meta["authorization_servers"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(issuer))),
        "{meta}"
    );
}

/// A justification cannot break out of its comment: the statement the judge saw is the one
/// that runs (`*\u{1}/` once became `*/` after the control character was removed).
#[test]
fn a_justification_cannot_change_what_runs() {
    let gw = gateway();
    let name = || {
        clinic()
            .psql("clinic", "SELECT name FROM departments WHERE id = 1")
            .expect("read")
            .trim()
            .to_owned()
    };
    let before = name();
    let breakout =
        "routine check *\u{1}/ UPDATE departments SET name = name || '-X' WHERE id = 1 --";
    let r = drive(
        &gw,
        Sdk::Python("2026-07-28"),
        Via::Http,
        "clinician",
        json!([
            call(
                "execute",
                json!({"sql": "SELECT 1", "justification": breakout})
            ),
            call(
                "execute",
                json!({"sql": "SELECT 1", "justification": "a /* nested */ x"})
            ),
        ]),
    );
    for x in r["results"].as_array().into_iter().flatten() {
        assert_eq!(x["is_error"], false, "{x}");
        assert_eq!(x["structured"]["status"], "completed", "{x}");
    }
    assert_eq!(name(), before, "the justification ran SQL");
}

/// `execute` of a COPY with the client is refused by the tool (a call has no COPY data), so
/// none waits for data the database would wait for forever (ignoring `statement_timeout`);
/// more such calls than the identity has sessions leave it able to work.
#[test]
fn copy_with_the_client_is_refused_and_holds_no_session() {
    let gw = gateway();
    let before = count("departments");
    let copies = [
        "COPY departments FROM STDIN",
        "copy departments (id, name) from stdin with (format csv)",
        "COPY departments TO STDOUT",
        "COPY (SELECT * FROM departments) TO STDOUT",
    ];
    let mut calls: Vec<Value> = (0..24)
        .map(|i| call("execute", json!({"sql": copies[i % copies.len()]})))
        .collect();
    calls.push(call("query", json!({"sql": "COPY departments TO STDOUT"})));
    calls.push(call(
        "query",
        json!({"sql": "SELECT count(*) FROM departments"}),
    ));
    let r = drive(
        &gw,
        Sdk::Python("2026-07-28"),
        Via::Http,
        "clinician",
        json!(calls),
    );
    let results = r["results"].as_array().cloned().unwrap_or_default();
    let (copied, read) = results.split_at(results.len() - 1);
    for x in copied {
        assert_eq!(x["is_error"], true, "{x}");
        assert!(
            x["text"]
                .as_str()
                .unwrap_or_default()
                .contains("not supported over MCP"),
            "{x}"
        );
    }
    assert_eq!(read[0]["is_error"], false, "{}", read[0]);
    assert_eq!(read[0]["structured"]["rows"][0][0], before);
    let waiting = clinic()
        .psql(
            "clinic",
            "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'copy%'",
        )
        .expect("activity");
    assert_eq!(waiting.trim(), "0");
}

/// A raw JSON-RPC `tools/call` over Streamable HTTP (2025-11-25, stateless) as `token`.
fn raw_call(
    http: &reqwest::Client,
    gw: &Gateway,
    token: &str,
    id: u64,
    tool: &str,
    args: Value,
) -> reqwest::RequestBuilder {
    http.post(format!("http://127.0.0.1:{}/mcp", gw.http_port))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .bearer_auth(token)
        .json(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": tool, "arguments": args}}))
}

/// The `result` of the JSON-RPC answer in an event stream's body.
async fn raw_result(r: reqwest::Response) -> Value {
    let body = r.text().await.expect("body");
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find_map(|m| m.get("result").cloned())
        .unwrap_or_else(|| panic!("no result in {body}"))
}

/// At most 8 executes of one individual are held at once, however many arrive together (the
/// place is reserved before the session opens); explain of a write opens no review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_held_cap_holds_under_parallel_calls() {
    let gw = gateway();
    let http = reqwest::Client::new();
    let token = gw.token("agent").to_owned();
    let sql = "UPDATE encounters SET diagnosis_code = diagnosis_code WHERE id = 13";
    let calls = (0..40).map(|i| {
        let (http, gw, token) = (&http, &gw, &token);
        async move {
            let r = raw_call(http, gw, token, i, "execute", json!({"sql": sql}))
                .send()
                .await
                .expect("post");
            raw_result(r).await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let held = results
        .iter()
        .filter(|r| r["structuredContent"]["status"] == "pending_approval")
        .count();
    assert_eq!(held, 8, "{results:?}");
    for r in &results {
        if r["structuredContent"]["status"] != "pending_approval" {
            assert_eq!(r["isError"], true, "{r}");
        }
    }
    let started = Instant::now();
    let explained = raw_call(
        &http,
        &gw,
        &token,
        99,
        "explain",
        json!({"sql": "INSERT INTO departments (id, name) VALUES (99, 'x')"}),
    )
    .send()
    .await
    .expect("post");
    let explained = raw_result(explained).await;
    assert_eq!(explained["isError"], true, "{explained}");
    assert!(explained.to_string().contains("only reads"), "{explained}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "explain waited"
    );
}

/// Two calls of one individual with the same request id: the end of one leaves the other
/// cancellable by `notifications/cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_call_whose_id_another_call_shared() {
    let gw = gateway();
    let http = reqwest::Client::new();
    let token = gw.token("agent").to_owned();
    let sleeper = tokio::spawn(
        raw_call(
            &http,
            &gw,
            &token,
            7,
            "query",
            json!({"sql": "SELECT pg_sleep(421)"}),
        )
        .send(),
    );
    tokio::task::spawn_blocking(|| wait_until("the statement never ran", || sleeping(421)))
        .await
        .expect("watch");
    let quick = raw_call(&http, &gw, &token, 7, "query", json!({"sql": "SELECT 1"}))
        .send()
        .await
        .expect("post");
    assert_eq!(raw_result(quick).await["isError"], false);
    let cancel = http
        .post(format!("http://127.0.0.1:{}/mcp", gw.http_port))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .bearer_auth(&token)
        .json(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                      "params": {"requestId": 7}}),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(cancel.status(), 202);
    tokio::task::spawn_blocking(|| wait_until("still running", || !sleeping(421)))
        .await
        .expect("watch");
    sleeper.abort();
}

/// An approved statement that fails when it runs is `failed`, with its error, not `executed`.
#[test]
fn an_approved_statement_that_fails_is_reported_failed() {
    let gw = gateway();
    let sql =
        "UPDATE encounters SET diagnosis_code = diagnosis_code || (1 / 0)::text WHERE id = 12";
    let r = drive(
        &gw,
        Sdk::Python("legacy"),
        Via::Http,
        "agent",
        json!([call("execute", json!({"sql": sql}))]),
    );
    let held = &r["results"][0]["structured"];
    assert_eq!(held["status"], "pending_approval", "{r}");
    let review = held["review_id"].as_str().expect("review id").to_owned();
    let approved = gw
        .approve_next(gw.token("reviewer"), "checked")
        .expect("approve");
    assert_eq!(approved, review);
    let done = drive(
        &gw,
        Sdk::Python("legacy"),
        Via::Http,
        "agent",
        json!([call(
            "approval_wait",
            json!({"review_id": review, "timeout_s": 60})
        )]),
    );
    let x = &done["results"][0]["structured"];
    assert_eq!(x["status"], "failed", "{done}");
    assert_eq!(x["timed_out"], false, "{done}");
    assert!(
        x["error"]
            .as_str()
            .is_some_and(|e| e.contains("division by zero")),
        "{done}"
    );
}

/// `phigate mcp --stdio` refuses to send the token over plain HTTP to another machine.
#[test]
fn stdio_refuses_plain_http_to_another_host() {
    for (url, ok) in [
        ("http://192.0.2.1:6544", false),
        ("http://phigate.example", false),
        ("http://127.0.0.1:9", true),
        ("https://192.0.2.1:6544", true),
    ] {
        let out = Command::new(bin())
            .args(["mcp", "--stdio"])
            .env("PHIGATE_URL", url)
            .env("PHIGATE_TOKEN", "phk_not_sent")
            .stdin(Stdio::null())
            .output()
            .expect("phigate mcp --stdio");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{url}: {stderr}");
        if !ok {
            assert!(stderr.contains("https://"), "{url}: {stderr}");
        }
    }
}

/// The stdio relay handles each request in its own task: a call waiting for a review delays
/// no other, and a cancellation reaches the call it names while that call runs.
#[test]
fn stdio_relays_calls_side_by_side() {
    use std::io::BufRead;
    let gw = gateway();
    let mut child = Command::new(bin())
        .args(["mcp", "--stdio"])
        .env("PHIGATE_URL", format!("http://127.0.0.1:{}", gw.http_port))
        .env("PHIGATE_TOKEN", gw.token("agent"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("phigate mcp --stdio");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, answers) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut send = |v: Value| {
        writeln!(stdin, "{v}").expect("write");
        stdin.flush().expect("flush");
    };
    let next = |id: u64| loop {
        let a = answers
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no answer to {id}"));
        if a["id"] == id {
            return a;
        }
        assert_ne!(a["id"], 3, "the approval_wait answered first: {a}");
    };
    let tool = |id: u64, name: &str, args: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": name, "arguments": args}})
    };
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}}),
    );
    assert!(next(1)["result"]["protocolVersion"].is_string());
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let sql = "UPDATE encounters SET diagnosis_code = diagnosis_code WHERE id = 14";
    send(tool(2, "execute", json!({"sql": sql})));
    let held = next(2);
    let review = held["result"]["structuredContent"]["review_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{held}"))
        .to_owned();
    send(tool(
        3,
        "approval_wait",
        json!({"review_id": review, "timeout_s": 120}),
    ));
    send(tool(4, "query", json!({"sql": "SELECT pg_sleep(431)"})));
    wait_until("the query never ran beside the approval_wait", || {
        sleeping(431)
    });
    send(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": 4}}),
    );
    wait_until("the cancellation did not reach the query", || {
        !sleeping(431)
    });
    send(tool(5, "query", json!({"sql": "SELECT 1"})));
    assert_eq!(next(5)["result"]["isError"], false);
    let _ = child.kill();
    let _ = child.wait();
}
