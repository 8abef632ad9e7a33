//! No lockout by exhaustion: a client holding HTTP sockets, an identity opening session after
//! session, a flood of access requests or of `/readyz` calls takes its own share and no more.
//! Everyone else keeps logging in, and the gateway keeps its own files (the API key file, the
//! audit log and its checkpoints) readable and writable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use phigate_testkit::{sha256_hex, Cluster, Gateway, GatewayOptions};
use serde_json::Value;
use tokio_postgres::NoTls;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn cluster() -> &'static Cluster {
    phigate_testkit::clinic(phigate::demo::SEED_SQL)
}

fn phigate(args: &[&str]) -> (bool, String, String) {
    phigate_testkit::run(Command::new(bin()).args(args)).expect("phigate")
}

fn create_key(gw: &Gateway, name: &str, role: &str) -> String {
    let dd = gw.data_dir();
    let (ok, key, err) = phigate(&[
        "keys",
        "create",
        "--name",
        name,
        "--role",
        role,
        "--data-dir",
        dd.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{err}");
    key.trim().to_owned()
}

fn key_conninfo(gw: &Gateway, role: &str, key: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=clinic user={role} password={key} sslmode=disable",
        gw.pg_port
    )
}

async fn connect(info: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(info, NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

/// Connects, retrying for a while: a key the CLI just created reaches the running gateway
/// within a second.
async fn connect_soon(info: &str) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(info).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot log in: {}", db_message(&e)),
        }
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| format!("{} {}", d.code().code(), d.message()))
        .unwrap_or_else(|| e.to_string())
}

