"""The recency list shared by ext.lru and ext.ratelimit (ext/_lrulist.pxd), seen through both.

The list's links are raw pointers that own nothing: the table's dict is each entry's only
owner. These cases pin what that promises (entries are freed by refcount the moment a table
lets go of them, never by the cycle collector) and that it holds when a value's finaliser
calls back into its cache. Both implementations run, as everywhere in tests/ext.
"""

import gc
import pathlib
import sys
import weakref

import pytest

import ext.ratelimit as cy_rl
import tests.reference.ratelimit as ref_rl
from ext.lru import LruCache as CyLruCache
from tests.reference.lru import LruCache as RefLruCache

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(params=[pytest.param(CyLruCache, id="cython"),
                        pytest.param(RefLruCache, id="reference")])
def Lru(request):
    return request.param


@pytest.fixture(params=[pytest.param(cy_rl, id="cython"), pytest.param(ref_rl, id="reference")])
def rl(request):
    return request.param


@pytest.fixture
def no_cycle_collector():
    # Whatever is freed inside the test was freed by refcount alone.
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Value:
    """A cache value that can be watched (weakref) and may act when released."""

    def __init__(self, on_release=None):
        self.on_release = on_release

    def __del__(self):
        if self.on_release is not None:
            self.on_release()


def test_both_tables_cimport_the_one_list():
    for name in ("lru", "ratelimit"):
        pxd = (ROOT / "ext" / f"{name}.pxd").read_text()
        pyx = (ROOT / "ext" / f"{name}.pyx").read_text()
        assert "from ext._lrulist cimport LruLink" in pxd
        assert "cdef LruLink link" in pxd and "cdef LruLink _root" in pxd
        # The link surgery lives in ext/_lrulist.pxd only.
        for own_list_code in (".next =", "_root.prev", "self._unlink", "self._push_front"):
            assert own_list_code not in pyx, (name, own_list_code)


def test_values_are_released_the_moment_the_cache_lets_go(Lru, no_cycle_collector):
    cache = Lru(max_bytes=100, max_entries=2)
    values = {k: Value() for k in "abcde"}
    refs = {k: weakref.ref(v) for k, v in values.items()}
    for k in "abc":
        cache.set(k, values.pop(k), 1, 0.0)  # "c" evicts "a"
    assert refs["a"]() is None
    cache.set("b", values.pop("d"), 1, 0.0)  # replace
    assert refs["b"]() is None
    assert cache.pop("c") is not None
    assert refs["c"]() is None
    cache.set("e", values.pop("e"), 1, 0.0)
    cache.clear()
    assert refs["d"]() is None and refs["e"]() is None


def test_dropping_a_full_cache_frees_every_value(Lru, no_cycle_collector):
    cache = Lru(max_bytes=1000, max_entries=100)
    refs = []
    for i in range(150):
        value = Value()
        refs.append(weakref.ref(value))
        cache.set(i, value, 1, 0.0)
        del value
    assert len(cache) == 100
    del cache
    assert all(r() is None for r in refs)


def test_dropping_a_limiter_frees_every_key(rl, no_cycle_collector):
    keys = [f"10.0.0.{i}-{id(rl)}" for i in range(12)]
    before = [sys.getrefcount(k) for k in keys]
    limiters = [rl.FixedWindow(5, 1.0, max_keys=8), rl.SlidingLog(5, 1.0, max_keys=8),
                rl.SlidingCounter(5, 1.0, max_keys=8), rl.TokenBucket(5.0, 5, max_keys=8),
                rl.LeakyBucket(5.0, 5, max_keys=8)]
    for lim in limiters:
        for k in keys:
            lim.check(k, 0.0)
        lim.remove(keys[-1])
        assert len(lim) == 7
    del lim, k
    limiters.clear()
    assert [sys.getrefcount(k) for k in keys] == before


def test_a_value_finaliser_may_call_back_into_its_cache(Lru):
    cache = Lru(max_bytes=100, max_entries=3)
    calls = []

    def reenter():
        calls.append((cache.get("a", 0.0), cache.get("b", 0.0)))

    cache.set("a", Value(reenter), 1, 0.0)
    cache.set("b", Value(), 1, 0.0)
    cache.set("c", Value(), 1, 0.0)
    cache.set("a", "new a", 1, 0.0)  # releases the first value while "a" is being replaced
    assert len(calls) == 1
    cache.set("d", "d", 1, 0.0)  # "b" was used in the finaliser, so "c" is the oldest
    assert sorted(k for k in "abcd" if k in cache) == ["a", "b", "d"]
    assert cache.get("a", 0.0) == "new a"
    assert (len(cache), cache.size_bytes, cache.evictions) == (3, 3, 1)
