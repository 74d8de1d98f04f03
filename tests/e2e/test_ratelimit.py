"""The rate-limit filter through the real proxy: 429 JSON with Retry-After and the RateLimit
headers, connection limits against a slow origin, adaptive limits, Redis-backed limits shared
by two edgeproxy processes, and Redis dying and coming back under both store-error policies."""

import asyncio
import time

from engine.control.metrics import worker_snapshot
from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config, wait_until
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

TWO_LIMITS = """
[routes.rate_limit]
[[routes.rate_limit.limits]]
name = "per-minute"
algorithm = "sliding_log"
limit = 10
window = "1m"
[[routes.rate_limit.limits]]
name = "per-second"
algorithm = "fixed_window"
limit = 3
window = "1h"
"""


def redis_table(url: str, **kw) -> str:
    kw = {"timeout": '"200ms"', **kw}
    extra = "".join(f"{k} = {v}\n" for k, v in kw.items())
    return f'\n[redis]\nurl = "{url}"\n{extra}'


def test_429_json_retry_after_and_headers_closest_to_exhaustion():
    with Origin() as origin, InProcessProxy(proxy_config(origin.url, extra=TWO_LIMITS)) as p, \
            Conn(p.port) as c:
        r = c.request("GET", "/a")
        assert r.status == 200
        assert r.header(b"ratelimit-policy") == (
            b'per-minute;q=10;w=60, per-second;q=3;w=3600')
        assert r.header(b"ratelimit").startswith(b'per-second;r=2;t=')
        assert r.header(b"x-ratelimit-limit") == b"3"
        assert r.header(b"x-ratelimit-remaining") == b"2"
        c.request("GET", "/a"), c.request("GET", "/a")
        r = c.request("GET", "/a")
        err = assert_error(r, 429, "rate_limited")
        assert err["message"]
        retry = int(r.header(b"retry-after"))
        assert 1 <= retry <= 3600
        assert r.header(b"ratelimit") == b'per-second;r=0;t=%d' % retry
        assert r.header(b"x-ratelimit-remaining") == b"0"
        assert len(origin.requests) == 3
        events = p.call(lambda: worker_snapshot(p.worker)["events"])
        assert ["ratelimit", "all", {"rate_limited": 1}] in events  # /metrics counts it


def test_connection_limit_with_a_slow_origin():
    extra = "[routes.rate_limit.connections]\nmax = 2\n"

    def slow(req):
        return ok(b"slow"), 0.5 if req.url == b"/slow" else 0

    with Origin(slow) as origin, InProcessProxy(proxy_config(origin.url, extra=extra)) as p:
        conns = [Conn(p.port) for _ in range(3)]
        try:
            for c in conns[:2]:
                c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            deadline = time.monotonic() + 5
            while len(origin.requests) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert_error(conns[2].request("GET", "/fast"), 429, "too_many_connections")
            assert [c.response().status for c in conns[:2]] == [200, 200]
            assert conns[2].request("GET", "/fast").status == 200  # slots released
        finally:
            for c in conns:
                c.sock.close()


def test_adaptive_limit_shrinks_under_load_and_recovers():
    extra = """
[routes.rate_limit]
[[routes.rate_limit.limits]]
name = "l"
algorithm = "fixed_window"
limit = 4
window = "1h"
[routes.rate_limit.adaptive]
lag = "100ms"
steps = [2]
recover_after = "1h"
"""
    with Origin() as origin, InProcessProxy(proxy_config(origin.url, extra=extra)) as p, \
            Conn(p.port) as c:
        monitor = p.runtime.routes[0].chain.filters[0].monitor
        # A sweep that comes 0.5 s late (the loop was blocked) is an overloaded sample.
        p.call(lambda: monitor.observe(0.5, 0, p.worker.now))
        assert c.request("GET", "/").header(b"ratelimit-policy") == b'l;q=2;w=3600'
        assert c.request("GET", "/").status == 200
        assert_error(c.request("GET", "/"), 429, "rate_limited")  # 2 x 2 units = 4 taken
        p.call(lambda: monitor.observe(0.0, 0, p.worker.now + 7200))  # calm, long enough
        p.call(lambda: monitor.observe(0.0, 0, p.worker.now + 14400))
        assert monitor.level == 0
        assert c.request("GET", "/").header(b"ratelimit-policy") == b'l;q=4;w=3600'


