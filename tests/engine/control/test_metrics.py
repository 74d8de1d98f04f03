"""Metrics: per-worker counters, sums across workers, and a valid Prometheus exposition."""

import pytest

from engine.control.metrics import N_STATUS, Totals, render
from engine.http.stats import BUCKETS, METHODS, STATUSES, RouteStats

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - a missing test dependency is a failure, not a skip
    text_string_to_metric_families = None

CONTROL = {"version": "0.1.0", "started": 1700000000.0, "workers": 2, "worker_restarts": 1,
           "reloads": {"ok": 3, "failed": 1, "unchanged": 0}, "last_reload_ok": 0,
           "generation": 4}


def families(text: str) -> dict:
    if text_string_to_metric_families is None:
        pytest.fail("prometheus-client is a test dependency: pip install prometheus-client")
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict, family: str, name: str | None = None) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for s in fams[family].samples
            if name is None or s.name == name}


def snapshot(route_counts: dict, connections=0, servers=(), events=()) -> dict:
    """A worker snapshot with ``route -> [(method, status, duration, upstream, in, out)]``."""
    routes = {}
    for route, requests in route_counts.items():
        st = RouteStats()
        for method, status, took, up, bytes_in, bytes_out in requests:
            st.observe(method.encode(), STATUSES.index(status) * 100, bytes_in, bytes_out,
                       took, -1.0 if up is None else up)
        routes[route] = st.to_dict()
    return {"pid": 1, "time": 0.0, "generation": 1, "draining": False,
            "connections": connections, "routes": routes, "servers": list(servers),
            "upstreams": {"app": (2, 1)}, "events": list(events)}


@pytest.mark.parametrize("seconds, bucket", [
    pytest.param(0.0, 0, id="zero"),
    pytest.param(BUCKETS[0], 0, id="le-is-less-or-equal"),
    pytest.param(BUCKETS[0] + 1e-9, 1, id="just-above"),
    pytest.param(BUCKETS[-1], len(BUCKETS) - 1, id="last-bound"),
    pytest.param(1e9, len(BUCKETS), id="inf"),
])
def test_bucket_index_follows_prometheus_le_semantics(seconds, bucket):
    st = RouteStats()
    st.observe(b"GET", 200, 0, 0, seconds, seconds)
    d = st.to_dict()
    assert d["duration"][bucket] == 1 and sum(d["duration"]) == 1
    assert d["upstream"][bucket] == 1


def test_method_and_status_classes_are_bounded():
    st = RouteStats()
    st.observe(b"BREW", 999, 1, 2, 0.1, -1.0)
    st.observe(b"GET", 204, 0, 0, 0.1, -1.0)
    requests = st.to_dict()["requests"]
    assert requests[(len(METHODS) - 1) * N_STATUS + 0] == 1  # other method, other status
    assert requests[METHODS.index("GET") * N_STATUS + 2] == 1
    assert st.to_dict()["upstream"] == [0] * (len(BUCKETS) + 1)  # never went upstream
    assert (st.total, st.bytes_in, st.bytes_out) == (2, 1, 2)


def test_totals_sum_workers_and_retired_counters():
    a = snapshot({"api": [("GET", "2xx", 0.002, 0.001, 0, 10)]}, connections=3,
                 servers=[("app", "http://a", 1, 4, 1, 0, 10, 1, 5)])
    b = snapshot({"api": [("POST", "5xx", 0.2, 0.19, 7, 20)],
                  "": [("GET", "4xx", 0.0001, None, 0, 50)]}, connections=2,
                 servers=[("app", "http://a", 0, 2, 0, 1, 5, 5, 2)])
    retired = Totals()
    retired.add_counters(snapshot({"api": [("GET", "2xx", 0.002, 0.001, 0, 10)]}))
    totals = Totals()
    totals.add(retired)
    for snap in (a, b):
        totals.add_counters(snap)
        totals.add_gauges(snap)
    assert totals.requests_by_route() == {"api": 3, "": 1}
    assert totals.connections == 5
    # active and idle summed, available counted, the worst circuit state, attempts and
    # connections opened summed
    assert totals.servers == {("app", "http://a"): [1, 6, 1, 1, 15, 6, 7]}
    assert totals.routes["api"]["bytes_out"] == 40 and totals.routes["api"]["bytes_in"] == 7
    # the retired total itself is not changed by the sum
    assert retired.requests_by_route() == {"api": 1}


