"""The response cache: cache hits next to nginx proxy_cache, and the cost of a miss.

    python bench/bench_cache.py [--quick] [--rounds N] [--duration S]

An nginx origin serves 1 KiB and 64 KiB bodies with ``Cache-Control: max-age=600`` (and the
same bodies with ``no-store`` under /nostore/). wrk loads each system; the measurement rig is
bench/rig.py (wrk and the origin on core 0, the system under test on core 1, req/s per
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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import median  # noqa: E402

RESULTS = rig.ROOT / "bench" / "results" / "cache-latest.md"
BODIES = {"1k": bytes(range(256)) * 4, "64k": bytes(range(256)) * 256}
CONNS = 50


def start(procs) -> dict:
    tmp = procs.tmp
    origin_port = procs.origin(
        {path: body for name, body in BODIES.items() for path in (name, f"nostore/{name}")},
        locations='location / { add_header Cache-Control "max-age=600"; }\n'
                  '        location /nostore/ { add_header Cache-Control "no-store"; }')
    systems = {"nginx-cache": procs.nginx("nginx-cache", lambda p: rig.nginx_proxy_conf(
        tmp, "nginx-cache", p, origin_port, top=f"""
    proxy_cache_path {tmp}/nginx-cache keys_zone=bench:10m max_size=256m use_temp_path=off;""",
        extra="""
            proxy_cache bench;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;"""), rig.PROXY_CORE)}
    for name, cache in (("edgeproxy-cache", True), ("edgeproxy", False)):
        systems[name] = procs.edgeproxy(name, lambda p, c=cache: rig.edgeproxy_config(
            p, origin_port, f"""
[[routes]]
name = "bench"
paths = ["/*"]
upstream = "origin"
{'[routes.cache]' if c else ''}
"""))
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
    rig.ensure_tools()
    _, procs = rig.workspace("bench-cache-")
    systems = start(procs)
    results = {}
    for r in range(args.rounds):
        for case, path, names in CASES:
            for name in rig.rotated(names, r):
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
        per_core = {name: median(results[(case, name)], "per_core") for name in names}
        base = per_core[names[0]]
        for name in names:
            runs = results[(case, name)]
            lines.append(
                f"| {case} | {name} | {median(runs, 'rps'):,.0f} | "
                f"{median(runs, 'cpu_share'):.2f} | "
                f"{per_core[name]:,.0f} | {median(runs, 'p99'):.2f} | "
                f"{per_core[name] / base:.2f}x {names[0]} |")
    busy = median([x for runs in results.values() for x in runs], "foreign_share")
    lines += ["", f"Other load on the machine meanwhile (median, cores): {busy:.2f}"]
    rig.write_results(RESULTS, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
