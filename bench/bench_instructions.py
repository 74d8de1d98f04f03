"""User-space instructions per pass-through request, counted by callgrind (deterministic: the
same figure whatever else the machine does).

    python bench/bench_instructions.py [--route pass-through|gateway]

Runs bench/bench_hotpath.py --once under valgrind's callgrind at two request counts and reports
the difference divided by the difference in requests, so start-up (imports, config) cancels
out. Needs valgrind (apt-get install valgrind).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HOTPATH = Path(__file__).resolve().parent / "bench_hotpath.py"
SMALL, LARGE = 2_000, 12_000


def instructions(n: int, route: str, tmp: str) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.{n}",
         sys.executable, str(HOTPATH), "--once", "-n", str(n), "--route", route],
        capture_output=True, text=True, timeout=600, check=True)
    found = re.search(r"refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in callgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--route", default="pass-through", choices=("pass-through", "gateway"))
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        small = instructions(SMALL, args.route, tmp)
        large = instructions(LARGE, args.route, tmp)
    per = (large - small) / (LARGE - SMALL)
    print(f"{args.route}: {per:,.0f} instructions per request "
          f"(callgrind, n = {LARGE:,} minus n = {SMALL:,}; git {os.popen('git rev-parse --short HEAD').read().strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
