"""The request line over real sockets: any token method is forwarded (RFC 9110 §9.1), "OPTIONS *"
is answered (RFC 9112 §3.2.4), a malformed line is a 400 at once and only a well-formed line
with an unsupported version is a 505; HTTP/1.2-1.9 are served as 1.1 (RFC 9110 §2.5)."""

import time

import pytest

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config, send_and_read
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy


@pytest.fixture(scope="module")
def origin():
    with Origin() as o:
        yield o


@pytest.fixture(scope="module")
def proxy(origin):
    with InProcessProxy(proxy_config(origin.url)) as p:
        yield p


# llhttp's own list has the first three, not the others; "get" is a method of its own (§9.1:
# case-sensitive), not GET.
@pytest.mark.parametrize("method", ["PURGE", "PROPFIND", "LINK", "FOOBAR", "DESCRIBE",
                                    "X-Custom_1.0", "get"])
def test_any_token_method_is_forwarded(proxy, origin, method):
    with Conn(proxy.port) as c:
        r = c.request(method, "/m?q=1", body=b"hi")
        assert (r.status, r.body) == (200, b"hi")
        again = c.request(method, "/again")  # the connection goes on
        assert (again.status, again.body) == (200, b"/again")
    req = origin.requests[-2]
    assert (req.method, req.url, req.body) == (method.encode(), b"/m?q=1", b"hi")


@pytest.mark.parametrize("parts", [
    pytest.param([b"FOO", b"BAR /split HTTP/1.1\r\nHost: t\r\n\r\n"], id="in-the-method"),
    pytest.param([b"FOOBAR /spl", b"it HTTP/1.1\r\nHost: t\r\n\r\n"], id="in-the-target"),
])
def test_an_extension_method_split_across_reads_is_forwarded(proxy, origin, parts):
    with Conn(proxy.port) as c:
        for part in parts:
            c.send(part)
            time.sleep(0.1)
        assert c.response().body == b"/split"
    assert origin.requests[-1].method == b"FOOBAR"


