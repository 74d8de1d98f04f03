"""mode = "sentinel" on real servers: one master, one replica, three sentinels. The store asks
the sentinels where the master is (a dead sentinel costs one try), and after a failover it
follows the new master: the old one's READONLY or its lost connection sends it back to the
sentinels."""

import asyncio
import time

import pytest

from engine.control.config import RedisConfig
from engine.stores import ratelimit
from engine.stores.redis import RedisStore, StoreUnavailable
from tests.engine.stores.test_redis_store import run
from tests.support.redis import free_port
from tests.support.e2e import wait_for
from tests.support.redis_ha import SentinelGroup

INCR = "return redis.call('INCR', KEYS[1])"


@pytest.fixture(scope="module")
def group():
    with SentinelGroup() as g:
        yield g


def sentinel_store(group, sentinels=None, **kw):
    cfg = RedisConfig(mode="sentinel", url=f"redis://{group.NAME}/0", prefix="t:",
                      sentinels=tuple(sentinels or group.addresses),
                      **{"timeout": 0.5, "breaker_cooldown": 0.2, **kw})
    return RedisStore(cfg)


def test_the_master_is_found_through_the_sentinels_a_dead_one_costs_one_try(group):
    dead = f"127.0.0.1:{free_port()}"

    async def main():
        store = sentinel_store(group, [dead, *group.addresses])
        try:
            assert await store.run(INCR, ["t:{n}"], []) == 1
            port = group.master_port()
            assert store._link.conn.address == ("127.0.0.1", port)
            # The dead sentinel went last: the next discovery asks a live one first.
            assert store._link._open.__self__.addresses[-1] == ("127.0.0.1",
                                                                int(dead.split(":")[1]))
        finally:
            await store.close()
    run(main)


def test_an_unknown_master_name_is_a_store_error_naming_it(group):
    async def main():
        cfg = RedisConfig(mode="sentinel", url="redis://nosuchmaster/0",
                          sentinels=tuple(group.addresses))
        store = RedisStore(cfg)
        try:
            with pytest.raises(StoreUnavailable, match='no master named "nosuchmaster"'):
                await store.run(INCR, ["t:{n}"], [])
        finally:
            await store.close()
    run(main)


def test_after_a_failover_writes_follow_the_new_master_and_counts_carry_over(group):
    async def main():
        store = sentinel_store(group)
        check = ratelimit.Check(ratelimit.FIXED_WINDOW, 1000, 3600, 0, "r:l", "l")
        try:
            for _ in range(5):
                await ratelimit.decide(store, [check], ["k"], [1], None)
            old = group.master_port()
            # The counts reached the replica before the switch.
            await asyncio.to_thread(group.wait_in_sync)
            group.sentinels[0].command("SENTINEL", "FAILOVER", group.NAME)
            await asyncio.to_thread(wait_for, lambda: group.master_port() != old, 15,
                                    "sentinel failover")
            # Until the old master is demoted it may still take writes; then READONLY or a
            # dropped connection sends the store back to the sentinels. Calls either answer
            # or fail fast by policy; none hangs.
            deadline = time.monotonic() + 10
            while True:
                start = time.monotonic()
                try:
                    got = await ratelimit.decide(store, [check], ["k"], [1], None)
                    if store._link.conn.address[1] != old:
                        break
                except StoreUnavailable:
                    pass
                assert time.monotonic() - start < 1.5
                assert time.monotonic() < deadline, "the store never reached the new master"
                await asyncio.sleep(0.02)
            assert store._link.conn.address[1] == group.master_port()
            assert got[0][0] == ratelimit.ALLOW
            assert got[0][1] < 1000 - 5  # the counter carried over to the new master
        finally:
            await store.close()
    run(main)
