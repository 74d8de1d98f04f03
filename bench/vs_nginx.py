"""edgeproxy vs nginx (and an aiohttp proxy) as a reverse proxy, measured per proxy CPU core.

    python bench/vs_nginx.py [--quick] [--rounds N] [--duration S]

An nginx origin serves static bodies (13 B, 4 KiB, 64 KiB); wrk loads each proxy in front of it.
wrk and the origin share core 0 and every proxy gets core 1, so throughput is bounded by
whichever side saturates first. That is why each proxy's own CPU time is measured: "req/s per
proxy core" (req/s divided by the share of a core the proxy used) compares the proxies' cost
per request, which is what the ratio to nginx reports.

Systems: nginx (1 worker, upstream keepalive 1024), edgeproxy (1 worker, shipped defaults, a
plain route: routing, proxy headers and the request id stay on), aiohttp (bench/aiohttp_proxy.py)
and edgeproxy-gateway (a route with the filters in GATEWAY_FILTERS, small bodies only).
Rounds interleave the systems (rotating their order); tables report medians over rounds.
Defaults: 3 rounds x 5 s per system and case, about 6 minutes (20 runs a round); --quick is 1
round x 3 s. The CPU other processes use meanwhile is reported, since a busy machine skews all.
Tables go to stdout and bench/results/vs_nginx-latest.md. Loopback only; every process it
starts is killed at exit and its temp dir removed. As root, missing wrk/nginx are apt-installed.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import BODIES, HOST, LOAD_CORE, PROXY_CORE, ROOT, Processes  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "vs_nginx-latest.md"

BODY_LABEL = {"small": "small body (13 B)", "4k": "4 KiB body", "64k": "64 KiB body"}
CASES = (("small", 50), ("4k", 50), ("64k", 50), ("small", 200), ("4k", 200), ("64k", 200))
# Bodies whose cases also run edgeproxy-gateway: a filter's cost is per request, so it shows
# where requests are cheapest; the large bodies would mostly add run time.
GATEWAY_BODIES = ("small",)


@dataclass(frozen=True)
class GatewayFilter:
    """One filter of the full-gateway route. Adding a filter to the gateway case is one entry
    in GATEWAY_FILTERS: its route section, any top-level tables it needs (consumers, store)
    and the request headers wrk must send for requests to pass it (an API key, ...). Limits
    must sit far above the load, so a rate limiter decides every request but never says 429."""

    name: str
    route_toml: str
    top_toml: str = ""
    client_headers: tuple[str, ...] = ()


GATEWAY_FILTERS = (
    GatewayFilter(
        "headers",
        route_toml="""
[routes.headers.request]
set = { "X-Edge" = "edgeproxy" }
add = { "X-Bench" = "gateway" }
remove = ["X-Debug"]
rename = { "X-Client-Trace" = "X-Trace-Id" }

[routes.headers.response]
set = { "X-Served-By" = "edgeproxy" }
add = { "X-Frame-Options" = "DENY" }
remove = ["X-Powered-By"]
rename = { "ETag" = "X-Origin-ETag" }
""",
        client_headers=("X-Client-Trace: bench-0001",),
    ),
    GatewayFilter(
        "rate_limit",
        route_toml="""
[[routes.rate_limit.limits]]
name = "per-ip"
algorithm = "sliding_counter"
limit = 100000000
window = "1m"
key = ["ip"]
""",
    ),
)


# -- configs

def edgeproxy_config(port: int, origin_port: int, filters=()) -> str:
    """A one-route edgeproxy config in front of the origin; ``filters`` (GatewayFilter
    entries) make it the full-gateway route."""
    route = "".join(f.route_toml for f in filters)
    return rig.edgeproxy_config(port, origin_port, top="".join(f.top_toml for f in filters),
                                routes=f"""
