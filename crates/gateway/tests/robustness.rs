//! Robustness of the gateway as users meet it: malformed and oversized messages, slow or silent
//! clients, refused logins, the database going away and coming back, TLS on both sides, the
//! database's authentication methods, graceful shutdown, health endpoints and cancellation.
//!
//! Everything runs against real PostgreSQL (the test kit's throwaway clusters) and the real
//! `phigate` binary. Raw-protocol tests speak the wire format by hand over a plain TCP socket so
//! they can send what no driver would; the rest use tokio-postgres and psql, as users do.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phigate_testkit::raw::{
    cancel_packet, cstring, message, query, show, startup_packet, Msg, Raw,
};
use phigate_testkit::{
    Certs, Cluster, ClusterOptions, Gateway, GatewayOptions, APP_PASSWORD, APP_USER,
};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

/// The seeded cluster this test binary shares.
fn clinic() -> &'static Cluster {
    phigate_testkit::clinic(phigate::demo::SEED_SQL)
}

/// A gateway in front of the shared cluster, with extra `[listen]` lines.
fn gateway(listen_extra: &str) -> Gateway {
    let mut opts = GatewayOptions::for_cluster(clinic());
    opts.listen_extra = listen_extra.to_owned();
    Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

fn start_gateway(opts: GatewayOptions) -> Gateway {
    Gateway::start(bin(), opts).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

/// A cluster of the test's own (to stop, or to configure TLS / pg_hba), with the gateway's login
/// and a small `clinic` database: the full demo dataset is not needed to test connectivity.
fn dedicated_cluster(opts: ClusterOptions) -> Cluster {
    let cluster =
        Cluster::start(opts).unwrap_or_else(|e| panic!("cannot start a dedicated cluster: {e}"));
    phigate_testkit::prepare_clinic(
        &cluster,
        "CREATE TABLE ping (x int); INSERT INTO ping VALUES (1);",
    )
    .unwrap_or_else(|e| panic!("cannot prepare the dedicated cluster: {e}"));
    cluster
}

/// Whether the gateway process is still running (it has not exited).
fn still_running(gw: &mut Gateway) -> bool {
    gw.wait_exit(Duration::ZERO).is_err()
}

// ---------------------------------------------------------------------------------------------
// tokio-postgres helpers
// ---------------------------------------------------------------------------------------------

type ConnTask = JoinHandle<Result<(), tokio_postgres::Error>>;

async fn try_session(conninfo: &str) -> Result<(Client, ConnTask), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await?;
    Ok((client, tokio::spawn(conn)))
}

/// The error a connection attempt that must fail gets.
async fn refused(conninfo: &str, why: &str) -> tokio_postgres::Error {
    match try_session(conninfo).await {
        Ok(_) => panic!("connected, but {why}"),
        Err(e) => e,
    }
}

async fn session(conninfo: &str) -> (Client, ConnTask) {
    try_session(conninfo).await.unwrap_or_else(|e| {
        panic!(
            "cannot open a session through the gateway: {}",
            describe(&e)
        )
    })
}

/// The first column of the first row of a simple query.
async fn scalar(client: &Client, sql: &str) -> String {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// An error as a person would want to read it: SQLSTATE, message and hint for server errors.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {}: {} (hint: {})",
            db.severity(),
            db.code().code(),
            db.message(),
            db.hint().unwrap_or("-")
        ),
        None => format!("{e:?}"),
    }
}

fn code_of(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.as_db_error().map(|d| d.code())
}

// ---------------------------------------------------------------------------------------------
// Raw protocol client
// ---------------------------------------------------------------------------------------------

/// What happened to one startup attempt.
struct Attempt {
    raw: Raw,
    msgs: Vec<Msg>,
    asked_for_password: bool,
    ready: bool,
}

impl Attempt {
    fn authenticated(&self) -> bool {
        self.msgs.iter().any(|m| m.auth_code() == Some(0))
    }
}

/// StartupMessage with `params`; answers the cleartext password request with `password`.
fn attempt(port: u16, params: &[(&str, &str)], password: &str) -> Attempt {
    let mut raw = Raw::connect(port);
    raw.send(&startup_packet(params));
    let mut msgs = Vec::new();
    let mut asked_for_password = false;
    let ready = loop {
        let Some(m) = raw.read_msg() else {
            break false;
        };
        if m.auth_code() == Some(3) && !asked_for_password {
            asked_for_password = true;
            raw.send(&message(b'p', &cstring(password)));
        }
        let ready = m.tag == b'Z';
        msgs.push(m);
        if ready {
            break true;
        }
    };
    Attempt {
        raw,
        msgs,
        asked_for_password,
        ready,
    }
}

/// A logged-in raw session as `identity` (its role as the startup user).
fn raw_login(gw: &Gateway, identity: &str) -> Attempt {
    let a = attempt(
        gw.pg_port,
        &[
            ("user", Gateway::role(identity)),
            ("database", "clinic"),
            ("application_name", "robustness"),
        ],
        gw.token(identity),
    );
    assert!(
        a.asked_for_password,
        "no AuthenticationCleartextPassword: {}",
        show(&a.msgs)
    );
    assert!(a.ready, "login failed: {}", show(&a.msgs));
    a
}

/// Asserts the messages end with a FATAL with `code`, and the connection was then closed.
fn assert_fatal(msgs: &[Msg], code: &str) -> Msg {
    let last = msgs
        .last()
        .unwrap_or_else(|| panic!("the gateway closed the connection without a word"));
    assert_eq!(
        last.tag,
        b'E',
        "last message is not an ErrorResponse: {}",
        show(msgs)
    );
    assert_eq!(last.severity(), "FATAL", "{}", show(msgs));
    assert_eq!(last.code(), code, "{}", show(msgs));
    last.clone()
}

/// Asserts the client never received the gateway's database password, and that no error or
/// notice names the gateway's database login. (The login name itself is no secret inside a
/// session: `SELECT current_user` shows it, and PostgreSQL reports it as `session_authorization`.)
fn assert_no_upstream_secrets(raw: &Raw, msgs: &[Msg], context: &str) {
    let received = raw.received_text();
    assert!(
        !received.contains(APP_PASSWORD),
        "{context}: the upstream password reached the client: {received:?}"
    );
    for m in msgs.iter().filter(|m| m.tag == b'E' || m.tag == b'N') {
        assert!(
            !m.fields().iter().any(|(_, v)| v.contains(APP_USER)),
            "{context}: an error names the gateway's database login: {m}"
        );
    }
}

