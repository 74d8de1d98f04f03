"""The Redis Lua limiter (engine.stores.ratelimit) against the pure-Python reference
(tests/reference/ratelimit.py) and ext.ratelimit (what store = "memory" runs) on the same
timelines, with the caller's clock, to the same doubles; calendar quotas,
connection slots, all-or-nothing commits, NOSCRIPT reload and key expiry on a real
redis-server."""

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.control.config import RedisConfig
from engine.stores import ratelimit as rs
from engine.stores.redis import RedisStore
import ext.ratelimit
from tests.reference import ratelimit as reference

ALGOS = {
    "fixed_window": (lambda ref: ref.FixedWindow(5, 10.0), rs.Check(rs.FIXED_WINDOW, 5, 10.0, 0,
                                                                 "r:fw", "fw")),
    "sliding_log": (lambda ref: ref.SlidingLog(5, 10.0), rs.Check(rs.SLIDING_LOG, 5, 10.0, 0,
                                                               "r:sl", "sl")),
    "sliding_counter": (lambda ref: ref.SlidingCounter(5, 10.0),
                        rs.Check(rs.SLIDING_COUNTER, 5, 10.0, 0, "r:sc", "sc")),
    "token_bucket": (lambda ref: ref.TokenBucket(2.0, 4, 2),
                     rs.Check(rs.TOKEN_BUCKET, 2.0, 4, 2, "r:tb", "tb")),
    "leaky_bucket": (lambda ref: ref.LeakyBucket(2.0, 3, False),
                     rs.Check(rs.LEAKY_BUCKET, 2.0, 3, 0, "r:lb", "lb")),
    "leaky_nodelay": (lambda ref: ref.LeakyBucket(2.0, 3, True),
                      rs.Check(rs.LEAKY_BUCKET, 2.0, 3, 1, "r:lbn", "lbn")),
}


def store_for(server) -> RedisStore:
    return RedisStore(RedisConfig(url=server.url, prefix="t:", timeout=1.0))


def run(coro):
    return asyncio.run(coro)


async def replay(server, check, events):
    store = store_for(server)
    try:
        return [(await rs.decide(store, [check], ["k"], [cost], now))[0]
                for now, cost in events]
    finally:
        await store.close()


def same(got, want):
    assert got[0] == want[0] and got[1] == want[1], (got, want)
    for a, b in zip(got[2:], want[2:], strict=True):
        assert a == b, (got, want)


IMPLS = {"cython": ext.ratelimit, "reference": reference}


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_lua_matches_reference_on_a_timeline(redis_server, algo, impl):
    make, check = ALGOS[algo]
    rng = random.Random(algo)
    now, events = 1000.0, []
    for _ in range(60):
        now += rng.choice((0.0, 0.0, 0.05, 0.3, 0.5, 1.0, 2.5, 7.0))
        events.append((now, rng.choice((1, 1, 1, 2, 3))))
    limiter = make(IMPLS[impl])
    want = [limiter.check("k", now, cost) for now, cost in events]
    got = run(replay(redis_server, check, events))
    for g, w in zip(got, want, strict=True):
        same(g, w)


@settings(max_examples=15, deadline=None)
@given(algo=st.sampled_from(sorted(ALGOS)),
       steps=st.lists(st.tuples(st.sampled_from((0.0, 0.1, 0.25, 1.0, 3.0, 10.0)),
                                st.integers(1, 4)), min_size=1, max_size=25))
def test_lua_matches_reference_hypothesis(redis_session, algo, steps):
    redis_session.flush()
    make, check = ALGOS[algo]
    now, events = 5000.0, []
    for dt, cost in steps:
        now += dt
        events.append((now, cost))
    limiter = make(reference)
    want = [limiter.check("k", now, cost) for now, cost in events]
    for g, w in zip(run(replay(redis_session, check, events)), want, strict=True):
        same(g, w)


def test_fixed_window_exact_count_and_reset(redis_server):
    _, check = ALGOS["fixed_window"]
    got = run(replay(redis_server, check, [(1000.0 + i * 0.1, 1) for i in range(8)]
                     + [(1010.0, 1)]))
    assert [g[0] for g in got] == [1] * 5 + [0] * 3 + [1]
    assert got[4][1] == 0 and got[5][3] == pytest.approx(10.0 - 0.5)


