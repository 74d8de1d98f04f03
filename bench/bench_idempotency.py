"""Requests per second through an idempotent route, next to the same route without it.

    python bench/bench_idempotency.py [--quick] [--rounds N] [--duration S] [--conns C]

An nginx origin answers every POST with a fixed 201 (`return 201`); wrk POSTs through one
edgeproxy worker per system:

  plain    the route without [routes.idempotency] (the key header is sent and ignored)
  memory   store = "memory"   (one worker's LRU)
  redis    store = "redis"    (a redis-server started here, on the load core)

and two key patterns: `fresh` (a new key per request: claim, upstream, store) and `replay`
(one key for every request: after the first, each is a stored answer and never reaches the
origin; `concurrent = "wait"`, so the first burst of copies waits for the first answer
instead of getting 409). wrk, the origin and Redis share core 0; every edgeproxy gets core 1, and its CPU time
is measured, so "req/s per proxy core" compares what each variant costs per request. Rounds
interleave the systems; tables report medians. Results go to stdout and
bench/results/idempotency-latest.md. Every process started here is killed at exit.
"""

import argparse
import atexit
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vs_nginx import (
    HOST, LOAD_CORE, PROXY_CORE, Processes, Run, _nginx_binary, _temp_paths, cpu_snapshot,
    ensure_tools, free_port, machine_busy, parse_wrk, tree_cpu, wait_ready)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "idempotency-latest.md"
SYSTEMS = ("plain", "memory", "redis")
MODES = ("fresh", "replay")

FRESH_LUA = """
wrk.method = "POST"
local n = 0
local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
request = function()
  n = n + 1
  headers["Idempotency-Key"] = '"%(prefix)s-' .. n .. '"'
  return wrk.format("POST", "/pay", headers, "amount=10&currency=eur")
end
"""

REPLAY_LUA = """
wrk.method = "POST"
wrk.body = "amount=10&currency=eur"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Idempotency-Key"] = '"%(prefix)s-replayed"'
wrk.path = "/pay"
"""


def origin_conf(tmp: Path, port: int) -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/origin.pid;
error_log {tmp}/origin-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{_temp_paths(tmp, "origin")}
    server {{
        listen {HOST}:{port};
        location / {{
            default_type application/json;
            return 201 '{{"id": "ch_1Nx5Yq2eZvKYlo2C", "amount": 10, "status": "succeeded"}}';
        }}
    }}
}}
"""


def edgeproxy_conf(port: int, origin_port: int, system: str, redis_port: int) -> str:
    section = ""
    if system != "plain":
        # wait: the first burst of replay-mode copies waits for the first answer, not 409
        section = f'[routes.idempotency]\nstore = "{system}"\nconcurrent = "wait"\n'
    if system == "redis":
        section += f'\n[redis]\nurl = "redis://{HOST}:{redis_port}/0"\n'
    return f"""
[server]
listen = "{HOST}:{port}"
workers = 1
access_log = "off"

[admin]
listen = "{HOST}:0"

[[upstreams]]
name = "origin"
servers = ["http://{HOST}:{origin_port}"]
keepalive = 1024

[[routes]]
name = "pay"
paths = ["/*"]
upstream = "origin"
{section}"""


def run_wrk(pid: int, port: int, script: Path, conns: int, duration: float) -> Run:
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{duration:g}s",
            "--latency", "--timeout", "5s", "-s", str(script), f"http://{HOST}:{port}/pay"]
    snap0, busy0, t0 = cpu_snapshot(), machine_busy(), time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    t1, busy1, snap1 = time.monotonic(), machine_busy(), cpu_snapshot()
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    me = os.getpid()
    proxy_cpu = tree_cpu(snap1, pid) - tree_cpu(snap0, pid)
    foreign = max(0.0, (busy1 - busy0) - (tree_cpu(snap1, me) - tree_cpu(snap0, me)))
    return Run(cpu_share=proxy_cpu / (t1 - t0), foreign_share=foreign / (t1 - t0),
               **parse_wrk(done.stdout))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round x 3 s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=50)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    ensure_tools()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found (apt-get install -y redis-server)")

    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-idem-"))
    procs = Processes(tmp)
    atexit.register(lambda: (procs.stop(), shutil.rmtree(tmp, ignore_errors=True)))

    origin_port = free_port()
    (tmp / "origin.conf").write_text(origin_conf(tmp, origin_port))
    nginx = _nginx_binary()
    origin = procs.start("origin", [nginx, "-e", str(tmp / "origin-error.log"), "-p", str(tmp),
                                    "-c", str(tmp / "origin.conf")], LOAD_CORE)
    wait_ready(procs, "origin", origin, origin_port)
    redis_port = free_port()
    redis = procs.start("redis", ["redis-server", "--port", str(redis_port), "--bind", HOST,
                                  "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                        LOAD_CORE)
    wait_ready(procs, "redis", redis, redis_port)

    proxies = {}
    for system in SYSTEMS:
        port = free_port()
        conf = tmp / f"{system}.toml"
        conf.write_text(edgeproxy_conf(port, origin_port, system, redis_port))
        proc = procs.start(system, [sys.executable, "-m", "engine", "run", "-c", str(conf)],
                           PROXY_CORE, cwd=ROOT)
        wait_ready(procs, system, proc, port)
        proxies[system] = (proc, port)

    results: dict = {(s, m): [] for s in SYSTEMS for m in MODES}
    for rnd in range(args.rounds):
        order = SYSTEMS[rnd % 3:] + SYSTEMS[:rnd % 3]
        for mode in MODES:
            for system in order:
                script = tmp / f"{system}-{mode}-{rnd}.lua"
                lua = FRESH_LUA if mode == "fresh" else REPLAY_LUA
                script.write_text(lua % {"prefix": secrets.token_hex(6)})
                proc, port = proxies[system]
                r = run_wrk(proc.pid, port, script, args.conns, args.duration)
                results[(system, mode)].append(r)
                print(f"round {rnd + 1} {mode:6} {system:6} {r.rps:9.0f} req/s "
                      f"p99 {r.p99:6.2f} ms cpu {r.cpu_share:4.2f} errors {r.errors}",
                      file=sys.stderr)

    lines = [f"# Idempotency overhead ({args.rounds} x {args.duration:g} s, {args.conns} "
             "connections, 1 worker, medians)", "",
             "| route | keys | req/s | req/s per proxy core | vs plain | p50 ms | p99 ms | "
             "errors |", "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        base = statistics.median(r.per_core for r in results[("plain", mode)])
        for system in SYSTEMS:
            runs = results[(system, mode)]
            per_core = statistics.median(r.per_core for r in runs)
            lines.append(
                f"| {system} | {mode} | {statistics.median(r.rps for r in runs):,.0f} | "
                f"{per_core:,.0f} | {per_core / base:.2f} | "
                f"{statistics.median(r.p50 for r in runs):.2f} | "
                f"{statistics.median(r.p99 for r in runs):.2f} | "
                f"{sum(r.errors for r in runs)} |")
    foreign = statistics.median(r.foreign_share for rs in results.values() for r in rs)
    lines += ["", f"Other load on the machine meanwhile: {foreign:.2f} cores (median).",
              "`plain` ignores the key; `replay` answers from the store without the origin."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