/// The gateway's log without terminal colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Malformed messages
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_end_only_their_own_session() {
    let gw = gateway("");
    let (bystander, _conn) = session(&gw.conninfo("clinician")).await;
    assert_eq!(
        scalar(&bystander, "SELECT count(*) FROM patients").await,
        "10000"
    );

    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("length below 4", b"Q\0\0\0\x03".to_vec(), "length 3"),
        ("unknown tag", message(b'Y', b""), "'Y'"),
        ("query without NUL", message(b'Q', b"SELECT 1"), "NUL"),
        // A second PasswordMessage after login: nothing may be smuggled into authentication.
        ("password after login", message(b'p', &cstring("x")), "'p'"),
    ];
    for (i, (name, bytes, detail)) in cases.into_iter().enumerate() {
        let mut s = raw_login(&gw, "agent").raw;
        // The session works before the bad message...
        let before = s.query(b"SELECT 7");
        assert!(
            before
                .iter()
                .any(|m| m.first_column().as_deref() == Some("7")),
            "{name}: {}",
            show(&before)
        );
        // ...and a statement sent in the same write as the bad message still goes (once it is
        // recorded: checked below).
        let mut both = message(b'Q', &cstring(&format!("SELECT 8 AS before_bad_{i}")));
        both.extend(&bytes);
        s.send(&both);
        // ...and the bad one ends it with a FATAL protocol violation, then EOF.
        let msgs = s.read_until_closed();
        let fatal = assert_fatal(&msgs, "08P01");
        assert!(
            fatal.message().starts_with("phigate: invalid message"),
            "{name}: {}",
            fatal.message()
        );
        assert!(
            fatal.message().contains(detail),
            "{name}: {}",
            fatal.message()
        );
        assert_no_upstream_secrets(&s, &msgs, name);

        // Another client's session is unaffected.
        assert_eq!(scalar(&bystander, "SELECT 1").await, "1", "after {name}");
    }
    // New sessions still open.
    let (fresh, _c) = session(&gw.conninfo("agent")).await;
    assert_eq!(scalar(&fresh, "SELECT 2").await, "2");
    // Every statement that went before a bad message has its audit record.
    let dd = gw.data_dir();
    let (ok, export, err) = phigate_testkit::run(Command::new(bin()).args([
        "audit",
        "export",
        "--data-dir",
        dd.to_str().expect("utf-8"),
        "--format",
        "jsonl",
    ]))
    .expect("phigate audit export");
    assert!(ok, "{err}");
    for i in 0..4 {
        assert!(
            export.contains(&format!("before_bad_{i}")),
            "no record of the statement before bad message {i}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Oversized messages
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_at_the_configured_limit() {
    let gw = gateway("max_message_bytes = 1048576");
    let (bystander, _conn) = session(&gw.conninfo("clinician")).await;

    let mut s = raw_login(&gw, "agent").raw;
    let mut sql = b"SELECT length('".to_vec();
    sql.extend(vec![b'x'; 2 * 1024 * 1024]);
    sql.extend_from_slice(b"')\0");
    // The gateway refuses on the header alone and closes, so the rest of the write may fail.
    let _ = s.try_send(&message(b'Q', &sql));
    let msgs = s.read_until_closed();
    let fatal = assert_fatal(&msgs, "08P01");
    assert!(
        fatal.message().contains("exceeds the limit"),
        "{}",
        fatal.message()
    );
    assert!(fatal.message().contains("1048576"), "{}", fatal.message());

    assert_eq!(scalar(&bystander, "SELECT 1").await, "1");

    // Below the limit, big statements work, in both query protocols.
    let half_mib = "x".repeat(512 * 1024);
    let (client, _c) = session(&gw.conninfo("agent")).await;
    assert_eq!(
        scalar(&client, &format!("SELECT length('{half_mib}')")).await,
        "524288"
    );
    let n: i32 = client
        .query_one(&format!("SELECT length('{half_mib}')"), &[])
        .await
        .unwrap_or_else(|e| panic!("extended query: {}", describe(&e)))
        .get(0);
    assert_eq!(n, 524_288);
    // The limit is on what clients send, not on what the database returns.
    assert_eq!(
        scalar(&client, "SELECT length(repeat('y', 4 * 1024 * 1024))").await,
        "4194304"
    );
    let big = scalar(&client, "SELECT repeat('y', 4 * 1024 * 1024)").await;
    assert_eq!(big.len(), 4 * 1024 * 1024);
}

// ---------------------------------------------------------------------------------------------
// 3. Startup timeout
// ---------------------------------------------------------------------------------------------

/// Waits for the gateway to give up on a stalled connection; returns how long it took.
fn time_to_close(mut s: Raw) -> Duration {
    let started = Instant::now();
    let msgs = s.read_until_closed();
    let took = started.elapsed();
    if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
        assert_eq!(e.severity(), "FATAL", "{}", show(&msgs));
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_timeout_closes_stalled_connections() {
    let gw = gateway("startup_timeout_secs = 1");

    // Silent: connects and sends nothing.
    let silent = Raw::connect(gw.pg_port);
    // Slow: half a StartupMessage.
    let mut slow = Raw::connect(gw.pg_port);
    slow.send(&startup_packet(&[("user", "ai-agent"), ("database", "clinic")])[..6]);
    // Stuck in authentication: never answers the password request.
    let mut stuck = Raw::connect(gw.pg_port);
    stuck.send(&startup_packet(&[
        ("user", "ai-agent"),
        ("database", "clinic"),
    ]));
    let request = stuck.read_msg().expect("password request");
    assert_eq!(request.auth_code(), Some(3));

    let waits = [
        ("silent", std::thread::spawn(move || time_to_close(silent))),
        ("slow", std::thread::spawn(move || time_to_close(slow))),
        ("stuck", std::thread::spawn(move || time_to_close(stuck))),
    ];
    for (name, wait) in waits {
        let took = wait.join().expect("reader thread");
        assert!(
            took < Duration::from_secs(3),
            "{name}: the gateway kept a stalled connection open for {took:?}"
        );
    }

    // The gateway still serves, and the timeout does not touch established sessions.
    let (client, _c) = session(&gw.conninfo("agent")).await;
    assert_eq!(scalar(&client, "SELECT 1").await, "1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(scalar(&client, "SELECT 2").await, "2");
}

// ---------------------------------------------------------------------------------------------
// 4. Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_say_why_and_reveal_nothing() {
    let gw = gateway("");
    let port = gw.pg_port;
    let agent = gw.token("agent").to_owned();
    let wrong_token = "tok-agent-0000000000000000";

    // Positive control.
    let ok = raw_login(&gw, "agent");
    assert!(ok.authenticated());
    assert_no_upstream_secrets(&ok.raw, &ok.msgs, "successful login");

    struct Case<'a> {
        name: &'a str,
        params: Vec<(&'a str, &'a str)>,
        password: &'a str,
        code: &'a str,
        message: &'a str,
    }
    let cases = [
        Case {
            name: "wrong token",
            params: vec![("user", "ai-agent"), ("database", "clinic")],
            password: wrong_token,
            code: "28P01",
            message: "phigate: authentication failed",
        },
        Case {
            name: "empty token",
            params: vec![("user", "ai-agent"), ("database", "clinic")],
            password: "",
            code: "28P01",
            message: "phigate: authentication failed",
        },
        Case {
            name: "the upstream password as a token",
            params: vec![("user", "ai-agent"), ("database", "clinic")],
            password: APP_PASSWORD,
            code: "28P01",
            message: "phigate: authentication failed",
        },
        Case {
            name: "role not allowed",
            params: vec![("user", "admin"), ("database", "clinic")],
            password: &agent,
            code: "28000",
            message: "\"admin\"",
        },
        Case {
            name: "replication",
            params: vec![
                ("user", "ai-agent"),
                ("database", "clinic"),
                ("replication", "database"),
            ],
            password: &agent,
            code: "28000",
            message: "replication",
        },
        Case {
            name: "role as a startup parameter",
            params: vec![
                ("user", "ai-agent"),
                ("database", "clinic"),
                ("role", "postgres"),
            ],
            password: &agent,
            code: "42501",
            message: "\"role\" is not allowed",
        },
        Case {
            name: "standard_conforming_strings as a startup parameter",
            params: vec![
                ("user", "ai-agent"),
                ("database", "clinic"),
                ("standard_conforming_strings", "off"),
            ],
            password: &agent,
            code: "42501",
            message: "is not allowed through phigate",
        },
        Case {
            name: "options role",
            params: vec![
                ("user", "ai-agent"),
                ("database", "clinic"),
                ("options", "-c role=postgres"),
            ],
            password: &agent,
            code: "28000",
            message: "options",
        },
        Case {
            name: "options without space",
            params: vec![
                ("user", "ai-agent"),
                ("database", "clinic"),
                ("options", "-crole=postgres"),
            ],
            password: &agent,
            code: "28000",
            message: "options",
        },
        Case {
            name: "no user",
            params: vec![("database", "clinic")],
            password: &agent,
            code: "28000",
            message: "user",
        },
    ];
    for case in cases {
        let mut a = attempt(port, &case.params, case.password);
        a.msgs.extend(a.raw.read_until_closed());
        assert!(
            !a.ready,
            "{}: the session opened: {}",
            case.name,
            show(&a.msgs)
        );
        assert!(!a.authenticated(), "{}: AuthenticationOk sent", case.name);
        let fatal = assert_fatal(&a.msgs, case.code);
        assert!(
            fatal.message().starts_with("phigate: "),
            "{}: {}",
            case.name,
            fatal.message()
        );
        assert!(
            fatal.message().contains(case.message),
            "{}: {}",
            case.name,
            fatal.message()
        );
        let received = a.raw.received_text();
        // The refused token (when it is not the caller's real one) is not echoed either.
        assert!(
            !received.contains(wrong_token),
            "{}: token echoed",
            case.name
        );
        assert_no_upstream_secrets(&a.raw, &a.msgs, case.name);
    }

    // Drivers see the SQLSTATE.
    let bad = gw.conninfo("agent").replace(gw.token("agent"), wrong_token);
    let err = refused(&bad, "the token is wrong").await;
    assert_eq!(
        code_of(&err),
        Some(&SqlState::INVALID_PASSWORD),
        "{}",
        describe(&err)
    );
    let err = refused(
        &gw.conninfo("agent").replace("user=ai-agent", "user=admin"),
        "the agent may not assume admin",
    )
    .await;
    assert_eq!(
        code_of(&err),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{}",
        describe(&err)
    );
    assert!(describe(&err).contains("admin"), "{}", describe(&err));
}

// ---------------------------------------------------------------------------------------------
// 5. The database goes away and comes back
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_and_back() {
    let mut cluster = dedicated_cluster(ClusterOptions::default());
    let mut gw = start_gateway(GatewayOptions::for_cluster(&cluster));
    let (status, body) = gw.http_get("/readyz").expect("readyz");
    assert_eq!(status, 200, "{body}");

    let (open, _conn) = session(&gw.conninfo("agent")).await;
    assert_eq!(scalar(&open, "SELECT x FROM ping").await, "1");

    cluster.stop().expect("stop the database");

    // The open session learns its database session is gone (and does not hang).
    let next = tokio::time::timeout(Duration::from_secs(10), open.simple_query("SELECT 1"))
        .await
        .expect("the open session's query must not hang while the database is down");
    assert!(next.is_err(), "a query succeeded with the database stopped");

    // New sessions are refused with a message a person understands, and nothing more.
    let mut a = attempt(
        gw.pg_port,
        &[("user", "ai-agent"), ("database", "clinic")],
        gw.token("agent"),
    );
    a.msgs.extend(a.raw.read_until_closed());
    let fatal = assert_fatal(&a.msgs, "08006");
    assert!(
        fatal
            .message()
            .contains("phigate: the database is not available"),
        "{}",
        fatal.message()
    );
    assert_no_upstream_secrets(&a.raw, &a.msgs, "database down");
    let err = refused(&gw.conninfo("clinician"), "the database is down").await;
    assert!(
        describe(&err).contains("phigate: the database is not available"),
        "{}",
        describe(&err)
    );

    let (status, body) = gw.http_get("/readyz").expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"upstream\":\"unreachable\""), "{body}");
    let (status, _) = gw.http_get("/healthz").expect("healthz");
    assert_eq!(status, 200, "the process itself is healthy");
    assert!(
        still_running(&mut gw),
        "the gateway exited:\n{}",
        plain(&gw.log())
    );

    cluster.start_server().expect("restart the database");

    let (status, body) = gw.http_get("/readyz").expect("readyz");
    assert_eq!(status, 200, "{body}");
    let (client, _c) = session(&gw.conninfo("agent")).await;
    assert_eq!(scalar(&client, "SELECT x FROM ping").await, "1");
    assert!(open.is_closed(), "the old session cannot be reused");
    assert!(
        still_running(&mut gw),
        "the gateway exited:\n{}",
        plain(&gw.log())
    );
}

