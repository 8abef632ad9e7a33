//! Scripted message sequences, without a database: what PostgreSQL answers is written out by
//! hand, as `postgres.c` would answer it.

use super::*;
use phigate_wire::backend::Notice;

fn stmt(sql: &str) -> Arc<Prepared> {
    Prepared::new(Arc::from(sql), Arc::new(phigate_sql::analyze(sql)), 1)
}

fn frame(tag: u8, body: &[u8]) -> Frame {
    let mut raw = vec![tag];
    raw.extend(((body.len() + 4) as i32).to_be_bytes());
    raw.extend_from_slice(body);
    Frame::from_raw(bytes::Bytes::from(raw)).expect("frame")
}

fn parse_complete() -> Frame {
    frame(b'1', b"")
}
fn bind_complete() -> Frame {
    frame(b'2', b"")
}
fn close_complete() -> Frame {
    frame(b'3', b"")
}
fn ready(status: u8) -> Frame {
    frame(b'Z', &[status])
}
fn complete(tag: &str) -> Frame {
    let mut b = tag.as_bytes().to_vec();
    b.push(0);
    frame(b'C', &b)
}
fn data_row() -> Frame {
    frame(b'D', &[0, 1, 0, 0, 0, 1, b'1'])
}
fn error(code: &str, message: &str) -> Frame {
    let mut out = BytesMut::new();
    Notice::error(code, message).write(&mut out);
    Frame::from_raw(out.freeze()).expect("frame")
}
fn copy_in() -> Frame {
    frame(b'G', &[0, 0, 0])
}

fn unit(n: u64) -> Option<Unit> {
    Some(Unit {
        n,
        started: std::time::Instant::now(),
    })
}

fn parse(ex: &mut Exchange, name: &str, s: &Arc<Prepared>) {
    ex.push(
        Sent::Parse {
            name: name.into(),
            statement: Some(s.clone()),
        },
        None,
        None,
    );
}

fn bind(ex: &mut Exchange, portal: &str, s: &Arc<Prepared>) {
    ex.push(
        Sent::Bind {
            portal: portal.into(),
            bound: Some(Arc::new(Portal {
                statement: s.clone(),
                params: Vec::new(),
            })),
        },
        None,
        None,
    );
}

fn sql_of(ex: &Exchange, name: &str) -> Option<String> {
    ex.statement(name).map(|s| s.sql.to_string())
}

#[test]
fn a_pipeline_is_answered_in_order_and_confirms_its_statements() {
    let mut ex = Exchange::default();
    let s = stmt("SELECT 1");
    parse(&mut ex, "s1", &s);
    bind(&mut ex, "", &s);
    ex.push(Sent::Describe, None, None);
    ex.push(Sent::Execute { portal: "".into() }, None, unit(1));
    ex.push(Sent::Sync, None, None);
    assert!(!ex.idle());
    assert_eq!(sql_of(&ex, "s1").as_deref(), Some("SELECT 1"), "projected");
    for f in [
        parse_complete(),
        bind_complete(),
        frame(b'T', &[0, 0]),
        data_row(),
        data_row(),
        complete("SELECT 2"),
        ready(b'I'),
    ] {
        assert!(ex.observe(&f).rewrite.is_none());
    }
    assert!(ex.at_rest());
    assert_eq!(ex.statements.confirmed.len(), 1);
    assert_eq!(ex.portal_count(), 0, "portals end with the transaction");
    let finished = ex.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].n, 1);
    assert_eq!(finished[0].sqlstate, "00000");
    assert_eq!(finished[0].rows, Some(2));
    assert_eq!(finished[0].command.as_deref(), Some("SELECT"));
}

#[test]
fn after_an_error_the_rest_of_the_pipeline_until_sync_never_happened() {
    let mut ex = Exchange::default();
    let a = stmt("DELETE FROM notes");
    parse(&mut ex, "a", &a);
    ex.push(Sent::Sync, None, None);
    ex.observe(&parse_complete());
    ex.observe(&ready(b'I'));
    // A failing Describe, then a Close of "a" and a Parse of "b" in the same pipeline: the
    // database skips both.
    ex.push(Sent::Describe, None, unit(1));
    ex.push(
        Sent::Close {
            portal: false,
            name: "a".into(),
        },
        None,
        None,
    );
    parse(&mut ex, "b", &stmt("SELECT 2"));
    ex.push(
        Sent::Bind {
            portal: "".into(),
            bound: None,
        },
        None,
        unit(2),
    );
    ex.push(Sent::Sync, None, None);
    assert!(sql_of(&ex, "a").is_none(), "projected as closed");
    assert!(sql_of(&ex, "b").is_some(), "projected as prepared");
    ex.observe(&error("26000", "prepared statement \"x\" does not exist"));
    assert_eq!(
        sql_of(&ex, "a").as_deref(),
        Some("DELETE FROM notes"),
        "the skipped Close left it in place"
    );
    assert!(
        sql_of(&ex, "b").is_none(),
        "the skipped Parse created nothing"
    );
    ex.observe(&ready(b'I'));
    assert!(ex.at_rest());
    let finished = ex.take_finished();
    assert_eq!(
        finished
            .iter()
            .map(|f| (f.n, f.sqlstate.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "26000"), (2, "26000")],
        "the failed message and the skipped one, with the error that skipped it"
    );
}

