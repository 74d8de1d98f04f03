"""The response cache: cache hits next to nginx proxy_cache, and the cost of a miss.

    python bench/bench_cache.py [--quick] [--rounds N] [--duration S]

An nginx origin serves 1 KiB and 64 KiB bodies with ``Cache-Control: max-age=600`` (and the
same bodies with ``no-store`` under /nostore/). wrk loads each system; the measurement rig is
bench/vs_nginx.py's (wrk and the origin on core 0, the system under test on core 1, req/s per
proxy core from the proxy's own CPU time). Cases:

- hit: nginx with proxy_cache (a keys zone, its file cache in the page cache) vs edgeproxy
  with [routes.cache] (the memory tier), both warmed, so no request reaches the origin;
- miss path: edgeproxy with [routes.cache] on a path whose answers are never stored (every
  request a lookup, a forward and the response hooks) vs edgeproxy with no cache (pass-through):
  the cache's overhead on traffic it cannot serve.

Tables go to stdout and bench/results/cache-latest.md. Every process it starts is killed at
exit, its temp dir removed.
"""

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_nginx as rig  # noqa: E402 (the measurement rig, shared)

ROOT = rig.ROOT
RESULTS = ROOT / "bench" / "results" / "cache-latest.md"
HOST = rig.HOST
BODIES = {"1k": bytes(range(256)) * 4, "64k": bytes(range(256)) * 256}
CONNS = 50


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
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{rig._temp_paths(tmp, "origin")}
    server {{
        listen {HOST}:{port};
        root {tmp}/www;
        location / {{ add_header Cache-Control "max-age=600"; }}
        location /nostore/ {{ add_header Cache-Control "no-store"; }}
    }}
}}
"""


def nginx_cache_conf(tmp: Path, port: int, origin_port: int) -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/proxy.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{rig._temp_paths(tmp, "proxy")}
    proxy_cache_path {tmp}/nginx-cache keys_zone=bench:10m max_size=256m use_temp_path=off;
    upstream origin {{
        server {HOST}:{origin_port};
        keepalive 1024;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 8 64k;
            proxy_cache bench;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"""


def edgeproxy_conf(port: int, origin_port: int, cache: bool) -> str:
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
name = "bench"
paths = ["/*"]
upstream = "origin"
{'[routes.cache]' if cache else ''}
"""


def start(procs, tmp: Path) -> dict:
    www = tmp / "www"
    (www / "nostore").mkdir(parents=True)
    for name, body in BODIES.items():
        for path in (www / name, www / "nostore" / name):
            path.write_bytes(body)
            path.chmod(0o644)
    for d in (tmp, www, www / "nostore"):
        d.chmod(0o755)  # nginx workers run unprivileged when started as root
    nginx = rig._nginx_binary()
    origin_port = rig.free_port()
    (tmp / "origin.conf").write_text(origin_conf(tmp, origin_port))
    origin = procs.start("origin", [nginx, "-e", str(tmp / "origin-error.log"), "-p", str(tmp),
                                    "-c", str(tmp / "origin.conf")], rig.LOAD_CORE)
    rig.wait_ready(procs, "origin", origin, origin_port)

    systems = {}
    port = rig.free_port()
    (tmp / "proxy.conf").write_text(nginx_cache_conf(tmp, port, origin_port))
    systems["nginx-cache"] = (port, procs.start(
        "nginx-cache", [nginx, "-e", str(tmp / "nginx-error.log"), "-p", str(tmp), "-c",
                        str(tmp / "proxy.conf")], rig.PROXY_CORE))
    for name, cache in (("edgeproxy-cache", True), ("edgeproxy", False)):
        port = rig.free_port()
        (tmp / f"{name}.toml").write_text(edgeproxy_conf(port, origin_port, cache))
        systems[name] = (port, procs.start(
            name, [sys.executable, "-m", "engine", "run", "-c", str(tmp / f"{name}.toml")],
            rig.PROXY_CORE, cwd=ROOT))
    for name, (port, proc) in systems.items():
        rig.wait_ready(procs, name, proc, port)
    # Warm and check: the second GET of a cacheable path must be a hit.
    for name in ("nginx-cache", "edgeproxy-cache"):
        port = systems[name][0]
        for body in BODIES:
            rig.fetch(port, f"/{body}")
            time.sleep(0.05)
            status, headers, got = rig.fetch(port, f"/{body}")
            hit = headers.get("X-Cache") == "HIT" or "hit" in headers.get("Cache-Status", "")
            if status != 200 or got != BODIES[body] or not hit:
                raise SystemExit(f"{name}: GET /{body} is not a cache hit: {status} {headers}")
    return systems


CASES = (
    ("hit 1 KiB", "/1k", ("nginx-cache", "edgeproxy-cache")),
    ("hit 64 KiB", "/64k", ("nginx-cache", "edgeproxy-cache")),
    ("miss path 1 KiB (never stored)", "/nostore/1k", ("edgeproxy", "edgeproxy-cache")),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round x 2 s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    if shutil.which("wrk") is None or not Path(rig._nginx_binary()).exists():
        raise SystemExit("bench_cache needs wrk and nginx: apt-get install wrk nginx")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    procs = rig.Processes(tmp)
    atexit.register(lambda: (procs.stop(), shutil.rmtree(tmp, True)))
    systems = start(procs, tmp)
    results = {}
    for r in range(args.rounds):
        for case, path, names in CASES:
            for name in (names if r % 2 == 0 else names[::-1]):
                port, proc = systems[name]
                run = rig.run_wrk(proc.pid, port, path, CONNS, args.duration)
                if run.errors:
                    raise SystemExit(f"{name} {case}: {run.error_lines}")
                results.setdefault((case, name), []).append(run)
    lines = [f"# Cache benchmark (bench/bench_cache.py): {args.rounds} round(s) x "
             f"{args.duration:g} s, {CONNS} connections, medians", "",
             "| case | system | req/s | proxy CPU | req/s per proxy core | p99 ms | ratio |",
             "|---|---|---|---|---|---|---|"]
    for case, _, names in CASES:
        per_core = {}
        for name in names:
            runs = results[(case, name)]
            per_core[name] = statistics.median([x.per_core for x in runs])
        base = per_core[names[0]]
        for name in names:
            runs = results[(case, name)]
            lines.append(
                f"| {case} | {name} | {statistics.median([x.rps for x in runs]):,.0f} | "
                f"{statistics.median([x.cpu_share for x in runs]):.2f} | "
                f"{per_core[name]:,.0f} | {statistics.median([x.p99 for x in runs]):.2f} | "
                f"{per_core[name] / base:.2f}x {names[0]} |")
    busy = statistics.median([x.foreign_share for runs in results.values() for x in runs])
    lines += ["", f"Other load on the machine meanwhile (median, cores): {busy:.2f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
