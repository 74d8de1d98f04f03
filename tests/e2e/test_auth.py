"""Consumers, API keys, basic auth, anonymous callers, identity headers and access control,
end to end: a real proxy in front of a real origin (engine/filters/auth.py, acl.py)."""

import base64
import hashlib
import time

import bcrypt
import orjson
import pytest

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config, wait_until
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy

ALICE_KEY = b"ak_live_8a1f0c3e5d7b9a2c4e6f8a0b"
BOB_KEY = b"ak_live_0f9e8d7c6b5a4e3d2c1b0a9f"
BOB_PASSWORD = b"correct horse battery staple"
CAROL_PASSWORD = b"Zr8-generated-9Qx"


def digest(secret: bytes) -> str:
    return "sha256:" + hashlib.sha256(secret).hexdigest()


CONSUMERS = f"""
[[consumers]]
name = "alice"
groups = ["admin", "paying"]
api_keys = ["{digest(ALICE_KEY)}"]

[[consumers]]
name = "bob"
groups = ["paying"]
api_keys = ["{digest(BOB_KEY)}"]
basic = [{{ username = "bob", password = "{bcrypt.hashpw(BOB_PASSWORD, bcrypt.gensalt(4)).decode()}" }}]

[[consumers]]
name = "carol"
basic = [{{ username = "carol", password = "{digest(CAROL_PASSWORD)}" }}]

[[consumers]]
name = "guest"
groups = ["guests"]
"""


def basic(user: bytes, password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user + b":" + password)


def proxy(route: str, extra: str = "", origin_url: str = "", server: str = ""):
    return InProcessProxy(proxy_config(origin_url, route=route, extra=CONSUMERS + extra,
                                       server=server))


API_KEY_ROUTE = """
[routes.auth]
methods = ["api_key"]
api_key = { query = "apikey" }
"""


def test_an_api_key_in_the_header_admits_its_consumer_and_is_removed():
    with Origin() as origin, proxy(API_KEY_ROUTE, origin_url=origin.url) as p, \
            Conn(p.port) as c:
        r = c.request("GET", "/x", headers=[(b"X-API-Key", ALICE_KEY)])
        assert r.status == 200, r.body
        seen = origin.requests[0]
        assert seen.header(b"x-api-key") is None
        assert seen.header(b"x-consumer") == b"alice"
        assert seen.header(b"x-consumer-groups") == b"admin,paying"


def test_an_api_key_in_the_query_is_removed_from_the_query_only():
    with Origin() as origin, proxy(API_KEY_ROUTE, origin_url=origin.url) as p, \
            Conn(p.port) as c:
        r = c.request("GET", "/x?a=1&apikey=" + BOB_KEY.decode() + "&b=2")
        assert r.status == 200, r.body
        assert origin.requests[0].url == b"/x?a=1&b=2"
        assert origin.requests[0].header(b"x-consumer") == b"bob"


@pytest.mark.parametrize("headers,path,code", [
    pytest.param([], "/x", "auth_required", id="missing"),
    pytest.param([(b"X-API-Key", b"ak_live_guess")], "/x", "auth_invalid", id="wrong-header"),
    pytest.param([], "/x?apikey=ak_live_guess", "auth_invalid", id="wrong-query"),
    pytest.param([(b"X-API-Key", ALICE_KEY[:-1])], "/x", "auth_invalid", id="prefix"),
])
def test_a_missing_or_wrong_api_key_gets_401_with_a_challenge(headers, path, code):
    with Origin() as origin, proxy(API_KEY_ROUTE, origin_url=origin.url) as p, \
            Conn(p.port) as c:
        r = c.request("GET", path, headers=headers)
        err = assert_error(r, 401, code)
        assert r.header(b"www-authenticate") == b'Key realm="edgeproxy"'
        assert "alice" not in err["message"] and not origin.requests


def test_two_api_key_headers_are_a_bad_request():
    with Origin() as origin, proxy(API_KEY_ROUTE, origin_url=origin.url) as p, \
            Conn(p.port) as c:
        r = c.request("GET", "/x", headers=[(b"X-API-Key", ALICE_KEY), (b"X-API-Key", BOB_KEY)])
        assert_error(r, 400, "auth_bad_request")
        assert not origin.requests


