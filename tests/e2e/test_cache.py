"""The response cache end to end (engine/filters/cache.py): a real proxy in front of a real
origin that answers each path as the test scripts it and counts what reaches it. Time is the
cache module's ``clock``, moved by the tests (no sleeping for freshness)."""

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from engine.filters import cache as cache_module
from tests.support.client import Conn, raw
from tests.support.e2e import proxy_config, wait_until
from tests.support.origin import Origin, closed_port
from tests.support.proxy import InProcessProxy
from tests.support.scripted import Script


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(cache_module, "clock", c)
    return c


CACHE = """
[routes.cache]
x_cache = true
{extra}
"""


@pytest.fixture
def setup(clock):
    made = []

    def make(extra="", route_extra=""):
        script = Script()
        origin = Origin(script).__enter__()
        proxy = InProcessProxy(proxy_config(origin.url, route=CACHE.format(extra=extra)
                                            + route_extra)).__enter__()
        made.append((proxy, origin))
        return proxy, script, origin

    yield make
    for proxy, origin in made:
        proxy.__exit__(None, None, None)
        origin.__exit__(None, None, None)


def get(port, path, headers=(), method="GET"):
    with Conn(port) as c:
        return c.request(method, path, headers=headers)


def status_of(r):
    return r.header(b"cache-status")


# -- storing and freshness (RFC 9111 §3, §4.2)

@pytest.mark.parametrize("headers,cached", [
    pytest.param([(b"Cache-Control", b"max-age=100")], True, id="max-age"),
    pytest.param([(b"Cache-Control", b"s-maxage=100, max-age=0")], True, id="s-maxage-wins"),
    pytest.param([(b"Cache-Control", b"max-age=100, no-store")], False, id="no-store"),
    pytest.param([(b"Cache-Control", b"max-age=100, private")], False, id="private"),
    pytest.param([(b"Cache-Control", b'max-age=100, private="X-Foo"')], True,
                 id="private-qualified-keeps-the-rest"),
    pytest.param([(b"Cache-Control", b"max-age=100"), (b"Cache-Control", b"max-age=0")], True,
                 id="first-of-two-lines"),
    pytest.param([(b"Cache-Control", b'extension="max-age=100", max-age=0')], False,
                 id="quoted-is-not-a-directive"),
    pytest.param([(b"Cache-Control", b"max-age =100")], False, id="space-before-equals"),
    pytest.param([(b"Expires", b"Thu, 01 Jan 2099 00:00:00 GMT")], True, id="expires-future"),
    pytest.param([(b"Expires", b"0")], False, id="expires-invalid-is-past"),
    pytest.param([(b"Last-Modified", b"Thu, 01 Jan 2015 00:00:00 GMT")], True,
                 id="heuristic-200"),
    pytest.param([], False, id="nothing-says-fresh"),
    pytest.param([(b"Cache-Control", b"max-age=100"), (b"Vary", b"*")], False, id="vary-star"),
    pytest.param([(b"Cache-Control", b"max-age=100"), (b"Set-Cookie", b"a=b")], False,
                 id="set-cookie-not-stored-by-default"),
])
def test_what_is_stored(setup, headers, cached):
    proxy, script, _ = setup()
    script["/a"] = (200, headers, b"body-a")
    first = get(proxy.port, "/a")
    second = get(proxy.port, "/a")
    assert first.status == second.status == 200 and second.body == b"body-a"
    assert script.count("/a") == (1 if cached else 2)
    assert second.header(b"x-cache") == (b"HIT" if cached else b"MISS")


@pytest.mark.parametrize("status,cached", [
    (200, True), (203, True), (204, True), (404, True), (410, True), (501, True),
    (201, False), (403, False), (500, False), (503, False),
])
def test_heuristic_freshness_only_for_statuses_cacheable_by_default(setup, status, cached):
    # RFC 9111 §4.2.2 with RFC 9110 §15.1's list.
    proxy, script, _ = setup()
    body = b"" if status == 204 else b"x"
    script["/h"] = (status, [(b"Last-Modified", b"Thu, 01 Jan 2015 00:00:00 GMT")], body)
    get(proxy.port, "/h")
    r = get(proxy.port, "/h")
    assert r.status == status
    assert script.count("/h") == (1 if cached else 2)