#[test]
fn a_name_whose_close_may_be_skipped_denotes_both_statements() {
    let mut ex = Exchange::default();
    let old = stmt("DELETE FROM notes");
    parse(&mut ex, "s", &old);
    ex.push(Sent::Sync, None, None);
    ex.observe(&parse_complete());
    ex.observe(&ready(b'I'));
    // Close and re-Parse in one exchange, a Bind in the next, all before any answer.
    ex.push(
        Sent::Close {
            portal: false,
            name: "s".into(),
        },
        None,
        None,
    );
    let new = stmt("SELECT 1");
    parse(&mut ex, "s", &new);
    ex.push(Sent::Sync, None, None);
    let c = ex.statement_candidates("s");
    assert_eq!(
        c.len(),
        2,
        "the Close may fail, so the old statement may run"
    );
    assert!(c.iter().any(|s| Arc::ptr_eq(s, &old)));
    assert!(c.iter().any(|s| Arc::ptr_eq(s, &new)));
    // Within the Parse's own exchange, only the new one can run.
    let mut ex2 = Exchange::default();
    parse(&mut ex2, "", &old);
    ex2.push(Sent::Sync, None, None);
    ex2.observe(&parse_complete());
    ex2.observe(&ready(b'I'));
    parse(&mut ex2, "", &new);
    let c = ex2.statement_candidates("");
    assert_eq!(c.len(), 1);
    assert!(Arc::ptr_eq(&c[0], &new));
}

#[test]
fn an_approval_is_used_once_even_when_the_close_was_skipped() {
    let mut ex = Exchange::default();
    let approved = Prepared::approved(
        Arc::from("UPDATE notes SET body = 'x'"),
        Arc::new(phigate_sql::analyze("UPDATE notes SET body = 'x'")),
        1,
        "r-1",
        None,
    );
    parse(&mut ex, "s", &approved);
    ex.push(Sent::Sync, None, None);
    ex.observe(&parse_complete());
    ex.observe(&ready(b'I'));
    assert!(approved.take_use(), "the approved execution");
    ex.push(Sent::Describe, None, None);
    ex.push(
        Sent::Close {
            portal: false,
            name: "s".into(),
        },
        None,
        None,
    );
    ex.push(Sent::Sync, None, None);
    ex.observe(&error("26000", "no such statement"));
    ex.observe(&ready(b'I'));
    let still = ex.statement("s").expect("the database still holds it");
    assert!(!still.take_use(), "and its approval is spent");
}

#[test]
fn copy_in_through_the_extended_protocol_swallows_the_sync_sent_with_it() {
    let mut ex = Exchange::default();
    let s = stmt("COPY notes FROM STDIN");
    parse(&mut ex, "", &s);
    bind(&mut ex, "", &s);
    ex.push(Sent::Execute { portal: "".into() }, None, unit(1));
    ex.push(Sent::Sync, None, None);
    ex.observe(&parse_complete());
    ex.observe(&bind_complete());
    ex.observe(&copy_in());
    assert!(!ex.idle(), "the COPY is running");
    // The client sends its data; a Sync in copy mode is read and ignored.
    ex.push(Sent::Silent, None, None);
    ex.push(Sent::Sync, None, None);
    ex.push(Sent::CopyEnd, None, None);
    ex.push(Sent::Sync, None, None);
    ex.observe(&complete("COPY 3"));
    assert!(!ex.idle(), "the last Sync is still to be answered");
    ex.observe(&ready(b'I'));
    assert!(ex.at_rest());
    let f = ex.take_finished();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].rows, Some(3));
}

#[test]
fn a_copy_end_queued_before_the_copy_began_ends_it() {
    let mut ex = Exchange::default();
    ex.push(
        Sent::Query {
            effects: vec![None],
        },
        None,
        unit(1),
    );
    ex.push(Sent::Silent, None, None);
    ex.push(Sent::CopyEnd, None, None);
    ex.push(
        Sent::Query {
            effects: vec![None],
        },
        None,
        unit(2),
    );
    ex.observe(&copy_in());
    ex.observe(&complete("COPY 1"));
    ex.observe(&ready(b'I'));
    assert!(!ex.idle(), "the second Query is still to come");
    ex.observe(&complete("SELECT 1"));
    ex.observe(&ready(b'I'));
    assert!(ex.at_rest());
    // A COPY that fails before it begins: its CopyDone is ignored by the database.
    ex.push(
        Sent::Query {
            effects: vec![None],
        },
        None,
        unit(3),
    );
    ex.push(Sent::CopyEnd, None, None);
    ex.observe(&error("42501", "permission denied for table notes"));
    ex.observe(&ready(b'I'));
    assert!(ex.at_rest());
}

