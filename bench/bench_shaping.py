"""Requests/s through API-shaping routes next to plain pass-through.

    python bench/bench_shaping.py [--rounds N] [--duration S] [--conns C]

One edgeproxy (1 worker, pinned to core 1) in front of an nginx origin (core 0, with wrk)
serving small JSON documents. The proxy serves three routes:

    /plain/user.json      pass-through
    /transform/user.json  the transform filter: templated request headers, a response header,
                          and the JSON response body edited (unwrap, rename, remove, set)
    /profile/1            an aggregate of three parts (user, orders, preferences), each a
                          sub-request to the origin, merged into one JSON object

Rounds interleave the routes; the table shows medians, the ratio to /plain, and req/s per
proxy core (the proxy's CPU share, as bench/vs_nginx.py). Default: 3 rounds x 4 s x 3
routes, about 45 s. Every process it starts is killed at exit.
"""

import argparse
import atexit
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_nginx import (  # noqa: E402  (bench/ is not a package)
    HOST, LOAD_CORE, PROXY_CORE, ROOT, Processes, _nginx_binary, ensure_tools, fetch,
    free_port, origin_nginx_conf, run_wrk, wait_ready,
)

DOCS = {
    "user.json": {"data": {"id": 1, "fullName": "Ada Lovelace", "email": "ada@example.com",
                           "internal": {"shard": 7}}, "meta": {"v": 2}},
    "orders.json": [{"id": i, "total": 10 * i} for i in range(5)],
    "prefs.json": {"theme": "dark", "lang": "en"},
}

PATHS = {"plain": "/plain/user.json", "transform": "/transform/user.json",
         "aggregate": "/profile/1"}


def edgeproxy_config(port: int, origin_port: int) -> str:
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
name = "plain"
paths = ["/plain/*"]
upstream = "origin"
strip_prefix = true

[[routes]]
name = "transform"
paths = ["/transform/*"]
upstream = "origin"
strip_prefix = true
[routes.transform.request.headers]
set = {{ "X-Client" = "{{client_ip}}", "X-Rid" = "{{request_id}}" }}
[routes.transform.response.headers]
set = {{ "X-Shaped" = "1" }}
[routes.transform.response.body]
unwrap = "/data"
rename = {{ "/fullName" = "/name" }}
remove = ["/internal"]
set = {{ "/api_version" = 2 }}

[[routes]]
name = "profile"
paths = ["/profile/{{id}}"]
[routes.aggregate]
[[routes.aggregate.parts]]
name = "user"
upstream = "origin"
path = "/user.json"
[[routes.aggregate.parts]]
name = "orders"
upstream = "origin"
path = "/orders.json"
[[routes.aggregate.parts]]
name = "preferences"
upstream = "origin"
path = "/prefs.json"
required = false
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--conns", type=int, default=50)
    args = ap.parse_args()
    ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="bench-shaping-"))
    procs = Processes(tmp)
    atexit.register(lambda: (procs.stop(), shutil.rmtree(tmp, ignore_errors=True)))

    www = tmp / "www"
    www.mkdir()
    for name, doc in DOCS.items():
        (www / name).write_text(json.dumps(doc))
        (www / name).chmod(0o755)
    for p in (tmp, www):
        p.chmod(0o755)
    origin_port = free_port()
    (tmp / "origin.conf").write_text(origin_nginx_conf(tmp, origin_port).replace(
        "default_type application/octet-stream", "default_type application/json"))
    origin = procs.start("origin", [_nginx_binary(), "-e", str(tmp / "origin-error.log"), "-p",
                                    str(tmp), "-c", str(tmp / "origin.conf")], LOAD_CORE)
    port = free_port()
    (tmp / "edgeproxy.toml").write_text(edgeproxy_config(port, origin_port))
    proxy = procs.start("edgeproxy", [sys.executable, "-m", "engine", "run", "-c",
                                      str(tmp / "edgeproxy.toml")], PROXY_CORE, cwd=ROOT)
    for name, proc, p in (("origin", origin, origin_port), ("edgeproxy", proxy, port)):
        wait_ready(procs, name, proc, p)
    expected = {
        "plain": DOCS["user.json"],
        "transform": {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com",
                      "api_version": 2},
        "aggregate": {"user": DOCS["user.json"], "orders": DOCS["orders.json"],
                      "preferences": DOCS["prefs.json"]},
    }
    for name, path in PATHS.items():
        status, _, body = fetch(port, path)
        if status != 200 or json.loads(body) != expected[name]:
            raise SystemExit(f"{path} answered {status}: {body[:200]!r}")

    results: dict = {name: [] for name in PATHS}
    started = time.monotonic()
    names = list(PATHS)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run = run_wrk(proxy.pid, port, PATHS[name], args.conns, args.duration)
            if run.errors:
                raise SystemExit(f"{PATHS[name]}: errors in the run: {run.error_lines}")
            results[name].append(run)
            print(f"round {r + 1} {name:9} {run.rps:9.0f} req/s  cpu {run.cpu_share:.2f}",
                  file=sys.stderr)
    plain = statistics.median(x.rps for x in results["plain"])
    lines = [f"edgeproxy 1 worker, wrk -c{args.conns} -t1, {args.rounds} rounds x "
             f"{args.duration:g} s, medians; {time.monotonic() - started:.0f} s", "",
             "| route | req/s | vs plain | req/s per proxy core | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|"]
    for name, runs in results.items():
        rps = statistics.median(x.rps for x in runs)
        lines.append(f"| {PATHS[name]} | {rps:.0f} | {rps / plain:.2f} | "
                     f"{statistics.median(x.per_core for x in runs):.0f} | "
                     f"{statistics.median(x.p50 for x in runs):.2f} | "
                     f"{statistics.median(x.p99 for x in runs):.2f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    sys.exit(main())
