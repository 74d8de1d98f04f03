"""Proxy header semantics: hop-by-hop fields (RFC 9110 §7.6.1) in both directions,
X-Forwarded-*, X-Real-IP, Host and X-Request-ID."""

import re

import pytest

from tests.support.client import Conn
from tests.support.e2e import proxy_config
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

TRUSTED = 'trusted_proxies = ["127.0.0.1/32"]'


def one_request(headers, config_kw=None, path="/h", host=b"test", handler=None):
    """(origin's view of the request, client's response)."""
    with Origin(handler or (lambda req: ok())) as origin, \
            InProcessProxy(proxy_config(origin.url, **(config_kw or {}))) as proxy, \
            Conn(proxy.port) as c:
        r = c.request("GET", path, headers=headers, host=host)
        assert r.status == 200
        return origin.requests[0], r


def names(headers) -> set:
    return {n.lower() for n, _ in headers}


@pytest.mark.parametrize("server", ["", 'tracing = "off"'])
def test_hop_by_hop_request_fields_are_not_forwarded(server):
    req, _ = one_request([
        (b"Connection", b"keep-alive, X-Hop-A"),
        (b"Connection", b"x-hop-b"),
        (b"X-Hop-A", b"1"),
        (b"X-Hop-B", b"2"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Sum"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
        (b"Upgrade", b"h2c"),  # no "Connection: upgrade": not an upgrade request
        (b"X-End-To-End", b"kept"),
    ], config_kw={"server": server})
    got = names(req.headers)
    for name in (b"connection", b"x-hop-a", b"x-hop-b", b"keep-alive", b"te", b"trailer",
                 b"proxy-connection", b"proxy-authorization", b"upgrade"):
        assert name not in got, name
    assert req.header(b"x-end-to-end") == b"kept"


def test_hop_by_hop_response_fields_are_not_relayed():
    answer = (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
              b"Keep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\n"
              b"TE: trailers\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n"
              b"Proxy-Authenticate: Basic\r\nX-End-To-End: kept\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 1\r\n\r\n")
    _, r = one_request([], handler=lambda req: answer)
    got = names(r.headers)
    for name in (b"x-secret", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                 b"upgrade", b"proxy-authenticate", b"connection", b"x-sum"):
        assert name not in got, name
    assert r.header(b"x-end-to-end") == b"kept"
    assert r.header(b"transfer-encoding") == b"chunked" and r.body == b"ok"


def test_untrusted_client_forwarding_headers_are_replaced():
    req, _ = one_request([
        (b"X-Forwarded-For", b"6.6.6.6"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"evil.example"),
        (b"X-Real-IP", b"6.6.6.6"),
    ], host=b"shop.example")
    assert req.header(b"x-forwarded-for") == b"127.0.0.1"
    assert req.header(b"x-real-ip") == b"127.0.0.1"
    assert req.header(b"x-forwarded-proto") == b"http"
    assert req.header(b"x-forwarded-host") == b"shop.example"


def test_request_without_forwarding_headers_gets_them():
    req, _ = one_request([], host=b"shop.example:8080")
    assert req.header(b"x-forwarded-for") == b"127.0.0.1"
    assert req.header(b"x-real-ip") == b"127.0.0.1"
    assert req.header(b"x-forwarded-proto") == b"http"
    assert req.header(b"x-forwarded-host") == b"shop.example:8080"


@pytest.mark.parametrize("trusted, xff, forwarded_for, real_ip", [
    pytest.param(TRUSTED, [b"1.2.3.4"], b"1.2.3.4, 127.0.0.1", b"1.2.3.4", id="one-hop"),
    pytest.param(TRUSTED, [b"1.2.3.4, 10.0.0.1"], b"1.2.3.4, 10.0.0.1, 127.0.0.1",
                 b"10.0.0.1", id="rightmost-untrusted-hop"),
    pytest.param('trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]', [b"1.2.3.4, 10.0.0.1"],
                 b"1.2.3.4, 10.0.0.1, 127.0.0.1", b"1.2.3.4", id="trusted-chain-skipped"),
    pytest.param(TRUSTED, [b"1.2.3.4", b"5.6.7.8"], b"1.2.3.4, 5.6.7.8, 127.0.0.1",
                 b"5.6.7.8", id="two-header-lines"),
    pytest.param(TRUSTED, [b"unknown, 1.2.3.4"], b"unknown, 1.2.3.4, 127.0.0.1", b"1.2.3.4",
                 id="garbage-left-of-the-client"),
    pytest.param(TRUSTED, [b"1.2.3.4, garbage"], b"1.2.3.4, garbage, 127.0.0.1",
                 b"127.0.0.1", id="garbage-hop-falls-back-to-peer"),
    pytest.param(TRUSTED, [b""], b"127.0.0.1", b"127.0.0.1", id="empty-header"),
    pytest.param("", [b"1.2.3.4"], b"127.0.0.1", b"127.0.0.1", id="untrusted-peer"),
    pytest.param('trusted_proxies = ["10.0.0.0/8"]', [b"1.2.3.4"], b"127.0.0.1",
                 b"127.0.0.1", id="peer-not-in-trusted-list"),
])
def test_x_forwarded_for_and_real_ip(trusted, xff, forwarded_for, real_ip):
    req, _ = one_request([(b"X-Forwarded-For", v) for v in xff], {"server": trusted})
    assert req.header(b"x-forwarded-for") == forwarded_for
    assert req.header(b"x-real-ip") == real_ip


def test_trusted_proxy_forwarded_proto_and_host_are_kept():
    req, _ = one_request([(b"X-Forwarded-Proto", b"https"),
                          (b"X-Forwarded-Host", b"www.example")],
                         {"server": TRUSTED}, host=b"internal")
    assert req.header(b"x-forwarded-proto") == b"https"
    assert req.header(b"x-forwarded-host") == b"www.example"
    assert req.header(b"host") == b"internal"


def test_host_is_preserved_by_default():
    req, _ = one_request([], host=b"Shop.Example:8080")
    assert req.header(b"host") == b"Shop.Example:8080"


def test_upstream_host_overrides_host():
    req, _ = one_request([], {"upstream": 'host = "backend.internal"'}, host=b"shop.example")
    assert req.header(b"host") == b"backend.internal"
    assert req.header(b"x-forwarded-host") == b"shop.example"


def test_absolute_form_target_sets_host():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as proxy, \
            Conn(proxy.port) as c:
        c.send(b"GET http://abs.example:81/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
        r = c.response()
        assert r.body == b"/p?q=1"
        assert origin.requests[0].header(b"host") == b"abs.example:81"


HEX32 = re.compile(rb"[0-9a-f]{32}")


def test_request_id_is_generated_sent_upstream_and_returned():
    with Origin(lambda req: ok(headers=[(b"X-Request-ID", b"from-origin")])) as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy, Conn(proxy.port) as c:
        ids = []
        for _ in range(3):
            r = c.request("GET", "/")
            rid = r.header(b"x-request-id")
            assert isinstance(rid, bytes) and HEX32.fullmatch(rid)  # one value, ours
            ids.append(rid)
        assert len(set(ids)) == 3
        assert [req.header(b"x-request-id") for req in origin.requests] == ids


@pytest.mark.parametrize("given, kept", [
    pytest.param(b"abc-123", True, id="simple"),
    pytest.param(b"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", True, id="uuid"),
    pytest.param(b"trace:1/2+3=4@x_y.z", True, id="punctuation"),
    pytest.param(b"a" * 200, True, id="200-chars"),
    pytest.param(b"a" * 201, False, id="too-long"),
    pytest.param(b"has space", False, id="space"),
    pytest.param(b"quote\"d", False, id="quote"),
    pytest.param(b"caf\xc3\xa9", False, id="non-ascii"),
])
def test_client_request_id_kept_when_valid(given, kept):
    req, r = one_request([(b"X-Request-ID", given)])
    rid = r.header(b"x-request-id")
    assert req.header(b"x-request-id") == rid
    if kept:
        assert rid == given
    else:
        assert HEX32.fullmatch(rid)


# -- Via (RFC 9110 §7.6.3): the proxy's entry on every message it forwards, after any received

def test_via_is_added_to_a_forwarded_request_and_response():
    req, r = one_request([])
    assert req.header(b"via") == b"1.1 edgeproxy"
    assert r.header(b"via") == b"1.1 edgeproxy"


def test_via_is_appended_to_the_received_entries_as_one_list():
    def handler(req):
        return ok(headers=[(b"Via", b"1.1 cache-a"), (b"Via", b"1.0 cache-b")])

    req, r = one_request([(b"Via", b"1.1 client-proxy"), (b"Via", b"1.0 corp")],
                         handler=handler)
    assert req.header(b"via") == b"1.1 client-proxy, 1.0 corp, 1.1 edgeproxy"
    assert r.header(b"via") == b"1.1 cache-a, 1.0 cache-b, 1.1 edgeproxy"


def test_via_names_the_version_of_the_message_received():
    # received-protocol is the version each message came in: HTTP/1.0 from the client and
    # from the upstream, though the proxy speaks 1.1 on both sides.
    with Origin(lambda req: b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok") as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy, Conn(proxy.port) as c:
        c.send(b"GET /old HTTP/1.0\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.header(b"via") == b"1.0 edgeproxy"
    assert origin.requests[0].header(b"via") == b"1.0 edgeproxy"


def test_via_pseudonym_is_configurable():
    req, r = one_request([], {"server": 'via = "edge-7.example"'})
    assert req.header(b"via") == b"1.1 edge-7.example"
    assert r.header(b"via") == b"1.1 edge-7.example"


def test_via_off_adds_none_and_relays_what_came():
    def handler(req):
        return ok(headers=[(b"Via", b"1.1 cache-a")])

    req, r = one_request([(b"Via", b"1.1 corp")], {"server": 'via = "off"'}, handler=handler)
    assert req.header(b"via") == b"1.1 corp"
    assert r.header(b"via") == b"1.1 cache-a"
    req, r = one_request([], {"server": 'via = "off"'})
    assert req.header(b"via") is None and r.header(b"via") is None


def test_via_named_by_connection_is_hop_by_hop():
    def handler(req):
        return ok(headers=[(b"Connection", b"via"), (b"Via", b"1.1 inner")])

    req, r = one_request([(b"Connection", b"via"), (b"Via", b"1.1 outer")], handler=handler)
    assert req.header(b"via") == b"1.1 edgeproxy"
    assert r.header(b"via") == b"1.1 edgeproxy"


def test_the_proxys_own_answers_carry_no_via():
    # Via records the intermediaries between the origin server and the client (RFC 9110
    # §7.6.3); of an answer the proxy makes itself it is the origin: there are none.
    with Origin() as origin, InProcessProxy(proxy_config(origin.url, paths='["/p"]')) as proxy, \
            Conn(proxy.port) as c:
        r = c.request("GET", "/nowhere")
        assert r.status == 404 and r.header(b"via") is None
