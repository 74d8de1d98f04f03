"""Both idempotency stores through one suite: claim, complete, release, lookup, wait, owner
tokens. The memory store runs on an injected clock; the Redis store on a real redis-server
with short leases and bounded polling."""

import asyncio
import time

import pytest

from engine.control.config import RedisConfig
from engine.stores.idempotency import (
    CLAIMED, DONE, IN_FLIGHT, MISMATCH, MemoryStore, RedisStore, Stored)
from engine.stores.redis import RedisStore as RedisConnection, StoreUnavailable

FP = b"fingerprint-1"
OTHER_FP = b"fingerprint-2"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class MemoryCase:
    """Time moves by the injected clock."""

    def __init__(self):
        self.clock = Clock()
        self.store = MemoryStore(1 << 20, clock=self.clock)

    async def advance(self, seconds):
        self.clock.now += seconds

    async def close(self):
        pass


class RedisCase:
    """Time moves for real: leases and TTLs here are tens of milliseconds."""

    def __init__(self, url):
        self.conn = RedisConnection(RedisConfig(url=url, timeout=0.5))
        self.store = RedisStore(self.conn)

    async def advance(self, seconds):
        await asyncio.sleep(seconds + 0.02)

    async def close(self):
        await self.conn.close()


@pytest.fixture(params=["memory", "redis"])
def case(request):
    if request.param == "memory":
        return lambda: MemoryCase()
    server = request.getfixturevalue("redis_server")
    return lambda: RedisCase(server.url)


def run(make, body):
    async def main():
        c = make()
        try:
            await asyncio.wait_for(body(c, c.store), 10)
        finally:
            await c.close()
    asyncio.run(main())


def stored(body=b'{"id": 1}', status=201):
    return Stored(status, [(b"Content-Type", b"application/json"), (b"X-A", b"\xe9")], body)


def test_first_claim_wins_then_duplicate_is_in_flight(case):
    async def body(c, s):
        assert await s.claim("k", FP, b"o1", 5.0) == (CLAIMED, None)
        kind, left = await s.claim("k", FP, b"o2", 5.0)
        assert kind == IN_FLIGHT and 0 < left <= 5.0
    run(case, body)


def test_completed_record_replays_status_headers_and_binary_body(case):
    async def body(c, s):
        payload = bytes(range(256)) * 10
        await s.claim("k", FP, b"o1", 5.0)
        assert await s.complete("k", b"o1", stored(payload), 60.0)
        kind, rec = await s.claim("k", FP, b"o2", 5.0)
        assert kind == DONE
        assert (rec.status, rec.headers, rec.body) == (
            201, [(b"Content-Type", b"application/json"), (b"X-A", b"\xe9")], payload)
    run(case, body)


def test_empty_body_is_replayed_as_empty(case):
    async def body(c, s):
        await s.claim("k", FP, b"o1", 5.0)
        await s.complete("k", b"o1", Stored(204, [], b""), 60.0)
        kind, rec = await s.claim("k", FP, b"o2", 5.0)
        assert kind == DONE and rec.status == 204 and rec.body == b""
    run(case, body)


def test_response_too_large_to_keep_stays_done_without_body(case):
    async def body(c, s):
        await s.claim("k", FP, b"o1", 5.0)
        await s.complete("k", b"o1", Stored(200, [], None), 60.0)
        kind, rec = await s.claim("k", FP, b"o2", 5.0)
        assert kind == DONE and rec.status == 200 and rec.body is None
    run(case, body)


@pytest.mark.parametrize("state", ["in_flight", "done"])
def test_different_fingerprint_is_a_mismatch(case, state):
    async def body(c, s):
        await s.claim("k", FP, b"o1", 5.0)
        if state == "done":
            await s.complete("k", b"o1", stored(), 60.0)
        assert await s.claim("k", OTHER_FP, b"o2", 5.0) == (MISMATCH, None)
    run(case, body)


