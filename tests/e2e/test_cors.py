"""CORS at the edge (engine/filters/cors.py) against a real proxy and origin: preflights
answered and never proxied (also on a 405 path and, server-wide, a 404 path), origin
matching on the serialized origin, credentials, Vary, and the proxy's own answers."""

import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from tests.support.client import Conn
from tests.support.e2e import proxy_config
from tests.support.origin import Origin, closed_port, ok
from tests.support.proxy import InProcessProxy

ROUTE_CORS = """
[routes.cors]
allow_origins = ["https://app.example.com", "https://*.example.org", "http://localhost:3000"]
allow_headers = ["Content-Type", "X-Api-Key"]
expose_headers = ["X-Total"]
allow_credentials = true
max_age = 300
allow_private_network = true
"""

ORIGIN_HEADERS = [(b"X-Total", b"3"), (b"Access-Control-Allow-Origin", b"*")]


def preflight(origin, method="PUT", headers=None, extra=()):
    fields = [(b"Origin", origin), (b"Access-Control-Request-Method", method)]
    if headers is not None:
        fields.append((b"Access-Control-Request-Headers", headers))
    return fields + list(extra)


@pytest.fixture(scope="module")
def edge():
    with Origin(lambda req: ok(b"data", headers=ORIGIN_HEADERS)) as origin, \
            InProcessProxy(proxy_config(origin.url, paths='["/api/*"]', route='methods = ["GET", "POST", "PUT"]',
                                        extra=ROUTE_CORS)) as p:
        yield origin, p


def test_preflight_is_answered_at_the_edge(edge):
    origin, p = edge
    before = len(origin.requests)
    with Conn(p.port) as c:
        r = c.request("OPTIONS", "/api/items", headers=preflight(
            b"https://app.example.com", b"PUT", b"content-type, x-api-key"))
    assert r.status == 204
    assert r.header(b"access-control-allow-origin") == b"https://app.example.com"
    assert r.header(b"access-control-allow-credentials") == b"true"
    assert b"PUT" in r.header(b"access-control-allow-methods")
    assert r.header(b"access-control-allow-headers") == b"Content-Type, X-Api-Key"
    assert r.header(b"access-control-max-age") == b"300"
    assert b"Origin" in r.header(b"vary")
    assert len(origin.requests) == before  # never proxied


@pytest.mark.parametrize("origin_value,method,headers,why", [
    pytest.param(b"https://evil.example.com", b"PUT", None, b"origin", id="unlisted-origin"),
    pytest.param(b"https://app.example.com.evil.io", b"PUT", None, b"origin", id="suffix-trick"),
    pytest.param(b"https://evilexample.org", b"PUT", None, b"origin", id="no-label-boundary"),
    pytest.param(b"http://a.example.org", b"PUT", None, b"origin", id="pattern-wrong-scheme"),
    pytest.param(b"https://a.example.org:8443", b"PUT", None, b"origin", id="pattern-wrong-port"),
    pytest.param(b"null", b"PUT", None, b"origin", id="null-unlisted"),
    pytest.param(b"https://app.example.com/path", b"PUT", None, b"origin", id="not-an-origin"),
    pytest.param(b"https://app.example.com", b"TRACE", None, b"method", id="method"),
    pytest.param(b"https://app.example.com", b"PUT", b"x-secret", b"header", id="header"),
])
def test_disallowed_preflight_gets_403_json_without_cors_headers(edge, origin_value, method,
                                                                 headers, why):
    _, p = edge
    with Conn(p.port) as c:
        r = c.request("OPTIONS", "/api/items", headers=preflight(origin_value, method, headers))
    assert r.status == 403
    assert r.json()["error"]["code"] == "cors_forbidden"
    assert why in r.body
    assert r.header(b"access-control-allow-origin") is None


@pytest.mark.parametrize("origin_value", [
    b"https://a.example.org", b"https://a.b.example.org", b"https://A.Example.ORG",
    b"https://app.example.com:443", b"http://localhost:3000",
])
def test_allowed_origins_match_on_the_serialized_origin(edge, origin_value):
    _, p = edge
    with Conn(p.port) as c:
        r = c.request("GET", "/api/items", headers=[(b"Origin", origin_value)])
    assert r.status == 200
    assert r.header(b"access-control-allow-origin") == origin_value


