"""The worker: JSON access log lines with every field, written to the configured place."""

import time

import orjson

from tests.support.client import Conn
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy


def test_access_log_line_per_request(tmp_path):
    log = tmp_path / "access.log"
    config = f"""
[server]
access_log = "{log}"

[[upstreams]]
name = "app"
servers = ["http://127.0.0.1:{{port}}"]

[[routes]]
name = "app-route"
paths = ["/app/*"]
upstream = "app"
"""
    with Origin() as origin:
        with InProcessProxy(config.replace("{port}", str(origin.port))) as proxy:
            with Conn(proxy.port) as c:
                r1 = c.request("POST", "/app/x", body=b"12345")
                r2 = c.request("GET", "/missing")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and log.read_bytes().count(b"\n") < 2:
                time.sleep(0.05)
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == r1.header(b"x-request-id").decode()
    assert (first["method"], first["path"], first["status"]) == ("POST", "/app/x", 200)
    assert first["route"] == "app-route" and first["upstream"] == origin.url
    assert first["client_ip"] == "127.0.0.1"
    assert first["bytes_in"] == 5 and first["bytes_out"] == len(r1.body)
    assert first["duration_ms"] >= first["upstream_ms"] >= 0
    assert second["status"] == 404 and second["route"] is None
    assert second["request_id"] == r2.header(b"x-request-id").decode()


def test_access_log_off_writes_nothing(tmp_path, capfd):
    config = """
[server]
access_log = "off"
[[routes]]
name = "s"
[routes.static]
body = "x"
"""
    with InProcessProxy(config) as proxy, Conn(proxy.port) as c:
        assert c.request("GET", "/").status == 200
    assert b"request_id" not in capfd.readouterr().out.encode()


def test_counters_by_route_method_and_status_class():
    from engine.http.stats import METHODS, STATUSES

    n_status = len(STATUSES)
    config = """
[server]
access_log = "off"

[[upstreams]]
name = "app"
servers = ["http://127.0.0.1:{port}"]

[[routes]]
name = "app-route"
paths = ["/app/*"]
upstream = "app"
"""
    with Origin() as origin:
        with InProcessProxy(config.replace("{port}", str(origin.port))) as proxy:
            with Conn(proxy.port) as c:
                c.request("POST", "/app/x", body=b"12345")
                c.request("GET", "/app/y")
                c.request("GET", "/missing")
            worker = proxy.worker
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and worker.requests < 3:
                time.sleep(0.01)
            stats = proxy.call(lambda: {k: v.to_dict() for k, v in worker.route_stats.items()})

    def count(st, method, status):
        return st["requests"][METHODS.index(method) * n_status + STATUSES.index(status)]

    app = stats["app-route"]
    assert count(app, "POST", "2xx") == 1 and count(app, "GET", "2xx") == 1
    assert sum(app["requests"]) == 2
    assert app["bytes_in"] == 5 and app["bytes_out"] == len(b"/app/y") + len(b"12345")
    # access_log "off" still times requests: the latency histograms need it
    assert sum(app["duration"]) == 2 and sum(app["upstream"]) == 2
    assert app["duration_sum"] >= app["upstream_sum"] > 0
    assert count(stats[None], "GET", "4xx") == 1


def test_worker_writes_a_snapshot_of_its_counters(tmp_path):
    from engine.control.metrics import read_snapshot

    config = """
[server]
access_log = "off"
[[routes]]
name = "s"
[routes.static]
body = "x"
"""
    with InProcessProxy(config) as proxy:
        worker = proxy.worker
        worker.stats_path = str(tmp_path / "w.json")
        with Conn(proxy.port) as c:
            assert c.request("GET", "/").status == 200
            proxy.call(worker.write_stats)  # the keep-alive connection is still open
            snap = read_snapshot(worker.stats_path)
    assert snap["connections"] == 1 and snap["generation"] == 0
    assert sum(snap["routes"]["s"]["requests"]) == 1


def test_swap_reopens_a_changed_access_log(tmp_path):
    log = tmp_path / "access.log"
    config = """
[server]
access_log = "{dest}"
[[routes]]
name = "s"
[routes.static]
body = "x"
"""
    with InProcessProxy(config.format(dest="off")) as proxy:
        with Conn(proxy.port) as c:
            c.request("GET", "/before")
        proxy.swap(config.format(dest=log))
        with Conn(proxy.port) as c:
            c.request("GET", "/after")
        proxy.call(proxy.worker.access_log.flush)
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [line["path"] for line in lines] == ["/after"]


