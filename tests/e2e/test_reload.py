"""Hot reload through the real CLI: SIGHUP, a changed file, POST /reload; bad configs change
nothing; pools carry over; listener changes start new workers and drain the old ones."""

import signal
import socket
import threading
import time

from tests.support.e2e import wait_until
from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.origin import Origin, closed_port, ok


def static_config(body: str, *, workers: int = 2, watch: bool = False, extra: str = "") -> str:
    return f"""
[server]
access_log = "off"
workers = {workers}
watch_config = {"true" if watch else "false"}
drain_timeout = "5s"
{extra}

[[routes]]
name = "s"
[routes.static]
body = "{body}"
"""


def proxy_config(origin_url: str, *, workers: int = 1, server: str = "",
                 routes: str = "") -> str:
    return f"""
[server]
access_log = "off"
workers = {workers}
watch_config = false
drain_timeout = "5s"
{server}

[[upstreams]]
name = "app"
servers = ["{origin_url}"]

{routes}

[[routes]]
name = "all"
paths = ["/*"]
upstream = "app"
"""


def get(port: int, path: str = "/") -> bytes:
    with Conn(port) as c:
        return c.request("GET", path).body


def all_workers_at(p: CliProxy, generation: int) -> bool:
    _, status = p.admin("GET", "/status")
    serving = [w for w in status["workers"] if w["state"] == "serving"]
    return bool(serving) and all(w["generation"] == generation for w in serving)


def test_sighup_reloads_every_worker(tmp_path):
    with CliProxy(tmp_path, static_config("one")) as p:
        assert get(p.port) == b"one"
        p.write_config(static_config("two"))
        p.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: all_workers_at(p, 2))
        # fresh connections spread over both workers: every one answers from the new config
        assert {get(p.port) for _ in range(20)} == {b"two"}
        _, status = p.admin("GET", "/status")
        assert status["last_reload"]["result"] == "ok"
        assert status["last_reload"]["trigger"] == "SIGHUP"
        assert p.stop() == 0


def test_a_changed_file_is_picked_up_by_the_watch(tmp_path):
    with CliProxy(tmp_path, static_config("one", watch=True)) as p:
        assert get(p.port) == b"one"
        p.write_config(static_config("two", watch=True))
        assert wait_until(lambda: all_workers_at(p, 2))
        assert {get(p.port) for _ in range(10)} == {b"two"}
        _, status = p.admin("GET", "/status")
        assert status["last_reload"]["trigger"] == "file change"
        # A touch with the same bytes is not a reload.
        p.path.touch()
        time.sleep(2.0)
        _, status = p.admin("GET", "/status")
        assert status["generation"] == 2 and status["reloads"]["unchanged"] == 0


def test_post_reload_applies_before_it_answers(tmp_path):
    with CliProxy(tmp_path, static_config("one")) as p:
        p.write_config(static_config("two"))
        code, result = p.admin("POST", "/reload")
        assert code == 200, result
        assert result["result"] == "ok" and result["generation"] == 2
        assert result["workers_pending"] == []
        assert {get(p.port) for _ in range(20)} == {b"two"}  # no waiting: already applied


def test_an_unchanged_config_is_not_swapped(tmp_path):
    with CliProxy(tmp_path, static_config("one")) as p:
        code, result = p.admin("POST", "/reload")
        assert (code, result["result"], result["generation"]) == (200, "unchanged", 1)
        assert all_workers_at(p, 1)


def test_a_broken_config_changes_nothing_and_is_reported(tmp_path):
    origin_free = "http://127.0.0.1:1"
    good = proxy_config(origin_free, workers=2, routes="""
[[routes]]
name = "hello"
paths = ["/hello"]
[routes.static]
body = "hi"
""")
    with CliProxy(tmp_path, good) as p:
        p.write_config(good.replace('upstream = "app"', 'upstream = "ap"')
                       .replace('body = "hi"', 'body = "changed"'))
        code, result = p.admin("POST", "/reload")
        assert code == 422
        assert result["error"]["code"] == "invalid_config"
        assert {"path": "routes[1].upstream",
                "message": 'unknown upstream "ap" (did you mean "app"?)'} in result["error"]["errors"]
        # Still generation 1 everywhere.
        assert {get(p.port, "/hello") for _ in range(10)} == {b"hi"}
        _, status = p.admin("GET", "/status")
        assert status["generation"] == 1
        assert status["last_reload"]["result"] == "failed"
        assert status["last_reload"]["errors"][0]["path"] == "routes[1].upstream"
        assert all(w["generation"] == 1 for w in status["workers"])
        _, metrics = p.admin("GET", "/metrics")
        assert 'edgeproxy_config_reloads_total{result="failed"} 1' in metrics
        assert "edgeproxy_config_last_reload_successful 0" in metrics
        assert b"routes[1].upstream: unknown upstream" in p.read_stderr()

        # Invalid TOML by SIGHUP: same story.
        p.write_config(good + "\n[[routes]\n")
        p.proc.send_signal(signal.SIGHUP)
        assert p.wait_stderr(b"invalid TOML")
        assert get(p.port, "/hello") == b"hi"

        # Fixed: applies, and the success gauge goes back to 1.
        p.write_config(good.replace('body = "hi"', 'body = "fixed"'))
        code, result = p.admin("POST", "/reload")
        assert code == 200 and result["generation"] == 2
        assert get(p.port, "/hello") == b"fixed"
        _, metrics = p.admin("GET", "/metrics")
        assert "edgeproxy_config_last_reload_successful 1" in metrics
        assert p.stop() == 0