/// Reads what the server sends until it closes; `None` if it still holds the socket open after
/// `wait`.
fn read_until_closed(s: &mut TcpStream, wait: Duration) -> Option<String> {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            // Reset by the server: closed.
            Err(_) => return Some(String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

fn audit_checkpoints(gw: &Gateway) -> usize {
    std::fs::read_to_string(gw.data_dir().join("audit").join("checkpoints.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Item 1: half-sent requests hold the HTTP port's slots only until the header deadline, one
/// over the cap is told 503 at once, a trickled body is cut off, and the PostgreSQL port is
/// not affected at any point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item1_slow_http_clients_are_capped_and_cut_off() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.listen_extra =
        "http_max_connections = 16\nhttp_header_timeout_secs = 2\nhttp_body_timeout_secs = 2\n"
            .into();
    let gw = Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway: {e}"));
    let key = create_key(&gw, "agent-key", "ai-agent");
    let http = ("127.0.0.1", gw.http_port);

    let mut slow: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = TcpStream::connect(http).expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
                .expect("half a request");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(http).expect("connect");
    let busy = read_until_closed(&mut extra, Duration::from_secs(2))
        .expect("one over the cap is answered and closed at once");
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(busy.contains("too many HTTP connections"), "{busy}");

    // The PostgreSQL port does not share the HTTP port's slots: a login with an API key works.
    let client = connect_soon(&key_conninfo(&gw, "ai-agent", &key)).await;
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(one, 1);

    // The half-sent requests are cut off at the header deadline (2 s), not held forever.
    let started = Instant::now();
    for s in &mut slow {
        let left = Duration::from_secs(6).saturating_sub(started.elapsed());
        assert!(
            read_until_closed(s, left.max(Duration::from_millis(10))).is_some(),
            "a half-sent request was still held after {:?}",
            started.elapsed()
        );
    }
    // A keep-alive connection that goes quiet is closed too.
    let mut idle = TcpStream::connect(http).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .expect("request");
    let answered = read_until_closed(&mut idle, Duration::from_secs(6))
        .expect("an idle keep-alive connection is closed at the header deadline");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // A body trickled slower than the body deadline is refused, and the slot comes back.
    let mut trickle = TcpStream::connect(http).expect("connect");
    trickle
        .write_all(
            b"POST /v1/access-requests HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"role\":",
        )
        .expect("headers");
    let refused = read_until_closed(&mut trickle, Duration::from_secs(6));
    let refused = refused.unwrap_or_default();
    assert!(refused.starts_with("HTTP/1.1 408"), "{refused}");
    let (code, body) = gw.http_get("/healthz").expect("healthz");
    assert_eq!(code, 200, "{body}");
}

/// Item 1: under a file descriptor limit that hundreds of idle HTTP sockets would exhaust, the
/// gateway's caps fit inside the limit with a reserve: API keys created meanwhile still log in
/// (the key file is read), and the audit log still writes its checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item1_descriptor_exhaustion_refuses_no_credential_and_skips_no_checkpoint() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.nofile = Some(256);
    opts.extra = "[audit]\ncheckpoint_every_secs = 1\n".into();
    let gw = Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway: {e}"));
    assert!(
        gw.log().contains("lowered to fit"),
        "the gateway says it fitted its caps to the limit:\n{}",
        gw.log()
    );
    let held: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", gw.http_port)).ok())
        .collect();
    assert!(held.len() >= 300, "only {} sockets", held.len());
    std::thread::sleep(Duration::from_millis(500));
    let before = audit_checkpoints(&gw);

    // A key made while the sockets are held: the gateway must read the key file to know it.
    let key = create_key(&gw, "during-the-flood", "ai-agent");
    let client = connect_soon(&key_conninfo(&gw, "ai-agent", &key)).await;
    client
        .query_one("SELECT count(*) FROM departments", &[])
        .await
        .expect("query");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        audit_checkpoints(&gw) > before,
        "no checkpoint was written while the sockets were held:\n{}",
        gw.log()
    );
    assert!(
        !gw.log().contains("Too many open files"),
        "the gateway ran out of descriptors:\n{}",
        gw.log()
    );
    drop(held);
    drop(client);
    let (ok, out, err) = phigate(&[
        "audit",
        "verify",
        "--data-dir",
        gw.data_dir().to_str().expect("utf-8"),
    ]);
    assert!(ok, "{out}{err}");
}

const CAPPED_TOKEN: &str = "tok-second-agent-for-session-caps";

/// Item 2: one individual cannot take every session, nor one role every database connection;
/// others still log in; a masked role's database login carries the same cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item2_one_identity_cannot_take_every_session() {
    #[derive(serde::Serialize)]
    struct Demo {
        role: Vec<phigate_policy::RoleConfig>,
        rule: Vec<phigate_policy::RuleConfig>,
        phi: Vec<phigate_policy::masking::PhiTableConfig>,
    }
    let mut roles = phigate::demo::demo_roles();
    for r in &mut roles {
        if r.name == "ai-agent" {
            r.max_sessions = Some(5);
        }
    }
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = toml::to_string(&Demo {
        role: roles,
        rule: phigate::demo::demo_rules(),
        phi: phigate::demo::demo_phi(),
    })
    .expect("policy");
    opts.extra = format!(
        "[approvals]\nenabled = false\n\n[limits]\nsessions_per_identity = 3\n\n\
         [[identity]]\nsubject = \"second-agent@test.phigate\"\ntoken_sha256 = \"{}\"\nroles = [\"ai-agent\"]\n",
        sha256_hex(CAPPED_TOKEN)
    );
    let gw = Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway: {e}"));
    let second = format!(
        "host=127.0.0.1 port={} dbname=clinic user=ai-agent password={CAPPED_TOKEN} sslmode=disable",
        gw.pg_port
    );

    let mut agent = Vec::new();
    for _ in 0..3 {
        agent.push(
            connect(&gw.conninfo("agent"))
                .await
                .expect("within the cap"),
        );
    }
    let Err(over) = connect(&gw.conninfo("agent")).await else {
        panic!("a fourth session of the same individual is refused");
    };
    let msg = db_message(&over);
    assert!(
        msg.starts_with("53300") && msg.contains("sessions_per_identity"),
        "{msg}"
    );
    // Another individual of the same role logs in, up to the role's cap (5).
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(connect(&second).await.expect("another individual"));
    }
    let Err(full) = connect(&second).await else {
        panic!("the role is at its cap");
    };
    let msg = db_message(&full);
    assert!(
        msg.starts_with("53300") && msg.contains("role ai-agent"),
        "{msg}"
    );
    // Other roles are not affected.
    let clinician = connect(&gw.conninfo("clinician"))
        .await
        .expect("another role logs in");
    clinician.query_one("SELECT 1", &[]).await.expect("query");
    // A session that ends gives its seat back.
    drop(agent.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(&second).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the seat never came back: {}", db_message(&e)),
        }
    }
    // The database enforces the role's cap on its masked login too.
    let limits = cluster()
        .psql(
            "postgres",
            "SELECT rolconnlimit FROM pg_roles WHERE rolname LIKE 'phigate\\_m%' AND rolcanlogin",
        )
        .expect("pg_roles");
    assert!(
        limits.lines().any(|l| l.trim() == "5"),
        "masked login connection limits: {limits}"
    );
    let metrics = gw.http_get("/metrics").expect("metrics").1;
    assert!(metrics.contains("phigate_sessions "), "{metrics}");
}

