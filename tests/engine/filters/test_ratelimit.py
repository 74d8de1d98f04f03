"""The rate-limit filter with store = "memory", driven with a controlled clock: exact counts,
several limits, fallbacks, quotas by tier across UTC calendar boundaries, adaptive limits,
connection limits, headers, reloads."""

import asyncio
import inspect

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from engine.chain.context import RequestContext
from engine.control.config import parse
from engine.chain.schema import ConfigError
from engine.control.snapshot import Runtime
from engine.errors import Response


def Ctx(ip="10.0.0.1", headers=(), query=b""):
    """A request context with the fields the filter reads (as the codec would set them)."""
    ctx = RequestContext.__new__(RequestContext)
    ctx.client_ip = ip
    ctx.headers = list(headers)
    ctx.query = query
    ctx.path = "/"
    ctx.request_id = b"rid"
    return ctx


def config(section: str) -> str:
    return f"""
[[upstreams]]
name = "app"
servers = ["http://127.0.0.1:9"]

[[routes]]
name = "api"
upstream = "app"
[routes.rate_limit]
{section}
"""


def limit(name="l", algorithm="fixed_window", **kw) -> str:
    body = "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in kw.items())
    return f'[[routes.rate_limit.limits]]\nname = "{name}"\nalgorithm = "{algorithm}"\n{body}'


def build(section: str, previous=None):
    rt = Runtime(parse(config(section)), previous)
    f = rt.routes[0].chain.filters[0]
    clock = {"now": 1000.0}
    f.clock = lambda: clock["now"]
    return f, clock, rt


def ask(f, ctx=None):
    """(status, headers dict) of one request through the filter (200 when it goes on)."""
    ctx = ctx or Ctx()
    answer = f.on_request(ctx)
    if inspect.iscoroutine(answer):
        answer = asyncio.run(answer)
    resp = answer if answer is not None else Response(200, [], None)
    f.on_response(ctx, resp)
    return resp.status, {n.decode().lower(): v.decode() for n, v in resp.headers}, resp


ALGOS = [
    ("fixed_window", {"limit": 5, "window": 10}, 5),
    ("sliding_log", {"limit": 5, "window": 10}, 5),
    ("sliding_counter", {"limit": 5, "window": 10}, 5),
    ("token_bucket", {"rate": 0.5, "burst": 5}, 5),
    ("leaky_bucket", {"rate": 0.5, "burst": 4, "nodelay": True}, 5),
]


@pytest.mark.parametrize("algorithm, params, admitted", ALGOS, ids=[a[0] for a in ALGOS])
def test_each_algorithm_admits_exactly_its_limit_at_one_instant(algorithm, params, admitted):
    f, clock, _ = build(limit(algorithm=algorithm, **params))
    statuses = [ask(f)[0] for _ in range(admitted + 3)]
    assert statuses == [200] * admitted + [429] * 3
    status, h, resp = ask(f)
    body = orjson.loads(resp.body)["error"]
    assert body["code"] == "rate_limited" and body["request_id"] == "rid"
    assert int(h["retry-after"]) >= 1
    assert h["x-ratelimit-remaining"] == "0"
    clock["now"] += 20.0  # long enough for every algorithm to recover
    assert ask(f)[0] == 200


def _general(f):
    """The same filter answering through its general hooks instead of SingleLimit's."""
    f.on_request, f.on_response = f._check, f._headers
    return f


def test_a_single_memory_limit_gets_the_compiled_hooks_and_others_the_general_ones():
    from engine.filters.ratelimit_hooks import SingleLimit

    f, _, _ = build(limit(limit=3, window=60))
    assert isinstance(f.single, SingleLimit) and f.on_request == f.single.on_request
    f, _, _ = build(limit("a", limit=3, window=60) + limit("b", limit=9, window=60))
    assert f.single is None and f.on_request == f._check


@pytest.mark.parametrize("algorithm, params, admitted", ALGOS, ids=[a[0] for a in ALGOS])
@settings(max_examples=25, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.sampled_from(
    ["10.0.0.1", "10.0.0.2", None])), min_size=1, max_size=30),
       classic=st.booleans(), ietf=st.booleans())
def test_compiled_and_general_hooks_answer_alike(algorithm, params, admitted, steps, classic,
                                                 ietf):
    # Differential: SingleLimit against the general hooks, same config, same clock, same
    # requests (None: a request whose key part, a header, is missing: refused by fallback).
    section = limit(algorithm=algorithm, key=["header:x-user"], fallback="reject", **params)
    section = (f"ratelimit_headers = {str(ietf).lower()}\n"
               f"x_ratelimit_headers = {str(classic).lower()}\n" + section)
    compiled, c1, _ = build(section)
    general, c2, _ = build(section)
    _general(general)
    assert compiled.single is not None
    for dt, user in steps:
        c1["now"] += dt
        c2["now"] += dt
        headers = [] if user is None else [(b"X-User", user.encode())]
        ctx = Ctx(headers=headers)
        s1, h1, r1 = ask(compiled, ctx)
        s2, h2, r2 = ask(general, Ctx(headers=headers))
        assert (s1, h1) == (s2, h2)
        assert (r1.body or b"") == (r2.body or b"")
        if s1 == 200:
            # An upstream's head edited as its lines (what the chain calls when every
            # response hook can) gets the same fields after the upstream's own.
            lines = compiled.single.on_response_raw(ctx, b"Server: origin\r\n")
            assert lines == b"".join(n + b": " + v + b"\r\n"
                                     for n, v in [(b"Server", b"origin"), *r1.headers])