@pytest.mark.parametrize("extra,cached", [
    pytest.param("", True, id="default-cdn-cache-control"),
    pytest.param('targeted_fields = ["Edge-CC", "CDN-Cache-Control"]', True, id="listed"),
    pytest.param("targeted_fields = []", False, id="none"),
])
def test_cdn_cache_control_overrides_cache_control(setup, extra, cached):
    # RFC 9213 §2.1: the targeted field is this cache's, Cache-Control the browser's; it is
    # passed on (a CDN's next tier may obey it too).
    proxy, script, _ = setup(extra)
    script["/cdn"] = (200, [(b"Cache-Control", b"no-store"),
                            (b"CDN-Cache-Control", b"max-age=600")], b"cdn")
    get(proxy.port, "/cdn")
    r = get(proxy.port, "/cdn")
    assert r.header(b"cdn-cache-control") == b"max-age=600"
    assert r.header(b"cache-control") == b"no-store"
    assert script.count("/cdn") == (1 if cached else 2)


def test_a_hit_carries_age_and_cache_status(setup, clock):
    proxy, script, _ = setup()
    script["/age"] = (200, [(b"Cache-Control", b"max-age=100"), (b"Age", b"30")], b"aged")
    first = get(proxy.port, "/age")
    assert first.header(b"cache-status").startswith(b"edgeproxy; fwd=uri-miss; fwd-status=200")
    assert first.header(b"cache-status").endswith(b"stored")
    clock.advance(10)
    r = get(proxy.port, "/age")
    assert r.body == b"aged" and int(r.header(b"age")) >= 40
    assert r.header(b"cache-status").startswith(b"edgeproxy; hit; ttl=")
    assert int(r.header(b"cache-status").rsplit(b"=", 1)[1]) <= 60
    clock.advance(61)  # stale now: no validator, so a new full request
    r = get(proxy.port, "/age")
    assert script.count("/age") == 2 and r.header(b"x-cache") == b"MISS"


def test_head_is_answered_from_a_stored_get(setup):
    proxy, script, _ = setup()
    script["/hd"] = (200, [(b"Cache-Control", b"max-age=100")], b"0123456789")
    get(proxy.port, "/hd")
    r = get(proxy.port, "/hd", method="HEAD")
    assert r.status == 200 and r.header(b"content-length") == b"10" and r.body == b""
    assert script.count("/hd") == 1


@pytest.mark.parametrize("rng,status,body", [
    pytest.param(b"bytes=0-1", 206, b"01", id="range"),
    pytest.param(b"bytes=-1", 206, b"A", id="suffix"),
    pytest.param(b"bytes=0-1,4-5", 200, b"0123456789A", id="several-served-whole"),
])
def test_ranges_are_served_from_a_stored_whole_response(setup, rng, status, body):
    proxy, script, _ = setup()
    script["/rg"] = (200, [(b"Cache-Control", b"max-age=100")], b"0123456789A")
    get(proxy.port, "/rg")
    r = get(proxy.port, "/rg", [(b"Range", rng)])
    assert (r.status, r.body) == (status, body) and script.count("/rg") == 1
    if status == 206:
        assert r.header(b"content-range").endswith(b"/11")


def test_a_body_over_the_object_cap_streams_and_is_not_kept(setup):
    proxy, script, _ = setup('max_object_size = "1k"')
    big = b"x" * 5000
    script["/big"] = (200, [(b"Cache-Control", b"max-age=100")], big)
    assert get(proxy.port, "/big").body == big
    assert get(proxy.port, "/big").body == big
    assert script.count("/big") == 2


def test_an_object_grown_past_the_cap_is_relayed_whole_and_dropped(setup, clock):
    proxy, script, _ = setup('max_object_size = "1k"')
    script["/grow"] = (200, [(b"Cache-Control", b"max-age=1"), (b"ETag", b'"1"')], b"small")
    get(proxy.port, "/grow")
    clock.advance(5)
    big = b"b" * 4000
    script["/grow"] = (200, [(b"Cache-Control", b"max-age=100"), (b"ETag", b'"2"')], big)
    assert get(proxy.port, "/grow").body == big  # the revalidation was too large: relayed
    assert get(proxy.port, "/grow").body == big  # nothing stale left to revalidate
    assert script.count("/grow") == 4