def test_an_extension_method_pipelined_mid_read_is_left_for_the_client_to_retry(proxy, origin):
    # llhttp tells no offsets, so a request that starts inside a read cannot be shown the
    # placeholder: the one before it is answered with "Connection: close" and this one is
    # left unanswered, which a client retries on a new connection (RFC 9112 §9.3.2).
    with Conn(proxy.port) as c:
        c.send(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\nFOOBAR /second HTTP/1.1\r\nHost: t\r\n\r\n")
        r = c.response()
        assert r.body == b"/first" and r.header(b"connection") == b"close"
        assert c.closed()
    with Conn(proxy.port) as c:  # the retry, first in its read
        assert c.request("FOOBAR", "/second").body == b"/second"


def test_a_route_may_list_extension_methods(origin):
    config = proxy_config(origin.url, route='methods = ["PURGE", "GET"]', paths='["/cache/*"]')
    with InProcessProxy(config) as p, Conn(p.port) as c:
        assert c.request("PURGE", "/cache/a").status == 200
        r = c.request("BAN", "/cache/a")
        assert_error(r, 405, "method_not_allowed")
        assert r.header(b"allow") == b"GET, PURGE"
    assert origin.requests[-1].method == b"PURGE"


def test_options_asterisk_is_answered_by_the_proxy(origin):
    extra = '[filters.headers.response]\nadd = { "X-Served-By" = "edge" }'
    with InProcessProxy(proxy_config(origin.url, extra=extra)) as p, Conn(p.port) as c:
        before = len(origin.requests)
        c.send(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")
        r = c.response()
        assert (r.status, r.body) == (200, b"")
        assert r.header(b"content-length") == b"0"  # RFC 9110 §9.3.7
        assert r.header(b"x-served-by") == b"edge"  # server-wide response filters ran
        assert c.request("GET", "/next").status == 200  # the connection goes on
        assert len(origin.requests) == before + 1


MALFORMED_LINES = [
    pytest.param(b"GET / HTTP/1.1 x\r\nHost: t\r\n\r\n", "bad_request", id="text-after-version"),
    pytest.param(b"GET / HTTP/11.1\r\nHost: t\r\n\r\n", "bad_request", id="two-digit-major"),
    pytest.param(b"GET / HTTP/1\r\nHost: t\r\n\r\n", "bad_request", id="no-minor-version"),
    pytest.param(b"GET / HTTP/a.b\r\nHost: t\r\n\r\n", "bad_request", id="letters-as-version"),
    pytest.param(b"GET / http/1.1\r\nHost: t\r\n\r\n", "bad_request", id="lowercase-protocol"),
    pytest.param(b"GET\r\nHost: t\r\n\r\n", "bad_request", id="method-alone"),
    pytest.param(b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n", "bad_request", id="method-not-a-token"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", "bad_target", id="asterisk-not-options"),
    pytest.param(b"GET /path\r\nHost: t\r\n\r\n", "bad_request", id="http09-line-with-fields"),
]


@pytest.mark.parametrize("data, code", MALFORMED_LINES)
def test_a_malformed_request_line_is_400(proxy, origin, data, code):
    before = len(origin.requests)
    r, closed = send_and_read(proxy.port, data)
    assert_error(r, 400, code)
    assert closed
    assert len(origin.requests) == before


@pytest.mark.parametrize("data", [
    pytest.param(b"GET / HTTP/0.9\r\nHost: t\r\n\r\n", id="http-0.9"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", id="http-2.0"),
    pytest.param(b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", id="http-3.0"),
])
def test_a_well_formed_line_with_an_unsupported_version_is_505(proxy, data):
    r, closed = send_and_read(proxy.port, data)
    assert_error(r, 505, "version_not_supported")
    assert closed


@pytest.mark.parametrize("method", [b"GET", b"POST", b"PROPFIND"])
@pytest.mark.parametrize("minor", [b"2", b"9"])
def test_a_higher_http1_minor_version_is_served_as_http11(proxy, origin, method, minor):
    # RFC 9110 §2.5: processed as the highest minor version of major 1 we implement.
    with Conn(proxy.port) as c:
        c.send(method + b" /v?x=1 HTTP/1." + minor + b"\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        r = c.response()
        assert r.status == 200
        again = c.request("GET", "/again")  # keep-alive, as for 1.1
        assert (again.status, again.body) == (200, b"/again")
    req = origin.requests[-2]
    assert (req.method, req.url, req.body) == (method, b"/v?x=1", b"hi")


@pytest.mark.parametrize("parts", [
    pytest.param([b"GET /path\r\n"], id="one-read"),
    pytest.param([b"GET /pa", b"th\r\n"], id="split-line"),
    pytest.param([b"FOO /pa", b"th\r\n"], id="split-line-extension-method"),
    pytest.param([b"GET ", b" /pa", b"th", b"\r\n"], id="split-target"),
    pytest.param([b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /path\r\n"], id="after-a-request"),
])
def test_an_http09_request_line_is_400_at_once(proxy, parts):
    # Without a version llhttp takes the line for HTTP/0.9 and waits for a header section:
    # the client, waiting for an answer, would get a 408 a minute later.
    with Conn(proxy.port, timeout=2.0) as c:
        for part in parts:
            c.send(part)
            time.sleep(0.05)
        if len(parts) > 1 and parts[0].endswith(b"\r\n\r\n"):
            assert c.response().status == 200
        assert_error(c.response(), 400, "bad_request")
        assert c.closed()


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_connect_is_refused_alike_in_both_versions(proxy, version):
    # An authority-form target is for a forward proxy, which this gateway is not (RFC 9110
    # §9.3.6): 400 and the connection closes, whatever the version.
    with Conn(proxy.port) as c:
        c.send(f"CONNECT example.com:443 HTTP/{version}\r\nHost: example.com:443\r\n\r\n"
               .encode())
        r = c.response()
        assert_error(r, 400, "bad_target")
        assert c.closed()