def test_identity_headers_sent_by_the_client_never_reach_the_upstream():
    spoofed = [(b"X-Consumer", b"alice"), (b"x-consumer-groups", b"admin"),
               (b"X-USER-ID", b"root")]
    route = API_KEY_ROUTE + 'anonymous = "guest"\n'
    with Origin() as origin, proxy(route, origin_url=origin.url) as p, Conn(p.port) as c:
        assert c.request("GET", "/x", headers=spoofed + [(b"X-API-Key", BOB_KEY)]).status == 200
        assert c.request("GET", "/y", headers=spoofed).status == 200
    as_bob, as_guest = origin.requests
    assert as_bob.header(b"x-consumer") == b"bob"
    assert as_bob.header(b"x-consumer-groups") == b"paying"
    assert as_bob.header(b"x-user-id") is None
    assert as_guest.header(b"x-consumer") == b"guest"
    assert as_guest.header(b"x-consumer-groups") == b"guests"
    assert as_guest.header(b"x-user-id") is None


def test_anonymous_stands_for_missing_credentials_never_for_wrong_ones():
    route = API_KEY_ROUTE + 'anonymous = "guest"\n'
    with Origin() as origin, proxy(route, origin_url=origin.url) as p, Conn(p.port) as c:
        assert c.request("GET", "/x").status == 200
        assert_error(c.request("GET", "/x", headers=[(b"X-API-Key", b"nope")]), 401,
                     "auth_invalid")
    assert [r.header(b"x-consumer") for r in origin.requests] == [b"guest"]


BASIC_ROUTE = """
[routes.auth]
methods = ["basic"]
realm = "orders"
"""


@pytest.mark.parametrize("user,password,consumer", [
    pytest.param(b"bob", BOB_PASSWORD, b"bob", id="bcrypt"),
    pytest.param(b"carol", CAROL_PASSWORD, b"carol", id="sha256"),
])
def test_basic_auth_checks_hashed_passwords(user, password, consumer):
    with Origin() as origin, proxy(BASIC_ROUTE, origin_url=origin.url) as p, \
            Conn(p.port) as c:
        for _ in range(2):  # the second one from the verified-credential cache
            r = c.request("GET", "/x", headers=[(b"Authorization", basic(user, password))])
            assert r.status == 200, r.body
        for seen in origin.requests:
            assert seen.header(b"x-consumer") == consumer
            assert seen.header(b"authorization") is None


@pytest.mark.parametrize("value", [
    pytest.param(basic(b"bob", b"wrong"), id="wrong-password"),
    pytest.param(basic(b"mallory", BOB_PASSWORD), id="unknown-user"),
    pytest.param(basic(b"carol", b"wrong"), id="wrong-sha256"),
    pytest.param(b"Basic !!!not-base64", id="not-base64"),
    pytest.param(b"Basic " + base64.b64encode(b"no-colon"), id="no-colon"),
])
def test_wrong_basic_credentials_get_401_with_the_basic_challenge(value):
    with Origin() as origin, proxy(BASIC_ROUTE, origin_url=origin.url) as p, \
            Conn(p.port) as c:
        r = c.request("GET", "/x", headers=[(b"Authorization", value)])
        assert_error(r, 401, "auth_invalid")
        # RFC 7617 §2, §2.1
        assert r.header(b"www-authenticate") == b'Basic realm="orders", charset="UTF-8"'
        assert not origin.requests


def test_the_basic_scheme_name_is_case_insensitive():
    value = basic(b"carol", CAROL_PASSWORD).replace(b"Basic", b"bAsIc")
    with Origin() as origin, proxy(BASIC_ROUTE, origin_url=origin.url) as p, \
            Conn(p.port) as c:
        assert c.request("GET", "/x", headers=[(b"Authorization", value)]).status == 200


def test_methods_are_tried_in_order_and_each_challenge_is_offered():
    route = '[routes.auth]\nmethods = ["api_key", "basic"]\n'
    with Origin() as origin, proxy(route, origin_url=origin.url) as p, Conn(p.port) as c:
        r = c.request("GET", "/x")
        assert_error(r, 401, "auth_required")
        assert r.header(b"www-authenticate") == [b'Key realm="edgeproxy"',
                                                 b'Basic realm="edgeproxy", charset="UTF-8"']
        r = c.request("GET", "/x", headers=[(b"Authorization", basic(b"bob", BOB_PASSWORD))])
        assert r.status == 200
        r = c.request("GET", "/x", headers=[(b"X-API-Key", ALICE_KEY)])
        assert r.status == 200
    assert [r.header(b"x-consumer") for r in origin.requests] == [b"bob", b"alice"]


