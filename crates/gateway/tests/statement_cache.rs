//! The statement cache against a real PostgreSQL: a driver's repeated unnamed statements
//! (tokio-postgres `query_typed`: Parse, Bind, Execute, Sync of the unnamed statement each
//! time) are prepared once under the gateway's own name, give the same rows as going direct,
//! and survive what can happen to a prepared statement: the session's own DDL, DDL by someone
//! else that changes a table's columns, `DISCARD ALL`, a `search_path` change.

use std::path::Path;

use phigate_testkit::{Cluster, Gateway, GatewayOptions, APP_PASSWORD, APP_USER, DATABASE};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

fn cluster() -> &'static Cluster {
    phigate_testkit::clinic(phigate::demo::SEED_SQL)
}

fn gateway(extra_upstream: &str) -> Gateway {
    let mut opts = GatewayOptions::for_cluster(cluster());
    opts.upstream_extra = extra_upstream.to_owned();
    Gateway::start(Path::new(env!("CARGO_BIN_EXE_phigate")), opts).expect("gateway starts")
}

async fn connect(conninfo: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .expect("connects");
    tokio::spawn(conn);
    client
}

async fn direct() -> Client {
    connect(&format!(
        "host=127.0.0.1 port={} dbname={DATABASE} user={APP_USER} password={APP_PASSWORD} sslmode=disable",
        cluster().port()
    ))
    .await
}

/// The gateway's cached statements in this session, as (name, text).
async fn cached(client: &Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT name, statement FROM pg_prepared_statements WHERE name LIKE 'phigate\\_stmt\\_%' ORDER BY prepare_time",
            &[],
        )
        .await
        .expect("pg_prepared_statements")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

const MRN: &str = "SELECT mrn, last_name FROM patients WHERE id = $1";

async fn mrn(client: &Client, id: i32) -> Result<(String, String), tokio_postgres::Error> {
    let rows = client.query_typed(MRN, &[(&id, Type::INT4)]).await?;
    Ok((rows[0].get(0), rows[0].get(1)))
}

#[tokio::test]
async fn repeated_unnamed_statements_run_prepared_with_the_same_rows() {
    let gw = gateway("");
    let through = connect(&gw.conninfo("clinician")).await;
    let direct = direct().await;
    for id in 1..=50 {
        assert_eq!(
            mrn(&through, id).await.expect("through the gateway"),
            mrn(&direct, id).await.expect("direct"),
            "patient {id}"
        );
    }
    // Prepared once, on the second sighting, under the gateway's name.
    let held = cached(&through).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].1, MRN);
    // A text seen once is not cached; errors still come in their place.
    let err = through
        .query_typed("SELECT 1/$1", &[(&0i32, Type::INT4)])
        .await
        .expect_err("division by zero");
    assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    for _ in 0..3 {
        let err = through
            .query_typed("SELECT 1/$1", &[(&0i32, Type::INT4)])
            .await
            .expect_err("division by zero, cached");
        assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    }
    assert_eq!(cached(&through).await.len(), 2);
    // Every statement is audited as usual: 50 reads, each with its own record.
    let records = gw.audit_records("statement");
    let reads = records
        .iter()
        .filter(|r| r["text"].as_str() == Some(MRN))
        .count();
    assert_eq!(reads, 50);
}

