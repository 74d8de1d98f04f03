"""Regressions found in review: each test failed before its fix."""

import socket
import time

from engine.chain.context import Chain
from tests.support.client import Conn
from tests.support.e2e import proxy_config
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy


def test_pipelined_body_that_arrives_in_a_later_read_is_read():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as p, Conn(p.port) as c:
        c.send(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
               b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        time.sleep(0.2)
        c.send(b"world")
        assert c.response().body == b"/a"
        assert c.response().body == b"helloworld"


def test_queued_request_body_leaves_the_active_deadline_alone():
    def handler(req):
        return (ok(b"slow"), 1.0) if req.url == b"/slow" else ok(req.body)

    config = proxy_config("URL", server="client_body_timeout = 0.3",
                          upstream="read_timeout = 5")
    with Origin(handler) as origin, InProcessProxy(config.replace("URL", origin.url)) as p:
        with Conn(p.port) as c:
            c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nh")
            time.sleep(0.1)  # /slow is upstream now; the queued body's last byte comes later
            c.send(b"i")
            first = c.response()
            assert (first.status, first.body) == (200, b"slow")
            assert c.response().body == b"hi"


def test_bytes_after_a_complete_upstream_response_are_never_a_later_answer():
    def handler(req):
        if req.url == b"/one":  # a 204 with a "body": the upstream is out of step
            return b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nspoofd"
        return ok(b"real")

    with Origin(handler) as origin, InProcessProxy(proxy_config(origin.url)) as p:
        with Conn(p.port) as c:
            c.send(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\nGET /two HTTP/1.1\r\nHost: t\r\n\r\n")
            assert c.response().status == 204
            assert c.response().body == b"real"
        assert origin.connections == 2  # the out-of-step connection was not reused


def test_static_204_sends_no_body():
    config = """
[server]
access_log = "off"
[[routes]]
name = "empty"
[routes.static]
status = 204
body = "HTTP/1.1 200 OK"
"""
    with InProcessProxy(config) as p, Conn(p.port) as c:
        c.send(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.response().status == 204
        second = c.response()
        assert second.status == 204 and second.body == b""


def test_forwarded_is_relayed_only_from_trusted_proxies():
    header = (b"Forwarded", b"for=1.2.3.4;proto=https")
    with Origin() as origin:
        with InProcessProxy(proxy_config(origin.url)) as p, Conn(p.port) as c:
            c.request("GET", "/", headers=[header])
        assert origin.requests[-1].header(b"forwarded") is None
        trusted = proxy_config(origin.url, server='trusted_proxies = ["127.0.0.1/32"]')
        with InProcessProxy(trusted) as p, Conn(p.port) as c:
            c.request("GET", "/", headers=[header])
        assert origin.requests[-1].header(b"forwarded") == header[1]


def test_an_unknown_expectation_is_417():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as p, Conn(p.port) as c:
        r = c.request("POST", "/", headers=[(b"Expect", b"something-else")], body=b"x")
        assert r.status == 417 and r.json()["error"]["code"] == "expectation_failed"
        assert not origin.requests


def test_bytes_sent_before_a_101_are_bounded():
    def never_answers(req, rest):
        return b""

    origin = Origin()
    origin.on_upgrade = never_answers
    config = proxy_config("URL", upstream="read_timeout = 5")
    with origin, InProcessProxy(config.replace("URL", origin.url)) as p:
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        s.setblocking(False)
        chunk = b"x" * 65536
        sent = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.05)
        held = p.call(lambda: [sum(map(len, c.tunnel_pending or ()))
                               if c.ex is not None else 0 for c in p.worker.conns])
        s.close()
    assert max(held) < 2 * 1024 * 1024, (sent, held)


def test_a_failing_filter_is_a_500_not_the_clients_fault(capfd):
    class Broken:
        PHASE = 0

        def on_request(self, ctx):
            raise RuntimeError("filter bug")

    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as p:
        route = p.worker.runtime.routes[0]
        p.call(setattr, route, "chain", Chain([Broken()]))
        with Conn(p.port) as c:
            r = c.request("GET", "/")
            assert r.status == 500 and r.json()["error"]["code"] == "internal_error"
            assert c.closed()
        with Conn(p.port) as c:  # the worker serves on
            assert c.request("GET", "/").status == 500
        assert not origin.requests
    assert "filter bug" in capfd.readouterr().err
