"""Bad request framing and malformed upstream responses, over real sockets.

Every malformed request gets the proxy's JSON error (RFC 9112 framing rules) and the connection
closed, and never reaches the origin; every malformed upstream response becomes a 502 and is
never relayed.
"""

import threading
import time

import pytest

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config, send_and_read, wait_until
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy


@pytest.fixture(scope="module")
def origin():
    with Origin() as o:
        yield o


@pytest.fixture(scope="module")
def proxy(origin):
    with InProcessProxy(proxy_config(origin.url)) as p:
        yield p


def post(headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST /x HTTP/%s\r\nHost: t\r\n%s\r\n%s" % (version, headers, body)


BAD_REQUESTS = [
    # RFC 9112 §6.1 / §6.3: ambiguous or invalid framing.
    pytest.param(post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
                 400, "bad_framing", id="content-length-with-transfer-encoding"),
    pytest.param(post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
                 400, "bad_framing", id="duplicate-content-length"),
    pytest.param(post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
                 400, "bad_framing", id="different-content-lengths"),
    pytest.param(post(b"Content-Length: 5, 5\r\n", b"hello"),
                 400, "bad_framing", id="content-length-list"),
    pytest.param(post(b"Content-Length: abc\r\n"), 400, "bad_framing",
                 id="content-length-not-a-number"),
    pytest.param(post(b"Content-Length: -1\r\n"), 400, "bad_framing",
                 id="content-length-negative"),
    pytest.param(post(b"Content-Length: +5\r\n", b"hello"), 400, "bad_framing",
                 id="content-length-plus-sign"),
    pytest.param(post(b"Content-Length: 99999999999999999999999\r\n"), 400, "bad_framing",
                 id="content-length-overflow"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", version=b"1.0"),
                 400, "bad_framing", id="transfer-encoding-on-http10"),
    pytest.param(post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
                 400, "bad_framing", id="chunked-not-final"),
    pytest.param(post(b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n"),
                 400, "bad_framing", id="transfer-encoding-without-chunked"),
    pytest.param(post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
                 501, "not_implemented", id="unknown-coding-before-chunked"),
    pytest.param(post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                      b"0\r\n\r\n"),
                 501, "not_implemented", id="unknown-coding-on-second-line"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"),
                 400, "bad_framing", id="invalid-chunk-size"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"),
                 400, "bad_framing", id="chunk-data-longer-than-size"),
    # RFC 9112 §3.2: exactly one valid Host in every HTTP/1.1 request.
    pytest.param(b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400, "bad_host", id="missing-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_host",
                 id="two-host-headers"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "bad_host",
                 id="two-equal-host-headers"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "bad_host",
                 id="host-with-space"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "bad_host",
                 id="host-with-slash"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400, "bad_host",
                 id="host-with-userinfo"),
    pytest.param(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_host",
                 id="two-host-headers-http10"),
    pytest.param(b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target",
                 id="absolute-form-with-userinfo"),
    pytest.param(b"GET example.com HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target",
                 id="target-not-origin-or-absolute-form"),
    # RFC 9110 §5.5 / RFC 9112 §5: field syntax.
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", 400, "bad_request",
                 id="nul-in-field-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400, "bad_request",
                 id="bare-cr-in-field-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\nX-B: b\r\n\r\n", 400, "bad_request",
                 id="bare-lf-in-field-value"),
    pytest.param(b"GET / HTTP/1.1\nHost: t\n\n", 400, "bad_request", id="bare-lf-line-ends"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", 400, "bad_request",
                 id="ctl-in-field-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n", 400, "bad_request",
                 id="del-in-field-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX A: 1\r\n\r\n", 400, "bad_request",
                 id="space-in-field-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-A : 1\r\n\r\n", 400, "bad_request",
                 id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX(A): 1\r\n\r\n", 400, "bad_request",
                 id="separator-in-field-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\n: 1\r\n\r\n", 400, "bad_request",
                 id="empty-field-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n", 400, "bad_request",
                 id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n\tb\r\n\r\n", 400, "bad_request",
                 id="obs-fold-tab"),
    # RFC 9110 §15.6.6: major versions other than 1 are not supported.
    pytest.param(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505, "version_not_supported",
                 id="http2-request-line"),
    pytest.param(b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505, "version_not_supported",
                 id="http3-request-line"),
    pytest.param(b"GET / FOO/1.1\r\nHost: t\r\n\r\n", 400, "bad_request",
                 id="not-http-protocol"),
    pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40, 400,
                 "bad_request", id="tls-client-hello"),
    pytest.param(b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400, None, id="space-in-target"),
]


