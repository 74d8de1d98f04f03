"""Zero-downtime binary upgrade (SIGUSR2, engine/control/upgrade.py): the new supervisor takes
the old one's listening sockets, serves, and the old one drains and exits, while clients keep
sending: no request fails, no connection is refused."""

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

from tests.support.client import Conn
from tests.support.e2e import gone
from tests.support.origin import Origin

CONFIG = """
[server]
listen = "127.0.0.1:0"
workers = 2
access_log = "off"
drain_timeout = "5s"

[[upstreams]]
name = "app"
servers = ["{url}"]

[[routes]]
name = "app"
paths = ["/*"]
upstream = "app"

[admin]
listen = "127.0.0.1:0"
"""


class Stderr:
    """The supervisors' shared stderr (the new one inherits the old one's)."""

    def __init__(self, proc):
        self.proc = proc
        self.text = b""

    def wait(self, pattern: bytes, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text)
            if m:
                return m
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                self.text += chunk
        raise AssertionError(f"no {pattern!r} in:\n{self.text.decode(errors='replace')}")


def client(port: int, stop: threading.Event, results: dict, fresh: bool) -> None:
    """Requests back to back: on keep-alive connections (reconnecting when the proxy says
    Connection: close, as a draining worker does), or a new connection each."""
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = Conn(port)
            r = conn.request("GET", "/x")
            if r.status == 200:
                results["ok"] += 1
            else:
                results["failed"].append(f"status {r.status}")
            if fresh or r.header(b"connection") == b"close":
                conn.sock.close()
                conn = None
        except (OSError, ConnectionError) as exc:
            results["failed"].append(repr(exc))
            if conn is not None:
                conn.sock.close()
            conn = None
    if conn is not None:
        conn.sock.close()


def start_supervisor(tmp_path, config):
    """``edgeproxy run`` of ``config`` in its own process group, and its stderr."""
    old = subprocess.Popen([sys.executable, "-m", "engine", "run", "-c", str(config)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    return old, Stderr(old)


def kill_supervisor(old) -> None:
    """The old supervisor's group killed (workers of either generation, if any is left)."""
    try:
        os.killpg(old.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    old.wait(5)
    old.stderr.close()


def test_sigusr2_hands_the_sockets_over_with_no_failed_request(tmp_path):
    config = tmp_path / "edgeproxy.toml"
    new_pid = None
    with Origin() as origin:
        config.write_text(CONFIG.replace("{url}", origin.url))
        old, err = start_supervisor(tmp_path, config)
        try:
            port = int(err.wait(rb"listening on 127\.0\.0\.1:(\d+)", 20).group(1))
            admin = int(err.wait(rb"admin API on 127\.0\.0\.1:(\d+)", 5).group(1))
            time.sleep(0.3)
            stop = threading.Event()
            results = {"ok": 0, "failed": []}
            threads = [threading.Thread(target=client, args=(port, stop, results, fresh))
                       for fresh in (False, False, True, True)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            before = results["ok"]
            os.kill(old.pid, signal.SIGUSR2)
            new_pid = int(err.wait(rb"upgrade: started pid (\d+)", 10).group(1))
            err.wait(rb"upgrade: serving; stopping the old supervisor %d" % old.pid, 30)
            assert old.wait(timeout=20) == 0  # the old one drained and exited
            time.sleep(0.5)  # the new one alone, still under load
            stop.set()
            for t in threads:
                t.join(10)
            assert not results["failed"], results["failed"][:10]
            assert results["ok"] > before > 0
            # The new supervisor serves on the same port, with the admin API it took over.
            with Conn(port) as c:
                assert c.request("GET", "/after").status == 200
            with Conn(admin) as c:
                status = c.request("GET", "/status").json()
            assert status["pid"] == new_pid and status["listen"] == f"127.0.0.1:{port}"
            os.kill(new_pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while not gone(new_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gone(new_pid)
            new_pid = None
        finally:
            for pid in (old.pid, new_pid):
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            kill_supervisor(old)


def test_a_new_version_that_cannot_start_leaves_the_old_one_serving(tmp_path):
    config = tmp_path / "edgeproxy.toml"
    with Origin() as origin:
        config.write_text(CONFIG.replace("{url}", origin.url))
        old, err = start_supervisor(tmp_path, config)
        try:
            port = int(err.wait(rb"listening on 127\.0\.0\.1:(\d+)", 20).group(1))
            config.write_text(CONFIG.replace("{url}", "not a url"))  # the new one refuses it
            os.kill(old.pid, signal.SIGUSR2)
            err.wait(rb"upgrade FAILED: the new process \d+ exited \(status 1\)", 20)
            with Conn(port) as c:
                assert c.request("GET", "/still").status == 200
            assert old.poll() is None
            old.send_signal(signal.SIGTERM)
            assert old.wait(timeout=20) == 0
        finally:
            kill_supervisor(old)