def test_a_head_for_a_stale_response_goes_upstream_as_head_and_freshens_it(setup, clock):
    # RFC 9111 §4.3.5
    proxy, script, _ = setup()
    script["/hh"] = (200, [(b"Cache-Control", b"max-age=1"), (b"Template-A", b"1")], b"full")
    get(proxy.port, "/hh")
    clock.advance(5)
    script["/hh"] = (200, [(b"Cache-Control", b"max-age=1000"), (b"Template-A", b"2")], b"x")
    r = get(proxy.port, "/hh", method="HEAD")
    assert r.status == 200 and script.seen["/hh"][1].method == b"HEAD"
    r = get(proxy.port, "/hh")
    assert r.header(b"x-cache") == b"HIT" and r.body == b"full"
    assert r.header(b"template-a") == b"2" and script.count("/hh") == 2


# -- requests with Authorization (§3.5) and request directives (§5.2.1)

def test_authorization_needs_the_response_to_allow_sharing(setup):
    proxy, script, _ = setup()
    auth = [(b"Authorization", b"Bearer t")]
    script["/p"] = (200, [(b"Cache-Control", b"max-age=100")], b"mine")
    script["/pub"] = (200, [(b"Cache-Control", b"max-age=100, public")], b"shared")
    for path in ("/p", "/pub"):
        get(proxy.port, path, auth)
        get(proxy.port, path, auth)
    assert script.count("/p") == 2 and script.count("/pub") == 1


CONSUMERS = """
[routes.auth]
methods = ["api_key"]
""" + "".join(f"""
[[consumers]]
name = "{who}"
api_keys = ["sha256:{hashlib.sha256(b"key-" + who.encode()).hexdigest()}"]
""" for who in ("alice", "bob"))


def as_(who):
    return [(b"X-API-Key", b"key-" + who)]


def test_an_authenticated_callers_answer_is_not_shared_unless_the_origin_says_so(setup):
    # The auth filter takes the API key off before the cache sees the request: the cache
    # still knows a consumer was authenticated, and applies RFC 9111 §3.5's rule.
    proxy, script, _ = setup(route_extra=CONSUMERS)
    script["/me"] = (200, [(b"Cache-Control", b"max-age=100")], b"alice's data")
    script["/pub"] = (200, [(b"Cache-Control", b"max-age=100, public")], b"shared")
    assert get(proxy.port, "/me", as_(b"alice")).body == b"alice's data"
    script["/me"] = (200, [(b"Cache-Control", b"max-age=100")], b"bob's data")
    assert get(proxy.port, "/me", as_(b"bob")).body == b"bob's data"
    for who in (b"alice", b"bob"):
        assert get(proxy.port, "/pub", as_(who)).body == b"shared"
    assert script.count("/me") == 2 and script.count("/pub") == 1


def test_consumer_in_the_key_keeps_one_cache_per_consumer(setup):
    proxy, script, _ = setup(extra='key_parts = ["consumer"]', route_extra=CONSUMERS)
    for who in (b"alice", b"bob"):
        script["/me"] = (200, [(b"Cache-Control", b"max-age=100")], who + b"'s data")
        for _ in range(2):
            assert get(proxy.port, "/me", as_(who)).body == who + b"'s data"
    assert script.count("/me") == 2  # one per consumer, each then a hit


@pytest.mark.parametrize("directive", [b"no-cache", b"max-age=0"])
def test_request_no_cache_and_max_age_revalidate(setup, clock, directive):
    proxy, script, _ = setup()
    script["/r"] = (200, [(b"Cache-Control", b"max-age=100"), (b"ETag", b'"v1"')], b"r")
    get(proxy.port, "/r")
    clock.advance(1)
    r = get(proxy.port, "/r", [(b"Cache-Control", directive)])
    assert r.status == 200 and script.count("/r") == 2
    assert script.seen["/r"][1].header(b"if-none-match") == b'"v1"'


