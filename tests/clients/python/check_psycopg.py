#!/usr/bin/env python3
"""Real-driver check for phigate using psycopg 3.

Usage: check_psycopg.py POSTGRES_URL [--cancel]

Runs a fixed set of protocol exercises (simple query, extended protocol with
binary parameters/results, named server-side cursors, COPY in/out in text and
binary, errors and recovery, savepoints, prepared statements, LISTEN/NOTIFY,
notices, pipeline mode) and prints ONE line of JSON with sorted keys on stdout.

The output must be identical whether the URL points straight at PostgreSQL or
at the gateway, so nothing session-specific (PIDs, backend keys, timings, OIDs
of user objects, server version) is ever printed. Only TEMP tables and
generate_series are used, so no schema is required.

Any failure raises, which prints a traceback on stderr and exits non-zero.
`--cancel` additionally checks a query cancel request (pg_sleep cancelled with
conn.cancel_safe()); it is off by default.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import signal
import sys
import threading
import time
import uuid
from decimal import Decimal

import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb

OVERALL_TIMEOUT_S = 120
NOTIFY_TIMEOUT_S = 10


class CheckFailed(Exception):
    pass


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def connect(url: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url, connect_timeout=10, **kwargs)


# --------------------------------------------------------------------------
# (a) simple query protocol
# --------------------------------------------------------------------------
def check_simple(conn: psycopg.Connection) -> dict:
    out: dict = {}
    cur = conn.cursor()
    # No parameters and not binary: psycopg sends this with the simple query
    # protocol (a single 'Q' message), so multiple statements are allowed.
    cur.execute(
        "SELECT 1 AS one, 'hello'::text AS greeting, 2.5::float8 AS f, NULL::text AS n;"
        " SELECT g FROM generate_series(1, 3) AS g ORDER BY g"
    )
    first = cur.fetchall()
    out["first_columns"] = [d.name for d in cur.description]
    out["first_types"] = [d.type_display for d in cur.description]
    out["first_rows"] = [repr(r) for r in first]
    check(cur.nextset(), "second result set of multi-statement query missing")
    out["second_rows"] = [r[0] for r in cur.fetchall()]
    out["statusmessage"] = cur.statusmessage

    # Client-side binding also goes through the simple query protocol.
    ccur = psycopg.ClientCursor(conn)
    ccur.execute("SELECT %s::text || %s::text AS s, %s::int + 1 AS i", ("it's ", "quoted", 41))
    out["client_cursor"] = repr(ccur.fetchone())

    # Parameter status messages forwarded at startup and after SET.
    conn.execute("SET TimeZone TO 'Europe/Berlin'")
    conn.execute("SET DateStyle TO 'ISO, DMY'")
    out["parameter_status"] = {
        k: conn.info.parameter_status(k)
        for k in (
            "TimeZone",
            "DateStyle",
            "client_encoding",
            "server_encoding",
            "integer_datetimes",
            "standard_conforming_strings",
        )
    }
    conn.commit()
    return out


# --------------------------------------------------------------------------
# (b) extended protocol, binary parameters and binary results
# --------------------------------------------------------------------------
def check_binary_params(conn: psycopg.Connection) -> dict:
    cases = [
        ("int4", "%b::int4", 2147483647),
        ("int4_neg", "%b::int4", -42),
        ("int8", "%b::int8", 9223372036854775807),
        ("numeric", "%b::numeric", Decimal("12345678901234567890.0123456789")),
        ("numeric_neg", "%b::numeric", Decimal("-0.000001")),
        ("text", "%b::text", "h\u00e9llo w\u00f6rld \u2713 \U0001f600"),
        ("text_empty", "%b::text", ""),
        ("bytea", "%b::bytea", bytes(range(256))),
        ("date", "%b::date", dt.date(2024, 2, 29)),
        (
            "timestamptz",
            "%b::timestamptz",
            dt.datetime(2024, 3, 31, 1, 30, 15, 123456, tzinfo=dt.timezone.utc),
        ),
        ("uuid", "%b::uuid", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
        (
            "jsonb",
            "%b::jsonb",
            Jsonb({"patient": {"id": 7, "tags": ["a", "b"]}, "ok": True, "n": None}),
        ),
        ("int_array", "%b::int4[]", [1, 2, None, 3]),
        ("int_array_2d", "%b::int8[]", [[1, 2], [3, 4]]),
        ("null", "%b::int4", None),
    ]
    out: dict = {}
    with conn.cursor(binary=True) as cur:
        for name, placeholder, value in cases:
            cur.execute(f"SELECT {placeholder} AS v", (value,))
            check(cur.pgresult.fformat(0) == 1, f"{name}: result not in binary format")
            got = cur.fetchone()[0]
            expected = value.obj if isinstance(value, Jsonb) else value
            check(got == expected, f"{name}: round trip mismatch: {got!r} != {expected!r}")
            if isinstance(got, bytes):
                shown = {"len": len(got), "sha256": sha256(got)}
            elif isinstance(got, (dict, list)) and name == "jsonb":
                shown = json.dumps(got, sort_keys=True)
            else:
                shown = repr(got)
            out[name] = {"type": cur.description[0].type_display, "value": shown}

        # All types in one row, several parameters in one Bind message.
        cur.execute(
            "SELECT %b::int4, %b::int8, %b::numeric, %b::text, %b::bytea, %b::date,"
            " %b::timestamptz, %b::uuid, %b::jsonb, %b::int4[], %b::text",
            [
                v
                for name, _, v in cases
                if name not in ("int4_neg", "numeric_neg", "text_empty", "int_array_2d", "null")
            ]
            + [None],
        )
        row = cur.fetchone()
        out["multi_row_len"] = len(row)
        out["multi_row_last_is_null"] = row[-1] is None

    # The same values read back as text (extended protocol, text results).
    with conn.cursor() as cur:
        cur.execute(
            "SELECT %s::timestamptz::text, %s::numeric::text, %s::int4[]::text",
            (
                dt.datetime(2024, 3, 31, 1, 30, 15, 123456, tzinfo=dt.timezone.utc),
                Decimal("1.50"),
                [1, None, 3],
            ),
        )
        out["text_results"] = list(cur.fetchone())
    conn.commit()
    return out


# --------------------------------------------------------------------------
# (c) named server-side cursor
# --------------------------------------------------------------------------
def check_named_cursor(conn: psycopg.Connection) -> dict:
    count = 0
    total = 0
    with conn.cursor(name="phigate_check_cur") as cur:
        cur.itersize = 100
        cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 2500) AS g ORDER BY g")
        digest = hashlib.sha256()
        for g, h in cur:
            count += 1
            total += g
            digest.update(f"{g}:{h}\n".encode())
    conn.commit()
    check(count == 2500, f"named cursor returned {count} rows")
    check(total == 2500 * 2501 // 2, f"named cursor sum {total}")
    # A scrollable named cursor with explicit fetches and scroll.
    with conn.transaction():
        with conn.cursor(name="phigate_scroll_cur", scrollable=True) as cur:
            cur.execute("SELECT g FROM generate_series(1, 50) AS g ORDER BY g")
            first = [r[0] for r in cur.fetchmany(5)]
            cur.scroll(40, mode="absolute")
            after = [r[0] for r in cur.fetchmany(3)]
    return {
        "count": count,
        "sum": total,
        "rows_sha256": digest.hexdigest(),
        "scroll_first": first,
        "scroll_after_40": after,
    }


# --------------------------------------------------------------------------
# (d) COPY FROM STDIN / COPY TO STDOUT, text and binary
# --------------------------------------------------------------------------
COPY_ROWS = 3000


def copy_row(i: int) -> tuple:
    return (
        i,
        f"name-{i}\t\\ \"quoted\" \u00e9\n" if i % 7 == 0 else f"name-{i}",
        Decimal(i) / 100,
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=i),
        bytes([i % 256, (i * 7) % 256, 0, 255]),
        None if i % 11 == 0 else [f"t{i}", f"u{i % 5}"],
    )


def check_copy(conn: psycopg.Connection) -> dict:
    out: dict = {}
    cols = "(id int4, name text, amount numeric, ts timestamptz, data bytea, tags text[])"
    types = ["int4", "text", "numeric", "timestamptz", "bytea", "text[]"]
    with conn.cursor() as cur:
        cur.execute(f"CREATE TEMP TABLE copy_text {cols}")
        cur.execute(f"CREATE TEMP TABLE copy_bin {cols}")

        with cur.copy("COPY copy_text (id, name, amount, ts, data, tags) FROM STDIN") as copy:
            for i in range(1, COPY_ROWS + 1):
                copy.write_row(copy_row(i))
        out["text_in_rowcount"] = cur.rowcount

        with cur.copy(
            "COPY copy_bin (id, name, amount, ts, data, tags) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(types)
            for i in range(1, COPY_ROWS + 1):
                copy.write_row(copy_row(i))
        out["binary_in_rowcount"] = cur.rowcount

        cur.execute(
            "SELECT count(*) FROM copy_text t JOIN copy_bin b USING (id)"
            " WHERE t IS NOT DISTINCT FROM b"
        )
        out["text_vs_binary_equal_rows"] = cur.fetchone()[0]

        # COPY TO STDOUT, text format: digest of the raw bytes.
        buf = bytearray()
        with cur.copy(
            "COPY (SELECT * FROM copy_text ORDER BY id) TO STDOUT"
        ) as copy:
            for data in copy:
                buf += data
        out["text_out_rowcount"] = cur.rowcount
        out["text_out_bytes"] = len(buf)
        out["text_out_sha256"] = sha256(bytes(buf))
        out["text_out_lines"] = bytes(buf).count(b"\n")

        # COPY TO STDOUT, binary format: digest of the raw bytes.
        buf = bytearray()
        with cur.copy(
            "COPY (SELECT * FROM copy_bin ORDER BY id) TO STDOUT (FORMAT BINARY)"
        ) as copy:
            for data in copy:
                buf += data
        out["binary_out_rowcount"] = cur.rowcount
        out["binary_out_bytes"] = len(buf)
        out["binary_out_sha256"] = sha256(bytes(buf))

        # COPY TO STDOUT, binary, parsed back into rows.
        parsed = []
        with cur.copy("COPY (SELECT * FROM copy_bin ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in copy.rows():
                parsed.append(row)
        check(len(parsed) == COPY_ROWS, f"binary rows parsed {len(parsed)}")
        mismatch = [r[0] for r in parsed if r != copy_row(r[0])]
        check(not mismatch, f"binary COPY round trip mismatch for ids {mismatch[:5]}")
        out["binary_parsed_rows"] = len(parsed)

        # A COPY that fails mid-stream on the server (bad data) must leave the
        # connection usable after rollback.
        try:
            with cur.copy("COPY copy_text (id) FROM STDIN") as copy:
                copy.write(b"1\nnot-an-int\n")
            raise CheckFailed("bad COPY data did not fail")
        except errors.InvalidTextRepresentation as e:
            out["bad_copy_sqlstate"] = e.sqlstate
        conn.rollback()
        cur.execute("SELECT to_regclass('pg_temp.copy_text') IS NULL")
        out["temp_table_gone_after_rollback"] = cur.fetchone()[0]
    conn.commit()
    return out


# --------------------------------------------------------------------------
# (e) error + recovery
# --------------------------------------------------------------------------
def check_error(conn: psycopg.Connection) -> dict:
    out: dict = {}
    cur = conn.cursor()
    try:
        cur.execute("SELECT 1 / %s::int", (0,))
        raise CheckFailed("division by zero did not raise")
    except errors.DivisionByZero as e:
        out["sqlstate"] = e.sqlstate
        out["message"] = e.diag.message_primary
        out["severity"] = e.diag.severity_nonlocalized
    out["status_after_error"] = conn.info.transaction_status.name
    try:
        cur.execute("SELECT 1")
        raise CheckFailed("query in aborted transaction did not raise")
    except errors.InFailedSqlTransaction as e:
        out["aborted_tx_sqlstate"] = e.sqlstate
    conn.rollback()
    out["status_after_rollback"] = conn.info.transaction_status.name
    cur.execute("SELECT 40 + 2")
    out["after_rollback"] = cur.fetchone()[0]
    # Syntax error with a position (simple protocol).
    try:
        cur.execute("SELEC 1")
        raise CheckFailed("syntax error did not raise")
    except errors.SyntaxError as e:
        out["syntax_sqlstate"] = e.sqlstate
        out["syntax_position"] = e.diag.statement_position
    conn.rollback()
    # Unknown relation, extended protocol.
    try:
        cur.execute("SELECT * FROM phigate_no_such_table WHERE x = %s", (1,))
        raise CheckFailed("undefined table did not raise")
    except errors.UndefinedTable as e:
        out["undefined_table_sqlstate"] = e.sqlstate
    conn.rollback()
    cur.execute("SELECT 'still alive'")
    out["final"] = cur.fetchone()[0]
    conn.commit()
    return out


# --------------------------------------------------------------------------
# (f) transaction with savepoints
# --------------------------------------------------------------------------
def check_savepoint(conn: psycopg.Connection) -> dict:
    out: dict = {}
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE sp_t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO sp_t VALUES (1, 'kept')")
        # Explicit SQL savepoints.
        conn.execute("SAVEPOINT sp1")
        conn.execute("INSERT INTO sp_t VALUES (2, 'rolled back')")
        conn.execute("ROLLBACK TO SAVEPOINT sp1")
        conn.execute("INSERT INTO sp_t VALUES (3, 'after sp1')")
        conn.execute("RELEASE SAVEPOINT sp1")
        # psycopg nested transaction blocks use savepoints too; an error inside
        # one rolls back only that block.
        try:
            with conn.transaction():
                conn.execute("INSERT INTO sp_t VALUES (4, 'nested, rolled back')")
                conn.execute("INSERT INTO sp_t VALUES (1, 'duplicate')")
        except errors.UniqueViolation as e:
            out["nested_error_sqlstate"] = e.sqlstate
        with conn.transaction():
            conn.execute("INSERT INTO sp_t VALUES (5, 'nested, kept')")
        out["status_inside"] = conn.info.transaction_status.name
    rows = conn.execute("SELECT id, v FROM sp_t ORDER BY id").fetchall()
    out["rows"] = [list(r) for r in rows]
    out["status_after"] = conn.info.transaction_status.name
    conn.execute("DROP TABLE sp_t")
    conn.commit()
    return out


# --------------------------------------------------------------------------
# (g) prepared statements
# --------------------------------------------------------------------------
def check_prepared(conn: psycopg.Connection) -> dict:
    results = []
    with conn.cursor() as cur:
        for i in range(6):
            cur.execute(
                "SELECT %s::int4 * 2 AS doubled, %s::text AS label",
                (i, f"run-{i}"),
                prepare=True,
            )
            results.append(list(cur.fetchone()))
        with conn.cursor(binary=True) as bcur:
            for d in (dt.date(2020, 1, 1), dt.date(1999, 12, 31), dt.date(2038, 1, 19)):
                bcur.execute("SELECT %s::date + 1", (d,), prepare=True)
                results.append(repr(bcur.fetchone()[0]))
        # psycopg names its statements _pg3_N; the exact names are an
        # implementation detail, only their number is printed.
        cur.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE %s",
            ("\\_pg3\\_%",),
        )
        prepared_count = cur.fetchone()[0]
        # executemany with RETURNING (uses pipeline mode internally).
        cur.execute("CREATE TEMP TABLE prep_t (id int, sq int)")
        cur.executemany(
            "INSERT INTO prep_t VALUES (%s, %s) RETURNING id, sq",
            [(i, i * i) for i in range(1, 6)],
            returning=True,
        )
        returned = []
        while True:
            returned.append(list(cur.fetchone()))
            if not cur.nextset():
                break
        cur.execute("DROP TABLE prep_t")
    conn.commit()
    return {
        "results": results,
        "server_prepared_count": prepared_count,
        "executemany_returning": returned,
    }


# --------------------------------------------------------------------------
# (h) LISTEN / NOTIFY
# --------------------------------------------------------------------------
def check_notify(url: str) -> dict:
    out: dict = {}
    with connect(url, autocommit=True) as listener, connect(url, autocommit=True) as sender:
        listener.execute("LISTEN phigate_check")
        listener.execute('LISTEN "Mixed Case Chan"')

        # Notification raised by the listening session itself: it arrives
        # together with the NOTIFY command's response.
        listener.execute("NOTIFY phigate_check, 'self payload \u00e9'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=NOTIFY_TIMEOUT_S, stop_after=1)]
        check(len(got) == 1, f"self notify: received {got}")
        out["self"] = got

        # Notifications from another session arrive while the listener is idle,
        # i.e. unsolicited server messages the gateway must forward.
        sender.execute("SELECT pg_notify('phigate_check', %s)", ("from sender 1",))
        sender.execute("SELECT pg_notify('Mixed Case Chan', %s)", ("from sender 2",))
        with sender.transaction():
            # Delivered only at commit, in order, deduplicated by the server.
            sender.execute("NOTIFY phigate_check, 'in tx'")
            sender.execute("NOTIFY phigate_check, 'in tx'")
            sender.execute("NOTIFY phigate_check, ''")
        got = []
        deadline = time.monotonic() + NOTIFY_TIMEOUT_S
        while len(got) < 4 and time.monotonic() < deadline:
            left = max(0.05, deadline - time.monotonic())
            for n in listener.notifies(timeout=left, stop_after=4 - len(got)):
                got.append((n.channel, n.payload))
        check(len(got) == 4, f"cross-session notify: received {got}")
        out["cross"] = got
        out["sender_is_other_session"] = True  # the PIDs themselves are not printed

        listener.execute("UNLISTEN *")
        sender.execute("NOTIFY phigate_check, 'after unlisten'")
        late = [n.payload for n in listener.notifies(timeout=0.5)]
        out["after_unlisten"] = late
    return out


# --------------------------------------------------------------------------
# (i) notices
# --------------------------------------------------------------------------
def check_notice(conn: psycopg.Connection) -> dict:
    notices: list = []

    def handler(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(
            {
                "severity": diag.severity_nonlocalized,
                "sqlstate": diag.sqlstate,
                "message": diag.message_primary,
                "detail": diag.message_detail,
                "hint": diag.message_hint,
            }
        )

    conn.add_notice_handler(handler)
    try:
        conn.execute(
            "DO $$ BEGIN"
            " RAISE NOTICE 'phigate notice %', 42;"
            " RAISE WARNING 'phigate warning' USING DETAIL = 'some detail', HINT = 'a hint';"
            " END $$"
        )
        # A notice emitted during an extended-protocol query (a binary cursor
        # always uses Parse/Bind/Execute, even without parameters).
        conn.cursor(binary=True).execute("DROP TABLE IF EXISTS phigate_never_existed_t")
    finally:
        conn.remove_notice_handler(handler)
    conn.commit()
    check(len(notices) == 3, f"expected 3 notices, got {notices}")
    return {"notices": notices}


# --------------------------------------------------------------------------
# (j) pipeline mode
# --------------------------------------------------------------------------
def check_pipeline(conn: psycopg.Connection) -> dict:
    out: dict = {}
    check(psycopg.Pipeline.is_supported(), "libpq has no pipeline support")
    with conn.pipeline() as p:
        conn.execute("CREATE TEMP TABLE pipe_t (id int PRIMARY KEY, v text)")
        cur = conn.cursor()
        for i in range(1, 11):
            cur.execute("INSERT INTO pipe_t VALUES (%s, %s)", (i, f"v{i}"))
        c_count = conn.execute("SELECT count(*) FROM pipe_t")
        c_sum = conn.cursor(binary=True).execute("SELECT sum(id)::int8 FROM pipe_t WHERE id > %s", (5,))
        c_rows = conn.execute("SELECT id, v FROM pipe_t WHERE id <= %s ORDER BY id", (3,))
        p.sync()
        out["count"] = c_count.fetchone()[0]
        out["sum_gt5"] = c_sum.fetchone()[0]
        out["first3"] = [list(r) for r in c_rows.fetchall()]
        cur.executemany("UPDATE pipe_t SET v = %s WHERE id = %s", [(f"w{i}", i) for i in range(1, 4)])
        c_upd = conn.execute("SELECT string_agg(v, ',' ORDER BY id) FROM pipe_t WHERE id <= 4")
    out["after_update"] = c_upd.fetchone()[0]
    conn.commit()

    # An error inside a pipeline aborts the rest of it; the connection must be
    # usable afterwards.
    try:
        with conn.pipeline():
            conn.execute("INSERT INTO pipe_t VALUES (%s, %s)", (100, "ok"))
            conn.execute("INSERT INTO pipe_t VALUES (%s, %s)", (1, "duplicate"))
            conn.execute("INSERT INTO pipe_t VALUES (%s, %s)", (101, "skipped"))
        raise CheckFailed("pipeline error did not raise")
    except errors.UniqueViolation as e:
        out["error_sqlstate"] = e.sqlstate
    conn.rollback()
    out["rows_after_error"] = conn.execute("SELECT count(*) FROM pipe_t").fetchone()[0]
    conn.execute("DROP TABLE pipe_t")
    conn.commit()
    return out


# --------------------------------------------------------------------------
# optional: query cancel
# --------------------------------------------------------------------------
def check_cancel(conn: psycopg.Connection) -> dict:
    timer = threading.Timer(1.0, conn.cancel_safe)
    timer.start()
    try:
        conn.execute("SELECT pg_sleep(10)")
        raise CheckFailed("pg_sleep was not cancelled")
    except errors.QueryCanceled as e:
        sqlstate = e.sqlstate
    finally:
        timer.cancel()
    conn.rollback()
    alive = conn.execute("SELECT 'alive after cancel'").fetchone()[0]
    conn.commit()
    return {"sqlstate": sqlstate, "after": alive}


def _on_alarm(signum, frame) -> None:
    raise TimeoutError(f"check did not finish within {OVERALL_TIMEOUT_S}s")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1].startswith("-"):
        print(f"usage: {argv[0]} POSTGRES_URL [--cancel]", file=sys.stderr)
        return 2
    url = argv[1]
    with_cancel = "--cancel" in argv[2:]

    # Never hang a CI run: give up loudly after a fixed time.
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(OVERALL_TIMEOUT_S)

    results: dict = {"driver": "psycopg", "driver_version": psycopg.__version__}
    with connect(url) as conn:
        check(conn.info.transaction_status.name == "IDLE", "connection not idle after connect")
        results["simple_query"] = check_simple(conn)
        results["binary_params"] = check_binary_params(conn)
        results["named_cursor"] = check_named_cursor(conn)
        results["copy"] = check_copy(conn)
        results["error"] = check_error(conn)
        results["savepoint"] = check_savepoint(conn)
        results["prepared"] = check_prepared(conn)
        results["notice"] = check_notice(conn)
        results["pipeline"] = check_pipeline(conn)
        if with_cancel:
            results["cancel"] = check_cancel(conn)
    results["notify"] = check_notify(url)
    signal.alarm(0)

    print(json.dumps(results, sort_keys=True, ensure_ascii=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
