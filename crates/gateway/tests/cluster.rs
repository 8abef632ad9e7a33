//! Many gateway nodes on one PostgreSQL control database (docs/cluster.md), with real
//! processes and a real PostgreSQL: a statement held on one node is decided through another
//! and runs once where it is held; racing decisions on different nodes have exactly one
//! winner; a node killed with SIGKILL has its held reviews abandoned and its audit chain
//! verifies after a restart; a control database that goes away makes holds fail closed while
//! ordinary statements go on, and everything works again once it is back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use phigate::approvals::{Action, Approvals, DecideError, Decision, Request, SharedStore, Status};
use phigate::config::ClusterConfig;
use phigate::control::{Control, NodeAddress};
use phigate_testkit::{Cluster, ClusterOptions, Gateway, GatewayOptions};
use serde_json::Value;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn clinic() -> &'static Cluster {
    phigate_testkit::clinic("CREATE TABLE notes (id serial PRIMARY KEY, body text);")
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
"#;

/// A control database of its own (in `cluster`), reached as a login of its own whose
/// password the nodes read from a file.
struct ControlDb {
    url: String,
    password_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn control_db(cluster: &Cluster, name: &str) -> ControlDb {
    let password = format!("pw-{name}-{}", std::process::id());
    cluster
        .psql(
            "postgres",
            &format!(
                "CREATE ROLE {name} LOGIN PASSWORD '{password}';\nCREATE DATABASE {name} OWNER {name};\n\
                 REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC;"
            ),
        )
        .expect("create the control database");
    let dir = tempfile::tempdir().expect("tempdir");
    let password_file = dir.path().join("control-password");
    std::fs::write(&password_file, format!("{password}\n")).expect("password file");
    ControlDb {
        url: format!("postgres://{name}@127.0.0.1:{}/{name}", cluster.port()),
        password_file,
        _dir: dir,
    }
}

fn node(db: &ControlDb, node_id: &str, timeout_secs: u64) -> Gateway {
    node_with(db, node_id, timeout_secs, "")
}

fn node_with(db: &ControlDb, node_id: &str, timeout_secs: u64, extra: &str) -> Gateway {
    let mut opts = GatewayOptions::for_cluster(clinic());
    opts.policy = POLICY.into();
    opts.extra = format!(
        "[approvals]\ntimeout_secs = {timeout_secs}\n\n[cluster]\ncontrol_database = \"{}\"\n\
         password_file = \"{}\"\nnode_id = \"{node_id}\"\nlease_secs = 2\npoll_interval_ms = 200\n\n{extra}",
        db.url,
        db.password_file.display()
    );
    Gateway::start_with_identities(bin(), opts, &["agent", "reviewer"])
        .unwrap_or_else(|e| panic!("node {node_id} did not start: {e}"))
}

async fn connect(info: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(info, NoTls).await.expect("connect");
    tokio::spawn(conn);
    c
}

fn api(gw: &Gateway, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", gw.http_port)
}

async fn review(gw: &Gateway, token: &str, id: &str) -> Value {
    get(gw, token, &format!("/v1/reviews/{id}")).await.1
}

/// `GET path` on `gw`'s API as `token`: the status and the JSON body (null if none).
async fn get(gw: &Gateway, token: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(api(gw, path))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// The id of the first pending review `gw` lists, waiting up to 10 s for one.
async fn first_pending_id(gw: &Gateway, token: &str) -> String {
    first_pending(gw, token).await["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// The first pending review `gw` lists, waiting up to 10 s for one.
async fn first_pending(gw: &Gateway, token: &str) -> Value {
    for _ in 0..200 {
        let (_, v) = get(gw, token, "/v1/reviews").await;
        if let Some(r) = v["reviews"].as_array().and_then(|l| l.first()) {
            return r.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no pending review appeared");
}

async fn decide(gw: &Gateway, token: &str, id: &str, verb: &str) -> u16 {
    reqwest::Client::new()
        .post(api(gw, &format!("/v1/reviews/{id}/{verb}")))
        .bearer_auth(token)
        .json(&serde_json::json!({ "reason": "cluster test" }))
        .send()
        .await
        .expect("decide")
        .status()
        .as_u16()
}

/// The agent's INSERT of `marker` (on `agent`'s node) is held, approved through `b`, and runs
/// once.
async fn runs_once_approved_through(
    agent: &tokio_postgres::Client,
    marker: &str,
    b: &Gateway,
    reviewer: &str,
) {
    let sql = format!("INSERT INTO notes (body) VALUES ('{marker}')");
    let approve = async {
        let id = first_pending_id(b, reviewer).await;
        decide(b, reviewer, &id, "approve").await
    };
    let (inserted, code) = tokio::join!(agent.simple_query(&sql), approve);
    assert_eq!(code, 200);
    inserted.unwrap_or_else(|e| panic!("{marker}: the approved INSERT fails: {e}"));
    assert_eq!(count(marker), "1");
}

fn count(marker: &str) -> String {
    clinic()
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

fn audit_verify(gw: &Gateway) -> (bool, String) {
    let (ok, out, err) = phigate_testkit::run(
        std::process::Command::new(bin())
            .args(["audit", "verify", "--data-dir"])
            .arg(gw.data_dir()),
    )
    .expect("phigate audit verify");
    (ok, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_held_on_one_node_is_decided_through_another() {
    let db = control_db(clinic(), "control_decide");
    let a = node(&db, "node-a", 20);
    let b = node(&db, "node-b", 20);
    let agent = connect(&a.conninfo("agent")).await;
    let reviewer_b = b.token("reviewer").to_owned();

    // Held on A, approved through B: it runs once, on A.
    let insert = agent.simple_query("INSERT INTO notes (body) VALUES ('across-nodes')");
    let approve = async {
        let r = first_pending(&b, &reviewer_b).await;
        assert_eq!(r["requester"], "agent@test.phigate");
        let id = r["id"].as_str().expect("id").to_owned();
        assert_eq!(decide(&b, &reviewer_b, &id, "approve").await, 200);
        (id, Instant::now())
    };
    let (inserted, (id, approved_at)) = tokio::join!(insert, approve);
    inserted.expect("the approved INSERT runs on node A");
    let approval_to_execution = approved_at.elapsed();
    assert_eq!(count("across-nodes"), "1");
    // B lists it settled; a second decision on A is refused as already made (409).
    assert_eq!(review(&b, &reviewer_b, &id).await["status"], "approved");
    let reviewer_a = a.token("reviewer").to_owned();
    assert_eq!(decide(&a, &reviewer_a, &id, "deny").await, 409);

    // Denied through B: refused on A with B's reviewer's reason; nothing runs.
    let denied = agent.simple_query("INSERT INTO notes (body) VALUES ('denied-across')");
    let deny = async {
        let id = first_pending_id(&b, &reviewer_b).await;
        assert_eq!(decide(&b, &reviewer_b, &id, "deny").await, 200);
    };
    let (denied, ()) = tokio::join!(denied, deny);
    let msg = db_message(&denied.expect_err("denied"));
    assert!(msg.contains("denied by reviewer@test.phigate"), "{msg}");
    assert_eq!(count("denied-across"), "0");

    // The decision is in B's audit chain, the statement it let run in A's: the same review.
    let decided: Vec<Value> = b
        .audit_records("review_decided")
        .into_iter()
        .filter(|r| r["review"] == id.as_str())
        .collect();
    assert_eq!(decided.len(), 1, "B records the approval once");
    assert!(a
        .audit_records("statement")
        .iter()
        .any(|r| r["approval"] == id.as_str()));
    eprintln!("approval to execution across nodes: {approval_to_execution:?}");
}

/// Three nodes' stores on one control database, in this process: each race between two
/// nodes' transitions on one review has exactly one winner, and the loser is told the
/// winner's state (the HTTP API answers it 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_transitions_on_different_nodes_have_one_winner() {
    let db = control_db(clinic(), "control_races");
    let stop = CancellationToken::new();
    let nodes = in_process_nodes(&db, &["race-a", "race-b", "race-c"], &stop).await;
    let approve = |who: &'static str| {
        Action::Decide(Decision {
            approve: true,
            reviewer: who,
            reviewer_issuer: "static",
            role: "reviewer",
            reason: "race",
            break_glass: false,
            break_glass_roles: &[],
        })
    };
    let deny = Action::Decide(Decision {
        approve: false,
        reviewer: "dee",
        reviewer_issuer: "static",
        role: "reviewer",
        reason: "race",
        break_glass: false,
        break_glass_roles: &[],
    });
    let races: [(&str, Action<'static>, Action<'static>); 3] = [
        ("approve on B against deny on C", approve("bea"), deny),
        ("approve against expiry", approve("bea"), Action::Expire),
        (
            "withdraw against approve",
            Action::Withdraw {
                reason: Some("the client cancelled"),
            },
            approve("bea"),
        ),
    ];
    for (name, first, second) in &races {
        let mut wins = [0usize; 2];
        for round in 0..100 {
            let review = nodes[0]
                .open_review(request())
                .await
                .expect("open a review");
            let (b, c) = (nodes[1].clone(), nodes[2].clone());
            // Alternate which node's task starts first.
            let (x, y) = if round % 2 == 0 {
                (first, second)
            } else {
                (second, first)
            };
            let (rx, ry) = tokio::join!(b.transition(&review.id, x), c.transition(&review.id, y));
            let (rx, ry) = if round % 2 == 0 { (rx, ry) } else { (ry, rx) };
            let winner = match (&rx, &ry) {
                (Ok(w), Err(DecideError::NotPending { status, .. })) => {
                    wins[0] += 1;
                    assert_eq!(*status, w.status, "{name}, round {round}");
                    w.status
                }
                (Err(DecideError::NotPending { status, .. }), Ok(w)) => {
                    wins[1] += 1;
                    assert_eq!(*status, w.status, "{name}, round {round}");
                    w.status
                }
                other => panic!("{name}, round {round}: not exactly one winner: {other:?}"),
            };
            let stored = nodes[0].get(&review.id).await.expect("read").expect("kept");
            assert_eq!(stored.status, winner, "{name}, round {round}");
            assert_ne!(stored.status, Status::Pending);
        }
        eprintln!("{name}: first won {}, second won {}", wins[0], wins[1]);
    }
    stop.cancel();
}

/// Nodes in this process (their review stores on the control database), one per id.
async fn in_process_nodes(
    db: &ControlDb,
    ids: &[&str],
    stop: &CancellationToken,
) -> Vec<Arc<Approvals>> {
    let mut nodes = Vec::new();
    for id in ids {
        let config: ClusterConfig = toml::from_str(&format!(
            "control_database = \"{}\"\npassword_file = \"{}\"\nnode_id = \"{id}\"",
            db.url,
            db.password_file.display()
        ))
        .expect("cluster config");
        let address = NodeAddress {
            pg: "127.0.0.1:1".into(),
            http: None,
        };
        let control = Control::start(&config, None, address, stop.clone())
            .await
            .expect("join the cluster");
        nodes.push(Arc::new(Approvals::with_store(Box::new(SharedStore::new(
            control,
        )))));
    }
    nodes
}

fn request() -> Request<'static> {
    Request {
        requester: "agent@test.phigate",
        issuer: "static",
        role: "ai-agent",
        session: "s-race",
        statement: "DELETE FROM notes",
        kinds: vec!["write".into()],
        tables: vec!["public.notes".into()],
        rule: "writes-need-approval",
        timeout: Duration::from_secs(60),
        approvals_required: 1,
        reviewer_roles: vec!["reviewer".into()],
        scope: None,
        phi_columns: Vec::new(),
        session_reason: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_leaves_its_reviews_abandoned_and_its_chain_sound() {
    let db = control_db(clinic(), "control_kill");
    let mut a = node(&db, "kill-a", 60);
    let b = node(&db, "kill-b", 60);
    let reviewer_b = b.token("reviewer").to_owned();
    let hold = |sql: &'static str| {
        let info = a.conninfo("agent");
        tokio::spawn(async move {
            connect(&info)
                .await
                .simple_query(sql)
                .await
                .map(drop)
                .map_err(|e| db_message(&e))
        })
    };
    let held = hold("INSERT INTO notes (body) VALUES ('killed-node')");
    let id = first_pending_id(&b, &reviewer_b).await;
    let approved_late = hold("INSERT INTO notes (body) VALUES ('approved-after-kill')");
    let late = loop {
        let (_, list) = get(&b, &reviewer_b, "/v1/reviews").await;
        let other = list["reviews"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["id"] != id.as_str()).cloned());
        if let Some(r) = other {
            break r["id"].as_str().expect("id").to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    a.kill9().expect("kill -9 node A");
    // Its clients see the connection end, never a result.
    for task in [held, approved_late] {
        let ended = task.await.expect("task");
        assert!(ended.is_err(), "{ended:?}");
    }
    // Approved before A's lease lapses, for a client that is gone: nobody can run it. It is
    // forfeited once the lease lapses, and its text (with its literal) leaves the control
    // database.
    assert_eq!(decide(&b, &reviewer_b, &late, "approve").await, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = clinic()
            .psql(
                "control_kill",
                &format!(
                    "SELECT run, body LIKE '%approved-after-kill%' FROM phigate.reviews WHERE id = '{late}'"
                ),
            )
            .expect("row");
        if row.trim() == "forfeited|f" {
            break;
        }
        assert!(Instant::now() < deadline, "not forfeited: {row}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count("approved-after-kill"), "0");
    // B abandons the review once A's lease (2 s) has lapsed; an approval then is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = review(&b, &reviewer_b, &id).await;
        if r["status"] == "abandoned" {
            break;
        }
        assert!(Instant::now() < deadline, "not abandoned: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(decide(&b, &reviewer_b, &id, "approve").await, 409);
    assert_eq!(count("killed-node"), "0");
    assert!(b
        .audit_records("review_decided")
        .iter()
        .any(|r| r["review"] == id.as_str() && r["status"] == "abandoned"));
    // A comes back under the same id; its chain verifies.
    a.restart().expect("restart node A");
    let (ok, out) = audit_verify(&a);
    assert!(ok, "{out}");
    // And it holds and runs statements again.
    let agent = connect(&a.conninfo("agent")).await;
    runs_once_approved_through(&agent, "after-restart", &b, &reviewer_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_fail_closed_while_the_control_database_is_away() {
    // The control database in a PostgreSQL of its own, so it can stop alone.
    // Commits are durable there (the test default turns synchronous_commit off), as in
    // production: an immediate stop loses none.
    let mut control = Cluster::start(ClusterOptions {
        settings: vec![("synchronous_commit".into(), "on".into())],
        ..Default::default()
    })
    .expect("control PostgreSQL");
    let db = control_db(&control, "control_away");
    let a = node(&db, "away-a", 20);
    let b = node(&db, "away-b", 20);
    let reviewer_b = b.token("reviewer").to_owned();
    let agent = connect(&a.conninfo("agent")).await;

    control
        .stop_immediate()
        .expect("stop the control database (immediate)");
    // Ordinary statements need no shared state: they go on.
    let rows = agent
        .simple_query("SELECT count(*) FROM notes")
        .await
        .expect("a read while the control database is away");
    assert!(!rows.is_empty());
    // A statement that needs a review is refused at once, with a clear error; nothing runs.
    let err = agent
        .simple_query("INSERT INTO notes (body) VALUES ('control-away')")
        .await
        .expect_err("refused while the control database is away");
    let msg = db_message(&err);
    assert!(msg.contains("review"), "{msg}");
    assert_eq!(count("control-away"), "0");
    // The review API says the store is unavailable rather than showing nothing.
    assert_eq!(get(&b, &reviewer_b, "/v1/reviews").await.0, 503);

    control
        .start_server()
        .expect("start the control database again");
    // Both nodes reconnect (their review lists answer again); then a held statement is
    // decided across nodes as before.
    let reviewer_a = a.token("reviewer").to_owned();
    for (gw, token) in [(&a, &reviewer_a), (&b, &reviewer_b)] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, _) = get(gw, token, "/v1/reviews").await;
            if code == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a node did not reconnect: {code}\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    runs_once_approved_through(&agent, "control-back", &b, &reviewer_b).await;
}

fn cli(args: &[&str], config: &Path) -> (bool, String, String) {
    phigate_testkit::run(
        std::process::Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(config),
    )
    .expect("phigate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_works_on_every_node_and_its_revocation_ends_sessions_everywhere() {
    let db = control_db(clinic(), "control_keys");
    let a = node(&db, "keys-a", 20);
    let b = node(&db, "keys-b", 20);
    // Created through A's configuration: the control database has it, and B accepts it.
    let (ok, out, err) = cli(
        &[
            "keys",
            "create",
            "--name",
            "nightly-etl",
            "--role",
            "ai-agent",
            "--json",
        ],
        &a.config_path(),
    );
    assert!(ok, "{out}{err}");
    let created: Value = serde_json::from_str(&out).expect("json");
    let key = created["key"].as_str().expect("key").to_owned();
    let info = |gw: &Gateway| {
        format!(
            "host=127.0.0.1 port={} dbname=clinic user=ai-agent password={key} sslmode=disable",
            gw.pg_port
        )
    };
    let mut sessions = Vec::new();
    for gw in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(5);
        let client = loop {
            match tokio_postgres::connect(&info(gw), NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    break c;
                }
                Err(e) => assert!(Instant::now() < deadline, "the key is refused: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        client.simple_query("SELECT 1").await.expect("a read");
        sessions.push(client);
    }
    // A node's data directory holds a copy: the CLI refuses to change keys there.
    let (ok, _, err) = phigate_testkit::run(
        std::process::Command::new(bin())
            .args(["keys", "revoke", "nightly-etl", "--data-dir"])
            .arg(a.data_dir()),
    )
    .expect("phigate");
    assert!(!ok && err.contains("cluster node"), "{err}");
    // Listed through B's configuration, revoked through it: both sessions end.
    let (ok, out, err) = cli(&["keys", "list", "--json"], &b.config_path());
    assert!(ok, "{err}");
    assert!(
        out.contains("nightly-etl") && out.contains("\"active\""),
        "{out}"
    );
    let revoked_at = Instant::now();
    let (ok, out, err) = cli(&["keys", "revoke", "nightly-etl"], &b.config_path());
    assert!(ok, "{out}{err}");
    for (n, s) in sessions.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.simple_query("SELECT 1").await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "session {n} outlived the revocation"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ended_after = revoked_at.elapsed();
    for gw in [&a, &b] {
        assert!(tokio_postgres::connect(&info(gw), NoTls).await.is_err());
    }
    eprintln!("sessions on both nodes ended {ended_after:?} after the revocation");
    // The control database is the only copy that counts: it lists the key revoked.
    let (ok, out, _) = cli(&["keys", "list", "--json"], &a.config_path());
    assert!(ok && out.contains("\"revoked\""), "{out}");
}

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn demo_runs_a_cluster_of_three_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready_file = dir.path().join("ready.json");
    let data_dir = dir.path().join("state");
    let log = std::fs::File::create(dir.path().join("demo.log")).expect("log");
    let mut demo = std::process::Command::new(bin())
        .args(["demo", "--nodes", "3", "--pg-port", "0", "--http-port", "0"])
        .arg("--ready-file")
        .arg(&ready_file)
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("phigate demo");
    let read_log = || std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default();
    let started = Instant::now();
    while !ready_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{}",
            read_log()
        );
        if let Ok(Some(s)) = demo.try_wait() {
            panic!("demo exited early ({s}):\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready: Value =
        serde_json::from_slice(&std::fs::read(&ready_file).expect("ready")).expect("json");
    let nodes = ready["nodes"].as_array().expect("nodes").clone();
    assert_eq!(nodes.len(), 3);
    // The top-level postgres and http stay the first node's.
    assert_eq!(nodes[0]["postgres"], ready["postgres"]);
    assert_eq!(nodes[0]["http"], ready["http"]);
    let psql = |node: &Value, who: &str, sql: &str| {
        let id = &ready["identities"][who];
        phigate_testkit::run(
            std::process::Command::new("psql")
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .arg(format!(
                    "host=127.0.0.1 port={} dbname=clinic user={} sslmode=disable",
                    node["postgres"]["port"],
                    id["user"].as_str().expect("user")
                ))
                .env("PGPASSWORD", id["password"].as_str().expect("password")),
        )
        .expect("psql")
    };
    // Every node serves every identity with the same tokens, masks the same way.
    let mut masked = Vec::new();
    for n in &nodes {
        let (ok, out, err) = psql(n, "agent", "SELECT first_name FROM patients WHERE id = 7");
        assert!(ok, "{}: {err}", n["node_id"]);
        masked.push(out.trim().to_owned());
    }
    assert!(masked[0].starts_with("tok_") && masked.iter().all(|m| *m == masked[0]));
    // Held on node 1, approved through node 2's API, it runs on node 1.
    let held = {
        let n1 = nodes[1].clone();
        let ready = ready.clone();
        std::thread::spawn(move || {
            let id = &ready["identities"]["agent"];
            phigate_testkit::run(
                std::process::Command::new("psql")
                    .args(["-X", "-A", "-t", "-c"])
                    .arg("UPDATE departments SET name = name || '' WHERE id = 1")
                    .arg(format!(
                        "host=127.0.0.1 port={} dbname=clinic user=ai-agent sslmode=disable",
                        n1["postgres"]["port"]
                    ))
                    .env("PGPASSWORD", id["password"].as_str().expect("password")),
            )
            .expect("psql")
        })
    };
    let reviewer = ready["identities"]["reviewer"]["password"]
        .as_str()
        .expect("token")
        .to_owned();
    let http2 = nodes[2]["http"].as_str().expect("http").to_owned();
    let port2: u16 = http2
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let (_, body) =
            phigate_testkit::http_request(port2, "GET", "/v1/reviews", Some(&reviewer), None)
                .expect("list");
        let v: Value = serde_json::from_str(&body).expect("json");
        if let Some(id) = v["reviews"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "no review: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (code, body) = phigate_testkit::http_request(
        port2,
        "POST",
        &format!("/v1/reviews/{id}/approve"),
        Some(&reviewer),
        Some(r#"{"reason":"cluster demo"}"#),
    )
    .expect("approve");
    assert_eq!(code, 200, "{body}");
    let (ok, out, err) = held.join().expect("thread");
    assert!(ok && out.contains("UPDATE 1"), "{out}{err}");
    // Node 2 killed: the others serve on.
    let pid2 = nodes[2]["pid"].as_u64().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid2.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    for n in &nodes[..2] {
        let (ok, _, err) = psql(n, "clinician", "SELECT count(*) FROM patients");
        assert!(ok, "{err}");
    }
    // One command verifies every node's audit chain.
    let (ok, out, err) = phigate_testkit::run(
        std::process::Command::new(bin())
            .args(["audit", "verify", "--data-dir"])
            .arg(&data_dir),
    )
    .expect("verify");
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("node node-1: ok") && out.contains("node node-2: ok"),
        "{out}"
    );
    // SIGTERM stops the demo and its nodes.
    let pid1 = nodes[1]["pid"].as_u64().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while demo.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "{}", read_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(pid1), "node 1 outlived the demo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_count_across_the_cluster() {
    let db = control_db(clinic(), "control_failures");
    let limits = "[auth.failed_logins]\nmax_failures = 3\nwindow_secs = 120\n";
    let a = node_with(&db, "fail-a", 20, limits);
    let b = node_with(&db, "fail-b", 20, limits);
    let wrong = |gw: &Gateway| {
        format!(
            "host=127.0.0.1 port={} dbname=clinic user=ai-agent password=not-a-token sslmode=disable",
            gw.pg_port
        )
    };
    // Two failures on A, one on B: neither node alone saw three.
    for gw in [&a, &a, &b] {
        assert!(tokio_postgres::connect(&wrong(gw), NoTls).await.is_err());
    }
    // The cluster did: once the counts have been shared (every second), B refuses the next
    // guess as over the limit although it saw one failure itself. A valid token still logs in
    // (an attacker sharing the address cannot lock its owners out).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let e = tokio_postgres::connect(&wrong(&b), NoTls)
        .await
        .err()
        .expect("refused");
    assert!(
        db_message(&e).contains("too many failed logins"),
        "{}",
        db_message(&e)
    );
    let (c, conn) = tokio_postgres::connect(&b.conninfo("agent"), NoTls)
        .await
        .expect("a valid token still works");
    tokio::spawn(conn);
    c.simple_query("SELECT 1").await.expect("a read");
    // Every failure on any node counts (the fourth reaches the control database within a
    // second or two).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = clinic()
            .psql(
                "control_failures",
                "SELECT failures FROM phigate.failed_logins",
            )
            .expect("counts");
        if counts.trim() == "4" {
            break;
        }
        assert!(Instant::now() < deadline, "counts: {counts}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Only the node holding a statement expires its review (by the control database's clock): a
/// node whose clock runs ahead cannot end the holds of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holding_node_expires_its_held_statements() {
    let db = control_db(clinic(), "control_due");
    let stop = CancellationToken::new();
    let nodes = in_process_nodes(&db, &["due-a", "due-b"], &stop).await;
    let mut req = request();
    req.timeout = Duration::ZERO;
    let review = nodes[0].open_review(req).await.expect("open");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(nodes[1].expire_due().await, 0, "not B's to expire");
    let stored = nodes[1].get(&review.id).await.expect("read").expect("kept");
    assert_eq!(stored.status, Status::Pending);
    assert_eq!(nodes[0].expire_due().await, 1, "A expires its own");
    let stored = nodes[1].get(&review.id).await.expect("read").expect("kept");
    assert_eq!(stored.status, Status::Expired);
    stop.cancel();
}

/// A node reaches the control database over TLS when told to, verifying its certificate: the
/// right CA connects (the server lists the node's connection as TLS), another CA does not
/// start the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_database_is_reached_over_verified_tls() {
    let certs = phigate_testkit::Certs::generate().expect("certificates");
    let control = Cluster::start(ClusterOptions {
        tls: Some((certs.cert(), certs.key())),
        ..Default::default()
    })
    .expect("control PostgreSQL with TLS");
    let db = control_db(&control, "control_tls");
    let tls = |ca: &Path| {
        format!(
            "[cluster]\ncontrol_database = \"{}\"\npassword_file = \"{}\"\nnode_id = \"tls-a\"\n\
             tls = \"verify-full\"\nca_file = \"{}\"\n",
            db.url,
            db.password_file.display(),
            ca.display()
        )
    };
    let start = |cluster: String| {
        let mut opts = GatewayOptions::for_cluster(clinic());
        opts.policy = POLICY.into();
        opts.extra = cluster;
        Gateway::start_with_identities(bin(), opts, &["agent", "reviewer"])
    };
    // The listener is bound before the node joins its cluster: the refusal is the process
    // ending, with the reason.
    let refused = match start(tls(&certs.other_ca())) {
        Ok(mut gw) => {
            let status = gw
                .wait_exit(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{e}:\n{}", gw.log()));
            assert!(!status.success());
            gw.log()
        }
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("cannot connect to the control database")
            && refused.contains("certificate"),
        "{refused}"
    );
    let _node = start(tls(&certs.ca())).expect("the right CA connects");
    // (The node joins its cluster after it binds its listener: wait for its connection.)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ssl = control
            .psql(
                "postgres",
                "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = 'phigate node tls-a'",
            )
            .expect("pg_stat_ssl");
        if !ssl.trim().is_empty() {
            assert_eq!(ssl.trim(), "t", "the node's connection is TLS");
            break;
        }
        assert!(Instant::now() < deadline, "the node never connected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `phigate check` names the cluster; `--connect` reaches its control database, and says so
/// when it cannot (here: a wrong password), never printing the password.
#[test]
fn check_reaches_the_control_database() {
    let db = control_db(clinic(), "control_check");
    let a = node(&db, "check-a", 20);
    let (ok, out, err) = phigate_testkit::run(
        std::process::Command::new(bin())
            .args(["check", "--connect", "--config"])
            .arg(a.config_path()),
    )
    .expect("phigate check");
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("A cluster node (node id check-a)") && out.contains("/control_check"),
        "{out}"
    );
    let wrong = tempfile::tempdir().expect("tempdir");
    let password_file = wrong.path().join("pw");
    std::fs::write(&password_file, "not-the-password").expect("write");
    let config = std::fs::read_to_string(a.config_path()).expect("config");
    let bad = wrong.path().join("phigate.toml");
    std::fs::write(
        &bad,
        config.replace(
            &db.password_file.display().to_string(),
            &password_file.display().to_string(),
        ),
    )
    .expect("write");
    let (ok, out, err) = phigate_testkit::run(
        std::process::Command::new(bin())
            .args(["check", "--connect", "--config"])
            .arg(&bad),
    )
    .expect("phigate check");
    assert!(!ok);
    assert!(
        out.contains("[cluster]: cannot connect to the control database"),
        "{out}{err}"
    );
    assert!(!format!("{out}{err}").contains("not-the-password"));
    // What the server says (it quotes the database's name) reaches the terminal escaped.
    std::fs::write(
        &bad,
        config.replace("/control_check\"", "/control_check%1b[31m\""),
    )
    .expect("write");
    let (ok, out, err) = phigate_testkit::run(
        std::process::Command::new(bin())
            .args(["check", "--connect", "--config"])
            .arg(&bad),
    )
    .expect("phigate check");
    assert!(!ok && out.contains("3D000"), "{out}{err}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
}