def test_release_lets_the_next_request_claim(case):
    async def body(c, s):
        await s.claim("k", FP, b"o1", 5.0)
        assert await s.release("k", b"o1")
        assert await s.lookup("k") is None
        assert await s.claim("k", OTHER_FP, b"o2", 5.0) == (CLAIMED, None)
    run(case, body)


def test_only_the_owner_settles_a_claim(case):
    async def body(c, s):
        await s.claim("k", FP, b"o1", 5.0)
        assert not await s.release("k", b"intruder")
        assert not await s.complete("k", b"intruder", stored(), 60.0)
        assert (await s.lookup("k"))[0] == IN_FLIGHT
    run(case, body)


def test_lease_expiry_frees_the_key_and_the_late_finisher_cannot_overwrite(case):
    async def body(c, s):
        await s.claim("k", FP, b"old", 0.05)
        await c.advance(0.06)
        assert await s.claim("k", FP, b"new", 5.0) == (CLAIMED, None)
        # The first request finally finishes: its owner token no longer holds the key.
        assert not await s.complete("k", b"old", stored(b"stale"), 60.0)
        assert not await s.release("k", b"old")
        assert await s.complete("k", b"new", stored(b"fresh"), 60.0)
        kind, rec = await s.claim("k", FP, b"third", 5.0)
        assert kind == DONE and rec.body == b"fresh"
    run(case, body)


def test_ttl_expiry_forgets_the_record(case):
    async def body(c, s):
        await s.claim("k", FP, b"o1", 5.0)
        await s.complete("k", b"o1", stored(), 0.05)
        assert (await s.lookup("k"))[0] == DONE
        await c.advance(0.06)
        assert await s.lookup("k") is None
        assert await s.claim("k", OTHER_FP, b"o2", 5.0) == (CLAIMED, None)
    run(case, body)


def test_keys_are_independent(case):
    async def body(c, s):
        await s.claim("a", FP, b"o1", 5.0)
        assert await s.claim("b", FP, b"o2", 5.0) == (CLAIMED, None)
    run(case, body)


def test_wait_returns_once_the_claim_settles(case):
    async def body(c, s):
        await s.claim("k", FP, b"o1", 5.0)

        async def finish():
            await asyncio.sleep(0.05)
            await s.complete("k", b"o1", stored(b"done"), 60.0)

        task = asyncio.create_task(finish())
        start = time.monotonic()
        attempt = 0
        while (await s.claim("k", FP, b"o2", 5.0))[0] == IN_FLIGHT:
            assert time.monotonic() - start < 3
            await s.wait("k", 3.0, attempt)
            attempt += 1
        kind, rec = await s.claim("k", FP, b"o2", 5.0)
        assert kind == DONE and rec.body == b"done"
        await task
    run(case, body)


def test_memory_wait_is_bounded_by_its_timeout():
    async def main():
        s = MemoryStore(1 << 20)
        await s.claim("k", FP, b"o1", 60.0)
        start = time.monotonic()
        await s.wait("k", 0.05, 0)
        assert 0.04 <= time.monotonic() - start < 1.0
    asyncio.run(main())


def test_memory_settle_wakes_every_waiter_at_once():
    async def main():
        s = MemoryStore(1 << 20)
        await s.claim("k", FP, b"o1", 60.0)
        waiters = [asyncio.create_task(s.wait("k", 5.0, 0)) for _ in range(5)]
        await asyncio.sleep(0)
        s.settle("k", b"o1", stored(), 60.0)
        done, pending = await asyncio.wait(waiters, timeout=1.0)
        assert not pending
    asyncio.run(main())


def test_memory_bytes_bound_evicts_old_answers_but_never_a_live_claim():
    clock = Clock()
    s = MemoryStore(10_000, clock=clock)
    s.claim_now("live", FP, b"o", 60.0)
    for i in range(50):
        s.claim_now(f"k{i}", FP, b"o", 60.0)
        s.settle(f"k{i}", b"o", stored(b"x" * 1000), 60.0)
    assert s._done.size_bytes <= 10_000
    assert s.claim_now("k0", FP, b"o", 60.0) == (CLAIMED, None)  # evicted: runs again
    assert s.claim_now("live", FP, b"o2", 60.0)[0] == IN_FLIGHT