def test_fixed_window_counts_and_headers_with_a_controlled_clock():
    f, clock, _ = build(limit(limit=3, window=60))
    clock["now"] = 6000.0 + 15.0  # 15 s into an aligned minute
    _, h, _ = ask(f)
    assert h["ratelimit-policy"] == 'l;q=3;w=60'
    assert h["ratelimit"] == 'l;r=2;t=45'
    assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"], h["x-ratelimit-reset"]) == (
        "3", "2", "45")
    ask(f), ask(f)
    status, h, _ = ask(f)
    assert status == 429 and h["retry-after"] == "45" and h["ratelimit"] == 'l;r=0;t=45'
    clock["now"] = 6060.0  # the next window
    assert ask(f)[0] == 200


def test_local_route_answers_synchronously_and_delay_makes_a_coroutine():
    f, _, _ = build(limit(algorithm="leaky_bucket", rate=1000, burst=5))
    assert f.on_request(Ctx()) is None  # first request: no wait, no coroutine
    delayed = f.on_request(Ctx())
    assert inspect.iscoroutine(delayed)
    assert asyncio.run(delayed) is None  # waited 1 ms, then goes on


def test_several_limits_report_the_closest_and_a_refusal_costs_the_others_nothing():
    section = limit("wide", limit=100, window=60) + limit("narrow", limit=2, window=1)
    f, clock, _ = build(section)
    _, h, _ = ask(f)
    assert h["ratelimit-policy"] == 'wide;q=100;w=60, narrow;q=2;w=1'
    assert h["ratelimit"].startswith('narrow;r=1')
    assert h["x-ratelimit-limit"] == "2"
    ask(f)
    status, h, _ = ask(f)  # narrow refuses; wide must not count it
    assert status == 429 and h["ratelimit"].startswith('narrow;r=0')
    clock["now"] += 1.0
    _, h, _ = ask(f)
    wide = f.limits[0].table.peek("10.0.0.1", clock["now"])[0]
    assert wide == 97  # three admitted, the refused one not counted


@pytest.mark.parametrize("fallback, statuses", [
    ("ip", [200, 200, 429]),          # keyless requests counted per client ip
    ("shared", [200, 200, 429]),      # one bucket for every keyless request
    ("skip", [200, 200, 200]),        # not limited
    ("reject", [429, 429, 429]),
])
def test_fallback_for_requests_without_the_key(fallback, statuses):
    f, _, _ = build(limit(limit=2, window=60, key=["header:X-API-Key"], fallback=fallback))
    got = [ask(f, Ctx(ip=f"10.0.0.{1 if fallback != 'shared' else i}"))[0]
           for i in range(3)]
    assert got == statuses
    # a keyed client has its own count
    assert ask(f, Ctx(headers=[(b"X-API-Key", b"k1")]))[0] == 200


def test_key_from_query_and_combination():
    f, _, _ = build(limit(limit=1, window=60, key=["query:user", "ip"]))
    assert ask(f, Ctx(query=b"?user=a"))[0] == 200
    assert ask(f, Ctx(query=b"?user=a"))[0] == 429
    assert ask(f, Ctx(query=b"?user=b"))[0] == 200
    assert ask(f, Ctx(query=b"?user=a", ip="10.0.0.2"))[0] == 200


QUOTA = """
[routes.rate_limit.quota]
key = ["header:X-API-Key"]
[[routes.rate_limit.quota.tiers]]
name = "free"
daily = 2
monthly = 3
[[routes.rate_limit.quota.tiers]]
name = "pro"
daily = 5
monthly = 100
keys = ["k-pro"]
"""

FEB_28_2023_2359 = 1677628740.0  # 2023-02-28 23:59:00 UTC


def test_quota_tiers_reset_at_utc_day_and_month_boundaries():
    f, clock, _ = build(QUOTA)
    clock["now"] = FEB_28_2023_2359
    free = [(b"X-API-Key", b"k-free")]
    _, h, _ = ask(f, Ctx(headers=free))
    assert (h["x-quota-limit-day"], h["x-quota-remaining-day"], h["x-quota-reset-day"]) == (
        "2", "1", "60")
    assert h["x-quota-limit-month"] == "3" and h["x-quota-reset-month"] == "60"
    assert 'daily;q=2;w=86400, monthly;q=3' in h["ratelimit-policy"]
    assert ask(f, Ctx(headers=free))[0] == 200
    status, h, resp = ask(f, Ctx(headers=free))
    assert status == 429 and orjson.loads(resp.body)["error"]["code"] == "quota_exceeded"
    assert h["retry-after"] == "60" and h["x-quota-remaining-day"] == "0"
    clock["now"] += 60.0  # March 1st: a new day and a new month
    assert [ask(f, Ctx(headers=free))[0] for _ in range(3)] == [200, 200, 429]
    clock["now"] += 86400.0  # March 2nd: the day resets, the month (3 a month) does not...
    assert ask(f, Ctx(headers=free))[0] == 200
    status, h, _ = ask(f, Ctx(headers=free))
    assert status == 429 and h["x-quota-remaining-month"] == "0"
    assert int(h["retry-after"]) == 30 * 86400 - 60 + 60 - 86400 + 86400  # to April 1st
    # the pro tier has its own caps; keyless requests are refused (fallback "reject")
    pro = [(b"X-API-Key", b"k-pro")]
    assert [ask(f, Ctx(headers=pro))[0] for _ in range(6)] == [200] * 5 + [429]
    assert ask(f)[0] == 429


