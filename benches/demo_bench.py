#!/usr/bin/env python3
"""The guarded path on the demo data: point reads of patients through every tier of phigate,
side by side with direct PostgreSQL and pgbouncer.

Starts `phigate demo` (release build) for its PostgreSQL with the synthetic clinic, its keys and
its configuration, then runs `phigate serve` on copies of that configuration, one at a time:

    pass-through   audit and recordings off, an unrestricted role (the bare relay)
    strict         the demo as shipped: durable write-ahead audit, recordings
    process        audit.durability = "process"
    tmpfs          strict, with the audit log on /dev/shm (an fsync that costs nothing: what is
                   left is the CPU cost of the guardrails)
    unmasked-tmpfs tmpfs, the agent's role with masking off (same grants, rules and tags)

and any of them with `-nocache` appended (e.g. `strict-nocache`): the same with the statement
cache off (`upstream.statement_cache = 0`), for before/after figures in one run.

and, through each, pgbench (extended protocol unless --mode says otherwise) with the script

    \\set id random(1, 10000)
    SELECT * FROM patients WHERE id = :id;

as the clinician (every guardrail but masking; rows recorded, encrypted) and as the agent
(masked: 11 of the 15 columns computed by the masking view, 5 of them tokens). Direct and
pgbouncer (session pooling) read the same table as PostgreSQL's superuser. Prints a markdown
table (TPS, p50, p99, ratios), and with --json writes the raw figures.

    benches/demo_bench.py [--duration 10] [--clients 1,8,64] [--mode extended] [--json FILE]
                          [--gateways pass-through,strict,process,tmpfs,unmasked-tmpfs]

Needs what benches/pgbench_compare.py needs, plus tomli-w (scripts/bench installs it).
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgbench_compare as pc  # noqa: E402

try:
    import tomli_w
except ImportError:
    sys.exit("needs tomli-w: scripts/bench installs it in target/bench-venv")

BIN = pc.ROOT / "target" / "release" / "phigate"
BENCH_TOKEN = "phg_bench_passthrough_0123456789"
SCRIPT = "\\set id random(1, 10000)\nSELECT * FROM patients WHERE id = :id;\n"
GATEWAYS = ["pass-through", "strict", "process", "tmpfs", "unmasked-tmpfs"]


def start_demo(work, extra=()):
    """`phigate demo` (with `extra` arguments) in `work`: the process, its data directory and
    its ready file's contents."""
    data, ready = work / "demo", work / "ready.json"
    log = open(work / "demo.log", "w")
    p = subprocess.Popen([str(BIN), "demo", "--data-dir", str(data), "--ready-file", str(ready),
                          "--pg-port", str(pc.free_port()), "--http-port", str(pc.free_port()),
                          *extra],
                         stdout=log, stderr=log)
    deadline = time.time() + 180
    while not ready.exists():
        if p.poll() is not None or time.time() > deadline:
            sys.exit(f"phigate demo did not start: see {work / 'demo.log'}")
        time.sleep(0.2)
    return p, data, json.loads(ready.read_text())


def gateway_config(template, work, name, port, http_port):
    """The demo's configuration, as gateway `name` runs it: its own ports and data directory
    (with the demo's keys, so the demo's tokens and masking key hold), limits that admit the
    benchmark's clients, and what the variant changes."""
    cfg = tomllib.loads(template.read_text())
    data = work / f"data-{name}"
    data.mkdir(mode=0o700)
    shutil.copytree(template.parent / "keys", data / "keys")
    cfg["data_dir"] = str(data)
    cfg["listen"]["address"] = f"127.0.0.1:{port}"
    cfg["listen"]["http_address"] = f"127.0.0.1:{http_port}"
    cfg["limits"].update(startups_per_source=512, sessions_per_identity=512,
                         sessions_per_role=512)
    cfg.setdefault("log", {})["level"] = "warn"
    full = name
    if name.endswith("-nocache"):
        cfg["upstream"]["statement_cache"] = 0
        name = name.removesuffix("-nocache")
    if name == "pass-through":
        cfg["audit"] = {"enabled": False}
        cfg["recording"] = {"enabled": False}
        cfg["identity"] = [{"subject": "bench@phigate", "roles": ["bench"],
                            "token_sha256": hashlib.sha256(BENCH_TOKEN.encode()).hexdigest()}]
        cfg["role"].append({"name": "bench", "restricted": False,
                            "grant": [{"schema": "*", "actions": ["*"]}]})
    if name == "process":
        cfg["audit"]["durability"] = "process"
    if name.endswith("tmpfs"):
        d = Path(tempfile.mkdtemp(prefix="phigate-bench-audit-", dir="/dev/shm"))
        cfg["audit"]["dir"] = str(d)
    if name.startswith("unmasked"):
        for role in cfg["role"]:
            role["masked"] = False
    path = work / f"phigate-{full}.toml"
    path.write_text(tomli_w.dumps(cfg))
    os.chmod(path, 0o600)
    return path, cfg.get("audit", {}).get("dir")


