"""Client connection persistence (RFC 9112 §9.3), pipelining (§9.3.2) and HTTP/1.0 clients."""

import socket
import struct
import time

import pytest

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config, wait_until
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy


def chunked(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))


def get(path: str, version: bytes = b"1.1", headers: bytes = b"Host: t\r\n") -> bytes:
    return b"GET %s HTTP/%s\r\n%s\r\n" % (path.encode(), version, headers)


def test_http11_connection_is_kept_alive_across_requests():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        for i in range(4):
            r = c.request("GET", f"/r{i}")
            assert r.status == 200 and r.body == f"/r{i}".encode()
            assert r.header(b"connection") is None
        assert origin.connections == 1
        assert {req.conn_id for req in origin.requests} == {1}


def test_pipelined_requests_are_answered_in_order():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"".join(get(f"/p{i}") for i in range(6)))
        for i in range(6):
            r = c.response()
            assert r.status == 200 and r.body == f"/p{i}".encode()


def test_pipelined_answers_keep_order_when_an_earlier_one_is_slow():
    def handler(req):
        if req.url == b"/slow":
            return ok(b"slow"), 0.3  # written 0.3 s later
        return ok(req.url)

    with Origin(handler) as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(get("/fast0") + get("/slow") + get("/fast1") + get("/fast2"))
        assert [c.response().body for _ in range(4)] == [b"/fast0", b"slow", b"/fast1",
                                                         b"/fast2"]


def _client_write_buffers(proxy) -> int:
    return sum(p.transport.get_write_buffer_size() for p in proxy.worker.conns)


def test_pipelined_responses_to_a_client_that_does_not_read_are_not_buffered():
    """A hundred pipelined requests for 100 KB each, and a client that reads nothing: once
    the client's buffer is full the proxy must stop reading upstreams, also for the
    exchanges that start after it filled, instead of holding all 10 MB."""
    body = b"r" * (100 << 10)
    with Origin(lambda req: ok(body)) as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy, Conn(proxy.port, 10) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        c.send(b"".join(get(f"/big{i}") for i in range(100)))
        time.sleep(0.5)
        assert proxy.call(_client_write_buffers, proxy) < 1 << 20
        for _ in range(100):
            assert c.response().body == body


def test_pipelined_requests_with_bodies():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
               b"POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\nde\r\n1\r\nf\r\n0\r\n\r\n"
               b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n")
        assert [c.response().body for _ in range(3)] == [b"abc", b"def", b"/c"]


def test_pipelined_error_answer_waits_for_earlier_response():
    def handler(req):
        return ok(b"slow"), 0.2

    with Origin(handler) as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(get("/slow") + get("/bad", headers=b""))  # second lacks Host
        assert c.response().body == b"slow"
        assert_error(c.response(), 400, "bad_host")
        assert c.closed()


def test_connection_close_closes_after_the_response():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        r = c.request("GET", "/x", headers=[(b"Connection", b"close")])
        assert r.status == 200 and r.header(b"connection") == b"close"
        assert c.closed()


@pytest.mark.parametrize("first", [
    pytest.param("/proxied", id="after-proxied-answer"),
    pytest.param("/none", id="after-own-answer"),
])
def test_requests_after_connection_close_are_not_processed(first):
    # RFC 9112 §9.6: after "close" the server must not process further requests.
    extra = """
[[routes]]
name = "static"
paths = ["/none"]
[routes.static]
body = "own"
"""
    with Origin() as origin, \
            InProcessProxy(proxy_config(origin.url, paths='["/proxied", "/later"]',
                                        extra=extra)) as proxy, Conn(proxy.port) as c:
        c.send(get(first, headers=b"Host: t\r\nConnection: close\r\n") + get("/later"))
        r = c.response()
        assert r.status == 200 and r.header(b"connection") == b"close"
        assert c.closed()
        assert b"/later" not in [req.url for req in origin.requests]


def test_request_after_an_early_answer_with_unread_body_is_not_processed():
    # The 404 comes before the body was read, so the connection closes after it; the GET
    # that arrives with the rest of the body must not be forwarded.
    with Origin() as origin, InProcessProxy(proxy_config(origin.url, paths='["/ok"]')) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"POST /none HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n")
        r = c.response()
        assert_error(r, 404, "not_found")
        assert r.header(b"connection") == b"close"
        c.send(b"abc" + get("/ok"))
        assert c.closed()
        assert origin.requests == []


