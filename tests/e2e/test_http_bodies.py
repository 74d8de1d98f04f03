"""Request bodies: Content-Length and chunked bodies stream to the upstream (never buffered
whole), chunked is re-framed without trailers, Expect: 100-continue (RFC 9110 §10.1.1)."""

import hashlib
import socket
import threading

import pytest

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy


def digest(req) -> bytes:
    return ok(b"%d %s" % (len(req.body), hashlib.sha256(req.body).hexdigest().encode()))


def expect_digest(body: bytes) -> bytes:
    return b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())


def test_content_length_body_streams_before_the_client_finished():
    head_seen = threading.Event()
    with Origin(on_head=lambda req, t: head_seen.set()) as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy, Conn(proxy.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello")
        # The origin sees the head (and the first bytes) while the client still owes six.
        assert head_seen.wait(5)
        c.send(b" world")
        r = c.response()
        assert r.status == 200 and r.body == b"hello world"
        req = origin.requests[0]
        assert req.header(b"content-length") == b"11"
        assert req.header(b"transfer-encoding") is None


def test_chunked_body_streams_rechunked_without_trailers():
    head_seen = threading.Event()
    with Origin(on_head=lambda req, t: head_seen.set()) as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy, Conn(proxy.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
               b"Trailer: X-Checksum\r\n\r\n5;ext=1\r\nhello\r\n")
        assert head_seen.wait(5)
        c.send(b"6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.body == b"hello world"
        req = origin.requests[0]
        assert req.header(b"transfer-encoding") == b"chunked"
        assert req.header(b"content-length") is None
        assert req.header(b"trailer") is None
        raw = b"".join(origin.raw)
        assert b"X-Checksum" not in raw and b"ext=1" not in raw
        assert raw.endswith(b"0\r\n\r\n")


def test_chunked_body_that_arrived_whole_is_sent_with_content_length():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n")
        assert c.response().body == b"abcde"
        req = origin.requests[0]
        assert req.header(b"content-length") == b"5"
        assert req.header(b"transfer-encoding") is None
        assert b"X-Trailer" not in b"".join(origin.raw)


def test_empty_bodies_are_framed():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"POST /cl0 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        assert c.response().status == 200
        c.send(b"POST /chunk0 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0\r\n\r\n")
        assert c.response().status == 200
        first, second = origin.requests
        assert first.header(b"content-length") == b"0" and first.body == b""
        # Whole-body-already-here gets a length; a reused connection streams it chunked.
        assert second.body == b"" and (second.header(b"content-length") == b"0"
                                       or second.header(b"transfer-encoding") == b"chunked")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_body_passes_intact(chunked):
    body = bytes(range(256)) * (6 * 4096)  # 6 MB
    if chunked:
        piece = 1 << 16
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + piece]), body[i:i + piece])
                          for i in range(0, len(body), piece)) + b"0\r\n\r\n"
        head = b"Transfer-Encoding: chunked\r\n"
    else:
        framed = body
        head = b"Content-Length: %d\r\n" % len(body)
    config = proxy_config("{url}", server='max_body_size = "16m"')
    with Origin(digest) as origin, InProcessProxy(config.replace("{url}", origin.url)) as proxy, \
            Conn(proxy.port, timeout=20) as c:
        c.send(b"POST /big HTTP/1.1\r\nHost: t\r\n" + head + b"\r\n" + framed)
        r = c.response()
        assert r.status == 200 and r.body == expect_digest(body)


def _proxy_buffered(proxy) -> int:
    """Request bytes the proxy holds in user space: pending body plus upstream write buffers."""
    total = 0
    for proto in proxy.worker.conns:
        ex = proto.active
        if ex is not None:
            total += ex.pending_size
            if ex.call is not None and ex.call.conn is not None:
                total += ex.call.conn.transport.get_write_buffer_size()
    return total