def test_one_refusal_commits_nothing(redis_server):
    """All-or-nothing: a request the second limit refuses is not counted by the first."""
    a = rs.Check(rs.FIXED_WINDOW, 10, 60.0, 0, "r:a", "a")
    b = rs.Check(rs.FIXED_WINDOW, 1, 60.0, 0, "r:b", "b")

    async def go():
        store = store_for(redis_server)
        try:
            first = await rs.decide(store, [a, b], ["k", "k"], [1, 1], 60.0)
            second = await rs.decide(store, [a, b], ["k", "k"], [1, 1], 61.0)
            alone = await rs.decide(store, [a], ["k"], [1], 62.0)
            return first, second, alone
        finally:
            await store.close()

    first, second, alone = run(go())
    assert [r[0] for r in first] == [1, 1]
    assert [r[0] for r in second] == [1, 0]
    assert second[0][1] == 8  # what a would have left, had b let it through
    # a counted only the first request (the key differs when alone: its own hash tag)
    keys = redis_server.command("KEYS", "t:*")
    assert b"t:{rl:r}:r:a:k" in keys and b"t:{rl:r:a:k}" in keys


@pytest.mark.parametrize("now, period, start, end", [
    (1709251199.0, 1, 1709164800.0, 1709251200.0),     # 2024-02-29 23:59:59
    (1709251199.0, 2, 1706745600.0, 1709251200.0),     # February 2024 (leap)
    (1709251200.0, 2, 1709251200.0, 1711929600.0),     # March 2024 starts
    (1735689599.5, 2, 1733011200.0, 1735689600.0),     # December 2024
    (1740787200.0, 2, 1740787200.0, 1743465600.0),     # March 2025 (Feb 2025 had 28 days)
], ids=["day", "leap-feb", "march", "december", "march-2025"])
def test_calendar_periods_lua_and_python_agree(redis_server, now, period, start, end):
    assert rs.period_bounds(now, period) == (start, end)
    check = rs.Check(rs.CALENDAR, 2, period, 0, "r:q", "q")
    got = run(replay(redis_server, check, [(now, 1), (now, 1), (now, 1)]))
    assert [g[0] for g in got] == [1, 1, 0]
    assert got[2][2] == pytest.approx(end - now)
    later = run(replay(redis_server, check, [(end, 1)]))
    assert later[0][0] == 1 and later[0][1] == 1  # a new period starts from zero


def test_connection_slots_and_release(redis_server):
    check = rs.Check(rs.SLOT, 2, 30.0, 0, "r:conn", "connections")

    async def go():
        store = store_for(redis_server)
        try:
            out = []
            for rid in ("a", "b", "c"):
                out.append((await rs.decide(store, [check], ["ip"], [1], 100.0, rid))[0][0])
            await rs.release(store, rs.redis_key(store, check, "ip", True), "a")
            out.append((await rs.decide(store, [check], ["ip"], [1], 100.0, "d"))[0][0])
            # a slot nobody released lapses after its ttl
            out.append((await rs.decide(store, [check], ["ip"], [1], 131.0, "e"))[0][0])
            return out
        finally:
            await store.close()

    assert run(go()) == [1, 1, 0, 1, 1]


def test_script_reloads_after_script_flush_and_keys_expire(redis_server):
    _, check = ALGOS["token_bucket"]

    async def go():
        store = store_for(redis_server)
        try:
            await rs.decide(store, [check], ["k"], [1], None)  # Redis TIME
            redis_server.command("SCRIPT", "FLUSH")
            again = (await rs.decide(store, [check], ["k"], [1], None))[0]
            return again
        finally:
            await store.close()

    again = run(go())
    assert again[0] == 1 and again[1] == 4  # 4 burst + 2 delay - 2 taken
    ttl = int(redis_server.command("PTTL", "t:{rl:r:tb:k}").split(b"\r\n")[0][1:])
    assert 0 < ttl <= 2000  # idle keys go away once they would be as good as new
