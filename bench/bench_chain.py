"""Micro-benchmark: the per-request cost of a route's filter chain with 0, 1 and 5 filters.

    python bench/bench_chain.py

Runs a compiled Chain the way the runner in engine/chain/context.pyx does (request hooks in
phase order setting ``ran``, then the response hooks of the filters that ran, in reverse) on a context stub with 8
request headers and a response with 8 headers. 0 and 1 filters come from a real config through
parse() + Runtime; 5 filters go through the same chain compiler with five header-transform
sections (a config file may hold one section per filter name, the compiler takes any number).
Each row: the best of REPEATS timed runs, each of a bounded number of iterations.
"""

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.chain.schema import build  # noqa: E402
from engine.control.config import parse  # noqa: E402
from engine.control.snapshot import Build, Runtime, Shared, compile_chain  # noqa: E402
from engine.filters import headers  # noqa: E402
from engine.errors import Response  # noqa: E402

REPEATS = 5
TARGET_NS = 200_000_000  # each timed run aims for ~0.2 s ...
MAX_ITERATIONS = 2_000_000  # ... and never loops more than this

REQUEST_HEADERS = [
    (b"Host", b"api.example.com"),
    (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
    (b"Accept", b"application/json"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"Accept-Language", b"en-US,en;q=0.9"),
    (b"Authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"),
    (b"X-Forwarded-For", b"203.0.113.7"),
    (b"X-Request-Id", b"8d2f0c1e4b7a9d3f00000000000000000001"),
]
RESPONSE_HEADERS = [
    (b"Server", b"origin/1.0"),
    (b"Date", b"Tue, 01 Jul 2025 12:00:00 GMT"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"512"),
    (b"Cache-Control", b"private, max-age=0"),
    (b"ETag", b'"5f3a-1b2c"'),
    (b"Vary", b"Accept-Encoding"),
    (b"X-Powered-By", b"origin"),
]

BASE = """
[[upstreams]]
name = "origin"
servers = ["http://127.0.0.1:9001"]

[[routes]]
name = "bench"
paths = ["/api/*"]
upstream = "origin"
"""
# The shipped config.toml's api route: one header filter, one request and one response edit.
ONE_FILTER = BASE + """
[routes.headers.request]
set = { "X-Edge" = "edgeproxy" }
[routes.headers.response]
add = { "X-Served-By" = "edgeproxy" }
"""
# Five header-transform configs, each a different mix of set/add/remove/rename.
FIVE_FILTERS = (
    {"request": {"set": {"X-Edge": "edgeproxy"}}, "response": {"add": {"X-Served-By": "edge"}}},
    {"request": {"remove": ["X-Debug", "Accept-Language"]}},
    {"request": {"rename": {"Authorization": "X-Upstream-Auth"}},
     "response": {"rename": {"ETag": "X-Origin-ETag"}}},
    {"request": {"add": {"X-Tenant": "acme", "X-Region": "eu-west-1"}}},
    {"response": {"set": {"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
                  "remove": ["X-Powered-By"]}},
)


class Ctx:
    """What filters see of a RequestContext: the request headers and the hooks run."""

    __slots__ = ("headers", "ran")

    def __init__(self):
        self.headers = REQUEST_HEADERS
        self.ran = 0


def route_chain(config_text: str) -> tuple[tuple, tuple]:
    chain = Runtime(parse(config_text, "bench")).routes[0].chain
    return chain.request, chain.response


def five_filter_chain() -> tuple[tuple, tuple]:
    errors: list = []
    sections = tuple(("headers", build(headers.Config, raw, f"headers[{i}]", errors))
                     for i, raw in enumerate(FIVE_FILTERS))
    if errors:
        raise SystemExit(f"bad filter config: {errors}")
    cfg = parse(BASE, "bench")
    route_cfg = dataclasses.replace(cfg.routes[0], sections=sections)
    chain = compile_chain(sections, Build(route_cfg, cfg, Shared(cfg)))
    return chain.request, chain.response


def run(request_hooks, response_hooks, n: int) -> int:
    """ns for ``n`` requests through the chain (the loop mirrors RequestContext.run_filters
    and RequestContext._head)."""
    ctx = Ctx()
    resp = Response(200, RESPONSE_HEADERS, None)
    req_headers, resp_headers = REQUEST_HEADERS, RESPONSE_HEADERS
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        ctx.headers = req_headers  # filters replace the list; each request starts afresh
        ctx.ran = 0
        for index, hook in request_hooks:
            ctx.ran = index + 1
            if hook(ctx) is not None:
                break
        resp.headers = resp_headers
        if response_hooks and ctx.ran:
            for index, hook in response_hooks:
                if index < ctx.ran:
                    hook(ctx, resp)
    return clock() - t0


def measure(chain) -> float:
    """Best ns per request over REPEATS runs, each sized to ~TARGET_NS."""
    request_hooks, response_hooks = chain
    run(request_hooks, response_hooks, 1000)  # warm up
    probe = max(1, run(request_hooks, response_hooks, 10_000)) / 10_000
    n = max(1000, min(MAX_ITERATIONS, int(TARGET_NS / probe)))
    return min(run(request_hooks, response_hooks, n) for _ in range(REPEATS)) / n


def check(chain, expect_request: int) -> None:
    """The chain really edits: the request headers change as the filters say."""
    ctx = Ctx()
    for _, hook in chain[0]:
        hook(ctx)
    assert len(chain[0]) == expect_request, chain
    if expect_request:
        assert ctx.headers is not REQUEST_HEADERS and ctx.headers != REQUEST_HEADERS


def main() -> int:
    chains = {0: route_chain(BASE), 1: route_chain(ONE_FILTER), 5: five_filter_chain()}
    for count, chain in chains.items():
        check(chain, count)
    rows = [(count, measure(chain)) for count, chain in chains.items()]
    base = rows[0][1]
    print("| filters | ns per request | ns over 0 filters | ns per filter |")
    print("|---:|---:|---:|---:|")
    for count, ns in rows:
        extra = ns - base
        per = f"{extra / count:,.0f}" if count else "-"
        print(f"| {count} | {ns:,.0f} | {extra:,.0f} | {per} |")
    print(f"\n{len(REQUEST_HEADERS)} request and {len(RESPONSE_HEADERS)} response headers; "
          f"best of {REPEATS}; Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