def test_quota_tier_from_a_header_part_and_default():
    section = QUOTA.replace('key = ["header:X-API-Key"]',
                            'key = ["header:X-API-Key"]\ntier = "header:X-Plan"')
    f, _, _ = build(section)
    plan = [(b"X-API-Key", b"a"), (b"X-Plan", b"pro")]
    assert [ask(f, Ctx(headers=plan))[0] for _ in range(6)] == [200] * 5 + [429]
    other = [(b"X-API-Key", b"b"), (b"X-Plan", b"gold")]  # unknown: the default (first) tier
    assert [ask(f, Ctx(headers=other))[0] for _ in range(3)] == [200, 200, 429]


def test_adaptive_divides_every_limit_and_says_so_in_the_headers():
    section = limit(limit=10, window=60) + '[routes.rate_limit.adaptive]\nlag = "100ms"\n'
    f, clock, _ = build(section)
    f.monitor.observe(0.5, 0, clock["now"])  # overloaded: limits halved
    assert [ask(f)[0] for _ in range(3)] == [200] * 3
    _, h, _ = ask(f)
    assert h["ratelimit-policy"] == 'l;q=5;w=60' and h["x-ratelimit-limit"] == "5"
    assert h["x-ratelimit-remaining"] == "1"  # 4 of 5 taken (8 of 10 units)
    f.monitor.level, f.monitor.divisor = 0, 1  # recovered: the full limit counts again
    status, h, _ = ask(f)
    assert status == 200 and h["ratelimit-policy"] == 'l;q=10;w=60'
    assert h["x-ratelimit-remaining"] == "1"  # 10 - 4 requests x 2 - 1
    assert [ask(f)[0] for _ in range(2)] == [200, 429]


def test_connection_limit_counts_requests_in_flight():
    f, _, _ = build("[routes.rate_limit.connections]\nmax = 2\n")
    a, b, c = Ctx(), Ctx(), Ctx()
    assert f.on_request(a) is None and f.on_request(b) is None
    refused = f.on_request(c)
    assert refused.status == 429
    assert orjson.loads(refused.body)["error"]["code"] == "too_many_connections"
    assert f.on_request(Ctx(ip="10.0.0.9")) is None  # another key
    f.on_log(a)  # a ended: the runner calls every filter's on_log
    f.on_log(c)  # (refused: it held no slot)
    assert f.on_request(Ctx()) is None
    assert len(f.slots) == 2


def test_headers_are_switchable():
    f, _, _ = build('ratelimit_headers = false\nx_ratelimit_headers = false\n'
                    + limit(limit=5, window=60))
    _, h, _ = ask(f)
    assert not [n for n in h if "ratelimit" in n]


def test_reload_with_the_same_limit_keeps_counts():
    section = limit(limit=3, window=60)
    f, clock, rt = build(section)
    ask(f), ask(f)
    f2, _, rt2 = build(section, rt)
    f2.clock = f.clock
    assert f2.limits[0].table is f.limits[0].table
    assert [ask(f2)[0] for _ in range(2)] == [200, 429]
    f3, _, _ = build(limit(limit=4, window=60), rt2)  # a changed limit starts afresh
    assert f3.limits[0].table is not f.limits[0].table


@pytest.mark.parametrize("section, message", [
    (limit(algorithm="fixed_window"), "needs limit >= 1"),
    (limit(algorithm="token_bucket", burst=2), "needs rate > 0"),
    (limit(algorithm="token_bucket", rate=1), "needs burst >= 1"),
    (limit("a", limit=1) + limit("a", limit=1), "duplicate limit name"),
    (limit("x\\\\y", limit=1), "without quotes"),
    (limit(limit=1, key=["nope"]), "is not a key part"),
    ('store = "redis"\n' + limit(limit=1), 'no [redis] table'),
    ("[routes.rate_limit.adaptive]\nsteps = [4, 2]\n", "increasing divisors"),
    ("[routes.rate_limit.quota]\ntiers = []\n", "at least one tier"),
], ids=["window-limit", "rate", "burst", "dup", "name", "key", "redis", "steps", "tiers"])
def test_config_errors_name_the_key(section, message):
    with pytest.raises(ConfigError) as exc:
        parse(config(section))
    assert message in str(exc.value)
    assert "routes[0].rate_limit" in str(exc.value)
