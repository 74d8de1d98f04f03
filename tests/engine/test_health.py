"""Server health with a controlled clock: circuit breaker transitions, passive max_fails /
fail_timeout (nginx), the retry budget, the outlier evaluator and the active checker's
thresholds (engine/upstream/health.pyx, engine/upstream/checks.py).

Every transition is driven by the ``now`` passed in, never by sleeping. The checker's probe
and tick run against real origins on loopback.
"""

import asyncio
import types

import pytest

from engine.control.config import parse
from engine.upstream.checks import HealthChecker, OutlierEjector
from engine.upstream.health import CLOSED, HALF_OPEN, OPEN, Circuit, Health, RetryBudget
from engine.upstream.upstream import Upstream
from tests.support.origin import Origin, closed_port, ok

# -- Circuit


def fail(c, n, now):
    for _ in range(n):
        c.record(False, now, c.begin(now))


def succeed(c, n, now):
    for _ in range(n):
        c.record(True, now, c.begin(now))


def test_circuit_opens_after_consecutive_failures():
    c = Circuit(consecutive=3, rate=0.0, cooldown=5.0)
    fail(c, 2, 1.0)
    assert c.state == CLOSED and c.admits(1.0)
    fail(c, 1, 1.0)
    assert c.state == OPEN and c.state_name == "open"
    assert c.opened == 1 and c.opened_at == 1.0
    assert not c.admits(1.0)


def test_a_success_resets_the_consecutive_count():
    c = Circuit(consecutive=3, rate=0.0)
    for _ in range(10):
        fail(c, 2, 1.0)
        succeed(c, 1, 1.0)
    assert c.state == CLOSED and c.opened == 0


def test_consecutive_zero_is_off():
    c = Circuit(consecutive=0, rate=0.0)
    fail(c, 1000, 1.0)
    assert c.state == CLOSED


def test_circuit_opens_on_failure_rate_only_with_min_requests():
    c = Circuit(consecutive=0, rate=0.5, min_requests=10, window=10.0)
    for i in range(9):  # ok, fail, ok, ...: 4 of 9 failed, and too few requests anyway
        c.record(i % 2 == 0, 1.0, c.begin(1.0))
    assert c.state == CLOSED
    fail(c, 1, 1.0)  # 10 requests, 5 failed: 50 %
    assert c.state == OPEN


def test_failure_rate_below_threshold_stays_closed():
    c = Circuit(consecutive=0, rate=0.5, min_requests=10, window=10.0)
    for _ in range(50):
        succeed(c, 3, 1.0)
        fail(c, 2, 1.0)  # 40 %
    assert c.state == CLOSED


def test_failure_rate_forgets_requests_older_than_the_window():
    c = Circuit(consecutive=0, rate=0.5, min_requests=10, window=10.0)
    fail(c, 9, 0.5)  # 9 failures, one short of min_requests
    # 20 s later those have left the window: 9 successes and 1 failure are 10 % failed.
    succeed(c, 9, 20.5)
    fail(c, 1, 20.5)
    assert c.state == CLOSED
    # Within the window they all count: 5 failures of 14, 6 of 15, 7 of 16, 8 of 17 ...
    fail(c, 7, 21.0)
    assert c.state == CLOSED
    fail(c, 1, 21.0)  # 9 of 18: 50 %
    assert c.state == OPEN


def test_open_circuit_goes_half_open_after_cooldown_and_closes_on_a_good_probe():
    c = Circuit(consecutive=1, rate=0.0, cooldown=5.0, probes=1)
    fail(c, 1, 10.0)
    assert not c.admits(14.9)
    assert c.retry_after(12.0) == pytest.approx(3.0)
    assert c.admits(15.0) and c.retry_after(15.0) == 0.0
    assert c.state == OPEN  # admits() has no side effect
    probe = c.begin(15.0)
    assert c.state == HALF_OPEN and c.state_name == "half_open"
    assert not c.admits(15.0)  # the one probe is out
    c.record(True, 15.1, probe)
    assert c.state == CLOSED and c.admits(15.1)
    # Closed afresh: the old failures do not count towards the next opening.
    c2 = Circuit(consecutive=2, rate=0.0, cooldown=5.0)
    fail(c2, 2, 0.0)
    c2.record(True, 5.0, c2.begin(5.0))
    fail(c2, 1, 5.0)
    assert c2.state == CLOSED


def test_half_open_failure_reopens_for_another_cooldown():
    c = Circuit(consecutive=1, rate=0.0, cooldown=5.0)
    fail(c, 1, 0.0)
    c.record(False, 6.0, c.begin(6.0))
    assert c.state == OPEN and c.opened == 2 and c.opened_at == 6.0
    assert not c.admits(10.9) and c.admits(11.0)


