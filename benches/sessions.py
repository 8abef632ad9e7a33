#!/usr/bin/env python3
"""Many concurrent sessions: memory per session and time to open them.

Starts the same throwaway PostgreSQL, pgbouncer and phigate as pgbench_compare.py, opens N idle
sessions (each runs one query and stays open) through pgbouncer and through phigate, and reports
the proxy's resident memory before and after, per session.

    benches/sessions.py [--sessions 1000] [--out bench-results]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgbench_compare as pc  # noqa: E402

try:
    import psycopg
except ImportError:
    sys.exit("needs psycopg: scripts/bench installs it in target/bench-venv")


def open_sessions(port, user, password, n):
    conns = []
    started = time.time()
    for i in range(n):
        try:
            c = psycopg.connect(host="127.0.0.1", port=port, user=user, password=password,
                                dbname=pc.DB, sslmode="disable", autocommit=True, connect_timeout=30)
        except psycopg.Error as e:
            raise RuntimeError(f"session {i + 1} of {n} on port {port} failed: {e}") from None
        c.execute("SELECT 1").fetchone()
        conns.append(c)
    return conns, time.time() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--out", default=str(pc.ROOT / "bench-results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # pgbouncer keeps its server connections after the clients leave: room for both.
    env = pc.Env(1, 1, max_connections=2 * args.sessions + 50)
    rows = []
    try:
        bouncer_pid = int(os.popen("pgrep -n -x pgbouncer").read().split()[0])
        for name, pid in [("pgbouncer", bouncer_pid), ("phigate", env.gateway.pid),
                          ("phigate-guarded", env.guarded_gateway.pid)]:
            port, user, pw = env.targets()[name]
            before = env.rss_kib(pid)
            conns, secs = open_sessions(port, user, pw, args.sessions)
            time.sleep(1)
            after = env.rss_kib(pid)
            for c in conns:
                c.close()
            rows.append({"proxy": name, "sessions": args.sessions, "rss_before_kib": before,
                         "rss_after_kib": after, "per_session_kib": (after - before) / args.sessions,
                         "open_seconds": secs})
            print(f"{name}: {args.sessions} sessions, RSS {before} -> {after} KiB, "
                  f"{(after - before) / args.sessions:.1f} KiB/session, opened in {secs:.1f}s", file=sys.stderr)
            time.sleep(2)
    finally:
        env.close()
    table = ["| proxy | sessions | RSS before (KiB) | RSS with sessions (KiB) | KiB per session | seconds to open |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['proxy']} | {r['sessions']} | {r['rss_before_kib']} | {r['rss_after_kib']} | "
                     f"{r['per_session_kib']:.1f} | {r['open_seconds']:.1f} |")
    print("\n".join(table))
    (out / "sessions.md").write_text("\n".join(table) + "\n")
    (out / "sessions.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
