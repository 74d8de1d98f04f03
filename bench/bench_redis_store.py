"""Lua decisions per second through engine.stores.redis.RedisStore, next to redis-py.

    python bench/bench_redis_store.py [--rounds N] [--duration S] [--conc 1,10,100]

One process, one uvloop loop (as a worker), one redis-server started here (core 0; this
process is pinned to core 1). Each variant runs the rate limiter's real script
(engine.stores.ratelimit.DECIDE, one token-bucket check, Redis TIME) from C concurrent tasks,
each awaiting one decision after another, as C concurrent requests would:

    redis-py  the previous store: redis.asyncio + register_script (EVALSHA) under wait_for
    lean      engine.stores.redis: one pipelined connection, hiredis packing and parsing

Rounds interleave the variants; the table shows medians of decisions/s (wall clock) and of
this process's CPU microseconds per decision (what a decision costs the proxy's core).
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402
import uvloop  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402

from engine.control.config import RedisConfig  # noqa: E402
from engine.stores import ratelimit as rstore  # noqa: E402
from engine.stores.redis import RedisStore, StoreUnavailable  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402


class RedisPyStore:
    """The store as it was before the rewrite (git 92d36f7), kept for comparison."""

    def __init__(self, cfg, max_connections: int = 64):
        self.cfg = cfg
        self.max_connections = max_connections
        self.prefix = cfg.prefix
        self._client = None
        self._failures = 0
        self._open_until = 0.0
        self._scripts = {}

    @property
    def client(self):
        if self._client is None:
            cfg = self.cfg
            self._client = aioredis.Redis.from_url(
                cfg.url, socket_timeout=cfg.timeout, socket_connect_timeout=cfg.timeout,
                max_connections=self.max_connections, retry_on_timeout=False)
        return self._client

    @property
    def is_open(self) -> bool:
        return self._failures >= self.cfg.breaker_failures and \
            time.monotonic() < self._open_until

    async def call(self, fn, *args, **kwargs):
        if self.is_open:
            raise StoreUnavailable("redis breaker open")
        try:
            result = await asyncio.wait_for(fn(*args, **kwargs), self.cfg.timeout * 2)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failures += 1
            if self._failures >= self.cfg.breaker_failures:
                self._open_until = time.monotonic() + self.cfg.breaker_cooldown
            raise StoreUnavailable(f"redis: {exc.__class__.__name__}: {exc}") from None
        self._failures = 0
        return result

    def script(self, source: str):
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    async def run(self, source: str, keys: list, args: list):
        return await self.call(self.script(source), keys=keys, args=args)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            self._scripts.clear()
            await client.aclose()


VARIANTS = {"redis-py": RedisPyStore, "lean": RedisStore}
CHECK = rstore.Check(rstore.TOKEN_BUCKET, 1e9, 1e9, 0, "bench:tb", "tb")


async def measure(store, conc: int, duration: float) -> tuple[float, float]:
    keys = [store.prefix + "{rl:bench:tb:client}"]
    args = ["", "1", CHECK.code, str(CHECK.p1), str(CHECK.p2), str(CHECK.p3), "1", ""]
    for _ in range(50):  # connect, load the script, warm the pool
        await store.run(rstore.DECIDE, keys, args)
    done = 0
    stop = time.monotonic() + duration

    async def worker():
        nonlocal done
        while time.monotonic() < stop:
            reply = await store.run(rstore.DECIDE, keys, args)
            assert reply[0] == 1, reply
            done += 1

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return done / wall, cpu / done * 1e6


async def one(variant: str, url: str, conc: int, duration: float):
    cfg = RedisConfig(url=url, prefix="bench:", timeout=2.0)
    store = VARIANTS[variant](cfg)
    if variant == "redis-py":
        # above the concurrency: redis-py's pool raises MaxConnectionsError past it (the
        # lean store uses one connection)
        store.max_connections = conc + 10
    try:
        return await measure(store, conc, duration)
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--conc", default="1,10,100")
    opts = ap.parse_args()
    concs = [int(c) for c in opts.conc.split(",")]
    server = RedisServer()
    server.start()
    try:
        if hasattr(os, "sched_setaffinity") and os.cpu_count() >= 2:
            os.sched_setaffinity(server.proc.pid, {0})
            os.sched_setaffinity(0, {1})
        results = {(v, c): [] for v in VARIANTS for c in concs}
        for r in range(opts.rounds):
            for c in concs:
                order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
                for v in order:
                    rate, us = uvloop.run(one(v, server.url, c, opts.duration))
                    results[v, c].append((rate, us))
                    print(f"round {r + 1} c={c:<3} {v:<8} {rate:9.0f} decisions/s "
                          f"{us:7.1f} us CPU/decision", flush=True)
    finally:
        server.stop()
    print(f"\nredis-server 7 on core 0, bench on core 1, {opts.rounds} rounds x "
          f"{opts.duration:g} s, medians\n")
    print("| concurrency | variant | decisions/s | CPU us/decision | speed-up |")
    print("|---|---|---|---|---|")
    for c in concs:
        base = statistics.median(x[0] for x in results["redis-py", c])
        for v in VARIANTS:
            rate = statistics.median(x[0] for x in results[v, c])
            us = statistics.median(x[1] for x in results[v, c])
            print(f"| {c} | {v} | {rate:.0f} | {us:.1f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