def test_pragma_no_cache_counts_without_cache_control(setup):
    proxy, script, _ = setup()
    script["/pg"] = (200, [(b"Cache-Control", b"max-age=100")], b"p")
    get(proxy.port, "/pg")
    get(proxy.port, "/pg", [(b"Pragma", b"no-cache")])
    assert script.count("/pg") == 2


@pytest.mark.parametrize("headers,hit", [
    pytest.param([(b"Pragma", b"foo"), (b"Cache-Control", b"nothing-to-see-here")], True,
                 id="unknown-directives"),
    pytest.param([(b"Pragma", b"x-no-cache-please")], True, id="pragma-other-token"),
    pytest.param([(b"Pragma", b"foo, No-Cache")], False, id="pragma-no-cache-member"),
    pytest.param([(b"Cookie", b"a=b")], True, id="cookie"),
])
def test_what_request_fields_make_the_cache_validate(setup, headers, hit):
    # RFC 9111 §5.2.3: unknown request directives are ignored; §5.4: only Pragma's no-cache
    # means anything, and only without Cache-Control. A Cookie changes nothing unless the
    # response varies on it (§4.1).
    proxy, script, _ = setup()
    script["/rq"] = (200, [(b"Cache-Control", b"max-age=100"), (b"ETag", b'"r"')], b"r")
    get(proxy.port, "/rq")
    r = get(proxy.port, "/rq", headers)
    assert (r.header(b"x-cache") == b"HIT") is hit
    assert script.count("/rq") == (1 if hit else 2)


def test_only_if_cached_miss_is_504(setup):
    proxy, script, _ = setup()
    r = get(proxy.port, "/none", [(b"Cache-Control", b"only-if-cached")])
    assert r.status == 504 and script.count("/none") == 0


def test_max_stale_accepts_a_stale_response(setup, clock):
    proxy, script, _ = setup()
    script["/ms"] = (200, [(b"Cache-Control", b"max-age=10")], b"old")
    get(proxy.port, "/ms")
    clock.advance(30)
    r = get(proxy.port, "/ms", [(b"Cache-Control", b"max-stale=60")])
    assert r.body == b"old" and r.header(b"x-cache") == b"STALE"
    assert script.count("/ms") == 1


# -- interim responses (RFC 9110 §15.2)

INTERIM = (b"HTTP/1.1 100 Continue\r\n\r\n"
           b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
           b"Connection: X-Hop\r\nX-Hop: 1\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nCache-Control: max-age=100\r\nContent-Length: 5\r\n\r\nfinal")