#[tokio::test]
async fn the_cache_survives_ddl_discard_and_search_path() {
    let gw = gateway("");
    let admin = direct().await;
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS cache_probe; CREATE TABLE cache_probe (id int PRIMARY KEY, a text);\
             INSERT INTO cache_probe VALUES (1, 'one'), (2, 'two');",
        )
        .await
        .expect("probe table");
    let c = connect(&gw.conninfo("clinician")).await;
    let star = "SELECT * FROM cache_probe WHERE id = $1";
    let columns = |rows: &[tokio_postgres::Row]| rows[0].columns().len();
    for _ in 0..4 {
        let rows = c
            .query_typed(star, &[(&1i32, Type::INT4)])
            .await
            .expect("read");
        assert_eq!(columns(&rows), 2);
    }
    assert_eq!(cached(&c).await.len(), 1);

    // The session's own DDL: the cache is emptied once it commits; no error follows.
    c.batch_execute("ALTER TABLE cache_probe ADD COLUMN b int DEFAULT 7")
        .await
        .expect("own DDL");
    for _ in 0..4 {
        let rows = c
            .query_typed(star, &[(&1i32, Type::INT4)])
            .await
            .expect("read after own DDL");
        assert_eq!(columns(&rows), 3);
    }

    // DDL by someone else (a migration run directly): PostgreSQL refuses the cached plan once
    // at most ("cached plan must not change result type"); the name is dropped and the text
    // prepared afresh.
    admin
        .batch_execute("ALTER TABLE cache_probe ADD COLUMN c int DEFAULT 8")
        .await
        .expect("their DDL");
    let mut refused = 0;
    for _ in 0..4 {
        match c.query_typed(star, &[(&1i32, Type::INT4)]).await {
            Ok(rows) => assert_eq!(columns(&rows), 4),
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e:?}");
                refused += 1;
            }
        }
    }
    assert!(refused <= 1, "refused {refused} times");
    let held = cached(&c).await;
    assert_eq!(held.len(), 1, "the dropped name was closed: {held:?}");

    // DISCARD ALL drops the cache's statements with the client's: nothing breaks.
    c.batch_execute("DISCARD ALL").await.expect("discard");
    assert!(cached(&c).await.is_empty());
    for _ in 0..3 {
        c.query_typed(star, &[(&2i32, Type::INT4)])
            .await
            .expect("read after DISCARD ALL");
    }

    // search_path: the cached statement is parsed again under the new path, as an unnamed
    // one would be.
    admin
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS other; DROP TABLE IF EXISTS other.cache_probe;\
             CREATE TABLE other.cache_probe (id int, a text, b int, c int);\
             INSERT INTO other.cache_probe VALUES (1, 'other', 0, 0)",
        )
        .await
        .expect("other schema");
    c.batch_execute("SET search_path = other, public")
        .await
        .expect("set path");
    let rows = c
        .query_typed(star, &[(&1i32, Type::INT4)])
        .await
        .expect("read under the new path");
    assert_eq!(rows[0].get::<_, String>(1), "other");
    admin
        .batch_execute("DROP TABLE cache_probe; DROP SCHEMA other CASCADE")
        .await
        .expect("clean up");
}

#[tokio::test]
async fn statement_cache_zero_turns_it_off() {
    let gw = gateway("statement_cache = 0");
    let c = connect(&gw.conninfo("clinician")).await;
    for id in 1..=5 {
        mrn(&c, id).await.expect("read");
    }
    assert!(cached(&c).await.is_empty());
}

/// The statement of pbe() as a point read the clinician may run, without parameters.
const READ: &str = "SELECT mrn FROM patients WHERE id = 7";

/// No client can reach what a cached name holds: every protocol message and SQL statement that
/// names a statement with the reserved prefix is refused, so a later reuse runs exactly the text
/// the guard judged.
#[test]
fn the_cache_names_are_out_of_reach() {
    use phigate_testkit::raw::{
        bind, close_statement, describe_statement, parse, pbe, sync, tags, Raw,
    };
    let gw = gateway("");
    let mut c = Raw::login(&gw, "clinician");
    for _ in 0..3 {
        c.send(&[pbe(READ), sync()].concat());
        assert_eq!(tags(&c.until_ready()), "12DCZ");
    }
    let held =
        c.query("SELECT name FROM pg_prepared_statements WHERE name LIKE 'phigate\\_stmt\\_%'");
    let name = held
        .iter()
        .find_map(|m| m.first_column())
        .expect("a cached statement");
    let swap = "SELECT ssn FROM patients WHERE id = 7";
    let attempts = [
        [close_statement(&name), sync()].concat(),
        [parse(&name, swap), sync()].concat(),
        [describe_statement(&name), sync()].concat(),
        [bind("", &name), sync()].concat(),
        [parse(&name.to_uppercase(), swap), sync()].concat(),
        // The refusals' substitutes name statements and portals that must not exist.
        [parse("phigate_denied_0_1", swap), sync()].concat(),
        [bind("phigate_denied_0_1", ""), sync()].concat(),
        [phigate_testkit::raw::execute("phigate_denied_0_1"), sync()].concat(),
    ];
    for attempt in attempts {
        c.send(&attempt);
        let msgs = c.until_ready();
        assert_eq!(tags(&msgs), "EZ", "{}", phigate_testkit::raw::show(&msgs));
        assert_eq!(msgs[0].code(), "26000");
        assert!(
            msgs[0].message().contains("reserved"),
            "{}",
            msgs[0].message()
        );
    }
    for sql in [
        format!("DEALLOCATE {name}"),
        format!("EXECUTE {name}"),
        format!("PREPARE {name} AS {swap}"),
        format!("EXPLAIN EXECUTE {name}"),
        "PREPARE PHIGATE_STMT_x AS SELECT 1".to_owned(),
        format!("CREATE TEMP TABLE cache_ctas AS EXECUTE {name}"),
        "DECLARE phigate_denied_0_2 CURSOR FOR SELECT 1".to_owned(),
        "PREPARE phigate_denied_0_3 AS SELECT 1".to_owned(),
        format!("EXPLAIN ANALYZE CREATE TEMP TABLE cache_ctas AS EXECUTE {name}"),
    ] {
        let msgs = c.query(&sql);
        assert_eq!(
            msgs[0].code(),
            "26000",
            "{sql}: {}",
            phigate_testkit::raw::show(&msgs)
        );
        assert!(
            msgs[0].message().contains("reserved"),
            "{sql}: {}",
            msgs[0].message()
        );
    }
    // Reused: the text judged, the row it reads.
    c.send(&[pbe(READ), sync()].concat());
    let msgs = c.until_ready();
    assert_eq!(tags(&msgs), "12DCZ");
    let direct = c.query(READ);
    assert_eq!(msgs[2].first_column(), direct[1].first_column());
}