// ---------------------------------------------------------------------------------------------
// 6. TLS towards clients
// ---------------------------------------------------------------------------------------------

fn psql() -> PathBuf {
    let usr = PathBuf::from("/usr/bin/psql");
    if usr.exists() {
        usr
    } else {
        PathBuf::from("psql")
    }
}

/// Runs `SELECT 42` through psql with `conninfo` and the token in PGPASSWORD.
fn psql_select(conninfo: &str, token: &str) -> (bool, String, String) {
    let mut cmd = Command::new(psql());
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "SELECT 42",
        conninfo,
    ])
    .env("PGPASSWORD", token)
    .env("PGCONNECT_TIMEOUT", "10")
    .env_remove("PGSSLMODE")
    .env_remove("PGSERVICE")
    .env_remove("PGHOST");
    phigate_testkit::run(&mut cmd).unwrap_or_else(|e| panic!("cannot run psql: {e}"))
}

fn tls_table(certs: &Certs, require: bool) -> String {
    format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nrequire = {require}\n",
        certs.cert().display(),
        certs.key().display()
    )
}

#[test]
fn client_tls_is_verified_and_required() {
    let certs = Certs::generate().expect("certificates");
    let mut opts = GatewayOptions::for_cluster(clinic());
    opts.extra = tls_table(&certs, true);
    let gw = start_gateway(opts);
    let token = gw.token("agent");
    let base = format!(
        "host=localhost port={} dbname=clinic user=ai-agent",
        gw.pg_port
    );

    let (ok, out, err) = psql_select(
        &format!(
            "{base} sslmode=verify-full sslrootcert={}",
            certs.ca().display()
        ),
        token,
    );
    assert!(
        ok,
        "psql with sslmode=verify-full failed: {err}\n{}",
        plain(&gw.log())
    );
    assert_eq!(out.trim(), "42");
    assert!(
        plain(&gw.log()).contains(" tls=\"TLSv1"),
        "session not logged as TLS:\n{}",
        plain(&gw.log())
    );

    // Plaintext is refused with a FATAL that says what to do.
    let (ok, _, err) = psql_select(&format!("{base} sslmode=disable"), token);
    assert!(!ok, "plaintext login accepted although TLS is required");
    assert!(err.contains("FATAL"), "{err}");
    assert!(err.contains("TLS is required"), "{err}");

    // A client that trusts another CA refuses the gateway.
    let (ok, _, err) = psql_select(
        &format!(
            "{base} sslmode=verify-full sslrootcert={}",
            certs.other_ca().display()
        ),
        token,
    );
    assert!(!ok, "psql accepted a certificate from an unknown CA");
    assert!(err.contains("certificate"), "{err}");

    // Bytes sent after an SSLRequest, before the handshake, are refused (CVE-2021-23214).
    let mut raw = Raw::connect(gw.pg_port);
    let mut stuffed = 8i32.to_be_bytes().to_vec();
    stuffed.extend(80_877_103u32.to_be_bytes());
    stuffed.extend(startup_packet(&[
        ("user", "ai-agent"),
        ("database", "clinic"),
    ]));
    raw.send(&stuffed);
    let mut answer = [0u8; 1];
    let answered = raw.fill(&mut answer);
    assert!(
        !answered || answer[0] != b'S',
        "the gateway started TLS with plaintext bytes queued behind the SSLRequest"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. TLS towards the database
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_modes() {
    let certs = Certs::generate().expect("certificates");
    let cluster = dedicated_cluster(ClusterOptions {
        tls: Some((certs.cert(), certs.key())),
        hba: vec![
            format!("hostssl all {APP_USER} 127.0.0.1/32 scram-sha-256"),
            format!("host all {APP_USER} 127.0.0.1/32 reject"),
        ],
        ..Default::default()
    });
    let with = |host: &str, upstream_extra: String| {
        let mut opts = GatewayOptions::for_cluster(&cluster);
        opts.upstream_host = host.to_owned();
        opts.upstream_extra = upstream_extra;
        start_gateway(opts)
    };
    let ssl_sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    // verify-full with the right CA.
    let gw = with(
        "localhost",
        format!(
            "tls = \"verify-full\"\nca_file = \"{}\"\n",
            certs.ca().display()
        ),
    );
    let (client, _c) = session(&gw.conninfo("agent")).await;
    assert_eq!(scalar(&client, ssl_sql).await, "t");
    assert!(
        plain(&gw.log()).contains("upstream_tls=\"TLSv1"),
        "{}",
        plain(&gw.log())
    );
    drop(client);

    // require: encrypted, certificate not checked.
    let gw = with("localhost", "tls = \"require\"\n".into());
    let (client, _c) = session(&gw.conninfo("agent")).await;
    assert_eq!(scalar(&client, ssl_sql).await, "t");
    drop(client);

    // verify-full against a CA that did not sign the server's certificate.
    let gw = with(
        "localhost",
        format!(
            "tls = \"verify-full\"\nca_file = \"{}\"\n",
            certs.other_ca().display()
        ),
    );
    let mut a = attempt(
        gw.pg_port,
        &[("user", "ai-agent"), ("database", "clinic")],
        gw.token("agent"),
    );
    a.msgs.extend(a.raw.read_until_closed());
    let fatal = assert_fatal(&a.msgs, "08006");
    assert!(
        fatal
            .message()
            .contains("phigate: the database is not available"),
        "{}",
        fatal.message()
    );
    assert_no_upstream_secrets(&a.raw, &a.msgs, "wrong CA");
    assert!(
        plain(&gw.log()).contains("TLS"),
        "the log does not say why:\n{}",
        plain(&gw.log())
    );

    // disable: pg_hba rejects the gateway's plaintext login. The client is not told who the
    // gateway logs in as (PostgreSQL's message names the user).
    let gw = with("127.0.0.1", "tls = \"disable\"\n".into());
    let mut a = attempt(
        gw.pg_port,
        &[("user", "ai-agent"), ("database", "clinic")],
        gw.token("agent"),
    );
    a.msgs.extend(a.raw.read_until_closed());
    let fatal = assert_fatal(&a.msgs, "08006");
    assert!(
        fatal
            .message()
            .contains("phigate: the database is not available"),
        "{}",
        fatal.message()
    );
    assert_no_upstream_secrets(&a.raw, &a.msgs, "hba reject");
    assert!(
        plain(&gw.log()).contains("pg_hba.conf"),
        "the log does not say why:\n{}",
        plain(&gw.log())
    );
}

// ---------------------------------------------------------------------------------------------
// 8. The database's authentication methods
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_authentication_methods() {
    let cluster = dedicated_cluster(ClusterOptions {
        hba: vec![
            "host all md5user 127.0.0.1/32 md5".into(),
            "host all trustuser 127.0.0.1/32 trust".into(),
            "host all pwuser 127.0.0.1/32 password".into(),
        ],
        ..Default::default()
    });
    cluster
        .psql(
            "postgres",
            "SET password_encryption='md5'; \
             CREATE ROLE md5user LOGIN PASSWORD 'md5pw'; \
             RESET password_encryption; \
             CREATE ROLE trustuser LOGIN; \
             CREATE ROLE pwuser LOGIN PASSWORD 'cleartext-pw'; \
             GRANT CONNECT ON DATABASE clinic TO md5user, trustuser, pwuser;",
        )
        .expect("create roles");
    let with = |user: &str, password: Option<&str>| {
        let mut opts = GatewayOptions::for_cluster(&cluster);
        opts.upstream_user = user.to_owned();
        opts.upstream_password = password.map(str::to_owned);
        start_gateway(opts)
    };

    for (user, password) in [
        ("md5user", Some("md5pw")),
        ("trustuser", None),
        ("pwuser", Some("cleartext-pw")),
        (APP_USER, Some(APP_PASSWORD)),
    ] {
        let gw = with(user, password);
        let (client, _c) = session(&gw.conninfo("agent")).await;
        assert_eq!(scalar(&client, "SELECT current_user").await, user);
    }

    // A wrong SCRAM password, and none at all where one is needed.
    let wrong = "wrong-scram-password-4711";
    for (password, why) in [(Some(wrong), "wrong password"), (None, "no password")] {
        let gw = with(APP_USER, password);
        let mut a = attempt(
            gw.pg_port,
            &[("user", "ai-agent"), ("database", "clinic")],
            gw.token("agent"),
        );
        a.msgs.extend(a.raw.read_until_closed());
        let fatal = assert_fatal(&a.msgs, "08006");
        assert_eq!(
            fatal.message(),
            "phigate: the database is not available right now",
            "{why}"
        );
        let received = a.raw.received_text();
        assert!(
            !received.contains(wrong),
            "{why}: the configured password reached the client"
        );
        assert_no_upstream_secrets(&a.raw, &a.msgs, why);
        assert!(
            plain(&gw.log()).contains("rejected the gateway's login"),
            "{why}: the log does not say why:\n{}",
            plain(&gw.log())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_then_exits_cleanly() {
    let mut gw = gateway("");
    let (idle, idle_conn) = session(&gw.conninfo("clinician")).await;
    assert_eq!(scalar(&idle, "SELECT 1").await, "1");
    let (busy, busy_conn) = session(&gw.conninfo("agent")).await;
    let sleeper = tokio::spawn(async move {
        let r = busy.simple_query("SELECT pg_sleep(2)").await;
        (r.map(|_| ()), busy)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;

    let sigterm = Instant::now();
    gw.terminate().expect("SIGTERM");

    // The idle session is told at once, with the SQLSTATE drivers know as "admin shutdown".
    let idle_end = tokio::time::timeout(Duration::from_secs(3), idle_conn)
        .await
        .expect("the idle session was not closed promptly")
        .expect("connection task");
    let err = idle_end.expect_err("the idle session ended without an error");
    assert_eq!(
        code_of(&err),
        Some(&SqlState::ADMIN_SHUTDOWN),
        "{}",
        describe(&err)
    );
    assert!(idle.is_closed());

    // New connections are refused while the busy session finishes.
    let refused_by = Instant::now() + Duration::from_secs(1);
    while TcpStream::connect(("127.0.0.1", gw.pg_port)).is_ok() {
        assert!(
            Instant::now() < refused_by,
            "still accepting connections after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = gw.http_get("/readyz").expect("readyz while draining");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"accepting\":false"), "{body}");
    assert!(
        sigterm.elapsed() < Duration::from_millis(1500),
        "the checks above ran after the busy query should have ended"
    );

    // The running statement completes, then its session is closed the same way.
    let (result, busy) = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("the running statement did not finish")
        .expect("query task");
    result.unwrap_or_else(|e| panic!("the running statement failed: {}", describe(&e)));
    let busy_end = tokio::time::timeout(Duration::from_secs(3), busy_conn)
        .await
        .expect("the busy session was not closed after its statement")
        .expect("connection task");
    let err = busy_end.expect_err("the busy session ended without an error");
    assert_eq!(
        code_of(&err),
        Some(&SqlState::ADMIN_SHUTDOWN),
        "{}",
        describe(&err)
    );
    assert!(busy.is_closed());

    let status = gw
        .wait_exit(Duration::from_secs(8))
        .unwrap_or_else(|e| panic!("{e}:\n{}", plain(&gw.log())));
    let took = sigterm.elapsed();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        plain(&gw.log())
    );
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}, past the 5 s grace period"
    );
}

/// A session inside a transaction is not cut off by SIGTERM: it may finish (and is closed at its
/// COMMIT), and one that lingers is closed at the deadline, its transaction rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_transactions_finish_until_the_deadline() {
    let mut gw = gateway("");
    let (committer, committer_conn) = session(&gw.conninfo("agent")).await;
    let (lingerer, lingerer_conn) = session(&gw.conninfo("clinician")).await;
    committer
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("BEGIN");
    lingerer.batch_execute("BEGIN").await.expect("BEGIN");

    let sigterm = Instant::now();
    gw.terminate().expect("SIGTERM");
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(
        !committer.is_closed(),
        "a session in a transaction was cut off at SIGTERM"
    );
    assert_eq!(scalar(&committer, "SELECT 3").await, "3");
    committer
        .batch_execute("COMMIT")
        .await
        .unwrap_or_else(|e| panic!("COMMIT during the drain: {}", describe(&e)));
    let end = tokio::time::timeout(Duration::from_secs(3), committer_conn)
        .await
        .expect("the session was not closed after its COMMIT")
        .expect("connection task");
    let err = end.expect_err("the session ended without an error");
    assert_eq!(
        code_of(&err),
        Some(&SqlState::ADMIN_SHUTDOWN),
        "{}",
        describe(&err)
    );

    let end = tokio::time::timeout(Duration::from_secs(8), lingerer_conn)
        .await
        .expect("the lingering transaction was not closed at the deadline")
        .expect("connection task");
    let closed_after = sigterm.elapsed();
    let err = end.expect_err("the session ended without an error");
    assert_eq!(
        code_of(&err),
        Some(&SqlState::ADMIN_SHUTDOWN),
        "{}",
        describe(&err)
    );
    assert!(
        closed_after >= Duration::from_millis(4500),
        "closed after {closed_after:?}, before the 5 s grace period ended"
    );
    assert!(lingerer.is_closed());

    let status = gw
        .wait_exit(Duration::from_secs(8))
        .unwrap_or_else(|e| panic!("{e}:\n{}", plain(&gw.log())));
    let took = sigterm.elapsed();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        plain(&gw.log())
    );
    assert!(took < Duration::from_millis(6500), "exit took {took:?}");
}

/// A client that connected but never finished its startup must not hold the shutdown past the
/// grace period: it has nothing to lose and is closed like any other session.
#[test]
fn sigterm_does_not_wait_past_the_grace_period_for_stalled_startups() {
    let mut gw = gateway("");
    let mut stalled = Raw::connect(gw.pg_port);
    stalled.send(&startup_packet(&[
        ("user", "ai-agent"),
        ("database", "clinic"),
    ]));
    assert_eq!(stalled.read_msg().and_then(|m| m.auth_code()), Some(3));

    let sigterm = Instant::now();
    gw.terminate().expect("SIGTERM");
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}:\n{}", plain(&gw.log())));
    let took = sigterm.elapsed();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        plain(&gw.log())
    );
    assert!(
        took < Duration::from_millis(6500),
        "a connection stalled in startup held the shutdown for {took:?} \
         (shutdown_grace_secs = 5):\n{}",
        plain(&gw.log())
    );
    stalled.read_until_closed();
}

