"""Request size limits: request line (414), header section (431), body (413, by Content-Length
and counted while a chunked body streams)."""

import threading
import time

import pytest

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config, send_and_read
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy

LIMITS = """
max_request_line = 1024
max_header_size = 2048
max_header_count = 10
max_body_size = 1000
"""


@pytest.fixture(scope="module")
def origin():
    with Origin() as o:
        yield o


@pytest.fixture(scope="module")
def proxy(origin):
    extra = """
[[routes]]
name = "small"
paths = ["/small/*"]
upstream = "app"
max_body_size = 100
"""
    with InProcessProxy(proxy_config(origin.url, server=LIMITS, extra=extra)) as p:
        yield p


def request(path: bytes = b"/", headers: bytes = b"", body: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: t\r\n%s\r\n%s" % (path, headers, body)


def fields(n: int, size: int = 10) -> bytes:
    return b"".join(b"X-F%d: %s\r\n" % (i, b"v" * size) for i in range(n))


WITHIN = [
    pytest.param(request(b"/" + b"a" * 900), id="long-target-under-limit"),
    pytest.param(request(headers=fields(9)), id="ten-fields-with-host"),
    pytest.param(request(headers=b"X-Big: " + b"v" * 1900 + b"\r\n"),
                 id="header-section-under-limit"),
    pytest.param(request(headers=b"Content-Length: 1000\r\n", body=b"b" * 1000),
                 id="body-at-limit"),
    pytest.param(request(b"/small/x", b"Content-Length: 100\r\n", b"b" * 100),
                 id="route-body-at-its-limit"),
    pytest.param(request(headers=b"Transfer-Encoding: chunked\r\n",
                         body=b"3e8\r\n" + b"b" * 1000 + b"\r\n0\r\n\r\n"),
                 id="chunked-body-at-limit"),
]


@pytest.mark.parametrize("data", WITHIN)
def test_requests_within_the_limits_pass(proxy, data):
    with Conn(proxy.port) as c:
        c.send(data)
        assert c.response().status == 200


OVER = [
    pytest.param(request(b"/" + b"a" * 1100), 414, "uri_too_long", id="long-target"),
    pytest.param(request(b"/?" + b"q" * 5000), 414, "uri_too_long", id="long-query"),
    pytest.param(request(headers=fields(10)), 431, "headers_too_large",
                 id="eleven-fields-with-host"),
    pytest.param(request(headers=fields(30)), 431, "headers_too_large", id="many-fields"),
    pytest.param(request(headers=b"X-Big: " + b"v" * 2100 + b"\r\n"), 431,
                 "headers_too_large", id="one-huge-field"),
    pytest.param(request(headers=fields(8, 300)), 431, "headers_too_large",
                 id="header-section-too-large"),
    pytest.param(request(headers=b"Content-Length: 1001\r\n", body=b"b" * 1001), 413,
                 "body_too_large", id="content-length-over-server-limit"),
    pytest.param(request(b"/small/x", b"Content-Length: 101\r\n", b"b" * 101), 413,
                 "body_too_large", id="content-length-over-route-limit"),
    pytest.param(request(headers=b"Content-Length: 99999999999\r\n"), 413,
                 "body_too_large", id="huge-content-length-without-body"),
    pytest.param(request(headers=b"Transfer-Encoding: chunked\r\n",
                         body=b"3e9\r\n" + b"b" * 1001 + b"\r\n0\r\n\r\n"),
                 413, "body_too_large", id="chunked-over-limit"),
    pytest.param(request(b"/small/x", b"Transfer-Encoding: chunked\r\n",
                         b"".join(b"a\r\n" + b"c" * 10 + b"\r\n" for _ in range(11))
                         + b"0\r\n\r\n"),
                 413, "body_too_large", id="chunked-over-route-limit-in-small-chunks"),
]


@pytest.mark.parametrize("data, status, code", OVER)
def test_requests_over_the_limits_are_refused_and_closed(proxy, origin, data, status, code):
    before = len(origin.requests)
    r, closed = send_and_read(proxy.port, data)
    assert_error(r, status, code)
    assert r.header(b"connection") == b"close"
    assert closed
    assert len(origin.requests) == before


@pytest.mark.parametrize("head, status, code", [
    pytest.param(b"GET /" + b"a" * 200_000, 414, "uri_too_long", id="endless-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: " + b"v" * 200_000, 431,
                 "headers_too_large", id="endless-field-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-" + b"n" * 200_000, 431,
                 "headers_too_large", id="endless-field-name"),
])
def test_endless_head_is_refused_without_waiting_for_its_end(proxy, head, status, code):
    """The limit applies to bytes received, not only to completed fields: a head that never
    ends is refused as soon as it is too long (not after the 60 s header timeout)."""
    with Conn(proxy.port, timeout=3) as c:
        piece = 16384
        for i in range(0, len(head), piece):
            try:
                c.send(head[i:i + piece])
            except OSError:
                break  # the proxy already answered and closed
            time.sleep(0.001)
        assert_error(c.response(), status, code)
        assert c.closed()


@pytest.mark.parametrize("trailers", [
    pytest.param(fields(12), id="too-many-trailer-fields"),
    pytest.param(b"X-Sum: " + b"v" * 2100 + b"\r\n", id="huge-trailer-field"),
    pytest.param(b"X-Endless: " + b"v" * 200_000, id="endless-trailer-field"),
])
def test_trailer_section_counts_against_the_header_limits(proxy, origin, trailers):
    before = len(origin.requests)
    with Conn(proxy.port, timeout=3) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\nhi\r\n0\r\n")
        for i in range(0, len(trailers), 16384):
            try:
                c.send(trailers[i:i + 16384])
            except OSError:
                break
            time.sleep(0.001)
        if not trailers.startswith(b"X-Endless"):
            try:
                c.send(b"\r\n")
            except OSError:
                pass
        assert_error(c.response(), 431, "headers_too_large")
        assert c.closed()
    assert len(origin.requests) == before


def test_chunked_body_over_limit_is_stopped_while_streaming(proxy, origin):
    """The upstream already has the head and the first bytes when the limit is crossed:
    the client gets 413, the upstream request is aborted, never completed."""
    head_seen = threading.Event()
    origin.on_head = lambda req, t: head_seen.set()
    try:
        with Conn(proxy.port) as c:
            before = len(origin.requests)
            c.send(b"POST /small/s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3c\r\n" + b"a" * 60 + b"\r\n")
            assert head_seen.wait(5)
            c.send(b"3c\r\n" + b"b" * 60 + b"\r\n")
            r = c.response()
            assert_error(r, 413, "body_too_large")
            assert c.closed()
            assert len(origin.requests) == before
    finally:
        origin.on_head = None


def test_content_length_body_over_limit_is_refused_before_reading_it(proxy, origin):
    with Conn(proxy.port) as c:
        c.send(request(headers=b"Content-Length: 5000\r\n"))  # no body sent at all
        assert_error(c.response(), 413, "body_too_large")
        assert c.closed()
