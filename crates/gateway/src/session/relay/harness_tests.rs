//! The relay in-process, over in-memory streams, against a scripted backend: a session runs
//! exactly as it would behind the listener (the same guard, exchange owner and halves), and the
//! test plays PostgreSQL by hand. For behaviours a real server cannot be made to show on
//! demand; everything else is tested against real PostgreSQL in `tests/`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use phigate_wire::backend::{self, Fields, Notice, TransactionStatus};
use phigate_wire::frontend::{write, FrontendMessage};
use phigate_wire::startup::CancelKey;
use phigate_wire::{Frame, FrameReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::auth::{Credential, Identity, RoleName, Subject};
use crate::cancel::UpstreamKey;
use crate::config::Config;
use crate::net::Stream;
use crate::session::guard::{Guard, GuardParams};
use crate::session::Ready;
use crate::state::Shared;
use crate::upstream::UpstreamConn;

const CONFIG: &str = r#"
[listen]
address = "127.0.0.1:0"
allow_plaintext_loopback = true

[upstream]
host = "127.0.0.1"
port = 1
user = "phigate"
database = "clinic"

[audit]
enabled = false

[recording]
enabled = false

[[identity]]
subject = "agent@harness"
token_sha256 = "49f756463ad9dcfb9b6ade54d7d6f15476e7214f46a65b4b0c55d46845b12f70"
roles = ["ai-agent"]

[[role]]
name = "ai-agent"
[[role.grant]]
schema = "public"
tables = ["notes"]
actions = ["select"]
"#;

/// One end of a stream, read message by message.
struct Peer {
    io: DuplexStream,
    reader: FrameReader,
}

impl Peer {
    fn new(io: DuplexStream) -> Peer {
        Peer {
            io,
            reader: FrameReader::new(1 << 20),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("send");
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(f) = self.reader.next_frame().expect("a well-formed message") {
                return f;
            }
            let n = tokio::time::timeout(
                Duration::from_secs(5),
                self.io.read_buf(self.reader.buf_mut()),
            )
            .await
            .expect("an answer within 5 s")
            .expect("read");
            assert!(n > 0, "the other side closed the stream");
        }
    }

    /// Messages up to and including ReadyForQuery.
    async fn until_ready(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let f = self.next().await;
            let done = f.tag() == backend::tag::READY_FOR_QUERY;
            out.push(f);
            if done {
                return out;
            }
        }
    }
}

/// A session of the demo agent's role relayed between two in-memory streams: the client's end
/// and the database's end.
async fn session() -> (Peer, Peer) {
    let config = Config::parse(CONFIG, std::path::Path::new("harness.toml")).expect("config");
    let addr: SocketAddr = "127.0.0.1:5432".parse().expect("addr");
    let shared = Arc::new(Shared::from_config(&config, addr, None, None).expect("shared"));
    let identity = Identity {
        subject: Subject("agent@harness".into()),
        role: RoleName("ai-agent".into()),
        groups: Vec::new(),
        issuer: "static".into(),
        credential: Credential::StaticToken {
            sha256: crate::auth::token_sha256("harness"),
        },
        expires_at: None,
    };
    let (policy, version) = shared.policy.store.snapshot();
    let role = policy.role("ai-agent").expect("role");
    let seat = shared
        .admission
        .seat("static", "agent@harness", &role)
        .expect("seat");
    let guard = Guard::new(GuardParams {
        role,
        policy,
        policy_version: version,
        identity: identity.clone(),
        session: Arc::from("harness"),
        audit_on: false,
        gate_reads: false,
        approvals_on: false,
        phi: Default::default(),
        unmasked_phi: Default::default(),
        predicate_guarded: Default::default(),
        unwritable: Default::default(),
        tape: None,
        metrics: Default::default(),
        origin: None,
    });
    let (client, gw_client) = tokio::io::duplex(64 * 1024);
    let (database, gw_database) = tokio::io::duplex(64 * 1024);
    let key = UpstreamKey(CancelKey { pid: 1, secret: 2 });
    let (_, registration) = shared.cancels.register(addr, key);
    let ready = Ready {
        client: Stream::Memory(gw_client),
        client_reader: FrameReader::new(1 << 20),
        upstream: UpstreamConn {
            stream: Stream::Memory(gw_database),
            reader: FrameReader::new(1 << 20),
            addr,
            key,
            parameter_status: Vec::new(),
            tls_version: None,
        },
        identity,
        peer: addr,
        registration,
        guard,
        seat,
        client_view: crate::session::ClientView {
            encoding: crate::session::encoding::ClientEncoding::UTF8,
            application_name: (String::new(), "phigate:harness".into()),
        },
    };
    tokio::spawn(async move { super::relay(ready, &shared).await });
    (Peer::new(client), Peer::new(database))
}