/// Clients that vanish (no Terminate) — idle, inside a transaction, or with a statement running —
/// must not leave database sessions behind.
#[test]
fn vanished_clients_release_their_database_sessions() {
    let gw = gateway("");
    let app = format!("vanishing-{}", gw.pg_port);
    let count = || -> usize {
        clinic()
            .psql(
                "postgres",
                // The gateway adds the subject: "<app> (phigate:<subject>)".
                &format!(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = '{app} (phigate:agent@test.phigate)'"
                ),
            )
            .expect("count sessions")
            .parse()
            .expect("a number")
    };
    let mut sessions = Vec::new();
    for _ in 0..9 {
        let a = attempt(
            gw.pg_port,
            &[
                ("user", "ai-agent"),
                ("database", "clinic"),
                ("application_name", &app),
            ],
            gw.token("agent"),
        );
        assert!(a.ready, "{}", show(&a.msgs));
        sessions.push(a.raw);
    }
    assert_eq!(count(), 9);
    for (i, mut raw) in sessions.into_iter().enumerate() {
        match i % 3 {
            0 => {}
            1 => {
                raw.query(b"BEGIN");
            }
            _ => raw.send(&message(b'Q', b"SELECT pg_sleep(0.3)\0")),
        }
        drop(raw);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = count();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} database sessions outlived their clients:\n{}",
            plain(&gw.log())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Health endpoints
// ---------------------------------------------------------------------------------------------

#[test]
fn health_endpoints() {
    let gw = gateway("");
    let (status, body) = gw.http_get("/healthz").expect("healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (status, body) = gw.http_get("/readyz").expect("readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"upstream\":\"reachable\""), "{body}");
    assert!(body.contains("\"accepting\":true"), "{body}");
    assert!(
        !body.contains(APP_PASSWORD) && !body.contains(APP_USER),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Cancellation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_through_the_gateway() {
    let gw = gateway("");
    let (client, _conn) = session(&gw.conninfo("agent")).await;
    let cancel = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(30)").await.map(|_| ());
        (r, client)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    cancel
        .cancel_query(NoTls)
        .await
        .expect("send the cancel request");
    let (result, client) = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("the cancelled statement kept running")
        .expect("query task");
    let err = result.expect_err("pg_sleep(30) finished although cancelled");
    assert_eq!(
        code_of(&err),
        Some(&SqlState::QUERY_CANCELED),
        "{}",
        describe(&err)
    );
    assert!(sent.elapsed() < Duration::from_secs(5));
    // PostgreSQL signals a cancelled backend twice (its pid, then its process group); on a loaded
    // machine the second SIGINT can land a little later. Let it land while the session is idle,
    // where PostgreSQL ignores it, so it cannot hit the statements below.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The session survives a cancelled statement.
    assert_eq!(scalar(&client, "SELECT 1").await, "1");

    // A CancelRequest with a made-up key: no answer, the connection closes, nothing is cancelled.
    let sleeper = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(1)").await.map(|_| ());
        (r, client)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bogus = Raw::connect(gw.pg_port);
    bogus.send(&cancel_packet(12345, 67890));
    assert!(
        bogus.read_msg().is_none(),
        "the gateway answered a CancelRequest"
    );
    assert!(bogus.received().is_empty());
    let (result, client) = sleeper.await.expect("query task");
    result.unwrap_or_else(|e| panic!("a bogus cancel key cancelled a statement: {}", describe(&e)));
    assert_eq!(scalar(&client, "SELECT 1").await, "1");

    // Clients hold the gateway's key: the database's pid (what pg_backend_pid() says, what
    // notifications carry and pg_terminate_backend takes, as direct) with the gateway's own
    // secret; the database's secret never reaches them.
    let mut a = raw_login(&gw, "agent");
    let key = a
        .msgs
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData")
        .body
        .clone();
    let gateway_pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let backend_pid = a
        .raw
        .query(b"SELECT pg_backend_pid()")
        .iter()
        .find_map(Msg::first_column)
        .expect("a row");
    assert_eq!(
        gateway_pid.to_string(),
        backend_pid,
        "the client's BackendKeyData names another process than pg_backend_pid()"
    );
    // The right pid with a secret other than the gateway's cancels nothing.
    let secret = i32::from_be_bytes([key[4], key[5], key[6], key[7]]);
    let mut wrong = Raw::connect(gw.pg_port);
    wrong.send(&cancel_packet(gateway_pid, secret.wrapping_add(1)));
    assert!(wrong.read_msg().is_none());
    assert_eq!(
        a.raw
            .query(b"SELECT 'not cancelled'")
            .iter()
            .find_map(Msg::first_column)
            .as_deref(),
        Some("not cancelled")
    );
    // Guessing the 32-bit secret counts like guessing a credential: past the failed-login
    // limit, that address's cancel requests are not even tried.
    for guess in 2..14 {
        let mut wrong = Raw::connect(gw.pg_port);
        wrong.send(&cancel_packet(gateway_pid, secret.wrapping_add(guess)));
        assert!(wrong.read_msg().is_none());
    }
    gw.wait_log(
        "cancel request ignored: too many failures from this address",
        1,
    )
    .expect("guessing is limited");
}

// ---------------------------------------------------------------------------------------------
// Further contracts
// ---------------------------------------------------------------------------------------------

/// A gateway process with a hand-written config (the test kit's always names the database).
struct CustomGateway {
    child: Child,
    dir: tempfile::TempDir,
    pg_port: u16,
}

impl CustomGateway {
    fn start(config: impl FnOnce(u16) -> String) -> CustomGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg_port = phigate_testkit::free_port().expect("free port");
        let path = dir.path().join("phigate.toml");
        // The audit log (on by default) lives in the data directory.
        let data = format!("data_dir = \"{}\"\n", dir.path().join("data").display());
        std::fs::write(&path, data + &config(pg_port)).expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log");
        let child = Command::new(bin())
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "phigate=debug,info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn phigate");
        let mut gw = CustomGateway {
            child,
            dir,
            pg_port,
        };
        // Ready once it logs that it listens on our port (probing the port could reach another
        // process that happened to take it).
        let deadline = Instant::now() + Duration::from_secs(30);
        let listening = format!("pg_addr=127.0.0.1:{pg_port}");
        while !plain(&gw.log()).contains(&listening) {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("gateway exited with {status}:\n{}", plain(&gw.log()));
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start:\n{}",
                plain(&gw.log())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for CustomGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// docs: "`[upstream] database`: Database to connect to. If unset, the database the client asked
/// for." The client's choice must reach PostgreSQL, and a failure must not name the gateway's
/// own login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chooses_the_database_when_the_config_does_not() {
    let cluster = clinic();
    let token = "tok-db-choice-test";
    let gw = CustomGateway::start(|port| {
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n\n\
             [upstream]\nhost = \"{}\"\nport = {}\nuser = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n\n\
             [[identity]]\nsubject = \"db@test.phigate\"\ntoken_sha256 = \"{}\"\nroles = [\"ai-agent\"]\n\n\
             {}",
            cluster.host(),
            cluster.port(),
            phigate_testkit::sha256_hex(token),
            phigate_testkit::PASS_THROUGH_POLICY,
        )
    });
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=clinic user=ai-agent password={token} sslmode=disable",
        gw.pg_port
    );
    match try_session(&conninfo).await {
        Ok((client, _c)) => {
            assert_eq!(scalar(&client, "SELECT current_database()").await, "clinic");
        }
        Err(e) => {
            let text = describe(&e);
            assert!(
                !text.contains(APP_USER),
                "the refusal names the gateway's database login: {text}"
            );
            panic!(
                "dbname=clinic was not honoured with [upstream] database unset: {text}\n{}",
                plain(&gw.log())
            );
        }
    }
}