def run_gateway(path, port, work, name):
    log = open(work / f"phigate-{name}.log", "w")
    p = subprocess.Popen([str(BIN), "serve", "--config", str(path)], stdout=log, stderr=log)
    pc.wait_port(port, p, timeout=60)
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()


def main():
    signal.signal(signal.SIGTERM, pc._interrupt)
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--mode", default="extended", choices=["simple", "extended", "prepared"])
    ap.add_argument("--gateways", default=",".join(GATEWAYS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not BIN.exists():
        sys.exit("build phigate first: cargo build --release")
    clients = [int(c) for c in args.clients.split(",")]
    work = Path(tempfile.mkdtemp(prefix="phigate-demo-bench-"))
    os.chmod(work, 0o755)
    script = work / "point-read.sql"
    script.write_text(SCRIPT)
    logdir = work / "logs"
    logdir.mkdir()
    procs, shm = [], []
    try:
        demo, data, ready = start_demo(work)
        procs.append(demo)
        up = ready["upstream"]
        bouncer_port = pc.free_port()
        procs.append(pc.start_pgbouncer(work / "bouncer", bouncer_port, up["port"], up["database"],
                                        up["user"], up["password"], max(clients) + 8))
        ids = ready["identities"]

        def bench(label, port, user, password):
            for c in clients:
                r = pc.pgbench(port, user, password, args.mode, c, False, args.duration, logdir,
                               db=up["database"], script=script)
                results.append({"target": label, "clients": c, **r})
                print(f"  {label:28} {c:3} clients: {r['tps']:9.0f} tps  p50 {r['p50_us']:6.0f} µs"
                      f"  p99 {r['p99_us']:6.0f} µs", file=sys.stderr)

        results = []
        bench("direct", up["port"], up["user"], up["password"])
        bench("pgbouncer", bouncer_port, up["user"], up["password"])
        for name in args.gateways.split(","):
            port, http_port = pc.free_port(), pc.free_port()
            path, audit_dir = gateway_config(data / "phigate.toml", work, name, port, http_port)
            if audit_dir:
                shm.append(audit_dir)
            gw = run_gateway(path, port, work, name)
            try:
                if name.removesuffix("-nocache") == "pass-through":
                    bench(f"phigate {name}", port, "bench", BENCH_TOKEN)
                    continue
                if not name.startswith("unmasked"):
                    bench(f"clinician {name}", port, "clinician", ids["clinician"]["password"])
                bench(f"agent {name}", port, "ai-agent", ids["agent"]["password"])
            finally:
                stop(gw)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        for p in reversed(procs):
            stop(p)
        for d in shm:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(render(results, clients))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def render(results, clients):
    by = {(r["target"], r["clients"]): r for r in results}
    targets = list(dict.fromkeys(r["target"] for r in results))
    out = ["| target | clients | TPS | vs direct | vs pgbouncer | p50 µs | p99 µs |",
           "|---|---|---|---|---|---|---|"]
    for t in targets:
        for c in clients:
            r = by.get((t, c))
            if not r:
                continue
            d, b = by.get(("direct", c)), by.get(("pgbouncer", c))
            ratio = lambda base: f"{r['tps'] / base['tps']:.2f}×" if base else "–"  # noqa: E731
            out.append(f"| {t} | {c} | {r['tps']:.0f} | {ratio(d)} | {ratio(b)} | "
                       f"{r['p50_us']:.0f} | {r['p99_us']:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
