"""ext.ratelimit against its reference (tests/reference/ratelimit.py): one suite, two impls."""

import copy
import math
import pathlib

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import ext.ratelimit as cy
import tests.reference.ratelimit as ref

ALLOW, DELAY, REJECT = 1, 2, 0
INF = math.inf
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(params=[pytest.param(cy, id="cython"), pytest.param(ref, id="reference")])
def rl(request):
    return request.param


def verdicts(lim, key, now, n, cost=1):
    return [lim.check(key, now, cost)[0] for _ in range(n)]


def test_constants(rl):
    assert (rl.ALLOW, rl.DELAY, rl.REJECT) == (ALLOW, DELAY, REJECT)


# --- FixedWindow ---

def test_fixed_window_admits_exactly_limit_at_one_instant(rl):
    lim = rl.FixedWindow(100, 60)
    results = [lim.check("ip", 30.0) for _ in range(1000)]
    assert sum(r[0] == ALLOW for r in results) == 100
    assert results[0] == (ALLOW, 99, 30.0, 0.0)
    assert results[99] == (ALLOW, 0, 30.0, 0.0)
    assert results[100] == (REJECT, 0, 30.0, 30.0)
    assert lim.peek("ip", 30.0) == (0, 30.0)


def test_fixed_window_is_aligned_to_multiples_of_window(rl):
    lim = rl.FixedWindow(2, 10)
    assert verdicts(lim, "k", 19.5, 3) == [ALLOW, ALLOW, REJECT]
    assert lim.check("k", 19.5) == (REJECT, 0, 0.5, 0.5)
    # 20.0 starts a new window, whatever happened at 19.5
    assert lim.check("k", 20.0) == (ALLOW, 1, 10.0, 0.0)


def test_fixed_window_cost_and_fresh_peek(rl):
    lim = rl.FixedWindow(10, 1)
    assert lim.peek("k", 0.25) == (10, 0.75)  # a fresh key still reports its window's end
    assert lim.check("k", 0.25, 7) == (ALLOW, 3, 0.75, 0.0)
    assert lim.check("k", 0.25, 4) == (REJECT, 3, 0.75, 0.75)
    assert lim.check("k", 0.25, 3) == (ALLOW, 0, 0.75, 0.0)


# --- SlidingLog ---

def test_sliding_log_expires_each_unit_after_window(rl):
    lim = rl.SlidingLog(3, 10)
    assert [lim.check("k", t) for t in (0.0, 1.0, 2.0)] == [
        (ALLOW, 2, 10.0, 0.0), (ALLOW, 1, 10.0, 0.0), (ALLOW, 0, 10.0, 0.0)]
    assert lim.check("k", 3.0) == (REJECT, 0, 9.0, 7.0)  # waits for t=0 to expire
    assert lim.check("k", 3.0, 2) == (REJECT, 0, 9.0, 8.0)  # ... and t=1 too
    assert lim.check("k", 10.0) == (ALLOW, 0, 10.0, 0.0)  # t <= now - window has expired
    assert lim.peek("k", 30.0) == (3, 0.0)


def test_sliding_log_counts_a_rolling_window(rl):
    lim = rl.SlidingLog(5, 1)
    got = [lim.check("k", i * 0.125)[0] for i in range(80)]
    # 8 checks a second: the first 5 of each second pass (an entry expires exactly 1 s later)
    assert got == ([ALLOW] * 5 + [REJECT] * 3) * 10


# --- SlidingCounter ---

def test_sliding_counter_weights_previous_window(rl):
    lim = rl.SlidingCounter(4, 10)
    assert [lim.check("k", float(t))[0] for t in range(4)] == [ALLOW] * 4
    # curr + cost > limit: only in the next window, once 4*(10-e)/10 <= 3, e >= 2.5
    assert lim.check("k", 4.0) == (REJECT, 0, 16.0, 8.5)
    # next window, elapsed 2: estimate 4*0.8 = 3.2; admits at elapsed 2.5
    assert lim.check("k", 12.0) == (REJECT, 0, 8.0, 0.5)
    assert lim.check("k", 12.5) == (ALLOW, 0, 17.5, 0.0)
    assert lim.peek("k", 19.0) == (2, 11.0)  # 4*0.1 + 1 = 1.4 -> 2 more fit
    assert lim.peek("k", 30.0) == (4, 0.0)  # two windows later nothing counts


