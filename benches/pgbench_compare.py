#!/usr/bin/env python3
"""Side-by-side pgbench: direct PostgreSQL, pgbouncer (session pooling) and phigate.

One run starts a throwaway PostgreSQL 15 cluster, pgbouncer and `phigate serve`, all on
loopback, and runs pgbench select-only (-S) in the simple, extended and prepared query modes at
several client counts, with TLS off and on, through each path. It prints a markdown table (TPS,
p50 and p99 latency, ratios to direct and to pgbouncer), writes it with the raw figures as JSON,
and draws a PNG chart when matplotlib is available.

    benches/pgbench_compare.py [--duration 10] [--clients 1,8,64] [--modes simple,extended,prepared]
                               [--tls off,on] [--scale 10] [--out bench-results]

Needs: PostgreSQL server binaries, pgbench, pgbouncer, openssl, and a release build of phigate
(`cargo build --release`). scripts/bench does all of that.
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_USER = "phigate_app"
APP_PASSWORD = "bench-password"
TOKEN = "phg_bench_token_0123456789"
GUARDED_TOKEN = "phg_bench_guarded_0123456789"
DB = "bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin():
    env = os.environ.get("PHIGATE_PG_BIN")
    if env:
        return Path(env)
    versions = sorted(
        (int(p.name), p / "bin") for p in Path("/usr/lib/postgresql").glob("*") if p.name.isdigit()
    )
    if not versions:
        sys.exit("PostgreSQL server binaries not found: apt-get install postgresql")
    return versions[-1][1]


def as_postgres(cmd):
    return (["runuser", "-u", "postgres", "--"] + cmd) if os.geteuid() == 0 else cmd


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wait_port(port, proc=None, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start_pgbouncer(d, port, pg_port, db, user, password, max_connections, tls=None):
    """pgbouncer in session pooling mode on 127.0.0.1:port in front of db; returns its process."""
    d.mkdir()
    (d / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    (d / "pgbouncer.ini").write_text(
        f"[databases]\n{db} = host=127.0.0.1 port={pg_port} dbname={db}\n\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {d / 'userlist.txt'}\n"
        f"pool_mode = session\nmax_client_conn = {max_connections + 100}\n"
        f"default_pool_size = {max_connections}\n"
        f"max_db_connections = 0\nlogfile = {d / 'log'}\n" +
        (f"client_tls_sslmode = allow\nclient_tls_key_file = {tls[0]}\n"
         f"client_tls_cert_file = {tls[1]}\n" if tls else ""))
    if os.geteuid() == 0:
        for p in [d, d / "userlist.txt", d / "pgbouncer.ini"]:
            shutil.chown(p, "postgres")
    # runuser resets the soft descriptor limit to 1024: raise it, or pgbouncer stops
    # accepting at about 500 clients (a client and a server socket each).
    cmd = f"ulimit -n {resource.getrlimit(resource.RLIMIT_NOFILE)[1]} && exec pgbouncer {d / 'pgbouncer.ini'}"
    p = subprocess.Popen(as_postgres(["sh", "-c", cmd]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p)
    return p


class Env:
    """The cluster, pgbouncer and phigate, cleaned up on exit."""

    def __init__(self, scale, worker_threads, record="shape", max_connections=400,
                 audit_dir=None, read_durability="forward", durability="strict"):
        self.worker_threads = worker_threads
        self.durability = durability
        self.record = record
        self.audit_dir = audit_dir
        self.read_durability = read_durability
        self.max_connections = max_connections
        self.dir = Path(tempfile.mkdtemp(prefix="phigate-bench-"))
        os.chmod(self.dir, 0o755)
        self.procs = []
        self.extra_dirs = []
        self.bin = pg_bin()
        self.pg_port, self.bouncer_port, self.gw_port = free_port(), free_port(), free_port()
        self.guarded_port = free_port()
        self.guarded_http_port = free_port()
        self._certs()
        self._postgres(scale)
        self._pgbouncer()
        # Two gateways: the bare relay (pass-through role, audit off) and every guardrail that
        # exists (restricted role with grants and rules, durable write-ahead audit).
        self._phigate("relay", self.gw_port, audit=False)
        (self.dir / "recording.key").write_text(os.urandom(32).hex())
        self._phigate("guarded", self.guarded_port, audit=True)

    def _certs(self):
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(self.dir / "server.key"), "-out", str(self.dir / "server.crt")])
        os.chmod(self.dir / "server.key", 0o600)
        if os.geteuid() == 0:
            shutil.chown(self.dir / "server.key", "postgres")
            shutil.chown(self.dir / "server.crt", "postgres")

    def _postgres(self, scale):
        data = self.dir / "pg"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
        pw = self.dir / "pw"
        pw.write_text(APP_PASSWORD + "\n")
        os.chmod(pw, 0o644)
        run(as_postgres([str(self.bin / "initdb"), "-D", str(data / "data"), "-U", "postgres",
                         "-A", "scram-sha-256", f"--pwfile={pw}", "--no-sync", "-E", "UTF8", "--locale=C"]))
        with open(data / "data" / "postgresql.conf", "a") as f:
            f.write(f"port = {self.pg_port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{data}'\nmax_connections = {self.max_connections}\n"
                    f"shared_buffers = '256MB'\nfsync = off\nsynchronous_commit = off\n"
                    f"ssl = on\nssl_cert_file = '{self.dir / 'server.crt'}'\n"
                    f"ssl_key_file = '{self.dir / 'server.key'}'\n")
        with open(data / "data" / "pg_hba.conf", "w") as f:
            f.write("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        run(as_postgres([str(self.bin / "pg_ctl"), "-D", str(data / "data"), "-l", str(data / "log"),
                         "-w", "start"]))
        self.pg_data = data / "data"
        psql = as_postgres([str(self.bin / "psql"), "-X", "-q", "-h", str(data), "-p", str(self.pg_port),
                            "-U", "postgres", "-v", "ON_ERROR_STOP=1"])
        run(psql + ["-c", f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"])
        run(psql + ["-c", f"CREATE DATABASE {DB} OWNER {APP_USER}"])
        env = dict(os.environ, PGPASSWORD=APP_PASSWORD)
        run(["pgbench", "-i", "-q", "-s", str(scale),
             f"host=127.0.0.1 port={self.pg_port} user={APP_USER} dbname={DB}"], env=env)

    def _pgbouncer(self):
        self.procs.append(start_pgbouncer(
            self.dir / "bouncer", self.bouncer_port, self.pg_port, DB, APP_USER, APP_PASSWORD,
            self.max_connections, tls=(self.dir / "server.key", self.dir / "server.crt")))

    def _phigate(self, name, port, audit):
        binary = ROOT / "target" / "release" / "phigate"
        if not binary.exists():
            sys.exit("build phigate first: cargo build --release")
        token_hash = hashlib.sha256(TOKEN.encode()).hexdigest()
        cfg = self.dir / f"phigate-{name}.toml"
        audit_cfg = (f'data_dir = "{self.dir / ("data-" + name)}"\n\n' if audit
                     else "")
        cfg.write_text(
            audit_cfg +
            f'[listen]\naddress = "127.0.0.1:{port}"\n' +
            (f'http_address = "127.0.0.1:{self.guarded_http_port}"\n' if audit else '') + '\n' +
            f'[tls]\ncert_file = "{self.dir / "server.crt"}"\nkey_file = "{self.dir / "server.key"}"\n\n'
            f'[upstream]\nhost = "127.0.0.1"\nport = {self.pg_port}\ndatabase = "{DB}"\n'
            f'user = "{APP_USER}"\npassword = "{APP_PASSWORD}"\n\n'
            f'[[identity]]\nsubject = "bench@phigate"\ntoken_sha256 = "{token_hash}"\nroles = ["bench"]\n\n'
            f'[[identity]]\nsubject = "guarded@phigate"\n'
            f'token_sha256 = "{hashlib.sha256(GUARDED_TOKEN.encode()).hexdigest()}"\nroles = ["guarded"]\n\n'
            # Pass-through: unrestricted, every grant (the built-in guards still run).
            f'[[role]]\nname = "bench"\nrestricted = false\n[[role.grant]]\nschema = "*"\nactions = ["*"]\n\n'
            # Every guardrail that exists: restricted role, pinned search_path, grants per table,
            # a rule, statement timeout.
            f'[[role]]\nname = "guarded"\nstatement_timeout = "30s"\nrecord = "{self.record}"\n'
            f'[[role.grant]]\nschema = "public"\n'
            f'tables = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]\n'
            f'actions = ["select"]\n\n'
            f'[[rule]]\nname = "no-writes"\nroles = ["guarded"]\nkinds = ["write", "ddl"]\naction = "deny"\n\n' +
            ('[audit]\nenabled = false\n\n[recording]\nenabled = false\n\n' if not audit else
             self._audit_section() +
             f'[recording]\nkey_file = "{self.dir / "recording.key"}"\n\n') +
            f'[log]\nlevel = "warn"\n\n'
            # Admit the benchmark's clients (one identity opens them all).
            f'[limits]\nsessions_per_identity = 2048\nsessions_per_role = 2048\n'
            f'startups_per_source = 2048\n\n'
            f'[runtime]\nworker_threads = {self.worker_threads}\n')
        log = open(self.dir / f"phigate-{name}.log", "w")
        p = subprocess.Popen([str(binary), "serve", "--config", str(cfg)],
                             stdout=log, stderr=log)
        self.procs.append(p)
        if name == "relay":
            self.gateway = p
        else:
            self.guarded_gateway = p
        wait_port(port, p)

    def audit_counters(self):
        """The guarded gateway's audit writer counters (/metrics), or {} if unreachable."""
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.guarded_http_port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith("phigate_audit_"):
                out[parts[0]] = float(parts[1])
        return out

    def _audit_section(self):
        lines = [f'read_durability = "{self.read_durability}"',
                 f'durability = "{self.durability}"']
        if self.audit_dir:
            d = Path(tempfile.mkdtemp(prefix="phigate-bench-audit-", dir=self.audit_dir))
            self.extra_dirs.append(d)
            lines.append(f'dir = "{d}"')
        return "[audit]\n" + "\n".join(lines) + "\n\n"

    def targets(self):
        return {
            "direct": (self.pg_port, APP_USER, APP_PASSWORD),
            "pgbouncer": (self.bouncer_port, APP_USER, APP_PASSWORD),
            "phigate": (self.gw_port, "bench", TOKEN),
            "phigate-guarded": (self.guarded_port, "guarded", GUARDED_TOKEN),
        }

    def rss_kib(self, pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.pg_data), "-m", "immediate",
                                    "-w", "stop"]), capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        for d in self.extra_dirs:
            shutil.rmtree(d, ignore_errors=True)


