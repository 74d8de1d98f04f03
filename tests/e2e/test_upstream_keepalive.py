"""The upstream keep-alive pool under concurrency: what a burst of requests in flight leaves
behind, with the default `keepalive` and with a small one (docs/tuning.md).

The origin holds every request of a round until all of them have arrived, so each round has
exactly ``n`` requests in flight to the server at once, each on its own upstream connection.
"""

from engine.control.metrics import worker_snapshot
from tests.support.client import Conn
from tests.support.e2e import proxy_config, wait_until
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy


class GatedOrigin(Origin):
    """Answers nothing until ``n`` requests are waiting, then answers them all."""

    def __init__(self, n: int):
        super().__init__(handler=lambda req: (b"", "keep"), on_head=self._hold)
        self.n = n
        self.waiting = []

    def _hold(self, req, transport):
        self.waiting.append(transport)
        if len(self.waiting) == self.n:
            for t in self.waiting:
                t.write(ok(b"round"))
            self.waiting = []


def rounds(proxy_port: int, n: int, count: int) -> None:
    """``count`` rounds of ``n`` concurrent GETs, one per client connection."""
    clients = [Conn(proxy_port) for _ in range(n)]
    try:
        for _ in range(count):
            for c in clients:
                c.send(b"GET /burst HTTP/1.1\r\nHost: test\r\n\r\n")
            for c in clients:  # (each read bounded by the client's 5 s timeout)
                r = c.response()
                assert (r.status, r.body) == (200, b"round")
    finally:
        for c in clients:
            c.__exit__(None, None, None)


def opened(proxy) -> int:
    """The worker's own count of connections it made to the server (/metrics)."""
    (server,) = proxy.call(worker_snapshot, proxy.worker)["servers"]
    return server[8]


def test_default_pool_reuses_every_connection_a_burst_opened():
    # 48 in flight: more than nginx's example of 32, which would close 16 connections after
    # each round and open 16 new ones in the next.
    n = 48
    with GatedOrigin(n) as origin, InProcessProxy(proxy_config(origin.url)) as proxy:
        rounds(proxy.port, n, 3)
        assert origin.connections == opened(proxy) == n
        assert len(origin.requests) == 3 * n
        assert len(origin.open) == n  # all kept in the pool, none closed


def test_keepalive_caps_the_idle_connections_kept():
    # nginx semantics: a connection released while `keepalive` are idle is closed at once.
    n, keepalive = 16, 6
    with GatedOrigin(n) as origin, \
            InProcessProxy(proxy_config(origin.url, upstream=f"keepalive = {keepalive}")) as proxy:
        rounds(proxy.port, n, 1)
        assert wait_until(lambda: len(origin.open) == keepalive, 5), len(origin.open)
        rounds(proxy.port, n, 1)
        # the second round reused the 6 kept and opened 10
        assert origin.connections == opened(proxy) == n + (n - keepalive)
        assert wait_until(lambda: len(origin.open) == keepalive, 5), len(origin.open)