def test_interim_responses_reach_http11_clients_and_are_never_stored(clock):
    # 103 (and 102) are relayed ahead of the final response, without hop-by-hop fields and
    # with Via; a 100 answers an Expect the proxy never sent upstream and stays here. The
    # stored answer is the final one alone, and an HTTP/1.0 client gets no 1xx at all.
    with Origin(lambda req: INTERIM) as origin, \
            InProcessProxy(proxy_config(origin.url, route=CACHE.format(extra=""))) as proxy:
        got = raw(proxy.port, b"GET /i HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        interim, _, final = got.partition(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\n")
        assert b"Link: </s.css>; rel=preload" in interim and b"Via: 1.1 " in interim
        assert b"X-Hop" not in interim and b"100 Continue" not in got
        assert final.startswith(b"HTTP/1.1 200 ") and got.endswith(b"final")
        assert b"Link" not in final and got.count(b"HTTP/1.1 ") == 2
        again = raw(proxy.port, b"GET /i HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert again.startswith(b"HTTP/1.1 200 ") and b"X-Cache: HIT" in again
        assert b"103" not in again and b"Link" not in again
        old = raw(proxy.port, b"GET /other HTTP/1.0\r\nHost: t\r\n\r\n")
        assert old.startswith(b"HTTP/1.1 200 ") and b"Link" not in old
        assert len(origin.requests) == 2


# -- Vary (§4.1)

def test_vary_keeps_variants_apart_with_normalised_values(setup):
    proxy, script, _ = setup()
    script["/v"] = lambda req: (200, [(b"Cache-Control", b"max-age=100"),
                                      (b"Vary", b"Accept-Language")],
                                req.header(b"accept-language") or b"none")
    assert get(proxy.port, "/v", [(b"Accept-Language", b"en, fr")]).body == b"en, fr"
    assert get(proxy.port, "/v", [(b"Accept-Language", b"de")]).body == b"de"
    r = get(proxy.port, "/v", [(b"Accept-Language", b"en ,fr")])  # same list, other spaces
    assert r.body == b"en, fr" and r.header(b"x-cache") == b"HIT"
    assert get(proxy.port, "/v").body == b"none"
    assert script.count("/v") == 3


# -- validation (§4.3)

def test_a_304_freshens_the_stored_response(setup, clock):
    proxy, script, _ = setup()
    script["/e"] = (200, [(b"Cache-Control", b"max-age=10"), (b"ETag", b'"e1"'),
                          (b"Test-Header", b"A")], b"etag-body")
    get(proxy.port, "/e")
    clock.advance(20)
    script["/e"] = (304, [(b"Cache-Control", b"max-age=3600"), (b"ETag", b'"e1"'),
                          (b"Test-Header", b"B")], b"")
    r = get(proxy.port, "/e")
    assert r.status == 200 and r.body == b"etag-body" and r.header(b"test-header") == b"B"
    assert r.header(b"x-cache") == b"REVALIDATED"
    assert b"fwd=stale; fwd-status=304" in r.header(b"cache-status")
    assert script.seen["/e"][1].header(b"if-none-match") == b'"e1"'
    clock.advance(100)  # fresh for an hour now
    r = get(proxy.port, "/e")
    assert r.header(b"x-cache") == b"HIT" and r.header(b"test-header") == b"B"
    assert script.count("/e") == 2


@pytest.mark.parametrize("validator", [
    pytest.param((b"ETag", b'"e1"'), id="etag"),
    pytest.param((b"Last-Modified", b"Thu, 01 Jan 2015 00:00:00 GMT"), id="last-modified"),
])
def test_a_304_without_validators_freshens_the_response_it_was_asked_about(setup, clock,
                                                                            validator):
    # RFC 9111 §4.3.4 / RFC 9110 §15.4.5: the origin should repeat the validator, but a
    # 304 to a conditional naming one stored response can only be about that response.
    proxy, script, _ = setup()
    script["/nv"] = (200, [(b"Cache-Control", b"max-age=1"), validator,
                           (b"Content-Encoding", b"x-stored"), (b"Test-Header", b"A")],
                     b"stored-body")
    get(proxy.port, "/nv")
    clock.advance(5)
    # §3.2: the fields describing the stored bytes are not updated from a 304.
    script["/nv"] = (304, [(b"Cache-Control", b"max-age=100"), (b"Test-Header", b"B"),
                           (b"Content-Encoding", b"x-other"), (b"Content-MD5", b"bm90")],
                     b"")
    r = get(proxy.port, "/nv")
    assert r.status == 200 and r.body == b"stored-body"
    assert r.header(b"x-cache") == b"REVALIDATED" and r.header(b"test-header") == b"B"
    assert r.header(b"content-encoding") == b"x-stored" and r.header(b"content-md5") is None
    assert script.count("/nv") == 2  # not sent again without its conditional
    assert get(proxy.port, "/nv").header(b"x-cache") == b"HIT"
    assert script.count("/nv") == 2


def test_a_304_naming_no_variant_of_several_is_not_applied(setup, clock):
    # Two variants sent their ETags in one If-None-Match: a 304 without a validator does
    # not say which (§4.3.4), so the request goes upstream again as it came.
    proxy, script, _ = setup()
    script["/vv"] = lambda req: (200, [(b"Cache-Control", b"max-age=1"), (b"Vary", b"Foo"),
                                       (b"ETag", b'"%s"' % req.header(b"foo"))],
                                 req.header(b"foo"))
    get(proxy.port, "/vv", [(b"Foo", b"a")])
    get(proxy.port, "/vv", [(b"Foo", b"b")])
    clock.advance(5)
    script["/vv"] = lambda req: ((304, [(b"Cache-Control", b"max-age=100")], b"")
                                 if req.header(b"if-none-match") else
                                 (200, [(b"Cache-Control", b"max-age=100")], b"new"))
    r = get(proxy.port, "/vv", [(b"Foo", b"a")])
    assert r.status == 200 and r.body == b"new"
    assert script.seen["/vv"][2].header(b"if-none-match") == b'"b", "a"'  # newest first
    assert script.seen["/vv"][3].header(b"if-none-match") is None
    assert script.count("/vv") == 4


def test_last_modified_is_sent_as_if_modified_since(setup, clock):
    proxy, script, _ = setup()
    lm = b"Thu, 01 Jan 2015 00:00:00 GMT"
    script["/lm"] = (200, [(b"Cache-Control", b"max-age=1"), (b"Last-Modified", lm)], b"lm")
    get(proxy.port, "/lm")
    clock.advance(5)
    script["/lm"] = (304, [(b"Cache-Control", b"max-age=100"), (b"Last-Modified", lm)], b"")
    assert get(proxy.port, "/lm").body == b"lm"
    assert script.seen["/lm"][1].header(b"if-modified-since") == lm


def test_a_new_200_replaces_the_stored_response(setup, clock):
    proxy, script, _ = setup()
    script["/n"] = (200, [(b"Cache-Control", b"max-age=1"), (b"ETag", b'"1"')], b"one")
    get(proxy.port, "/n")
    clock.advance(5)
    script["/n"] = (200, [(b"Cache-Control", b"max-age=100"), (b"ETag", b'"2"')], b"two")
    r = get(proxy.port, "/n")
    assert r.body == b"two" and r.header(b"via") == b"1.1 edgeproxy"  # RFC 9110 §7.6.3
    r = get(proxy.port, "/n")
    assert r.header(b"x-cache") == b"HIT" and r.header(b"via") == b"1.1 edgeproxy"
    assert script.count("/n") == 2


@pytest.mark.parametrize("headers,status", [
    pytest.param([(b"If-None-Match", b'W/"x", "c1"')], 304, id="inm-match"),
    pytest.param([(b"If-None-Match", b'"other"')], 200, id="inm-other"),
    pytest.param([(b"If-Modified-Since", b"Thu, 01 Jan 2015 00:00:00 GMT")], 304,
                 id="ims-not-modified"),
    pytest.param([(b"If-Modified-Since", b"Thu, 01 Jan 2000 00:00:00 GMT")], 200,
                 id="ims-modified"),
])
def test_client_conditionals_are_answered_from_the_cache(setup, headers, status):
    proxy, script, _ = setup()
    script["/c"] = (200, [(b"Cache-Control", b"max-age=100"), (b"ETag", b'"c1"'),
                          (b"Last-Modified", b"Thu, 01 Jan 2015 00:00:00 GMT")], b"cbody")
    get(proxy.port, "/c")
    r = get(proxy.port, "/c", headers)
    assert r.status == status and script.count("/c") == 1
    if status == 304:
        assert r.body == b"" and r.header(b"etag") == b'"c1"'


# -- stale-while-revalidate, stale-if-error (RFC 5861, RFC 9111 §4.2.4)

def test_stale_while_revalidate_answers_at_once_and_refreshes_once(setup, clock):
    proxy, script, _ = setup()
    script["/swr"] = (200, [(b"Cache-Control", b"max-age=1, stale-while-revalidate=60"),
                            (b"ETag", b'"s1"')], b"old")
    get(proxy.port, "/swr")
    clock.advance(5)
    script["/swr"] = (200, [(b"Cache-Control", b"max-age=100"), (b"ETag", b'"s2"')], b"new",
                      0.3)
    r1 = get(proxy.port, "/swr")
    r2 = get(proxy.port, "/swr")
    assert r1.body == r2.body == b"old" and r1.header(b"x-cache") == b"STALE"
    assert wait_until(lambda: get(proxy.port, "/swr").body == b"new", 5)
    assert script.count("/swr") == 2  # one background refresh for both stale answers


def test_stale_if_error_serves_stale_on_a_5xx(setup, clock):
    proxy, script, _ = setup()
    script["/sie"] = (200, [(b"Cache-Control", b"max-age=1, stale-if-error=60")], b"kept")
    script["/plain"] = (200, [(b"Cache-Control", b"max-age=1")], b"plain")
    get(proxy.port, "/sie")
    get(proxy.port, "/plain")
    clock.advance(5)
    script["/sie"] = script["/plain"] = (500, [], b"broken")
    r = get(proxy.port, "/sie")
    assert r.status == 200 and r.body == b"kept" and r.header(b"x-cache") == b"STALE"
    assert b"fwd-status=500" in r.header(b"cache-status")
    assert get(proxy.port, "/plain").status == 500  # no stale-if-error: the error goes on


@pytest.mark.parametrize("cc,servers,extra,status", [
    pytest.param(b"max-age=1", '"http://127.0.0.1:{closed}"', "", 502, id="connect-refused"),
    pytest.param(b"max-age=1", '{{url = "{origin}", down = true}}', "", 503,
                 id="no-server-available"),
    pytest.param(b"max-age=1", '{{url = "{origin}", down = true}}',
                 '[upstreams.fallback]\nstatus = 200\nbody = "sorry"', 200,
                 id="before-the-static-fallback"),
    pytest.param(b"max-age=1, must-revalidate", '"http://127.0.0.1:{closed}"', "", 502,
                 id="must-revalidate-never-stale"),
])
def test_stale_when_no_server_answers(clock, cc, servers, extra, status):
    script = Script()
    script["/down"] = (200, [(b"Cache-Control", cc)], b"last good")
    config = """
[server]
access_log = "off"
[[upstreams]]
name = "app"
servers = [{servers}]
connect_timeout = "1s"
{extra}
[[routes]]
name = "all"
paths = ["/*"]
upstream = "app"
[routes.cache]
stale_if_unreachable = "60s"
"""
    with Origin(script) as origin, InProcessProxy(
            config.format(servers=f'"{origin.url}"', extra="")) as proxy:
        get(proxy.port, "/down")
        proxy.swap(config.format(servers=servers.format(closed=closed_port(),
                                                        origin=origin.url), extra=extra))
        clock.advance(5)
        r = get(proxy.port, "/down")
    if b"must-revalidate" in cc:
        assert r.status == status
    else:
        assert r.status == 200 and r.body == b"last good"
        assert b"fwd=stale; fwd-status=%d" % status in r.header(b"cache-status")


def test_stale_while_the_upstream_circuit_is_open(clock):
    # A cached answer is the best fallback an open breaker can have (RFC 9111 §4.2.4).
    script = Script()
    script["/page"] = (200, [(b"Cache-Control", b"max-age=1")], b"last good")
    script["/boom"] = (503, [], b"overloaded")
    config = """
[server]
access_log = "off"
[[upstreams]]
name = "app"
servers = ["{url}"]
fail_on = ["error", "timeout", "http_503"]
[upstreams.circuit_breaker]
scope = "upstream"
consecutive_failures = 2
failure_rate = 0.0
cooldown = "60s"
[[routes]]
name = "all"
paths = ["/*"]
upstream = "app"
[routes.cache]
"""
    with Origin(script) as origin, InProcessProxy(config.replace("{url}", origin.url)) as p:
        get(p.port, "/page")
        for _ in range(2):
            assert get(p.port, "/boom").status == 503  # the origin's: the circuit opens
        clock.advance(5)
        r = get(p.port, "/page")
        assert r.status == 200 and r.body == b"last good"
        assert b"fwd=stale; fwd-status=503" in r.header(b"cache-status")
        assert script.count("/page") == 1  # the open circuit sent nothing upstream


# -- collapsing

def test_fifty_concurrent_misses_send_one_request_upstream(setup):
    proxy, script, _ = setup()
    all_in = threading.Event()

    def slow(req):  # answers once the proxy holds all fifty (the origin's thread waits)
        all_in.wait(10)
        return 200, [(b"Cache-Control", b"max-age=100")], b"s" * 2000

    def in_flight():
        return sum(c.active is not None for c in proxy.worker.conns)

    script["/slow"] = slow
    with ThreadPoolExecutor(50) as pool:
        sent = [pool.submit(get, proxy.port, "/slow") for _ in range(50)]
        try:
            assert wait_until(lambda: proxy.call(in_flight) == 50, 10)
        finally:
            all_in.set()
        results = [f.result() for f in sent]
    assert all(r.status == 200 and r.body == b"s" * 2000 for r in results)
    assert script.count("/slow") == 1
    statuses = sorted(r.header(b"cache-status").split(b";")[1].strip() for r in results)
    assert statuses == [b"fwd=uri-miss"] * 50  # one stored it, 49 waited for it
    assert sum(b"; collapsed; ttl=" in r.header(b"cache-status") for r in results) == 49


def test_waiters_go_upstream_when_the_answer_is_not_storable(setup):
    proxy, script, _ = setup()
    script["/priv"] = (200, [(b"Cache-Control", b"private")], b"p", 0.2)
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: get(proxy.port, "/priv"), range(5)))
    assert all(r.body == b"p" for r in results) and script.count("/priv") == 5


