"""The one-file executable (packaging/edgeproxy.spec): built with PyInstaller, it serves a
request through a real origin with no Python beside it, and its bootloader passes the
operator's signals on: SIGHUP reloads, SIGUSR1 reopens the access log, SIGUSR2 upgrades to the
executable on disk (a new bootloader and supervisor on the same sockets), SIGTERM drains.

The build takes 30-40 s and makes a 28 MB file, so the suite skips it unless
EDGEPROXY_BUILD_ONEFILE=1; .ci/run sets that and runs this file after the suite.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.e2e import gone, wait_for
from tests.support.origin import Origin

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("EDGEPROXY_BUILD_ONEFILE") != "1",
    reason="builds the one-file executable (30-40 s): set EDGEPROXY_BUILD_ONEFILE=1 "
           "(.ci/run does, after the suite)")


@pytest.fixture(scope="module")
def executable(tmp_path_factory):
    pytest.importorskip("PyInstaller", reason="pip install '.[onefile]'")
    out = tmp_path_factory.mktemp("onefile")
    done = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--distpath", str(out / "dist"), "--workpath", str(out / "work"),
         str(ROOT / "packaging" / "edgeproxy.spec")],
        capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return out / "dist" / "edgeproxy"


def bare_env(tmp_path) -> dict:
    """No Python to be found: an empty PATH folder, no PYTHON* variables, no venv."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    return {"PATH": str(empty), "HOME": str(tmp_path), "LANG": "C.UTF-8"}


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(x) for x in f.read().split()]
    return found


def test_onefile_serves_reloads_and_stops_with_no_python_beside_it(executable, tmp_path):
    env = bare_env(tmp_path)
    config = """
[server]
listen = "127.0.0.1:0"
access_log = "{log}"
watch_config = false   # the reload below is the signal's, not the file watch's

[[upstreams]]
name = "app"
servers = ["{url}"]

[[routes]]
name = "app"
paths = ["/app/*"]
upstream = "app"
"""
    checked = subprocess.run([str(executable), "--version"], env=env, capture_output=True,
                             timeout=60)
    assert checked.stdout.startswith(b"edgeproxy "), checked.stderr
    with Origin() as origin:
        log = tmp_path / "access.log"
        text = config.replace("{url}", origin.url).replace("{log}", str(log))
        with CliProxy(tmp_path, text, command=[str(executable)], env=env,
                      start_timeout=60) as proxy:
            with Conn(proxy.port) as c:
                r = c.request("GET", "/app/hello")
                assert r.status == 200 and r.body == b"/app/hello"
                assert len(r.header(b"x-request-id")) == 32
            # The supervisor is the bootloader's child, running the bundled interpreter:
            # libpython is mapped from the bundle's folder, nothing from the system's Python.
            (supervisor,) = children(proxy.proc.pid)
            maps = pathlib.Path(f"/proc/{supervisor}/maps").read_text()
            libpython = {line.split()[-1] for line in maps.splitlines() if "libpython3" in line}
            assert libpython and all("/_MEI" in path for path in libpython), libpython
            assert sys.prefix not in maps and "/usr/lib/python3" not in maps
            # SIGHUP to the bootloader (systemd's $MAINPID) reaches the supervisor: a reload.
            proxy.write_config(text.replace('name = "app"\npaths', 'name = "app2"\npaths'))
            os.kill(proxy.proc.pid, signal.SIGHUP)
            assert proxy.wait_stderr(b"generation 2", timeout=15), proxy.read_stderr()
            with Conn(proxy.port) as c:
                assert c.request("GET", "/app/x").status == 200
            # SIGUSR1: the access log reopened by name after a rotation.
            wait_for(lambda: log.exists() and log.read_bytes().count(b"\n") >= 2, 10, "2 lines")
            os.rename(log, tmp_path / "access.log.1")
            os.kill(proxy.proc.pid, signal.SIGUSR1)
            wait_for(log.exists, 10, "the reopened log")
            with Conn(proxy.port) as c:
                assert c.request("GET", "/app/rotated").status == 200
            wait_for(lambda: b"/app/rotated" in log.read_bytes(), 10, "a line in the new file")
            # SIGUSR2: the executable on disk starts again with the sockets; the old
            # bootloader exits once its supervisor drained.
            os.kill(proxy.proc.pid, signal.SIGUSR2)
            assert proxy.wait_stderr(b"upgrade: serving; stopping the old supervisor",
                                     timeout=60), proxy.read_stderr()
            assert proxy.proc.wait(timeout=30) == 0
            new = int(re.search(rb"upgrade: started pid (\d+)", proxy.read_stderr()).group(1))
            with Conn(proxy.port) as c:
                assert c.request("GET", "/app/upgraded").status == 200
            os.kill(new, signal.SIGTERM)  # the new bootloader, passed on to its supervisor
            wait_for(lambda: gone(new), 30, "the new generation to stop")