/// PostgreSQL's refusals that the gateway passes on (SQLSTATE classes 3D and 53, 57P03) may name
/// the gateway's own login, e.g. `too many connections for role "phigate_app"`. The client
/// should learn that the database is at capacity, not who the gateway logs in as.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_refusals_do_not_name_the_gateway_login() {
    let cluster = dedicated_cluster(ClusterOptions::default());
    cluster
        .psql(
            "postgres",
            &format!("ALTER ROLE {APP_USER} CONNECTION LIMIT 1"),
        )
        .expect("limit the gateway's login");
    let gw = start_gateway(GatewayOptions::for_cluster(&cluster));
    let (first, _c) = session(&gw.conninfo("agent")).await;
    assert_eq!(scalar(&first, "SELECT x FROM ping").await, "1");

    let mut a = attempt(
        gw.pg_port,
        &[("user", "clinician"), ("database", "clinic")],
        gw.token("clinician"),
    );
    a.msgs.extend(a.raw.read_until_closed());
    assert!(
        !a.ready,
        "a second session opened past the connection limit"
    );
    let fatal = a
        .msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no error: {}", show(&a.msgs)));
    assert_eq!(fatal.severity(), "FATAL", "{fatal}");
    assert_no_upstream_secrets(&a.raw, &a.msgs, "connection limit");
}

