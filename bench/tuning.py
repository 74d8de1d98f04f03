"""The measured effect of edgeproxy's performance-relevant keys (docs/tuning.md).

    python bench/tuning.py [--duration S] [--rounds N] [--only NAME ...] [--keepalive N ...]

One nginx origin serves a 4 KiB body; wrk loads edgeproxy in front of it, one case per config
variant, each against the same baseline (1 worker, upstream keepalive 1024, access log off).
wrk and the origin run on core 0, edgeproxy on core 1 (the ``workers = 2`` case on both), as in
bench/vs_nginx.py, with its rig (bench/rig.py). Reported: req/s, req/s per proxy core, p50 and p99
and the per-core ratio to the baseline of the same run (the cost of a request, which the load
generator and neighbours skew less than req/s), and the upstream side of each run: connections
the origin accepted per 1000 requests (nginx stub_status) and the sockets to the origin the run
left in TIME_WAIT on this host (the proxy closes what its pool does not keep; each such socket
holds a local port for 60 s; loopback understates them, as Linux reuses TIME_WAIT ports there,
net.ipv4.tcp_tw_reuse = 2). ``--keepalive N ...`` adds a sweep: upstream keepalive N at 50 and
200 client connections. Defaults: 1 round x 5 s per case (about 2 minutes). On a shared
machine every figure moves by 10-20 % from run to run: read the ratios of one run, never
figures across runs. Results go to stdout and bench/results/tuning-latest.md.
"""

import argparse
import re
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import median  # noqa: E402

RESULTS = rig.ROOT / "bench" / "results" / "tuning-latest.md"
CONNS = 50
SWEEP_CONNS = (50, 200)
STATUS = "/nginx_status"
ORIGIN_LOCATIONS = f"location / {{ }}\n        location = {STATUS} {{ stub_status; }}"
TIME_WAIT = "06"  # the state column of /proc/net/tcp


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
    Case("upstream keepalive default", "the shipped default pool size (50 client "
         "connections)", upstream=""),
    Case("upstream keepalive default, 200 connections", "the shipped default pool size, 200 "
         "client connections", upstream="", conns=200),
    Case("upstream keepalive 32", "nginx's example pool size (50 client connections)",
         upstream="keepalive = 32"),
    Case("upstream keepalive 32, 200 connections", "nginx's example pool size, 200 client "
         "connections", upstream="keepalive = 32", conns=200),
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


def sweep(sizes) -> list:
    return [Case(f"keepalive {n} @ {conns}", f"upstream keepalive {n}, {conns} client "
                 f"connections", upstream=f"keepalive = {n}", conns=conns)
            for n in sizes for conns in SWEEP_CONNS]


@dataclass(frozen=True)
class Upstream:
    """The upstream side of one run."""
    connects_per_1k: float  # connections the origin accepted per 1000 requests
    time_wait: int          # sockets to the origin left in TIME_WAIT by the run


def origin_counts(origin_port: int) -> tuple[int, int]:
    """(accepted connections, requests) of the origin so far, less this query's own."""
    with urllib.request.urlopen(f"http://{rig.HOST}:{origin_port}{STATUS}", timeout=5) as r:
        text = r.read().decode()
    accepts, _, requests = map(int, re.search(r"\n\s*(\d+) (\d+) (\d+)", text).groups())
    return accepts - 1, requests - 1


def time_wait(origin_port: int) -> set:
    """Local ends of this host's TIME_WAIT sockets to the origin (IPv4 loopback)."""
    found = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, remote, state = line.split()[1:4]
            if state == TIME_WAIT and int(remote.rsplit(":", 1)[1], 16) == origin_port:
                found.add(local)
    return found


def measure(procs, case: Case, origin_port: int, duration: float) -> tuple:
    port, proc = procs.edgeproxy(f"edgeproxy-{case.name.replace(' ', '_').replace('@', 'at')}",
                                 lambda p: config(case, p, origin_port, procs.tmp), case.cores)
    try:
        rig.fetch(port, "/4k")
        rig.run_wrk(proc.pid, port, "/4k", case.conns, 1.0)  # warm-up: pools, caches
        waiting, (accepts, requests) = time_wait(origin_port), origin_counts(origin_port)
        run = rig.run_wrk(proc.pid, port, "/4k", case.conns, duration)
        accepts1, requests1 = origin_counts(origin_port)
        left = len(time_wait(origin_port) - waiting)
        return run, Upstream(1000 * (accepts1 - accepts) / max(1, requests1 - requests), left)
    finally:
        rig.signal_group(proc, signal.SIGTERM)
        proc.wait(15)


def report(rows: list, header: str) -> str:
    lines = [header, "",
             "| case | what | req/s | req/s per proxy core | p50 / p99 ms | per core vs "
             "baseline | upstream connects per 1k requests | TIME_WAIT left |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for case, rps, per_core, p50, p99, ratio, errors, connects, waiting in rows:
        err = f" ({errors} errors)" if errors else ""
        lines.append(f"| {case.name} | {case.what} | {rps:,.0f}{err} | {per_core:,.0f} | "
                     f"{p50:.2f} / {p99:.2f} | {ratio:.2f} | {connects:,.1f} | "
                     f"{waiting:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="case names (the baseline always runs; none listed: only the baseline "
                                                    "and the --keepalive sweep)")
    ap.add_argument("--keepalive", nargs="*", type=int, default=(),
                    help="upstream keepalive sizes to sweep at 50 and 200 client connections")
    args = ap.parse_args()
    rig.ensure_tools()
    cases = [c for c in CASES if args.only is None or c.name == "baseline"
             or c.name in args.only] + sweep(args.keepalive)
    t0 = time.monotonic()
    runs: dict[str, list] = {c.name: [] for c in cases}
    upstream: dict[str, list] = {c.name: [] for c in cases}
    _, procs = rig.workspace("edgeproxy-tuning-")
    try:
        origin_port = procs.origin({"4k": rig.BODIES["4k"]}, locations=ORIGIN_LOCATIONS)
        for _ in range(args.rounds):
            for case in cases:
                run, up = measure(procs, case, origin_port, args.duration)
                runs[case.name].append(run)
                upstream[case.name].append(up)
    finally:
        procs.stop()
    # Per proxy core: what a request costs the proxy, which wrk and the origin saturating
    # core 0 first (or a neighbour's load) skews far less than req/s.
    base = median(runs["baseline"], "per_core")
    rows = []
    for case in cases:
        rs = runs[case.name]
        per_core = median(rs, "per_core")
        ups = upstream[case.name]
        rows.append((case, median(rs, "rps"), per_core, median(rs, "p50"), median(rs, "p99"),
                     per_core / base, sum(r.errors for r in rs),
                     median(ups, "connects_per_1k"), median(ups, "time_wait")))
    foreign = median([r for rs in runs.values() for r in rs], "foreign_share")
    sweep_args = "".join(f" {n}" for n in args.keepalive)
    sweep_args = f" --keepalive{sweep_args}" if sweep_args else ""
    header = (f"`python bench/tuning.py --duration {args.duration:g} --rounds {args.rounds}"
              f"{sweep_args}`: "
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