[[routes]]
name = "{'gateway' if filters else 'bench'}"
paths = ["/*"]
upstream = "origin"
{route}""")


# -- the systems under test

@dataclass
class System:
    name: str
    port: int
    proc: subprocess.Popen
    headers: tuple = ()
    bodies: tuple = tuple(BODIES)  # which cases it runs


def start_all(procs: Processes) -> tuple[list, int]:
    tmp = procs.tmp
    origin_port = procs.origin(BODIES)
    systems = []
    port, proc = procs.nginx("nginx", lambda p: rig.nginx_proxy_conf(tmp, "nginx", p,
                                                                     origin_port), PROXY_CORE)
    systems.append(System("nginx", port, proc))
    port, proc = procs.edgeproxy("edgeproxy", lambda p: edgeproxy_config(p, origin_port))
    systems.append(System("edgeproxy", port, proc))

    port = rig.free_port()
    proc = procs.start("aiohttp", [sys.executable, str(ROOT / "bench" / "aiohttp_proxy.py"),
                                   "--listen", f"{HOST}:{port}", "--upstream",
                                   f"http://{HOST}:{origin_port}", "--keepalive", "1024"],
                       PROXY_CORE)
    rig.wait_ready(procs, "aiohttp", proc, port)
    systems.append(System("aiohttp", port, proc))

    port, proc = procs.edgeproxy("edgeproxy-gateway",
                                 lambda p: edgeproxy_config(p, origin_port, GATEWAY_FILTERS))
    headers = tuple(h for f in GATEWAY_FILTERS for h in f.client_headers)
    systems.append(System("edgeproxy-gateway", port, proc, headers, GATEWAY_BODIES))

    for s in systems:
        for body in s.bodies:
            try:
                status, _, got = rig.fetch(s.port, f"/{body}", s.headers)
            except OSError as exc:
                raise SystemExit(f"{s.name}: GET /{body} failed: {exc}\n"
                                 f"{procs.log_tail(s.name)}") from None
            if status != 200 or got != BODIES[body]:
                raise SystemExit(f"{s.name}: GET /{body} answered {status} with "
                                 f"{len(got)} bytes, expected 200 with {len(BODIES[body])}")
    return systems, origin_port


def ensure_tools() -> None:
    rig.ensure_tools()
    try:
        import aiohttp  # noqa: F401
        import uvloop  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is missing: pip install '.[bench]'") from None


# -- report

def _fmt(v: float, digits: int = 0) -> str:
    if v != v:  # nan
        return "-"
    return f"{v:,.{digits}f}"


def summarize(results: dict) -> dict:
    """(case, system) -> medians over rounds."""
    out = {}
    for key, runs in results.items():
        out[key] = {
            "rps": statistics.median(r.rps for r in runs),
            "p50": statistics.median(r.p50 for r in runs),
            "p99": statistics.median(r.p99 for r in runs),
            "cpu": statistics.median(r.cpu_share for r in runs),
            "per_core": statistics.median(r.per_core for r in runs),
            "per_core_min": min(r.per_core for r in runs),
            "per_core_max": max(r.per_core for r in runs),
            "errors": sum(r.errors for r in runs),
            "runs": len(runs),
        }
    return out


def report(results: dict, systems: list, header: str) -> str:
    med = summarize(results)
    names = [s.name for s in systems]
    lines = [header, ""]
    summary = []
    for body, conns in CASES:
        case = (body, conns)
        lines += [f"### {BODY_LABEL[body]}, {conns} connections", "",
                  "| system | req/s | p50 ms | p99 ms | proxy CPU share | req/s per proxy core "
                  "| (min-max over rounds) | vs nginx | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        base = med.get((case, "nginx"))
        for name in names:
            m = med.get((case, name))
            if m is None:
                continue
            ratio = m["per_core"] / base["per_core"] if base else float("nan")
            lines.append(f"| {name} | {_fmt(m['rps'])} | {_fmt(m['p50'], 2)} | "
                         f"{_fmt(m['p99'], 2)} | {_fmt(m['cpu'], 2)} | {_fmt(m['per_core'])} | "
                         f"{_fmt(m['per_core_min'])}-{_fmt(m['per_core_max'])} | "
                         f"{_fmt(ratio, 2)} | {m['errors']} |")
        ep, aio, gw = (med.get((case, n)) for n in ("edgeproxy", "aiohttp", "edgeproxy-gateway"))
        notes = []
        if ep and aio:
            notes.append(f"edgeproxy/aiohttp: {_fmt(ep['per_core'] / aio['per_core'], 2)}x per "
                         f"proxy core, {_fmt(ep['rps'] / aio['rps'], 2)}x req/s")
        if ep and gw:
            notes.append(f"edgeproxy-gateway/edgeproxy pass-through: "
                         f"{_fmt(gw['per_core'] / ep['per_core'], 2)}x per proxy core")
        lines += [""] + [f"- {n}" for n in notes] + [""]
        summary.append((case, ep, aio, gw, base))
    lines += ["### Summary: req/s per proxy core, ratios", "",
              "| case | edgeproxy / nginx | edgeproxy / aiohttp | aiohttp / nginx "
              "| gateway / edgeproxy |",
              "|---|---:|---:|---:|---:|"]
    for (body, conns), ep, aio, gw, base in summary:
        def ratio(a, b):
            return _fmt(a["per_core"] / b["per_core"], 2) if a and b else "-"
        lines.append(f"| {body} x{conns} | {ratio(ep, base)} | {ratio(ep, aio)} | "
                     f"{ratio(aio, base)} | {ratio(gw, ep)} |")
    bad = [(case, name, i, r) for (case, name), runs in results.items()
           for i, r in enumerate(runs) if r.errors]
    if bad:
        lines += ["", "### Errors reported by wrk", ""]
        for (body, conns), name, i, r in bad:
            lines.append(f"- {name}, {body} x{conns}, round {i + 1}: "
                         + "; ".join(r.error_lines))
    return "\n".join(lines) + "\n"


def machine_header(duration: float, rounds: int, elapsed: float, results: dict) -> str:
    def version(argv):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    rev = rig.git_rev()
    foreign = [r.foreign_share for runs in results.values() for r in runs]
    busy = sum(1 for f in foreign if f > 0.1)
    return "\n".join([
        "## edgeproxy vs nginx vs aiohttp (bench/vs_nginx.py)",
        "",
        f"- command: `{' '.join(['python bench/vs_nginx.py', *sys.argv[1:]])}`",
        f"- {rounds} round(s) x {duration:g} s per system and case, medians; systems "
        f"interleaved within each round; took {elapsed / 60:.1f} min",
        f"- date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}; edgeproxy git {rev}",
        f"- machine: {cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()}",
        f"- {version([rig.nginx_binary(), '-v'])}; {version(['wrk', '-v'])}; "
        f"Python {platform.python_version()}; aiohttp {aiohttp.__version__}",
        f"- pinning: wrk -t1 and the origin (nginx, 1 worker) on core {LOAD_CORE}; each proxy "
        f"on core {PROXY_CORE}, 1 worker/process, upstream keepalive 1024",
        "- proxy CPU share = proxy CPU seconds (utime+stime of its process tree) / wall "
        "seconds of the run; req/s per proxy core = req/s / CPU share; \"vs nginx\" and the "
        "summary compare that",
        "- edgeproxy-gateway = edgeproxy with the route filters: "
        + ", ".join(f.name for f in GATEWAY_FILTERS),
        "- errors = wrk's non-2xx/3xx responses + socket errors, summed over rounds",
        f"- other load on the machine during the runs (CPU of processes this script did not "
        f"start, in cores): median {statistics.median(foreign):.2f}, max {max(foreign):.2f}; "
        f"{busy} of {len(foreign)} runs above 0.1 core"
        + (" -- NOISY: another workload was running" if busy > len(foreign) / 10 else ""),
    ])


# -- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round x 3 s (a smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 5; --quick 3)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown results file")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (3.0 if args.quick else 5.0)
    warmup = 1.0 if args.quick else 2.0
    if rounds < 1 or duration < 1:
        parser.error("--rounds must be >= 1 and --duration >= 1")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 cores: one for wrk + origin, one for the proxy")

    ensure_tools()
    _, procs = rig.workspace("edgeproxy-bench-")
    started = time.monotonic()
    try:
        systems, _ = start_all(procs)
        runs_per_round = sum(1 for body, _ in CASES for s in systems if body in s.bodies)
        estimate = rounds * runs_per_round * (duration + 0.6) + len(systems) * (warmup + 0.5)
        print(f"{len(systems)} systems, {len(CASES)} cases, {rounds} round(s) x {duration:g} s: "
              f"about {estimate / 60:.1f} min", file=sys.stderr)
        for s in systems:  # fill the upstream pools and let the code paths warm up
            rig.run_wrk(s.proc.pid, s.port, "/small", 200, warmup, s.headers)
        results: dict = {}
        for rnd in range(rounds):
            for body, conns in CASES:
                for s in rig.rotated([s for s in systems if body in s.bodies], rnd):
                    if s.proc.poll() is not None:
                        raise SystemExit(f"{s.name} died (exit {s.proc.returncode}):\n"
                                         f"{procs.log_tail(s.name)}")
                    r = rig.run_wrk(s.proc.pid, s.port, f"/{body}", conns, duration, s.headers)
                    results.setdefault(((body, conns), s.name), []).append(r)
                    err = f"; {' / '.join(r.error_lines)}" if r.errors else ""
                    print(f"[round {rnd + 1}/{rounds}] {body} x{conns} {s.name}: "
                          f"{r.rps:,.0f} req/s, p99 {r.p99:.2f} ms, cpu {r.cpu_share:.2f}, "
                          f"{r.per_core:,.0f} req/s per core, other load "
                          f"{r.foreign_share:.2f}{err}", file=sys.stderr)
                    time.sleep(0.3)
        text = report(results, systems,
                      machine_header(duration, rounds, time.monotonic() - started, results))
        rig.write_results(args.output, text)
        print(f"written to {args.output}", file=sys.stderr)
        return 0
    finally:
        procs.stop()


if __name__ == "__main__":
    sys.exit(main())
