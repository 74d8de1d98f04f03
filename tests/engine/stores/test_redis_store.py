"""engine.stores.redis.RedisStore on a real redis-server: pipelined replies in order, reply
types, error replies, NOSCRIPT, restart and reconnect, timeouts against a Redis that never
answers, the breaker with the test's clock, AUTH and SELECT from the URL."""

import asyncio
import socket
import time

import pytest
import uvloop

from engine.control.config import RedisConfig
from engine.stores.redis import RedisStore, StoreError, StoreUnavailable, parse_url

ECHO = "return {ARGV[1], redis.call('INCR', KEYS[1])}"
TYPES = "return {'bulk', 7, {'nested', {}}, false, ARGV[1]}"
FAIL = "return redis.error_reply('ERR nope')"
# Holds Redis (and so its connection to us) for ARGV[1] ms: a slow command, not a dead one.
SPIN = """
local t = redis.call('TIME')
local stop = t[1] * 1000 + t[2] / 1000 + tonumber(ARGV[1])
repeat t = redis.call('TIME') until t[1] * 1000 + t[2] / 1000 >= stop
return 1
"""


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def store_for(url, clock=None, **kw):
    cfg = RedisConfig(url=url, prefix="t:", **{"timeout": 0.5, **kw})
    return RedisStore(cfg) if clock is None else RedisStore(cfg, clock=clock)


def run(main):
    uvloop.run(main())  # the worker's loop


def info(server, field: str) -> int:
    for line in server.command("INFO", "all").decode().splitlines():
        if line.startswith(field + ":"):
            return int(line.split(":")[1])
    raise KeyError(field)


def test_concurrent_calls_share_one_connection_and_get_their_own_replies(redis_server):
    before = info(redis_server, "total_connections_received")

    async def main():
        store = store_for(redis_server.url)
        try:
            got = await asyncio.gather(*(store.run(ECHO, ["t:{n}"], [f"call-{i}"])
                                         for i in range(300)))
        finally:
            await store.close()
        assert [g[0] for g in got] == [f"call-{i}".encode() for i in range(300)]
        assert sorted(g[1] for g in got) == list(range(1, 301))  # each ran exactly once
    run(main)
    # The RESP command counter sees one connection for all 300 (plus INFO's own).
    assert info(redis_server, "total_connections_received") - before == 2


def test_reply_types_are_what_redis_py_returned(redis_server):
    async def main():
        store = store_for(redis_server.url)
        try:
            assert await store.run(TYPES, [], [b"\x00\xff"]) == \
                [b"bulk", 7, [b"nested", []], None, b"\x00\xff"]
            assert await store.run("return false", [], []) is None
            assert await store.run("return ARGV[1] .. ARGV[2]", [], [12, 2.5]) == b"122.5"
        finally:
            await store.close()
    run(main)


def test_error_reply_raises_store_error_and_counts_for_the_breaker(redis_server):
    async def main():
        store = store_for(redis_server.url, breaker_failures=2)
        try:
            with pytest.raises(StoreError, match="nope"):
                await store.run(FAIL, [], [])
            assert issubclass(StoreError, StoreUnavailable)  # callers' policies cover it
            assert await store.run(ECHO, ["t:{n}"], ["a"]) == [b"a", 1]  # connection intact
            for _ in range(2):
                with pytest.raises(StoreError):
                    await store.run(FAIL, [], [])
            assert store.is_open
        finally:
            await store.close()
    run(main)


def test_noscript_after_script_flush_runs_and_caches_the_script_again(redis_server):
    async def main():
        store = store_for(redis_server.url)
        try:
            assert await store.run(ECHO, ["t:{n}"], ["a"]) == [b"a", 1]
            redis_server.command("SCRIPT", "FLUSH")
            got = await asyncio.gather(*(store.run(ECHO, ["t:{n}"], ["b"]) for _ in range(5)))
            assert sorted(g[1] for g in got) == [2, 3, 4, 5, 6]
            sha = store._shas[ECHO]
            assert redis_server.command("SCRIPT", "EXISTS", sha) == b"*1\r\n:1\r\n"
        finally:
            await store.close()
    run(main)