/// A client that asks for another encoding must be able to send text in the encoding it
/// asked for; it must not be disconnected for a "protocol violation" when it sends a
/// perfectly valid LATIN1 query.
#[test]
fn non_utf8_client_encoding_is_pinned_or_works() {
    let gw = gateway("");
    let mut a = attempt(
        gw.pg_port,
        &[
            ("user", "ai-agent"),
            ("database", "clinic"),
            ("client_encoding", "LATIN1"),
        ],
        gw.token("agent"),
    );
    assert!(a.ready, "{}", show(&a.msgs));
    let encoding = a
        .msgs
        .iter()
        .filter_map(Msg::parameter)
        .find(|(k, _)| k == "client_encoding")
        .map(|(_, v)| v)
        .unwrap_or_default();
    if encoding == "UTF8" {
        return;
    }
    // "café" in LATIN1.
    a.raw.send(&message(b'Q', b"SELECT 'caf\xe9'\0"));
    let (msgs, ready) = a.raw.read_until_ready();
    assert!(
        ready,
        "client_encoding is {encoding}, and a valid {encoding} query ended the session: {}",
        show(&msgs)
    );
    let value = msgs.iter().find(|m| m.tag == b'D').map(|m| m.body.clone());
    assert!(
        value.is_some_and(|v| v.ends_with(b"caf\xe9")),
        "{}",
        show(&msgs)
    );
}