def test_keepalive_pool_survives_an_unrelated_reload(tmp_path):
    with Origin() as origin, CliProxy(tmp_path, proxy_config(origin.url)) as p:
        assert get(p.port, "/a") == b"/a"
        assert origin.connections == 1
        p.write_config(proxy_config(origin.url, routes="""
[[routes]]
name = "new"
paths = ["/new"]
[routes.static]
body = "new route"
"""))
        code, result = p.admin("POST", "/reload")
        assert code == 200 and result["result"] == "ok"
        assert get(p.port, "/new") == b"new route"
        assert get(p.port, "/b") == b"/b"
        assert origin.connections == 1  # the pooled upstream connection was reused


def test_a_changed_upstream_gets_a_fresh_pool(tmp_path):
    with Origin() as origin, CliProxy(tmp_path, proxy_config(origin.url)) as p:
        assert get(p.port, "/a") == b"/a"
        p.write_config(proxy_config(origin.url).replace(
            f'servers = ["{origin.url}"]', f'servers = ["{origin.url}"]\nkeepalive = 8'))
        assert p.admin("POST", "/reload")[0] == 200
        assert get(p.port, "/b") == b"/b"
        assert origin.connections == 2
        # the old pool is released: its idle connection is closed
        assert wait_until(lambda: len(origin.open) == 1, 5)


def test_a_request_in_flight_finishes_on_its_snapshot(tmp_path):
    def slow(req, transport):
        origin.loop.call_later(0.8, transport.write, ok(b"slow done"))

    origin = Origin(handler=lambda req: (b"", "keep"), on_head=slow)
    with origin, CliProxy(tmp_path, proxy_config(origin.url)) as p:
        result = {}

        def client():
            with Conn(p.port) as c:
                result["resp"] = c.request("GET", "/slow")

        t = threading.Thread(target=client)
        t.start()
        assert wait_until(lambda: origin.connections == 1, 5)
        # The new config drops the route the request is using.
        p.write_config(static_config("gone", workers=1))
        assert p.admin("POST", "/reload")[1]["result"] == "ok"
        assert get(p.port, "/slow") == b"gone"
        t.join(10)
        assert result["resp"].status == 200 and result["resp"].body == b"slow done"


def test_listener_change_starts_new_workers_and_drains_the_old(tmp_path):
    def slow(req, transport):
        origin.loop.call_later(1.0, transport.write, ok(b"old worker finished"))

    origin = Origin(handler=lambda req: (b"", "keep"), on_head=slow)
    new_port = closed_port()
    with origin, CliProxy(tmp_path, proxy_config(origin.url, workers=1)) as p:
        old_port = p.port
        _, status = p.admin("GET", "/status")
        old_pids = [w["pid"] for w in status["workers"]]
        result = {}

        def client():
            with Conn(old_port) as c:
                result["resp"] = c.request("GET", "/slow")

        t = threading.Thread(target=client)
        t.start()
        assert wait_until(lambda: origin.connections == 1, 5)
        p.write_config(proxy_config(origin.url, workers=2,
                                    server=f'listen = "127.0.0.1:{new_port}"'))
        code, reloaded = p.admin("POST", "/reload")
        assert code == 200 and reloaded["workers_pending"] == [], reloaded
        _, status = p.admin("GET", "/status")
        assert status["listen"] == f"127.0.0.1:{new_port}"
        serving = [w for w in status["workers"] if w["state"] == "serving"]
        assert len(serving) == 2 and not {w["pid"] for w in serving} & set(old_pids)
        t.join(10)
        assert result["resp"].body == b"old worker finished"  # drained, not cut
        assert wait_until(lambda: all(w["state"] == "serving"
                                    for w in p.admin("GET", "/status")[1]["workers"]))
        with socket.socket() as s:  # the old listener is gone with its workers
            assert s.connect_ex(("127.0.0.1", old_port)) != 0
        origin.on_head = None
        origin.handler = lambda req: ok(b"new")
        assert get(new_port) == b"new"
        assert p.stop() == 0


def test_worker_count_changes_refuse_no_connection(tmp_path):
    failures = []
    stop = threading.Event()

    with CliProxy(tmp_path, static_config("one", workers=3)) as p:
        def client():
            while not stop.is_set():
                try:
                    with Conn(p.port) as c:
                        r = c.request("GET", "/")
                        if r.status != 200:
                            failures.append(r.status)
                except OSError as exc:
                    failures.append(repr(exc))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for workers in (1, 2, 3):  # fewer, then more: the old workers drain each time
                p.write_config(static_config(f"{workers} workers", workers=workers))
                code, result = p.admin("POST", "/reload")
                assert code == 200 and result["workers_pending"] == []
                assert wait_until(lambda n=workers: [w["state"] for w in p.admin(
                    "GET", "/status")[1]["workers"]] == ["serving"] * n)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert get(p.port) == b"3 workers"
        assert failures == []  # the sockets outlive the old worker: nothing refused or cut