/// A name the cache let go is closed only when nothing is in flight: a driver's COPY FROM STDIN
/// through the extended protocol (whose Sync PostgreSQL reads as nothing during the COPY)
/// runs as direct.
#[test]
fn a_released_name_is_never_closed_into_a_copy() {
    use phigate_testkit::raw::{bind, execute, message, parse, pbe, sync, tags, Raw};
    let gw = gateway("");
    let mut c = Raw::login(&gw, "admin");
    for _ in 0..3 {
        c.send(&[pbe(READ), sync()].concat());
        assert_eq!(tags(&c.until_ready()), "12DCZ");
    }
    // The session's own DDL releases the cached name.
    let msgs = c.query("CREATE TEMP TABLE copy_probe (a int)");
    assert_eq!(tags(&msgs), "CZ");
    c.send(
        &[
            parse("", "COPY copy_probe FROM STDIN"),
            bind("", ""),
            execute(""),
            sync(),
        ]
        .concat(),
    );
    let mut seen = String::new();
    loop {
        let m = c.read();
        seen.push(char::from(m.tag));
        if m.tag == b'G' {
            break;
        }
        assert_ne!(m.tag, b'E', "{}", m.message());
    }
    assert_eq!(
        seen, "12G",
        "the gateway's CloseComplete is not the client's"
    );
    c.send(&[message(b'd', b"1\n2\n"), message(b'c', b""), sync()].concat());
    let msgs = c.until_ready();
    assert_eq!(tags(&msgs), "CZ", "{}", phigate_testkit::raw::show(&msgs));
    assert_eq!(msgs[0].command(), "COPY 2");
    let count = c.query("SELECT count(*) FROM copy_probe");
    assert_eq!(count[1].first_column().as_deref(), Some("2"));
}

/// The database's unnamed statement is only ever the client's own: after a create, a Bind of
/// the unnamed statement whose earlier segment failed can run neither an older statement the
/// guard no longer considers nor a skipped one. What the unnamed statement is while several
/// candidates are in flight and one is cached is refused until the answers are read.
#[test]
fn the_unnamed_statement_is_never_a_stale_one() {
    use phigate_testkit::raw::{bind, execute, parse, pbe, show, sync, tags, Raw};
    let gw = gateway("");
    let mut c = Raw::login(&gw, "clinician");
    let other = "SELECT ssn FROM patients WHERE id = 7";
    let ssn = c.query(other)[1].first_column().expect("the SSN");
    c.send(&[pbe(READ), sync()].concat());
    assert_eq!(tags(&c.until_ready()), "12DCZ");
    // The database's unnamed statement becomes `other` (never cached: seen once).
    c.send(&[pbe(other), sync()].concat());
    assert_eq!(tags(&c.until_ready()), "12DCZ");
    // READ's second sighting: the create.
    c.send(&[pbe(READ), sync()].concat());
    assert_eq!(tags(&c.until_ready()), "12DCZ");
    // A failed segment whose Parse of a third text is skipped, then a Bind of "" in the next.
    c.send(
        &[
            bind("", "nosuch"),
            parse("", "SELECT name FROM departments WHERE id = 1"),
            sync(),
            bind("", ""),
            execute(""),
            sync(),
        ]
        .concat(),
    );
    let first = c.until_ready();
    assert_eq!(tags(&first), "EZ", "{}", show(&first));
    let second = c.until_ready();
    let text = show(&second);
    let values: Vec<String> = second
        .iter()
        .filter(|m| m.tag == b'D')
        .filter_map(|m| m.first_column())
        .collect();
    assert!(!values.contains(&ssn), "`other` must not run: {values:?}");
    match tags(&second).as_str() {
        // Refused as ambiguous, or READ's row (the statement the guard judged last).
        "EZ" => assert_eq!(second[0].code(), "26000", "{text}"),
        "2DCZ" => {}
        t => panic!("{t}: {text}"),
    }
    // Read first, then bind: READ runs.
    c.send(&[bind("", ""), execute(""), sync()].concat());
    let msgs = c.until_ready();
    assert_eq!(tags(&msgs), "2DCZ", "{}", show(&msgs));
}
