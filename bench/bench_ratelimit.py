"""Micro-benchmark: ext.ratelimit vs the pure-Python reference, ns per check, plus memory.

    python bench/bench_ratelimit.py

Time: one process, the same (key, now) stream for both implementations: one hot key, and 10k
keys drawn at random (fixed seed); `now` advances 5 ms per check on the hot key (twice the
100/s limit, so about half the checks are rejected) and 5 us on the 10k stream. Best batch
of a bounded time per cell; the Python call and loop overhead are included (the engine calls
`check` from Python).

Memory: each limiter, in a fresh subprocess, takes 1,000,000 distinct client IPs (str keys
built on the fly) with max_keys=100,000; RSS is read at checkpoints and the peak (ru_maxrss)
is reported, to show the table stops growing once full (what moves after 100k is the key
dict's table: a dict under steady insert + delete churn settles at ~3x its live size). Bytes/key is
tracemalloc's traced total after 100k fresh keys (entry + dict slot + the key str itself).
"""

import json
import random
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ext.ratelimit as cy  # noqa: E402
import tests.reference.ratelimit as ref  # noqa: E402

BATCH = 10_000
BUDGET_NS = 300_000_000  # per cell (cython); the reference gets a third of it
KEYS = 10_000
IPS = 1_000_000
MAX_KEYS = 100_000
CHECKPOINTS = (MAX_KEYS, 250_000, 500_000, IPS)

CONFIGS = {
    "FixedWindow": lambda m, **kw: m.FixedWindow(100, 1.0, **kw),
    "SlidingLog": lambda m, **kw: m.SlidingLog(100, 1.0, **kw),
    "SlidingCounter": lambda m, **kw: m.SlidingCounter(100, 1.0, **kw),
    "TokenBucket": lambda m, **kw: m.TokenBucket(100.0, 100, **kw),
    "LeakyBucket": lambda m, **kw: m.LeakyBucket(100.0, 100, **kw),
}


def streams():
    rng = random.Random(7)
    hot = [("203.0.113.7", i * 0.005) for i in range(BATCH)]
    spread = [(f"10.0.{(k := rng.randrange(KEYS)) >> 8}.{k & 255}", i * 5e-6)
              for i in range(BATCH)]
    return {"1 hot key": hot, f"{KEYS // 1000}k keys": spread}


def ns_per_check(lim, stream, budget_ns):
    check = lim.check
    best = None
    spent = 0
    offset = 0.0
    span = stream[-1][1] + 1.0
    while spent < budget_ns:
        t0 = time.perf_counter_ns()
        for key, now in stream:
            check(key, now + offset)
        dt = time.perf_counter_ns() - t0
        offset += span  # time moves on between batches, as it would
        spent += dt
        best = dt / len(stream) if best is None else min(best, dt / len(stream))
    return best


def bench_time():
    rows = []
    for name, make in CONFIGS.items():
        for label, stream in streams().items():
            c = ns_per_check(make(cy), stream, BUDGET_NS)
            r = ns_per_check(make(ref), stream, BUDGET_NS // 3)
            rows.append((name, label, c, r))
    return rows


def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def ip(i):
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def mem_child(name):
    # Runs in a fresh process: RSS growth while 1M distinct IPs pass through one limiter.
    make = CONFIGS[name]
    base = rss_kib()
    lim = make(cy, max_keys=MAX_KEYS)
    rss = {}
    now = 0.0
    for i in range(IPS):
        lim.check(ip(i), now)
        now += 1e-6
        if i + 1 in CHECKPOINTS:
            rss[i + 1] = rss_kib() - base
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    assert len(lim) == MAX_KEYS and lim.evictions == IPS - MAX_KEYS
    out = {"rss": [rss[n] for n in CHECKPOINTS], "peak": peak, "len": len(lim)}
    for label, module in (("cy", cy), ("ref", ref)):
        lim = make(module, max_keys=MAX_KEYS)
        tracemalloc.start()
        for i in range(MAX_KEYS):
            lim.check(ip(i), 0.0)
        out[f"bytes_{label}"] = tracemalloc.get_traced_memory()[0] / MAX_KEYS
        tracemalloc.stop()
        del lim
    print(json.dumps(out))


def bench_memory():
    rows = []
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--mem", name], capture_output=True,
                             text=True, check=True, timeout=300)
        rows.append((name, json.loads(out.stdout)))
    return rows


def main():
    if sys.argv[1:2] == ["--mem"]:
        mem_child(sys.argv[2])
        return
    t0 = time.perf_counter()
    print("ns per check() call (Python call overhead included)\n")
    print("| algorithm | stream | cython | reference | speedup |")
    print("|---|---|---:|---:|---:|")
    for name, label, c, r in bench_time():
        print(f"| {name} | {label} | {c:.0f} | {r:.0f} | {r / c:.1f}x |")
    print(f"\n{IPS:,} distinct IPs through each limiter, max_keys={MAX_KEYS:,} "
          "(RSS growth over the process baseline, KiB)\n")
    cols = " | ".join(f"RSS after {n // 1000}k" for n in CHECKPOINTS)
    print(f"| algorithm | {cols} | peak RSS | keys held | bytes/key cython "
          "| bytes/key reference |")
    print("|---|" + "---:|" * (len(CHECKPOINTS) + 4))
    for name, m in bench_memory():
        cells = " | ".join(f"{kib:,}" for kib in m["rss"])
        print(f"| {name} | {cells} | {m['peak']:,} | {m['len']:,} "
              f"| {m['bytes_cy']:.0f} | {m['bytes_ref']:.0f} |")
    print(f"\n(bench took {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