STATIC = """
[server]
access_log = "off"
[[routes]]
name = "s"
[routes.static]
body = "x"
"""


def test_drain_still_answers_a_request_sent_on_an_idle_connection():
    import asyncio

    with InProcessProxy(STATIC) as proxy, Conn(proxy.port) as c:
        assert c.request("GET", "/").status == 200  # the connection is idle now
        drained = asyncio.run_coroutine_threadsafe(proxy.worker.drain(3.0), proxy.loop)
        time.sleep(0.2)
        r = c.request("GET", "/again")  # the keep-alive close race: must not be a reset
        assert r.status == 200 and r.header(b"connection") == b"close"
        assert c.closed(2.0)
        drained.result(5)


def test_drain_answers_a_request_that_came_while_the_worker_was_stalled():
    # The worker stalls past DRAIN_IDLE while handling I/O (as a host under load may stall
    # it anywhere): on waking, its due timers run before its next read, so the connection
    # still looks idle; the request that came meanwhile must be answered, not reset.
    import asyncio
    import socket
    import threading

    from engine.control.worker import DRAIN_IDLE

    stalled = threading.Event()
    wake, stall = socket.socketpair()

    def stall_loop():
        proxy.loop.remove_reader(stall.fileno())
        stalled.set()
        time.sleep(DRAIN_IDLE + 0.3)

    with InProcessProxy(STATIC) as proxy, Conn(proxy.port) as c, wake, stall:
        assert c.request("GET", "/").status == 200
        drained = asyncio.run_coroutine_threadsafe(proxy.worker.drain(10.0), proxy.loop)
        time.sleep(0.2)  # the drain has seen the connection idle
        proxy.call(proxy.loop.add_reader, stall.fileno(), stall_loop)
        wake.send(b"!")  # an I/O callback of the worker's loop stalls it
        assert stalled.wait(5)
        c.send(b"GET /again HTTP/1.1\r\nHost: test\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.header(b"connection") == b"close"
        assert c.closed(2.0)
        drained.result(5)


def test_drain_closes_a_connection_that_stays_idle_after_a_grace():
    import asyncio

    from engine.control.worker import DRAIN_IDLE

    with InProcessProxy(STATIC) as proxy, Conn(proxy.port) as c:
        assert c.request("GET", "/").status == 200
        start = time.monotonic()
        drained = asyncio.run_coroutine_threadsafe(proxy.worker.drain(10.0), proxy.loop)
        assert c.closed(5.0)
        assert DRAIN_IDLE <= time.monotonic() - start < DRAIN_IDLE + 1.5  # not the deadline
        drained.result(5)


def test_drain_answers_a_connection_accepted_in_the_turn_it_began():
    # A connection the worker accepts in the loop turn that starts the drain is made
    # (connection_made) by a callback queued after the drain's first step: the drain must not
    # find no connection, end at once, and let the process exit with that request unanswered
    # (seen once in a few full runs of the reload test in tests/e2e/test_listeners.py).
    import asyncio
    import socket
    import threading

    sent = threading.Event()
    with InProcessProxy(STATIC) as proxy, socket.socket() as client:
        client.settimeout(5)
        seen = {}

        def begin():
            # (run on the loop: the connection waits in the backlog until this turn's poll
            # accepts it, after the drain's first step was queued)
            client.connect(("127.0.0.1", proxy.port))
            client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            asyncio.ensure_future(drain_then_count())
            sent.set()

        async def drain_then_count():
            # (read as the drain ends: in the worker process, the exit comes next)
            await proxy.worker.drain(5.0)
            seen["answered"] = proxy.worker.requests

        proxy.loop.call_soon_threadsafe(begin)
        assert sent.wait(5)
        answer = b""
        while b"\r\n\r\nx" not in answer:
            chunk = client.recv(4096)
            assert chunk, f"closed before the answer: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        deadline = time.monotonic() + 5
        while "answered" not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == {"answered": 1}  # the drain ended after that request, not before