def test_sliding_counter_cost_over_limit_never_admits(rl):
    lim = rl.SlidingCounter(4, 10)
    assert lim.check("k", 0.0, 5) == (REJECT, 4, 0.0, INF)
    assert len(lim) == 0


# --- TokenBucket ---

def test_token_bucket_burst_then_rate(rl):
    lim = rl.TokenBucket(rate=10, burst=5)
    assert (lim.limit, lim.window) == (5, 0.5)
    assert verdicts(lim, "k", 0.0, 6) == [ALLOW] * 5 + [REJECT]
    assert lim.check("k", 0.0) == (REJECT, 0, 0.5, 0.1)
    assert lim.check("k", 0.1)[0] == ALLOW
    # over 10 s at 1 ms steps: the burst plus rate * time
    admitted = sum(lim.check("j", i / 1000)[0] == ALLOW for i in range(10_000))
    assert admitted == 5 + 99  # last check at 9.999 s


def test_token_bucket_delay_mode_throttles(rl):
    lim = rl.TokenBucket(rate=2, burst=3, delay=2)
    assert (lim.limit, lim.window) == (5, 2.5)
    got = [lim.check("k", 0.0) for _ in range(6)]
    assert got == [
        (ALLOW, 4, 0.5, 0.0), (ALLOW, 3, 1.0, 0.0), (ALLOW, 2, 1.5, 0.0),
        (DELAY, 1, 2.0, 0.5), (DELAY, 0, 2.5, 1.0),  # forwarded at the refill rate
        (REJECT, 0, 2.5, 0.5)]  # queue full: in 0.5 s the queue has room again
    assert lim.check("k", 0.5) == (DELAY, 0, 2.5, 1.0)


# --- LeakyBucket (nginx limit_req) ---

def test_leaky_bucket_nginx_burst_nodelay(rl):
    # nginx docs example: rate=10r/s burst=20 nodelay forwards 21 simultaneous requests.
    lim = rl.LeakyBucket(rate=10, burst=20, nodelay=True)
    got = [lim.check("ip", 0.0) for _ in range(22)]
    assert [g[0] for g in got] == [ALLOW] * 21 + [REJECT]
    assert got[20] == (ALLOW, 0, 2.1, 0.0)
    assert got[21][3] == pytest.approx(0.1)
    # one slot frees every 1/rate seconds
    assert verdicts(lim, "ip", 0.1, 2) == [ALLOW, REJECT]


def test_leaky_bucket_nginx_burst_delays_at_rate(rl):
    lim = rl.LeakyBucket(rate=1, burst=5)
    assert (lim.limit, lim.window) == (6, 6.0)
    got = [lim.check("ip", 0.0) for _ in range(7)]
    # the first request of a drained bucket is not delayed; then excess/rate each
    assert got == [(ALLOW, 5, 1.0, 0.0)] + [
        (DELAY, 5 - n, n + 1.0, float(n)) for n in range(1, 6)] + [(REJECT, 0, 6.0, 1.0)]


def test_leaky_bucket_burst_zero_is_one_per_interval(rl):
    lim = rl.LeakyBucket(rate=2, burst=0)
    assert lim.check("ip", 0.0) == (ALLOW, 0, 0.5, 0.0)
    assert lim.check("ip", 0.25) == (REJECT, 0, 0.25, 0.25)
    assert lim.check("ip", 0.5) == (ALLOW, 0, 0.5, 0.0)
    # a partly drained bucket delays by what is left (nginx: excess * 1000 / rate ms)
    lim = rl.LeakyBucket(rate=2, burst=1)
    lim.check("ip", 0.0)
    assert lim.check("ip", 0.25) == (DELAY, 0, 0.75, 0.25)


# --- shared contract ---

