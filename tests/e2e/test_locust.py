"""bench/locustfile.py against the shipped config, as the README tells an operator to run it:
`locust --config bench/locust.conf`, headless, through a real `edgeproxy run`."""

import csv
import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.support.cli import CliProxy
from tests.support.shipped import shipped_config

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Never imported here: locust monkey-patches the process it is imported into (gevent), which
# would break every asyncio test after this one. It runs as its own process.
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is in the test and bench extras", allow_module_level=True)

# Every task of the locustfile, by the name its requests are reported under.
TASKS = [
    "api: GET /api/hello", "users: GET /users/{id}", "users: PUT /users/{id}",
    "users: DELETE /users/{id}", "orders: POST /orders (new key)",
    "orders: POST /orders (replay)", "health: GET /healthz", "health: HEAD /healthz",
    "default: GET /*", "default: POST /*",
]


def run_locust(port: int, out: pathlib.Path, seconds: int) -> dict[str, dict]:
    locust = shutil.which("locust", path=str(pathlib.Path(sys.executable).parent)) or "locust"
    done = subprocess.run(
        [locust, "--config", "bench/locust.conf", "--host", f"http://127.0.0.1:{port}",
         "-u", "20", "-r", "20", "-t", f"{seconds}s", "--csv", str(out / "run"),
         "--html", str(out / "run.html"), "--stop-timeout", "2"],
        cwd=ROOT, capture_output=True, timeout=seconds + 60)
    rows = {}
    with open(out / "run_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows[row["Name"]] = row
    assert (out / "run.html").stat().st_size > 1000, done.stderr.decode()[-2000:]
    return rows, done


def test_locustfile_runs_every_route_of_the_shipped_config(tmp_path):
    with CliProxy(tmp_path, shipped_config()) as proxy:
        rows, done = run_locust(proxy.port, tmp_path, seconds=5)
    failures = (tmp_path / "run_failures.csv").read_text()
    detail = f"{failures}\n{done.stderr.decode()[-3000:]}"
    for name in TASKS:
        assert name in rows, f"task {name!r} never ran\n{detail}"
        assert int(rows[name]["Request Count"]) > 0, detail
    unexpected = {n: r["Failure Count"] for n, r in rows.items() if r["Failure Count"] != "0"}
    assert not unexpected, f"unexpected failures {unexpected}\n{detail}"
    # 20 users on one address pass 600/min within seconds: the limiter's 429s were counted
    # as refusals of their own kind, not failures.
    assert int(rows["api: GET /api/hello (429 rate limited)"]["Request Count"]) > 0, detail
    assert done.returncode == 0, detail
