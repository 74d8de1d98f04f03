"""Idempotency with the Redis store across real edgeproxy processes (issue 6): exactly once
over two proxies, a restart of edgeproxy, a crashed proxy's claim expiring with its lease,
and Redis going away mid-test."""

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.test_idempotency import KEY, Ledger, post
from tests.support.cli import CliProxy
from tests.support.e2e import assert_error, proxy_config, wait_until
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy


def redis_config(origin, url, section=""):
    return proxy_config(origin.url, extra=f'[routes.idempotency]\nstore = "redis"\n{section}'
                                          f'\n[redis]\nurl = "{url}"\n')


def proxy_dir(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    return d


def test_exactly_once_200_keys_10_copies_over_two_proxies(tmp_path, redis_server):
    ledger = Ledger(delay=0.02)
    section = 'concurrent = "wait"\nmax_wait = "20s"\n'
    with Origin(ledger) as origin:
        text = redis_config(origin, redis_server.url, section)
        with CliProxy(proxy_dir(tmp_path, "a"), text) as a, \
                CliProxy(proxy_dir(tmp_path, "b"), text) as b:
            ports = (a.port, b.port)

            def send(job):
                k, copy = job
                r = post(ports[copy % 2], key=b'"order-%d"' % k, body=b"amount=%d" % k,
                         timeout=25)
                return k, r.status, r.body, r.header(b"idempotent-replayed")

            # The 10 copies of a key are queued together, so they are in flight at once.
            jobs = [(k, copy) for k in range(200) for copy in range(10)]
            with ThreadPoolExecutor(32) as pool:
                results = list(pool.map(send, jobs, timeout=50))
    assert ledger.executed == 200
    assert sum(replayed is None for *_, replayed in results) == 200
    answers = {}
    for k, status, body, _ in results:
        answers.setdefault(k, set()).add((status, body))
    assert len(answers) == 200
    for k, seen in answers.items():
        assert len(seen) == 1, (k, seen)
        status, body = next(iter(seen))
        assert status == 201 and b'"body": "amount=%d"' % k in body


def test_records_survive_an_edgeproxy_restart(tmp_path, redis_server):
    ledger = Ledger()
    with Origin(ledger) as origin:
        text = redis_config(origin, redis_server.url)
        with CliProxy(proxy_dir(tmp_path, "first"), text) as p:
            first = post(p.port)
        assert first.status == 201
        with CliProxy(proxy_dir(tmp_path, "second"), text) as p:
            again = post(p.port)
    assert again.body == first.body and again.header(b"idempotent-replayed") == b"true"
    assert ledger.executed == 1


def test_a_crashed_proxys_claim_expires_with_its_lease(tmp_path, redis_server):
    ledger = Ledger(plan={1: (b"", "hang")})
    with Origin(ledger) as origin:
        text = redis_config(origin, redis_server.url, 'lease = "2s"\n')
        with CliProxy(proxy_dir(tmp_path, "doomed"), text) as p:
            s = socket.create_connection(("127.0.0.1", p.port), 2)
            s.sendall(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
                      b"Content-Length: 9\r\n\r\namount=10" % KEY)
            assert wait_until(lambda: ledger.executed == 1)
            os.killpg(p.proc.pid, signal.SIGKILL)  # no finish hook runs: a real crash
            p.proc.wait(5)
            s.close()
        killed = time.monotonic()
        claims = redis_server.command("KEYS", "edgeproxy:{idem:*}:m")
        assert claims.startswith(b"*1\r\n"), claims
        with CliProxy(proxy_dir(tmp_path, "next"), text) as p:
            seen = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                r = post(p.port)
                seen.append(r.status)
                if r.status != 409:
                    break
                time.sleep(0.1)
    assert seen[-1] == 201 and set(seen[:-1]) <= {409}
    assert time.monotonic() - killed >= 1.5  # not before the lease ran out
    assert ledger.executed == 2


def test_redis_stopped_mid_test_policy_holds_and_nothing_hangs(own_redis):
    ledger = Ledger()
    with Origin(ledger) as origin:
        text = proxy_config(origin.url, paths='["/strict/*"]', extra=f"""
[routes.idempotency]
store = "redis"
required = true

[[routes]]
name = "lenient"
paths = ["/lenient/*"]
upstream = "app"

[routes.idempotency]
store = "redis"
on_store_error = "allow"

[redis]
url = "{own_redis.url}"
timeout = "200ms"
breaker_cooldown = "500ms"
""")
        with InProcessProxy(text) as proxy:
            assert post(proxy.port, path="/strict/pay").status == 201
            assert post(proxy.port, path="/lenient/pay").status == 201
            own_redis.stop()
            start = time.monotonic()
            for i in range(4):
                r = post(proxy.port, key=b'"k%d"' % i, path="/strict/pay")
                assert_error(r, 503, "store_unavailable")
                assert post(proxy.port, key=b'"k%d"' % i, path="/lenient/pay").status == 201
            assert time.monotonic() - start < 5
            executed = ledger.executed
            own_redis.start()
            assert wait_until(
                lambda: post(proxy.port, key=b'"after"', path="/strict/pay").status == 201,
                timeout=10, step=0.1)
            assert post(proxy.port, key=b'"after"', path="/strict/pay").header(
                b"idempotent-replayed") == b"true"
    assert executed == 2 + 4  # the strict route sent nothing upstream without Redis


def test_redis_lost_while_a_request_is_in_flight(own_redis):
    # The claim was taken, then Redis goes away before the answer can be stored: the client
    # still gets its answer, nothing waits on Redis beyond its timeout, and the key is not
    # replayed from nowhere.
    ledger = Ledger(delay=0.4)
    with Origin(ledger) as origin:
        text = redis_config(origin, own_redis.url, "required = true\n").replace(
            f'url = "{own_redis.url}"', f'url = "{own_redis.url}"\ntimeout = "200ms"')
        with InProcessProxy(text) as proxy:
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(post, proxy.port)
                assert wait_until(lambda: ledger.executed == 1)
                own_redis.stop()
                start = time.monotonic()
                assert first.result(5).status == 201
                assert time.monotonic() - start < 2
            assert_error(post(proxy.port), 503, "store_unavailable")
            assert ledger.executed == 1
