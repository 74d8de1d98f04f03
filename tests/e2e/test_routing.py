"""Routing end to end: hosts, params, precedence, strip_prefix, rewrite, 404/405, static routes,
header transforms, and a snapshot swap."""

import pytest

from tests.support.client import Conn
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy

CONFIG = """
[server]
access_log = "off"

[[upstreams]]
name = "a"
servers = ["{a}"]

[[upstreams]]
name = "b"
servers = ["{b}"]

[[routes]]
name = "api-strip"
paths = ["/api/*"]
upstream = "a"
strip_prefix = true

[[routes]]
name = "user"
paths = ["/users/{{id}}"]
methods = ["GET", "DELETE"]
upstream = "a"
rewrite = "/v2/accounts/{{id}}"

[[routes]]
name = "user-me"
paths = ["/users/me"]
methods = ["GET"]
upstream = "b"

[[routes]]
name = "files"
paths = ["/files/{{rest*}}"]
upstream = "a"
rewrite = "/storage/{{rest}}"

[[routes]]
name = "b-host"
hosts = ["b.example.com", "*.b.example.org"]
paths = ["/*"]
upstream = "b"

[[routes]]
name = "health"
paths = ["/healthz"]
methods = ["GET", "HEAD"]
[routes.static]
body = "ok"
headers = {{ "Cache-Control" = "no-store" }}
[routes.headers.response]
add = {{ "X-Route" = "health" }}

[[routes]]
name = "transform"
paths = ["/t"]
upstream = "b"
[routes.headers.request]
set = {{ "X-Set" = "s" }}
add = {{ "X-Add" = "a" }}
remove = ["X-Secret"]
rename = {{ "X-Old" = "X-New" }}
[routes.headers.response]
remove = ["Server"]
set = {{ "X-Frame-Options" = "DENY" }}
"""


@pytest.fixture(scope="module")
def env():
    with Origin() as a, Origin() as b:
        with InProcessProxy(CONFIG.format(a=a.url, b=b.url)) as proxy:
            yield proxy, a, b


@pytest.mark.parametrize("method, path, host, origin, upstream_path", [
    pytest.param("GET", "/api/orders?x=1", "test", "a", b"/orders?x=1", id="strip-prefix"),
    pytest.param("GET", "/api", "test", "a", b"/", id="strip-prefix-bare"),
    pytest.param("GET", "/users/42", "test", "a", b"/v2/accounts/42", id="param-rewrite"),
    pytest.param("GET", "/users/me", "test", "b", b"/users/me", id="static-beats-param"),
    pytest.param("DELETE", "/users/me", "test", "a", b"/v2/accounts/me",
                 id="method-falls-back-to-param"),
    pytest.param("GET", "/files/img/a.png", "test", "a", b"/storage/img/a.png", id="tail-param"),
    pytest.param("GET", "/anything", "b.example.com", "b", b"/anything", id="exact-host"),
    pytest.param("GET", "/x", "www.b.example.org:8080", "b", b"/x", id="wildcard-host-port"),
    pytest.param("GET", "/api/../users/7", "test", "a", b"/v2/accounts/7", id="dot-segments"),
    pytest.param("GET", "/api/%2e%2E/users/7", "test", "a", b"/v2/accounts/7",
                 id="percent-encoded-dot-segments"),
    pytest.param("GET", "/api/%7euser/a%2fb%3a", "test", "a", b"/~user/a%2Fb%3A",
                 id="percent-normalised"),
])
def test_route_selection_and_upstream_path(env, method, path, host, origin, upstream_path):
    proxy, a, b = env
    target = {"a": a, "b": b}[origin]
    before = len(target.requests)
    with Conn(proxy.port) as c:
        r = c.request(method, path, host=host.encode())
    assert r.status == 200, r.body
    assert len(target.requests) == before + 1
    assert target.requests[-1].url == upstream_path


def test_no_route_is_404_json(env):
    proxy, _, _ = env
    with Conn(proxy.port) as c:
        r = c.request("GET", "/nowhere")
    assert r.status == 404
    err = r.json()["error"]
    assert err["code"] == "not_found" and err["request_id"] == r.header(b"x-request-id").decode()


def test_wrong_method_is_405_with_allow(env):
    proxy, _, _ = env
    with Conn(proxy.port) as c:
        r = c.request("POST", "/users/42")
    assert r.status == 405
    assert r.header(b"allow") == b"DELETE, GET"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_static_route_answers_with_response_filters(env):
    proxy, a, b = env
    seen = len(a.requests) + len(b.requests)
    with Conn(proxy.port) as c:
        r = c.request("GET", "/healthz")
        h = c.request("HEAD", "/healthz")
    assert (r.status, r.body) == (200, b"ok")
    assert r.header(b"cache-control") == b"no-store" and r.header(b"x-route") == b"health"
    assert h.status == 200 and h.body == b"" and h.header(b"content-length") == b"2"
    assert len(a.requests) + len(b.requests) == seen


def test_header_transforms_both_ways(env):
    proxy, _, b = env
    with Conn(proxy.port) as c:
        r = c.request("GET", "/t", headers=[(b"X-Set", b"client"), (b"X-Secret", b"pw"),
                                            (b"X-Old", b"v")])
    req = b.requests[-1]
    assert req.header(b"x-set") == b"s"
    assert req.header(b"x-add") == b"a"
    assert req.header(b"x-secret") is None
    assert req.header(b"x-new") == b"v" and req.header(b"x-old") is None
    assert r.header(b"x-frame-options") == b"DENY"


def test_swap_changes_routes_for_new_requests_only(env):
    proxy, a, b = env
    new = CONFIG.format(a=a.url, b=b.url).replace('methods = ["GET"]\nupstream = "b"',
                                                   'methods = ["GET"]\nupstream = "a"')
    assert new != CONFIG.format(a=a.url, b=b.url)
    old_runtime = proxy.worker.runtime
    proxy.swap(new)
    try:
        with Conn(proxy.port) as c:
            assert c.request("GET", "/users/me").status == 200
        assert a.requests[-1].url == b"/users/me"
    finally:
        proxy.call(proxy.worker.swap, old_runtime)
