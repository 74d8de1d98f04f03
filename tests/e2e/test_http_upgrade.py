"""Upgrade / WebSocket (RFC 9110 §7.8, RFC 6455 §4): a 101 from the upstream is relayed and the
connection becomes a byte tunnel both ways; a refused upgrade is relayed, then the connection
closes."""

import time

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config, servers_config, wait_until
from tests.support.origin import Origin, closed_port, ok
from tests.support.proxy import InProcessProxy

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           b"Keep-Alive: timeout=5\r\n\r\n")


class Refusing(Origin):
    def on_upgrade(self, req, rest):
        return ok(b"no upgrade for you")


def recv_exactly(c: Conn, n: int) -> bytes:
    while len(c.buffer) < n:
        if not c._fill():
            break
    data, c.buffer = c.buffer[:n], c.buffer[n:]
    return data


def pool_active(proxy) -> list:
    return proxy.call(lambda: [p.active for p in proxy.worker.runtime.pools.values()])


def test_101_is_relayed_and_bytes_are_tunnelled_both_ways():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(UPGRADE)
        r = c.response()
        assert r.status == 101
        assert r.header(b"upgrade") == b"websocket"
        assert r.header(b"connection").lower() == b"upgrade"
        for message in (b"ping", b"\x81\x05hello", bytes(range(256)) * 4096):
            c.send(message)
            assert recv_exactly(c, len(message)) == message
        req = origin.requests[0]
        assert req.header(b"upgrade") == b"websocket"
        assert req.header(b"connection").lower() == b"upgrade"
        assert req.header(b"sec-websocket-key") == b"dGhlIHNhbXBsZSBub25jZQ=="
        assert req.header(b"keep-alive") is None


def test_bytes_sent_before_the_101_arrive_after_it():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(UPGRADE + b"early bytes")
        assert c.response().status == 101
        assert recv_exactly(c, len(b"early bytes")) == b"early bytes"


def test_tunnel_outlives_the_keepalive_timeout():
    config = proxy_config("{url}", server="keepalive_timeout = 0.2\nclient_header_timeout = 0.2")
    with Origin() as origin, InProcessProxy(config.replace("{url}", origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(UPGRADE)
        assert c.response().status == 101
        time.sleep(0.5)
        c.send(b"still here")
        assert recv_exactly(c, 10) == b"still here"


def test_origin_closing_the_tunnel_closes_the_client_connection():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(UPGRADE)
        assert c.response().status == 101
        origin.loop.call_soon_threadsafe(lambda: [p.transport.close() for p in origin.open])
        assert c.closed()
        assert pool_active(proxy) == [0]


def test_client_closing_the_tunnel_closes_the_upstream_connection():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy:
        with Conn(proxy.port) as c:
            c.send(UPGRADE)
            assert c.response().status == 101
        deadline = time.monotonic() + 2
        while origin.open and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not origin.open
        assert pool_active(proxy) == [0]


def test_refused_upgrade_is_relayed_then_the_connection_closes():
    with Refusing() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(UPGRADE)
        r = c.response()
        assert r.status == 200 and r.body == b"no upgrade for you"
        assert r.header(b"upgrade") is None
        assert r.header(b"connection") == b"close"
        assert c.closed()
        # The upstream connection saw an upgrade request: it is not reused either.
        with Conn(proxy.port) as other:
            other.request("GET", "/plain")
        assert origin.connections == 2


def test_upgrade_to_a_failing_upstream_is_502_and_closes():
    config = proxy_config(f"http://127.0.0.1:{closed_port()}")
    with InProcessProxy(config) as proxy, Conn(proxy.port) as c:
        c.send(UPGRADE)
        r = c.response()
        assert_error(r, 502, "bad_gateway")
        assert r.header(b"connection") == b"close"
        assert c.closed()


def test_upgrade_refused_by_the_proxy_itself_closes():
    with Origin() as origin, \
            InProcessProxy(proxy_config(origin.url, paths='["/api/*"]')) as proxy, \
            Conn(proxy.port) as c:
        c.send(UPGRADE)  # /ws matches no route
        r = c.response()
        assert_error(r, 404, "not_found")
        assert r.header(b"connection") == b"close"
        assert c.closed()


def test_upgrade_header_without_connection_upgrade_is_a_plain_request():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        r = c.request("GET", "/plain", headers=[(b"Upgrade", b"websocket")])
        assert r.status == 200 and r.body == b"/plain"
        assert origin.requests[0].header(b"upgrade") is None
        assert c.request("GET", "/again").status == 200


def test_an_open_tunnel_occupies_its_server_until_it_closes():
    # max_conns counts tunnels too; the attempt's verdict is given at 101 all the same.
    with Origin() as o, InProcessProxy(servers_config(
            [f'{{ url = "{o.url}", max_conns = 1 }}'])) as p:
        def active():
            return p.call(lambda: [s.active for s in p.worker.runtime.upstreams["app"].servers])
        with Conn(p.port) as c1, Conn(p.port) as c2:
            c1.send(UPGRADE)
            assert c1.response().status == 101
            assert active() == [1]
            c2.send(UPGRADE)
            assert_error(c2.response(), 503, "upstream_unavailable")
        assert wait_until(lambda: active() == [0], 5)


def test_idle_tunnel_closes_after_the_read_timeout_and_a_busy_one_stays():
    # nginx proxy_read_timeout: a tunnel nothing crossed for read_timeout is closed.
    config = proxy_config("{url}", upstream='read_timeout = "400ms"')
    with Origin() as origin, InProcessProxy(config.replace("{url}", origin.url)) as proxy:
        with Conn(proxy.port) as busy, Conn(proxy.port) as idle:
            for c in (busy, idle):
                c.send(UPGRADE)
                assert c.response().status == 101
            for _ in range(6):  # 1.2 s of traffic, each gap under the timeout
                time.sleep(0.2)
                busy.send(b"tick")
                assert recv_exactly(busy, 4) == b"tick"
            assert idle.closed(2.0)
            busy.send(b"alive")
            assert recv_exactly(busy, 5) == b"alive"
        assert wait_until(lambda: pool_active(proxy) == [0], 5)
