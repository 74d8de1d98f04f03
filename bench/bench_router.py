"""Micro-benchmark: ext.router.Router.match vs the pure-Python reference.

    python bench/bench_router.py

ns per match (Python call included) for 10 / 1,000 / 10,000 routes, in three modes:
hot   cache on, 512 distinct request paths repeated (the steady state of a busy route table);
off   Router(cache_size=0), the same 512 paths: every match walks the trie;
cold  cache on, every path unique (param values never repeat): walk + cache insert/evict.
Fixed seeds, a bounded time per cell; the reference (a linear scan) runs for 10 and 1,000 only.

Requests for any-host routes carry hosts that also have exact and wildcard tiers, so many
matches probe three tiers (the fall-through the precedence rules describe). The work per match
does not grow with the table, but "cold" touches the whole 10,000-route trie and 4 x 4096 cache
entries at random, far more than the CPU's L2, so its time grows with memory misses.
"""

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ext.router import Router  # noqa: E402
from tests.reference.router import Router as RefRouter  # noqa: E402

SIZES = (10, 1_000, 10_000)
BUDGET_NS = 300_000_000  # per cell
DISTINCT = 512
ANY_HOSTS = ("api.example.com", "www.example.com", "shop.test")

# Route shapes, cycled so every size has the same mix: (pattern, methods). {i} is the route
# number, so 10,000 routes spread over 10,000 distinct second or third segments.
SHAPES = (
    ("/api/v1/res{i}", {b"GET"}),
    ("/api/v1/res{i}/{{id}}", {b"GET", b"PUT", b"DELETE"}),
    ("/api/v1/res{i}/list", {b"GET"}),
    ("/api/v1/res{i}/{{id}}/items/{{item}}", {b"GET", b"POST"}),
    ("/api/v2/res{i}/stats/daily", {b"GET"}),
    ("/static/res{i}/*", None),
    ("/users/res{i}/{{id}}/orders", {b"GET", b"POST"}),
)
# Host of route i: mostly any host, some exact and wildcard hosts (cycled like SHAPES).
HOSTS = (None, None, ["api.example.com"], None, ["*.example.com"], None,
         ["admin.example.com"], None, ["api.example.com"], None, None)


def routes(n):
    out = []
    for i in range(n):
        pattern, methods = SHAPES[i % len(SHAPES)]
        out.append((f"route{i}", HOSTS[i % len(HOSTS)], pattern.format(i=i),
                    None if methods is None else frozenset(methods)))
    return out


def request_for(rng, route, unique):
    _, hosts, pattern, methods = route
    parts = []
    for seg in pattern.split("/")[1:]:
        if seg == "*":
            parts.append(f"css/app{next(unique)}.css")
        elif seg.startswith("{"):
            parts.append(str(next(unique)))
        else:
            parts.append(seg)
    if hosts is None:
        host = rng.choice(ANY_HOSTS)
    else:
        host = hosts[0].replace("*", "www")
    method = b"GET" if methods is None or b"GET" in methods else sorted(methods)[0]
    return (method, host, "/" + "/".join(parts))


def requests(rng, table, count, unique):
    return [request_for(rng, rng.choice(table), unique) for _ in range(count)]


def measure(router, reqs, budget_ns=BUDGET_NS):
    """Best ns per match over repeated passes, stopping once the budget is spent."""
    match = router.match
    best = None
    spent = 0
    while spent < budget_ns:
        t0 = time.perf_counter_ns()
        for method, host, path in reqs:
            match(method, host, path)
        dt = time.perf_counter_ns() - t0
        spent += dt
        per = dt / len(reqs)
        best = per if best is None else min(best, per)
    return best


def measure_cold(make, table, rng, budget_ns=BUDGET_NS, chunk=2_000):
    """ns per match with never-repeating paths (a fresh request chunk per pass)."""
    router = make()
    for route in table:
        router.add(*route)
    unique = iter(range(10**9))
    best = None
    spent = 0
    while spent < budget_ns:
        reqs = requests(rng, table, chunk, unique)
        match = router.match
        t0 = time.perf_counter_ns()
        for method, host, path in reqs:
            match(method, host, path)
        dt = time.perf_counter_ns() - t0
        spent += dt
        best = dt / chunk if best is None else min(best, dt / chunk)
    return best


def build(cls, table, **kw):
    router = cls(**kw)
    for route in table:
        router.add(*route)
    return router


def check_same_answers(table, reqs):
    cy, ref = build(Router, table), build(RefRouter, table)
    for req in reqs[:200]:
        assert cy.match(*req) == ref.match(*req), req


def main():
    rng = random.Random(20240601)
    results = {}
    loop_ns = None
    for n in SIZES:
        table = routes(n)
        reqs = requests(rng, table, DISTINCT, iter(range(10**6)))
        if n <= 1_000:
            check_same_answers(table, reqs)
        if loop_ns is None:
            loop_ns = measure(type("Nop", (), {"match": staticmethod(lambda m, h, p: None)}), reqs)
        impls = [("cython", Router)] + ([("reference", RefRouter)] if n <= 1_000 else [])
        for name, cls in impls:
            budget = BUDGET_NS if name == "cython" else BUDGET_NS // 3
            hot = build(cls, table)
            results[name, n, "hot"] = measure(hot, reqs, budget)
            results[name, n, "off"] = measure(build(cls, table, cache_size=0), reqs, budget)
            results[name, n, "cold"] = measure_cold(cls, table, random.Random(n), budget,
                                                    2_000 if name == "cython" else 50)
            if name == "cython":
                assert hot.cache_hits > hot.cache_misses

    print(f"Router.match, ns per call (Python call overhead included; empty loop + call "
          f"~{loop_ns:.0f} ns)")
    print(f"{'impl':<10} {'routes':>7} {'hot':>10} {'off':>10} {'cold':>10}")
    for (name, n, mode), _ in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if mode != "hot":
            continue
        row = [results[name, n, m] for m in ("hot", "off", "cold")]
        print(f"{name:<10} {n:>7} " + " ".join(f"{v:>10.0f}" for v in row))
    for mode in ("hot", "off", "cold"):
        ratio = results["cython", 10_000, mode] / results["cython", 10, mode]
        print(f"cython cost(10k)/cost(10), {mode:<4}: {ratio:.2f}  (target <= 1.3)")
    for n in (10, 1_000):
        speedup = results["reference", n, "hot"] / results["cython", n, "hot"]
        print(f"cython vs reference at {n} routes, hot: {speedup:.0f}x faster")


if __name__ == "__main__":
    main()