def test_half_open_needs_every_probe_to_succeed():
    c = Circuit(consecutive=1, rate=0.0, cooldown=1.0, probes=3)
    fail(c, 1, 0.0)
    probes = []
    for _ in range(3):
        assert c.admits(1.0)
        probes.append(c.begin(1.0))
    assert c.state == HALF_OPEN and not c.admits(1.0)
    c.record(True, 1.0, probes[0])
    c.record(True, 1.0, probes[1])
    assert c.state == HALF_OPEN
    c.record(True, 1.0, probes[2])
    assert c.state == CLOSED


def test_cancelled_probe_frees_its_slot():
    c = Circuit(consecutive=1, rate=0.0, cooldown=1.0, probes=1)
    fail(c, 1, 0.0)
    probe = c.begin(1.0)
    assert not c.admits(1.0)
    c.cancel(probe)  # the client went away: no verdict
    assert c.state == HALF_OPEN and c.admits(1.0)
    c.cancel(probe)  # nothing out: no negative count
    c.begin(1.0)
    assert not c.admits(1.0)


def test_only_the_current_spell_s_probes_count_in_half_open():
    c = Circuit(consecutive=1, rate=0.0, cooldown=1.0, probes=1)
    old = c.begin(0.0)  # sent while closed (token 0)
    fail(c, 1, 0.0)  # opens
    probe = c.begin(1.0)
    c.record(True, 1.5, old)  # the old request's success is not the probe's
    c.cancel(old)  # nor does it free the probe's slot
    assert c.state == HALF_OPEN and not c.admits(1.5)
    c.record(False, 2.0, probe)  # the probe fails: open again, a new spell
    late = probe
    probe = c.begin(3.0)
    assert probe != late
    c.record(True, 3.0, late)  # the previous spell's probe reports late: ignored
    assert c.state == HALF_OPEN
    c.record(True, 3.0, probe)
    assert c.state == CLOSED


def test_outcome_of_a_request_admitted_before_opening_is_ignored():
    c = Circuit(consecutive=2, rate=0.0, cooldown=5.0)
    token = c.begin(0.0)  # in flight while the circuit opens
    fail(c, 2, 0.0)
    c.record(True, 1.0, token)
    assert c.state == OPEN and c.opened_at == 0.0


# -- Health (passive, nginx max_fails / fail_timeout)


def test_max_fails_within_fail_timeout_takes_the_server_out_for_fail_timeout():
    h = Health(max_fails=2, fail_timeout=10.0)
    h.record(False, 100.0)
    assert h.available(100.0)
    h.record(False, 105.0)
    assert not h.available(105.0) and not h.available(114.9)
    assert h.available_in(110.0) == pytest.approx(5.0)
    assert h.available(115.0) and h.available_in(115.0) == 0.0


def test_failures_further_apart_than_fail_timeout_do_not_add_up():
    h = Health(max_fails=2, fail_timeout=10.0)
    for t in (0.0, 11.0, 22.0, 33.0):
        h.record(False, t)
        assert h.available(t)
    assert h.total_failures == 4 and h.total_requests == 4


def test_a_success_resets_the_failure_count():
    h = Health(max_fails=2, fail_timeout=10.0)
    for t in range(10):
        h.record(False, float(t))
        h.record(True, t + 0.5)
    assert h.available(10.0)
    assert (h.requests, h.failures) == (20, 10)


def test_max_fails_zero_never_marks_down():
    h = Health(max_fails=0, fail_timeout=10.0)
    for _ in range(100):
        h.record(False, 1.0)
    assert h.available(1.0) and h.available_in(1.0) == 0.0


def test_unhealthy_and_ejected_servers_are_unavailable():
    h = Health()
    h.healthy = False
    assert not h.available(0.0) and h.available_in(0.0) >= 1.0
    assert h.state == "unhealthy"
    h.healthy = True
    h.ejected_until = 30.0
    assert not h.available(29.9) and h.available(30.0)
    assert h.available_in(20.0) == pytest.approx(10.0)


def test_server_circuit_makes_it_unavailable():
    h = Health(max_fails=0, circuit=Circuit(consecutive=2, rate=0.0, cooldown=3.0))
    for _ in range(2):
        h.record(False, 1.0, h.begin(1.0))
    assert not h.available(1.0)
    assert h.available_in(1.0) == pytest.approx(3.0)
    assert h.available(4.0)
    probe = h.begin(4.0)
    assert probe and not h.available(4.0)
    h.cancel(probe)
    assert h.available(4.0)


# -- RetryBudget