def test_calls_run_in_the_order_made_even_on_a_scripts_first_use(redis_server):
    # A first use sends EVAL, not EVALSHA + NOSCRIPT + EVAL, which would let a later call
    # (an idempotency claim after its complete) overtake it.
    async def main():
        store = store_for(redis_server.url)
        try:
            get = "return redis.call('GET', KEYS[1])"
            assert await store.run(get, ["t:{k}"], []) is None  # known: EVALSHA next time
            first = asyncio.ensure_future(
                store.run("return redis.call('SET', KEYS[1], ARGV[1])", ["t:{k}"], ["v"]))
            await asyncio.sleep(0)
            assert await store.run(get, ["t:{k}"], []) == b"v"
            assert await first == b"OK"
        finally:
            await store.close()
    run(main)


def test_redis_restart_reconnects_on_the_next_call(own_redis):
    async def main():
        store = store_for(own_redis.url)
        try:
            assert await store.run(ECHO, ["t:{n}"], ["a"]) == [b"a", 1]
            # In a thread, so the loop sees the connection close as a worker would.
            await asyncio.to_thread(own_redis.stop)
            await asyncio.to_thread(own_redis.start)
            assert await store.run(ECHO, ["t:{n}"], ["b"]) == [b"b", 1]  # empty, new script
        finally:
            await store.close()
    run(main)


def test_redis_down_fails_fast_then_breaker_fails_without_trying_then_probe_recovers(
        own_redis):
    clock = Clock()

    async def main():
        store = store_for(own_redis.url, clock, breaker_failures=3, breaker_cooldown=2.0)
        try:
            assert await store.run(ECHO, ["t:{n}"], ["a"]) == [b"a", 1]
            await asyncio.to_thread(own_redis.stop)
            for _ in range(3):
                start = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await store.run(ECHO, ["t:{n}"], ["a"])
                assert time.monotonic() - start < 0.5  # refused: no wait for the timeout
            assert store.is_open
            own_redis.start()  # up again, but the breaker has not cooled down
            with pytest.raises(StoreUnavailable, match="breaker open"):
                await store.run(ECHO, ["t:{n}"], ["a"])
            clock.now += 2.0
            assert not store.is_open
            probe = asyncio.ensure_future(store.run(ECHO, ["t:{n}"], ["probe"]))
            await asyncio.sleep(0)  # the probe is under way...
            with pytest.raises(StoreUnavailable, match="breaker open"):
                await store.run(ECHO, ["t:{n}"], ["b"])  # ...so the others still fail at once
            assert await probe == [b"probe", 1]
            assert not store.is_open
            assert await store.run(ECHO, ["t:{n}"], ["c"]) == [b"c", 2]
        finally:
            await store.close()
    run(main)


def test_failed_probe_reopens_the_breaker(own_redis):
    clock = Clock()

    async def main():
        store = store_for(own_redis.url, clock, breaker_failures=1, breaker_cooldown=2.0)
        try:
            own_redis.stop()
            with pytest.raises(StoreUnavailable):
                await store.run(ECHO, ["t:{n}"], ["a"])
            assert store.is_open
            clock.now += 2.0
            with pytest.raises(StoreUnavailable) as probe:
                await store.run(ECHO, ["t:{n}"], ["a"])
            assert "breaker" not in str(probe.value)  # it did try Redis
            assert store.is_open
        finally:
            await store.close()
    run(main)


def test_breaker_transitions_are_logged_and_a_suppressed_one_is_paid_by_the_timer(
        own_redis, capfd):
    import orjson

    from engine.stores.breaker_log import BreakerLog

    async def main():
        store = store_for(own_redis.url, breaker_failures=1, breaker_cooldown=0.05)
        store.breaker_log = BreakerLog("r", interval=0.3, burst=2)
        try:
            assert store.breaker_state == "closed"
            await asyncio.to_thread(own_redis.stop)
            with pytest.raises(StoreUnavailable):
                await store.run(ECHO, ["t:{n}"], ["a"])
            assert store.breaker_state == "open"
            await asyncio.sleep(0.06)
            assert not store.is_open  # cooled down: the next call probes
            await asyncio.to_thread(own_redis.start)
            assert await store.run(ECHO, ["t:{n}"], ["a"]) == [b"a", 1]
            assert store.breaker_state == "closed"
            await asyncio.to_thread(own_redis.stop)
            with pytest.raises(StoreUnavailable):
                await store.run(ECHO, ["t:{n}"], ["b"])  # over the bound: owed, not logged
            events = [orjson.loads(ln)["event"] for ln in capfd.readouterr().err.splitlines()]
            assert events == ["redis_breaker_open", "redis_breaker_closed"]
            await asyncio.sleep(0.4)  # the bucket refills; the loop timer logs the state
            (line,) = [orjson.loads(ln) for ln in capfd.readouterr().err.splitlines()]
            assert line["event"] == "redis_breaker_open"
            assert line["transitions_not_logged"] == 1
        finally:
            await store.close()
    run(main)