/// `standard_conforming_strings` stays on for every role (the parser the gateway analyses
/// with reads `'\'` as PostgreSQL does only with it on).
#[tokio::test]
async fn standard_conforming_strings_stays_on() {
    let gw = gateway("");
    let (client, _conn) = session(&gw.conninfo("agent")).await;
    for sql in [
        "SET standard_conforming_strings = off",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
    ] {
        let err = client
            .simple_query(sql)
            .await
            .expect_err("the gateway reads statements with standard strings");
        let db = err.as_db_error().expect("a refusal from the gateway");
        assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE, "{sql}");
        assert!(
            db.message().contains("denied by rule pinned-setting"),
            "{sql}: {db}"
        );
    }
    assert_eq!(
        scalar(&client, "SHOW standard_conforming_strings").await,
        "on"
    );
}

/// An encoding whose multibyte characters may contain `\` or `'` bytes (SJIS, BIG5, GBK, UHC,
/// GB18030, ...) cannot be analysed safely: asked for when connecting, the session does not
/// start; switched to by a trusted role, the session ends before another statement is read.
#[test]
fn encodings_that_cannot_be_analysed_are_refused() {
    let gw = gateway("");
    for enc in ["SJIS", "BIG5", "GB18030"] {
        let mut a = attempt(
            gw.pg_port,
            &[
                ("user", "ai-agent"),
                ("database", "clinic"),
                ("client_encoding", enc),
            ],
            gw.token("agent"),
        );
        a.msgs.extend(a.raw.read_until_closed());
        assert!(!a.ready, "{enc}: {}", show(&a.msgs));
        let fatal = a.msgs.iter().find(|m| m.tag == b'E').expect("an error");
        assert!(fatal.message().contains(enc), "{fatal}");
    }
    let mut a = raw_login(&gw, "agent");
    // Sent together: the SELECT was read before the session changed encoding, and never runs.
    let mut both = query("SET client_encoding TO 'SJIS'");
    both.extend(query("SELECT 'never'"));
    a.raw.send(&both);
    let msgs = a.raw.read_until_closed();
    let fatal = msgs
        .iter()
        .find(|m| m.tag == b'E' && m.severity() == "FATAL")
        .unwrap_or_else(|| panic!("no FATAL: {}", show(&msgs)));
    assert_eq!(fatal.code(), "0A000", "{fatal}");
    assert!(
        !msgs
            .iter()
            .any(|m| m.first_column().as_deref() == Some("never")),
        "{}",
        show(&msgs)
    );
}