@pytest.mark.parametrize("data, status, code", BAD_REQUESTS)
def test_bad_request_gets_json_error_and_close(proxy, origin, data, status, code):
    before = len(origin.requests)
    r, closed = send_and_read(proxy.port, data)
    assert_error(r, status, code)
    assert r.header(b"connection") == b"close"
    assert closed
    assert len(origin.requests) == before  # never forwarded


def test_bad_request_after_a_good_one_answers_both_in_order(proxy, origin):
    data = (b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: t\r\nX A: 1\r\n\r\n")
    with Conn(proxy.port) as c:
        c.send(data)
        first = c.response()
        assert first.status == 200 and first.body == b"/first"
        assert_error(c.response(), 400, "bad_request")
        assert c.closed()


def test_invalid_chunk_mid_stream_aborts_upstream_and_answers_400():
    seen = threading.Event()
    with Origin(on_head=lambda req, t: seen.set()) as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy, Conn(proxy.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n")
        assert seen.wait(5)
        c.send(b"zz\r\n")
        assert_error(c.response(), 400, "bad_framing")
        assert c.closed()
        assert origin.requests == []  # the half-sent request was never completed upstream
        assert wait_until(lambda: origin.lost)
        assert isinstance(origin.lost[0], ConnectionResetError)  # a reset, not a FIN


CHUNKED_POST = b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"

# RFC 9112 §7.1: chunk-size is hex digits a recipient must be able to hold, and every chunk line
# ends in CRLF (§2.2: a bare LF is not a line end a proxy may accept and re-frame).
MALFORMED_BODIES = [
    pytest.param(b"10000000000000005\r\nhello\r\n0\r\n\r\n", id="chunk-size-overflows-64-bits"),
    pytest.param(b"5\nhello\n0\n\n", id="bare-lf-chunk-lines"),
    pytest.param(b"5\r\nhello\n0\r\n\r\n", id="bare-lf-after-chunk-data"),
]


@pytest.mark.parametrize("pool", ["idle-pooled-connection", "cold-pool"])
@pytest.mark.parametrize("body", MALFORMED_BODIES)
def test_a_malformed_body_in_the_read_of_its_head_sends_nothing_upstream(body, pool):
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as p:
        if pool == "idle-pooled-connection":
            with Conn(p.port) as c:
                assert c.request("GET", "/warm").status == 200
        seen = len(origin.raw)
        with Conn(p.port) as c:
            c.send(CHUNKED_POST + body)  # one write: head and body arrive in one read
            assert_error(c.response(), 400, "bad_framing")
            assert c.closed()
        time.sleep(0.2)  # (what was sent would have arrived by now)
        assert origin.raw[seen:] == []  # not even the head
        if pool == "idle-pooled-connection":
            with Conn(p.port) as c:  # the idle connection was left alone: it is reused
                assert c.request("GET", "/again").body == b"/again"
            assert origin.connections == 1 and origin.lost == []
        else:
            assert origin.connections == 0  # not even a connect


def test_a_good_request_before_a_malformed_body_in_the_same_read_is_answered():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as p, Conn(p.port) as c:
        c.send(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n" + CHUNKED_POST + b"5\nhello\n0\n\n")
        assert c.response().body == b"/first"
        assert_error(c.response(), 400, "bad_framing")
        assert c.closed()
        time.sleep(0.2)
        assert b"".join(origin.raw).count(b"HTTP/1.1") == 1  # only GET /first went upstream


def test_body_bytes_of_a_read_that_turns_out_bad_are_not_sent_and_the_upstream_is_reset():
    seen = threading.Event()
    with Origin(on_head=lambda req, t: seen.set()) as origin, \
            InProcessProxy(proxy_config(origin.url)) as p, Conn(p.port) as c:
        c.send(CHUNKED_POST + b"5\r\nhello\r\n")
        assert seen.wait(5)  # the head and the first chunk went upstream
        assert wait_until(lambda: b"hello" in b"".join(origin.raw))
        c.send(b"5\r\nworld\r\n10000000000000005\r\n")  # a good chunk, then an overflow
        assert_error(c.response(), 400, "bad_framing")
        assert wait_until(lambda: origin.lost)
        assert isinstance(origin.lost[0], ConnectionResetError)
        assert b"world" not in b"".join(origin.raw)
        assert origin.requests == []


def test_a_413_while_the_body_streams_resets_the_upstream():
    seen = threading.Event()
    config = proxy_config("URL", route="max_body_size = 10")
    with Origin(on_head=lambda req, t: seen.set()) as origin, \
            InProcessProxy(config.replace("URL", origin.url)) as p, Conn(p.port) as c:
        c.send(CHUNKED_POST + b"5\r\nhello\r\n")
        assert seen.wait(5)
        c.send(b"a\r\n0123456789\r\n")  # 15 bytes: over the route's 10
        assert_error(c.response(), 413, "body_too_large")
        assert wait_until(lambda: origin.lost)
        assert isinstance(origin.lost[0], ConnectionResetError)
        assert origin.requests == []


def test_a_client_that_leaves_mid_body_resets_the_upstream():
    seen = threading.Event()
    with Origin(on_head=lambda req, t: seen.set()) as origin, \
            InProcessProxy(proxy_config(origin.url)) as p:
        with Conn(p.port) as c:
            c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
            assert seen.wait(5)
        assert wait_until(lambda: origin.lost)
        assert isinstance(origin.lost[0], ConnectionResetError)
        assert origin.requests == []


MALFORMED_RESPONSES = [
    pytest.param(b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nno", id="bad-status-code"),
    pytest.param(b"HTTP/1.1 1000 OK\r\nContent-Length: 2\r\n\r\nno", id="status-too-long"),
    pytest.param(b"garbage\r\n\r\n", id="not-http"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"2\r\nno\r\n0\r\n\r\n", id="content-length-with-transfer-encoding"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nno",
                 id="duplicate-content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nno!",
                 id="different-content-lengths"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nno",
                 id="invalid-content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nno", id="gzip-only"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                 b"2\r\nno\r\n0\r\n\r\n", id="gzip-then-chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nno",
                 id="obs-fold"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nno",
                 id="nul-in-field-value"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: upgrade\r\n\r\nno", id="101-without-upgrade-request"),
]


@pytest.mark.parametrize("answer", MALFORMED_RESPONSES)
def test_malformed_upstream_response_is_502_never_relayed(answer):
    with Origin(lambda req: (answer, "close")) as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy, Conn(proxy.port) as c:
        r = c.request("GET", "/bad")
        assert_error(r, 502, "bad_gateway")
        assert b"no" not in r.body.replace(b"not", b"")
        assert r.header(b"x-a") is None
        assert len(origin.requests) == 1
        # The client connection survives a 502 made before anything was relayed.
        origin.handler = lambda req: ok(b"fine")
        assert c.request("GET", "/next").body == b"fine"


def test_malformed_response_on_reused_upstream_connection_is_not_retried():
    def handler(req):
        if req.url == b"/bad":
            return b"HTTP/1.1 abc\r\n\r\n", "close"
        return ok()

    with Origin(handler) as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        assert c.request("GET", "/good").status == 200
        assert_error(c.request("GET", "/bad"), 502, "bad_gateway")
        assert [r.url for r in origin.requests] == [b"/good", b"/bad"]


ROUTES = """
[server]
access_log = "off"

[[upstreams]]
name = "app"
servers = ["{url}"]

[[routes]]
name = "read-only"
paths = ["/items/*"]
methods = ["GET", "HEAD"]
upstream = "app"
"""


def test_no_route_is_404_json():
    with Origin() as origin, InProcessProxy(ROUTES.format(url=origin.url)) as proxy, \
            Conn(proxy.port) as c:
        r = c.request("GET", "/other")
        assert_error(r, 404, "not_found")
        # A 404 with the request fully read keeps the connection.
        assert c.request("GET", "/items/1").status == 200
        assert origin.requests[0].url == b"/items/1"


def test_wrong_method_is_405_with_allow():
    with Origin() as origin, InProcessProxy(ROUTES.format(url=origin.url)) as proxy, \
            Conn(proxy.port) as c:
        r = c.request("DELETE", "/items/1")
        assert_error(r, 405, "method_not_allowed")
        allow = {m.strip() for m in r.header(b"allow").split(b",")}
        assert allow == {b"GET", b"HEAD"}
        assert origin.requests == []


def test_client_request_id_is_kept_on_errors():
    with Origin() as origin, InProcessProxy(ROUTES.format(url=origin.url)) as proxy, \
            Conn(proxy.port) as c:
        r = c.request("GET", "/other", headers=[(b"X-Request-ID", b"abc-123")])
        assert assert_error(r, 404)["request_id"] == "abc-123"


def test_error_answer_to_head_has_length_but_no_body():
    with Origin() as origin, InProcessProxy(ROUTES.format(url=origin.url)) as proxy, \
            Conn(proxy.port) as c:
        r = c.request("HEAD", "/other")
        assert r.status == 404 and r.body == b""
        assert int(r.header(b"content-length")) > 0
        assert len(r.header(b"x-request-id")) == 32
        assert c.request("GET", "/items/1").status == 200  # no stray body bytes
