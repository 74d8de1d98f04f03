"""Upstream failures end to end: next-upstream retries, passive health (nginx max_fails),
circuit breakers, active health checks, outlier ejection, backup servers and fallbacks, with
real origins on loopback that refuse, reset, hang or answer 5xx on cue.

The worker's clock advances once per sweep, and the sweep interval is a quarter of the
shortest timeout (engine/control/worker.py). Tests that depend on short durations (fail_timeout,
cooldown, check intervals) set ``connect_timeout = "200ms"`` so the sweep runs every 50 ms;
every wait is a bounded poll.
"""

import threading
import time

import pytest

from tests.support.client import Conn
from tests.support.e2e import assert_error, servers_config, wait_until
from tests.support.origin import Origin, closed_port, ok
from tests.support.proxy import InProcessProxy

FINE_CLOCK = 'connect_timeout = "200ms"'


def entry(url: str, extra: str = "") -> str:
    return f'{{url = "{url}"{", " + extra if extra else ""}}}'


class Switch:
    """An origin handler: answers its ``name`` with 200, or does ``fault`` while set
    (``"reset"``, ``"hang"``, a status number, or ``None`` for healthy)."""

    def __init__(self, name: bytes, fault=None):
        self.name = name
        self.fault = fault
        self.hits = 0       # requests other than health checks
        self.methods = []

    def __call__(self, req):
        if req.url == b"/health":
            return ok(b"", 500 if self.fault == "unhealthy" else 200)
        self.hits += 1
        self.methods.append(req.method)
        fault = self.fault
        if fault == "reset":
            return b"", "reset"
        if fault == "hang":
            return b"", "hang"
        if isinstance(fault, int):
            return ok(b"%s failed" % self.name, fault)
        return ok(self.name + (b" " + req.body if req.body else b""))


class Origins:
    """``with Origins(3) as o: o.switches[0].fault = "reset"; o.urls``"""

    def __init__(self, n: int, faults=None):
        self.switches = [Switch(b"%c" % (ord("a") + i), (faults or {}).get(i))
                         for i in range(n)]
        self.origins = []

    def __enter__(self):
        for s in self.switches:
            self.origins.append(Origin(s).__enter__())
        return self

    def __exit__(self, *exc):
        for o in self.origins:
            if o._stop is not None and not o._stop.done():
                o.__exit__(*exc)

    @property
    def urls(self) -> list[str]:
        return [o.url for o in self.origins]

    def hits(self) -> list[int]:
        return [s.hits for s in self.switches]


def get_all(port: int, n: int, path: str = "/") -> list:
    with Conn(port) as c:
        return [c.request("GET", path) for _ in range(n)]


def bodies(port: int, n: int) -> list[bytes]:
    out = []
    for r in get_all(port, n):
        assert r.status == 200, (r.status, r.body)
        out.append(r.body)
    return out


# -- retries


def test_gets_survive_one_of_three_servers_dying_mid_load():
    with Origins(3) as o, InProcessProxy(servers_config([f'"{u}"' for u in o.urls])) as p:
        dying = o.origins[1]
        stopper = threading.Thread(
            target=lambda: wait_until(lambda: o.switches[1].hits >= 50) and dying.__exit__(None))
        stopper.start()
        statuses = []
        for _ in range(3):
            statuses += [r.status for r in get_all(p.port, 200)]
        stopper.join(10)
        assert statuses == [200] * 600
        assert o.switches[1].hits >= 50
        # The other two took the rest, and the dead one is skipped (max_fails = 1).
        assert o.switches[0].hits + o.switches[2].hits == 600 - o.switches[1].hits
        before = o.hits()
        assert bodies(p.port, 20) and o.hits()[1] == before[1]


def test_post_without_a_key_is_never_sent_twice():
    with Origins(2, {0: "reset", 1: "reset"}) as o, InProcessProxy(
            servers_config([entry(u, "max_fails = 0") for u in o.urls])) as p:
        with Conn(p.port) as c:
            assert_error(c.request("POST", "/pay", body=b"amount=1"), 502, "bad_gateway")
        assert sum(o.hits()) == 1
        # An idempotent method, same failure: the next server is tried.
        with Conn(p.port) as c:
            assert_error(c.request("PUT", "/doc", body=b"v=1"), 502, "bad_gateway")
        assert sum(o.hits()) == 3


def test_post_answered_503_is_relayed_not_retried():
    with Origins(2, {0: 503, 1: 503}) as o, InProcessProxy(
            servers_config([f'"{u}"' for u in o.urls])) as p:
        with Conn(p.port) as c:
            r = c.request("POST", "/pay", body=b"x")
        assert r.status == 503 and r.body.endswith(b"failed")
        assert sum(o.hits()) == 1