def test_actual_request_gets_origin_credentials_expose_and_vary(edge):
    _, p = edge
    with Conn(p.port) as c:
        r = c.request("GET", "/api/items", headers=[(b"Origin", b"https://app.example.com")])
        plain = c.request("GET", "/api/items")
        denied = c.request("GET", "/api/items", headers=[(b"Origin", b"https://evil.io")])
    # The upstream's own "*" is replaced: a credentialed answer never carries "*".
    assert r.header(b"access-control-allow-origin") == b"https://app.example.com"
    assert r.header(b"access-control-allow-credentials") == b"true"
    assert r.header(b"access-control-expose-headers") == b"X-Total"
    assert r.header(b"vary") == b"Origin"
    # The answer depends on the origin even when there is none: caches must know.
    assert plain.header(b"vary") == b"Origin"
    assert plain.header(b"access-control-allow-origin") is None
    assert denied.status == 200 and denied.header(b"access-control-allow-origin") is None


def test_preflight_to_a_path_whose_route_lacks_options_is_answered_not_405(edge):
    _, p = edge
    with Conn(p.port) as c:
        r = c.request("OPTIONS", "/api/items", headers=preflight(b"https://app.example.com",
                                                                 b"DELETE"))
        wrong = c.request("DELETE", "/api/items", headers=[(b"Origin", b"https://app.example.com")])
    assert r.status == 204  # the route takes GET/POST/PUT, OPTIONS is not listed
    assert wrong.status == 405
    assert wrong.header(b"access-control-allow-origin") == b"https://app.example.com"


def test_private_network_preflight(edge):
    _, p = edge
    with Conn(p.port) as c:
        r = c.request("OPTIONS", "/api/items", headers=preflight(
            b"https://app.example.com", b"GET",
            extra=[(b"Access-Control-Request-Private-Network", b"true")]))
    assert r.status == 204
    assert r.header(b"access-control-allow-private-network") == b"true"


def test_a_plain_options_request_is_not_a_preflight(edge):
    origin, p = edge
    with Conn(p.port) as c:
        r = c.request("OPTIONS", "/api/items", headers=[(b"Origin", b"https://app.example.com")])
    assert r.status == 405  # no Access-Control-Request-Method: an OPTIONS like any other
    assert r.header(b"access-control-allow-origin") == b"https://app.example.com"


SERVER_WIDE = """
[filters.cors]
allow_origins = ["*"]
allow_headers = ["*"]
allow_methods = ["*"]

[[routes]]
name = "down"
paths = ["/down"]
upstream = "dead"

[[upstreams]]
name = "dead"
servers = ["http://127.0.0.1:{port}"]
"""


def test_server_wide_cors_answers_unrouted_paths_and_the_proxys_own_errors():
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/api/*"]',
            extra=SERVER_WIDE.replace("{port}", str(closed_port())))) as p, Conn(p.port) as c:
        pre = c.request("OPTIONS", "/nowhere", headers=preflight(
            b"https://x.test", b"PATCH", b"authorization, x-trace"))
        missing = c.request("GET", "/nowhere", headers=[(b"Origin", b"https://x.test")])
        bad_gateway = c.request("GET", "/down", headers=[(b"Origin", b"https://x.test")])
        null = c.request("GET", "/api/a", headers=[(b"Origin", b"null")])
    assert pre.status == 204
    assert pre.header(b"access-control-allow-origin") == b"*"
    assert pre.header(b"access-control-allow-methods") == b"PATCH"
    assert pre.header(b"access-control-allow-headers") == b"authorization, x-trace"
    assert missing.status == 404 and missing.header(b"access-control-allow-origin") == b"*"
    assert missing.header(b"vary") is None  # "*" answers every origin alike
    assert bad_gateway.status in (502, 503)
    assert bad_gateway.header(b"access-control-allow-origin") == b"*"
    assert null.header(b"access-control-allow-origin") is None  # null only when listed


@pytest.mark.parametrize("section,key,reason", [
    pytest.param('allow_origins = ["*"]\nallow_credentials = true', "allow_origins",
                 "allow_credentials", id="star-with-credentials"),
    pytest.param('allow_origins = ["https://a.com/"]', "allow_origins", "path",
                 id="trailing-slash"),
    pytest.param('allow_origins = ["https://*.com"]', "allow_origins", "two labels",
                 id="wildcard-tld"),
    pytest.param('allow_origins = ["*", "https://a.com"]', "allow_origins", "not both",
                 id="star-and-list"),
    pytest.param('allow_origins = []', "allow_origins", "at least one", id="empty"),
    pytest.param('allow_origins = ["https://a.com"]\nexpose_headers = ["*"]\n'
                 'allow_credentials = true', "expose_headers", "credentialed",
                 id="expose-star-with-credentials"),
])
def test_config_refuses_unsafe_or_malformed_cors(section, key, reason):
    text = proxy_config("127.0.0.1:1", extra=f"[routes.cors]\n{section}\n")
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert any(path == f"routes[0].cors.{key}" and reason in msg
               for path, msg in info.value.errors), info.value.errors