def all_limiters(rl, max_keys=100_000):
    return [
        rl.FixedWindow(3, 1.0, max_keys=max_keys),
        rl.SlidingLog(3, 1.0, max_keys=max_keys),
        rl.SlidingCounter(3, 1.0, max_keys=max_keys),
        rl.TokenBucket(3.0, 3, max_keys=max_keys),
        rl.LeakyBucket(3.0, 2, nodelay=True, max_keys=max_keys),
    ]


def ids(limiters):
    return [type(lim).__name__ for lim in limiters]


def test_fresh_peek_is_limit_and_reject_consumes_nothing(rl):
    for lim in all_limiters(rl):
        name = type(lim).__name__
        assert lim.limit == 3 and lim.peek("k", 5.0) == (3, lim.peek("k", 5.0)[1]), name
        assert lim.check("k", 5.0, 4) == (REJECT, 3, lim.peek("k", 5.0)[1], INF), name
        assert len(lim) == 0 and "k" not in lim, name  # a rejected check creates no key
        assert lim.check("k", 5.0, 2)[0] == ALLOW, name
        before = lim.peek("k", 5.0)
        assert lim.check("k", 5.0, 2)[0] == REJECT, name
        assert lim.peek("k", 5.0) == before, name
        assert lim.check("k", 5.0, 1)[:2] == (ALLOW, 0), name


def test_table_is_bounded_and_evicts_least_recently_checked(rl):
    for lim in all_limiters(rl, max_keys=2):
        name = type(lim).__name__
        lim.check("a", 0.0)
        lim.check("b", 0.0)
        lim.check("a", 0.0)  # a is now the most recent
        lim.peek("b", 0.0)  # peek does not count as use
        lim.check("c", 0.0)
        assert ("a" in lim, "b" in lim, "c" in lim, len(lim)) == (True, False, True, 2), name
        lim.check("a", 0.0, 100)  # a rejected check still marks its key as used
        lim.check("d", 0.0)
        assert sorted(k for k in "abcd" if k in lim) == ["a", "d"], name
        assert lim.evictions == 2, name
        for i in range(500):
            lim.check(f"ip{i}", i * 0.001)
            assert len(lim) <= 2
        assert lim.remove(f"ip{499}") is True and lim.remove("zzz") is False
        assert len(lim) == 1


def test_evicted_key_starts_fresh(rl):
    lim = rl.FixedWindow(1, 60, max_keys=1)
    assert lim.check("a", 0.0)[0] == ALLOW
    assert lim.check("a", 0.0)[0] == REJECT
    lim.check("b", 0.0)
    assert lim.check("a", 0.0)[0] == ALLOW


@pytest.mark.parametrize(("make", "match"), [
    pytest.param(lambda rl: rl.FixedWindow(0, 1), "limit", id="fixed-limit-zero"),
    pytest.param(lambda rl: rl.SlidingLog(1, 0), "window", id="log-window-zero"),
    pytest.param(lambda rl: rl.SlidingCounter(1, -1), "window", id="counter-window-negative"),
    pytest.param(lambda rl: rl.SlidingCounter(1, INF), "window", id="counter-window-inf"),
    pytest.param(lambda rl: rl.TokenBucket(0, 1), "rate", id="token-rate-zero"),
    pytest.param(lambda rl: rl.TokenBucket(1, 0), "burst", id="token-burst-zero"),
    pytest.param(lambda rl: rl.TokenBucket(1, 1, -1), "delay", id="token-delay-negative"),
    pytest.param(lambda rl: rl.LeakyBucket(-1, 1), "rate", id="leaky-rate-negative"),
    pytest.param(lambda rl: rl.LeakyBucket(1, -1), "burst", id="leaky-burst-negative"),
    pytest.param(lambda rl: rl.FixedWindow(1, 1, max_keys=0), "max_keys", id="max-keys-zero"),
])
def test_bad_arguments_raise(rl, make, match):
    with pytest.raises(ValueError, match=match):
        make(rl)


def test_bad_cost_and_key_raise(rl):
    for lim in all_limiters(rl):
        with pytest.raises(ValueError, match="cost"):
            lim.check("k", 0.0, 0)
        with pytest.raises(TypeError):
            lim.check(None, 0.0)
        assert len(lim) == 0