def test_503_from_one_server_is_retried_on_another():
    # (A budget of 1: a third of the requests are retried, above the default 20 %.)
    with Origins(3, {1: 503}) as o, InProcessProxy(servers_config(
            [f'"{u}"' for u in o.urls], "[upstreams.retry]\nbudget = 1.0")) as p:
        got = bodies(p.port, 30)
        assert set(got) == {b"a", b"c"}
        assert o.switches[1].hits >= 5  # 503 is not a failure by default: b keeps its turn


@pytest.mark.parametrize("tries,attempts", [(1, 1), (2, 2), (3, 3), (10, 4)])
def test_tries_bound_the_attempts(tries, attempts):
    with Origins(4, {i: 502 for i in range(4)}) as o, InProcessProxy(servers_config(
            [f'"{u}"' for u in o.urls], f"[upstreams.retry]\ntries = {tries}")) as p:
        with Conn(p.port) as c:
            r = c.request("GET", "/")
        assert r.status == 502 and r.body.endswith(b"failed")  # the last server's answer
        assert sum(o.hits()) == attempts


def test_retry_on_lists_what_is_retried():
    with Origins(2, {0: 500}) as o, InProcessProxy(servers_config(
            [f'"{u}"' for u in o.urls], '[upstreams.retry]\non = ["http_500"]\nbudget = 1.0')) as p:
        assert set(bodies(p.port, 10)) == {b"b"}
    with Origins(2, {0: 503}) as o, InProcessProxy(servers_config(
            [f'"{u}"' for u in o.urls], '[upstreams.retry]\non = ["error"]')) as p:
        assert {r.status for r in get_all(p.port, 10)} == {200, 503}


def test_exhausted_retry_budget_relays_the_failure():
    with Origins(2, {0: 503}) as o, InProcessProxy(servers_config(
            [f'"{u}"' for u in o.urls],
            "[upstreams.retry]\nbudget = 0.0\nmin_retries = 2")) as p:
        statuses = [r.status for r in get_all(p.port, 20)]
        # Two retries are allowed per window whatever the budget; then b's 503s go through.
        assert statuses.count(200) == 10 + 2
        assert statuses.count(503) == 8


