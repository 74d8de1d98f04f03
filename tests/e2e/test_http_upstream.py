"""The upstream side: keep-alive pool reuse, response framing (RFC 9112 §6.3), HEAD, 1xx, 204,
304, truncated responses and the stale keep-alive retry."""

import socket
import time

import pytest

from tests.support.client import Conn, raw
from tests.support.e2e import assert_error, proxy_config, read_response_or_reset
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy


class Setup:
    """``with Setup(handler) as (origin, proxy, conn):``"""

    def __init__(self, handler, **config):
        self.handler = handler
        self.config = config

    def __enter__(self):
        self.origin = Origin(self.handler).__enter__()
        self.proxy = InProcessProxy(proxy_config(self.origin.url, **self.config)).__enter__()
        self.conn = Conn(self.proxy.port).__enter__()
        return self.origin, self.proxy, self.conn

    def __exit__(self, *exc):
        self.conn.__exit__(*exc)
        self.proxy.__exit__(*exc)
        self.origin.__exit__(*exc)


def test_sequential_requests_reuse_one_upstream_connection():
    with Setup(lambda req: ok(req.method + b" " + req.url)) as (origin, proxy, c):
        for method in ("GET", "POST", "PUT", "DELETE", "GET"):
            r = c.request(method, "/m", body=b"x" if method in ("POST", "PUT") else b"")
            assert r.status == 200 and r.body == method.encode() + b" /m"
        assert origin.connections == 1
        assert {req.conn_id for req in origin.requests} == {1}


def test_sequential_client_connections_share_the_pool():
    with Setup(lambda req: ok()) as (origin, proxy, c):
        for _ in range(3):
            with Conn(proxy.port) as other:
                assert other.request("GET", "/").status == 200
        assert origin.connections == 1


def test_keepalive_zero_disables_upstream_reuse():
    with Setup(lambda req: ok(), upstream="keepalive = 0") as (origin, proxy, c):
        for _ in range(3):
            assert c.request("GET", "/").status == 200
        assert origin.connections == 3


def test_content_length_response_is_relayed_with_its_length():
    with Setup(lambda req: ok(b"0123456789")) as (origin, proxy, c):
        r = c.request("GET", "/")
        assert r.header(b"content-length") == b"10"
        assert r.header(b"transfer-encoding") is None
        assert r.body == b"0123456789" and r.complete


def test_chunked_response_is_rechunked_to_the_client():
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
              b"5;name=x\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n")
    with Setup(lambda req: answer) as (origin, proxy, c):
        r = c.request("GET", "/")
        assert r.header(b"transfer-encoding") == b"chunked"
        assert r.header(b"content-length") is None
        assert r.header(b"trailer") is None  # hop-by-hop, and trailers are not relayed
        assert r.body == b"hello world" and r.complete
        assert c.request("GET", "/again").body == b"hello world"
        assert origin.connections == 1


def test_close_delimited_response_becomes_chunked_for_http11_client():
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", "close")
    with Setup(lambda req: answer) as (origin, proxy, c):
        r = c.request("GET", "/")
        assert r.header(b"transfer-encoding") == b"chunked"
        assert r.body == b"until the end" and r.complete
        assert r.header(b"connection") is None
        # The client connection stays open; the upstream one cannot be reused.
        assert c.request("GET", "/2").body == b"until the end"
        assert origin.connections == 2


def test_upstream_connection_close_is_not_reused():
    with Setup(lambda req: ok(headers=[(b"Connection", b"close")])) as (origin, proxy, c):
        for _ in range(2):
            r = c.request("GET", "/")
            assert r.status == 200 and r.header(b"connection") is None
        assert origin.connections == 2


def test_head_response_has_length_but_no_body_and_connection_is_reused():
    def handler(req):
        if req.method == b"HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: \"v1\"\r\n\r\n"
        return ok(b"after head")

    with Setup(handler) as (origin, proxy, c):
        r = c.request("HEAD", "/h")
        assert r.status == 200
        assert r.header(b"content-length") == b"1234"
        assert r.header(b"etag") == b'"v1"'
        assert c.request("GET", "/g").body == b"after head"  # no stray body bytes
        assert origin.connections == 1