# -- access control


@pytest.mark.parametrize("acl,key,status", [
    pytest.param('allow_groups = ["admin"]', ALICE_KEY, 200, id="allowed-group"),
    pytest.param('allow_groups = ["admin"]', BOB_KEY, 403, id="not-in-group"),
    pytest.param('allow_groups = ["admin"]', None, 403, id="anonymous-not-in-group"),
    pytest.param('deny_groups = ["guests"]', None, 403, id="denied-group"),
    pytest.param('deny_groups = ["admin"]\nallow_groups = ["paying"]', ALICE_KEY, 403,
                 id="deny-wins"),
    pytest.param('deny_groups = ["admin"]\nallow_groups = ["paying"]', BOB_KEY, 200,
                 id="allowed-not-denied"),
])
def test_group_access_control(acl, key, status):
    route = API_KEY_ROUTE + 'anonymous = "guest"\n[routes.acl]\n' + acl + "\n"
    with Origin() as origin, proxy(route, origin_url=origin.url) as p, Conn(p.port) as c:
        r = c.request("GET", "/x", headers=[(b"X-API-Key", key)] if key else [])
        assert r.status == status, r.body
        if status == 403:
            assert_error(r, 403, "access_denied")
            assert not origin.requests


# -- wiring: rate limits and quotas per consumer, the access log, metrics, /config


LIMITED = API_KEY_ROUTE + """
[[routes.rate_limit.limits]]
name = "per-minute"
algorithm = "fixed_window"
limit = 2
window = 60
key = ["consumer"]
"""


def test_a_consumer_override_replaces_a_named_limit_for_that_consumer_only():
    override = '\n[[consumers]]\nname = "vip"\napi_keys = ["' + digest(b"vip-key-123456") + \
        '"]\nrate_limits = [{ name = "per-minute", limit = 4 }]\n'
    with Origin() as origin, proxy(LIMITED, override, origin_url=origin.url) as p, \
            Conn(p.port) as c:
        alice = [c.request("GET", "/x", headers=[(b"X-API-Key", ALICE_KEY)]) for _ in range(3)]
        vip = [c.request("GET", "/x", headers=[(b"X-API-Key", b"vip-key-123456")])
               for _ in range(5)]
    assert [r.status for r in alice] == [200, 200, 429]
    assert [r.status for r in vip] == [200, 200, 200, 200, 429]
    assert vip[0].header(b"x-ratelimit-limit") == b"4"
    assert alice[0].header(b"x-ratelimit-limit") == b"2"
    assert b"per-minute;q=4" in vip[0].header(b"ratelimit-policy")


def test_a_consumers_tier_picks_its_quota():
    route = API_KEY_ROUTE + """
[routes.rate_limit.quota]
key = ["consumer"]
tiers = [{ name = "free", daily = 1 }, { name = "pro", daily = 3 }]
"""
    extra = '\n[[consumers]]\nname = "pro-user"\ntier = "pro"\napi_keys = ["' + \
        digest(b"pro-key-1234567") + '"]\n'
    with Origin() as origin, proxy(route, extra, origin_url=origin.url) as p, \
            Conn(p.port) as c:
        free = [c.request("GET", "/x", headers=[(b"X-API-Key", ALICE_KEY)]) for _ in range(2)]
        pro = [c.request("GET", "/x", headers=[(b"X-API-Key", b"pro-key-1234567")])
               for _ in range(4)]
    assert [r.status for r in free] == [200, 429]
    assert [r.status for r in pro] == [200, 200, 200, 429]
    assert_error(pro[-1], 429, "quota_exceeded")


def test_the_access_log_and_metrics_name_the_consumer(tmp_path):
    log = tmp_path / "access.log"
    server = f'access_log = "{log}"'
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, route=API_KEY_ROUTE, extra=CONSUMERS, server=server).replace(
            'access_log = "off"', "")) as p, Conn(p.port) as c:
        c.request("GET", "/x", headers=[(b"X-API-Key", ALICE_KEY)])
        c.request("GET", "/x", headers=[(b"X-API-Key", b"wrong")])
        assert wait_until(lambda: log.exists() and log.read_bytes().count(b"\n") >= 2, 5)
        counts = dict(p.worker.runtime.shared.counter("consumer", "all"))
        outcomes = dict(p.worker.runtime.shared.counter("auth", "all"))
    lines = [orjson.loads(x) for x in log.read_bytes().splitlines()]
    assert [(x["status"], x["consumer"]) for x in lines] == [(200, "alice"), (401, None)]
    assert counts == {"alice": 1}
    assert outcomes == {"api_key": 1, "api_key:invalid": 1}


