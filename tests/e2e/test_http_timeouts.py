"""Timeouts, with tiny configured values: client header (408), client body (408), keep-alive
idle (silent close), upstream read (504, or the connection cut once the head went out),
and upstream connect failures (502)."""

import select
import threading
import time

import pytest

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config
from tests.support.origin import Origin, closed_port, ok
from tests.support.proxy import InProcessProxy

SERVER = """
client_header_timeout = 0.3
client_body_timeout = 0.3
keepalive_timeout = 0.3
"""
UPSTREAM = "read_timeout = 0.3\nconnect_timeout = 0.3"


def hanging(req):
    return b"", "hang"


@pytest.fixture(scope="module")
def origin():
    def handler(req):
        if req.url.startswith(b"/hang"):
            return b"", "hang"
        if req.url.startswith(b"/half"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", "hang"
        if req.url.startswith(b"/chunk-stall"):
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n", "hang"
        return ok(req.body or req.url)

    with Origin(handler) as o:
        yield o


@pytest.fixture(scope="module")
def proxy(origin):
    with InProcessProxy(proxy_config(origin.url, server=SERVER, upstream=UPSTREAM)) as p:
        yield p


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


@pytest.mark.parametrize("partial", [
    pytest.param(b"GET /slow-head HTTP/1.1\r\nHost: t\r\n", id="partial-head"),
    pytest.param(b"GET /slow-line", id="partial-request-line"),
])
def test_client_header_timeout_is_408_and_close(proxy, origin, partial):
    with Conn(proxy.port) as c:
        c.send(partial)
        r, took = timed(c.response)
        assert_error(r, 408, "request_timeout")
        assert 0.2 < took < 2
        assert r.header(b"connection") == b"close"
        assert c.closed()
    assert not any(req.url == b"/slow-head" for req in origin.requests)


def test_header_timeout_counts_the_whole_head_not_each_read(proxy):
    with Conn(proxy.port) as c:
        c.send(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        for _ in range(20):  # a field every 0.1 s: each read is quick, the head is not
            if select.select([c.sock], [], [], 0.1)[0]:
                break
            c.send(b"X-Drip: 1\r\n")
        assert_error(c.response(), 408, "request_timeout")
        assert time.monotonic() - started < 1.5


def test_silent_connection_is_closed_without_a_response(proxy):
    with Conn(proxy.port) as c:
        assert c.closed(2.0)
        assert c.buffer == b""


@pytest.mark.parametrize("head, first", [
    pytest.param(b"Content-Length: 10\r\n", b"hello", id="content-length"),
    pytest.param(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n", id="chunked"),
])
def test_client_body_timeout_is_408_and_close(proxy, origin, head, first):
    head_seen = threading.Event()
    origin.on_head = lambda req, t: head_seen.set()
    try:
        with Conn(proxy.port) as c:
            c.send(b"POST /slow-body HTTP/1.1\r\nHost: t\r\n" + head + b"\r\n" + first)
            assert head_seen.wait(5)  # the body is already streaming upstream
            r, took = timed(c.response)
            assert_error(r, 408, "request_timeout")
            assert took < 2
            assert c.closed()
    finally:
        origin.on_head = None


def test_client_body_timeout_before_the_upstream_is_connected(origin):
    # Reading a body the upstream has not taken yet (first request, no pooled connection).
    config = proxy_config(origin.url, server=SERVER, upstream=UPSTREAM)
    with InProcessProxy(config) as proxy, Conn(proxy.port) as c:
        c.send(b"POST /slow-body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        assert_error(c.response(), 408, "request_timeout")
        assert c.closed()


def test_client_body_timeout_is_between_reads_not_total(proxy):
    with Conn(proxy.port) as c:
        c.send(b"POST /drip HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n")
        for byte in b"abcdefgh":  # 8 x 0.1 s: longer than the timeout in total
            time.sleep(0.1)
            c.send(bytes([byte]))
        r = c.response()
        assert r.status == 200 and r.body == b"abcdefgh"


def test_upstream_not_taking_the_body_is_504():
    """The origin stops reading mid-upload: its send timeout runs (504), not the client's
    body timeout, although the client is stuck too."""
    config = proxy_config("{url}", server=SERVER + 'max_body_size = "64m"',
                          upstream=UPSTREAM + "\nsend_timeout = 0.3")
    with Origin(lambda req: ok(), on_head=lambda req, t: t.pause_reading()) as origin, \
            InProcessProxy(config.replace("{url}", origin.url)) as proxy, \
            Conn(proxy.port) as c:
        size = 48 << 20
        c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        c.sock.settimeout(0.2)
        piece = b"u" * (256 << 10)
        try:
            for _ in range(size // len(piece)):
                c.sock.sendall(piece)
        except (TimeoutError, OSError):
            pass
        c.sock.settimeout(5)
        r = c.response()
        assert_error(r, 504, "gateway_timeout")
        assert c.closed()


def test_keepalive_idle_connection_is_closed_silently(proxy):
    with Conn(proxy.port) as c:
        assert c.request("GET", "/a").status == 200
        time.sleep(0.1)
        assert c.request("GET", "/b").status == 200  # still open within the timeout
        assert c.closed(2.0)
        assert c.buffer == b""  # no 408 for an idle connection


def test_upstream_read_timeout_is_504(proxy):
    with Conn(proxy.port) as c:
        r, took = timed(lambda: c.request("GET", "/hang"))
        assert_error(r, 504, "gateway_timeout")
        assert 0.2 < took < 2
        # The 504 was a complete answer: the client connection stays usable.
        assert c.request("GET", "/ok").body == b"/ok"


def test_upstream_read_timeout_on_a_reused_connection_is_504(proxy):
    with Conn(proxy.port) as c:
        assert c.request("GET", "/warm").status == 200
        assert_error(c.request("GET", "/hang-again"), 504, "gateway_timeout")


@pytest.mark.parametrize("path", ["/half", "/chunk-stall"])
def test_upstream_timeout_after_the_head_cuts_the_connection(proxy, path):
    with Conn(proxy.port) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
        r = c.response()
        assert r.status == 200 and not r.complete
        assert c.eof


def test_slow_upstream_within_the_read_timeout_between_reads_is_fine():
    def on_head(req, transport):
        loop = asyncio_loop[0]
        transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(1, 6):  # 5 x 0.15 s: longer than the timeout in total
            loop.call_later(0.15 * i, transport.write, b"1\r\n%d\r\n" % i)
        loop.call_later(0.8, transport.write, b"0\r\n\r\n")

    asyncio_loop = []
    with Origin(lambda req: b"", on_head=on_head) as origin:
        asyncio_loop.append(origin.loop)
        config = proxy_config(origin.url, server=SERVER, upstream=UPSTREAM)
        with InProcessProxy(config) as proxy, Conn(proxy.port) as c:
            r = c.request("GET", "/trickle")
            assert r.status == 200 and r.body == b"12345" and r.complete


def test_upstream_connection_refused_is_502():
    config = proxy_config(f"http://127.0.0.1:{closed_port()}", server=SERVER,
                          upstream=UPSTREAM)
    with InProcessProxy(config) as proxy, Conn(proxy.port) as c:
        r, took = timed(lambda: c.request("GET", "/"))
        assert_error(r, 502, "bad_gateway")
        assert took < 1
        assert_error(c.request("POST", "/", body=b"data"), 502, "bad_gateway")


def test_upstream_connect_timeout_is_504():
    """A server whose accept queue is full drops our SYN (Linux), so connect hangs."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        time.sleep(0.1)
        config = proxy_config(f"http://127.0.0.1:{port}", upstream=UPSTREAM)
        with InProcessProxy(config) as p, Conn(p.port) as c:
            r, took = timed(lambda: c.request("GET", "/x"))
        assert_error(r, 504, "gateway_timeout")
        assert 0.25 <= took < 3
    finally:
        for s in fillers:
            s.close()
        listener.close()