def test_retry_budget_min_retries_with_no_ratio():
    b = RetryBudget(0.0, 3, 10.0)
    for _ in range(100):
        b.request(1.0)
    assert [b.allow(1.0) for _ in range(5)] == [True, True, True, False, False]


def test_retry_budget_ratio_of_requests():
    b = RetryBudget(0.2, 0, 10.0)
    for _ in range(100):
        b.request(1.0)
    allowed = sum(b.allow(1.0) for _ in range(50))
    assert allowed == 20
    for _ in range(10):
        b.request(1.0)
    assert sum(b.allow(1.0) for _ in range(50)) == 2  # 22 of 110


def test_retry_budget_counts_the_previous_window_then_forgets_it():
    b = RetryBudget(0.1, 0, 10.0)
    for _ in range(100):
        b.request(5.0)
    assert sum(b.allow(5.0) for _ in range(20)) == 10
    # The next window still sees the last one's 100 requests and 10 retries.
    assert not b.allow(15.0)
    for _ in range(10):
        b.request(15.0)
    assert sum(b.allow(15.0) for _ in range(20)) == 1  # 11 of 110
    # Two windows on, both are gone.
    assert not b.allow(35.0)
    b2 = RetryBudget(0.1, 2, 10.0)
    for _ in range(100):
        b2.request(0.0)
    assert sum(b2.allow(0.0) for _ in range(20)) == 10
    assert sum(b2.allow(40.0) for _ in range(20)) == 2  # only the minimum is left


# -- OutlierEjector


def upstream(n: int, section: str = "", server_extra: str = "") -> Upstream:
    servers = ", ".join(f'{{url = "http://127.0.0.1:{9000 + i}"{server_extra}}}'
                        for i in range(n))
    cfg = parse(f"""
[[upstreams]]
name = "app"
servers = [{servers}]
{section}

[[routes]]
name = "all"
upstream = "app"
""").upstreams[0]
    return Upstream(cfg, {}, {})


def ejector(n, **cfg):
    lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in cfg.items())
    up = upstream(n, "[upstreams.outlier_detection]\n" + lines)
    e = OutlierEjector(up.key.outlier_detection)
    e.bind(up)
    return up, e


def counts(up, *pairs):
    for s, (requests, failures) in zip(up.servers, pairs, strict=True):
        s.health.requests = requests
        s.health.failures = failures


def test_outlier_far_above_its_peers_is_ejected():
    up, e = ejector(3, min_requests=10, factor=3.0, min_error_rate=0.2)
    counts(up, (100, 1), (100, 2), (100, 50))
    assert e.evaluate(100.0) == [up.servers[2].url]
    assert up.servers[2].health.ejected_until == 130.0
    assert not up.servers[2].available(129.9) and up.servers[2].available(130.0)
    assert up.servers[0].available(100.0) and up.servers[1].available(100.0)
    # The counters start over for the next interval.
    assert all((s.health.requests, s.health.failures) == (0, 0) for s in up.servers)


def test_outlier_rules_factor_min_error_rate_and_min_requests():
    up, e = ejector(3, min_requests=10, factor=3.0, min_error_rate=0.2)
    counts(up, (100, 10), (100, 10), (100, 25))  # 25 % is not above 3 x 10 %
    assert e.evaluate(1.0) == []
    counts(up, (100, 0), (100, 0), (100, 15))  # far above, but under min_error_rate
    assert e.evaluate(2.0) == []
    counts(up, (100, 0), (100, 0), (9, 9))  # too few requests to judge
    assert e.evaluate(3.0) == []
    counts(up, (100, 90), (5, 0), (5, 5))  # one judged server only: nobody to compare to
    assert e.evaluate(4.0) == []
    counts(up, (100, 0), (100, 0), (10, 9))
    assert e.evaluate(5.0) == [up.servers[2].url]


def test_max_ejected_caps_the_servers_out_at_once():
    up, e = ejector(4, min_requests=10, factor=2.0, min_error_rate=0.2, max_ejected=0.25)
    counts(up, (100, 0), (100, 0), (100, 60), (100, 90))
    assert e.evaluate(0.0) == [up.servers[3].url]  # the worst one, and only one
    # Still ejected: no room for another while it is out.
    counts(up, (100, 0), (100, 0), (100, 60), (0, 0))
    assert e.evaluate(5.0) == []
    # Back after ejection_time: the other one may go now.
    counts(up, (100, 0), (100, 0), (100, 60), (100, 0))
    assert e.evaluate(30.0) == [up.servers[2].url]


def test_configured_ejection_time_is_logged_and_every_outlier_is_ejected(capfd):
    up, e = ejector(4, min_requests=10, factor=2.0, min_error_rate=0.2, max_ejected=0.5,
                    ejection_time="10s")
    counts(up, (100, 0), (100, 0), (100, 60), (100, 90))
    assert e.evaluate(0.0) == [up.servers[3].url, up.servers[2].url]
    assert up.servers[2].health.ejected_until == 10.0
    assert '"seconds":10.0' in capfd.readouterr().err


