#!/usr/bin/env python3
"""What a driver sees of its session, with psycopg 3: client encodings other than UTF8,
the pid of notifications, and application_name.

Usage: check_transparency.py POSTGRES_URL [OTHER_URL | --restricted]

Prints ONE line of JSON with sorted keys. Pids are never printed, only whether they agree
with the BackendKeyData the driver was given (`conn.info.backend_pid`). OTHER_URL (default:
POSTGRES_URL) is a second login for a second connection that sends a notification.

A statement that fails is reported as its SQLSTATE and primary message, decoded by the
driver with the connection's encoding: a message in the wrong encoding shows up here.
"""

from __future__ import annotations

import json
import sys

import psycopg

# A text per encoding with characters outside ASCII that the encoding has.
TEXTS = {
    "LATIN1": "café ñ ü",
    "WIN1252": "café € œ",
    "LATIN5": "İstanbul ğ ş",
    "KOI8R": "привет",
    "EUC_JP": "日本語 テキスト",
    "EUC_KR": "한국어",
}


def attempt(conn: psycopg.Connection, sql: str, params=None):
    try:
        cur = conn.execute(sql, params)
        return {"rows": [list(r) for r in cur.fetchall()] if cur.description else cur.statusmessage}
    except psycopg.Error as e:
        return {"error": [e.sqlstate, e.diag.message_primary]}


def encodings(url: str) -> dict:
    out = {}
    for enc, text in TEXTS.items():
        with psycopg.connect(url, client_encoding=enc, autocommit=True) as c:
            r = {"client_encoding": c.execute("SHOW client_encoding").fetchone()[0]}
            r["literal"] = attempt(c, f"SELECT '{text}'::text, length('{text}'), octet_length('{text}')")
            # Extended protocol: the parameter travels in the client's encoding.
            r["param"] = attempt(c, "SELECT %s::text, upper(%s::text)", (text, text))
            r["column_name"] = c.execute(f'SELECT 1 AS "{text}"').description[0].name
            r["unknown_relation"] = attempt(c, f'SELECT * FROM "no {text}"')
            r["unknown_function"] = attempt(c, f'SELECT "no {text}"()')
            r["escape"] = attempt(c, f"SELECT E'{text}\\\\', '\\\\{text}'")
            out[enc] = r
    return out


def switch(url: str) -> dict:
    """SET client_encoding / SET NAMES / RESET in a session."""
    out = {}
    with psycopg.connect(url, autocommit=True) as c:
        out["set_latin1"] = attempt(c, "SET client_encoding TO 'LATIN1'")
        out["after_set"] = [c.info.encoding, attempt(c, "SELECT 'café', %s::text", ("naïve",))]
        out["set_names"] = attempt(c, "SET NAMES 'EUC_JP'")
        out["after_names"] = [c.info.encoding, attempt(c, "SELECT '日本'")]
        out["reset"] = attempt(c, "RESET client_encoding")
        out["after_reset"] = [c.info.encoding, attempt(c, "SELECT 'über'")]
    return out


def notifications(url: str, other_url: str) -> dict:
    out = {}
    with psycopg.connect(url, autocommit=True) as c, psycopg.connect(other_url, autocommit=True) as o:
        c.execute("LISTEN phigate_transparency")
        c.execute("NOTIFY phigate_transparency, 'own'")
        o.execute("NOTIFY phigate_transparency, 'other'")
        got = list(c.notifies(timeout=10, stop_after=2))
        mine = c.info.backend_pid
        theirs = o.info.backend_pid
        out["notifications"] = sorted(
            [n.payload, "own pid" if n.pid == mine else "other's pid" if n.pid == theirs else "unknown pid"]
            for n in got
        )
        c.execute("UNLISTEN *")
    return out


def application_name(url: str) -> dict:
    out = {}
    with psycopg.connect(url, autocommit=True, application_name="transparency-check") as c:
        out["startup"] = c.info.parameter_status("application_name")
        c.execute("SET application_name = 'changed'")
        out["set"] = c.info.parameter_status("application_name")
        c.execute("RESET application_name")
        out["reset"] = c.info.parameter_status("application_name")
    with psycopg.connect(url, autocommit=True) as c:
        out["none"] = c.info.parameter_status("application_name")
    return out


def restricted(url: str) -> dict:
    """A restricted role: the encoding is chosen when connecting, not changed later."""
    with psycopg.connect(url, client_encoding="LATIN1", autocommit=True) as c:
        return {
            "set_encoding": attempt(c, "SET client_encoding TO 'UTF8'"),
            "still": [c.info.encoding, attempt(c, "SELECT 'café'")],
        }


def main() -> None:
    url = sys.argv[1]
    if sys.argv[2:] == ["--restricted"]:
        result = {"encodings": encodings(url), "application_name": application_name(url)}
        result.update(restricted(url))
        print(json.dumps(result, sort_keys=True, ensure_ascii=False))
        return
    other = sys.argv[2] if len(sys.argv) > 2 else url
    result = {
        "encodings": encodings(url),
        "switch": switch(url),
        "application_name": application_name(url),
    }
    result.update(notifications(url, other))
    print(json.dumps(result, sort_keys=True, ensure_ascii=False))


if __name__ == "__main__":
    main()