def test_head_response_with_a_stray_body_does_not_leak_into_the_next_response():
    def handler(req):
        if req.method == b"HEAD":
            return ok(b"SHOULD NOT BE HERE")
        return ok(b"clean")

    with Setup(handler) as (origin, proxy, c):
        r = c.request("HEAD", "/h")
        assert r.header(b"content-length") == b"18"
        assert c.request("GET", "/g").body == b"clean"
        c.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            c.sock.recv(1)


def test_interim_1xx_responses_are_relayed_but_not_100():
    # RFC 9110 §15.2: 103 (and 102) go to an HTTP/1.1 client ahead of the final response;
    # the upstream's 100 answers nothing the proxy asked (it sends no Expect upstream).
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
              + ok(b"final", headers=[(b"X-Final", b"1")]))
    with Setup(lambda req: answer) as (origin, proxy, c):
        r = c.request("GET", "/")
        assert r.status == 103 and r.header(b"link") == b"</a.css>; rel=preload"
        r = c.response()
        assert r.status == 200 and r.body == b"final"
        assert r.header(b"x-final") == b"1" and r.header(b"link") is None
        assert c.request("GET", "/again").status == 103 and c.response().status == 200
        assert origin.connections == 1


@pytest.mark.parametrize("answer, status", [
    pytest.param(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", 204, id="204"),
    pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 204,
                 id="204-with-content-length"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n", 304, id="304"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 100\r\n\r\n",
                 304, id="304-with-content-length"),
])
def test_no_body_statuses_are_relayed_without_a_body(answer, status):
    with Setup(lambda req: answer) as (origin, proxy, c):
        r = c.request("GET", "/")
        assert r.status == status and r.body == b""
        assert r.header(b"transfer-encoding") is None
        if status == 204:
            assert r.header(b"content-length") is None  # RFC 9110 §8.6
        assert c.request("GET", "/next").status == status  # framing stayed in sync
        assert origin.connections == 1


@pytest.mark.parametrize("answer, status, body", [
    pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
                 b"hello", 204, b"", id="204-close-with-a-body"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nokextra",
                 200, b"ok", id="200-close-with-bytes-after"),
    pytest.param(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 204, b"",
                 id="204-then-a-stray-response"),
])
@pytest.mark.parametrize("action", ["keep", "close"])
def test_bytes_after_a_complete_response_leave_it_whole_and_the_connection_unused(
        answer, status, body, action):
    # nginx relays such an answer and drops the connection ("upstream sent more data than
    # specified"); the bytes must never cost the client its answer, nor answer a later request.
    with Setup(lambda req: (answer, action) if req.url == b"/stray" else ok(b"next")) as (
            origin, proxy, c):
        r = c.request("GET", "/stray")
        assert (r.status, r.body, r.complete) == (status, body, True)
        assert c.request("GET", "/next").body == b"next"
        assert origin.connections == 2


