"""Requests/s through a rate-limited route next to the same route without a limit.

    python bench/bench_ratelimit_route.py [--rounds N] [--duration S] [--conns C]

One edgeproxy (1 worker, pinned to core 1) in front of an nginx origin (core 0, with wrk);
one redis-server (core 0). The proxy serves five routes to the same origin:

    /plain/       no rate_limit section
    /local-sc/    store = "memory", sliding_counter
    /local-tb/    store = "memory", token_bucket
    /redis-sc/    store = "redis", sliding_counter (one EVALSHA per request)
    /redis-tb/    store = "redis", token_bucket

Every limit sits far above the load, so each request is decided but none refused (a 429 in
the run is reported as an error). Rounds interleave the routes; the table shows medians, the
ratio to /plain, and req/s per proxy core (the proxy's CPU share, as bench/vs_nginx.py).
Default: 3 rounds x 4 s x 5 routes, about 70 s. Every process it starts is killed at exit.
"""

import argparse
import atexit
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_nginx import (  # noqa: E402  (bench/ is not a package)
    BODIES, HOST, LOAD_CORE, PROXY_CORE, ROOT, Processes, _nginx_binary, ensure_tools, fetch,
    free_port, origin_nginx_conf, run_wrk, wait_ready,
)

ROUTES = {
    "plain": "",
    "local-sc": """
[routes.rate_limit]
[[routes.rate_limit.limits]]
name = "per-ip"
algorithm = "sliding_counter"
limit = 1000000000
window = "1m"
""",
    "local-tb": """
[routes.rate_limit]
[[routes.rate_limit.limits]]
name = "per-ip"
algorithm = "token_bucket"
rate = 1000000000
burst = 1000000000
""",
    "redis-sc": """
[routes.rate_limit]
store = "redis"
[[routes.rate_limit.limits]]
name = "per-ip"
algorithm = "sliding_counter"
limit = 1000000000
window = "1m"
""",
    "redis-tb": """
[routes.rate_limit]
store = "redis"
[[routes.rate_limit.limits]]
name = "per-ip"
algorithm = "token_bucket"
rate = 1000000000
burst = 1000000000
""",
}


def edgeproxy_config(port: int, origin_port: int, redis_port: int) -> str:
    routes = "".join(f"""
[[routes]]
name = "{name}"
paths = ["/{name}/*"]
upstream = "origin"
strip_prefix = true
{section}""" for name, section in ROUTES.items())
    return f"""
[server]
listen = "{HOST}:{port}"
workers = 1
access_log = "off"

[admin]
listen = "{HOST}:0"

[redis]
url = "redis://{HOST}:{redis_port}/0"

[[upstreams]]
name = "origin"
servers = ["http://{HOST}:{origin_port}"]
keepalive = 1024
{routes}"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--conns", type=int, default=50)
    args = ap.parse_args()
    ensure_tools()
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server is needed (apt-get install -y redis-server)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ratelimit-"))
    procs = Processes(tmp)
    atexit.register(lambda: (procs.stop(), shutil.rmtree(tmp, ignore_errors=True)))

    www = tmp / "www"
    www.mkdir()
    (www / "small").write_bytes(BODIES["small"])
    for p in (tmp, www, www / "small"):
        p.chmod(0o755)
    origin_port = free_port()
    (tmp / "origin.conf").write_text(origin_nginx_conf(tmp, origin_port))
    nginx = _nginx_binary()
    origin = procs.start("origin", [nginx, "-e", str(tmp / "origin-error.log"), "-p",
                                    str(tmp), "-c", str(tmp / "origin.conf")], LOAD_CORE)
    redis_port = free_port()
    rproc = procs.start("redis", [redis, "--port", str(redis_port), "--bind", HOST,
                                  "--save", "", "--appendonly", "no"], LOAD_CORE)
    port = free_port()
    (tmp / "edgeproxy.toml").write_text(edgeproxy_config(port, origin_port, redis_port))
    proxy = procs.start("edgeproxy", [sys.executable, "-m", "engine", "run", "-c",
                                      str(tmp / "edgeproxy.toml")], PROXY_CORE, cwd=ROOT)
    for name, proc, p in (("origin", origin, origin_port), ("redis", rproc, redis_port),
                          ("edgeproxy", proxy, port)):
        wait_ready(procs, name, proc, p)
    for name in ROUTES:
        status, headers, body = fetch(port, f"/{name}/small")
        if status != 200 or body != BODIES["small"]:
            raise SystemExit(f"/{name}/small answered {status}")
        if name != "plain" and "RateLimit" not in headers:
            raise SystemExit(f"/{name}/small has no RateLimit header: {headers}")

    results: dict = {name: [] for name in ROUTES}
    started = time.monotonic()
    names = list(ROUTES)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run = run_wrk(proxy.pid, port, f"/{name}/small", args.conns, args.duration)
            if run.errors:
                raise SystemExit(f"/{name}: errors in the run: {run.error_lines}")
            results[name].append(run)
            print(f"round {r + 1} {name:9} {run.rps:9.0f} req/s  cpu {run.cpu_share:.2f}",
                  file=sys.stderr)
    plain = statistics.median(x.rps for x in results["plain"])
    lines = [f"edgeproxy 1 worker, wrk -c{args.conns} -t1, {args.rounds} rounds x "
             f"{args.duration:g} s, small body (13 B), medians; {time.monotonic() - started:.0f}"
             " s", "",
             "| route | req/s | vs plain | req/s per proxy core | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|"]
    for name, runs in results.items():
        rps = statistics.median(x.rps for x in runs)
        lines.append(f"| /{name}/ | {rps:.0f} | {rps / plain:.2f} | "
                     f"{statistics.median(x.per_core for x in runs):.0f} | "
                     f"{statistics.median(x.p50 for x in runs):.2f} | "
                     f"{statistics.median(x.p99 for x in runs):.2f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    sys.exit(main())
