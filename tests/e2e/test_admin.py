"""The admin API of the real CLI: the token rule, what each endpoint reports, and metrics that
count real traffic correctly across two workers."""

import os
import signal
import subprocess
import sys

import pytest

from tests.support.e2e import wait_until
from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.origin import Origin

TOKEN = "e2e-admin-token-0123456789"


def config(origin_url: str, *, workers: int = 2, admin: str = "") -> str:
    return f"""
[server]
access_log = "off"
workers = {workers}
watch_config = false

[[upstreams]]
name = "app"
servers = ["{origin_url}"]

[[routes]]
name = "api"
paths = ["/api/*"]
upstream = "app"

[[routes]]
name = "health"
paths = ["/healthz"]
[routes.static]
body = "ok"
{admin}
"""


def families(text: str) -> dict:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        pytest.fail("prometheus-client is a test dependency: pip install prometheus-client")
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams, family, name=None, **labels) -> float:
    total = 0.0
    for s in fams[family].samples:
        if (name is None or s.name == name) and all(s.labels.get(k) == v
                                                    for k, v in labels.items()):
            total += s.value
    return total


def test_a_public_admin_listener_without_token_refuses_to_start(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(config("http://127.0.0.1:1", admin='[admin]\nlisten = "0.0.0.0:0"'))
    result = subprocess.run([sys.executable, "-m", "engine", "run", "-c", str(path)],
                            capture_output=True, timeout=30)
    assert result.returncode == 1
    assert (b'admin.token: is required when admin.listen ("0.0.0.0:0") is not a loopback '
            b"address") in result.stderr


def test_a_public_admin_listener_with_token_demands_it(tmp_path):
    text = config("http://127.0.0.1:1", workers=1,
                  admin=f'[admin]\nlisten = "0.0.0.0:0"\ntoken = "{TOKEN}"')
    with CliProxy(tmp_path, text) as p:
        code, body = p.admin("GET", "/status")
        assert code == 401 and body["error"]["code"] == "unauthorized"
        code, status = p.admin("GET", "/status", token=TOKEN)
        assert code == 200 and status["admin_listen"].startswith("0.0.0.0:")
        code, cfg = p.admin("GET", "/config", token=TOKEN)
        assert cfg["config"]["admin"]["token"] == "<redacted>"
        assert TOKEN not in str(cfg)


def test_status_routes_and_upstreams_describe_the_running_proxy(tmp_path):
    with Origin() as origin, CliProxy(tmp_path, config(origin.url)) as p:
        with Conn(p.port) as c:
            assert c.request("GET", "/api/x").status == 200
        code, status = p.admin("GET", "/status")
        assert code == 200
        assert status["config_file"] == str(p.path)
        assert status["listen"] == f"127.0.0.1:{p.port}"
        assert status["generation"] == 1 and status["last_reload"] is None
        assert status["uptime_seconds"] >= 0 and status["version"]
        assert wait_until(lambda: all(w["state"] == "serving" for w in
                                    p.admin("GET", "/status")[1]["workers"]))
        assert len(p.admin("GET", "/status")[1]["workers"]) == 2
        _, routes = p.admin("GET", "/routes")
        assert [r["name"] for r in routes["routes"]] == ["api", "health"]
        assert routes["routes"][1]["filters"] == ["static"]
        assert wait_until(lambda: p.admin("GET", "/routes")[1]["routes"][0]["requests"] == 1)
        _, ups = p.admin("GET", "/upstreams")
        server = ups["upstreams"][0]["servers"][0]
        assert server["url"] == origin.url and server["weight"] == 1
        assert wait_until(lambda: p.admin("GET", "/upstreams")[1]["upstreams"][0]["servers"][0]
                        ["idle"] == 1)  # the pooled keep-alive connection


def test_metrics_count_real_traffic_across_two_workers(tmp_path):
    with Origin() as origin, CliProxy(tmp_path, config(origin.url)) as p:
        sent = {"get": 0, "post": 0, "health": 0, "missing": 0, "body": 0}
        for i in range(40):  # fresh connections: SO_REUSEPORT spreads them over both workers
            with Conn(p.port) as c:
                if i % 4 == 0:
                    body = b"x" * (i + 1)
                    assert c.request("POST", "/api/p", body=body).status == 200
                    sent["post"] += 1
                    sent["body"] += len(body)
                elif i % 4 == 1:
                    assert c.request("GET", "/healthz").status == 200
                    sent["health"] += 1
                elif i % 4 == 2:
                    assert c.request("GET", "/nothing").status == 404
                    sent["missing"] += 1
                else:
                    assert c.request("GET", "/api/g").status == 200
                    sent["get"] += 1

        def requests_total():
            _, text = p.admin("GET", "/metrics")
            return value(families(text), "edgeproxy_requests")

        assert wait_until(lambda: requests_total() == 40, 10)
        _, status = p.admin("GET", "/status")
        per_worker = [w["requests"] for w in status["workers"]]
        assert sum(per_worker) == 40 and all(n > 0 for n in per_worker), per_worker

        _, text = p.admin("GET", "/metrics")
        fams = families(text)
        assert value(fams, "edgeproxy_requests", route="api", method="GET",
                     status="2xx") == sent["get"]
        assert value(fams, "edgeproxy_requests", route="api", method="POST",
                     status="2xx") == sent["post"]
        assert value(fams, "edgeproxy_requests", route="health", status="2xx") == sent["health"]
        assert value(fams, "edgeproxy_requests", route="", status="4xx") == sent["missing"]
        assert value(fams, "edgeproxy_request_body_bytes", route="api") == sent["body"]
        count = "edgeproxy_request_duration_seconds_count"
        assert value(fams, "edgeproxy_request_duration_seconds", count, route="api") == 20
        assert value(fams, "edgeproxy_request_duration_seconds",
                     "edgeproxy_request_duration_seconds_bucket", route="api", le="+Inf") == 20
        assert value(fams, "edgeproxy_upstream_duration_seconds",
                     "edgeproxy_upstream_duration_seconds_count", route="api") == 20
        assert value(fams, "edgeproxy_upstream_duration_seconds",
                     "edgeproxy_upstream_duration_seconds_count", route="health") == 0
        # One keep-alive connection pooled per worker at most, none busy.
        idle = value(fams, "edgeproxy_upstream_server_idle_connections", upstream="app")
        assert idle in (1, 2) and idle == len(origin.open)
        assert value(fams, "edgeproxy_upstream_server_active_connections") == 0
        assert value(fams, "edgeproxy_workers") == 2


def test_counters_survive_a_worker_crash_and_it_is_counted(tmp_path):
    with Origin() as origin, CliProxy(tmp_path, config(origin.url)) as p:
        for _ in range(10):
            with Conn(p.port) as c:
                assert c.request("GET", "/api/x").status == 200

        def metrics():
            return families(p.admin("GET", "/metrics")[1])

        assert wait_until(lambda: value(metrics(), "edgeproxy_requests") == 10)
        _, status = p.admin("GET", "/status")
        victim = next(w["pid"] for w in status["workers"] if w["requests"])
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: value(metrics(), "edgeproxy_worker_restarts") == 1)
        assert value(metrics(), "edgeproxy_requests") == 10  # its counts were kept
        with Conn(p.port) as c:
            assert c.request("GET", "/api/y").status == 200
        assert wait_until(lambda: value(metrics(), "edgeproxy_requests") == 11)


def test_admin_can_be_disabled(tmp_path):
    text = config("http://127.0.0.1:1", workers=1, admin="[admin]\nenabled = false")
    with CliProxy(tmp_path, text) as p:
        assert p.admin_port is None
        with Conn(p.port) as c:
            assert c.request("GET", "/healthz").body == b"ok"
