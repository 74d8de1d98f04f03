"""Requests per second through an idempotent route, next to the same route without it.

    python bench/bench_idempotency.py [--quick] [--rounds N] [--duration S] [--conns C]

An nginx origin answers every POST with a fixed 201 (`return 201`); wrk POSTs through one
edgeproxy worker per system:

  plain    the route without [routes.idempotency] (the key header is sent and ignored)
  memory   store = "memory"   (one worker's LRU)
  redis    store = "redis"    (a redis-server started here, on the load core)

and two key patterns: `fresh` (a new key per request: claim, upstream, store) and `replay`
(one key for every request: after the first, each is a stored answer and never reaches the
origin; `concurrent = "wait"`, so the first burst of copies waits for the first answer
instead of getting 409). wrk, the origin and Redis share core 0; every edgeproxy gets core 1, and its CPU time
is measured, so "req/s per proxy core" compares what each variant costs per request. Rounds
interleave the systems; tables report medians. Results go to stdout and
bench/results/idempotency-latest.md. Every process started here is killed at exit.
"""

import argparse
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import HOST, ROOT, median  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "idempotency-latest.md"
SYSTEMS = ("plain", "memory", "redis")
MODES = ("fresh", "replay")

FRESH_LUA = """
wrk.method = "POST"
local n = 0
local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
request = function()
  n = n + 1
  headers["Idempotency-Key"] = '"%(prefix)s-' .. n .. '"'
  return wrk.format("POST", "/pay", headers, "amount=10&currency=eur")
end
"""

REPLAY_LUA = """
wrk.method = "POST"
wrk.body = "amount=10&currency=eur"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Idempotency-Key"] = '"%(prefix)s-replayed"'
wrk.path = "/pay"
"""


def origin_conf(tmp: Path, port: int) -> str:
    return rig.nginx_conf(tmp, "origin", f"""
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen {HOST}:{port};
        location / {{
            default_type application/json;
            return 201 '{{"id": "ch_1Nx5Yq2eZvKYlo2C", "amount": 10, "status": "succeeded"}}';
        }}
    }}""")


def edgeproxy_conf(port: int, origin_port: int, system: str, redis_port: int) -> str:
    section = ""
    if system != "plain":
        # wait: the first burst of replay-mode copies waits for the first answer, not 409
        section = f'[routes.idempotency]\nstore = "{system}"\nconcurrent = "wait"\n'
    if system == "redis":
        section += f'\n[redis]\nurl = "redis://{HOST}:{redis_port}/0"\n'
    return rig.edgeproxy_config(port, origin_port, f"""
[[routes]]
name = "pay"
paths = ["/*"]
upstream = "origin"
{section}""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round x 3 s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=50)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    rig.ensure_tools("redis-server")
    tmp, procs = rig.workspace("edgeproxy-bench-idem-")
    origin_port, _ = procs.nginx("origin", lambda p: origin_conf(tmp, p), rig.LOAD_CORE)
    redis_port = procs.redis()
    proxies = {system: procs.edgeproxy(system, lambda p, s=system: edgeproxy_conf(
        p, origin_port, s, redis_port)) for system in SYSTEMS}

    results: dict = {(s, m): [] for s in SYSTEMS for m in MODES}
    for rnd in range(args.rounds):
        for mode in MODES:
            for system in rig.rotated(SYSTEMS, rnd):
                script = tmp / f"{system}-{mode}-{rnd}.lua"
                lua = FRESH_LUA if mode == "fresh" else REPLAY_LUA
                script.write_text(lua % {"prefix": secrets.token_hex(6)})
                port, proc = proxies[system]
                r = rig.run_wrk(proc.pid, port, "/pay", args.conns, args.duration,
                                script=script)
                results[(system, mode)].append(r)
                print(f"round {rnd + 1} {mode:6} {system:6} {r.rps:9.0f} req/s "
                      f"p99 {r.p99:6.2f} ms cpu {r.cpu_share:4.2f} errors {r.errors}",
                      file=sys.stderr)

    lines = [f"# Idempotency overhead ({args.rounds} x {args.duration:g} s, {args.conns} "
             "connections, 1 worker, medians)", "",
             "| route | keys | req/s | req/s per proxy core | vs plain | p50 ms | p99 ms | "
             "errors |", "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        base = median(results[("plain", mode)], "per_core")
        for system in SYSTEMS:
            runs = results[(system, mode)]
            per_core = median(runs, "per_core")
            lines.append(
                f"| {system} | {mode} | {median(runs, 'rps'):,.0f} | "
                f"{per_core:,.0f} | {per_core / base:.2f} | {median(runs, 'p50'):.2f} | "
                f"{median(runs, 'p99'):.2f} | {sum(r.errors for r in runs)} |")
    foreign = median([r for rs in results.values() for r in rs], "foreign_share")
    lines += ["", f"Other load on the machine meanwhile: {foreign:.2f} cores (median).",
              "`plain` ignores the key; `replay` answers from the store without the origin."]
    rig.write_results(RESULTS, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
