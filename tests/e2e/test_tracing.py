"""W3C Trace Context (traceparent, tracestate): a new span per hop, a new trace when asked."""

import re

import pytest

from tests.support.client import Conn
from tests.support.e2e import proxy_config
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = b"00f067aa0ba902b7"
VALID = b"00-" + TRACE + b"-" + PARENT + b"-01"
TRACEPARENT_RE = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@pytest.fixture(scope="module")
def origin():
    with Origin() as o:
        yield o


def upstream_sees(origin, port, headers):
    with Conn(port) as c:
        r = c.request("GET", "/t", headers=headers)
    assert r.status == 200
    req = origin.requests[-1]
    return req.header(b"traceparent"), req.header(b"tracestate")


@pytest.fixture(scope="module", params=["propagate", "always"])
def traced(request, origin):
    config = proxy_config(origin.url, server=f'tracing = "{request.param}"')
    with InProcessProxy(config) as p:
        yield request.param, p


def test_a_valid_traceparent_gets_a_new_span_and_keeps_trace_flags_and_state(origin, traced):
    _, proxy = traced
    tp, ts = upstream_sees(origin, proxy.port, [(b"traceparent", VALID),
                                                (b"tracestate", b"congo=t61rcWkgMzE")])
    m = TRACEPARENT_RE.fullmatch(tp)
    assert m and m.group(1) == TRACE and m.group(3) == b"01"
    assert m.group(2) != PARENT and m.group(2) != b"0" * 16
    assert ts == b"congo=t61rcWkgMzE"


def test_each_hop_gets_a_different_span_id(origin, traced):
    _, proxy = traced
    spans = {upstream_sees(origin, proxy.port, [(b"traceparent", VALID)])[0][36:52]
             for _ in range(5)}
    assert len(spans) == 5


@pytest.mark.parametrize("bad", [
    pytest.param(b"00-" + b"0" * 32 + b"-" + PARENT + b"-01", id="zero-trace-id"),
    pytest.param(b"00-" + TRACE + b"-" + b"0" * 16 + b"-01", id="zero-parent-id"),
    pytest.param(b"ff-" + TRACE + b"-" + PARENT + b"-01", id="version-ff"),
    pytest.param(b"00-" + TRACE.upper() + b"-" + PARENT + b"-01", id="uppercase"),
    pytest.param(VALID + b"-extra", id="v00-with-extra-field"),
    pytest.param(b"00-" + TRACE[:-1] + b"-" + PARENT + b"-01", id="short-trace-id"),
])
def test_an_invalid_traceparent_is_not_propagated_nor_its_tracestate(origin, traced, bad):
    mode, proxy = traced
    tp, ts = upstream_sees(origin, proxy.port, [(b"traceparent", bad), (b"tracestate", b"a=1")])
    assert ts is None
    if mode == "propagate":
        assert tp is None
    else:  # "always" starts a new trace instead
        m = TRACEPARENT_RE.fullmatch(tp)
        assert m and m.group(1) != TRACE[:32] and m.group(3) == b"01"


def test_two_traceparent_fields_are_invalid(origin, traced):
    mode, proxy = traced
    tp, _ = upstream_sees(origin, proxy.port, [(b"traceparent", VALID), (b"traceparent", VALID)])
    assert tp is None if mode == "propagate" else TRACE not in tp


def test_a_later_version_is_read_as_00(origin, traced):
    _, proxy = traced
    tp, _ = upstream_sees(origin, proxy.port,
                          [(b"traceparent", b"01-" + TRACE + b"-" + PARENT + b"-01-future")])
    assert tp.startswith(b"00-" + TRACE + b"-") and tp.endswith(b"-01")


def test_no_traceparent_starts_a_trace_only_when_always(origin, traced):
    mode, proxy = traced
    tp, _ = upstream_sees(origin, proxy.port, [])
    if mode == "propagate":
        assert tp is None
    else:
        assert TRACEPARENT_RE.fullmatch(tp)


def test_tracing_off_relays_both_fields_untouched(origin):
    config = proxy_config(origin.url, server='tracing = "off"')
    bad = b"zz-not-a-traceparent"
    with InProcessProxy(config) as proxy:
        tp, ts = upstream_sees(origin, proxy.port, [(b"traceparent", bad), (b"tracestate", b"x=1")])
    assert (tp, ts) == (bad, b"x=1")


def test_access_log_carries_the_trace_id(origin, tmp_path):
    import time

    import orjson

    log = tmp_path / "access.log"
    config = proxy_config(origin.url, server='tracing = "propagate"').replace(
        'access_log = "off"', f'access_log = "{log}"')
    with InProcessProxy(config) as proxy:
        upstream_sees(origin, proxy.port, [(b"traceparent", VALID)])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not log.read_bytes().strip():
            time.sleep(0.05)
    line = orjson.loads(log.read_bytes().splitlines()[0])
    assert line["trace_id"] == TRACE.decode()
