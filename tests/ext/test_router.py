"""ext.router.Router against its reference (tests/reference/router.py): one suite, two impls.

Routes are added with their name as the opaque `route` object, so results read as names.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext.router import MAX_CACHED_PATH
from ext.router import Router as CyRouter
from tests.reference.router import MAX_CACHED_PATH as REF_MAX_CACHED_PATH
from tests.reference.router import Router as RefRouter

IMPLS = [pytest.param(CyRouter, id="cython"), pytest.param(RefRouter, id="reference")]

GET, POST, PUT, DELETE = b"GET", b"POST", b"PUT", b"DELETE"
ANY = None


@pytest.fixture(params=IMPLS)
def Router(request):
    return request.param


def build(Router, routes, **kw):
    router = Router(**kw)
    for name, hosts, path, methods in routes:
        router.add(name, hosts, path, None if methods is None else frozenset(methods))
    return router


def R(name, path, methods=ANY, hosts=None):
    return (name, hosts, path, methods)


def Q(path, expected, method=GET, host="h.test"):
    return (method, host, path, expected)


# (routes, requests): each request is (method, host, path, expected match result).
CASES = [
    pytest.param(
        [R("user", "/users/{id}"), R("me", "/users/me")],
        [Q("/users/me", ("me", None)), Q("/users/42", ("user", {"id": "42"}))],
        id="static-beats-param"),
    pytest.param(
        [R("tail", "/files/*"), R("file", "/files/{name}")],
        [Q("/files/a", ("file", {"name": "a"})), Q("/files/a/b", ("tail", {"*": "a/b"}))],
        id="param-beats-tail"),
    pytest.param(
        [R("tail", "/files/*"), R("readme", "/files/readme")],
        [Q("/files/readme", ("readme", None)), Q("/files/other", ("tail", {"*": "other"}))],
        id="static-beats-tail"),
    pytest.param(
        [R("abc", "/a/b/c"), R("axd", "/a/{x}/d")],
        [Q("/a/b/d", ("axd", {"x": "b"})), Q("/a/b/c", ("abc", None))],
        id="backtrack-from-static-to-param"),
    pytest.param(
        [R("abc", "/a/b/c"), R("a-tail", "/a/*")],
        [Q("/a/b/x", ("a-tail", {"*": "b/x"})), Q("/a/b", ("a-tail", {"*": "b"}))],
        id="backtrack-from-static-to-tail"),
    pytest.param(
        [R("xb", "/{x}/b"), R("ay", "/a/{y}")],
        [Q("/a/b", ("ay", {"y": "b"})), Q("/c/b", ("xb", {"x": "c"})), Q("/a/c", ("ay", {"y": "c"}))],
        id="static-first-segment-wins-over-later-static"),
    pytest.param(
        [R("ab", "/a/b/c/d"), R("a-x", "/a/{x}/c/e"), R("a-y-tail", "/a/{y}/*")],
        [Q("/a/b/c/e", ("a-x", {"x": "b"})), Q("/a/b/c/f", ("a-y-tail", {"y": "b", "*": "c/f"}))],
        id="backtrack-several-levels"),
    pytest.param(
        [R("a", "/a"), R("a-slash", "/a/")],
        [Q("/a", ("a", None)), Q("/a/", ("a-slash", None))],
        id="trailing-slash-is-significant"),
    pytest.param(
        [R("a-slash", "/a/"), R("p", "/p/{id}")],
        [Q("/a", (None, None)), Q("/p/1/", (None, None)), Q("/p/1", ("p", {"id": "1"}))],
        id="trailing-slash-no-implicit-redirect"),
    pytest.param(
        [R("user", "/users/{id}")],
        [Q("/users/", (None, None)), Q("/users", (None, None)), Q("/users/a/b", (None, None))],
        id="param-matches-one-non-empty-segment"),
    pytest.param(
        [R("static", "/static/*")],
        [Q("/static", ("static", {"*": ""})), Q("/static/", ("static", {"*": ""})),
         Q("/static/a/b.css", ("static", {"*": "a/b.css"})), Q("/staticx", (None, None)),
         Q("/static//x", ("static", {"*": "/x"}))],
        id="tail-matches-bare-prefix-and-below"),
    pytest.param(
        [R("files", "/files/{path*}")],
        [Q("/files/a/b", ("files", {"path": "a/b"})), Q("/files", ("files", {"path": ""}))],
        id="named-tail"),
    pytest.param(
        [R("all", "/*")],
        [Q("/", ("all", {"*": ""})), Q("/x/y", ("all", {"*": "x/y"}))],
        id="root-tail-matches-everything"),
    pytest.param(
        [R("tail", "/static/*"), R("exact", "/static")],
        [Q("/static", ("exact", None)), Q("/static/", ("tail", {"*": ""}))],
        id="exact-route-beats-tail-on-bare-prefix"),
    pytest.param(
        [R("root", "/*"), R("api", "/api/*"), R("v1", "/api/v1/*")],
        [Q("/api/v1/x", ("v1", {"*": "x"})), Q("/api/v2", ("api", {"*": "v2"})),
         Q("/web", ("root", {"*": "web"})), Q("/api", ("api", {"*": ""}))],
        id="deeper-tail-beats-shallower"),
    pytest.param(
        [R("order", "/users/{id}/orders/{order}")],
        [Q("/users/7/orders/9", ("order", {"id": "7", "order": "9"}))],
        id="several-params"),
    pytest.param(
        [R("tenant-tail", "/t/{tenant}/{rest*}")],
        [Q("/t/acme/a/b", ("tenant-tail", {"tenant": "acme", "rest": "a/b"})),
         Q("/t/acme", ("tenant-tail", {"tenant": "acme", "rest": ""}))],
        id="param-then-tail"),
    pytest.param(
        [R("xa", "/{x}/a"), R("yb", "/{y}/b")],
        [Q("/1/a", ("xa", {"x": "1"})), Q("/1/b", ("yb", {"y": "1"}))],
        id="different-param-names-share-a-level"),
    pytest.param(
        [R("root", "/"), R("empty-seg", "/a//b")],
        [Q("/", ("root", None)), Q("/a//b", ("empty-seg", None)), Q("/a/b", (None, None))],
        id="root-and-empty-segments-are-static"),
    pytest.param(
        [R("all", "/*")],
        [Q("", (None, None)), Q("*", (None, None)), Q("http://h/x", (None, None))],
        id="path-without-leading-slash-never-matches"),
    pytest.param(
        [R("r", "/%7Bx%7D/{p}")],
        [Q("/%7Bx%7D/a%2Fb", ("r", {"p": "a%2Fb"}))],
        id="captures-are-raw-not-percent-decoded"),
    # --- hosts ---
    pytest.param(
        [R("any", "/x"), R("wild", "/x", hosts=["*.example.com"]),
         R("exact", "/x", hosts=["api.example.com"])],
        [Q("/x", ("exact", None), host="api.example.com"),
         Q("/x", ("wild", None), host="www.example.com"),
         Q("/x", ("any", None), host="other.test")],
        id="host-exact-beats-wildcard-beats-any"),
    pytest.param(
        [R("wild", "/x", hosts=["*.example.com"])],
        [Q("/x", (None, None), host="example.com"), Q("/x", (None, None), host="badexample.com"),
         Q("/x", ("wild", None), host="a.b.example.com"), Q("/x", (None, None), host="")],
        id="wildcard-needs-a-label-before-the-suffix"),
    pytest.param(
        [R("short", "/x", hosts=["*.example.com"]), R("long", "/x", hosts=["*.api.example.com"])],
        [Q("/x", ("long", None), host="v1.api.example.com"),
         Q("/x", ("short", None), host="api.example.com"),
         Q("/x", ("short", None), host="www.example.com")],
        id="wildcard-longest-suffix-first"),
    pytest.param(
        [R("exact", "/only-exact", hosts=["a.test"]), R("any", "/*")],
        [Q("/only-exact", ("exact", None), host="a.test"),
         Q("/other", ("any", {"*": "other"}), host="a.test")],
        id="host-tier-falls-through-on-path"),
    pytest.param(
        [R("exact", "/x", [GET], hosts=["a.test"]), R("wild", "/x", [PUT], hosts=["*.test"]),
         R("any", "/x", [POST])],
        [Q("/x", ("exact", None), GET, "a.test"), Q("/x", ("wild", None), PUT, "a.test"),
         Q("/x", ("any", None), POST, "a.test"), Q("/x", (None, (GET, POST, PUT)), DELETE, "a.test")],
        id="host-tier-falls-through-on-method"),
    pytest.param(
        [R("exact-tail", "/*", hosts=["a.test"]), R("any-static", "/x")],
        [Q("/x", ("exact-tail", {"*": "x"}), host="a.test")],
        id="host-tier-beats-path-specificity"),
    pytest.param(
        [R("two", "/x", hosts=["a.test", "b.test", "a.test"])],
        [Q("/x", ("two", None), host="a.test"), Q("/x", ("two", None), host="b.test"),
         Q("/x", (None, None), host="c.test")],
        id="route-with-several-hosts"),
    pytest.param(
        [R("empty-hosts", "/x", hosts=[])],
        [Q("/x", ("empty-hosts", None), host="anything.test")],
        id="empty-host-list-is-any-host"),
    # --- methods ---
    pytest.param(
        [R("get", "/x", [GET]), R("post", "/x", [POST, GET])],
        [Q("/x", ("get", None), GET), Q("/x", ("post", None), POST),
         Q("/x", (None, (GET, POST)), DELETE)],
        id="405-allowed-is-sorted-union"),
    pytest.param(
        [R("user", "/users/{id}", [GET]), R("tail", "/users/*", [PUT])],
        [Q("/users/1", (None, (GET, PUT)), DELETE), Q("/users/1", ("tail", {"*": "1"}), PUT)],
        id="405-collects-every-candidate"),
    pytest.param(
        [R("exact", "/x", [GET], hosts=["a.test"]), R("any", "/x", ANY)],
        [Q("/x", ("any", None), DELETE, "a.test")],
        id="405-not-when-a-later-any-method-route-matches"),
    pytest.param(
        [R("get", "/x", [GET])],
        [Q("/y", (None, None), DELETE)],
        id="404-when-nothing-matches-the-path"),
    pytest.param(
        [R("static-get", "/a/b", [GET]), R("param-any", "/a/{x}")],
        [Q("/a/b", ("static-get", None), GET), Q("/a/b", ("param-any", {"x": "b"}), POST)],
        id="method-mismatch-falls-back-to-lower-precedence"),
    pytest.param(
        [R("first", "/x", [GET]), R("second", "/x", [GET, POST]), R("third", "/x")],
        [Q("/x", ("first", None), GET), Q("/x", ("second", None), POST),
         Q("/x", ("third", None), PUT)],
        id="duplicate-patterns-keep-add-order"),
    pytest.param(
        [R("any", "/x")],
        [Q("/x", ("any", None), b"PROPFIND")],
        id="methods-none-accepts-any-method"),
]


@pytest.mark.parametrize(("routes", "requests"), CASES)
def test_router_case(Router, routes, requests):
    router = build(Router, routes)
    assert len(router) == len(routes)
    for method, host, path, expected in requests:
        assert router.match(method, host, path) == expected, (method, host, path)
        # Second time through the cache: same answer.
        assert router.match(method, host, path) == expected, (method, host, path)


@pytest.mark.parametrize(
    ("hosts", "path", "methods", "error", "message"),
    [
        pytest.param(None, "users", None, ValueError, "start with '/'", id="no-leading-slash"),
        pytest.param(None, "", None, ValueError, "start with '/'", id="empty-path"),
        pytest.param(None, "/a/{}", None, ValueError, "empty parameter name", id="empty-braces"),
        pytest.param(None, "/a/{*}", None, ValueError, "empty parameter name", id="empty-tail-name"),
        pytest.param(None, "/a/{id", None, ValueError, "brace", id="unclosed-brace"),
        pytest.param(None, "/a/id}", None, ValueError, "brace", id="unopened-brace"),
        pytest.param(None, "/a/x{id}", None, ValueError, "brace", id="param-inside-segment"),
        pytest.param(None, "/a/{a}{b}", None, ValueError, "brace", id="two-params-one-segment"),
        pytest.param(None, "/a/{b c}", None, ValueError, "invalid parameter name", id="bad-param-name"),
        pytest.param(None, "/*/a", None, ValueError, "last segment", id="star-tail-not-last"),
        pytest.param(None, "/{p*}/a", None, ValueError, "last segment", id="named-tail-not-last"),
        pytest.param(None, "/{id}/{id}", None, ValueError, "duplicate", id="duplicate-param"),
        pytest.param(None, "/{x}/{x*}", None, ValueError, "duplicate", id="duplicate-param-and-tail"),
        pytest.param(["Example.com"], "/", None, ValueError, "bad host", id="uppercase-host"),
        pytest.param(["example.com:80"], "/", None, ValueError, "bad host", id="host-with-port"),
        pytest.param([""], "/", None, ValueError, "bad host", id="empty-host"),
        pytest.param(["*"], "/", None, ValueError, "bad host", id="bare-star-host"),
        pytest.param(["*."], "/", None, ValueError, "bad host", id="star-dot-only"),
        pytest.param(["a.*.com"], "/", None, ValueError, "bad host", id="star-in-the-middle"),
        pytest.param(["*example.com"], "/", None, ValueError, "bad host", id="star-without-dot"),
        pytest.param(["a..com"], "/", None, ValueError, "bad host", id="empty-label"),
        pytest.param(["ok.test", "bad host"], "/", None, ValueError, "bad host", id="one-bad-host"),
        pytest.param("a.test", "/", None, TypeError, "list", id="hosts-as-a-string"),
        pytest.param(None, "/", frozenset(), ValueError, "empty", id="empty-methods"),
        pytest.param(None, "/", frozenset(["GET"]), TypeError, "bytes", id="str-method"),
        pytest.param(None, "/", b"GET", TypeError, "single", id="methods-as-bytes"),
    ],
)
def test_add_rejects_bad_route(Router, hosts, path, methods, error, message):
    router = Router()
    router.add("ok", None, "/ok", None)
    with pytest.raises(error, match=message):
        router.add("bad", hosts, path, methods)
    # Nothing half-added.
    assert len(router) == 1
    assert router.match(GET, "a.test", "/") == (None, None)
    assert router.match(GET, "ok.test", "/ok") == ("ok", None)


def test_route_none_is_rejected(Router):
    router = Router()
    with pytest.raises(TypeError, match="None"):
        router.add(None, None, "/x", None)
    assert len(router) == 0


def test_params_dict_is_fresh_per_match(Router):
    router = build(Router, [R("user", "/users/{id}")])
    first = router.match(GET, "h", "/users/1")[1]
    first["id"] = "tampered"
    assert router.match(GET, "h", "/users/1") == ("user", {"id": "1"})


def test_negative_cache_size_raises(Router):
    with pytest.raises(ValueError, match="cache_size"):
        Router(-1)


# --- the match cache (one per host tier) ---

def test_cache_hits_count_repeated_paths(Router):
    router = build(Router, [R("user", "/users/{id}")], cache_size=8)
    assert router.cache_size == 8
    router.match(GET, "h", "/users/1")
    assert (router.cache_hits, router.cache_misses) == (0, 1)
    router.match(GET, "h", "/users/1")
    router.match(POST, "h", "/users/1")  # the method is not part of the key
    assert (router.cache_hits, router.cache_misses) == (2, 1)
    router.match(GET, "h", "/users/2")
    assert (router.cache_hits, router.cache_misses) == (2, 2)


def test_cache_also_stores_misses(Router):
    router = build(Router, [R("x", "/x")], cache_size=8)
    for _ in range(3):
        assert router.match(GET, "h", "/nope") == (None, None)
    assert (router.cache_hits, router.cache_misses) == (2, 1)


def test_cache_counts_one_lookup_per_tier_probed(Router):
    routes = [R("exact", "/e", hosts=["a.test"]), R("wild", "/w", hosts=["*.test"]), R("any", "/a")]
    router = build(Router, routes, cache_size=8)
    router.match(GET, "a.test", "/e")  # exact tier answers
    assert (router.cache_hits, router.cache_misses) == (0, 1)
    router.match(GET, "a.test", "/a")  # exact, wildcard, then any
    assert (router.cache_hits, router.cache_misses) == (0, 4)
    router.match(GET, "a.test", "/a")
    assert (router.cache_hits, router.cache_misses) == (3, 4)
    router.match(GET, "other.host", "/a")  # only the any tier exists for this host
    assert (router.cache_hits, router.cache_misses) == (4, 4)


def test_cache_is_lru_bounded(Router):
    router = build(Router, [R("p", "/{x}")], cache_size=2)
    for path in ("/a", "/b", "/c", "/a"):  # /a was evicted by /c
        router.match(GET, "h", path)
    assert (router.cache_hits, router.cache_misses) == (0, 4)
    router.match(GET, "h", "/c")
    assert (router.cache_hits, router.cache_misses) == (1, 4)


def test_cache_disabled(Router):
    router = build(Router, [R("p", "/{x}")], cache_size=0)
    for _ in range(3):
        assert router.match(GET, "h", "/a") == ("p", {"x": "a"})
    assert (router.cache_hits, router.cache_misses) == (0, 3)


def test_long_paths_are_not_cached(Router):
    router = build(Router, [R("all", "/*")], cache_size=8)
    long_path = "/" + "a" * MAX_CACHED_PATH
    for _ in range(2):
        assert router.match(GET, "h", long_path) == ("all", {"*": long_path[1:]})
    assert (router.cache_hits, router.cache_misses) == (0, 2)
    assert MAX_CACHED_PATH == REF_MAX_CACHED_PATH


def test_add_clears_the_cache_of_its_tiers(Router):
    router = build(Router, [R("tail", "/*"), R("exact", "/x", hosts=["a.test"])], cache_size=8)
    assert router.match(GET, "h", "/users/1") == ("tail", {"*": "users/1"})
    assert router.match(GET, "a.test", "/x") == ("exact", None)
    router.add("user", None, "/users/{id}", None)  # joins the any tier only
    assert router.match(GET, "h", "/users/1") == ("user", {"id": "1"})
    assert router.match(GET, "a.test", "/x") == ("exact", None)
    assert (router.cache_hits, router.cache_misses) == (1, 3)


def test_many_routes_stay_exact(Router):
    routes = [R(f"r{i}", f"/svc{i}/items/{{id}}", [GET]) for i in range(300)]
    routes += [R(f"s{i}", f"/svc{i}/static/*") for i in range(300)]
    router = build(Router, routes)
    assert router.match(GET, "h", "/svc123/items/9") == ("r123", {"id": "9"})
    assert router.match(POST, "h", "/svc123/items/9") == (None, (GET,))
    assert router.match(GET, "h", "/svc299/static/x.js") == ("s299", {"*": "x.js"})
    assert router.match(GET, "h", "/svc300/items/9") == (None, None)


# --- differential: random route sets and requests, Cython vs reference ---

PATTERN_SEGMENTS = st.sampled_from(["a", "b", "", "{x}", "{y}", "{x}"])
TAILS = st.sampled_from([None, None, "*", "{t*}", "{x*}"])
HOSTS = st.sampled_from(["a.com", "b.a.com", "*.a.com", "*.b.a.com", "x.b.a.com", "c.com"])
METHODS = st.sampled_from([GET, POST, PUT])


@st.composite
def route_specs(draw):
    segs = draw(st.lists(PATTERN_SEGMENTS, max_size=3))
    tail = draw(TAILS)
    path = "/" + "/".join(segs + ([tail] if tail else []))
    hosts = draw(st.one_of(st.none(), st.just([]), st.lists(HOSTS, min_size=1, max_size=2)))
    methods = draw(st.one_of(st.none(), st.frozensets(METHODS, min_size=1)))
    return (hosts, path, methods)


@st.composite
def requests(draw):
    segs = draw(st.lists(st.sampled_from(["a", "b", "c", ""]), max_size=4))
    path = "/" + "/".join(segs)
    if draw(st.integers(0, 20)) == 0:
        path = path[1:]
    host = draw(st.sampled_from(
        ["a.com", "b.a.com", "x.b.a.com", "y.x.b.a.com", ".a.com", "c.com", "a.com.x", ""]))
    method = draw(st.sampled_from([GET, POST, PUT, DELETE]))
    return (method, host, path)


# Adds come first (a route set), then requests interleaved with the odd late add, which must
# invalidate cached answers.
OPS = st.tuples(
    st.lists(st.tuples(st.just("add"), route_specs()), max_size=8),
    st.lists(
        st.one_of(
            st.tuples(st.just("match"), requests()),
            st.tuples(st.just("match"), requests()),
            st.tuples(st.just("match"), requests()),
            st.tuples(st.just("add"), route_specs()),
        ),
        max_size=30,
    ),
).map(lambda pair: pair[0] + pair[1])


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except (ValueError, TypeError) as exc:
        return ("error", type(exc))


@settings(max_examples=300, deadline=None)
@given(cache_size=st.sampled_from([0, 1, 2, 4096]), ops=OPS)
def test_router_matches_reference(cache_size, ops):
    cy, ref = CyRouter(cache_size), RefRouter(cache_size)
    for i, (kind, args) in enumerate(ops):
        if kind == "add":
            args = (f"r{i}", *args)
            assert outcome(cy.add, *args) == outcome(ref.add, *args), args
            assert len(cy) == len(ref)
        else:
            assert cy.match(*args) == ref.match(*args), args
        assert (cy.cache_hits, cy.cache_misses) == (ref.cache_hits, ref.cache_misses), args