#[test]
fn a_message_other_than_copy_data_fails_the_copy_and_is_consumed() {
    let mut ex = Exchange::default();
    ex.push(
        Sent::Query {
            effects: vec![None],
        },
        None,
        unit(1),
    );
    ex.observe(&copy_in());
    let s = stmt("SELECT 1");
    parse(&mut ex, "p", &s);
    assert!(
        ex.statement("p").is_none(),
        "consumed by the COPY: never prepared"
    );
    ex.observe(&error(
        "08P01",
        "unexpected message type 0x50 during COPY from stdin",
    ));
    ex.observe(&ready(b'I'));
    assert!(ex.at_rest());
}

#[test]
fn discard_all_and_deallocate_are_confirmed_by_their_command_tags() {
    let mut ex = Exchange::default();
    parse(&mut ex, "a", &stmt("SELECT 1"));
    ex.push(
        Sent::Query {
            effects: vec![Some(Effect::Prepare {
                name: "b".into(),
                statement: stmt("SELECT 2"),
            })],
        },
        None,
        None,
    );
    ex.push(Sent::Sync, None, None);
    ex.observe(&parse_complete());
    ex.observe(&complete("PREPARE"));
    ex.observe(&ready(b'I'));
    ex.observe(&ready(b'I'));
    assert!(ex.statement("a").is_some() && ex.statement("b").is_some());
    ex.push(
        Sent::Query {
            effects: vec![Some(Effect::DiscardAll)],
        },
        None,
        None,
    );
    assert_eq!(ex.prepared_count(), 0, "projected");
    // A re-Parse of the name right behind it is the new statement.
    let new = stmt("SELECT ssn FROM patients");
    parse(&mut ex, "a", &new);
    assert_eq!(
        sql_of(&ex, "a").as_deref(),
        Some("SELECT ssn FROM patients")
    );
    ex.observe(&complete("DISCARD ALL"));
    ex.observe(&ready(b'I'));
    ex.observe(&parse_complete());
    assert_eq!(
        sql_of(&ex, "a").as_deref(),
        Some("SELECT ssn FROM patients")
    );
    assert!(ex.statement("b").is_none());
    assert_eq!(ex.statements.confirmed.len(), 1);
}

#[test]
fn statements_after_an_error_in_a_query_never_ran() {
    let mut ex = Exchange::default();
    ex.push(
        Sent::Query {
            effects: vec![
                Some(Effect::Prepare {
                    name: "a".into(),
                    statement: stmt("SELECT 1"),
                }),
                None,
                Some(Effect::Prepare {
                    name: "b".into(),
                    statement: stmt("SELECT 2"),
                }),
            ],
        },
        None,
        unit(1),
    );
    assert!(ex.statement("b").is_some(), "projected");
    ex.observe(&complete("PREPARE"));
    ex.observe(&error("22012", "division by zero"));
    ex.observe(&ready(b'I'));
    assert!(ex.statement("a").is_some());
    assert!(ex.statement("b").is_none(), "never ran");
    let f = ex.take_finished();
    assert_eq!(f[0].sqlstate, "22012");
}

#[test]
fn a_failed_unnamed_parse_drops_the_unnamed_statement() {
    let mut ex = Exchange::default();
    parse(&mut ex, "", &stmt("SELECT 1"));
    ex.push(Sent::Sync, None, None);
    ex.observe(&parse_complete());
    ex.observe(&ready(b'I'));
    ex.push(
        Sent::Parse {
            name: "".into(),
            statement: None,
        },
        Some(("phigate_denied_x_1".into(), refusal())),
        unit(1),
    );
    assert!(ex.statement("").is_none());
    assert!(ex.was_refused(""));
    ex.push(Sent::Sync, None, None);
    let out = ex.observe(&error(
        "42601",
        "syntax error at or near \"phigate_denied_x_1\"",
    ));
    let rewritten = out
        .rewrite
        .expect("the refusal replaces the database's error");
    let f = Frame::from_raw(rewritten.freeze()).expect("frame");
    let fields = Fields::decode(&f).expect("fields");
    assert_eq!(fields.code(), Some("42501"));
    ex.observe(&ready(b'I'));
    assert!(ex.statement("").is_none());
    assert_eq!(ex.take_finished()[0].sqlstate, "42501");
}