/// Item 4: `/readyz` answers every caller, but probes the database at most once per 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item4_readyz_probes_the_database_at_most_every_two_seconds() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = probe.local_addr().expect("addr").port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in probe.incoming() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let mut opts = GatewayOptions::for_cluster(cluster());
    // A stand-in for the database that counts connections (no role is masked: nothing is
    // provisioned at start).
    opts.upstream_port = port;
    let gw = Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway: {e}"));
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let (code, body) = gw.http_get("/readyz").expect("readyz");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["upstream"], "reachable");
        calls += 1;
    }
    let probes = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(calls >= 20, "only {calls} calls");
    assert!(
        probes <= 1,
        "{calls} calls of /readyz opened {probes} connections"
    );
    std::thread::sleep(Duration::from_millis(2100));
    gw.http_get("/readyz").expect("readyz");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        probes + 1,
        "a stale probe is renewed"
    );
}

const HOLD_POLICY: &str = r#"
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
"#;

/// Item 9: a held statement whose session's credential is revoked is withdrawn at once: the
/// reviewer cannot approve it into nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item9_a_revoked_credential_withdraws_its_held_review() {
    let c = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    c.psql(
        "clinic",
        "CREATE TABLE IF NOT EXISTS availability_notes (id serial PRIMARY KEY, body text); \
         GRANT ALL ON availability_notes TO phigate_app; \
         GRANT USAGE ON SEQUENCE availability_notes_id_seq TO phigate_app",
    )
    .expect("table");
    let mut opts = GatewayOptions::for_cluster(c);
    opts.policy = HOLD_POLICY.into();
    opts.extra = "[approvals]\ntimeout_secs = 60\n".into();
    let gw = Gateway::start_with_identities(bin(), opts, &["agent", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway: {e}"));
    let key = create_key(&gw, "held-key", "ai-agent");
    let client = connect_soon(&key_conninfo(&gw, "ai-agent", &key)).await;
    let held = tokio::spawn(async move {
        client
            .execute(
                "INSERT INTO availability_notes (body) VALUES ('revoked-while-held')",
                &[],
            )
            .await
    });
    let reviewer = gw.token("reviewer").to_owned();
    let base = format!("http://127.0.0.1:{}", gw.http_port);
    let http = reqwest::Client::new();
    let mut id = String::new();
    for _ in 0..100 {
        let v: Value = http
            .get(format!("{base}/v1/reviews"))
            .bearer_auth(&reviewer)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if let Some(r) = v["reviews"].as_array().and_then(|a| a.first()) {
            id = r["id"].as_str().expect("id").to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!id.is_empty(), "no review opened");
    let dd = gw.data_dir();
    assert!(
        phigate(&[
            "keys",
            "revoke",
            "held-key",
            "--data-dir",
            dd.to_str().expect("utf-8")
        ])
        .0
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let v: Value = http
            .get(format!("{base}/v1/reviews/{id}"))
            .bearer_auth(&reviewer)
            .send()
            .await
            .expect("show")
            .json()
            .await
            .expect("json");
        let status = v["status"].as_str().unwrap_or_default().to_owned();
        if status != "pending" || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, "withdrawn");
    let resp = http
        .post(format!("{base}/v1/reviews/{id}/approve"))
        .bearer_auth(&reviewer)
        .json(&serde_json::json!({"reason": "looks fine to me"}))
        .send()
        .await
        .expect("approve");
    assert_eq!(resp.status().as_u16(), 409, "approving a withdrawn review");
    let outcome = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held statement ends")
        .expect("task");
    assert!(outcome.is_err(), "the statement did not run: {outcome:?}");
    let n = c
        .psql(
            "clinic",
            "SELECT count(*) FROM availability_notes WHERE body = 'revoked-while-held'",
        )
        .expect("count");
    assert_eq!(n.trim(), "0");
}

/// Item 3: access requests are limited per individual and in total, over the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item3_access_requests_are_limited_per_individual_and_in_total() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.top = "[auth]\ndevelopment = true\n\n[[binding]]\ngroups = [\"agents\"]\nroles = [\"ai-agent\"]\n".into();
    opts.extra = "[approvals]\nelevation_roles = [\"clinician\"]\n\n[limits]\naccess_requests_per_hour = 2\npending_access_requests = 3\n".into();
    let gw = Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway: {e}"));
    let mint = |subject: &str| {
        for _ in 0..10 {
            let (ok, out, _) = phigate(&[
                "token",
                "mint",
                "--config",
                gw.config_path().to_str().expect("utf-8"),
                "--subject",
                subject,
                "--group",
                "agents",
            ]);
            if ok {
                return out.trim().to_owned();
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("cannot mint a token");
    };
    let ann = mint("ann@test.phigate");
    let bob = mint("bob@test.phigate");
    let base = format!("http://127.0.0.1:{}", gw.http_port);
    let http = reqwest::Client::new();
    let ask = |token: String| {
        let http = http.clone();
        let url = format!("{base}/v1/access-requests");
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"role": "clinician", "minutes": 10, "reason": "correct a dosage entry"}))
                .send()
                .await
                .expect("request");
            let code = r.status().as_u16();
            (code, r.text().await.unwrap_or_default())
        }
    };
    assert_eq!(ask(ann.clone()).await.0, 201);
    assert_eq!(ask(ann.clone()).await.0, 201);
    let (code, body) = ask(ann.clone()).await;
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("access_requests_per_hour"), "{body}");
    assert_eq!(ask(bob.clone()).await.0, 201);
    let (code, body) = ask(bob).await;
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("wait for a decision"), "{body}");
}