def pgbench(port, user, password, mode, clients, tls, duration, logdir, db=DB, script=None):
    """pgbench select-only (-S), or the custom `script` file, against db; TPS and latencies."""
    for f in logdir.glob("pgbench_log.*"):
        f.unlink()
    threads = min(clients, os.cpu_count() or 2)
    conn = f"host=127.0.0.1 port={port} user={user} dbname={db} sslmode={'require' if tls else 'disable'}"
    workload = ["-f", str(script)] if script else ["-S"]
    cmd = ["pgbench", "-n", *workload, "-M", mode, "-c", str(clients), "-j", str(threads),
           "-T", str(duration), "-l", "--log-prefix", str(logdir / "pgbench_log"), conn]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PGPASSWORD=password))
    if r.returncode != 0:
        raise RuntimeError(f"pgbench failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    tps = next(float(l.split("=")[1].split()[0]) for l in r.stdout.splitlines() if l.startswith("tps ="))
    failed = next((l for l in r.stdout.splitlines() if "failed transactions" in l), "")
    lat = []
    for f in logdir.glob("pgbench_log.*"):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]))
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [float("nan")] * 99
    return {"tps": tps, "p50_us": q[49], "p99_us": q[98], "transactions": len(lat), "failed": failed.strip()}


def _interrupt(*_):
    raise KeyboardInterrupt