/// While a change of `client_encoding` is in flight, the gateway cannot know which encoding
/// the database will read the next text in: a statement with non-ASCII bytes sent behind it
/// is refused (not guessed), one in ASCII runs; once answered, text in the new encoding is
/// analysed and runs.
#[test]
fn text_sent_behind_an_encoding_change_is_refused_until_it_is_answered() {
    let gw = gateway("");
    let mut a = attempt(
        gw.pg_port,
        &[
            ("user", "ai-agent"),
            ("database", "clinic"),
            ("client_encoding", "LATIN1"),
        ],
        gw.token("agent"),
    );
    assert!(a.ready, "{}", show(&a.msgs));
    let mut batch = query("SET client_encoding TO 'UTF8'");
    batch.extend(message(b'Q', b"SELECT 'caf\xc3\xa9'\0"));
    batch.extend(query("SELECT 'ascii'"));
    a.raw.send(&batch);
    let mut msgs = a.raw.until_ready();
    msgs.extend(a.raw.until_ready());
    msgs.extend(a.raw.until_ready());
    let refused = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("not refused: {}", show(&msgs)));
    assert!(
        refused
            .message()
            .contains("client_encoding may be changing"),
        "{refused}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.first_column().as_deref() == Some("ascii")),
        "{}",
        show(&msgs)
    );
    let rows = a.raw.query(b"SELECT 'caf\xc3\xa9'");
    assert!(
        rows.iter()
            .any(|m| m.first_column().as_deref() == Some("café")),
        "{}",
        show(&rows)
    );
    // In a transaction block the change holds once answered; its ROLLBACK undoes it, so text
    // sent behind the ROLLBACK waits for that answer too.
    a.raw.query(b"BEGIN");
    a.raw.query(b"SET client_encoding TO 'LATIN1'");
    let rows = a.raw.query(b"SELECT 'caf\xe9'");
    let latin1: &[u8] = b"caf\xe9";
    assert!(
        rows.iter()
            .any(|m| m.tag == b'D' && m.body.ends_with(latin1)),
        "{}",
        show(&rows)
    );
    let mut batch = query("ROLLBACK");
    batch.extend(message(b'Q', b"SELECT 'caf\xc3\xa9'\0"));
    a.raw.send(&batch);
    let mut msgs = a.raw.until_ready();
    msgs.extend(a.raw.until_ready());
    assert!(
        msgs.iter()
            .any(|m| m.tag == b'E' && m.message().contains("client_encoding may be changing")),
        "{}",
        show(&msgs)
    );
    let rows = a.raw.query(b"SELECT 'caf\xc3\xa9'");
    assert!(
        rows.iter()
            .any(|m| m.first_column().as_deref() == Some("café")),
        "{}",
        show(&rows)
    );
    // Code phigate cannot read may change it too: a DO block that switches the encoding, with
    // text pipelined behind it (with SJIS, a multibyte character could swallow a quote). The
    // text is refused, not read as UTF8 while the database reads it otherwise.
    let mut batch =
        query("DO $$BEGIN PERFORM set_config('client_encoding', 'LATIN1', false); END$$");
    batch.extend(message(b'Q', b"SELECT 'caf\xc3\xa9'\0"));
    a.raw.send(&batch);
    let mut msgs = a.raw.until_ready();
    msgs.extend(a.raw.until_ready());
    assert!(
        msgs.iter()
            .any(|m| m.tag == b'E' && m.message().contains("client_encoding may be changing")),
        "{}",
        show(&msgs)
    );
}

/// When the database ends a session with a FATAL of its own (an administrator's
/// `pg_terminate_backend`, `idle_session_timeout`, a shutdown), the client gets that FATAL and
/// the connection closes, as direct: one ErrorResponse, the database's code, so libpq's and
/// the drivers' reconnect logic (PQreset) sees what it sees direct.
#[tokio::test]
async fn a_session_the_database_terminates_ends_as_it_would_direct() {
    let gw = gateway("");
    let mut a = raw_login(&gw, "agent");
    let pid = a
        .raw
        .query(b"SELECT pg_backend_pid()")
        .iter()
        .find_map(Msg::first_column)
        .expect("a row");
    let direct = format!(
        "host=127.0.0.1 port={} dbname=clinic user={APP_USER} password={APP_PASSWORD}",
        clinic().port()
    );
    let (admin, _conn) = session(&direct).await;
    assert_eq!(
        scalar(&admin, &format!("SELECT pg_terminate_backend({pid})")).await,
        "t"
    );
    let msgs = a.raw.read_until_closed();
    let errors: Vec<&Msg> = msgs.iter().filter(|m| m.tag == b'E').collect();
    assert_eq!(errors.len(), 1, "{}", show(&msgs));
    assert_eq!(errors[0].severity(), "FATAL", "{}", errors[0]);
    assert_eq!(errors[0].code(), "57P01", "{}", errors[0]);
    // A fresh connection (what PQreset opens) works at once.
    let mut again = raw_login(&gw, "agent");
    assert!(
        again
            .raw
            .query(b"SELECT 1")
            .iter()
            .any(|m| m.first_column().as_deref() == Some("1")),
        "no row after reconnecting"
    );
}