TRUNCATED = [
    pytest.param((b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly some", "close"),
                 id="content-length-short-then-close"),
    pytest.param((b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly some", "reset"),
                 id="content-length-short-then-reset"),
    pytest.param((b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "close"),
                 id="head-only-then-close"),
    pytest.param((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n",
                  "close"), id="chunked-without-terminator"),
    pytest.param((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n",
                  "reset"), id="chunked-then-reset"),
]


@pytest.mark.parametrize("answer", TRUNCATED)
def test_upstream_dying_mid_body_cuts_the_client_connection(answer):
    with Setup(lambda req: answer) as (origin, proxy, c):
        c.send(b"GET /t HTTP/1.1\r\nHost: t\r\n\r\n")
        r = c.response()
        assert r.status == 200 and not r.complete
        assert c.closed()


@pytest.mark.parametrize("answer", [
    pytest.param((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\nzz\r\n",
                  "keep"), id="chunked-then-invalid-chunk"),
    pytest.param((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsomeXX", "close"),
                 id="chunk-longer-than-its-size"),
])
def test_upstream_body_going_bad_cuts_the_client_connection(answer):
    # Found bad in the same read as the head: the connection is reset before anything of
    # the response went out, or (if the head did) the body is not complete.
    with Setup(lambda req: answer) as (origin, proxy, c):
        c.send(b"GET /t HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response_or_reset(c)
        assert r is None or (r.status == 200 and not r.complete)
        assert c.closed()


def test_upstream_dying_mid_body_after_a_delay_cuts_the_client_connection():
    def handler(req):
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n", "hang"

    with Setup(handler) as (origin, proxy, c):
        c.send(b"GET /t HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)  # the head and first chunk reach the client first
        origin.loop.call_soon_threadsafe(lambda: [p.transport.close() for p in origin.open])
        r = c.response()
        assert r.status == 200 and r.body == b"some" and not r.complete
        assert c.closed()


@pytest.mark.parametrize("action", ["close", "reset"])
def test_stale_keepalive_connection_is_retried_once(action):
    """The origin drops its keep-alive connection just as the proxy reuses it."""
    def handler(req):
        if req.conn_id == 1 and req.url == b"/second":
            return b"", action  # closes without answering
        return ok(b"%d %s" % (req.conn_id, req.url))

    with Setup(handler) as (origin, proxy, c):
        assert c.request("GET", "/first").body == b"1 /first"
        assert c.request("GET", "/second").body == b"2 /second"
        assert [r.url for r in origin.requests] == [b"/first", b"/second", b"/second"]
        assert origin.connections == 2


def test_stale_connection_is_retried_only_once():
    def handler(req):
        if req.url == b"/second":
            return b"", "close"
        return ok()

    with Setup(handler) as (origin, proxy, c):
        assert c.request("GET", "/first").status == 200
        assert c.request("GET", "/third").status == 200  # conn 1 is reused here
        assert_error(c.request("GET", "/second"), 502, "bad_gateway")
        assert [r.url for r in origin.requests].count(b"/second") == 2


def test_non_idempotent_request_is_not_retried_on_a_stale_connection():
    def handler(req):
        if req.url == b"/pay":
            return b"", "close"
        return ok()

    with Setup(handler) as (origin, proxy, c):
        assert c.request("GET", "/first").status == 200
        assert_error(c.request("POST", "/pay", body=b"1"), 502, "bad_gateway")
        assert [r.url for r in origin.requests] == [b"/first", b"/pay"]


def test_idle_connection_closed_by_origin_is_not_reused():
    def handler(req):
        return ok(b"%d" % req.conn_id), "close"  # closes without saying so

    with Setup(handler) as (origin, proxy, c):
        assert c.request("GET", "/1").body == b"1"
        time.sleep(0.1)  # the FIN reaches the idle pooled connection
        assert c.request("GET", "/2").body == b"2"
        assert len(origin.requests) == 2


def test_slow_client_does_not_leave_the_pooled_connection_paused():
    """A big response that fills the client's buffers pauses reading from the upstream; the
    connection must not go back to the pool still paused."""
    big = b"x" * (8 << 20)

    def handler(req):
        return ok(big if req.url == b"/big" else b"small")

    with Origin(handler) as origin, \
            InProcessProxy(proxy_config(origin.url, upstream="read_timeout = 2")) as proxy:
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", proxy.port))
            c = Conn.__new__(Conn)
            c.sock, c.buffer, c.eof = sock, b"", False
            with c:
                c.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
                time.sleep(0.3)  # let every buffer on the way fill up
                r = c.response()
                assert len(r.body) == len(big)
                started = time.monotonic()
                assert c.request("GET", "/small").body == b"small"
                assert time.monotonic() - started < 1.5
        assert origin.connections == 1


def test_a_head_split_across_reads_keeps_its_fields_reason_and_trimmed_values():
    # The origin writes its head in pieces (30 ms apart, so they arrive as separate reads)
    # that cut the status line, a field name and a value; the proxy splits the head itself
    # once llhttp accepted it (engine/upstream/connection.pyx), so the pieces must be
    # joined first. Field values lose surrounding whitespace (RFC 9110 §5.5); the origin's
    # reason phrase is kept.
    pieces = [b"HTTP/1.1 20", b"1 Made It\r\nX-Sp", b"lit:  \t one va", b"lue \t\r\nX-Empty:\r\n",
              b"Content-Length: 4\r\n", b"\r\nbody"]

    def write_slowly(req, transport):
        for i, piece in enumerate(pieces):
            origin.loop.call_later(0.03 * i, transport.write, piece)

    with Origin(lambda req: b"", on_head=write_slowly) as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy:
        with Conn(proxy.port) as c:
            r = c.request("GET", "/")
            assert r.status == 201 and r.body == b"body"
            assert r.header(b"x-split") == b"one value" and r.header(b"x-empty") == b""
            assert c.request("GET", "/again").status == 201  # the connection stays in step
        got = raw(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 201 Made It\r\n"), got[:40]


# A body spanning many reads (100 KiB): framed by its Content-Length to the byte, whatever
# the reads look like.
BIG = bytes(range(256)) * 400


def test_a_large_body_is_relayed_whole_and_the_connection_reused():
    with Setup(lambda req: ok(BIG + req.url)) as (origin, proxy, c):
        for path in ("/a", "/b", "/c"):
            r = c.request("GET", path)
            assert r.status == 200 and r.body == BIG + path.encode()
            assert r.header(b"content-length") == b"%d" % (len(BIG) + 2)
        assert origin.connections == 1


def test_large_and_small_bodies_alternate_on_one_upstream_connection():
    answers = {b"/big": ok(BIG), b"/small": ok(b"tiny")}
    with Setup(lambda req: answers[req.url]) as (origin, proxy, c):
        assert c.request("GET", "/big").body == BIG
        assert c.request("GET", "/small").body == b"tiny"
        assert c.request("GET", "/big").body == BIG
        assert origin.connections == 1


def test_a_large_body_sent_slowly_in_pieces_is_relayed_whole():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG)

    def handler(req):
        return head + BIG[:1000], "hang"

    with Setup(handler) as (origin, proxy, c):
        c.send(b"GET /t HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)
        for i in range(1000, len(BIG), 30000):
            piece = BIG[i:i + 30000]
            origin.loop.call_soon_threadsafe(
                lambda piece=piece: [p.transport.write(piece) for p in origin.open])
            time.sleep(0.02)
        r = c.response()
        assert r.status == 200 and r.body == BIG and r.complete


@pytest.mark.parametrize("action", ["close", "reset"])
def test_a_large_body_cut_short_cuts_the_client_connection(action):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG)
    with Setup(lambda req: (head + BIG[:50000], action)) as (origin, proxy, c):
        c.send(b"GET /t HTTP/1.1\r\nHost: t\r\n\r\n")
        r = read_response_or_reset(c)
        assert r is None or (r.status == 200 and not r.complete)
        assert c.closed()


def test_bytes_after_a_large_body_are_never_an_answer():
    # The server sends more than its Content-Length: the extra bytes are not relayed and the
    # connection is not reused (RFC 9112 §9.3), so they never answer the next request.
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"
    answers = {b"/big": ok(BIG) + stray, b"/next": ok(b"fresh")}
    with Setup(lambda req: answers[req.url]) as (origin, proxy, c):
        r = c.request("GET", "/big")
        assert r.status == 200 and r.body == BIG
        assert c.request("GET", "/next").body == b"fresh"
        assert origin.connections == 2


def test_a_large_body_with_connection_close_is_not_reused():
    with Setup(lambda req: ok(BIG, headers=[(b"Connection", b"close")])) as (origin, proxy, c):
        assert c.request("GET", "/a").body == BIG
        assert c.request("GET", "/b").body == BIG
        assert origin.connections == 2