fn msg(build: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::new();
    build(&mut out);
    out
}

fn error(code: &str, message: &str) -> BytesMut {
    msg(|o| Notice::error(code, message).write(o))
}

fn simple(tag: u8) -> BytesMut {
    msg(|o| {
        o.extend_from_slice(&[tag, 0, 0, 0, 4]);
    })
}

fn ready() -> BytesMut {
    msg(|o| backend::write_ready_for_query(o, TransactionStatus::Idle))
}

fn fields(f: &Frame) -> (String, String) {
    let fields = Fields::decode(f).expect("fields");
    (
        fields.code().unwrap_or_default().to_owned(),
        fields.message().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn a_refused_query_never_reaches_the_database_and_its_error_is_the_refusal() {
    let (mut client, mut db) = session().await;
    client
        .send(&msg(|o| write::query(o, "DELETE FROM notes")))
        .await;
    // The database sees a substitute: a lone token it cannot parse.
    let sub = db.next().await;
    let FrontendMessage::Query { sql } = FrontendMessage::decode(&sub).expect("query") else {
        panic!("a Query");
    };
    assert!(sql.starts_with("phigate_denied_"), "{sql}");
    assert!(!sql.contains("DELETE"));
    let mut answer = error("42601", &format!("syntax error at or near \"{sql}\""));
    answer.extend_from_slice(&ready());
    db.send(&answer).await;
    let got = client.until_ready().await;
    let (code, message) = fields(&got[0]);
    assert_eq!(code, "42501");
    assert!(message.starts_with("phigate: "), "{message}");
    assert!(message.contains("notes"), "{message}");
}

#[tokio::test]
async fn a_statement_whose_close_the_database_skipped_is_still_known() {
    let (mut client, mut db) = session().await;
    // Prepare "s" and let the database confirm it.
    client
        .send(&msg(|o| {
            write::parse(o, "s", "SELECT body FROM notes");
            o.extend_from_slice(&simple(b'S'));
        }))
        .await;
    assert_eq!(db.next().await.tag(), b'P');
    assert_eq!(db.next().await.tag(), b'S');
    db.send(&[simple(b'1'), ready()].concat()).await;
    client.until_ready().await;
    // A failing Describe, then a Close of "s", in one pipeline: the database skips the Close.
    client
        .send(&msg(|o| {
            write::describe_statement(o, "nope");
            o.extend_from_slice(&msg(|c| {
                c.extend_from_slice(b"C");
                c.extend_from_slice(&7i32.to_be_bytes());
                c.extend_from_slice(b"Ss\0");
            }));
            o.extend_from_slice(&simple(b'S'));
        }))
        .await;
    for _ in 0..3 {
        db.next().await;
    }
    db.send(
        &[
            error("26000", "prepared statement \"nope\" does not exist"),
            ready(),
        ]
        .concat(),
    )
    .await;
    client.until_ready().await;
    // "s" still exists for the database: a Bind of it is forwarded (not refused as unknown).
    client
        .send(&msg(|o| {
            write::bind(o, "", "s", &[0, 0, 0, 0, 0, 0]);
            o.extend_from_slice(&simple(b'S'));
        }))
        .await;
    let bind = db.next().await;
    let FrontendMessage::Bind(b) = FrontendMessage::decode(&bind).expect("bind") else {
        panic!("a Bind");
    };
    assert_eq!(b.statement, "s", "forwarded as the client sent it");
}

#[tokio::test]
async fn a_bind_of_a_statement_the_session_never_prepared_is_refused() {
    let (mut client, mut db) = session().await;
    client
        .send(&msg(|o| {
            write::bind(o, "", "ghost", &[0, 0, 0, 0, 0, 0]);
            o.extend_from_slice(&simple(b'S'));
        }))
        .await;
    let bind = db.next().await;
    let FrontendMessage::Bind(b) = FrontendMessage::decode(&bind).expect("bind") else {
        panic!("a Bind");
    };
    assert!(b.statement.starts_with("phigate_denied_"), "a substitute");
    let token = b.statement.to_owned();
    db.next().await;
    db.send(
        &[
            error(
                "26000",
                &format!("prepared statement \"{token}\" does not exist"),
            ),
            ready(),
        ]
        .concat(),
    )
    .await;
    let got = client.until_ready().await;
    let (code, message) = fields(&got[0]);
    assert_eq!(code, "26000");
    assert!(message.contains("\"ghost\" does not exist"), "{message}");
}
