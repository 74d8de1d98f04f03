"""mode = "cluster" on a real 3-master Redis Cluster: the slot of a key is the one Redis
computes, every script keeps its keys in one slot, keys spread over every master, and the
store follows MOVED (a finished migration), ASK (a migration under way) and reloads its map."""

import asyncio
import os

import pytest

from engine.control.config import RedisConfig
from engine.stores import idempotency, ratelimit
from engine.stores.redis import RedisStore
from engine.stores.redis_cluster import key_slot, slots_from_shards, slots_from_slots
from tests.engine.stores.test_redis_store import run
from tests.support.redis_ha import Cluster, redis_version

INCR = "return redis.call('INCR', KEYS[1])"


@pytest.fixture(scope="module")
def cluster():
    with Cluster() as c:
        yield c


def cluster_store(cluster, **kw):
    return RedisStore(RedisConfig(mode="cluster", url=cluster.url, prefix="t:",
                                  **{"timeout": 2.0, **kw}))


def test_key_slot_is_the_slot_redis_computes(cluster):
    keys = ["plain", "{tag}x", "a{tag}b", "{}x", "{a}{b}", "a{b", "a}b{", "{{a}}", "é{ü}",
            "t:{rl:r:l:1.2.3.4}", "t:{idem:k}:m"]
    keys += [os.urandom(12) for _ in range(40)]
    node = cluster.nodes[0]
    for key in keys:
        assert key_slot(key) == node.call("CLUSTER", "KEYSLOT", key), key


def test_every_scripts_keys_share_one_slot_whatever_the_names():
    for prefix in ("edgeproxy:", "x{y:", "p}"):
        store = RedisStore(RedisConfig(prefix=prefix))
        for key in ("k", "a}b", "{c}", "d{"):
            assert len({key_slot(k) for k in idempotency.RedisStore(store)._keys(key)}) == 1
            checks = [ratelimit.Check(ratelimit.FIXED_WINDOW, 1, 1, 0, f"route{{:{n}", n)
                      for n in ("a", "b}", "c")]
            keys = [ratelimit.redis_key(store, c, key, False) for c in checks]
            assert len({key_slot(k) for k in keys}) == 1, keys


def test_the_slot_map_parses_alike_from_shards_and_slots(cluster):
    node = cluster.nodes[1]
    asked = ("127.0.0.1", node.port)
    table = slots_from_slots(node.call("CLUSTER", "SLOTS"), asked)
    assert {a for a in table} == {("127.0.0.1", n.port) for n in cluster.nodes}
    if redis_version() >= (7,):
        assert slots_from_shards(node.call("CLUSTER", "SHARDS"), asked, False) == table


def test_keys_spread_over_every_master_and_each_call_runs_once(cluster):
    async def main():
        store = cluster_store(cluster)
        try:
            got = await asyncio.gather(*(store.run(INCR, [f"t:{{spread{i}}}"], [])
                                         for i in range(300)))
            assert got == [1] * 300
        finally:
            await store.close()
    run(main)
    sizes = [n.call("DBSIZE") for n in cluster.nodes]
    assert sum(sizes) >= 300 and min(sizes) > 0, sizes


def test_a_slot_moved_away_is_followed_and_the_map_reloaded(cluster):
    key = "t:{moving}"
    slot = key_slot(key)

    async def main():
        store = cluster_store(cluster)
        try:
            assert await store.run(INCR, [key], []) == 1
            loaded = store._cluster._loaded
            src = cluster.owner(slot)
            dst = next(n for n in cluster.nodes if n is not src)
            await asyncio.to_thread(cluster.migrate, slot, src, dst)
            assert await store.run(INCR, [key], []) == 2  # MOVED, then the new master
            for _ in range(100):  # the MOVED asked for a new map, loaded in the background
                if store._cluster._loaded > loaded:
                    break
                await asyncio.sleep(0.02)
            assert store._cluster._loaded > loaded
            assert store._cluster.slots[slot] == ("127.0.0.1", dst.port)
        finally:
            await store.close()
    run(main)


def test_during_a_migration_a_key_that_left_is_asked_of_the_importing_node(cluster):
    key, fresh = "t:{asked}:a", "t:{asked}:b"
    slot = key_slot(key)
    src = cluster.owner(slot)
    dst = next(n for n in cluster.nodes if n is not src)

    async def main():
        store = cluster_store(cluster)
        try:
            assert await store.run(INCR, [key], []) == 1
            cluster.migrate(slot, src, dst, finish=False)
            assert cluster.move_keys(slot, src, dst) == 1
            # The key left: ASK, then ASKING + the script on the importing node.
            assert await store.run(INCR, [key], []) == 2
            # A key that never existed is made on the importing node too.
            assert await store.run(INCR, [fresh], []) == 1
            assert dst.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 2
            assert src.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            assert store._cluster.slots[slot] == ("127.0.0.1", src.port)  # ASK: map kept
        finally:
            cluster.finish(slot, dst)
            await store.close()
    run(main)


def test_an_unreachable_cluster_is_a_store_error_naming_the_seeds():
    from engine.stores.redis import StoreUnavailable
    from tests.support.redis import free_port

    async def main():
        store = RedisStore(RedisConfig(mode="cluster", url=f"redis://127.0.0.1:{free_port()}",
                                       timeout=0.5))
        try:
            with pytest.raises(StoreUnavailable, match="no node gave the slot map"):
                await store.run(INCR, ["k"], [])
        finally:
            await store.close()
    run(main)
