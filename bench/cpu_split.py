"""Where a request's CPU goes: user space and kernel, per request, edgeproxy next to nginx.

    python bench/cpu_split.py [--body small|4k|64k] [--conns 50] [--rounds 3] [--duration 5]

Both proxies as in bench/vs_nginx.py (each pinned to core 1, wrk and the nginx origin on
core 0, upstream keepalive 1024). For each wrk run, the proxy's process tree's user and
system CPU time (proc(5): utime and stime, in clock ticks) is divided by the requests wrk
completed, which gives microseconds of user space and of kernel per request; rounds alternate
the two proxies, the table holds medians. The difference between the two rows is what the
proxy costs beyond nginx, and on which side of the system call boundary.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
import vs_nginx  # noqa: E402
from rig import BODIES, HOST, LOAD_CORE, PROXY_CORE  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def user_and_system(pid: int) -> tuple[float, float]:
    """CPU seconds in user space and in the kernel of ``pid`` and its live children."""
    user = system = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(b")") + 2:].split()
        user += int(fields[11]) + int(fields[13])  # utime + cutime
        system += int(fields[12]) + int(fields[14])  # stime + cstime
    return user / CLK_TCK, system / CLK_TCK


def _children(pid: int) -> list:
    out = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        return out
    for k in kids:
        out += [k, *_children(k)]
    return out


def measure(pid: int, port: int, path: str, conns: int, duration: float) -> tuple:
    user0, sys0 = user_and_system(pid)
    done = subprocess.run(rig.wrk_argv(port, path, conns, duration), capture_output=True,
                          text=True, timeout=duration + 30)
    user1, sys1 = user_and_system(pid)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    requests = rig.parse_wrk(done.stdout)["requests"]
    return (user1 - user0) / requests * 1e6, (sys1 - sys0) / requests * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--body", default="small", choices=tuple(BODIES))
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args()
    vs_nginx.ensure_tools()
    tmp, procs = rig.workspace("cpu-split")
    try:
        origin = procs.origin(BODIES)
        systems = {
            "nginx": procs.nginx("nginx", lambda p: rig.nginx_proxy_conf(
                tmp, "nginx", p, origin), PROXY_CORE),
            "edgeproxy": procs.edgeproxy(
                "edgeproxy", lambda p: vs_nginx.edgeproxy_config(p, origin)),
        }
        path = f"/{args.body}"
        for port, proc in systems.values():
            measure(proc.pid, port, path, args.conns, 1)  # warm-up
        runs = {name: [] for name in systems}
        for rnd in range(args.rounds):
            order = list(systems) if rnd % 2 == 0 else list(systems)[::-1]
            for name in order:
                port, proc = systems[name]
                runs[name].append(measure(proc.pid, port, path, args.conns, args.duration))
                user, kernel = runs[name][-1]
                print(f"round {rnd + 1}: {name:>9}  user {user:5.2f} us  kernel {kernel:5.2f} us"
                      f"  per request", flush=True)
        print(f"\n{args.body} x{args.conns}, {args.rounds} rounds x {args.duration:g} s, medians, "
              f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; wrk on core {LOAD_CORE}, "
              f"proxies on core {PROXY_CORE}, {HOST}\n")
        print("| system | user us / request | kernel us / request | total |")
        print("|---|---:|---:|---:|")
        for name, rows in runs.items():
            user = statistics.median(r[0] for r in rows)
            kernel = statistics.median(r[1] for r in rows)
            print(f"| {name} | {user:.2f} | {kernel:.2f} | {user + kernel:.2f} |")
        return 0
    finally:
        procs.stop()


if __name__ == "__main__":
    sys.exit(main())
