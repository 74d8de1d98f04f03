"""Zero-failure hot reload: keep-alive clients never see an error or a reset while 20 reloads
alternate between two configs that change routes, upstream weights and limits.

The longer version with wrk is bench/reload_under_load.py.
"""

import threading
import time

from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.origin import Origin, ok

RELOADS = 20
CLIENTS = 2


def config(a: str, b: str, flavour: int, workers: int = 2) -> str:
    """Two configs: flavour 0 and 1 differ in routes, upstream weights and body limits."""
    weights = (1, 1) if flavour == 0 else (3, 1)
    extra_route = "v1" if flavour == 0 else "v2"
    return f"""
[server]
access_log = "off"
workers = {workers}
watch_config = false
keepalive_requests = 1000000  # so any reconnect would be the reload's doing
max_body_size = "{'1m' if flavour == 0 else '2m'}"

[[upstreams]]
name = "app"
servers = [{{ url = "{a}", weight = {weights[0]} }}, {{ url = "{b}", weight = {weights[1]} }}]
keepalive = 16
keepalive_requests = 1000000

[[routes]]
name = "api"
paths = ["/api/*"]
upstream = "app"
max_body_size = "{'64k' if flavour == 0 else '128k'}"

[[routes]]
name = "{extra_route}"
paths = ["/{extra_route}/*"]
[routes.static]
body = "{extra_route}"
"""


class Load:
    """Keep-alive clients in threads: count requests, failures and reconnects. A response
    with Connection: close is a graceful end (a draining worker): the client reconnects."""

    def __init__(self, port: int, clients: int = CLIENTS):
        self.port = port
        self.stop = threading.Event()
        self.counts = [0] * clients
        self.reconnects = [0] * clients
        self.graceful = [0] * clients
        self.failures: list = []
        self.threads = [threading.Thread(target=self.client, args=(n,)) for n in range(clients)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def client(self, n: int) -> None:
        conn = Conn(self.port)
        try:
            while not self.stop.is_set():
                post = self.counts[n] % 5 == 0
                try:
                    r = conn.request("POST" if post else "GET", f"/api/{n}/{self.counts[n]}",
                                     body=b"x" * 100 if post else b"")
                except (OSError, ConnectionError) as exc:  # a reset or a cut connection
                    self.failures.append(repr(exc))
                    conn.sock.close()
                    conn = Conn(self.port)
                    self.reconnects[n] += 1
                    continue
                self.counts[n] += 1
                if r.status != 200 or not r.complete:
                    self.failures.append((r.status, r.body[:200]))
                if r.header(b"connection") == b"close":
                    conn.sock.close()
                    conn = Conn(self.port)
                    self.graceful[n] += 1
        finally:
            conn.sock.close()


def test_reloads_under_keepalive_load_fail_no_request(tmp_path):
    with Origin(handler=lambda req: ok(b"a")) as a, Origin(handler=lambda req: ok(b"b")) as b:
        with CliProxy(tmp_path, config(a.url, b.url, 0)) as p, Load(p.port) as load:
            latencies = []
            results = []
            time.sleep(0.2)
            for i in range(RELOADS):
                flavour = (i + 1) % 2
                p.write_config(config(a.url, b.url, flavour))
                start = time.monotonic()
                code, result = p.admin("POST", "/reload")
                latencies.append(time.monotonic() - start)
                results.append((code, result.get("result"), result.get("workers_pending")))
                # the new routes serve at once
                with Conn(p.port) as c:
                    r = c.request("GET", f"/v{flavour + 1}/x")
                    assert r.status == 200 and r.body == f"v{flavour + 1}".encode()
                time.sleep(0.1)
            load.__exit__()
            _, status = p.admin("GET", "/status")
            assert p.stop() == 0

    print(f"\nreload under load: {sum(load.counts)} requests, {len(load.failures)} failures, "
          f"{sum(load.reconnects) + sum(load.graceful)} reconnects, {RELOADS} reloads, "
          f"reload+apply latency median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms,"
          f" max {max(latencies) * 1000:.1f} ms")
    assert load.failures == []
    assert load.reconnects == [0] * CLIENTS and load.graceful == [0] * CLIENTS
    assert results == [(200, "ok", [])] * RELOADS
    assert status["generation"] == RELOADS + 1
    assert status["worker_restarts"] == 0
    assert all(n > 50 for n in load.counts), load.counts
    assert a.connections + b.connections <= 4 * 2  # pools carried over, not rebuilt per reload


def test_listener_reloads_under_keepalive_load_fail_no_request(tmp_path):
    """Every reload changes the worker count: new workers start, the old ones drain. Clients
    of a draining worker get Connection: close on their next response and reconnect."""
    with Origin(handler=lambda req: ok(b"a")) as a, Origin(handler=lambda req: ok(b"b")) as b:
        with CliProxy(tmp_path, config(a.url, b.url, 0, workers=1)) as p, Load(p.port) as load:
            for i in range(6):
                p.write_config(config(a.url, b.url, (i + 1) % 2, workers=1 + (i + 1) % 2))
                code, result = p.admin("POST", "/reload")
                assert (code, result["workers_pending"]) == (200, [])
                time.sleep(0.3)
            load.__exit__()
            assert p.stop() == 0
    assert load.failures == [] and load.reconnects == [0] * CLIENTS
    assert sum(load.graceful) >= 1  # the old workers really went away
    assert all(n > 50 for n in load.counts), load.counts