def test_exposition_parses_and_carries_every_figure():
    totals = Totals()
    for snap in (
        snapshot({"api": [("GET", "2xx", 0.002, 0.001, 0, 10), ("GET", "2xx", 0.3, 0.29, 0, 5)],
                  "": [("BREW", "4xx", 0.0001, None, 0, 50)]},
                 connections=3, servers=[("app", "http://127.0.0.1:1", 1, 4, 1, 2, 7, 3, 2)]),
    ):
        totals.add_counters(snap)
        totals.add_gauges(snap)
    fams = families(render(totals, CONTROL))

    requests = samples(fams, "edgeproxy_requests")
    assert requests == {
        (("method", "GET"), ("route", "api"), ("status", "2xx")): 2,
        (("method", "other"), ("route", ""), ("status", "4xx")): 1,
    }
    assert fams["edgeproxy_requests"].type == "counter"
    hist = fams["edgeproxy_request_duration_seconds"]
    assert hist.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in hist.samples
               if s.name.endswith("_bucket") and s.labels["route"] == "api"}
    assert buckets["0.001"] == 0 and buckets["0.0025"] == 1 and buckets["0.25"] == 1
    assert buckets["0.5"] == 2 and buckets["+Inf"] == 2
    count = samples(fams, "edgeproxy_request_duration_seconds",
                    "edgeproxy_request_duration_seconds_count")
    assert count[(("route", "api"),)] == 2 and count[(("route", ""),)] == 1
    up = samples(fams, "edgeproxy_upstream_duration_seconds",
                 "edgeproxy_upstream_duration_seconds_count")
    assert up == {(("route", "api"),): 2}  # no upstream, no series
    assert samples(fams, "edgeproxy_response_body_bytes")[(("route", "api"),)] == 15
    assert samples(fams, "edgeproxy_active_connections") == {(): 3}
    server = (("server", "http://127.0.0.1:1"), ("upstream", "app"))
    assert samples(fams, "edgeproxy_upstream_server_active_connections") == {server: 1}
    assert samples(fams, "edgeproxy_upstream_server_idle_connections") == {server: 4}
    assert samples(fams, "edgeproxy_upstream_server_available") == {server: 1}
    assert samples(fams, "edgeproxy_upstream_server_circuit_state") == {server: 2}
    assert samples(fams, "edgeproxy_upstream_server_requests") == {server: 7}
    assert samples(fams, "edgeproxy_upstream_server_failures") == {server: 3}
    assert samples(fams, "edgeproxy_upstream_server_connections_opened") == {server: 2}
    assert samples(fams, "edgeproxy_upstream_retries") == {(("upstream", "app"),): 2}
    assert samples(fams, "edgeproxy_upstream_circuit_state") == {(("upstream", "app"),): 1}
    assert samples(fams, "edgeproxy_config_reloads") == {
        (("result", "ok"),): 3, (("result", "failed"),): 1, (("result", "unchanged"),): 0}
    assert samples(fams, "edgeproxy_config_last_reload_successful") == {(): 0}
    assert samples(fams, "edgeproxy_worker_restarts") == {(): 1}
    assert samples(fams, "edgeproxy_workers") == {(): 2}
    assert samples(fams, "edgeproxy_config_generation") == {(): 4}
    assert samples(fams, "edgeproxy_build_info") == {(("version", "0.1.0"),): 1}


def test_label_values_are_escaped():
    totals = Totals()
    totals.add_counters(snapshot({'we"ird\\name\n': [("GET", "2xx", 0.001, None, 0, 0)]}))
    fams = families(render(totals, CONTROL))
    assert {s.labels["route"] for s in fams["edgeproxy_requests"].samples} == {
        'we"ird\\name\n'}


def test_filter_events_are_summed_with_retired_workers_and_exported():
    live = snapshot({}, events=[["ratelimit", "api", {"rate_limited": 3, "quota_exceeded": 1}],
                                ["idempotency", "pay", {"claimed": 5, "replayed": 2}]])
    gone = snapshot({}, events=[["ratelimit", "api", {"rate_limited": 4}]])
    retired = Totals()
    retired.add_counters(gone)
    totals = Totals()
    totals.add_counters(live)
    totals.add(retired)
    fams = families(render(totals, CONTROL))
    assert samples(fams, "edgeproxy_ratelimit_rejections") == {
        (("reason", "quota_exceeded"), ("route", "api")): 1,
        (("reason", "rate_limited"), ("route", "api")): 7,
    }
    assert samples(fams, "edgeproxy_idempotency_requests") == {
        (("outcome", "claimed"), ("route", "pay")): 5,
        (("outcome", "replayed"), ("route", "pay")): 2,
    }