def main():
    # Clean up the cluster and daemons on SIGTERM too, not only on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--tls", default="off,on")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench-results"))
    ap.add_argument("--worker-threads", type=int, default=1,
                    help="phigate runtime threads (1 = single-threaded, like pgbouncer)")
    ap.add_argument("--guarded-record", default="shape", choices=["none", "shape", "rows"],
                    help="what the guarded gateway's session recordings keep (docs/recording.md); "
                         "shape is the default for an unmasked role, rows is encrypted")
    ap.add_argument("--guarded-audit-dir", default=None,
                    help="put the guarded gateway's audit log under this directory (e.g. /dev/shm "
                         "to see the gateway without the disk's flush latency)")
    ap.add_argument("--guarded-read-durability", default="forward", choices=["forward", "results"],
                    help="audit.read_durability of the guarded gateway (docs/audit.md)")
    ap.add_argument("--guarded-durability", default="strict", choices=["strict", "process"],
                    help="audit.durability of the guarded gateway (docs/audit.md)")
    ap.add_argument("--targets", default="direct,pgbouncer,phigate,phigate-guarded",
                    help="which paths to measure (ratios need direct and pgbouncer)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = Env(args.scale, args.worker_threads, args.guarded_record,
              audit_dir=args.guarded_audit_dir, read_durability=args.guarded_read_durability,
              durability=args.guarded_durability)
    results = []
    try:
        logdir = env.dir / "logs"
        logdir.mkdir()
        for tls in [t == "on" for t in args.tls.split(",")]:
            for mode in args.modes.split(","):
                for clients in [int(c) for c in args.clients.split(",")]:
                    row = {"tls": tls, "mode": mode, "clients": clients}
                    for name, (port, user, pw) in env.targets().items():
                        if name not in args.targets.split(","):
                            continue
                        before = env.audit_counters() if name == "phigate-guarded" else {}
                        row[name] = pgbench(port, user, pw, mode, clients, tls, args.duration, logdir)
                        if before:
                            after = env.audit_counters()
                            d = {k: after.get(k, 0) - v for k, v in before.items()}
                            waits = d.get("phigate_audit_durable_waits_total", 0)
                            fsyncs = d.get("phigate_audit_fsyncs_total", 0)
                            row["guarded_audit"] = {
                                "records": d.get("phigate_audit_records_total", 0),
                                "fsyncs": fsyncs,
                                "waits": waits,
                                "fsyncs_per_wait": d.get("phigate_audit_durable_wait_fsyncs_total", 0) / waits if waits else 0,
                            }
                            print(f"  guarded audit: {row['guarded_audit']}", file=sys.stderr)
                        print(f"tls={'on' if tls else 'off'} {mode:9} c={clients:<3} {name:10} "
                              f"tps={row[name]['tps']:>10.0f} p50={row[name]['p50_us']:>7.0f}us "
                              f"p99={row[name]['p99_us']:>7.0f}us", file=sys.stderr)
                    row["phigate_rss_kib"] = env.rss_kib(env.gateway.pid)
                    results.append(row)
    finally:
        env.close()
    if not {"direct", "pgbouncer", "phigate"} <= set(args.targets.split(",")):
        print(json.dumps(results, indent=1))
        return
    table = render(results)
    print(table)
    machine = {"cpus": os.cpu_count(), "kernel": os.uname().release,
               "cpu": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                            if l.startswith("model name")), "?")}
    (out / "pgbench.json").write_text(json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=1))
    (out / "pgbench.md").write_text(table + "\n")
    chart(results, out / "pgbench.png")


