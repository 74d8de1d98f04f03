"""WAIT-based durability on a real master and replica: a claim counts once the replica has
it; with the replica gone it is given back and the caller told; and the WAIT holds only its
own connection, never the rate limits' one."""

import asyncio
import time

import pytest

from engine.control.config import RedisConfig
from engine.stores import idempotency, ratelimit
from engine.stores.redis import NotReplicated, RedisStore
from tests.engine.stores.test_redis_store import run
from tests.support.redis_ha import Replicated


@pytest.fixture
def pair():
    with Replicated() as p:
        yield p


def store_on(pair):
    return RedisStore(RedisConfig(url=pair.master.url, prefix="t:", timeout=1.0))


def test_a_claim_counts_once_the_replica_has_it(pair):
    async def main():
        redis = store_on(pair)
        records = idempotency.RedisStore(redis, replicas=1, replica_timeout=1.0)
        try:
            assert await records.claim("k", b"fp", b"o1", 30) == (idempotency.CLAIMED, None)
            # Acknowledged: the replica holds the claim now, before any request went out.
            assert pair.replica.call("DBSIZE") == 1
            assert await records.complete("k", b"o1", idempotency.Stored(201, [], b"x"), 60)
            assert pair.replica.call("DBSIZE") == 2  # the record and its body
            state, stored = await records.claim("k", b"fp", b"o2", 30)
            assert state == idempotency.DONE and stored.body == b"x"
        finally:
            await redis.close()
    run(main)


def test_without_the_replica_a_claim_is_given_back_and_limits_are_not_held_up(pair):
    async def main():
        redis = store_on(pair)
        records = idempotency.RedisStore(redis, replicas=1, replica_timeout=0.4)
        check = ratelimit.Check(ratelimit.FIXED_WINDOW, 100, 60, 0, "r:l", "l")
        try:
            await ratelimit.decide(redis, [check], ["k"], [1], None)  # connected
            pair.replica.stop()
            claim = asyncio.ensure_future(records.claim("k", b"fp", b"o1", 30))
            await asyncio.sleep(0.05)  # the claim ran; its WAIT holds its own connection
            start = time.monotonic()
            for _ in range(5):
                await ratelimit.decide(redis, [check], ["k"], [1], None)
            assert time.monotonic() - start < 0.2  # not queued behind the WAIT
            with pytest.raises(NotReplicated, match="0 of 1 replicas"):
                await claim
            assert not redis.is_open  # Redis answered: not a breaker failure
            for _ in range(50):  # given back in the background
                if await records.lookup("k") is None:
                    break
                await asyncio.sleep(0.01)
            assert await records.lookup("k") is None
        finally:
            await redis.close()
    run(main)


def test_one_wait_serves_a_burst_of_claims(pair):
    async def main():
        redis = store_on(pair)
        records = idempotency.RedisStore(redis, replicas=1, replica_timeout=0.3)
        try:
            pair.replica.stop()
            start = time.monotonic()
            got = await asyncio.gather(*(records.claim(f"k{i}", b"fp", b"o", 30)
                                         for i in range(20)), return_exceptions=True)
            # Each waited for a WAIT sent after its write, shared with the rest: about one
            # replica timeout in all (one each would be 6 s, past every deadline).
            assert time.monotonic() - start < 1.0
            assert all(isinstance(g, NotReplicated) for g in got), got
        finally:
            await redis.close()
    run(main)
