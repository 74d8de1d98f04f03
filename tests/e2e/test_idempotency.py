"""Idempotency keys through the real proxy (issue 6): every rule, against both stores.

The origin is a ledger that counts executions and answers each with a distinct body, so
"replayed" and "executed again" are told apart by bytes. Durations (lease, ttl) are short and
every wait is a bounded poll.
"""

import socket
import time

import pytest

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config, wait_until
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

KEY = b'"8e03978e-40d5-43e8-bc93-6894a57f9324"'


class Ledger:
    """An origin handler that executes POSTs: each gets the next charge number. ``plan``
    overrides the answer of the n-th execution (1-based): bytes, or (bytes, action)."""

    def __init__(self, delay: float = 0.0, plan=None):
        self.executed = 0
        self.delay = delay
        self.plan = plan or {}

    def __call__(self, req):
        self.executed += 1
        n = self.executed
        if n in self.plan:
            return self.plan[n]
        body = b'{"charge": %d, "body": "%s"}' % (n, req.body)
        resp = ok(body, 201, [(b"Content-Type", b"application/json"), (b"X-Charge", b"%d" % n)])
        return (resp, self.delay) if self.delay else resp


def post(port, key=KEY, body=b"amount=10", path="/pay", headers=(), timeout=5.0, source=None):
    hs = [(b"Idempotency-Key", key)] if key is not None else []
    with Conn(port, timeout, source) as c:
        return c.request("POST", path, headers=hs + list(headers), body=body)


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        return 'store = "memory"\n'
    url = request.getfixturevalue("redis_server").url
    return 'store = "redis"\n', f'\n[redis]\nurl = "{url}"\n'


def config(origin, store, section="", server="", route="", upstream=""):
    if isinstance(store, tuple):
        store, redis = store
    else:
        redis = ""
    return proxy_config(origin.url, server=server, route=route, upstream=upstream,
                        extra="[routes.idempotency]\n" + store + section + redis)


class Setup:
    def __init__(self, store, section="", handler=None, **kw):
        self.ledger = handler or Ledger()
        self.store = store
        self.section = section
        self.kw = kw

    def __enter__(self):
        self.origin = Origin(self.ledger).__enter__()
        self.proxy = InProcessProxy(
            config(self.origin, self.store, self.section, **self.kw)).__enter__()
        return self.ledger, self.proxy.port

    def __exit__(self, *exc):
        self.proxy.__exit__(*exc)
        self.origin.__exit__(*exc)


def test_required_key_missing_is_400_and_upstream_untouched(store):
    with Setup(store, "required = true\n") as (ledger, port):
        err = assert_error(post(port, key=None), 400, "idempotency_key_missing")
        assert "Idempotency-Key" in err["message"]
        assert_error(post(port, key=b'"not closed'), 400, "idempotency_key_invalid")
        assert_error(post(port, key=b'"' + b"k" * 300 + b'"'), 400, "idempotency_key_invalid")
        with Conn(port) as c:
            r = c.request("POST", "/pay", headers=[(b"Idempotency-Key", KEY),
                                                    (b"Idempotency-Key", KEY)], body=b"x")
        assert_error(r, 400, "idempotency_key_invalid")
        assert ledger.executed == 0
        with Conn(port) as c:  # other methods are not affected
            assert c.request("GET", "/pay").status == 201


def test_replay_is_byte_identical_with_the_replayed_header(store):
    with Setup(store) as (ledger, port):
        first = post(port)
        assert first.status == 201 and first.header(b"idempotent-replayed") is None
        for _ in range(3):
            again = post(port)
            assert (again.status, again.body) == (first.status, first.body)
            assert again.header(b"idempotent-replayed") == b"true"
            assert again.header(b"x-charge") == b"1"
            assert again.header(b"content-type") == b"application/json"
            assert again.header(b"x-request-id") != first.header(b"x-request-id")
        assert ledger.executed == 1
        assert post(port, key=b"bare-key").status == 201  # Stripe-style bare keys welcome
        assert post(port, key=b"bare-key").header(b"idempotent-replayed") == b"true"
        assert ledger.executed == 2


