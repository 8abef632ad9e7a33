//! The statement cache through the exchange: what goes to the database for each message of a
//! driver's unnamed statements, and what the client receives, without a database (answers
//! written out as `postgres.c` gives them). The same paths against a real PostgreSQL are in
//! `tests/statement_cache.rs`.

use super::*;
use phigate_wire::backend::Notice;
use phigate_wire::frontend::FrontendMessage;

fn raw(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn answer(tag: u8, body: &[u8]) -> Frame {
    Frame::from_raw(bytes::Bytes::from(raw(tag, body))).expect("frame")
}

fn error(code: &str, message: &str) -> Frame {
    let mut out = BytesMut::new();
    Notice::error(code, message).write(&mut out);
    Frame::from_raw(out.freeze()).expect("frame")
}

/// What the database received, message by message, as (tag, first name in the body).
fn sent(out: &mut BytesMut) -> Vec<(char, String)> {
    let mut reader = phigate_wire::FrameReader::with_buffer(out.split(), 1 << 20);
    let mut msgs = Vec::new();
    while let Some(f) = reader.next_frame().expect("frame") {
        let name = match FrontendMessage::decode(&f).expect("message") {
            FrontendMessage::Parse(p) => p.name.to_owned(),
            FrontendMessage::Bind(b) => b.statement.to_owned(),
            FrontendMessage::Describe { name, .. } | FrontendMessage::Close { name, .. } => {
                name.to_owned()
            }
            _ => String::new(),
        };
        msgs.push((f.tag() as char, name));
    }
    msgs
}

struct Driver {
    ex: Exchange,
    out: BytesMut,
}

impl Driver {
    fn new() -> Driver {
        Driver {
            ex: Exchange::new(crate::config::DEFAULT_STATEMENT_CACHE, "n0"),
            out: BytesMut::new(),
        }
    }

    fn parse(&mut self, sql: &str) -> Arc<Prepared> {
        let s = Prepared::new(Arc::from(sql), Arc::new(phigate_sql::analyze(sql)), 1);
        self.parse_as(s.clone());
        s
    }

    fn parse_as(&mut self, s: Arc<Prepared>) {
        let mut body = vec![0];
        body.extend_from_slice(s.sql.as_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        let sent = Sent::Parse {
            name: String::new(),
            statement: Some(s),
        };
        self.ex.send(sent, None, &raw(b'P', &body), &mut self.out);
    }

    fn bind(&mut self) {
        let bound = self.ex.statement("").map(|statement| {
            Arc::new(Portal {
                statement: statement.clone(),
                params: Vec::new(),
            })
        });
        let sent = Sent::Bind {
            portal: String::new(),
            bound,
        };
        let body = [0, 0, 0, 0, 0, 0, 0, 0];
        self.ex.send(sent, None, &raw(b'B', &body), &mut self.out);
    }

    fn describe_statement(&mut self) {
        self.ex
            .send(Sent::Describe, None, &raw(b'D', b"S\0"), &mut self.out);
    }

    fn execute(&mut self) {
        let sent = Sent::Execute {
            portal: String::new(),
        };
        self.ex
            .send(sent, None, &raw(b'E', &[0, 0, 0, 0, 0]), &mut self.out);
    }

    fn sync(&mut self) {
        self.ex
            .send(Sent::Sync, None, &raw(b'S', b""), &mut self.out);
    }

    /// One execution as pgbench -M extended sends it: Parse, Bind, Execute, Sync of the
    /// unnamed statement.
    fn run(&mut self, sql: &str) -> Vec<(char, String)> {
        self.parse(sql);
        self.bind();
        self.execute();
        self.sync();
        sent(&mut self.out)
    }

    /// A simple Query of one statement, doing `effect` to the session's names.
    fn query(&mut self, effect: Option<Effect>) {
        self.ex.push(
            Sent::Query {
                effects: vec![effect],
            },
            None,
            None,
        );
    }

    /// `sql` prepared as "d", bound to portal "p" and executed, then Sync; answered with
    /// `tag`. Its execution does `effect` to the session's names.
    fn execute_named(&mut self, sql: &str, effect: Effect, tag: &str) {
        let statement = Prepared::with_effect(
            Arc::from(sql),
            Arc::new(phigate_sql::analyze(sql)),
            1,
            Some(effect),
        );
        self.ex.push(
            Sent::Parse {
                name: "d".into(),
                statement: Some(statement.clone()),
            },
            None,
            None,
        );
        self.ex.push(
            Sent::Bind {
                portal: "p".into(),
                bound: Some(Arc::new(Portal {
                    statement,
                    params: Vec::new(),
                })),
            },
            None,
            None,
        );
        self.ex
            .push(Sent::Execute { portal: "p".into() }, None, None);
        self.sync();
        let tag = format!("{tag}\0");
        self.answers(&[
            answer(b'1', b""),
            answer(b'2', b""),
            answer(b'C', tag.as_bytes()),
            answer(b'Z', b"I"),
        ]);
    }

    /// The first two executions of READ: as sent, then the create under `phigate_stmt_n0_<n>`.
    fn warm(&mut self, n: u32) {
        let name = format!("phigate_stmt_n0_{n}");
        self.run(READ);
        assert_eq!(self.answers(&ok_run()), "12DCZ");
        assert_eq!(
            self.run(READ),
            [
                ('C', "".into()),
                p(&name),
                ('B', name.clone()),
                ('E', "".into()),
                ('S', "".into())
            ]
        );
        assert_eq!(self.answers(&created_run()), "-12DCZ");
    }

    /// The database's answers; what the client receives, by tag ('-': nothing).
    fn answers(&mut self, frames: &[Frame]) -> String {
        let mut seen = String::new();
        for f in frames {
            match self.ex.observe(f).rewrite {
                Some(b) if b.is_empty() => seen.push('-'),
                Some(b) => seen.push(b[0] as char),
                None => seen.push(f.tag() as char),
            }
        }
        assert!(!self.ex.desynchronised());
        seen
    }
}

fn ok_run() -> Vec<Frame> {
    vec![
        answer(b'1', b""),
        answer(b'2', b""),
        answer(b'D', &[0, 1, 0, 0, 0, 1, b'1']),
        answer(b'C', b"SELECT 1\0"),
        answer(b'Z', b"I"),
    ]
}

/// The same run when the Parse was a create: the gateway's Close of the unnamed statement is
/// answered first (not the client's to see).
fn created_run() -> Vec<Frame> {
    let mut frames = ok_run();
    frames.insert(0, answer(b'3', b""));
    frames
}

/// The same run when the Parse was sent as a Close of the unnamed statement.
fn reused_run() -> Vec<Frame> {
    let mut frames = ok_run();
    frames[0] = answer(b'3', b"");
    frames
}

const READ: &str = "SELECT * FROM patients WHERE id = $1";

fn p(name: &str) -> (char, String) {
    ('P', name.into())
}

#[test]
fn a_repeated_unnamed_statement_is_prepared_once_and_reused() {
    let mut d = Driver::new();
    let name = "phigate_stmt_n0_1".to_owned();
    // First sighting: as sent.
    assert_eq!(
        d.run(READ),
        [p(""), ('B', "".into()), ('E', "".into()), ('S', "".into())]
    );
    assert_eq!(d.answers(&ok_run()), "12DCZ");
    // Second: prepared under the cache's name, the database's unnamed statement closed ahead
    // of it; the client sees its ParseComplete, not that CloseComplete.
    assert_eq!(
        d.run(READ),
        [
            ('C', "".into()),
            p(&name),
            ('B', name.clone()),
            ('E', "".into()),
            ('S', "".into())
        ]
    );
    assert_eq!(d.answers(&created_run()), "-12DCZ");
    assert_eq!(d.ex.cached_count(), 1);
    // From then on: no Parse, a Close of the unnamed statement whose CloseComplete is the
    // client's ParseComplete.
    for _ in 0..3 {
        assert_eq!(
            d.run(READ),
            [
                ('C', "".into()),
                ('B', name.clone()),
                ('E', "".into()),
                ('S', "".into())
            ]
        );
        assert_eq!(d.answers(&reused_run()), "12DCZ");
    }
    // A Describe of the unnamed statement goes to the cached name too.
    d.parse(READ);
    d.describe_statement();
    d.sync();
    assert_eq!(
        sent(&mut d.out),
        [('C', "".into()), ('D', name.clone()), ('S', "".into())]
    );
    let described = [
        answer(b'3', b""),
        answer(b't', &[0, 0]),
        answer(b'n', b""),
        answer(b'Z', b"I"),
    ];
    assert_eq!(d.answers(&described), "1tnZ");
    assert!(d.ex.at_rest());
}

#[test]
fn what_is_not_cached() {
    let mut d = Driver::new();
    for sql in [
        "SELECT 'é'",
        // Constants are read when a statement is parsed: a prepared one would keep the value.
        "SELECT 'now'::timestamptz",
        "SELECT * FROM visits WHERE day = date '2024-01-02'",
        "SELECT $$x$$",
        "SELECT 1; SELECT 2",
        "BEGIN",
        "SET search_path = public",
        "DISCARD ALL",
    ] {
        d.ex = Exchange::new(crate::config::DEFAULT_STATEMENT_CACHE, "n0");
        for _ in 0..3 {
            let msgs = d.run(sql);
            assert_eq!(msgs[0], p(""), "{sql}");
        }
    }
    // An approved statement runs once: it is never cached.
    let mut d = Driver::new();
    for _ in 0..3 {
        let s = Prepared::approved(
            Arc::from(READ),
            Arc::new(phigate_sql::analyze(READ)),
            1,
            "r1",
            None,
        );
        d.parse_as(s);
        assert_eq!(sent(&mut d.out), [p("")]);
    }
    // Turned off.
    let mut d = Driver::new();
    d.ex = Exchange::new(0, "n0");
    for _ in 0..3 {
        assert_eq!(d.run(READ)[0], p(""));
        d.answers(&ok_run());
    }
}

#[test]
fn a_create_that_fails_or_is_skipped_leaves_nothing_cached() {
    let mut d = Driver::new();
    d.run(READ);
    d.answers(&ok_run());
    // The second sighting's Parse fails: the rest up to Sync is skipped.
    assert_eq!(d.run(READ)[1], p("phigate_stmt_n0_1"));
    let failed = [
        error("42P01", "relation does not exist"),
        answer(b'Z', b"I"),
    ];
    let mut answers = failed.to_vec();
    answers.insert(0, answer(b'3', b""));
    assert_eq!(d.answers(&answers), "-EZ");
    assert_eq!(d.ex.cached_count(), 0);
    // After an earlier failure in the same exchange, a create is skipped with it.
    d.run(READ);
    d.answers(&ok_run());
    d.parse("SELECT broken");
    d.parse(READ);
    d.sync();
    let msgs = sent(&mut d.out);
    assert_eq!(msgs[1..3], [('C', "".into()), p("phigate_stmt_n0_2")]);
    assert_eq!(d.answers(&failed), "EZ");
    assert_eq!(
        d.ex.cached_count(),
        0,
        "skipped: the name was never prepared"
    );
    // Nothing in flight refers to a name the database does not hold: prepared afresh.
    d.warm(3);
    assert_eq!(d.ex.cached_count(), 1);
}

#[test]
fn a_reuse_skipped_after_an_error_is_skipped_like_the_parse() {
    let mut d = Driver::new();
    d.warm(1);
    d.parse("SELECT broken");
    d.parse(READ);
    d.bind();
    d.execute();
    d.sync();
    let msgs = sent(&mut d.out);
    assert_eq!(msgs[1], ('C', "".into()));
    let failed = [error("42703", "column does not exist"), answer(b'Z', b"I")];
    assert_eq!(d.answers(&failed), "EZ");
    // Still cached: the next run reuses it.
    assert_eq!(d.run(READ)[0], ('C', "".into()));
    assert_eq!(d.answers(&reused_run()), "12DCZ");
}

#[test]
fn a_changed_result_type_drops_the_name_and_closes_it_unseen() {
    let mut d = Driver::new();
    d.warm(1);
    d.run(READ);
    let refused = [
        answer(b'3', b""),
        error("0A000", "cached plan must not change result type"),
        answer(b'Z', b"I"),
    ];
    assert_eq!(d.answers(&refused), "1EZ");
    assert_eq!(d.ex.cached_count(), 0);
    // The client's unnamed statement still runs as that name: it is not closed yet. The text
    // is seen again before it is cached again.
    assert_eq!(
        d.run(READ),
        [p(""), ('B', "".into()), ('E', "".into()), ('S', "".into())]
    );
    assert_eq!(d.answers(&ok_run()), "12DCZ");
    // Once nothing is in flight and the unnamed statement is another, the name is closed ahead
    // of the next message; the client does not see that CloseComplete.
    let msgs = d.run(READ);
    assert_eq!(
        msgs,
        [
            ('C', "phigate_stmt_n0_1".into()),
            ('C', "".into()),
            p("phigate_stmt_n0_2"),
            ('B', "phigate_stmt_n0_2".into()),
            ('E', "".into()),
            ('S', "".into())
        ]
    );
    let mut answers = created_run();
    answers.insert(0, answer(b'3', b""));
    assert_eq!(d.answers(&answers), "--12DCZ");
    assert!(d.ex.at_rest());
}

#[test]
fn nothing_is_closed_while_messages_are_in_flight() {
    let mut d = Driver::new();
    d.warm(1);
    // DDL releases the name while a pipeline is still unanswered.
    d.run(READ);
    d.ex.note_ddl();
    d.query(None);
    d.run("COPY t FROM STDIN");
    assert!(
        !sent(&mut d.out).iter().any(|m| m.0 == 'C'),
        "no Close behind messages in flight"
    );
    let mut answers = reused_run();
    answers.extend([answer(b'C', b"CREATE TABLE\0"), answer(b'Z', b"I")]);
    answers.extend(ok_run());
    d.answers(&answers);
    assert!(d.ex.at_rest());
    // Nothing in flight: the next message takes the Close along, first.
    d.parse("SELECT 1");
    assert_eq!(sent(&mut d.out)[0], ('C', "phigate_stmt_n0_1".into()));
}

#[test]
fn a_create_in_flight_when_the_cache_empties_is_closed_once_answered() {
    let mut d = Driver::new();
    d.run(READ);
    d.answers(&ok_run());
    assert_eq!(d.run(READ)[1], p("phigate_stmt_n0_1"));
    // The session's DDL goes before the create is answered.
    d.ex.note_ddl();
    d.query(None);
    let mut answers = created_run();
    answers.extend([answer(b'C', b"CREATE TABLE\0"), answer(b'Z', b"I")]);
    d.answers(&answers);
    assert_eq!(d.ex.cached_count(), 0);
    d.parse("SELECT 1");
    assert_eq!(sent(&mut d.out)[0], ('C', "phigate_stmt_n0_1".into()));
}

#[test]
fn during_the_sessions_ddl_and_in_a_failed_transaction_parses_go_as_sent() {
    let mut d = Driver::new();
    d.warm(1);
    // BEGIN; CREATE TEMP TABLE patients (...): until the transaction ends, no reuse (the
    // temporary table shadows what the plan reads).
    d.ex.note_ddl();
    d.query(None);
    d.answers(&[answer(b'C', b"CREATE TABLE\0"), answer(b'Z', b"T")]);
    for i in 0..3 {
        let msgs = d.run(READ);
        // The released name is closed ahead of the first.
        let closes = usize::from(i == 0);
        assert_eq!(msgs.len(), 4 + closes, "{msgs:?}");
        assert_eq!(msgs[closes], p(""));
        let mut answers = vec![
            answer(b'1', b""),
            answer(b'2', b""),
            answer(b'C', b"SELECT 0\0"),
            answer(b'Z', b"T"),
        ];
        if i == 0 {
            answers.insert(0, answer(b'3', b""));
        }
        d.answers(&answers);
    }
    d.query(None);
    d.answers(&[answer(b'C', b"ROLLBACK\0"), answer(b'Z', b"I")]);
    d.run(READ);
    d.answers(&ok_run());
    assert_eq!(d.run(READ)[1], p("phigate_stmt_n0_2"), "in use again");
    d.answers(&created_run());
    // A failed transaction: the Parse fails there (25P02), as it would uncached.
    d.query(None);
    d.answers(&[error("22012", "division by zero"), answer(b'Z', b"E")]);
    assert_eq!(d.run(READ)[0], p(""));
}

#[test]
fn discard_all_and_the_sessions_own_ddl_empty_the_cache() {
    let mut d = Driver::new();
    d.warm(1);
    assert_eq!(d.ex.cached_count(), 1);
    d.query(Some(Effect::DiscardAll));
    assert_eq!(d.ex.cached_count(), 0);
    d.answers(&[answer(b'C', b"DISCARD ALL\0"), answer(b'Z', b"I")]);
    // Nothing left to close: DISCARD ALL dropped it.
    assert_eq!(d.run(READ)[..1], [p("")]);
    d.answers(&ok_run());
    assert_eq!(d.run(READ)[1], p("phigate_stmt_n0_2"));
    d.answers(&created_run());
    // DDL of the session's own, once committed: the cached names are closed.
    d.ex.note_ddl();
    d.query(None);
    d.answers(&[answer(b'C', b"ALTER TABLE\0"), answer(b'Z', b"I")]);
    assert_eq!(d.ex.cached_count(), 0);
    let msgs = d.run(READ);
    assert!(
        msgs.contains(&('C', "phigate_stmt_n0_2".into())),
        "{msgs:?}"
    );
}

#[test]
fn a_name_the_database_dropped_behind_the_gateway_leaves_the_cache() {
    let mut d = Driver::new();
    d.warm(1);
    // Something dropped it (a DEALLOCATE ALL inside a function): the Bind fails once.
    d.run(READ);
    let gone = [
        answer(b'3', b""),
        error("26000", "prepared statement does not exist"),
        answer(b'Z', b"I"),
    ];
    assert_eq!(d.answers(&gone), "1EZ");
    assert_eq!(d.ex.cached_count(), 0);
    assert_eq!(d.run(READ)[0], p(""), "seen afresh");
}

#[test]
fn parameter_types_of_any_oid_are_cached() {
    let mut d = Driver::new();
    // Parse with one parameter typed 1700 (numeric: 0x06A4, a byte above 0x7f).
    let mut body = vec![0];
    body.extend_from_slice(b"SELECT $1::numeric\0");
    body.extend_from_slice(&[0, 1, 0, 0, 0x06, 0xA4]);
    for _ in 0..2 {
        let s = Prepared::new(
            Arc::from("SELECT $1::numeric"),
            Arc::new(phigate_sql::analyze("SELECT $1::numeric")),
            1,
        );
        let sent = Sent::Parse {
            name: String::new(),
            statement: Some(s),
        };
        d.ex.send(sent, None, &raw(b'P', &body), &mut d.out);
    }
    let msgs = sent(&mut d.out);
    assert_eq!(msgs[2], p("phigate_stmt_n0_1"), "{msgs:?}");
}

#[test]
fn deallocate_all_and_discard_all_keep_the_unnamed_statement() {
    // PostgreSQL's DropAllPreparedStatements drops the named statements only: sent through
    // Parse, Bind, Execute (not a simple Query, which drops the unnamed one itself), the
    // unnamed statement stays, and the gateway must still know what it is.
    for (effect, tag) in [
        (Effect::DeallocateAll, "DEALLOCATE ALL"),
        (Effect::DiscardAll, "DISCARD ALL"),
    ] {
        let mut d = Driver::new();
        let s = d.parse("SELECT 1");
        d.sync();
        d.answers(&[answer(b'1', b""), answer(b'Z', b"I")]);
        d.execute_named(tag, effect, tag);
        assert!(
            d.ex.statement("").is_some_and(|p| Arc::ptr_eq(p, &s)),
            "the unnamed statement is still SELECT 1"
        );
        assert!(d.ex.statement("d").is_none());
    }
}

#[test]
fn discard_all_takes_a_cached_unnamed_statement_with_it() {
    // The client's unnamed statement lives only under the cache's name, which DISCARD ALL
    // drops: the mirror drops it too (a Bind of it is then refused as unknown, not sent to a
    // name that is gone).
    let mut d = Driver::new();
    d.warm(1);
    d.execute_named("DISCARD ALL", Effect::DiscardAll, "DISCARD ALL");
    assert!(d.ex.statement("").is_none());
    assert_eq!(d.ex.cached_count(), 0);
}
