"""engine.stores.redis.RedisStore's breaker is engine.upstream.health.Circuit: its state as
operators see it through a real redis-server that the test stops and restarts, with the test's
clock (the breaker's behaviour itself is pinned in test_redis_store.py)."""

import asyncio

import pytest
import uvloop

from engine.stores.redis import StoreError, StoreUnavailable
from engine.upstream.health import Circuit
from tests.engine.stores.test_redis_store import ECHO, FAIL, SPIN, Clock, store_for


def test_the_breaker_is_a_health_circuit_on_consecutive_failures_with_one_probe():
    store = store_for("redis://127.0.0.1:1/0", Clock(), breaker_failures=4,
                      breaker_cooldown=1.5)
    b = store.breaker
    assert isinstance(b, Circuit)
    assert (b.consecutive_limit, b.rate_limit, b.cooldown, b.probes) == (4, 0.0, 1.5, 1)
    assert store.breaker_state == "closed" and not store.is_open


def test_breaker_state_through_redis_down_probe_failed_probe_and_recovery(own_redis):
    clock = Clock()

    async def fail_all(store, n):
        for _ in range(n):
            with pytest.raises(StoreUnavailable):
                await store.run(ECHO, ["t:{n}"], ["x"])

    async def main():
        store = store_for(own_redis.url, clock, breaker_failures=2, breaker_cooldown=2.0)
        b = store.breaker
        try:
            assert await store.run(ECHO, ["t:{n}"], ["a"]) == [b"a", 1]
            await asyncio.to_thread(own_redis.stop)
            await fail_all(store, 1)
            assert store.breaker_state == "closed" and b.consecutive == 1
            await fail_all(store, 1)
            assert (store.breaker_state, store.is_open, b.opened) == ("open", True, 1)
            assert b.retry_after(clock.now) == 2.0

            clock.now += 2.0  # cooled down: open until a call comes to probe
            assert (store.breaker_state, store.is_open) == ("open", False)
            with pytest.raises(StoreUnavailable) as probe:
                await store.run(ECHO, ["t:{n}"], ["x"])  # Redis still down
            assert "breaker" not in str(probe.value)
            assert (store.breaker_state, store.is_open, b.opened) == ("open", True, 2)

            own_redis.start()
            clock.now += 2.0
            probe = asyncio.ensure_future(store.run(ECHO, ["t:{n}"], ["probe"]))
            await asyncio.sleep(0)
            assert (store.breaker_state, store.is_open) == ("half_open", True)
            with pytest.raises(StoreUnavailable, match="breaker open"):
                await store.run(ECHO, ["t:{n}"], ["b"])
            assert await probe == [b"probe", 1]
            assert (store.breaker_state, store.is_open, b.opened) == ("closed", False, 2)
        finally:
            await store.close()
    uvloop.run(main())


def test_a_probe_whose_caller_leaves_lets_the_next_call_probe(own_redis):
    # With no verdict the probe's slot is handed back at once, not held for a timeout.
    clock = Clock()

    async def main():
        store = store_for(own_redis.url, clock, breaker_failures=1, breaker_cooldown=2.0)
        try:
            assert await store.run(SPIN, [], [0]) == 1  # connected, script known
            with pytest.raises(StoreError):
                await store.run(FAIL, [], [])
            assert store.breaker_state == "open"
            clock.now += 2.0
            probe = asyncio.ensure_future(store.run(SPIN, [], [100]))
            await asyncio.sleep(0)
            assert store.breaker_state == "half_open"
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            assert not store.is_open
            assert await store.run(ECHO, ["t:{n}"], ["next"]) == [b"next", 1]
            assert store.breaker_state == "closed"
        finally:
            await store.close()
    uvloop.run(main())
