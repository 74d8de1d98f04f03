"""Idempotency with min_replicas through the real proxy. A claim the replica acknowledged
survives the master's death: requests in flight during a Sentinel failover are still the only
executions of their keys, and their answers are replayed from the new master. Without the
replica, the route's on_store_error policy answers."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.test_idempotency import Ledger, post
from tests.support.e2e import assert_error, proxy_config, wait_for
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy
from tests.support.redis_ha import Replicated, SentinelGroup

SECTION = """
[[routes]]
name = "{name}"
paths = ["/{name}"]
upstream = "app"
[routes.idempotency]
store = "redis"
min_replicas = 1
replica_timeout = "300ms"
on_store_error = "{name}"
"""


@pytest.fixture
def group():
    with SentinelGroup() as g:
        yield g


@pytest.fixture
def pair():
    with Replicated() as p:
        yield p


def test_claims_in_flight_survive_a_failover_and_their_answers_replay(group):
    ledger = Ledger(delay=3.0)  # longer than the failover: the claims are held across it
    redis = (f'\n[redis]\nmode = "sentinel"\nurl = "redis://{group.NAME}/0"\n'
             f"sentinels = {group.addresses!r}\n".replace("'", '"')
             + 'timeout = "1s"\nbreaker_cooldown = "300ms"\n')
    keys = [b"pay-%d" % i for i in range(10)]
    with Origin(ledger) as origin, \
            InProcessProxy(proxy_config(origin.url, paths='["/other"]',
                                        extra=SECTION.format(name="deny") + redis)) as p, \
            ThreadPoolExecutor(10) as pool:
        first = [pool.submit(post, p.port, key=k, path="/deny", timeout=20) for k in keys]
        wait_for(lambda: ledger.executed == len(keys), 5, "every request upstream")
        # Every claim was acknowledged by the replica before its request went upstream.
        group.master.stop()
        old = group.master.port
        wait_for(lambda: group.master_port() != old, 10, "sentinel failover")
        # The new master knows the claims: a retry now is told the request is in flight.
        deadline = time.monotonic() + 10
        while True:
            r = post(p.port, key=keys[0], path="/deny")
            if r.status == 409 or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # 503 until the store reaches the new master
        assert_error(r, 409, "idempotency_conflict")
        assert all(f.result(20).status == 201 for f in first)

        def replayed(key):
            r = post(p.port, key=key, path="/deny")
            return r.status == 201 and r.header(b"idempotent-replayed") == b"true"
        # The answers, stored after the failover, are on the new master.
        wait_for(lambda: all(replayed(k) for k in keys), 10, "answers replayed")
    assert ledger.executed == len(keys)


def test_without_a_replica_to_acknowledge_the_policy_answers(pair):
    ledger = Ledger()
    redis = f'\n[redis]\nurl = "{pair.master.url}"\ntimeout = "1s"\n'
    extra = SECTION.format(name="deny") + SECTION.format(name="allow") + redis
    with Origin(ledger) as origin, \
            InProcessProxy(proxy_config(origin.url, paths='["/other"]', extra=extra)) as p:
        assert post(p.port, key=b"a", path="/deny").status == 201
        pair.replica.stop()
        t0 = time.monotonic()
        r = post(p.port, key=b"b", path="/deny")
        assert time.monotonic() - t0 < 1.5  # the replica timeout, not a hang
        assert_error(r, 503, "store_unavailable")
        assert ledger.executed == 1  # refused before going upstream
        r = post(p.port, key=b"c", path="/allow")
        assert r.status == 201 and ledger.executed == 2  # served, unprotected
        # The refused claim was given back: once a replica is back, the retry runs.
        pair.replica.start()
        pair.wait_in_sync()
        assert post(p.port, key=b"b", path="/deny").status == 201
    assert ledger.executed == 3
