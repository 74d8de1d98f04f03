"""Tail latency when clients reconnect together: edgeproxy next to nginx, 200 connections.

    python bench/tail.py [--rounds 2] [--duration 5] [--conns 200]

Both proxies as in bench/vs_nginx.py (each pinned to core 1, wrk and the nginx origin on core
0, upstream keepalive 1024), 13 B bodies. wrk opens its connections together, so they reach
the proxy's keepalive_requests (1,000, both proxies' default) together and reconnect in a
burst; each proxy also runs with keepalive_requests past the run's length, where no
connection closes. A Lua script has wrk print its percentiles up to p99.99 and the maximum.
Rounds interleave the four runs; the table holds medians. Writes bench/results/tail-latest.md.
"""

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import BODIES, ROOT  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "tail-latest.md"
POINTS = ("50", "90", "99", "99.9", "99.99", "max")
LUA = """done = function(summary, latency, requests)
  for _, p in ipairs({50, 90, 99, 99.9, 99.99}) do
    io.write(string.format("point %g %.3f\\n", p, latency:percentile(p) / 1000))
  end
  io.write(string.format("point max %.3f\\n", latency.max / 1000))
end
"""
NEVER = 1_000_000_000  # keepalive_requests no run reaches
ROUTE = '\n[[routes]]\nname = "bench"\npaths = ["/*"]\nupstream = "origin"\n'


def main() -> int:
    args = rig.route_args(__doc__, duration=5.0, rounds=2, conns=200)
    rig.ensure_tools()
    started = time.monotonic()
    tmp, procs = rig.workspace("tail")
    script = tmp / "points.lua"
    script.write_text(LUA)
    try:
        origin = procs.origin({f"{k}.bin": v for k, v in BODIES.items()})
        systems = {}
        for reconnects in (True, False):
            top = "" if reconnects else f"keepalive_requests {NEVER};"
            server = "" if reconnects else f"keepalive_requests = {NEVER}"
            tag = "reconnects every 1,000" if reconnects else "never reconnects"
            label = f"nginx-{int(reconnects)}"
            systems[f"nginx, {tag}"] = procs.nginx(
                label, lambda p, t=top, n=label: rig.nginx_proxy_conf(tmp, n, p, origin, top=t),
                rig.PROXY_CORE)
            systems[f"edgeproxy, {tag}"] = procs.edgeproxy(
                f"edgeproxy-{int(reconnects)}",
                lambda p, s=server: rig.edgeproxy_config(p, origin, ROUTE, server=s))
        for port, proc in systems.values():
            rig.run_wrk(proc.pid, port, "/small.bin", args.conns, 1)  # warm: pools, caches
        points: dict = {name: [] for name in systems}
        rps: dict = {name: [] for name in systems}
        for rnd in range(args.rounds):
            for name in rig.rotated(systems, rnd):
                port, proc = systems[name]
                out = subprocess.run(
                    rig.wrk_argv(port, "/small.bin", args.conns, args.duration, script=script),
                    capture_output=True, text=True, timeout=args.duration + 30, check=True).stdout
                found = dict(re.findall(r"^point (\S+) ([\d.]+)$", out, re.M))
                run = rig.parse_wrk(out)
                if run["non2xx"] or run["socket_errors"]:
                    raise SystemExit(f"{name}: errors in the run: {run['error_lines']}")
                points[name].append([float(found[p]) for p in POINTS])
                rps[name].append(run["rps"])
                print(f"round {rnd + 1} {name:34} p99.9 {found['99.9']} ms", file=sys.stderr)
    finally:
        procs.stop()
    lines = [
        "## Tail latency under reconnect bursts (bench/tail.py)", "",
        f"- command: `python bench/tail.py` ({args.rounds} rounds x {args.duration:g} s, "
        f"wrk -t1 -c{args.conns}, 13 B bodies, medians; took "
        f"{(time.monotonic() - started) / 60:.1f} min)",
        f"- date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}; edgeproxy git "
        f"{rig.git_rev()}",
        "- pinning as bench/vs_nginx.py: wrk and the origin on core 0, each proxy on core 1",
        "", "| system | req/s | " + " | ".join(
            f"p{p} ms" if p != "max" else "max ms" for p in POINTS) + " |",
        "|---|---:|" + "---:|" * len(POINTS),
    ]
    for name in systems:
        cols = [statistics.median(run[i] for run in points[name]) for i in range(len(POINTS))]
        lines.append(f"| {name} | {statistics.median(rps[name]):,.0f} | "
                     + " | ".join(f"{c:.2f}" for c in cols) + " |")
    rig.write_results(RESULTS, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