#[test]
fn an_error_that_does_not_name_the_token_is_the_databases_own() {
    let mut ex = Exchange::default();
    ex.push(
        Sent::Query { effects: vec![] },
        Some(("phigate_denied_x_2".into(), refusal())),
        None,
    );
    assert!(ex
        .observe(&error("57014", "canceling statement due to user request"))
        .rewrite
        .is_none());
}

#[test]
fn a_failing_implicit_commit_at_sync_keeps_the_next_exchange() {
    let mut ex = Exchange::default();
    ex.push(Sent::Execute { portal: "".into() }, None, unit(1));
    ex.push(Sent::Sync, None, None);
    ex.push(Sent::Execute { portal: "".into() }, None, unit(2));
    ex.push(Sent::Sync, None, None);
    ex.observe(&complete("INSERT 0 1"));
    ex.observe(&error("23503", "deferred constraint"));
    ex.observe(&ready(b'I'));
    assert!(!ex.idle(), "the second exchange is still in flight");
    ex.observe(&complete("INSERT 0 1"));
    ex.observe(&ready(b'I'));
    assert!(ex.at_rest());
    assert_eq!(ex.take_finished().len(), 2);
}

#[test]
fn in_flight_messages_are_bounded() {
    let mut ex = Exchange::default();
    for _ in 0..MAX_IN_FLIGHT {
        assert!(ex.has_room().is_ok());
        ex.push(Sent::Describe, None, None);
    }
    assert_eq!(ex.has_room(), Err(Full::InFlight));
}

#[test]
fn refused_names_are_bounded() {
    let mut ex = Exchange::default();
    for i in 0..(MAX_REFUSED_NAMES * 3) {
        ex.push(
            Sent::Parse {
                name: format!("n{i}"),
                statement: None,
            },
            None,
            None,
        );
    }
    assert!(ex.refused.len() <= MAX_REFUSED_NAMES);
}

#[test]
fn command_tags() {
    let t = |s: &str| command_tag(&complete(s));
    assert_eq!(t("SELECT 5"), Some(("SELECT".into(), Some(5))));
    assert_eq!(t("INSERT 0 3"), Some(("INSERT".into(), Some(3))));
    assert_eq!(t("DISCARD ALL"), Some(("DISCARD ALL".into(), None)));
    assert_eq!(t("BEGIN"), Some(("BEGIN".into(), None)));
}

fn refusal() -> Refusal {
    Refusal {
        rule: "r".into(),
        message: "phigate: refused".into(),
        hint: String::new(),
        sqlstate: phigate_wire::sqlstate::INSUFFICIENT_PRIVILEGE,
        position: None,
    }
}

#[test]
fn a_close_that_runs_removes_the_statement_for_good() {
    let mut ex = Exchange::default();
    parse(&mut ex, "s", &stmt("SELECT 1"));
    ex.push(
        Sent::Close {
            portal: false,
            name: "s".into(),
        },
        None,
        None,
    );
    ex.push(Sent::Sync, None, None);
    ex.observe(&parse_complete());
    ex.observe(&close_complete());
    ex.observe(&ready(b'I'));
    assert!(ex.statement("s").is_none());
    assert!(ex.statement_candidates("s").is_empty());
    assert!(ex.statements.confirmed.is_empty());
}

/// A pipeline whose error arrives before the client sends the rest of its exchange (libpq's
/// pipeline mode with flush requests): what it sends after the error, up to its Sync, is
/// skipped by the database unanswered, and the Sync's ReadyForQuery ends it.
#[test]
fn messages_sent_after_an_error_before_sync_are_skipped() {
    let mut ex = Exchange::default();
    let s = stmt("select * from doesnotexist");
    parse(&mut ex, "", &s);
    ex.push(Sent::Silent, None, None);
    ex.observe(&error("42P01", "relation \"doesnotexist\" does not exist"));
    assert!(ex.idle());
    let t = stmt("select 'aborted'");
    parse(&mut ex, "", &t);
    bind(&mut ex, "", &t);
    ex.push(Sent::Describe, None, None);
    ex.push(Sent::Execute { portal: "".into() }, None, unit(3));
    ex.push(Sent::Sync, None, None);
    ex.observe(&ready(b'I'));
    assert!(!ex.desynchronised());
    assert!(ex.idle());
    let finished = ex.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].sqlstate, "42P01");
    // The next exchange is answered as usual.
    let u = stmt("select 2");
    parse(&mut ex, "", &u);
    ex.push(Sent::Sync, None, None);
    ex.observe(&parse_complete());
    ex.observe(&ready(b'I'));
    assert!(!ex.desynchronised());
    assert_eq!(sql_of(&ex, "").as_deref(), Some("select 2"));
}
