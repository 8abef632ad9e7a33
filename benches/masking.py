#!/usr/bin/env python3
"""Masking throughput: a million-row SELECT with the demo's PHI columns, masked vs unmasked vs
direct, text and binary results, and the gateway's peak memory.

Starts `phigate demo` (release build), then streams
    SELECT p.* FROM patients p CROSS JOIN generate_series(1, 100)      -- 10,000 x 100 rows
through the gateway as the agent (masked: 11 PHI columns computed by the masking view), as the
clinician (unmasked, same gateway) and directly from PostgreSQL, with psycopg's row streaming
(single-row mode: nothing buffered client-side). Prints a markdown table; --json for raw figures.

    benches/masking.py [--repeat 100] [--json]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:
    import psycopg
except ImportError:
    sys.exit("needs psycopg: scripts/bench installs it in target/bench-venv")


def peak_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def stream(conninfo, sql, binary):
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.cursor(binary=binary) as cur:
            started = time.time()
            rows = 0
            for _ in cur.stream(sql):
                rows += 1
            return rows, time.time() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=100, help="copies of the 10,000 patients")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    binary = ROOT / "target" / "release" / "phigate"
    if not binary.exists():
        sys.exit("build phigate first: cargo build --release")
    tmp = Path(tempfile.mkdtemp(prefix="phigate-maskbench-"))
    os.chmod(tmp, 0o755)  # the throwaway PostgreSQL runs as the postgres user
    ready = tmp / "ready.json"
    demo = subprocess.Popen([str(binary), "demo", "--pg-port", "0", "--http-port", "0",
                             "--data-dir", str(tmp / "data"), "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "demo.log", "w"))
    try:
        for _ in range(600):
            if ready.exists():
                break
            if demo.poll() is not None:
                sys.exit(f"demo exited: {(tmp / 'demo.log').read_text()}")
            time.sleep(0.1)
        r = json.loads(ready.read_text())
        pg, up = r["postgres"], r["upstream"]
        sql = f"SELECT p.* FROM patients p CROSS JOIN generate_series(1, {args.repeat})"

        def gw(who):
            i = r["identities"][who]
            return (f"host={pg['host']} port={pg['port']} dbname={pg['database']} user={i['user']} "
                    f"password={i['password']} sslmode=disable")
        direct = (f"host={up['host']} port={up['port']} dbname={up['database']} user={up['user']} "
                  f"password={up['password']} sslmode=disable")
        rss_start = peak_rss_kib(demo.pid)
        results = []
        for fmt in ("text", "binary"):
            for name, conninfo in (("direct", direct), ("phigate unmasked (clinician)", gw("clinician")),
                                   ("phigate masked (agent)", gw("agent"))):
                rows, secs = stream(conninfo, sql, fmt == "binary")
                results.append({"format": fmt, "path": name, "rows": rows, "seconds": round(secs, 2),
                                "rows_per_s": round(rows / secs)})
                print(f"{fmt:6} {name:30} {rows} rows in {secs:.2f}s", file=sys.stderr)
        peak = peak_rss_kib(demo.pid)
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    if args.json:
        print(json.dumps({"results": results, "gateway_peak_rss_kib": peak,
                          "gateway_rss_before_kib": rss_start}, indent=1))
        return
    print("| format | path | rows | seconds | rows/s | vs unmasked |")
    print("|---|---|---|---|---|---|")
    for row in results:
        base = next(x for x in results if x["format"] == row["format"] and "unmasked" in x["path"])
        print(f"| {row['format']} | {row['path']} | {row['rows']:,} | {row['seconds']} | "
              f"{row['rows_per_s']:,} | {row['rows_per_s'] / base['rows_per_s']:.2f}x |")
    print(f"\nGateway (demo process) peak RSS: {peak / 1024:.1f} MiB "
          f"(before the runs: {rss_start / 1024:.1f} MiB)")


if __name__ == "__main__":
    main()