def render(results):
    names = [n for n in ["direct", "pgbouncer", "phigate", "phigate-guarded"] if n in results[0]]
    gws = [n for n in names if n.startswith("phigate")]
    head = (["TLS", "mode", "clients"] + [f"{n} TPS" for n in names]
            + [f"{g}/direct" for g in gws] + [f"{g}/pgbouncer" for g in gws]
            + [f"p50 µs ({' / '.join(names)})", f"p99 µs ({' / '.join(names)})"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = ["on" if r["tls"] else "off", r["mode"], str(r["clients"])]
        cells += [f"{r[n]['tps']:.0f}" for n in names]
        cells += [f"{r[g]['tps'] / r['direct']['tps']:.2f}" for g in gws]
        cells += [f"{r[g]['tps'] / r['pgbouncer']['tps']:.2f}" for g in gws]
        cells.append(" / ".join(f"{r[n]['p50_us']:.0f}" for n in names))
        cells.append(" / ".join(f"{r[n]['p99_us']:.0f}" for n in names))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return
    labels = [f"{'TLS ' if r['tls'] else ''}{r['mode'][:4]} c{r['clients']}" for r in results]
    x = range(len(results))
    fig, ax = plt.subplots(figsize=(max(8, len(results) * 0.7), 5))
    names = [n for n in ["direct", "pgbouncer", "phigate", "phigate-guarded"] if n in results[0]]
    w = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([p + (i - (len(names) - 1) / 2) * w for p in x], [r[name]["tps"] for r in results], w, label=name)
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("TPS (pgbench -S)")
    ax.set_title("pgbench select-only: direct, pgbouncer, phigate (pass-through and guarded)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