def test_duplicate_in_flight_is_409_with_retry_after(store):
    with Setup(store, handler=Ledger(delay=0.5)) as (ledger, port):
        with Conn(port) as first:
            first.send(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
                       b"Content-Length: 9\r\n\r\namount=10" % KEY)
            assert wait_until(lambda: ledger.executed == 1)
            dup = post(port)
            assert_error(dup, 409, "idempotency_conflict")
            assert dup.header(b"retry-after") == b"1"
            assert first.response().status == 201
        assert post(port).header(b"idempotent-replayed") == b"true"
        assert ledger.executed == 1


def test_wait_mode_duplicate_gets_the_first_answer(store):
    section = 'concurrent = "wait"\nmax_wait = "5s"\n'
    with Setup(store, section, handler=Ledger(delay=0.3)) as (ledger, port):
        with Conn(port) as first:
            first.send(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
                       b"Content-Length: 9\r\n\r\namount=10" % KEY)
            assert wait_until(lambda: ledger.executed == 1)
            dup = post(port)
            original = first.response()
        assert dup.status == 201 and dup.body == original.body
        assert dup.header(b"idempotent-replayed") == b"true"
        assert ledger.executed == 1


def test_wait_mode_gives_up_after_max_wait(store):
    section = 'concurrent = "wait"\nmax_wait = "200ms"\n'
    with Setup(store, section, handler=Ledger(delay=1.5)) as (ledger, port):
        with Conn(port) as first:
            first.send(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
                       b"Content-Length: 9\r\n\r\namount=10" % KEY)
            assert wait_until(lambda: ledger.executed == 1)
            start = time.monotonic()
            assert_error(post(port), 409, "idempotency_conflict")
            assert time.monotonic() - start < 1.2


def test_same_key_different_request_is_422(store):
    with Setup(store) as (ledger, port):
        assert post(port, body=b"amount=10").status == 201
        assert_error(post(port, body=b"amount=99"), 422, "idempotency_mismatch")
        assert_error(post(port, path="/pay/other"), 422, "idempotency_mismatch")
        assert_error(post(port, path="/pay?currency=eur"), 422, "idempotency_mismatch")
        assert ledger.executed == 1


def test_5xx_and_429_release_the_key(store):
    plan = {1: ok(b"busy", 503), 2: ok(b"oops", 500), 3: ok(b"slow down", 429)}
    with Setup(store, handler=Ledger(plan=plan)) as (ledger, port):
        assert [post(port).status for _ in range(3)] == [503, 500, 429]
        ok_ = post(port)  # the client's retry runs for real this time
        assert ok_.status == 201 and ok_.header(b"idempotent-replayed") is None
        assert post(port).body == ok_.body
        assert ledger.executed == 4


def test_upstream_connect_failure_releases_the_key(store):
    from tests.support.origin import closed_port
    with Origin(Ledger()) as origin:
        text = config(origin, store).replace(origin.url, f"http://127.0.0.1:{closed_port()}")
        with InProcessProxy(text) as proxy:
            for _ in range(2):  # never a 409, never a replayed 502
                r = post(proxy.port)
                assert_error(r, 502, "bad_gateway")
                assert r.header(b"idempotent-replayed") is None


def test_4xx_is_stored_and_replayed(store):
    with Setup(store, handler=Ledger(plan={1: ok(b'{"error": "card declined"}', 402)})) as (
            ledger, port):
        assert post(port).status == 402
        again = post(port)
        assert again.status == 402 and again.body == b'{"error": "card declined"}'
        assert again.header(b"idempotent-replayed") == b"true"
        assert ledger.executed == 1


