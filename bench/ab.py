"""Paired runs: this tree's edgeproxy against another git revision's, alternated.

    python bench/ab.py REV [--body small|4k|64k] [--conns N] [--rounds N] [--duration S]
                           [--gateway] [--close]

REV (a commit, branch or tag) is checked out in a temporary git worktree and its extensions are
built there (about 40 s). One nginx origin serves both; wrk loads each edgeproxy in turn, the
order alternating every round, pinned as bench/vs_nginx.py pins them (proxy on core 1, wrk and
the origin on core 0) and with the same config (``--gateway``: vs_nginx's gateway route;
``--close``: a new connection per request, so accepting and closing weigh). A
change worth a few percent shows here, where two full vs_nginx runs differ by about as much:
each pair of runs is seconds apart. Prints req/s per proxy core of every run and each round's
ratio (this tree / REV), then their median. The worktree and every process go at exit.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
import vs_nginx  # noqa: E402
from rig import BODIES, ROOT  # noqa: E402


def build_worktree(rev: str, where: Path) -> Path:
    tree = where / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q", "-j", "2"],
                   cwd=tree, check=True, capture_output=True, timeout=900)
    return tree


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the git revision to compare this tree with")
    ap.add_argument("--body", default="small", choices=tuple(BODIES))
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--gateway", action="store_true", help="vs_nginx's gateway route")
    ap.add_argument("--close", action="store_true", help="a new connection per request")
    args = ap.parse_args()
    filters = vs_nginx.GATEWAY_FILTERS if args.gateway else ()
    headers = tuple(h for f in filters for h in f.client_headers)
    if args.close:
        headers += ("Connection: close",)
    tmp, procs = rig.workspace("ab")  # (the worktree goes in it, removed from git first)
    try:
        print(f"building {args.rev} in a worktree ...", flush=True)
        other = build_worktree(args.rev, tmp)
        origin = procs.origin(BODIES)
        trees = {"this tree": ROOT, args.rev: other}
        ports = {}
        for name, root in trees.items():
            port, proc = procs.edgeproxy(
                name.replace(" ", "-"),
                lambda p: vs_nginx.edgeproxy_config(p, origin, filters), root=root)
            ports[name] = (port, proc)
            rig.run_wrk(proc.pid, port, f"/{args.body}", args.conns, 1, headers)  # warm-up
        ratios = []
        for rnd in range(args.rounds):
            order = list(trees) if rnd % 2 == 0 else list(trees)[::-1]
            per_core = {}
            for name in order:
                port, proc = ports[name]
                run = rig.run_wrk(proc.pid, port, f"/{args.body}", args.conns, args.duration,
                                  headers)
                per_core[name] = run.per_core
                print(f"round {rnd + 1}: {name:>12}  {run.per_core:9,.0f} req/s per core  "
                      f"p99 {run.p99:.2f} ms", flush=True)
            ratios.append(per_core["this tree"] / per_core[args.rev])
            print(f"round {rnd + 1}: this tree / {args.rev} = {ratios[-1]:.3f}", flush=True)
        print(f"median of {len(ratios)} rounds, {args.body} x{args.conns}"
              f"{' gateway' if args.gateway else ''}{' close' if args.close else ''}: this tree / {args.rev} = "
              f"{statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})")
        return 0
    finally:
        procs.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                        str(tmp / "tree")], capture_output=True, timeout=60)


if __name__ == "__main__":
    sys.exit(main())