def test_upload_to_a_stalled_origin_is_back_pressured_not_buffered():
    """The origin stops reading after the head: the client must block long before its
    32 MB are sent (kernel buffers hold a few), and the proxy must hold only a bounded
    amount in user space; then everything flows."""
    transports = []
    head_seen = threading.Event()

    def on_head(req, transport):
        transport.pause_reading()
        transports.append(transport)
        head_seen.set()

    total = 32 << 20
    piece = bytes(range(256)) * 1024  # 256 KB
    config = proxy_config("{url}", server='max_body_size = "128m"')
    with Origin(digest, on_head=on_head) as origin, \
            InProcessProxy(config.replace("{url}", origin.url)) as proxy, \
            Conn(proxy.port, timeout=20) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
        c.sock.settimeout(0.5)
        sent = 0
        try:
            while sent < total:
                sent += c.sock.send(piece[: total - sent])
        except TimeoutError:
            pass
        assert head_seen.wait(5)
        assert sent < total * 3 // 4, f"client was never blocked: sent {sent}"
        assert proxy.call(_proxy_buffered, proxy) < 1 << 20
        origin.loop.call_soon_threadsafe(transports[0].resume_reading)
        c.sock.settimeout(20)
        while sent < total:
            n = min(len(piece), total - sent)
            c.sock.sendall(piece[:n])
            sent += n
        r = c.response()
        assert r.status == 200
        assert r.body.split(b" ")[0] == b"%d" % total


def test_early_response_during_a_large_upload_is_delivered_and_the_body_drained():
    """The origin answers without reading the body (then stops reading): the client gets the
    answer, its upload is drained rather than stalled, and the connection stays usable."""
    def on_head(req, transport):
        if req.url == b"/early":
            transport.pause_reading()
            # Answer once the proxy has had to stop feeding this upstream.
            origin.loop.call_later(0.3, transport.write, ok(b"early"))

    size = 8 << 20
    config = proxy_config("{url}", server='max_body_size = "16m"')
    with Origin(lambda req: ok(b"next"), on_head=on_head) as origin, \
            InProcessProxy(config.replace("{url}", origin.url)) as proxy, \
            Conn(proxy.port, timeout=10) as c:
        c.send(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        errors = []

        def upload():
            try:
                c.sock.sendall(b"u" * size)
            except OSError as exc:
                errors.append(exc)

        sender = threading.Thread(target=upload)
        sender.start()
        r = c.response()
        assert r.status == 200 and r.body == b"early"
        sender.join(10)
        assert not sender.is_alive() and not errors
        assert c.request("GET", "/after").body == b"next"


def test_body_over_the_limit_after_an_early_response_closes():
    def on_head(req, transport):
        transport.write(ok(b"early"))

    with Origin(lambda req: b"", on_head=on_head) as origin, \
            InProcessProxy(proxy_config(origin.url, server="max_body_size = 1000")) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"POST /early HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"10\r\n0123456789abcdef\r\n")
        r = c.response()
        assert r.status == 200 and r.body == b"early"
        c.send(b"7d0\r\n" + b"x" * 2000 + b"\r\n")
        assert c.closed()


def test_expect_100_continue_gets_interim_then_final_response():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
               b"Expect: 100-continue\r\n\r\n")
        interim = c.response()
        assert interim.status == 100
        c.send(b"hello")
        r = c.response()
        assert r.status == 200 and r.body == b"hello"
        # The proxy asked for the body itself; Expect is not forwarded.
        assert origin.requests[0].header(b"expect") is None
        assert c.request("GET", "/after").body == b"/after"


def test_expect_100_continue_with_chunked_body():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
               b"Expect: 100-continue\r\n\r\n")
        assert c.response().status == 100
        c.send(b"5\r\nhello\r\n0\r\n\r\n")
        assert c.response().body == b"hello"


@pytest.mark.parametrize("path, length, status, code", [
    pytest.param("/x", 2000, 413, "body_too_large", id="too-large-by-content-length"),
    pytest.param("/nowhere", 5, 404, "not_found", id="no-route"),
])
def test_request_rejected_before_the_body_gets_no_100_and_closes(path, length, status, code):
    with Origin() as origin, \
            InProcessProxy(proxy_config(origin.url, paths='["/x"]',
                                        server="max_body_size = 1000")) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
               b"Expect: 100-continue\r\n\r\n" % (path.encode(), length))
        r = c.response()
        assert_error(r, status, code)  # the final answer, not a 100
        assert r.header(b"connection") == b"close"
        assert c.closed()
        assert origin.requests == []