def test_claim_of_a_vanished_client_lasts_as_long_as_its_request(store):
    # The client leaves while the upstream hangs: the proxy still waits for the answer (up to
    # read_timeout), so the key stays claimed (409) meanwhile; the timeout's 504 means nothing
    # happened, which releases the key, and the retry runs.
    plan = {1: (b"", "hang")}
    with Setup(store, 'lease = "200ms"\n', handler=Ledger(plan=plan),
               upstream='read_timeout = "600ms"') as (ledger, port):
        s = socket.create_connection(("127.0.0.1", port), 2)
        s.sendall(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
                  b"Content-Length: 9\r\n\r\namount=10" % KEY)
        assert wait_until(lambda: ledger.executed == 1)
        s.close()
        time.sleep(0.3)  # past the lease: renewed, since the request still runs
        assert_error(post(port), 409, "idempotency_conflict")
        assert wait_until(lambda: post(port).status == 201, timeout=5, step=0.05)
        assert ledger.executed == 2


def test_answer_of_a_vanished_client_is_kept_for_its_retry(store):
    # The client gives up while the upstream works; the proxy reads the answer anyway
    # (finish_upstream), so the client's retry is a replay, not a second execution.
    ledger = Ledger(delay=0.3)
    with Setup(store, handler=ledger) as (_, port):
        s = socket.create_connection(("127.0.0.1", port), 2)
        s.sendall(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
                  b"Content-Length: 9\r\n\r\namount=10" % KEY)
        assert wait_until(lambda: ledger.executed == 1)
        s.close()
        assert_error(post(port), 409, "idempotency_conflict")  # still running
        assert wait_until(lambda: post(port).status == 201, timeout=5, step=0.05)
        r = post(port)
        assert r.header(b"idempotent-replayed") == b"true"
        assert r.body.startswith(b'{"charge": 1,')
    assert ledger.executed == 1


def test_a_running_request_keeps_its_claim_past_the_lease(store):
    # The lease bounds a crashed proxy's claim; a slow upstream's claim is renewed, so a
    # duplicate arriving after the lease still finds it in flight (not a second execution).
    ledger = Ledger(delay=1.0)
    with Setup(store, 'lease = "300ms"\n', handler=ledger) as (_, port):
        with Conn(port, 5) as c:
            c.send(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
                   b"Content-Length: 9\r\n\r\namount=10" % KEY)
            assert wait_until(lambda: ledger.executed == 1)
            time.sleep(0.6)  # two leases
            assert_error(post(port), 409, "idempotency_conflict")
            assert c.response().status == 201
        assert post(port).header(b"idempotent-replayed") == b"true"
    assert ledger.executed == 1


def test_ttl_expiry_forgets_the_answer(store):
    with Setup(store, 'ttl = "300ms"\n') as (ledger, port):
        first = post(port)
        assert post(port).header(b"idempotent-replayed") == b"true"
        assert wait_until(lambda: post(port).header(b"idempotent-replayed") is None,
                          timeout=5, step=0.05)
        assert post(port).body != first.body
        assert ledger.executed == 2


def test_callers_never_see_each_others_records(store):
    with Setup(store, 'caller = ["header:X-Api-Key"]\n') as (ledger, port):
        alice = post(port, headers=[(b"X-Api-Key", b"alice")])
        mallory = post(port, headers=[(b"X-Api-Key", b"mallory")])
        assert mallory.header(b"idempotent-replayed") is None
        assert mallory.body != alice.body
        assert post(port, headers=[(b"X-Api-Key", b"alice")]).body == alice.body
        assert ledger.executed == 2


def test_a_retry_from_another_address_replays_by_default(store):
    """A phone that changed networks, a second load balancer, a NAT pool: the same key and
    request from another client address is the retry the key is for (issue 11)."""
    with Setup(store) as (ledger, port):
        first = post(port, source="127.0.0.1")
        again = post(port, source="127.0.0.2")
        assert again.status == 201 and again.body == first.body
        assert again.header(b"idempotent-replayed") == b"true"
        assert ledger.executed == 1
        # The key is not a free pass elsewhere: another request with it is refused.
        assert_error(post(port, body=b"amount=99", source="127.0.0.2"), 422,
                     "idempotency_mismatch")
        assert ledger.executed == 1


def test_caller_ip_keeps_scoping_keys_by_client_address(store):
    with Setup(store, 'caller = ["ip"]\n') as (ledger, port):
        first = post(port, source="127.0.0.1")
        other = post(port, source="127.0.0.2")
        assert other.header(b"idempotent-replayed") is None and other.body != first.body
        assert post(port, source="127.0.0.1").body == first.body
        assert ledger.executed == 2