def test_at_least_one_server_may_be_ejected():
    up, e = ejector(2, min_requests=10, factor=2.0, min_error_rate=0.2, max_ejected=0.0)
    counts(up, (100, 0), (100, 80))
    assert e.evaluate(0.0) == [up.servers[1].url]


def test_outlier_tick_evaluates_each_interval():
    up, e = ejector(3, interval="1s", min_requests=10)
    worker = types.SimpleNamespace()
    e.tick(worker, 0.0)  # the first tick only schedules
    counts(up, (100, 0), (100, 0), (100, 90))
    e.tick(worker, 0.5)
    assert up.servers[2].available(0.5)
    e.tick(worker, 1.0)
    assert not up.servers[2].available(1.0)


# -- HealthChecker


def checker(n=2, **cfg):
    lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in cfg.items())
    up = upstream(n, "[upstreams.health_check]\n" + lines)
    c = HealthChecker(up.key.health_check)
    c.bind(up)
    return up, c


def test_checker_thresholds(capfd):
    up, c = checker(unhealthy_threshold=3, healthy_threshold=2)
    s = up.servers[0]
    for ok_ in (False, False, True, False, False):  # never three failures in a row
        c.result(s, ok_, "status 500")
    assert s.health.healthy
    c.result(s, False, "status 500")
    assert not s.health.healthy and not s.available(0.0)
    assert up.servers[1].health.healthy
    c.result(s, True, "status 200")
    c.result(s, False, "status 500")
    c.result(s, True, "status 200")
    assert not s.health.healthy
    c.result(s, True, "status 200")
    assert s.health.healthy and s.available(0.0)
    err = capfd.readouterr().err
    assert err.count('"event":"server_unhealthy"') == 1
    assert err.count('"event":"server_healthy"') == 1
    assert '"detail":"status 500"' in err and s.url in err


def test_probe_against_real_origins():
    statuses = {b"/h": 200}

    def handler(req):
        return ok(b"", statuses.get(req.url, 500))

    async def probe(c, server):
        return await c.probe(server)

    with Origin(handler) as good, Origin(lambda req: (b"", "hang")) as hung:
        cfg = parse(f"""
[[upstreams]]
name = "app"
servers = ["{good.url}", "http://127.0.0.1:{closed_port()}", "{hung.url}"]
[upstreams.health_check]
path = "/h"
timeout = "200ms"
statuses = [200, 204]

[[routes]]
name = "all"
upstream = "app"
""").upstreams[0]
        up = Upstream(cfg, {}, {})
        c = HealthChecker(cfg.health_check)
        c.bind(up)
        assert asyncio.run(probe(c, up.servers[0])) == (True, "status 200")
        statuses[b"/h"] = 503
        assert asyncio.run(probe(c, up.servers[0])) == (False, "status 503")
        ok_, detail = asyncio.run(probe(c, up.servers[1]))
        assert not ok_ and "ConnectionRefusedError" in detail
        ok_, detail = asyncio.run(probe(c, up.servers[2]))
        assert not ok_ and detail.startswith("TimeoutError")
        req = good.requests[-1]
        assert req.method == b"GET" and req.url == b"/h"
        assert req.header(b"user-agent") == b"edgeproxy-health-check"


def test_checker_tick_checks_each_server_once_per_interval(capfd):
    seen = []

    def handler(req):
        seen.append(req.url)
        return ok(b"", 500)

    async def run(c, up):
        loop = asyncio.get_running_loop()
        worker = types.SimpleNamespace(loop=loop, spawn=loop.create_task)
        c.tick(worker, 0.0)
        c.tick(worker, 0.05)  # running or not due: nothing more
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not c.running:
                break
        c.tick(worker, 0.5)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not c.running:
                break
        c.tick(worker, 1.0)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not c.running:
                break

    with Origin(handler) as o:
        cfg = parse(f"""
[[upstreams]]
name = "app"
servers = ["{o.url}", {{url = "http://127.0.0.1:1", down = true}}]
[upstreams.health_check]
interval = "1s"
unhealthy_threshold = 2

[[routes]]
name = "all"
upstream = "app"
""").upstreams[0]
        up = Upstream(cfg, {}, {})
        c = HealthChecker(cfg.health_check)
        c.bind(up)
        asyncio.run(run(c, up))
        assert len(seen) == 2  # at 0.0 and 1.0; the down server never
        assert not up.servers[0].health.healthy
        assert "server_unhealthy" in capfd.readouterr().err