def reset_on_head(req, transport):
    import socket
    import struct
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def test_whole_body_is_retried_streamed_body_is_not():
    b = Switch(b"b")
    with Origin(lambda req: ok(), on_head=reset_on_head) as a, Origin(b) as bo:
        cfg = servers_config([f'"{a.url}"', f'"{bo.url}"'])
        # The body arrived whole before the upstream connection: it is kept and resent.
        with InProcessProxy(cfg) as p, Conn(p.port) as c:
            r = c.request("PUT", "/doc", body=b"0123456789")
            assert (r.status, r.body) == (200, b"b 0123456789")
        assert b.hits == 1
        # Half a body, then the first server fails: part of it went there already.
        with InProcessProxy(cfg) as p, Conn(p.port) as c:
            c.send(b"PUT /doc HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
            assert_error(c.response(), 502, "bad_gateway")
        assert b.hits == 1


def test_post_with_a_claimed_idempotency_key_is_retried():
    with Origins(3, {0: 502}) as o:
        o.origins[1].__exit__(None)  # refuses connections
        with InProcessProxy(servers_config(
                [f'"{u}"' for u in o.urls], extra="[routes.idempotency]\nstore = \"memory\"")) as p:
            for i in range(4):
                with Conn(p.port) as c:
                    r = c.request("POST", "/pay", body=b"n=%d" % i,
                                  headers=[(b"Idempotency-Key", b'"k-%d"' % i)])
                assert (r.status, r.body) == (200, b"c n=%d" % i)
            assert o.switches[2].methods == [b"POST"] * 4
            # Without a key nothing is retried.
            statuses = set()
            for _ in range(3):
                with Conn(p.port) as c:
                    statuses.add(c.request("POST", "/pay", body=b"x").status)
            assert 502 in statuses


# -- passive health


def test_max_fails_take_a_server_out_for_fail_timeout_then_it_comes_back():
    with Origins(2, {1: "reset"}) as o, InProcessProxy(servers_config(
            [entry(o.urls[0]), entry(o.urls[1], 'max_fails = 2, fail_timeout = "300ms"')],
            FINE_CLOCK)) as p:
        with Conn(p.port) as c:
            while o.switches[1].hits < 2:
                r = c.request("GET", "/")
                assert (r.status, r.body) == (200, b"a")  # each failure retried on a
            t_down = time.monotonic()
            o.switches[1].fault = None
            for _ in range(10):
                assert c.request("GET", "/").body == b"a"
            assert o.switches[1].hits == 2
            assert wait_until(lambda: c.request("GET", "/").body == b"b", 3.0)
            assert time.monotonic() - t_down >= 0.2


def test_single_server_is_never_marked_down():
    # nginx: max_fails is ignored when the upstream has one server.
    with Origins(1, {0: "reset"}) as o, InProcessProxy(servers_config(
            [entry(o.urls[0], 'max_fails = 1, fail_timeout = "30s"')])) as p:
        for _ in range(3):
            with Conn(p.port) as c:
                assert_error(c.request("GET", "/"), 502, "bad_gateway")
        o.switches[0].fault = None
        assert bodies(p.port, 1) == [b"a"]


# -- circuit breakers


def test_server_circuit_opens_then_a_probe_closes_it():
    with Origins(2, {1: "reset"}) as o, InProcessProxy(servers_config(
            [entry(u, "max_fails = 0") for u in o.urls],
            FINE_CLOCK + '\n[upstreams.circuit_breaker]\nconsecutive_failures = 3\n'
                         'cooldown = "300ms"\nfailure_rate = 0.0')) as p:
        with Conn(p.port) as c:
            while o.switches[1].hits < 3:
                assert c.request("GET", "/").body == b"a"
            o.switches[1].fault = None
            for _ in range(10):
                assert c.request("GET", "/").body == b"a"
            assert o.switches[1].hits == 3
            assert wait_until(lambda: c.request("GET", "/").body == b"b", 3.0)
            # Closed again: b is back in the rotation.
            got = [c.request("GET", "/").body for _ in range(10)]
            assert got.count(b"b") == 5


def test_open_upstream_circuit_answers_at_once():
    with Origins(2, {0: "hang", 1: "hang"}) as o, InProcessProxy(servers_config(
            [entry(u, "max_fails = 0") for u in o.urls],
            'read_timeout = "500ms"\n[upstreams.circuit_breaker]\nconsecutive_failures = 2\n'
            'cooldown = "20s"')) as p:
        for n in (1, 2):
            with Conn(p.port) as c:
                t = time.monotonic()
                assert_error(c.request("GET", "/"), 504, "gateway_timeout")
                assert time.monotonic() - t >= 0.9  # a timed out, then b (one retry)
            assert o.hits() == [n, n]
        # Each server failed twice, once per request: the servers' breakers count attempts,
        # the upstream's counts what its clients got, two failed requests, and opens.
        with Conn(p.port) as c:
            t = time.monotonic()
            r = c.request("GET", "/")
            took = time.monotonic() - t
        err = assert_error(r, 503, "upstream_unavailable")
        assert took < 0.2, took
        assert 15 <= int(r.header(b"retry-after")) <= 20, err
        assert o.hits() == [2, 2]


def test_retries_that_succeed_never_open_the_upstream_circuit():
    # One of two servers resets every request; each is retried on the other and answered.
    # The upstream-wide breaker judges those answers, not the failed attempts: it stays
    # closed, where counting attempts would open it and refuse the healthy server's traffic.
    with Origins(2, {0: "reset"}) as o, InProcessProxy(servers_config(
            [entry(u, "max_fails = 0") for u in o.urls],
            "[upstreams.circuit_breaker]\nconsecutive_failures = 2\ncooldown = \"20s\"")) as p:
        with Conn(p.port) as c:
            statuses = [c.request("GET", "/").status for _ in range(12)]
        assert statuses == [200] * 12
        # The failing server's own breaker opened after its two failures; the upstream's,
        # counting attempts, would have opened too and refused the other ten requests.
        assert o.hits()[0] == 2


@pytest.mark.parametrize("scope", ["server", "both", "upstream"])
def test_circuit_breaker_scope_picks_the_breakers(scope):
    # No retries: one of two servers resets, so half the clients get a 502. The upstream's
    # breaker ("both", "upstream") opens on that failure rate and refuses everyone; with
    # scope = "server" only the failing server's own breaker opens and the other one serves
    # every request after it.
    with Origins(2, {0: "reset"}) as o, InProcessProxy(servers_config(
            [entry(u, "max_fails = 0") for u in o.urls],
            f'[upstreams.retry]\ntries = 1\n[upstreams.circuit_breaker]\nscope = "{scope}"\n'
            'consecutive_failures = 0\nfailure_rate = 0.4\nmin_requests = 4\n'
            'cooldown = "20s"')) as p:
        upstream = p.worker.runtime.upstreams["app"]
        assert (upstream.circuit is None) == (scope == "server")
        assert all((s.health.circuit is None) == (scope == "upstream")
                   for s in upstream.servers)
        with Conn(p.port) as c:
            statuses = [c.request("GET", "/").status for _ in range(16)]
        assert statuses[:4] == [502, 200, 502, 200]
        if scope == "server":
            assert statuses[4:8] == [502, 200, 502, 200]  # a's fourth failure opens it
            assert statuses[8:] == [200] * 8 and o.hits() == [4, 12]
        else:  # (a failure is what makes a breaker look at the rate: the third, 3 of 5)
            assert statuses[4:] == [502] + [503] * 11 and o.hits() == [3, 2]


# -- active health checks


def stderr_of(capfd, sink: list) -> str:
    sink.append(capfd.readouterr().err)
    return "".join(sink)


def test_active_checks_take_a_server_out_and_bring_it_back(capfd):
    with Origins(2) as o, InProcessProxy(servers_config(
            [f'"{u}"' for u in o.urls],
            FINE_CLOCK + '\n[upstreams.health_check]\npath = "/health"\ninterval = "100ms"\n'
            'timeout = "500ms"\nunhealthy_threshold = 2\nhealthy_threshold = 2')) as p:
        err = []
        assert set(bodies(p.port, 4)) == {b"a", b"b"}
        o.switches[1].fault = "unhealthy"  # /health answers 500; requests still work
        assert wait_until(lambda: '"server_unhealthy"' in stderr_of(capfd, err), 3.0)
        assert o.urls[1] in "".join(err)
        assert set(bodies(p.port, 20)) == {b"a"}
        o.switches[1].fault = None
        assert wait_until(lambda: '"server_healthy"' in stderr_of(capfd, err), 3.0)
        assert set(bodies(p.port, 4)) == {b"a", b"b"}


def test_active_checks_keep_their_interval_with_default_timeouts():
    """interval = "100ms" means about ten checks a second, whatever the timeouts."""
    hits = []

    def handler(req):
        if req.url == b"/health":
            hits.append(time.monotonic())
        return ok()

    with Origin(handler) as a, Origin(handler) as b, InProcessProxy(servers_config(
            [f'"{a.url}"', f'"{b.url}"'],
            '[upstreams.health_check]\npath = "/health"\ninterval = "100ms"')):
        time.sleep(0.2)
        start = len(hits)
        time.sleep(1.0)
        checks = len(hits) - start
    assert checks >= 10, f"{checks} checks of 2 servers in 1 s with interval 100ms"


# -- outlier ejection


@pytest.mark.parametrize("ejection", [
    "",
    'ejection_time = "20s"',
])
def test_outlier_ejection_stops_traffic_to_the_failing_server(capfd, ejection):
    with Origins(3, {2: 500}) as o, InProcessProxy(servers_config(
            [entry(u, "max_fails = 0") for u in o.urls],
            FINE_CLOCK + '\nfail_on = ["error", "timeout", "http_500"]\n'
            '[upstreams.outlier_detection]\ninterval = "200ms"\nmin_requests = 5\n'
            + ejection)) as p:
        def quiet():
            before = o.switches[2].hits
            get_all(p.port, 30)
            return o.switches[2].hits == before
        assert wait_until(quiet, 5.0)
        assert {r.status for r in get_all(p.port, 30)} == {200}
        err = capfd.readouterr().err
        assert '"server_ejected"' in err and o.urls[2] in err


# -- backup servers and fallbacks


def test_backup_takes_over_only_when_no_primary_is_available():
    with Origins(3) as o, InProcessProxy(servers_config(
            [entry(o.urls[0], 'fail_timeout = "300ms"'), entry(o.urls[1], 'fail_timeout = "300ms"'),
             entry(o.urls[2], "backup = true")], FINE_CLOCK)) as p:
        assert set(bodies(p.port, 10)) == {b"a", b"b"}
        o.switches[0].fault = "reset"
        assert set(bodies(p.port, 10)) == {b"b"}
        # Both primaries fail: within the same request the backup answers.
        o.switches[1].fault = "reset"
        assert set(bodies(p.port, 10)) == {b"c"}
        # They recover: after fail_timeout the backup is idle again.
        o.switches[0].fault = o.switches[1].fault = None
        with Conn(p.port) as c:
            assert wait_until(lambda: c.request("GET", "/").body != b"c", 3.0)
        time.sleep(0.4)
        assert set(bodies(p.port, 10)) == {b"a", b"b"}


FALLBACK = """
[upstreams.fallback]
status = 200
body = '{"degraded": true}'
headers = {X-Fallback = "static"}
"""


def test_static_fallback_when_every_server_is_down():
    with InProcessProxy(servers_config(
            [entry(f"http://127.0.0.1:{closed_port()}", "down = true")], FALLBACK)) as p:
        for r in get_all(p.port, 3):
            assert (r.status, r.body) == (200, b'{"degraded": true}')
            assert r.header(b"x-fallback") == b"static"
            assert r.header(b"content-type") == b"application/json"


def test_static_fallback_once_failing_servers_are_marked_down():
    with InProcessProxy(servers_config(
            [f'"http://127.0.0.1:{closed_port()}"', f'"http://127.0.0.1:{closed_port()}"'],
            FALLBACK)) as p:
        rs = get_all(p.port, 5)
        assert [r.status for r in rs[1:]] == [200] * 4
        assert all(r.header(b"x-fallback") == b"static" for r in rs[1:])


def test_fallback_answers_the_request_that_found_every_server_failing():
    with InProcessProxy(servers_config(
            [f'"http://127.0.0.1:{closed_port()}"', f'"http://127.0.0.1:{closed_port()}"'],
            FALLBACK)) as p:
        r = get_all(p.port, 1)[0]
        assert (r.status, r.header(b"x-fallback")) == (200, b"static")


def test_fallback_upstream_takes_the_request():
    spare = Switch(b"spare")
    with Origin(spare) as so, InProcessProxy(servers_config(
            [entry(f"http://127.0.0.1:{closed_port()}", "down = true")],
            '[upstreams.fallback]\nupstream = "spare"',
            f'[[upstreams]]\nname = "spare"\nservers = ["{so.url}"]\n')) as p:
        with Conn(p.port) as c:
            r = c.request("GET", "/x?y=1")
        assert (r.status, r.body) == (200, b"spare")
        assert spare.hits == 1


def test_503_with_retry_after_when_nothing_is_available():
    with InProcessProxy(servers_config(
            [entry(f"http://127.0.0.1:{closed_port()}", 'fail_timeout = "5s"'),
             entry(f"http://127.0.0.1:{closed_port()}", 'fail_timeout = "5s"')])) as p:
        with Conn(p.port) as c:
            assert_error(c.request("GET", "/"), 502, "bad_gateway")  # both tried and failed
            r = c.request("GET", "/")
        assert_error(r, 503, "upstream_unavailable")
        assert 1 <= int(r.header(b"retry-after")) <= 5


def test_timeout_is_retried_on_the_next_server():
    with Origins(2, {0: "hang"}) as o, InProcessProxy(servers_config(
            [f'"{u}"' for u in o.urls], 'read_timeout = "300ms"')) as p:
        with Conn(p.port) as c:
            r = c.request("GET", "/")
        assert (r.status, r.body) == (200, b"b")
        assert o.hits() == [1, 1]


# -- reloads


HEALTH_CHECK = ('\n[upstreams.health_check]\npath = "/health"\ninterval = "100ms"\n'
                'unhealthy_threshold = 1\nhealthy_threshold = 1')


def test_reload_keeps_a_failed_servers_state():
    with Origins(2, {1: "reset"}) as o:
        servers = [entry(u, 'fail_timeout = "30s"') for u in o.urls]
        with InProcessProxy(servers_config(servers)) as p:
            assert set(bodies(p.port, 4)) == {b"a"}
            assert o.switches[1].hits == 1
            o.switches[1].fault = None
            # An unrelated change: the upstream's config is the same, so is b's state.
            p.swap(servers_config(servers, extra='[[routes]]\nname = "other"\npaths = ["/other"]\n'
                                         'upstream = "app"'))
            assert set(bodies(p.port, 4)) == {b"a"}
            assert o.switches[1].hits == 1


def test_reload_without_health_checks_brings_unhealthy_servers_back(capfd):
    with Origins(2, {1: "unhealthy"}) as o:
        urls = [f'"{u}"' for u in o.urls]
        with InProcessProxy(servers_config(urls, FINE_CLOCK + HEALTH_CHECK)) as p:
            err = []
            assert wait_until(lambda: '"server_unhealthy"' in stderr_of(capfd, err), 3.0)
            p.swap(servers_config(urls, FINE_CLOCK))  # no more active checks
            assert set(bodies(p.port, 4)) == {b"a", b"b"}