def test_pxd_exposes_the_c_api():
    pxd = (ROOT / "ext" / "ratelimit.pxd").read_text()
    assert "ctypedef struct Decision" in pxd
    assert "cdef int decide(self, str key, double now, long cost, Decision* out) except -1" in pxd
    for name in ("FixedWindow", "SlidingLog", "SlidingCounter", "TokenBucket", "LeakyBucket"):
        assert f"cdef class {name}(Limiter)" in pxd


# --- differential: Cython and reference agree on every result, over random timelines ---

WINDOWS = st.sampled_from([0.5, 1.0, 2.5, 10.0, 0.1])
RATES = st.sampled_from([0.5, 1.0, 3.0, 10.0, 0.3])
PARAMS = {
    "FixedWindow": st.fixed_dictionaries({"limit": st.integers(1, 8), "window": WINDOWS}),
    "SlidingLog": st.fixed_dictionaries({"limit": st.integers(1, 8), "window": WINDOWS}),
    "SlidingCounter": st.fixed_dictionaries({"limit": st.integers(1, 8), "window": WINDOWS}),
    "TokenBucket": st.fixed_dictionaries(
        {"rate": RATES, "burst": st.integers(1, 6), "delay": st.integers(0, 4)}),
    "LeakyBucket": st.fixed_dictionaries(
        {"rate": RATES, "burst": st.integers(0, 6), "nodelay": st.booleans()}),
}
OPS = st.lists(
    st.tuples(
        st.sampled_from(["check"] * 6 + ["peek", "remove"]),
        st.sampled_from("abcd"),
        st.sampled_from([1, 1, 1, 2, 3, 5, 9]),
        st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 7.0]),
    ),
    max_size=60,
)


def same(a, b):
    for x, y in zip(a, b, strict=True):
        if isinstance(x, float) or isinstance(y, float):
            assert x == y or math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-12), (a, b)
        else:
            assert x == y, (a, b)


def check_invariants(lim, result, before, cost):
    verdict, remaining, reset_after, wait = result
    # remaining is "the largest cost check would not reject", so it predicts the verdict
    assert (verdict != REJECT) == (cost <= before[0])
    assert 0 <= remaining <= lim.limit and reset_after >= 0.0
    if verdict == ALLOW:
        assert wait == 0.0
    else:
        assert wait > 0.0
    assert (wait == INF) == (verdict == REJECT and cost > lim.limit)


def check_wait_is_tight(lim, key, now, cost, wait):
    # On copies of the reference: the request passes just after `wait`, not just before it.
    later = copy.deepcopy(lim)
    assert later.check(key, now + wait + 1e-6, cost)[0] != REJECT
    if wait > 1e-5:
        sooner = copy.deepcopy(lim)
        assert sooner.check(key, now + wait - 1e-6, cost)[0] == REJECT


@pytest.mark.parametrize("name", list(PARAMS))
@settings(max_examples=400, deadline=None)
@given(data=st.data(), max_keys=st.sampled_from([1, 2, 3, 100]),
       start=st.sampled_from([0.0, 0.3, 1000.05]), ops=OPS)
def test_matches_reference(name, data, max_keys, start, ops):
    params = data.draw(PARAMS[name], label="params")
    c = getattr(cy, name)(**params, max_keys=max_keys)
    r = getattr(ref, name)(**params, max_keys=max_keys)
    assert (c.limit, c.window) == (r.limit, r.window)
    now = start
    for op, key, cost, dt in ops:
        now += dt
        if op == "check":
            before = r.peek(key, now)
            same(c.peek(key, now), before)
            probe = copy.deepcopy(r)
            got, want = c.check(key, now, cost), r.check(key, now, cost)
            same(got, want)
            check_invariants(r, want, before, cost)
            event(f"verdict {want[0]}")
            if want[0] == REJECT and want[3] != INF:
                check_wait_is_tight(probe, key, now, cost, want[3])
        elif op == "peek":
            same(c.peek(key, now), r.peek(key, now))
        else:
            assert c.remove(key) == r.remove(key)
        assert len(c) == len(r) <= max_keys
        assert [k in c for k in "abcd"] == [k in r for k in "abcd"]
        assert c.evictions == r.evictions