def test_admin_config_redacts_hashed_keys_and_passwords():
    from engine.control.admin import REDACTED, config_json
    from engine.control.config import parse

    cfg = parse(proxy_config("http://127.0.0.1:1", route=API_KEY_ROUTE, extra=CONSUMERS))
    shown = orjson.dumps(config_json(cfg))
    consumers = config_json(cfg)["consumers"]
    assert consumers[0]["api_keys"] == REDACTED
    assert consumers[1]["basic"][0]["password"] == REDACTED
    assert consumers[1]["basic"][0]["username"] == "bob"
    assert hashlib.sha256(ALICE_KEY).hexdigest().encode() not in shown
    assert b"$2b$" not in shown


def test_a_bcrypt_check_does_not_stall_other_requests():
    """bcrypt runs off the event loop: while one password (cost 12) is checked, an open
    route's request is answered without waiting for it."""
    slow = bcrypt.hashpw(b"pw", bcrypt.gensalt(12))
    t0 = time.monotonic()
    bcrypt.checkpw(b"pw", slow)
    cost = time.monotonic() - t0
    extra = ('\n[[consumers]]\nname = "slow"\nbasic = [{ username = "slow", password = "'
             + slow.decode() + '" }]\n\n[[routes]]\nname = "open"\npaths = ["/open"]\n'
             'upstream = "app"\n')
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/auth/*"]', route=BASIC_ROUTE, extra=CONSUMERS + extra)) as p, \
            Conn(p.port) as a, Conn(p.port) as b:
        a.send(b"GET /auth/x HTTP/1.1\r\nHost: t\r\nAuthorization: " + basic(b"slow", b"pw")
               + b"\r\n\r\n")
        assert wait_until(lambda: p.call(lambda: sum(
            1 for conn in p.worker.conns if conn.active is not None)) == 1, 2, 0.002)
        t0 = time.monotonic()
        assert b.request("GET", "/open").status == 200
        open_took = time.monotonic() - t0
        assert a.response().status == 200
    assert open_took < cost / 2, (open_took, cost)


def test_idempotency_keys_are_scoped_per_consumer():
    route = API_KEY_ROUTE + "[routes.idempotency]\n"
    with Origin() as origin, proxy(route, origin_url=origin.url) as p, Conn(p.port) as c:
        for key in (ALICE_KEY, BOB_KEY, ALICE_KEY):
            r = c.request("POST", "/orders", body=b'{"n":1}', headers=[
                (b"X-API-Key", key), (b"Idempotency-Key", b'"order-1"')])
            assert r.status == 200, r.body
        replay = r
    # alice's and bob's requests both ran; alice's copy was replayed, not run again
    assert [r.header(b"x-consumer") for r in origin.requests] == [b"alice", b"bob"]
    assert replay.header(b"idempotent-replayed") == b"true"


SERVER_WIDE = """
[filters.auth]
methods = ["api_key"]

[[routes]]
name = "public"
paths = ["/public/*"]
upstream = "app"
[routes.auth]
methods = ["api_key"]
anonymous = "guest"
"""


def test_server_wide_auth_covers_every_route_and_unrouted_requests():
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/api/*"]', extra=CONSUMERS + SERVER_WIDE)) as p, \
            Conn(p.port) as c:
        assert_error(c.request("GET", "/api/x"), 401, "auth_required")
        assert_error(c.request("GET", "/nowhere"), 401, "auth_required")
        assert c.request("GET", "/nowhere", headers=[(b"X-API-Key", BOB_KEY)]).status == 404
        assert c.request("GET", "/api/x", headers=[(b"X-API-Key", BOB_KEY)]).status == 200
        # the route's own section replaces the server-wide one
        assert c.request("GET", "/public/x").status == 200
    assert [r.header(b"x-consumer") for r in origin.requests] == [b"bob", b"guest"]
