//! What a hostile agent tries, by class (the security-hardening issue's letters name the
//! tests): each drives the real gateway in front of real PostgreSQL, most of them with the
//! protocol written by hand.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use phigate_testkit::raw::{
    bind, close_statement, describe_statement, execute, parse, sync, Msg, Raw,
};
use phigate_testkit::{Cluster, Gateway, GatewayOptions};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn cluster() -> &'static Cluster {
    phigate_testkit::clinic(
        "CREATE TABLE notes (id int PRIMARY KEY, body text);\n\
         INSERT INTO notes VALUES (1, 'n'), (2, 'n'), (3, 'n');",
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
actions = ["select", "write"]

[[role]]
name = "reviewer"

[[rule]]
name = "writes-need-approval"
roles = ["ai-agent"]
kinds = ["write", "lock"]
action = "require_approval"
"#;

fn gateway() -> Gateway {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = POLICY.into();
    opts.extra = "[approvals]\ntimeout_secs = 20\n".into();
    Gateway::start_with_identities(bin(), opts, &["agent", "clinician", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

fn db(sql: &str) -> String {
    cluster()
        .psql("clinic", sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .trim()
        .to_owned()
}

fn error_of(msgs: &[Msg]) -> Option<&Msg> {
    msgs.iter().find(|m| m.tag == b'E')
}

/// A: an approval covers exactly one execution of exactly what the reviewer saw — not a second
/// one through SQL `EXECUTE`, `EXPLAIN ANALYZE EXECUTE`, or a Bind after a Close the database
/// skipped because an earlier message of its pipeline failed.
#[test]
fn class_a_an_approval_covers_exactly_one_execution() {
    let gw = gateway();
    let reviewer = gw.token("reviewer").to_owned();
    db("UPDATE notes SET body = 'n' WHERE id = 1");
    let mut agent = Raw::login(&gw, "agent");
    agent.send(
        &[
            parse("s", "UPDATE notes SET body = body || 'x' WHERE id = 1"),
            sync(),
        ]
        .concat(),
    );
    let id = gw.approve_next(&reviewer, "checked").expect("approve");
    let msgs = agent.until_ready();
    assert!(error_of(&msgs).is_none(), "approved Parse: {msgs:?}");
    // The one execution the approval covers.
    agent.send(&[bind("", "s"), execute(""), sync()].concat());
    let msgs = agent.until_ready();
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    assert_eq!(db("SELECT body FROM notes WHERE id = 1"), "nx");

    for again in [
        "EXECUTE s",
        "EXPLAIN ANALYZE EXECUTE s",
        "explain (analyze) execute s",
    ] {
        let msgs = agent.query(again);
        let e = error_of(&msgs).unwrap_or_else(|| panic!("{again} ran: {msgs:?}"));
        assert_eq!(e.code(), "42501", "{again}: {}", e.message());
        assert!(
            e.message().contains("covered one execution"),
            "{}",
            e.message()
        );
    }
    // A Close the database skips (a Describe before it fails): the statement is still there,
    // and so is the spent approval.
    agent.send(
        &[
            describe_statement("no_such_statement"),
            close_statement("s"),
            sync(),
        ]
        .concat(),
    );
    let msgs = agent.until_ready();
    assert_eq!(error_of(&msgs).map(Msg::code).as_deref(), Some("26000"));
    agent.send(&[bind("", "s"), execute(""), sync()].concat());
    let msgs = agent.until_ready();
    let e = error_of(&msgs).expect("refused");
    assert_eq!(e.code(), "42501", "{}", e.message());
    assert_eq!(
        db("SELECT body FROM notes WHERE id = 1"),
        "nx",
        "review {id} covered one execution, and only one ran"
    );
}

/// A and G: after `DISCARD ALL`, a re-Parse of a name is a new statement: it is decided as
/// such, and the audit names what ran, not the statement the name used to have.
#[test]
fn class_g_the_audit_names_what_ran_after_discard_all() {
    let gw = gateway();
    let mut agent = Raw::login(&gw, "agent");
    agent.send(&[parse("q", "SELECT 1 AS harmless"), sync()].concat());
    assert!(error_of(&agent.until_ready()).is_none());
    let msgs = agent.query("DISCARD ALL");
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    agent.send(
        &[
            parse("q", "SELECT body FROM notes WHERE id = 2"),
            bind("", "q"),
            execute(""),
            sync(),
        ]
        .concat(),
    );
    let msgs = agent.until_ready();
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    assert_eq!(
        msgs.iter()
            .find(|m| m.tag == b'D')
            .and_then(Msg::first_column)
            .as_deref(),
        Some("n")
    );
    drop(agent);
    let ran = || {
        gw.audit_records("statement").into_iter().find(|r| {
            r["protocol"] == "extended"
                && r["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("SELECT body FROM notes"))
        })
    };
    let mut record = ran();
    for _ in 0..50 {
        if record.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        record = ran();
    }
    let record = record.unwrap_or_else(|| {
        panic!(
            "the Execute is not recorded with the statement that ran: {:#?}",
            gw.audit_records("statement")
        )
    });
    assert!(
        record["tables"].as_array().is_some_and(|t| t
            .iter()
            .any(|x| x.as_str().is_some_and(|x| x.contains("notes")))),
        "{record}"
    );
    let harmless = gw
        .audit_records("statement")
        .into_iter()
        .filter(|r| {
            r["protocol"] == "extended"
                && r["text"].as_str().is_some_and(|t| t.contains("harmless"))
        })
        .count();
    assert_eq!(harmless, 0, "nothing ran the old statement");
}

/// C: statement analysis never runs on the async workers for large texts: while two sessions
/// send statements of 600 KB, a third session's `SELECT 1` is answered throughout.
#[test]
fn class_c_one_session_cannot_starve_the_others() {
    let gw = gateway();
    let big = {
        let mut s = String::from("SELECT ARRAY[");
        while s.len() < 600_000 {
            s.push_str("1234567,");
        }
        s.push_str("0] AS a");
        s
    };
    let attackers: Vec<_> = (0..2)
        .map(|_| {
            let mut raw = Raw::login(&gw, "agent");
            let big = big.clone();
            std::thread::spawn(move || {
                for _ in 0..3 {
                    raw.query(&big);
                }
            })
        })
        .collect();
    let mut other = Raw::login(&gw, "agent");
    let mut latencies = Vec::new();
    while attackers.iter().any(|t| !t.is_finished()) {
        let t = Instant::now();
        let msgs = other.query("SELECT 1");
        assert!(error_of(&msgs).is_none(), "{msgs:?}");
        latencies.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    for a in attackers {
        a.join().expect("attacker");
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let slowest = latencies[latencies.len() - 1];
    println!(
        "{} SELECT 1 while the large statements ran: p99 {p99:?}, slowest {slowest:?}",
        latencies.len()
    );
    // Generous bounds for a debug build on a loaded 2-core CI machine (the database parses
    // the same large statements on the same cores); with analysis on the async workers the
    // other session waited for whole analyses: seconds.
    assert!(
        p99 < Duration::from_millis(300) && slowest < Duration::from_secs(1),
        "SELECT 1 waited behind another session's statement analysis: p99 {p99:?}, slowest {slowest:?}"
    );
}

/// C: per-session structures are bounded: a huge statement name is refused, not kept.
#[test]
fn class_c_statement_names_and_counts_are_bounded() {
    let gw = gateway();
    let mut agent = Raw::login(&gw, "agent");
    let name = "n".repeat(100_000);
    agent.send(&[parse(&name, "SELECT 1"), sync()].concat());
    let msgs = agent.until_ready();
    let e = error_of(&msgs).expect("refused");
    assert_eq!(e.code(), "54000", "{}", e.message());
    // PostgreSQL keeps 63 bytes of any name: two longer names sharing them would be one
    // statement to it and two to the gateway. Every message naming one is refused.
    let long = "c".repeat(70);
    for msg in [
        [parse(&long, "SELECT 1"), sync()].concat(),
        [close_statement(&long), sync()].concat(),
        [bind("", &long), execute(""), sync()].concat(),
        [describe_statement(&long), sync()].concat(),
    ] {
        agent.send(&msg);
        let msgs = agent.until_ready();
        let e = error_of(&msgs).expect("refused");
        assert_eq!(e.code(), "54000", "{}", e.message());
    }
    // The session goes on.
    assert!(error_of(&agent.query("SELECT 1")).is_none());
}

/// D: a locking clause locks the tables of sub-queries in FROM too: it needs the same review
/// as a lock written on the table itself.
#[test]
fn class_d_locks_need_review_wherever_they_are_written() {
    let gw = gateway();
    for sql in [
        "SELECT id FROM notes FOR UPDATE",
        "SELECT id FROM (SELECT id FROM notes) s FOR UPDATE",
        "SELECT * FROM notes a, LATERAL (SELECT id FROM notes b WHERE b.id = a.id) x FOR SHARE OF x",
        "SELECT * FROM notes WHERE id IN (SELECT id FROM notes FOR KEY SHARE)",
    ] {
        // Held for review (the notice names it); the session then goes away, which withdraws
        // it: nothing was locked.
        let mut agent = Raw::login(&gw, "agent");
        agent.send(&phigate_testkit::raw::query(sql));
        let first = agent.read();
        assert_eq!(first.tag, b'N', "{sql}: {first:?}");
        assert!(first.message().contains("held for review"), "{}", first.message());
    }
}

/// E: advisory locks (every form) are refused to restricted roles: a session cannot hold
/// a lock another session, or the gateway's provisioning, waits for.
#[test]
fn class_e_no_advisory_locks_for_restricted_roles() {
    let gw = gateway();
    let mut agent = Raw::login(&gw, "agent");
    for sql in [
        "SELECT pg_try_advisory_lock(1)",
        "SELECT pg_try_advisory_xact_lock(1)",
        "SELECT pg_advisory_lock_shared(1)",
    ] {
        let msgs = agent.query(sql);
        let e = error_of(&msgs).unwrap_or_else(|| panic!("{sql} ran"));
        assert!(
            e.message().contains("advisory-lock"),
            "{sql}: {}",
            e.message()
        );
    }
    assert_eq!(
        db("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
        "0"
    );
}

/// E: an operator runs a function. One that only user-defined functions implement (here over
/// a SECURITY DEFINER function that reads a table) is as unknown as calling the function by
/// name; the built-in operators stay usable.
#[test]
fn class_e_operators_over_unknown_functions_are_refused() {
    db(
        "CREATE OR REPLACE FUNCTION public.note_of(int) RETURNS text SECURITY DEFINER \
        LANGUAGE sql AS 'SELECT body FROM notes WHERE id = $1';\n\
        DO $$ BEGIN CREATE OPERATOR public.### (RIGHTARG = int, FUNCTION = public.note_of); \
        EXCEPTION WHEN duplicate_function THEN NULL; END $$;",
    );
    let gw = gateway();
    let mut agent = Raw::login(&gw, "agent");
    for sql in [
        "SELECT ### 1",
        "SELECT OPERATOR(public.###) 1",
        "SELECT 1 WHERE 'n' = ### 1",
    ] {
        let msgs = agent.query(sql);
        let e = error_of(&msgs).unwrap_or_else(|| panic!("{sql} ran: {msgs:?}"));
        assert!(
            e.message().contains("denied by rule unknown-function"),
            "{sql}: {}",
            e.message()
        );
    }
    let msgs = agent.query("SELECT count(*) FROM notes WHERE id = 1 AND body LIKE 'n%'");
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
}

/// Whether `text` holds anything a terminal would act on or hide: C0/C1 controls other than
/// the line breaks of the output itself, DEL, bidirectional overrides.
fn deceptive(text: &str) -> bool {
    text.chars().any(|c| {
        (c.is_control() && c != '\n') || matches!(c as u32, 0x202A..=0x202E | 0x2066..=0x2069)
    })
}

/// B: what a reviewer or auditor reads cannot be forged by the agent: the held text, a quoted
/// alias in a refused statement, are shown with their control characters made visible, and
/// the review says which tables and kinds the statement touches.
#[test]
fn class_b_reviewers_and_auditors_read_what_is_there() {
    let gw = gateway();
    let reviewer = gw.token("reviewer").to_owned();
    let mut agent = Raw::login(&gw, "agent");
    let forged = "UPDATE notes SET body = 'x' /*\r\x1b[2KUPDATE notes SET body = 'x' WHERE id = 4 \u{202e}*/";
    agent.send(&phigate_testkit::raw::query(forged));
    assert_eq!(agent.read().tag, b'N', "held");
    let http = format!("http://127.0.0.1:{}", gw.http_port);
    let cli = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .env("PHIGATE_URL", &http)
            .env("PHIGATE_TOKEN", &reviewer)
            .output()
            .expect("phigate");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let list = cli(&["review", "list"]);
    assert!(!deceptive(&list), "review list: {list:?}");
    assert!(
        list.contains("\\u{d}") && list.contains("\\u{1b}"),
        "{list}"
    );
    assert!(
        list.contains("tables: public.notes:update") || list.contains("tables: notes:update"),
        "{list}"
    );
    assert!(list.contains("kinds: update"), "{list}");
    let json = cli(&["review", "list", "--json"]);
    assert!(!deceptive(&json), "review list --json: {json:?}");
    drop(agent);
    // A refused statement whose alias carries escape sequences, then the auditor's report.
    let mut agent = Raw::login(&gw, "agent");
    let msgs = agent.query("SELECT pg_read_file('/etc/hostname') AS \"\x1b[2J\r\u{202e}x\"");
    assert!(error_of(&msgs).is_some(), "refused");
    drop(agent);
    let dd = gw.data_dir();
    let dd = dd.to_str().expect("utf-8");
    std::thread::sleep(Duration::from_millis(300));
    for args in [
        &["audit", "report", "--data-dir", dd][..],
        &["audit", "search", "--data-dir", dd][..],
        &["sessions", "list", "--data-dir", dd][..],
    ] {
        let out = cli(args);
        assert!(!deceptive(&out), "{args:?}: {out:?}");
    }
    let report = cli(&["audit", "report", "--data-dir", dd]);
    assert!(
        report.contains("\\u{1b}"),
        "the alias is shown, made visible: {report}"
    );
}

/// F: a reload reaches every session at its next statement boundary, even one whose messages
/// once confused the gateway's count of exchanges (a Query, a bare Sync and a CopyDone in one
/// write); and a role can cap a transaction's length.
#[test]
fn class_f_a_reload_reaches_every_session_and_transactions_are_capped() {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = POLICY.replace(
        "name = \"ai-agent\"\n",
        "name = \"ai-agent\"\ntransaction_timeout = \"1s\"\n",
    );
    let gw = Gateway::start_with_identities(bin(), opts, &["agent", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let mut agent = Raw::login(&gw, "agent");
    agent.send(
        &[
            phigate_testkit::raw::query("SELECT 1"),
            sync(),
            phigate_testkit::raw::message(b'c', &[]),
        ]
        .concat(),
    );
    agent.until_ready();
    agent.until_ready();
    assert!(error_of(&agent.query("SELECT body FROM notes WHERE id = 2")).is_none());
    // Take the agent's read grant away.
    let config = gw.config_path();
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("actions = [\"select\", \"write\"]", "actions = [\"write\"]"),
    )
    .expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 1).expect("reloaded");
    let msgs = agent.query("SELECT body FROM notes WHERE id = 2");
    let e = error_of(&msgs).expect("the new policy applies to this session");
    assert!(
        e.message().contains("denied by rule grants"),
        "{}",
        e.message()
    );

    // A transaction open longer than the role's transaction_timeout ends the session.
    let mut agent = Raw::login(&gw, "agent");
    assert!(error_of(&agent.query("BEGIN")).is_none());
    std::thread::sleep(Duration::from_millis(1500));
    let rest = agent.read_until_closed();
    let fatal = rest.iter().find(|m| m.tag == b'E').expect("a FATAL");
    assert_eq!(fatal.code(), "25P04", "{}", fatal.message());
    assert_eq!(fatal.severity(), "FATAL");
}

/// A: the names the session holds change only as the database says, whichever way they are
/// changed: `DEALLOCATE` sent with Parse, a statement called "all", `PREPARE` sent with Parse.
/// An approval still covers one execution.
#[test]
fn class_a_no_hidden_path_changes_the_sessions_statements() {
    let gw = gateway();
    let reviewer = gw.token("reviewer").to_owned();
    db("UPDATE notes SET body = 'n' WHERE id = 3");
    let mut agent = Raw::login(&gw, "agent");
    let ok = |agent: &mut Raw, what: &str| {
        let msgs = agent.until_ready();
        assert!(error_of(&msgs).is_none(), "{what}: {msgs:?}");
    };
    agent.send(&[parse("x", "SELECT 1"), sync()].concat());
    ok(&mut agent, "parse x");
    // DEALLOCATE through the extended protocol: the database drops x, and so does the gateway.
    agent.send(&[parse("", "DEALLOCATE x"), bind("", ""), execute(""), sync()].concat());
    ok(&mut agent, "deallocate x with Parse");
    agent.send(
        &[
            parse("x", "UPDATE notes SET body = body || 'y' WHERE id = 3"),
            sync(),
        ]
        .concat(),
    );
    gw.approve_next(&reviewer, "once").expect("approve");
    ok(&mut agent, "approved parse");
    agent.send(&[bind("", "x"), execute(""), sync()].concat());
    ok(&mut agent, "the approved run");
    // A statement called "all" is not DEALLOCATE ALL.
    assert!(error_of(&agent.query("PREPARE \"all\" AS SELECT 1")).is_none());
    assert!(error_of(&agent.query("DEALLOCATE \"all\"")).is_none());
    for _ in 0..2 {
        agent.send(
            &[
                parse("x", "SELECT 1"),
                sync(),
                bind("", "x"),
                execute(""),
                sync(),
            ]
            .concat(),
        );
        let first = agent.until_ready();
        let second = agent.until_ready();
        assert!(error_of(&first).is_some(), "x still exists: {first:?}");
        let e = error_of(&second).expect("the approval is spent");
        assert_eq!(e.code(), "42501", "{}", e.message());
    }
    // PREPARE sent with Parse is PREPARE: what needs approval cannot be prepared.
    agent.send(
        &[
            parse("", "PREPARE y AS UPDATE notes SET body = 'z' WHERE id = 3"),
            sync(),
        ]
        .concat(),
    );
    let msgs = agent.until_ready();
    let e = error_of(&msgs).expect("refused");
    assert!(
        e.message().contains("cannot be prepared with PREPARE"),
        "{}",
        e.message()
    );
    assert_eq!(
        db("SELECT body FROM notes WHERE id = 3"),
        "ny",
        "ran exactly once"
    );
}

/// A and G: a stray CopyDone (outside any COPY) changes nothing: the refusal that follows is
/// the gateway's, never the database's error about the substitute.
#[test]
fn class_g_a_stray_copy_done_does_not_shift_answers() {
    let gw = gateway();
    let mut agent = Raw::login(&gw, "agent");
    agent.send(&phigate_testkit::raw::message(b'c', &[]));
    let msgs = agent.query("SELECT pg_read_file('/etc/hostname')");
    let e = error_of(&msgs).expect("refused");
    assert_eq!(e.code(), "42501", "{}", e.message());
    assert!(e.message().starts_with("phigate: "), "{}", e.message());
    assert!(
        !agent.received_text().contains("phigate_denied_"),
        "the token never leaks"
    );
    assert!(error_of(&agent.query("SELECT 1")).is_none());
}

/// F: a COPY the database ends on its own (bad data) is over for the gateway too: Syncs sent
/// during the next COPY are swallowed as the database swallows them, and the session stays in
/// step (answers, reloads and drains keep working).
#[test]
fn class_f_a_copy_that_fails_leaves_the_session_in_step() {
    let gw = gateway();
    let mut c = Raw::login(&gw, "clinician");
    c.send(&phigate_testkit::raw::query(
        "COPY notes (id, body) FROM STDIN",
    ));
    assert_eq!(c.read().tag, b'G', "CopyInResponse");
    c.send(&phigate_testkit::raw::message(b'd', b"not-a-number\tx\n"));
    let msgs = c.until_ready();
    assert_eq!(error_of(&msgs).map(Msg::code).as_deref(), Some("22P02"));
    c.send(&phigate_testkit::raw::query(
        "COPY notes (id, body) FROM STDIN",
    ));
    assert_eq!(c.read().tag, b'G', "CopyInResponse");
    c.send(&[sync(), sync(), phigate_testkit::raw::message(b'c', &[])].concat());
    let msgs = c.until_ready();
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    assert!(msgs.iter().any(|m| m.tag == b'C'), "COPY 0: {msgs:?}");
    let msgs = c.query("SELECT body FROM notes WHERE id = 1");
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.tag == b'D'),
        "answered in step: {msgs:?}"
    );
}

/// H: `/metrics` shows the gateway's activity: served to callers on this machine by default,
/// and only to audit readers when the config says so.
#[test]
fn class_h_metrics_are_not_for_everyone() {
    let gw = gateway();
    let (code, body) = gw.http_get("/metrics").expect("metrics");
    assert_eq!(code, 200, "loopback, the default: {body}");
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.policy = POLICY.into();
    opts.listen_extra = "metrics = \"readers\"".into();
    opts.extra = "[audit]\nreader_roles = [\"reviewer\"]\n".into();
    let gw = Gateway::start_with_identities(bin(), opts, &["agent", "reviewer"])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let (code, _) = gw.http_get("/metrics").expect("metrics");
    assert_eq!(code, 401, "no credential");
    let agent = gw.token("agent").to_owned();
    let (code, _) = gw
        .http_as("GET", "/metrics", &agent, None)
        .expect("metrics");
    assert_eq!(code, 403, "not an audit reader");
    let reviewer = gw.token("reviewer").to_owned();
    let (code, body) = gw
        .http_as("GET", "/metrics", &reviewer, None)
        .expect("metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("phigate_"), "{body}");
}

/// G: an Execute of a SQL cursor's portal is recorded as what the cursor declared, not as a
/// protocol portal of the same name closed before.
#[test]
fn class_g_an_execute_of_a_cursor_is_recorded_as_the_cursor() {
    let gw = gateway();
    let mut c = Raw::login(&gw, "clinician");
    assert!(error_of(&c.query("BEGIN")).is_none());
    c.send(
        &[
            parse("s", "SELECT 1 AS harmless_portal"),
            bind("c", "s"),
            sync(),
        ]
        .concat(),
    );
    assert!(error_of(&c.until_ready()).is_none());
    let msgs = c.query("CLOSE c; DECLARE c CURSOR FOR SELECT body FROM notes WHERE id = 1");
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    c.send(&[execute("c"), sync()].concat());
    let msgs = c.until_ready();
    assert!(error_of(&msgs).is_none(), "{msgs:?}");
    assert!(error_of(&c.query("COMMIT")).is_none());
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let executes: Vec<Value> = gw
        .audit_records("statement")
        .into_iter()
        .filter(|r| r["protocol"] == "extended" && r["subject"] == "clinician@test.phigate")
        .collect();
    let last = executes.last().expect("the Execute's record");
    assert!(
        last["tables"].to_string().contains("notes"),
        "recorded as the cursor's statement: {last}"
    );
}