def test_a_body_that_came_with_its_head_is_read_before_the_answer():
    # The whole read is parsed before the request starts: the POST is complete when its 404
    # is written, so the connection stays open and the pipelined GET is answered.
    with Origin() as origin, InProcessProxy(proxy_config(origin.url, paths='["/ok"]')) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"POST /none HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc" + get("/ok"))
        r = c.response()
        assert_error(r, 404, "not_found")
        assert r.header(b"connection") is None
        assert c.response().body == b"/ok"


def test_keepalive_requests_limit_closes_the_connection():
    with Origin() as origin, \
            InProcessProxy(proxy_config(origin.url, server="keepalive_requests = 3")) as proxy, \
            Conn(proxy.port) as c:
        assert c.request("GET", "/1").header(b"connection") is None
        assert c.request("GET", "/2").header(b"connection") is None
        assert c.request("GET", "/3").header(b"connection") == b"close"
        assert c.closed()


def test_http10_without_host_is_served_and_closed():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(get("/old", version=b"1.0", headers=b""))
        r = c.response()
        assert r.status == 200 and r.body == b"/old"
        assert r.header(b"connection") == b"close"
        assert c.closed()
        req = origin.requests[0]
        assert req.version == "1.1"
        assert req.header(b"host") == f"127.0.0.1:{origin.port}".encode()


def test_http10_keepalive_only_when_asked():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        for i in range(3):
            c.send(get(f"/k{i}", version=b"1.0", headers=b"Connection: keep-alive\r\n"))
            r = c.response()
            assert r.status == 200 and r.body == f"/k{i}".encode()
            assert r.header(b"connection") == b"keep-alive"
        assert origin.connections == 1


@pytest.mark.parametrize("answer", [
    pytest.param(chunked(b"chunked body"), id="upstream-chunked"),
    pytest.param((b"HTTP/1.1 200 OK\r\n\r\nchunked body", "close"), id="upstream-close-delimited"),
    pytest.param((b"HTTP/1.0 200 OK\r\n\r\nchunked body", "close"), id="upstream-http10"),
])
def test_http10_client_gets_close_delimited_body_when_length_is_unknown(answer):
    with Origin(lambda req: answer) as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy, Conn(proxy.port) as c:
        c.send(get("/x", version=b"1.0", headers=b"Host: t\r\nConnection: keep-alive\r\n"))
        r = c.response()
        assert r.status == 200
        assert r.header(b"transfer-encoding") is None and r.header(b"content-length") is None
        assert r.header(b"connection") == b"close"
        assert r.body == b"chunked body" and r.complete
        assert c.closed()


def test_http10_client_gets_content_length_when_upstream_sent_one():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(get("/cl", version=b"1.0", headers=b"Connection: keep-alive\r\n"))
        r = c.response()
        assert r.header(b"content-length") == b"3" and r.body == b"/cl"
        assert r.header(b"connection") == b"keep-alive"
        assert not c.closed(0.2)


# -- half-close: a client that shuts down its sending side still reads its answers

def slow(req):
    return ok(req.body or req.url), 0.3  # answered after the client has half-closed


def test_a_client_that_half_closes_after_its_request_gets_the_answer():
    with Origin(slow) as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(get("/half"))
        c.sock.shutdown(socket.SHUT_WR)
        r = c.response()
        assert (r.status, r.body) == (200, b"/half")
        assert r.header(b"connection") == b"close"  # the proxy closes after it
        assert c.closed()
    assert [req.url for req in origin.requests] == [b"/half"]


def test_a_client_that_half_closes_after_pipelined_requests_gets_every_answer():
    with Origin(slow) as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(get("/one") + b"POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        c.sock.shutdown(socket.SHUT_WR)
        first = c.response()
        assert first.body == b"/one" and first.header(b"connection") is None
        second = c.response()
        assert second.body == b"hi" and second.header(b"connection") == b"close"
        assert c.closed()


def test_a_half_close_that_cuts_a_request_off_abandons_it():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"POST /cut HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        time.sleep(0.1)
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed() and c.buffer == b""  # no answer: the request can never end
        time.sleep(0.1)
    assert origin.requests == []


def test_a_client_that_resets_is_gone_and_its_upstream_request_is_dropped():
    with Origin(lambda req: (b"", "hang")) as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port), 2)
        s.sendall(get("/gone"))
        assert wait_until(lambda: origin.requests)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset
        assert wait_until(lambda: origin.lost, timeout=2)  # not the upstream's read_timeout
