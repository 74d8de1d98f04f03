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


def config(a: str, b: str, flavour: int) -> str:
    """Two configs: flavour 0 and 1 differ in routes, upstream weights and body limits."""
    weights = (1, 1) if flavour == 0 else (3, 1)
    extra_route = "v1" if flavour == 0 else "v2"
    return f"""
[server]
access_log = "off"
workers = 2
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


def test_reloads_under_keepalive_load_fail_no_request(tmp_path):
    stop = threading.Event()
    counts = [0] * CLIENTS
    failures: list = []
    reconnects = [0] * CLIENTS

    def client(n: int, port: int) -> None:
        conn = Conn(port)
        try:
            while not stop.is_set():
                try:
                    r = conn.request("POST" if counts[n] % 5 == 0 else "GET",
                                     f"/api/{n}/{counts[n]}",
                                     body=b"x" * 100 if counts[n] % 5 == 0 else b"")
                except (OSError, ConnectionError) as exc:  # a reset or a cut connection
                    failures.append(repr(exc))
                    conn.sock.close()
                    conn = Conn(port)
                    reconnects[n] += 1
                    continue
                counts[n] += 1
                if r.status != 200 or not r.complete:
                    failures.append((r.status, r.body[:200]))
                if r.header(b"connection") == b"close":
                    conn.sock.close()
                    conn = Conn(port)
                    reconnects[n] += 1
        finally:
            conn.sock.close()

    with Origin(handler=lambda req: ok(b"a")) as a, Origin(handler=lambda req: ok(b"b")) as b:
        with CliProxy(tmp_path, config(a.url, b.url, 0)) as p:
            threads = [threading.Thread(target=client, args=(n, p.port)) for n in range(CLIENTS)]
            for t in threads:
                t.start()
            latencies = []
            results = []
            try:
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
            finally:
                stop.set()
                for t in threads:
                    t.join(10)
            _, status = p.admin("GET", "/status")
            assert p.stop() == 0

    total = sum(counts)
    print(f"\nreload under load: {total} requests, {len(failures)} failures, "
          f"{sum(reconnects)} reconnects, {RELOADS} reloads, reload+apply latency "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")
    assert failures == [] and reconnects == [0] * CLIENTS
    assert results == [(200, "ok", [])] * RELOADS
    assert status["generation"] == RELOADS + 1
    assert status["worker_restarts"] == 0
    assert all(n > 50 for n in counts), counts
    assert a.connections + b.connections <= 4 * 2  # pools carried over, not rebuilt per reload