def test_redis_limit_in_process(redis_server):
    extra = TWO_LIMITS.replace("[routes.rate_limit]", '[routes.rate_limit]\nstore = "redis"')
    with Origin() as origin:
        cfg = proxy_config(origin.url, extra=extra) + redis_table(redis_server.url)
        with InProcessProxy(cfg) as p, Conn(p.port) as c:
            assert [c.request("GET", "/").status for _ in range(3)] == [200] * 3
            r = c.request("GET", "/")
            assert_error(r, 429, "rate_limited")
            assert r.header(b"ratelimit") == b'per-second;r=0;t=' + r.header(b"retry-after")
            keys = redis_server.command("KEYS", "edgeproxy:*")
            assert b"edgeproxy:{rl:all}:all:per-second:127.0.0.1" in keys


async def _get(port: int, n: int, statuses: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(n):
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            statuses.append(status)
    finally:
        writer.close()


def test_two_processes_share_one_redis_limit_exactly(tmp_path, redis_server):
    extra = """
[routes.rate_limit]
store = "redis"
[[routes.rate_limit.limits]]
name = "shared"
algorithm = "sliding_log"
limit = 100
window = "1m"
"""
    with Origin() as origin:
        cfg = proxy_config(origin.url, server="workers = 2", extra=extra) \
            + redis_table(redis_server.url, timeout='"2s"')
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with CliProxy(tmp_path / "a", cfg) as a, CliProxy(tmp_path / "b", cfg) as b:
            statuses: list = []

            async def load():
                # 1,000 requests on 100 connections, half to each process, all at once
                await asyncio.gather(*(_get(port, 10, statuses)
                                       for port in [a.port, b.port] * 50))

            asyncio.run(asyncio.wait_for(load(), 30))
            assert len(statuses) == 1000
            assert statuses.count(200) == 100
            assert statuses.count(429) == 900
            assert len(origin.requests) == 100


def test_redis_dies_and_comes_back(own_redis):
    section = """
[[routes]]
name = "{name}"
paths = ["/{name}/*"]
upstream = "app"
[routes.rate_limit]
store = "redis"
on_store_error = "{name}"
[[routes.rate_limit.limits]]
name = "l"
algorithm = "fixed_window"
limit = 2
window = "1h"
"""
    extra = section.format(name="allow") + section.format(name="deny") + redis_table(
        own_redis.url, breaker_failures=2, breaker_cooldown='"500ms"')
    with Origin() as origin, InProcessProxy(proxy_config(origin.url, paths='["/other"]',
                                                         extra=extra)) as p, \
            Conn(p.port) as c:
        assert [c.request("GET", "/allow/x").status for _ in range(3)] == [200, 200, 429]
        own_redis.stop()
        took = []
        for _ in range(6):
            for path, status in (("/allow/x", 200), ("/deny/x", 503)):
                t0 = time.monotonic()
                r = c.request("GET", path)
                took.append(time.monotonic() - t0)
                assert r.status == status, (path, r.status, r.body)
                if status == 503:
                    err = assert_error(r, 503, "store_unavailable")
                    assert "unavailable" in err["message"]
                    assert r.header(b"retry-after") == b"1"
        assert max(took) < 1.0  # nobody waits past the Redis timeout
        assert max(took[-4:]) < 0.1  # the breaker is open: no wait at all
        own_redis.start()
        deadline = time.monotonic() + 10
        statuses = []
        while time.monotonic() < deadline:  # the breaker probes again after its cool-down
            statuses = [c.request("GET", "/deny/x").status for _ in range(3)]
            if statuses[0] == 200:
                break
            time.sleep(0.1)
        assert statuses == [200, 200, 429]  # a fresh Redis: the limit counts from zero


def test_a_reload_that_changes_redis_closes_the_old_connection(redis_server):
    section = TWO_LIMITS.replace("[routes.rate_limit]", '[routes.rate_limit]\nstore = "redis"')
    with Origin() as origin:
        text = proxy_config(origin.url, extra=section + redis_table(redis_server.url))
        with InProcessProxy(text) as p, Conn(p.port) as c:
            assert c.request("GET", "/").status == 200
            old = p.worker.runtime.shared.redis
            assert p.call(lambda: old.connected)  # connected by that request
            p.swap(text.replace('timeout = "200ms"', 'timeout = "300ms"'))
            assert p.worker.runtime.shared.redis is not old
            assert wait_until(lambda: p.call(lambda: not old.connected), 2)
            assert c.request("GET", "/").status == 200  # the new store connects


def test_redis_connection_limit_cannot_be_shared_by_reusing_a_request_id(redis_server):
    # Slots are the proxy's own ids: copies of one client X-Request-ID still count apart.
    extra = ('[routes.rate_limit]\nstore = "redis"\n[routes.rate_limit.connections]\nmax = 2\n'
             + redis_table(redis_server.url))
    with Origin(lambda req: (ok(b"slow"), 0.5)) as origin, \
            InProcessProxy(proxy_config(origin.url, extra=extra)) as p:
        conns = [Conn(p.port) for _ in range(5)]
        try:
            for c in conns:
                c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Request-ID: same-id\r\n\r\n")
            statuses = sorted(c.response().status for c in conns)
        finally:
            for c in conns:
                c.sock.close()
    assert statuses == [200, 200, 429, 429, 429]


def test_redis_going_down_and_up_is_logged_and_shown_in_status_and_metrics(tmp_path, own_redis):
    """Under on_store_error = "allow" requests flow while Redis is down, so the operator must
    hear it: a warning when the breaker opens, a line when it closes, the state in /status
    and /metrics (issue 20)."""
    import orjson

    from tests.e2e.test_admin import families, value

    extra = TWO_LIMITS.replace("[routes.rate_limit]", '[routes.rate_limit]\nstore = "redis"')
    text = proxy_config("http://127.0.0.1:1", paths='["/none"]', extra=f"""
[[routes]]
name = "static"
paths = ["/s"]
[routes.static]
body = "ok"
{extra}""") + redis_table(own_redis.url, breaker_failures=2, breaker_cooldown='"3s"')

    def breaker(p):
        status = p.admin("GET", "/status")[1]
        metrics = families(p.admin("GET", "/metrics")[1])
        return (status["redis_breaker"], status["workers"][0]["redis_breaker"],
                value(metrics, "edgeproxy_redis_breaker_state"),
                value(metrics, "edgeproxy_redis_breaker_open_workers"))

    def lines(p, event):
        return [orjson.loads(ln) for ln in p.read_stderr().splitlines()
                if ln.startswith(b"{") and event.encode() in ln]

    with CliProxy(tmp_path, text) as p, Conn(p.port) as c:
        assert c.request("GET", "/s").status == 200
        assert wait_until(lambda: breaker(p) == ("closed", "closed", 0, 0))
        own_redis.stop()
        assert [c.request("GET", "/s").status for _ in range(4)] == [200] * 4  # allowed
        assert wait_until(lambda: lines(p, "redis_breaker_open"))
        opened = lines(p, "redis_breaker_open")
        assert len(opened) == 1 and opened[0]["level"] == "warning"
        assert opened[0]["redis"] == f"127.0.0.1:{own_redis.port}/0"
        assert "on_store_error" in opened[0]["effect"] and opened[0]["error"]
        assert wait_until(lambda: breaker(p) == ("open", "open", 1, 1))
        own_redis.start()
        assert wait_until(lambda: c.request("GET", "/s").status == 200
                          and lines(p, "redis_breaker_closed"), 10, 0.2)
        closed = lines(p, "redis_breaker_closed")
        assert len(closed) == 1 and closed[0]["down_seconds"] >= 2.5
        assert wait_until(lambda: breaker(p) == ("closed", "closed", 0, 0))
        assert len(lines(p, "redis_breaker_open")) == 1  # failed probes did not log again
