"""Rate-limit decisions on standalone Redis next to a 3-master Redis Cluster, side by side.

    python bench/bench_redis_ha.py [--duration S] [--conns C] [--decisions N]

One run starts an nginx origin, one redis-server, and a Redis Cluster of three masters
(redis-server --cluster-enabled yes, redis-cli --cluster create), then measures for each Redis:

  decision latency   engine.stores.ratelimit.decide in this process (uvloop): N decisions one
                     after another (p50 / p99 us), then N with 64 in flight (decisions/s)
  proxy req/s        1 and 2 edgeproxy processes (1 worker each) in front of the origin, a
                     token-bucket limit far above the load keyed on X-Client, which wrk sets
                     to a random one of 100,000 clients per request, so cluster keys spread
                     over every master; with 2 processes one wrk drives each, req/s summed

Every process it starts is killed at exit. Needs redis-server, redis-cli, nginx and wrk.
"""

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import BODIES, HOST  # noqa: E402

LIMIT = """
[routes.rate_limit]
store = "redis"
[[routes.rate_limit.limits]]
name = "per-client"
algorithm = "token_bucket"
rate = 1000000000
burst = 1000000000
key = ["header:X-Client"]
"""

WRK_SCRIPT = """
math.randomseed(os.time())
request = function()
  return wrk.format(nil, nil, {["X-Client"] = tostring(math.random(1, 100000))})
end
"""


def cluster_port() -> int:
    while True:  # the cluster bus listens on port + 10000
        port = rig.free_port()
        if port + 10000 < 65536:
            return port


def start_redis(procs) -> dict:
    """{"standalone": [port], "cluster": [port, port, port]}, all answering."""
    ports = {"standalone": [procs.redis()],
             "cluster": [procs.redis(f"redis-{port}", port, ["--cluster-enabled", "yes",
                                                             "--cluster-config-file",
                                                             "nodes.conf"])
                         for port in (cluster_port() for _ in range(3))]}
    subprocess.run(["redis-cli", "--cluster", "create",
                    *(f"{HOST}:{p}" for p in ports["cluster"]), "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 20
    while not all(b"cluster_state:ok" in subprocess.run(
            ["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True).stdout
            for p in ports["cluster"]):
        if time.monotonic() > deadline:
            raise SystemExit("the cluster did not reach cluster_state:ok")
        time.sleep(0.1)
    return ports


def redis_table(kind: str, ports: list) -> str:
    if kind == "standalone":
        return f'[redis]\nurl = "redis://{HOST}:{ports[0]}/0"\n'
    return f'[redis]\nmode = "cluster"\nurl = "redis://{HOST}:{ports[0]}"\n'


def proxy_config(port: int, origin_port: int, redis: str) -> str:
    return rig.edgeproxy_config(port, origin_port, f"""
[[routes]]
name = "limited"
paths = ["/*"]
upstream = "origin"
{LIMIT}""", top=f"\n{redis}", admin="enabled = false")


async def _decisions(redis: str, n: int) -> tuple[float, float, float]:
    from engine.control.config import parse
    from engine.stores import ratelimit
    from engine.stores.redis import RedisStore

    store = RedisStore(parse(redis).redis)
    check = ratelimit.Check(ratelimit.TOKEN_BUCKET, 1e9, 1e9, 0, "bench:l", "l")
    try:
        for i in range(200):  # connections open, scripts cached, slot map loaded
            await ratelimit.decide(store, [check], [f"warm{i}"], [1], None)
        took = []
        for i in range(n):
            t0 = time.perf_counter()
            await ratelimit.decide(store, [check], [f"c{i}"], [1], None)
            took.append(time.perf_counter() - t0)
        took.sort()
        sem = asyncio.Semaphore(64)

        async def one(i):
            async with sem:
                await ratelimit.decide(store, [check], [f"p{i}"], [1], None)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        rate = n / (time.perf_counter() - t0)
    finally:
        await store.close()
    return took[len(took) // 2] * 1e6, took[int(len(took) * 0.99)] * 1e6, rate


def decisions(redis: str, n: int) -> tuple[float, float, float]:
    import uvloop
    return uvloop.run(_decisions(redis, n))


def run_wrk_pair(ports: list, conns: int, duration: float, script: Path) -> tuple:
    """wrk on each proxy port at once; (summed req/s, worst p50 ms, worst p99 ms, errors)."""
    runs = [subprocess.Popen(rig.wrk_argv(p, "/small", conns, duration, script=script),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for p in ports]
    out = [rig.parse_wrk(r.communicate(timeout=duration + 30)[0]) for r in runs]
    return (sum(o["rps"] for o in out), max(o["p50"] for o in out),
            max(o["p99"] for o in out), sum(o["non2xx"] + sum(o["socket_errors"].values())
                                            for o in out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--decisions", type=int, default=5000)
    args = ap.parse_args()
    rig.ensure_tools("redis-server", "redis-cli")
    tmp, procs = rig.workspace("bench-redis-ha-")
    origin_port = procs.origin({"small": BODIES["small"]})
    redis_ports = start_redis(procs)
    script = tmp / "clients.lua"
    script.write_text(WRK_SCRIPT)

    started = time.monotonic()
    rows = []
    for kind, ports in redis_ports.items():
        table = redis_table(kind, ports)
        p50, p99, rate = decisions(table, args.decisions)
        print(f"{kind}: decision p50 {p50:.0f} us p99 {p99:.0f} us, {rate:.0f}/s at 64 in "
              "flight", file=sys.stderr)
        for n in (1, 2):
            proxy_ports = []
            for i in range(n):
                port, proc = procs.edgeproxy(
                    f"edgeproxy-{kind}-{n}-{i}",
                    lambda p, t=table: proxy_config(p, origin_port, t), core="0-1")
                status, headers, _ = rig.fetch(port, "/small", ["X-Client: probe"])
                if status != 200 or "RateLimit" not in headers:
                    raise SystemExit(f"{kind}: the limited route answered {status}")
                proxy_ports.append((port, proc))
            rps, p50ms, p99ms, errors = run_wrk_pair([p for p, _ in proxy_ports],
                                                     args.conns, args.duration, script)
            if errors:
                raise SystemExit(f"{kind} x{n}: {errors} errors or non-2xx in the run")
            print(f"{kind} x{n} proxies: {rps:.0f} req/s", file=sys.stderr)
            rows.append((kind, n, p50, p99, rate, rps, p50ms, p99ms))
            for _, proc in proxy_ports:
                proc.terminate()
                proc.wait(10)
    lines = [f"token-bucket limit per X-Client (100,000 clients), wrk -c{args.conns} per proxy,"
             f" {args.duration:g} s, 1 worker per proxy; {time.monotonic() - started:.0f} s",
             "",
             "| redis | proxies | decision p50 us | decision p99 us | decisions/s (64 in "
             "flight) | proxy req/s | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, n, p50, p99, rate, rps, p50ms, p99ms in rows:
        lines.append(f"| {kind} | {n} | {p50:.0f} | {p99:.0f} | {rate:.0f} | {rps:.0f} | "
                     f"{p50ms:.2f} | {p99ms:.2f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    sys.exit(main())