@pytest.fixture
def silent_server():
    """A TCP listener that accepts and never answers: a hung Redis."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"


def test_a_redis_that_never_answers_costs_each_call_the_timeout(silent_server):
    async def main():
        store = store_for(silent_server, timeout=0.2, breaker_failures=1000)
        try:
            start = time.monotonic()
            results = await asyncio.gather(*(store.run(ECHO, ["t:{n}"], ["a"])
                                             for _ in range(20)), return_exceptions=True)
            took = time.monotonic() - start
            assert all(isinstance(r, StoreUnavailable) for r in results), results
            assert "timeout" in str(results[0])
            assert 0.19 <= took < 0.6
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match="timeout"):
                await store.run(ECHO, ["t:{n}"], ["a"])  # a fresh connection, same bound
            assert 0.19 <= time.monotonic() - start < 0.6
        finally:
            await store.close()
    run(main)


def test_breaker_open_on_a_hung_redis_costs_nothing(silent_server):
    async def main():
        store = store_for(silent_server, timeout=0.1, breaker_failures=2)
        try:
            for _ in range(2):
                with pytest.raises(StoreUnavailable, match="timeout"):
                    await store.run(ECHO, ["t:{n}"], ["a"])
            start = time.monotonic()
            for _ in range(100):
                with pytest.raises(StoreUnavailable, match="breaker open"):
                    await store.run(ECHO, ["t:{n}"], ["a"])
            assert time.monotonic() - start < 0.05
        finally:
            await store.close()
    run(main)


def test_a_slow_command_times_out_and_the_next_call_reconnects(redis_server):
    async def main():
        store = store_for(redis_server.url, timeout=0.1, breaker_failures=1000)
        try:
            assert await store.run(ECHO, ["t:{n}"], ["a"]) == [b"a", 1]
            assert await store.run(SPIN, [], [0]) == 1  # connected, script sent
            start = time.monotonic()
            slow = [store.run(SPIN, [], [300]), store.run(ECHO, ["t:{n}"], ["queued"])]
            results = await asyncio.gather(*slow, return_exceptions=True)
            assert time.monotonic() - start < 0.25  # not the 300 ms Redis was busy
            assert all(isinstance(r, StoreUnavailable) for r in results), results
            # The script finishes on the server; the answer comes on a new connection.
            # (Calls that timed out still ran on Redis once it got to them: they count.)
            deadline = time.monotonic() + 5
            while True:
                try:
                    reply = await store.run(ECHO, ["t:{n}"], ["b"])
                    assert reply[0] == b"b" and reply[1] >= 3
                    break
                except StoreUnavailable:  # Redis still spinning: each try costs 0.1 s
                    assert time.monotonic() < deadline
        finally:
            await store.close()
    run(main)


def test_a_bulky_call_gets_time_for_its_bytes_and_a_connection_of_its_own(redis_server):
    # An idempotent answer of megabytes: Redis busy with it beyond ``timeout`` is not Redis
    # gone, and its timing out must not take the per-request calls' connection with it.
    async def main():
        store = store_for(redis_server.url, timeout=0.1, breaker_failures=1000)
        try:
            assert await store.run(ECHO, ["t:{n}"], ["a"]) == [b"a", 1]
            main_conn = store._link.conn
            big = b"x" * (8 << 20)  # 0.8 s more: Redis spinning 150 ms fits
            assert await store.run(SPIN, [], [150, big], bulk=len(big)) == 1
            pad = b"x" * (64 << 10)  # the least that is bulky: about 0.1 s more
            with pytest.raises(StoreUnavailable):
                await store.run(SPIN, [], [600, pad], bulk=len(pad))
            assert store._link.conn is main_conn and not main_conn.lost
            deadline = time.monotonic() + 5
            while True:  # once Redis is done spinning
                try:
                    assert (await store.run(ECHO, ["t:{n}"], ["b"]))[0] == b"b"
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline
        finally:
            await store.close()
    run(main)


def test_a_cancelled_caller_leaves_the_others_replies_aligned(redis_server):
    async def main():
        store = store_for(redis_server.url)
        try:
            assert await store.run(ECHO, ["t:{n}"], ["connect"]) == [b"connect", 1]
            calls = [asyncio.ensure_future(store.run(ECHO, ["t:{n}"], [str(i)]))
                     for i in range(6)]
            await asyncio.sleep(0)  # all six are queued on the connection
            calls[2].cancel()
            calls[4].cancel()
            for i in (0, 1, 3, 5):
                assert await calls[i] == [str(i).encode(), i + 2]
            assert await store.run(ECHO, ["t:{n}"], ["after"]) == [b"after", 8]
        finally:
            await store.close()
    run(main)


def test_url_password_authenticates_and_db_is_selected(own_redis):
    own_redis.command("CONFIG", "SET", "requirepass", "s3cr:t")
    host = f"127.0.0.1:{own_redis.port}"

    async def main():
        store = store_for(f"redis://:s3cr%3At@{host}/3")
        wrong = store_for(f"redis://:nope@{host}/0")
        try:
            assert await store.run("return redis.call('SET', KEYS[1], 'v')", ["t:{k}"], []) \
                == b"OK"
            with pytest.raises(StoreUnavailable, match="AUTH"):
                await wrong.run(ECHO, ["t:{n}"], ["a"])
        finally:
            await store.close()
            await wrong.close()
    run(main)
    with socket.create_connection(("127.0.0.1", own_redis.port), 2) as s:
        s.sendall(b"AUTH s3cr:t\r\nINFO keyspace\r\n")
        reply = b""
        while b"keys=" not in reply:
            reply += s.recv(4096)
    assert b"db3:keys=1" in reply and b"db0:" not in reply


def test_close_fails_the_calls_in_flight_and_the_store_can_be_used_again(redis_server):
    async def main():
        store = store_for(redis_server.url)
        try:
            connecting = asyncio.ensure_future(store.run(SPIN, [], [0]))
            await asyncio.sleep(0)
            await store.close()
            with pytest.raises(StoreUnavailable, match="closed"):
                await connecting
            assert await store.run(SPIN, [], [0]) == 1
            sent = asyncio.ensure_future(store.run(SPIN, [], [100]))
            await asyncio.sleep(0)
            await store.close()
            with pytest.raises(StoreUnavailable, match="closed"):
                await sent
            assert await store.run(ECHO, ["t:{n}"], ["a"]) == [b"a", 1]
        finally:
            await store.close()
    run(main)


def test_key_puts_the_first_part_in_a_hash_tag():
    store = store_for("redis://127.0.0.1:1/0")
    assert store.key("rl:r:l:1.2.3.4") == "t:{rl:r:l:1.2.3.4}"
    assert store.key("idem:k", "m") == "t:{idem:k}:m"
    assert store.key("rl:r", "a:b", "c") == "t:{rl:r}:a:b:c"


@pytest.mark.parametrize("url, want", [
    ("redis://127.0.0.1:6380/2", (False, "127.0.0.1", 6380, None, 2, None, None)),
    ("redis://localhost", (False, "localhost", 6379, None, 0, None, None)),
    ("redis://u:p%40ss@h:1?db=4", (False, "h", 1, None, 4, "u", "p@ss")),
    ("rediss://edge:pw@h:6380/1", (True, "h", 6380, None, 1, "edge", "pw")),
    ("unix:///run/redis.sock?db=1", (False, None, None, "/run/redis.sock", 1, None, None)),
    ("unix://:pw@/run/redis.sock", (False, None, None, "/run/redis.sock", 0, None, "pw")),
], ids=["tcp-db", "defaults", "auth-query-db", "tls-acl-user", "unix-db", "unix-password"])
def test_parse_url(url, want):
    assert parse_url(url) == want


@pytest.mark.parametrize("url, match", [
    ("http://h/0", "redis://"),
    ("redis://h/x", "number"),
    ("redis://h/0?ssl=1", "ssl"),
    ("unix://", "socket path"),
    ("redis://h:99999", "port"),
], ids=["scheme", "db", "option", "unix-no-path", "port"])
def test_parse_url_refuses(url, match):
    with pytest.raises(ValueError, match=match):
        parse_url(url)
