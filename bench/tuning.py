"""The measured effect of edgeproxy's performance-relevant keys (docs/tuning.md).

    python bench/tuning.py [--duration S] [--rounds N] [--only NAME ...]

One nginx origin serves a 4 KiB body; wrk loads edgeproxy in front of it, one case per config
variant, each against the same baseline (1 worker, upstream keepalive 1024, access log off).
wrk and the origin run on core 0, edgeproxy on core 1 (the ``workers = 2`` case on both), as in
bench/vs_nginx.py, with its rig (bench/rig.py). Reported: req/s, req/s per proxy core, p50 and p99
and the per-core ratio to the baseline of the same run (the cost of a request, which the load
generator and neighbours skew less than req/s). Defaults: 1 round x 5 s per case (about 1.5
minutes). On a shared machine every figure moves by 10-20 % from run to run: read the ratios
of one run, never figures across runs. Results go to stdout and bench/results/tuning-latest.md.
"""

import argparse
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import median  # noqa: E402

RESULTS = rig.ROOT / "bench" / "results" / "tuning-latest.md"
CONNS = 50


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    server: str = ""          # lines added to [server]
    upstream: str = "keepalive = 1024"  # lines of [[upstreams]] besides name and servers
    cores: str = rig.PROXY_CORE
    conns: int = CONNS


CASES = (
    Case("baseline", "1 worker, upstream keepalive 1024, access log off"),
    Case("access_log json", 'access_log = a file, "json"',
         server='access_log = "{tmp}/access.json"'),
    Case("access_log combined", 'access_log = a file, "combined"',
         server='access_log = "{tmp}/access.log"\naccess_log_format = "combined"'),
    Case("upstream keepalive 32", "the shipped default pool size (50 client connections)",
         upstream="keepalive = 32"),
    Case("upstream keepalive 0", "no pooling: a new upstream connection per request",
         upstream="keepalive = 0"),
    Case("client keepalive_requests 100", "clients reconnect every 100 requests",
         server="keepalive_requests = 100"),
    Case("timeouts 100ms", "client_header_timeout 100ms: the deadline sweep runs every 25 ms",
         server='client_header_timeout = "100ms"'),
    Case("max_body_size 8k", "a body limit (GET requests carry no body: no effect expected)",
         server='max_body_size = "8k"'),
    Case("workers 2", "2 workers on cores 0-1, sharing core 0 with wrk and the origin",
         server="workers = 2", cores="0,1"),
    Case("200 connections", "baseline config, 200 client connections", conns=200),
)


def config(case: Case, port: int, origin_port: int, tmp: Path) -> str:
    server = case.server.replace("{tmp}", str(tmp))
    workers = "" if "workers" in server else "workers = 1\n"
    log = "" if "access_log" in server else 'access_log = "off"\n'
    return f"""
[server]
listen = "{rig.HOST}:{port}"
{workers}{log}{server}

[admin]
listen = "{rig.HOST}:0"

[[upstreams]]
name = "origin"
servers = ["http://{rig.HOST}:{origin_port}"]
{case.upstream}

[[routes]]
name = "bench"
paths = ["/*"]
upstream = "origin"
"""


def measure(procs, case: Case, origin_port: int, duration: float) -> rig.Run:
    port, proc = procs.edgeproxy(f"edgeproxy-{case.name.replace(' ', '_')}",
                                 lambda p: config(case, p, origin_port, procs.tmp), case.cores)
    try:
        rig.fetch(port, "/4k")
        rig.run_wrk(proc.pid, port, "/4k", case.conns, 1.0)  # warm-up: pools, caches
        return rig.run_wrk(proc.pid, port, "/4k", case.conns, duration)
    finally:
        rig.signal_group(proc, signal.SIGTERM)
        proc.wait(15)


def report(rows: list, header: str) -> str:
    lines = [header, "",
             "| case | what | req/s | req/s per proxy core | p50 / p99 ms | per core vs "
             "baseline |",
             "|---|---|---:|---:|---:|---:|"]
    for case, rps, per_core, p50, p99, ratio, errors in rows:
        err = f" ({errors} errors)" if errors else ""
        lines.append(f"| {case.name} | {case.what} | {rps:,.0f}{err} | {per_core:,.0f} | "
                     f"{p50:.2f} / {p99:.2f} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="case names (the baseline always runs)")
    args = ap.parse_args()
    rig.ensure_tools()
    cases = [c for c in CASES if not args.only or c.name == "baseline" or c.name in args.only]
    t0 = time.monotonic()
    runs: dict[str, list] = {c.name: [] for c in cases}
    _, procs = rig.workspace("edgeproxy-tuning-")
    try:
        origin_port = procs.origin({"4k": rig.BODIES["4k"]})
        for _ in range(args.rounds):
            for case in cases:
                runs[case.name].append(measure(procs, case, origin_port, args.duration))
    finally:
        procs.stop()
    # Per proxy core: what a request costs the proxy, which wrk and the origin saturating
    # core 0 first (or a neighbour's load) skews far less than req/s.
    base = median(runs["baseline"], "per_core")
    rows = []
    for case in cases:
        rs = runs[case.name]
        per_core = median(rs, "per_core")
        rows.append((case, median(rs, "rps"), per_core, median(rs, "p50"), median(rs, "p99"),
                     per_core / base, sum(r.errors for r in rs)))
    foreign = median([r for rs in runs.values() for r in rs], "foreign_share")
    header = (f"`python bench/tuning.py --duration {args.duration:g} --rounds {args.rounds}`: "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, wrk {CONNS} connections "
              f"(unless stated), 4 KiB bodies, medians of {args.rounds} round(s); other load on "
              f"the machine meanwhile: {foreign:.2f} cores (a shared machine: figures are "
              f"noisy). {time.monotonic() - t0:.0f} s.")
    text = report(rows, header)
    print(text)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