def test_memory_sweep_drops_expired_claims():
    clock = Clock()
    s = MemoryStore(1 << 20, clock=clock)
    s.claim_now("k", FP, b"o", 1.0)
    s.sweep()
    assert len(s) == 1
    clock.now += 2
    s.sweep()
    assert len(s) == 0


def test_redis_layout_hash_plus_raw_body_with_ttls(redis_server):
    async def main():
        conn = RedisConnection(RedisConfig(url=redis_server.url))
        s = RedisStore(conn)
        try:
            await s.claim("k", FP, b"o1", 5.0)
            ttl = int(redis_server.command("PTTL", "edgeproxy:{idem:k}:m")[1:].split(b"\r")[0])
            assert 0 < ttl <= 5000  # the lease
            await s.complete("k", b"o1", stored(b"\x00\xffbody"), 3600.0)
            assert redis_server.command("TYPE", "edgeproxy:{idem:k}:m") == b"+hash\r\n"
            assert redis_server.command("GET", "edgeproxy:{idem:k}:b").endswith(
                b"\x00\xffbody\r\n")
            for k in ("edgeproxy:{idem:k}:m", "edgeproxy:{idem:k}:b"):
                ttl = int(redis_server.command("PTTL", k)[1:].split(b"\r")[0])
                assert 3_500_000 < ttl <= 3_600_000
        finally:
            await conn.close()
    asyncio.run(main())


def test_redis_evicted_body_makes_the_key_claimable_again(redis_server):
    async def main():
        conn = RedisConnection(RedisConfig(url=redis_server.url))
        s = RedisStore(conn)
        try:
            await s.claim("k", FP, b"o1", 5.0)
            await s.complete("k", b"o1", stored(b"body"), 3600.0)
            redis_server.command("DEL", "edgeproxy:{idem:k}:b")
            assert await s.claim("k", FP, b"o2", 5.0) == (CLAIMED, None)
        finally:
            await conn.close()
    asyncio.run(main())


def test_redis_down_raises_store_unavailable_quickly(own_redis):
    async def main():
        conn = RedisConnection(RedisConfig(url=own_redis.url, timeout=0.2))
        s = RedisStore(conn)
        try:
            assert await s.claim("k", FP, b"o1", 5.0) == (CLAIMED, None)
            own_redis.stop()
            start = time.monotonic()
            for _ in range(5):
                with pytest.raises(StoreUnavailable):
                    await s.claim("k2", FP, b"o1", 5.0)
            assert time.monotonic() - start < 3.0
        finally:
            await conn.close()
    asyncio.run(main())


@pytest.mark.parametrize("retry_for, settled", [(5.0, True), (0.0, False)])
def test_redis_settle_that_times_out_is_tried_again_while_the_claim_lives(
        redis_server, retry_for, settled):
    # Redis stalls (CLIENT PAUSE) as the answer is stored: the first attempt times out. With a
    # retry window the record is completed once Redis answers again, so the client's retry
    # replays it; without one the claim is left to its lease (and the key would run twice).
    async def main():
        conn = RedisConnection(RedisConfig(url=redis_server.url, timeout=0.1))
        s = RedisStore(conn)
        try:
            assert await s.claim("k", FP, b"o1", 30.0) == (CLAIMED, None)
            redis_server.command("CLIENT", "PAUSE", "400", "WRITE")
            s.settle("k", b"o1", stored(b"paid"), 3600.0, retry_for)
            await asyncio.wait_for(asyncio.gather(*s.tasks, return_exceptions=True), 8)
            await asyncio.sleep(0.5)  # the pause is over
            return await s.claim("k", FP, b"o2", 30.0)
        finally:
            await conn.close()
    kind, detail = asyncio.run(main())
    if settled:
        assert kind == DONE and detail.body == b"paid"
    else:
        assert kind == IN_FLIGHT