def test_response_headers_are_replayed_minus_hop_by_hop(store):
    resp = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
            b"Keep-Alive: timeout=5\r\nSet-Cookie: s=1\r\nX-Custom: v\r\n\r\nok")
    with Setup(store, handler=Ledger(plan={1: resp})) as (ledger, port):
        post(port)
        again = post(port)
        assert again.body == b"ok" and again.header(b"x-custom") == b"v"
        assert again.header(b"set-cookie") == b"s=1" and again.header(b"keep-alive") is None


def test_protected_post_is_retried_on_the_next_server(store):
    # ctx.protected: a POST whose key this proxy holds may go to the next server after the
    # first one got it and failed (a 502); without a key it may not (nginx's non_idempotent
    # rule), so the client sees that 502.
    ledger = Ledger()
    failing = Ledger(plan={n: ok(b"bad gateway", 502) for n in range(1, 100)})
    with Origin(ledger) as origin, Origin(failing) as bad:
        text = config(origin, store).replace(
            f'servers = ["{origin.url}"]', f'servers = ["{bad.url}", "{origin.url}"]')
        with InProcessProxy(text) as proxy:
            assert [post(proxy.port, key=b"k%d" % i).status for i in range(4)] == [201] * 4
            assert failing.executed == 2  # round robin sent two of them to the bad one first
        with InProcessProxy(text) as proxy:
            assert sorted(post(proxy.port, key=None).status for i in range(4)) == [
                201, 201, 502, 502]
    assert ledger.executed == 6


def test_post_whose_connection_was_refused_goes_to_the_next_server(store):
    # Nothing reached the refusing server, so even a keyless POST may go elsewhere (nginx).
    from tests.support.origin import closed_port
    ledger = Ledger()
    with Origin(ledger) as origin:
        text = config(origin, store).replace(
            f'servers = ["{origin.url}"]',
            f'servers = ["http://127.0.0.1:{closed_port()}", "{origin.url}"]')
        with InProcessProxy(text) as proxy:
            assert [post(proxy.port, key=k).status for k in (b"k1", None, None)] == [201] * 3
    assert ledger.executed == 3


def test_memory_records_survive_a_reload():
    ledger = Ledger()
    with Origin(ledger) as origin:
        text = config(origin, 'store = "memory"\n')
        with InProcessProxy(text) as proxy:
            first = post(proxy.port)
            proxy.swap(text.replace('access_log = "off"', 'access_log = "off"\n'
                                    'keepalive_requests = 50'))
            assert post(proxy.port).body == first.body
            proxy.swap(config(origin, 'store = "memory"\nmemory_size = "1m"\n'))
            assert post(proxy.port).header(b"idempotent-replayed") is None  # a new store
    assert ledger.executed == 2


def test_outcomes_are_counted_for_the_metrics():
    from engine.control.metrics import worker_snapshot
    ledger = Ledger()
    with Origin(ledger) as origin, InProcessProxy(config(origin, 'store = "memory"\n')) as p:
        assert post(p.port).status == 201
        assert post(p.port).header(b"idempotent-replayed") == b"true"
        assert post(p.port, body=b"other").status == 422
        events = p.call(lambda: worker_snapshot(p.worker)["events"])
    assert ["idempotency", "all", {"claimed": 1, "replayed": 1, "mismatch": 1}] in events


