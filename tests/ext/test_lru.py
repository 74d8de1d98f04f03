"""ext.lru.LruCache against its reference (tests/reference/lru.py): one suite, two impls."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext.lru import LruCache as CyLruCache
from tests.reference.lru import LruCache as RefLruCache

IMPLS = [pytest.param(CyLruCache, id="cython"), pytest.param(RefLruCache, id="reference")]


@pytest.fixture(params=IMPLS)
def Lru(request):
    return request.param


# Table ops. set: ("set", key, size, now, ttl) stores the value f"{key}@{size}";
# get: ("get", key, now, expected); pop: ("pop", key, expected).
def S(key, size, now=0.0, ttl=0.0):
    return ("set", key, size, now, ttl)


def G(key, now, expected):
    return ("get", key, now, expected)


def P(key, expected):
    return ("pop", key, expected)


CASES = [
    pytest.param(
        dict(max_bytes=10), [S("a", 4), S("b", 4), S("c", 4)],
        dict(keys="bc", size_bytes=8, evictions=1),
        id="byte-bound-evicts-least-recent"),
    pytest.param(
        dict(max_bytes=10), [S("a", 4), S("b", 4), S("c", 9)],
        dict(keys="c", size_bytes=9, evictions=2),
        id="byte-bound-evicts-as-many-as-needed"),
    pytest.param(
        dict(max_bytes=10), [S("a", 4), S("b", 6)],
        dict(keys="ab", size_bytes=10, evictions=0),
        id="exactly-full-is-allowed"),
    pytest.param(
        dict(max_bytes=100, max_entries=2), [S("a", 1), S("b", 1), S("c", 1)],
        dict(keys="bc", size_bytes=2, evictions=1),
        id="entry-bound-evicts-least-recent"),
    pytest.param(
        dict(max_bytes=100, max_entries=0), [S(k, 1) for k in "abcdefghij"],
        dict(keys="abcdefghij", size_bytes=10, evictions=0),
        id="max-entries-zero-is-unbounded-count"),
    pytest.param(
        dict(max_bytes=10, max_entries=2), [S("a", 1), S("b", 1), G("a", 0.0, "a@1"), S("c", 1)],
        dict(keys="ac", hits=1, evictions=1),
        id="get-hit-moves-to-most-recent"),
    pytest.param(
        dict(max_bytes=10, max_entries=2), [S("a", 1), S("b", 1), S("a", 2), S("c", 1)],
        dict(keys="ac", size_bytes=3, evictions=1),
        id="replace-moves-to-most-recent"),
    pytest.param(
        dict(max_bytes=10), [S("a", 4), S("a", 7), G("a", 0.0, "a@7")],
        dict(keys="a", size_bytes=7, len=1),
        id="replace-updates-size-and-value"),
    pytest.param(
        dict(max_bytes=10), [S("a", 4), S("b", 5), S("a", 6)],
        dict(keys="a", size_bytes=6, evictions=1),
        id="replace-growing-evicts-others"),
    pytest.param(
        dict(max_bytes=10), [S("a", 4), S("b", 11), G("b", 0.0, None)],
        dict(keys="a", size_bytes=4, evictions=0, misses=1),
        id="oversize-item-not-stored"),
    pytest.param(
        dict(max_bytes=10), [S("a", 4), S("a", 11), G("a", 0.0, None)],
        dict(keys="", size_bytes=0, evictions=0),
        id="oversize-replacement-drops-old-value"),
    pytest.param(
        dict(max_bytes=10), [S("a", 0), S("b", 0)],
        dict(keys="ab", size_bytes=0),
        id="zero-size-items-are-stored"),
    pytest.param(
        dict(max_bytes=10), [S("a", 1, now=10.0, ttl=5.0), G("a", 14.999, "a@1"), G("a", 15.0, None)],
        dict(keys="", size_bytes=0, hits=1, misses=1, evictions=0),
        id="ttl-expires-at-now-plus-ttl"),
    pytest.param(
        dict(max_bytes=10), [S("a", 1, now=10.0, ttl=0.0), S("b", 1, now=10.0, ttl=-3.0),
                             G("a", 1e12, "a@1"), G("b", 1e12, "b@1")],
        dict(keys="ab", hits=2, misses=0),
        id="ttl-zero-or-negative-never-expires"),
    pytest.param(
        dict(max_bytes=10), [S("a", 1, now=0.0, ttl=1.0), S("a", 1, now=5.0, ttl=1.0),
                             G("a", 5.5, "a@1")],
        dict(keys="a"),
        id="replace-resets-ttl"),
    pytest.param(
        dict(max_bytes=10), [S("a", 3, now=0.0, ttl=1.0), G("a", 2.0, None)],
        dict(keys="", len=0, size_bytes=0, misses=1),
        id="expired-get-removes-item"),
    pytest.param(
        dict(max_bytes=10), [S("a", 3, now=0.0, ttl=1.0), P("a", "a@3")],
        dict(keys="", size_bytes=0),
        id="pop-ignores-ttl"),
    pytest.param(
        dict(max_bytes=10), [S("a", 3), P("a", "a@3"), P("a", None), G("a", 0.0, None)],
        dict(keys="", size_bytes=0, hits=0, misses=1),
        id="pop-returns-value-then-none"),
    pytest.param(
        dict(max_bytes=10), [G("x", 0.0, None), S("x", 1), G("x", 0.0, "x@1"), G("x", 0.0, "x@1")],
        dict(hits=2, misses=1, evictions=0),
        id="hit-and-miss-counters"),
]


def run_ops(cache, ops):
    for op in ops:
        if op[0] == "set":
            _, key, size, now, ttl = op
            assert cache.set(key, f"{key}@{size}", size, now, ttl) is None
        elif op[0] == "get":
            _, key, now, expected = op
            assert cache.get(key, now) == expected, op
        else:
            _, key, expected = op
            assert cache.pop(key) == expected, op


@pytest.mark.parametrize(("ctor", "ops", "expected"), CASES)
def test_lru_case(Lru, ctor, ops, expected):
    cache = Lru(**ctor)
    run_ops(cache, ops)
    keys = expected.pop("keys", None)
    if keys is not None:
        assert sorted(k for k in "abcdefghijx" if k in cache) == sorted(keys)
        assert len(cache) == len(keys)
    for attr, value in expected.items():
        actual = len(cache) if attr == "len" else getattr(cache, attr)
        assert actual == value, attr


def test_contains_ignores_ttl_and_does_not_count(Lru):
    cache = Lru(10)
    cache.set("a", 1, 1, 0.0, 1.0)
    assert "a" in cache
    assert "b" not in cache
    assert (cache.hits, cache.misses) == (0, 0)


def test_clear_empties_but_keeps_counters(Lru):
    cache = Lru(10, 1)
    cache.set("a", 1, 1, 0.0)
    cache.set("b", 1, 1, 0.0)
    cache.get("b", 0.0)
    cache.get("a", 0.0)
    cache.clear()
    assert (len(cache), cache.size_bytes, "b" in cache) == (0, 0, False)
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 1)
    cache.set("c", 2, 1, 0.0)
    assert cache.get("c", 0.0) == 2


def test_limits_are_exposed_and_readonly(Lru):
    cache = Lru(100, 3)
    assert (cache.max_bytes, cache.max_entries, cache.size_bytes) == (100, 3, 0)
    for attr in ("max_bytes", "max_entries", "size_bytes", "hits", "misses", "evictions"):
        with pytest.raises(AttributeError):
            setattr(cache, attr, 1)


def test_any_hashable_key(Lru):
    cache = Lru(10)
    cache.set((b"GET", "/a"), "x", 1, 0.0)
    cache.set(7, "y", 1, 0.0)
    assert cache.get((b"GET", "/a"), 0.0) == "x"
    assert cache.get(7, 0.0) == "y"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param((0,), "max_bytes", id="max-bytes-zero"),
        pytest.param((-1,), "max_bytes", id="max-bytes-negative"),
        pytest.param((10, -1), "max_entries", id="max-entries-negative"),
    ],
)
def test_bad_limits_raise(Lru, args, match):
    with pytest.raises(ValueError, match=match):
        Lru(*args)


def test_negative_size_raises(Lru):
    cache = Lru(10)
    with pytest.raises(ValueError, match="size"):
        cache.set("a", 1, -1, 0.0)
    assert len(cache) == 0


def test_growth_stays_bounded(Lru):
    cache = Lru(1000, 50)
    for i in range(5000):
        cache.set(i, i, 7, float(i), 3.0)
        assert len(cache) <= 50 and cache.size_bytes <= 1000
    assert cache.evictions == 5000 - 50


# --- differential: the Cython cache and the reference agree on every observable result ---

KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.integers(0, 12), st.sampled_from([0.0, -1.0, 0.5, 1.0, 3.0])),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("pop"), KEYS),
        st.tuples(st.just("in"), KEYS),
        st.tuples(st.just("clear")),
    ),
    max_size=60,
)


def state(cache):
    return (len(cache), cache.size_bytes, cache.hits, cache.misses, cache.evictions)


@settings(max_examples=300, deadline=None)
@given(
    max_bytes=st.integers(1, 20),
    max_entries=st.integers(0, 4),
    ops=OPS,
    steps=st.lists(st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0, 2.0]), min_size=60, max_size=60),
)
def test_lru_matches_reference(max_bytes, max_entries, ops, steps):
    cy, ref = CyLruCache(max_bytes, max_entries), RefLruCache(max_bytes, max_entries)
    now = 0.0
    sizes = {}  # key -> size of its latest set
    for i, op in enumerate(ops):
        now += steps[i]  # time never goes backwards
        if op[0] == "set":
            _, key, size, ttl = op
            sizes[key] = size
            results = [c.set(key, (key, i), size, now, ttl) for c in (cy, ref)]
        elif op[0] == "get":
            results = [c.get(op[1], now) for c in (cy, ref)]
        elif op[0] == "pop":
            results = [c.pop(op[1]) for c in (cy, ref)]
        elif op[0] == "in":
            results = [op[1] in c for c in (cy, ref)]
        else:
            results = [c.clear() for c in (cy, ref)]
        assert results[0] == results[1], op
        assert state(cy) == state(ref), op
        assert cy.size_bytes <= max_bytes
        assert max_entries == 0 or len(cy) <= max_entries
    # The byte total is the sum of the latest sizes of the keys still present.
    remaining = sum(sizes[k] for k in "abcde" if k in cy)
    assert cy.size_bytes == ref.size_bytes == remaining
