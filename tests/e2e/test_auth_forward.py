"""Forward auth end to end (engine/filters/auth_forward.py): a real auth service behind an
upstream decides, its 2xx headers go upstream, anything else goes back to the client, and
admissions are cached per credential when configured."""

import pytest

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config
from tests.support.origin import Origin, closed_port, ok
from tests.support.proxy import InProcessProxy

CONSUMERS = """
[[consumers]]
name = "alice"
groups = ["admin"]
"""


def auth_service(req):
    """Admits "Bearer good" (as alice) and "Bearer other" (as nobody); sends everyone else
    to a login page, or refuses with its own challenge."""
    token = req.header(b"authorization")
    if token == b"Bearer good":
        return ok(b"", 200, [(b"X-Auth-User", b"u-1"), (b"X-Auth-Consumer", b"alice"),
                             (b"X-Not-Copied", b"1")])
    if token == b"Bearer other":
        return ok(b"", 204, [(b"X-Auth-User", b"u-2"), (b"X-Auth-Consumer", b"mallory")])
    if token is None:
        return ok(b"", 302, [(b"Location", b"https://login.test/?next=x")])
    return ok(b'{"denied":true}', 401, [(b"WWW-Authenticate", b'Bearer realm="sso"'),
                                        (b"Content-Type", b"application/json")])


def config(origin_url: str, auth_url: str, forward: str = "", route_extra: str = "") -> str:
    route = f"""
[routes.auth]
methods = ["forward"]
[routes.auth.forward]
upstream = "auth"
path = "/check"
response_headers = ["X-Auth-User"]
consumer_header = "X-Auth-Consumer"
{forward}
{route_extra}
"""
    extra = CONSUMERS + f'\n[[upstreams]]\nname = "auth"\nservers = ["{auth_url}"]\n'
    return proxy_config(origin_url, route=route, extra=extra)


def test_a_2xx_admits_copies_the_configured_headers_and_names_the_consumer():
    with Origin(auth_service) as auth, Origin() as origin, InProcessProxy(
            config(origin.url, auth.url)) as p, Conn(p.port) as c:
        r = c.request("POST", "/orders/7?x=1", body=b"{}", headers=[
            (b"Authorization", b"Bearer good"), (b"X-Auth-User", b"spoofed"),
            (b"Cookie", b"sid=1"), (b"X-Other", b"not-sent")])
        assert r.status == 200, r.body
        asked = auth.requests[0]
        assert asked.method == b"GET" and asked.url == b"/check" and asked.body == b""
        assert asked.header(b"authorization") == b"Bearer good"
        assert asked.header(b"cookie") == b"sid=1"
        assert asked.header(b"x-other") is None
        assert asked.header(b"x-forwarded-method") == b"POST"
        assert asked.header(b"x-forwarded-uri") == b"/orders/7?x=1"
        assert asked.header(b"x-forwarded-host") == b"test"
        assert asked.header(b"x-forwarded-proto") == b"http"
        seen = origin.requests[0]
        assert seen.header(b"x-auth-user") == b"u-1"  # the client's copy was stripped
        assert seen.header(b"x-not-copied") is None
        assert seen.header(b"x-consumer") == b"alice"
        assert seen.header(b"x-consumer-groups") == b"admin"
        assert seen.body == b"{}"


def test_a_consumer_name_the_config_does_not_know_names_no_consumer():
    with Origin(auth_service) as auth, Origin() as origin, InProcessProxy(
            config(origin.url, auth.url)) as p, Conn(p.port) as c:
        assert c.request("GET", "/", headers=[(b"Authorization", b"Bearer other")]).status \
            == 200
        seen = origin.requests[0]
        assert seen.header(b"x-auth-user") == b"u-2" and seen.header(b"x-consumer") is None


@pytest.mark.parametrize("headers,status", [
    pytest.param([(b"Authorization", b"Bearer bad")], 401, id="refused"),
    pytest.param([], 302, id="login-redirect"),
])
def test_anything_else_goes_back_to_the_client_as_the_service_said(headers, status):
    with Origin(auth_service) as auth, Origin() as origin, InProcessProxy(
            config(origin.url, auth.url)) as p, Conn(p.port) as c:
        r = c.request("GET", "/x", headers=headers)
        assert r.status == status
        if status == 401:
            assert r.header(b"www-authenticate") == b'Bearer realm="sso"'
            assert r.body == b'{"denied":true}'
        else:
            assert r.header(b"location") == b"https://login.test/?next=x"
        assert r.header(b"x-request-id")  # still the proxy's answer, with its id
        assert not origin.requests


def test_an_auth_service_that_is_down_is_a_json_502():
    with Origin() as origin, InProcessProxy(config(
            origin.url, f"http://127.0.0.1:{closed_port()}")) as p, Conn(p.port) as c:
        r = c.request("GET", "/x", headers=[(b"Authorization", b"Bearer good")])
        assert_error(r, 502, "bad_gateway")
        assert not origin.requests


def test_admissions_are_cached_per_credential_when_configured():
    with Origin(auth_service) as auth, Origin() as origin, InProcessProxy(
            config(origin.url, auth.url, "cache_ttl = 60")) as p, Conn(p.port) as c:
        for _ in range(3):
            r = c.request("GET", "/x", headers=[(b"Authorization", b"Bearer good")])
            assert r.status == 200
        for _ in range(2):
            assert c.request("GET", "/x", headers=[(b"Authorization", b"Bearer bad")]).status \
                == 401
        assert c.request("GET", "/x", headers=[(b"Authorization", b"Bearer other")]).status \
            == 200
    # one ask for "good", every time for the refused one, one for "other"
    assert [r.header(b"authorization") for r in auth.requests] == [
        b"Bearer good", b"Bearer bad", b"Bearer bad", b"Bearer other"]
    assert [r.header(b"x-auth-user") for r in origin.requests] == [b"u-1"] * 3 + [b"u-2"]


def test_without_a_cache_every_request_asks():
    with Origin(auth_service) as auth, Origin() as origin, InProcessProxy(
            config(origin.url, auth.url)) as p, Conn(p.port) as c:
        for _ in range(2):
            assert c.request("GET", "/x", headers=[(b"Authorization", b"Bearer good")]) \
                .status == 200
    assert len(auth.requests) == 2


def test_an_api_key_first_then_forward_auth():
    key_hash = "sha256:" + __import__("hashlib").sha256(b"k-123456789").hexdigest()
    consumers = f'\n[[consumers]]\nname = "svc"\napi_keys = ["{key_hash}"]\n'
    with Origin(auth_service) as auth, Origin() as origin, InProcessProxy(
            config(origin.url, auth.url).replace('methods = ["forward"]',
                                                 'methods = ["api_key", "forward"]')
            + consumers) as p, Conn(p.port) as c:
        assert c.request("GET", "/x", headers=[(b"X-API-Key", b"k-123456789")]).status == 200
        assert not auth.requests  # admitted by the first method
        assert c.request("GET", "/x", headers=[(b"Authorization", b"Bearer good")]).status \
            == 200
    assert [r.header(b"x-consumer") for r in origin.requests] == [b"svc", b"alice"]