def test_chunked_body_is_fingerprinted_and_sent_with_its_length(store):
    # The filter reads the whole body (its digest is the fingerprint); the upstream then
    # gets it in one piece with a Content-Length (RFC 9112 §6.3: either framing is fine).
    seen = []

    def handler(req):
        seen.append((req.header(b"content-length"), req.header(b"transfer-encoding"), req.body))
        return ok(b"done", 201)

    with Setup(store, handler=handler) as (_, port):
        chunked = (b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n4\r\nab=1\r\n5\r\n&cd=2\r\n0\r\n\r\n" % KEY)
        for _ in range(2):
            with Conn(port) as c:
                c.send(chunked)
                assert c.response().status == 201
        assert_error(post(port, body=b"ab=1&cd=3"), 422, "idempotency_mismatch")
    assert seen == [(b"9", None, b"ab=1&cd=2")]  # the copy was a replay


def test_expect_100_continue_gets_its_interim_answer_before_the_body_is_read(store):
    with Setup(store) as (ledger, port), Conn(port) as c:
        c.send(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
               b"Expect: 100-continue\r\nContent-Length: 9\r\n\r\n" % KEY)
        assert c.response().status == 100  # RFC 9110 §10.1.1: the client waits for this
        c.send(b"amount=10")
        assert c.response().status == 201
    assert ledger.executed == 1


def test_proxy_made_timeout_after_the_request_reached_the_upstream_keeps_the_claim(store):
    # A 504 for a read timeout means "unknown", not "nothing happened": the upstream had the
    # request. The retry gets 409 until the lease ends, not a second execution.
    ledger = Ledger(plan={1: (ok(b"late", 201), 1.0)})  # the first answer comes too late
    with Setup(store, 'lease = "600ms"\n', handler=ledger,
               upstream='read_timeout = "300ms"\n[upstreams.retry]\ntries = 1') as (_, port):
        assert_error(post(port), 504, "gateway_timeout")
        assert_error(post(port), 409, "idempotency_conflict")
        assert ledger.executed == 1
        assert wait_until(lambda: post(port).status == 201, timeout=5, step=0.1)
    assert ledger.executed == 2  # after the lease: at least once, never twice at once


def test_slow_but_steady_body_keeps_the_wait_alive_and_a_stalled_one_is_408(store):
    with Setup(store, server='client_body_timeout = "500ms"') as (ledger, port):
        with Conn(port, 10) as c:
            c.send(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
                   b"Content-Length: 6\r\n\r\n" % KEY)
            for byte in b"amount":  # 1.8 s in all, each gap under the timeout
                time.sleep(0.3)
                c.send(bytes([byte]))
            assert c.response().status == 201
        with Conn(port, 10) as c:
            c.send(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: k2\r\n"
                   b"Content-Length: 6\r\n\r\nam")
            assert_error(c.response(), 408, "request_timeout")
    assert ledger.executed == 1


def test_answer_of_a_client_that_left_while_the_proxy_held_back_the_upstream_is_kept(store):
    # The client stops reading a large answer (the proxy pauses the upstream), then leaves:
    # the proxy must resume and read the answer to its end, and store it.
    big = b"x" * (8 << 20)
    ledger = Ledger(plan={1: ok(big, 201)})
    with Setup(store, 'max_response_size = "16m"\n', handler=ledger,
               server='send_timeout = "2s"') as (_, port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"POST /pay HTTP/1.1\r\nHost: t\r\nIdempotency-Key: %s\r\n"
                  b"Content-Length: 9\r\n\r\namount=10" % KEY)
        time.sleep(0.3)  # buffers fill, the upstream is paused
        s.close()
        assert wait_until(lambda: post(port, timeout=10).header(b"idempotent-replayed") == b"true",
                          timeout=5, step=0.1)
        assert post(port, timeout=10).body == big
    assert ledger.executed == 1


@pytest.mark.parametrize("first", [(b"", "hang"), (b"", "reset")], ids=["timeout", "reset"])
def test_protected_post_is_not_sent_to_a_second_server_after_an_unknown_outcome(store, first):
    # Only an answer in which the upstream says it did not act (502/503/504) lets a keyed
    # POST go on; after a timeout or a connection lost mid-request it may have run.
    failing = Ledger(plan={1: first})
    ledger = Ledger()
    with Origin(failing) as bad, Origin(ledger) as origin:
        text = config(origin, store, upstream='read_timeout = "300ms"').replace(
            f'servers = ["{origin.url}"]', f'servers = ["{bad.url}", "{origin.url}"]')
        with InProcessProxy(text) as proxy:
            assert post(proxy.port).status in (502, 504)
    assert failing.executed == 1 and ledger.executed == 0
