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
ratio to /plain, and req/s per proxy core (the proxy's CPU share, measured by bench/rig.py).
Default: 3 rounds x 4 s x 5 routes, about 70 s. Every process it starts is killed at exit.
"""

import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import BODIES, HOST  # noqa: E402

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
    return rig.edgeproxy_config(port, origin_port, rig.prefixed_routes(ROUTES),
                                top=f'\n[redis]\nurl = "redis://{HOST}:{redis_port}/0"\n')


def main() -> int:
    args = rig.route_args(__doc__, duration=4.0)
    rig.ensure_tools("redis-server")
    _, procs = rig.workspace("bench-ratelimit-")
    origin_port = procs.origin({"small": BODIES["small"]})
    redis_port = procs.redis()
    port, proxy = procs.edgeproxy("edgeproxy",
                                  lambda p: edgeproxy_config(p, origin_port, redis_port))
    for name in ROUTES:
        status, headers, body = rig.fetch(port, f"/{name}/small")
        if status != 200 or body != BODIES["small"]:
            raise SystemExit(f"/{name}/small answered {status}")
        if name != "plain" and "RateLimit" not in headers:
            raise SystemExit(f"/{name}/small has no RateLimit header: {headers}")

    rig.route_bench(proxy.pid, port, {name: f"/{name}/small" for name in ROUTES}, args,
                    base="plain", labels={name: f"/{name}/" for name in ROUTES},
                    body="small body (13 B), ")
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    sys.exit(main())
