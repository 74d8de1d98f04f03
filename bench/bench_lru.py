"""Micro-benchmark: ext.lru.LruCache vs the pure-Python reference, ns per operation.

    python bench/bench_lru.py

Cache of 10,000 entries (bounded by both max_entries and max_bytes), str keys, fixed seed,
a bounded time per cell. Python call overhead is included (the engine calls it from Python).
"""

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ext.lru import LruCache  # noqa: E402
from tests.reference.lru import LruCache as RefLruCache  # noqa: E402

ENTRIES = 10_000
SIZE = 100  # bytes per item
BUDGET_NS = 400_000_000  # per cell
BATCH = 10_000


def filled(cls):
    cache = cls(ENTRIES * SIZE, ENTRIES)
    for i in range(ENTRIES):
        cache.set(f"key{i}", i, SIZE, 0.0, 60.0)
    return cache


def timed(run, batch, budget_ns):
    best = None
    spent = 0
    while spent < budget_ns:
        t0 = time.perf_counter_ns()
        run()
        dt = time.perf_counter_ns() - t0
        spent += dt
        best = dt / batch if best is None else min(best, dt / batch)
    return best


def bench(cls, budget_ns):
    rng = random.Random(7)
    present = [f"key{rng.randrange(ENTRIES)}" for _ in range(BATCH)]
    absent = [f"nokey{i}" for i in range(BATCH)]
    cache = filled(cls)
    get, set_ = cache.get, cache.set
    fresh = iter(range(10**9))

    def get_hit():
        for k in present:
            get(k, 1.0)

    def get_miss():
        for k in absent:
            get(k, 1.0)

    def set_replace():
        for k in present:
            set_(k, 1, SIZE, 1.0, 60.0)

    def set_evict():  # new keys into a full cache: each insert evicts the LRU item
        keys = [f"new{next(fresh)}" for _ in range(BATCH)]
        t0 = time.perf_counter_ns()
        for k in keys:
            set_(k, 1, SIZE, 1.0, 60.0)
        return time.perf_counter_ns() - t0

    results = {
        "get hit": timed(get_hit, BATCH, budget_ns),
        "get miss": timed(get_miss, BATCH, budget_ns),
        "set replace": timed(set_replace, BATCH, budget_ns),
    }
    best = None
    spent = 0
    while spent < budget_ns:
        dt = set_evict()
        spent += dt
        best = dt / BATCH if best is None else min(best, dt / BATCH)
    results["set + evict"] = best
    assert len(cache) == ENTRIES and cache.size_bytes <= ENTRIES * SIZE
    return results


def main():
    cy = bench(LruCache, BUDGET_NS)
    ref = bench(RefLruCache, BUDGET_NS // 4)
    print(f"LruCache, ns per call ({ENTRIES} entries, Python call overhead included)")
    print(f"{'op':<12} {'cython':>8} {'reference':>10} {'speedup':>8}")
    for op in cy:
        print(f"{op:<12} {cy[op]:>8.0f} {ref[op]:>10.0f} {ref[op] / cy[op]:>7.1f}x")


if __name__ == "__main__":
    main()
