"""Micro-benchmark: the ketama ring (ext.hashring vs the pure-Python reference) and each
balancer's pick(), in ns per call, at 3, 100 and 1,000 servers.

    python bench/bench_balancer.py

Weight 1 per server (160 ring points each), every server available, fixed seeds, the best of
repeated batches within a time budget per cell. Python call overhead is included (the engine
calls pick from Cython, lookup from Python). The hash balancers' pick includes reading the key
from the request (engine.chain.keys, Python); requests cycle over 1,000 client addresses / keys.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from types import SimpleNamespace  # noqa: E402

from engine.chain.keys import compile_key  # noqa: E402
from engine.upstream.balancer import BALANCERS  # noqa: E402
from engine.upstream.pool import Pool  # noqa: E402
from engine.upstream.upstream import Server  # noqa: E402
from ext.hashring import HashRing  # noqa: E402
from tests.reference.hashring import HashRing as RefHashRing  # noqa: E402

SIZES = (3, 100, 1000)
BATCH = 1000
BUDGET_NS = 150_000_000  # per cell


class Ctx:
    __slots__ = ("client_ip", "headers", "path", "query", "route", "tried")

    def __init__(self, i):
        self.client_ip = f"10.{i % 200}.{i // 200}.7"
        self.headers = [(b"Host", b"example.com"), (b"X-User", f"user-{i}".encode())]
        self.path = "/"
        self.query = b""
        self.route = None
        self.tried = None


CTXS = [Ctx(i) for i in range(BATCH)]
KEYS = [f"user-{i}".encode() for i in range(BATCH)]


def timed(run, budget_ns):
    best = None
    spent = 0
    while spent < budget_ns:
        t0 = time.perf_counter_ns()
        run()
        dt = time.perf_counter_ns() - t0
        spent += dt
        best = dt / BATCH if best is None else min(best, dt / BATCH)
    return best


def ring(cls, n):
    r = cls()
    for i in range(n):
        r.add(i, 1, f"10.0.{i // 256}.{i % 256}\0{80}".encode())
    r.lookup(b"")  # the Cython ring sorts on its first lookup
    return r


def bench_ring(cls, n, budget_ns):
    t0 = time.perf_counter_ns()
    r = ring(cls, n)
    build_ms = (time.perf_counter_ns() - t0) / 1e6
    lookup = r.lookup

    def run():
        for k in KEYS:
            lookup(k)
    return timed(run, budget_ns), build_ms


def servers(n):
    return [Server(f"http://10.0.{i // 256}.{i % 256}:80", f"10.0.{i // 256}.{i % 256}", 80, 1,
                   Pool(32, 60.0, 1000)) for i in range(n)]


KINDS = {
    "round_robin": ("round_robin", False),
    "least_conn": ("least_conn", False),
    "random_two": ("random_two", False),
    "ip_hash": ("ip_hash", False),
    "hash": ("hash", False),
    "hash consistent": ("hash", True),
}


def bench_pick(kind, n, budget_ns):
    name, consistent = KINDS[kind]
    cfg = SimpleNamespace(balancer=name, hash_key=("header:X-User",), consistent=consistent)
    b = BALANCERS[name](servers(n), cfg, compile_key(cfg.hash_key))
    pick = b.pick

    def run():
        for ctx in CTXS:
            pick(ctx, 1.0)
    return timed(run, budget_ns)


def main():
    print("HashRing.lookup, ns per call (160 points per server; build time of the whole ring)")
    print()
    print("| servers | points | cython | reference | speedup | build cython | build reference |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in SIZES:
        cy, cy_build = bench_ring(HashRing, n, BUDGET_NS)
        ref, ref_build = bench_ring(RefHashRing, n, BUDGET_NS // 3)
        print(f"| {n} | {n * 160} | {cy:.0f} | {ref:.0f} | {ref / cy:.1f}x | "
              f"{cy_build:.1f} ms | {ref_build:.1f} ms |")
    print()
    print("Balancer.pick(ctx, now), ns per call (all servers available)")
    print()
    print("| balancer | " + " | ".join(f"{n} servers" for n in SIZES) + " |")
    print("|---|" + "---:|" * len(SIZES))
    for kind in KINDS:
        cells = [bench_pick(kind, n, BUDGET_NS) for n in SIZES]
        print(f"| {kind} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