# -- invalidation (§4.4)

@pytest.mark.parametrize("method,status,invalidated", [
    ("POST", 200, True), ("PUT", 204, True), ("DELETE", 200, True), ("POST", 500, False),
])
def test_unsafe_methods_that_succeed_invalidate(setup, method, status, invalidated):
    proxy, script, _ = setup()
    script["/u"] = lambda req: ((200, [(b"Cache-Control", b"max-age=100")], b"doc")
                                if req.method == b"GET" else (status, [], b""))
    get(proxy.port, "/u")
    with Conn(proxy.port) as c:
        assert c.request(method, "/u", body=b"x").status == status
    get(proxy.port, "/u")
    assert script.count("/u") == (4 if invalidated else 3) - 1


def test_a_post_answer_naming_its_own_url_serves_later_gets(setup):
    # RFC 9110 §9.3.3: explicit freshness and Content-Location = the target URI.
    proxy, script, _ = setup()
    script["/form"] = lambda req: (
        (200, [(b"Cache-Control", b"max-age=100"), (b"Content-Location", b"/form")],
         b"posted") if req.method == b"POST" else (200, [], b"from get"))
    with Conn(proxy.port) as c:
        assert c.request("POST", "/form", body=b"x").body == b"posted"
    r = get(proxy.port, "/form")
    assert r.body == b"posted" and r.header(b"x-cache") == b"HIT"
    script["/other"] = lambda req: (200, [(b"Cache-Control", b"max-age=100")], b"p")
    with Conn(proxy.port) as c:
        c.request("POST", "/other", body=b"x")  # no Content-Location: not for GETs
    assert get(proxy.port, "/other").header(b"x-cache") == b"MISS"


