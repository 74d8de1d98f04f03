"""rediss:// and ACL users on a real TLS redis-server whose certificates the test makes: the
CA and client certificate of [redis], the server name checked, and the ACL rule docs/redis.md
gives operators (every command edgeproxy sends, nothing more)."""

import asyncio

import pytest

from engine.control.config import RedisConfig
from engine.stores import idempotency, ratelimit
from engine.stores.redis import RedisStore, StoreError, StoreUnavailable
from tests.engine.stores.test_redis_store import run
from tests.support.redis import RedisServer, tls_binary
from tests.support.redis_ha import Certs

# docs/redis.md's rule, with this test's prefix: keep the two in step.
ACL_RULE = ("on >edge-pw resetkeys ~t:* resetchannels -@all +eval +evalsha +time +hmget "
            "+hset +pexpire +pttl +get +set +del +zadd +zrem +zcard +zrange +zremrangebyscore "
            "+select +role +wait +asking +cluster|shards +cluster|slots")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_redis(certs):
    binary = tls_binary()
    if binary is None:
        pytest.skip("no redis-server built with TLS (apt-get install redis-server)")
    server = RedisServer(certs.server_args(), tls_port=True, name="tls", binary=binary).start()
    try:
        server.command("ACL", "SETUSER", "edge", *ACL_RULE.split())
        yield server
    finally:
        server.close()


def tls_store(server, certs, user="edge:edge-pw@", host="127.0.0.1", **kw):
    opts = {"tls_ca": certs.ca, "tls_cert": certs.client_cert, "tls_key": certs.client_key,
            "timeout": 2.0, **kw}
    return RedisStore(RedisConfig(url=f"rediss://{user}{host}:{server.tls_port}/0",
                                  prefix="t:", **opts))


def test_limits_and_idempotency_work_over_tls_as_an_acl_user(tls_redis, certs):
    async def main():
        store = tls_store(tls_redis, certs)
        try:
            check = ratelimit.Check(ratelimit.FIXED_WINDOW, 2, 60, 0, "r:l", "l")
            got = [(await ratelimit.decide(store, [check], ["k"], [1], None))[0][0]
                   for _ in range(3)]
            assert got == [ratelimit.ALLOW, ratelimit.ALLOW, ratelimit.REJECT]
            records = idempotency.RedisStore(store)
            assert await records.claim("k1", b"fp", b"o1", 5) == (idempotency.CLAIMED, None)
            stored = idempotency.Stored(201, [(b"a", b"b")], b"body")
            assert await records.complete("k1", b"o1", stored, 60)
            state, stored = await records.claim("k1", b"fp", b"o2", 5)
            assert state == idempotency.DONE and stored.body == b"body"
            assert await store.run("return 1", [], [], replicas=0) == 1
            # The rule grants no key outside the prefix: the ACL is really in force.
            with pytest.raises(StoreError, match="access"):
                await store.run("return redis.call('GET', 'elsewhere')", [], [])
        finally:
            await store.close()
    run(main)


@pytest.mark.parametrize("change, match", [
    ({"user": "edge:wrong@"}, "WRONGPASS"),
    ({"tls_ca": "other"}, "CERTIFICATE_VERIFY_FAILED"),
    ({"tls_server_name": "elsewhere.test"}, "CERTIFICATE_VERIFY_FAILED"),
    ({"tls_cert": None, "tls_key": None}, "CERTIFICATE_REQUIRED"),
], ids=["wrong-password", "unknown-ca", "wrong-server-name", "no-client-certificate"])
def test_what_tls_or_acl_refuses_is_a_store_error_naming_why(tls_redis, certs, change, match):
    if change.get("tls_ca") == "other":
        change = {"tls_ca": certs.other_ca}

    async def main():
        store = tls_store(tls_redis, certs, **change)
        try:
            with pytest.raises(StoreUnavailable, match=match):
                await store.run("return 1", [], [])
        finally:
            await store.close()
    run(main)


def test_a_server_name_lets_a_certificate_match_a_node_reached_by_another_name(tls_redis,
                                                                                certs):
    async def main():
        # Reached as "localhost" (also on the certificate) but told to expect "redis.test".
        store = tls_store(tls_redis, certs, host="localhost", tls_server_name="redis.test")
        try:
            assert await asyncio.wait_for(store.run("return 7", [], []), 5) == 7
        finally:
            await store.close()
    run(main)