/// A blocking socket to `port` on 127.0.0.1 from `source` (any 127.0.0.0/8 address is this
/// machine): another host, as far as the gateway can tell.
async fn from_source(source: &str, port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .expect("bind");
    let tcp = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let std = tcp.into_std().expect("std socket");
    std.set_nonblocking(false).expect("blocking");
    std
}

/// Item 1 (after review): one address that opens sockets and never logs in (or never finishes
/// an HTTP request) fills only its own share of either port: other addresses still log in and
/// probes still answer. A GSSENCRequest is answered once, not for as long as a client asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item1_one_address_cannot_fill_either_port() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.listen_extra = "http_max_connections = 16\nhttp_connections_per_source = 4\n".into();
    opts.extra = "[limits]\nstartups_per_source = 4\n".into();
    let gw = Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway: {e}"));
    let key = create_key(&gw, "agent-key", "ai-agent");

    // PostgreSQL port: four silent sockets from 127.0.0.2 take that address's share...
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(from_source("127.0.0.2", gw.pg_port).await);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = from_source("127.0.0.2", gw.pg_port).await;
    let refused = read_until_closed(&mut fifth, Duration::from_secs(2))
        .expect("the fifth is refused at once");
    assert!(refused.contains("53300"), "{refused:?}");
    assert!(refused.contains("still logging in"), "{refused:?}");
    // ... and nothing more: another address logs in, as often as it likes.
    let mut sessions = Vec::new();
    for _ in 0..6 {
        sessions.push(connect_soon(&key_conninfo(&gw, "ai-agent", &key)).await);
    }
    for client in &sessions {
        client.simple_query("SELECT 1").await.expect("query");
    }
    drop(silent);

    // HTTP port: four half-sent requests from 127.0.0.3 fill that address's share only.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = from_source("127.0.0.3", gw.http_port).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
            .expect("half a request");
        slow.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = from_source("127.0.0.3", gw.http_port).await;
    let busy = read_until_closed(&mut extra, Duration::from_secs(2)).expect("answered at once");
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    let (code, body) = gw
        .http_get("/healthz")
        .expect("healthz from another address");
    assert_eq!(code, 200, "{body}");
    let (code, body) = gw.http_get("/readyz").expect("readyz from another address");
    assert_eq!(code, 200, "{body}");

    // A second GSSENCRequest ends the connection instead of being answered again.
    let gssenc = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    let mut s = TcpStream::connect(("127.0.0.1", gw.pg_port)).expect("connect");
    s.write_all(&gssenc).expect("GSSENCRequest");
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).expect("answer");
    assert_eq!(&answer, b"N");
    s.write_all(&gssenc).expect("again");
    let rest = read_until_closed(&mut s, Duration::from_secs(2)).expect("closed at once");
    assert!(rest.contains("duplicate GSSENCRequest"), "{rest:?}");
}
