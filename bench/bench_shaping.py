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
proxy core (the proxy's CPU share, measured by bench/rig.py). Default: 3 rounds x 4 s x 3
routes, about 45 s. Every process it starts is killed at exit.
"""

import json
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)

DOCS = {
    "user.json": {"data": {"id": 1, "fullName": "Ada Lovelace", "email": "ada@example.com",
                           "internal": {"shard": 7}}, "meta": {"v": 2}},
    "orders.json": [{"id": i, "total": 10 * i} for i in range(5)],
    "prefs.json": {"theme": "dark", "lang": "en"},
}

PATHS = {"plain": "/plain/user.json", "transform": "/transform/user.json",
         "aggregate": "/profile/1"}


def edgeproxy_config(port: int, origin_port: int) -> str:
    return rig.edgeproxy_config(port, origin_port, ROUTES)


ROUTES = """
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
set = { "X-Client" = "{client_ip}", "X-Rid" = "{request_id}" }
[routes.transform.response.headers]
set = { "X-Shaped" = "1" }
[routes.transform.response.body]
unwrap = "/data"
rename = { "/fullName" = "/name" }
remove = ["/internal"]
set = { "/api_version" = 2 }

[[routes]]
name = "profile"
paths = ["/profile/{id}"]
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
    args = rig.route_args(__doc__, duration=4.0)
    rig.ensure_tools()
    _, procs = rig.workspace("bench-shaping-")
    origin_port = procs.origin({name: json.dumps(doc).encode() for name, doc in DOCS.items()},
                               default_type="application/json")
    port, proxy = procs.edgeproxy("edgeproxy", lambda p: edgeproxy_config(p, origin_port))
    expected = {
        "plain": DOCS["user.json"],
        "transform": {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com",
                      "api_version": 2},
        "aggregate": {"user": DOCS["user.json"], "orders": DOCS["orders.json"],
                      "preferences": DOCS["prefs.json"]},
    }
    for name, path in PATHS.items():
        status, _, body = rig.fetch(port, path)
        if status != 200 or json.loads(body) != expected[name]:
            raise SystemExit(f"{path} answered {status}: {body[:200]!r}")

    rig.route_bench(proxy.pid, port, PATHS, args, base="plain")
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    sys.exit(main())
