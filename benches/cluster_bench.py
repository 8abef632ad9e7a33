#!/usr/bin/env python3
"""Many nodes against one: pgbench through one gateway node, then through three at once.

Starts `phigate demo --nodes 3` (release build: one throwaway PostgreSQL holding the clinic and
the control database, three gateway nodes), then runs pgbench point reads of patients as the
clinician (every guardrail but masking, durable audit, recordings):

    one node     all clients on node 0
    three nodes  the same number of clients split over nodes 0, 1 and 2, at the same time

and counts the control database's transactions during each run (pg_stat_database), to show
that no statement touches it: what it serves is the nodes' background work (leases, copies of
keys and revocations, failed-login counts), the same whatever the load.

Then it holds 50 of the agent's writes on node 1 and approves each through node 2's API, and
reports the time from the approval's answer to the statement's result.

    benches/cluster_bench.py [--duration 10] [--clients 16] [--mode extended] [--json FILE]

On a machine with few cores the protected database and the nodes share the CPU, so three nodes
cannot be faster than one there: the figure that matters is that three nodes cost nothing
extra and that the control database stays idle. Needs what benches/demo_bench.py needs.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_bench  # noqa: E402
import pgbench_compare as pc  # noqa: E402

BIN = demo_bench.BIN
SCRIPT = "\\set id random(1, 10000)\nSELECT * FROM patients WHERE id = :id;\n"


def control_xacts(up):
    out = subprocess.run(
        ["psql", "-X", "-At", "-h", up["host"], "-p", str(up["port"]), "-U", up["user"], "-d",
         "postgres", "-c",
         "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'phigate_control'"],
        capture_output=True, text=True, env=dict(os.environ, PGPASSWORD=up["password"]), check=True)
    return int(out.stdout.strip())


def run_split(nodes, ident, clients, args, work, label):
    """pgbench on each of `nodes` at once, `clients` split between them; summed TPS."""
    per = [clients // len(nodes) + (1 if i < clients % len(nodes) else 0) for i in range(len(nodes))]
    results = [None] * len(nodes)

    def one(i, node):
        logdir = work / f"logs-{label}-{i}"
        logdir.mkdir(exist_ok=True)
        results[i] = pc.pgbench(node["postgres"]["port"], ident["user"], ident["password"],
                                args.mode, per[i], False, args.duration, logdir, db="clinic",
                                script=work / "point-read.sql")

    threads = [threading.Thread(target=one, args=(i, n)) for i, n in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None for r in results):
        sys.exit(f"{label}: a pgbench run failed")
    return {"tps": sum(r["tps"] for r in results),
            "p50_us": max(r["p50_us"] for r in results),
            "p99_us": max(r["p99_us"] for r in results)}


def approval_latency(ready, rounds):
    """Statements held on node 1 and approved through node 2's API: from the approval's answer
    to the statement's result on node 1, in ms (sorted)."""
    import urllib.request
    try:
        import psycopg
    except ImportError:
        sys.exit("needs psycopg: scripts/bench installs it in target/bench-venv")
    agent, reviewer = ready["identities"]["agent"], ready["identities"]["reviewer"]
    n1, n2 = ready["nodes"][1], ready["nodes"][2]
    conn = psycopg.connect(host="127.0.0.1", port=n1["postgres"]["port"], dbname="clinic",
                           user=agent["user"], password=agent["password"], sslmode="disable",
                           autocommit=True)
    api = n2["http"]

    def call(path, body=None):
        req = urllib.request.Request(api + path, data=body, headers={
            "Authorization": "Bearer " + reviewer["password"], "Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(req))

    out = []
    for _ in range(rounds):
        done = {}

        def held():
            conn.execute("UPDATE departments SET name = name WHERE id = 1", prepare=False)
            done["at"] = time.perf_counter()

        t = threading.Thread(target=held)
        t.start()
        while True:
            reviews = call("/v1/reviews")["reviews"]
            if reviews:
                break
            time.sleep(0.01)
        call(f"/v1/reviews/{reviews[0]['id']}/approve", json.dumps({"reason": "bench"}).encode())
        approved = time.perf_counter()
        t.join()
        out.append((done["at"] - approved) * 1000)
    conn.close()
    return sorted(out)


def main():
    signal.signal(signal.SIGTERM, pc._interrupt)
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--mode", default="extended", choices=["simple", "extended", "prepared"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not BIN.exists():
        sys.exit("build phigate first: cargo build --release")
    work = Path(tempfile.mkdtemp(prefix="phigate-cluster-bench-"))
    os.chmod(work, 0o755)
    (work / "point-read.sql").write_text(SCRIPT)
    demo = None
    try:
        demo, _, ready = demo_bench.start_demo(work, ["--nodes", "3"])
        up, nodes = ready["upstream"], ready["nodes"]
        ident = ready["identities"]["clinician"]
        rows = []
        # Warm every node (catalogs, masking, statement caches) before measuring.
        run_split(nodes, ident, len(nodes), argparse.Namespace(mode=args.mode, duration=2), work,
                  "warm")
        for label, targets in [("one node", nodes[:1]), ("three nodes", nodes)]:
            before, t0 = control_xacts(up), time.time()
            r = run_split(targets, ident, args.clients, args, work, label.replace(" ", "-"))
            spent = time.time() - t0
            after = control_xacts(up)
            r.update(label=label, control_xacts=after - before,
                     control_xacts_per_s=(after - before) / spent,
                     statements=r["tps"] * args.duration)
            rows.append(r)
            print(f"  {label:12} {r['tps']:9.0f} tps  p50 {r['p50_us']:6.0f} µs  p99 "
                  f"{r['p99_us']:6.0f} µs  control database: {after - before} transactions "
                  f"({r['control_xacts_per_s']:.1f}/s)", file=sys.stderr)
        lat = approval_latency(ready, 50)
        print(f"  approval on node 2 to result on node 1, 50 holds: p50 {lat[24]:.1f} ms, "
              f"p99 {lat[-1]:.1f} ms (max)", file=sys.stderr)
        rows.append({"label": "approval to execution", "p50_ms": lat[24], "max_ms": lat[-1]})
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if demo is not None:
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.kill()
    latency = rows.pop()
    base = rows[0]["tps"]
    print(f"| nodes | clients | TPS | vs one node | p50 µs | p99 µs | statements | control database transactions (per s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {args.clients} | {r['tps']:.0f} | {r['tps'] / base:.2f}× | "
              f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['statements']:.0f} | "
              f"{r['control_xacts']} ({r['control_xacts_per_s']:.1f}) |")
    print(f"\nApproval on node 2 to the held statement's result on node 1 (50 holds): "
          f"p50 {latency['p50_ms']:.1f} ms, max {latency['max_ms']:.1f} ms.")
    if args.json:
        Path(args.json).write_text(json.dumps(rows + [latency], indent=2))


if __name__ == "__main__":
    main()