def test_location_and_content_location_are_invalidated(setup):
    proxy, script, _ = setup()
    for path in ("/loc", "/cloc", "/other"):
        script[path] = (200, [(b"Cache-Control", b"max-age=100")], path.encode())
        get(proxy.port, path)
    script["/make"] = (201, [(b"Location", b"/loc"),
                             (b"Content-Location", b"http://test/cloc")], b"")
    with Conn(proxy.port) as c:
        assert c.request("POST", "/make", body=b"x").status == 201
    for path in ("/loc", "/cloc", "/other"):
        get(proxy.port, path)
    assert [script.count(p) for p in ("/loc", "/cloc", "/other")] == [2, 2, 1]


# -- config

@pytest.mark.parametrize("line,path,words", [
    pytest.param('store = "redis"', "routes[0].cache.store", "no [redis] table", id="redis"),
    pytest.param("max_object_size = 0", "routes[0].cache.max_object_size", "at least 1",
                 id="object-size"),
    pytest.param('key_parts = ["bogus"]', "routes[0].cache.key_parts", "not a key part",
                 id="key-parts"),
    pytest.param('cache_status = "two words"', "routes[0].cache.cache_status", "token",
                 id="cache-status-name"),
    pytest.param('surrogate_key_header = "Bad Header"', "routes[0].cache.surrogate_key_header",
                 "", id="tag-header"),
    pytest.param('targeted_fields = ["CDN Cache-Control"]', "routes[0].cache.targeted_fields",
                 "not a valid header name", id="targeted-field"),
])
def test_a_bad_cache_config_names_its_key(line, path, words):
    with pytest.raises(ConfigError) as err:
        parse(proxy_config("http://127.0.0.1:1", route=f"[routes.cache]\n{line}"))
    assert any(p == path and words in m for p, m in err.value.errors), err.value.errors
