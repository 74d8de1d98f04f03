"""The `edgeproxy` command: `check` like `nginx -t`, `run` supervising workers."""

import os
import threading
import time

from tests.support.cli import CliProxy, check
from tests.support.client import Conn
from tests.support.origin import Origin, ok

GOOD = """
[server]
access_log = "off"
workers = {workers}
drain_timeout = "5s"

[[upstreams]]
name = "app"
servers = ["{url}"]

[[routes]]
name = "all"
upstream = "app"
"""


def test_check_accepts_a_valid_config(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(GOOD.format(workers=1, url="http://127.0.0.1:1"))
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert b"is valid" in result.stdout


def test_check_rejects_with_key_path_and_suggestion(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.format(workers=1, url="http://127.0.0.1:1").replace(
        'upstream = "app"', 'upstream = "ap"'))
    result = check(path)
    assert result.returncode == 1
    assert b'routes[0].upstream: unknown upstream "ap" (did you mean "app"?)' in result.stderr


def test_check_reports_a_missing_file(tmp_path):
    result = check(tmp_path / "missing.toml")
    assert result.returncode == 1
    assert b"cannot read" in result.stderr


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_two_workers_share_the_port_and_a_crashed_worker_is_restarted(tmp_path):
    with Origin() as origin, CliProxy(tmp_path, GOOD.format(workers=2, url=origin.url)) as p:
        assert _wait_for(lambda: len(_children(p.proc.pid)) == 2)
        workers = _children(p.proc.pid)
        for i in range(20):  # fresh connections spread over both workers by SO_REUSEPORT
            with Conn(p.port) as c:
                assert c.request("GET", f"/{i}").status == 200
        os.kill(workers[0], 9)
        assert _wait_for(lambda: len(_children(p.proc.pid)) == 2
                         and workers[0] not in _children(p.proc.pid))
        assert _wait_for(lambda: b"restarting" in p.read_stderr())
        for _ in range(10):
            with Conn(p.port) as c:
                assert c.request("GET", "/after").status == 200
        assert p.stop() == 0


def test_sigterm_drains_in_flight_requests_then_exits_zero(tmp_path):
    def slow(req, transport):
        origin.loop.call_later(0.8, transport.write, ok(b"finished"))

    origin = Origin(handler=lambda req: (b"", "keep"), on_head=slow)
    with origin, CliProxy(tmp_path, GOOD.format(workers=1, url=origin.url)) as p:
        result = {}

        def client():
            with Conn(p.port) as c:
                result["resp"] = c.request("GET", "/slow")

        t = threading.Thread(target=client)
        t.start()
        assert _wait_for(lambda: len(origin.requests) == 1 or origin.connections == 1, 5)
        time.sleep(0.1)
        p.proc.send_signal(15)
        t.join(10)
        assert result["resp"].status == 200 and result["resp"].body == b"finished"
        assert p.proc.wait(timeout=15) == 0


def test_shipped_config_serves_out_of_the_box_via_the_cli(tmp_path):
    """The README's first command: the shipped config.toml answers at once (demo origins)."""
    from pathlib import Path

    from tests.support.origin import closed_port

    text = (Path(__file__).parents[2] / "config.toml").read_text()
    text = text.replace('listen = "0.0.0.0:8080"', 'listen = "127.0.0.1:0"')
    # The demo origins' fixed ports become free ones, so the test stays hermetic.
    text = text.replace(":9001", f":{closed_port()}").replace(":9002", f":{closed_port()}")
    with CliProxy(tmp_path, text) as p, Conn(p.port) as c:
        r = c.request("GET", "/api/hello")
        assert r.status == 200
        body = r.json()
        assert body["demo"] is True and body["url"] == "/hello"
        assert r.header(b"x-served-by") == b"edgeproxy"
        assert c.request("GET", "/healthz").body == b"ok\n"
        assert p.stop() == 0


def test_a_busy_port_is_refused_not_shared(tmp_path):
    import socket as socketlib

    holder = socketlib.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        text = GOOD.format(workers=1, url="http://127.0.0.1:1").replace(
            "[server]", f'[server]\nlisten = "127.0.0.1:{port}"')
        proxy = CliProxy(tmp_path, text, start_timeout=5)
        try:
            proxy.__enter__()
            started = True
        except RuntimeError:
            started = False
        finally:
            proxy.__exit__(None, None, None)
        assert not started
        assert b"cannot listen" in proxy.stderr and b"in use" in proxy.stderr
    finally:
        holder.close()


# -- an unusable access-log path (issue 20) ------------------------------------------------------

def _with_access_log(text: str, path) -> str:
    return text.replace('access_log = "off"', f'access_log = "{path}"')


def test_check_refuses_an_access_log_it_cannot_open_naming_key_path_and_error(tmp_path):
    missing = tmp_path / "no-such-dir" / "access.log"
    config = tmp_path / "c.toml"
    fifo = tmp_path / "nobody-reads"
    os.mkfifo(fifo)
    for path, error in [(missing, b"No such file or directory"), (tmp_path, b"Is a directory"),
                        (fifo, b"No such device or address")]:
        config.write_text(_with_access_log(GOOD.format(workers=1, url="http://127.0.0.1:1"),
                                           path))
        result = check(config)
        assert result.returncode == 1
        assert (b'server.access_log: cannot open "%s" for appending: ' % str(path).encode()
                + error) in result.stderr


def test_run_refuses_an_access_log_it_cannot_open(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "no-such-dir" / "access.log"
    config = tmp_path / "c.toml"
    config.write_text(_with_access_log(GOOD.format(workers=2, url="http://127.0.0.1:1"),
                                       missing).replace("[server]", '[server]\nlisten = '
                                                                    '"127.0.0.1:0"'))
    result = subprocess.run([sys.executable, "-m", "engine", "run", "-c", str(config)],
                            capture_output=True, timeout=30)
    assert result.returncode == 1
    assert b'server.access_log: cannot open "%s"' % str(missing).encode() in result.stderr
    assert b"listening" not in result.stderr


def test_a_reload_to_an_unusable_access_log_keeps_the_running_config(tmp_path):
    log = tmp_path / "access.log"
    good = _with_access_log(GOOD.format(workers=1, url="http://127.0.0.1:1"), log) + """
[[routes]]
name = "health"
paths = ["/healthz"]
[routes.static]
body = "ok"
"""
    good = good.replace('upstream = "app"', 'upstream = "app"\npaths = ["/app/*"]')
    with CliProxy(tmp_path, good) as p:
        bad = _with_access_log(good.replace(f'"{log}"', '"off"'),
                               tmp_path / "gone" / "access.log").replace('body = "ok"',
                                                                         'body = "new"')
        p.write_config(bad)
        code, body = p.admin("POST", "/reload")
        assert code == 422
        assert body["error"]["errors"][0]["path"] == "server.access_log"
        with Conn(p.port) as c:
            assert c.request("GET", "/healthz").body == b"ok"
        assert _wait_for(lambda: b'"path":"/healthz"' in log.read_bytes())
        assert not (tmp_path / "gone").exists()


# -- workers that fail at startup (issue 20) -------------------------------------------------------

def test_a_worker_failing_at_startup_is_restarted_with_exponential_backoff(tmp_path):
    """The access log's folder goes away while the proxy runs: each new worker dies opening
    it, and is retried ever more slowly (not three times a second) until the folder is back."""
    import re
    import shutil

    logs = tmp_path / "logs"
    logs.mkdir()
    text = _with_access_log(GOOD.format(workers=1, url="http://127.0.0.1:1"),
                            logs / "access.log") + '\n[[routes]]\nname = "h"\npaths = ["/h"]\n' \
                                                   '[routes.static]\nbody = "ok"\n'
    text = text.replace('upstream = "app"', 'upstream = "app"\npaths = ["/app/*"]')
    with CliProxy(tmp_path, text) as p:
        assert _wait_for(lambda: len(_children(p.proc.pid)) == 1)
        shutil.rmtree(logs)
        os.kill(_children(p.proc.pid)[0], 9)
        assert p.wait_stderr(b"restarting in 0.4 s", 10)
        failures = re.findall(rb"failed during startup \(status 1\): FileNotFoundError: "
                              rb"\[Errno 2\] No such file or directory: '([^']+)'; "
                              rb"restarting in ([\d.]+) s", p.read_stderr())
        assert [delay for _, delay in failures[:3]] == [b"0.1", b"0.2", b"0.4"]
        assert {path for path, _ in failures} == {str(logs / "access.log").encode()}
        assert p.proc.poll() is None  # the supervisor keeps trying
        status = p.admin("GET", "/status")[1]
        assert str(logs / "access.log") in status["last_worker_error"]["message"]
        logs.mkdir()
        with Conn(p.port, timeout=10) as c:  # queued on the supervisor's socket meanwhile
            assert c.request("GET", "/h").body == b"ok"
        assert p.stop() == 0


def test_when_every_worker_fails_at_startup_run_exits_1_with_the_last_error(tmp_path):
    """A broken install (uvloop, which only workers import, fails to import): nothing could
    ever serve, so the supervisor must not log "listening" over a crash loop."""
    import subprocess
    import sys

    broken = tmp_path / "broken" / "uvloop"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("uvloop is broken on this host")\n')
    config = tmp_path / "c.toml"
    config.write_text(GOOD.format(workers=2, url="http://127.0.0.1:1").replace(
        "[server]", '[server]\nlisten = "127.0.0.1:0"') + '\n[admin]\nlisten = "127.0.0.1:0"\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "broken")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "engine", "run", "-c", str(config)],
                            capture_output=True, timeout=30, env=env)
    assert result.returncode == 1, result.stderr
    assert (b"every worker failed at startup (3 tries each); last error: ImportError: "
            b"uvloop is broken on this host") in result.stderr
    assert b"listening" not in result.stderr
    assert result.stderr.count(b"failed during startup") == 5  # the 6th ends it
    assert time.monotonic() - started < 15


# -- restarts on the same port (issue 11) ----------------------------------------------------------

def _time_wait_on(port: int) -> int:
    """Connections in TIME_WAIT (state 06) whose local port is ``port``."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "06" and int(local.split(":")[1], 16) == port:
                count += 1
    return count


def _on_port(port: int) -> str:
    return GOOD.format(workers=1, url="http://127.0.0.1:1").replace(
        "[server]", f'[server]\nlisten = "127.0.0.1:{port}"') + \
        '\n[[routes]]\nname = "h"\npaths = ["/h"]\n[routes.static]\nbody = "ok"\n'


def test_a_restart_on_the_same_port_works_at_once_despite_time_wait(tmp_path):
    """The proxy closed connections itself (Connection: close), so the stopped proxy's port
    has TIME_WAIT entries for a minute; starting again must not wait that out (nginx sets
    SO_REUSEADDR on its listeners for this)."""
    text = GOOD.format(workers=1, url="http://127.0.0.1:1") + \
        '\n[[routes]]\nname = "h"\npaths = ["/h"]\n[routes.static]\nbody = "ok"\n'
    (tmp_path / "first").mkdir()
    with CliProxy(tmp_path / "first", text) as p:
        port = p.port
        for _ in range(3):
            with Conn(port) as c:
                c.send(b"GET /h HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert c.response().status == 200
                assert c.closed(2.0)  # the proxy closed first: TIME_WAIT is on its side
        assert p.stop() == 0
    assert _time_wait_on(port) > 0
    (tmp_path / "again").mkdir()
    with CliProxy(tmp_path / "again", _on_port(port), start_timeout=5) as p, Conn(port) as c:
        assert p.port == port
        assert c.request("GET", "/h").body == b"ok"


def test_a_second_live_instance_on_the_same_port_is_refused(tmp_path):
    (tmp_path / "first").mkdir()
    with CliProxy(tmp_path / "first", GOOD.format(workers=2, url="http://127.0.0.1:1") +
                  '\n[[routes]]\nname = "h"\npaths = ["/h"]\n[routes.static]\nbody = "ok"\n'
                  ) as first:
        (tmp_path / "second").mkdir()
        second = CliProxy(tmp_path / "second", _on_port(first.port), start_timeout=5)
        try:
            second.__enter__()
            started = True
        except RuntimeError:
            started = False
        finally:
            second.__exit__(None, None, None)
        assert not started
        assert second.returncode == 1
        assert b"cannot listen on 127.0.0.1:%d: Address already in use" % first.port \
            in second.stderr
        for _ in range(6):  # the first still has the port to itself
            with Conn(first.port) as c:
                assert c.request("GET", "/h").body == b"ok"
