"""The admin API of the real CLI: the token rule, what each endpoint reports, and metrics that
count real traffic correctly across two workers."""

import http.client
import os
import signal
import subprocess
import sys

import orjson
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
        assert p.admin("GET", "/upstreams")[1]["upstreams"][0]["servers"][0][
            "connections_opened"] == 1


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


# -- every endpoint answers on every kind of config (issue 20) -----------------------------------

SECRET = "s3cret-0123456789-do-not-show"


def shipped_config() -> str:
    from pathlib import Path

    from tests.support.origin import closed_port

    text = (Path(__file__).parents[2] / "config.toml").read_text()
    text = text.replace('listen = "0.0.0.0:8080"', 'listen = "127.0.0.1:0"')
    return text.replace(":9001", f":{closed_port()}").replace(":9002", f":{closed_port()}")


def limits_config(redis_url: str) -> str:
    """Every rate-limit part, on the Redis store (its URL carrying a password)."""
    url = redis_url.replace("redis://", f"redis://edge:{SECRET}@")
    return f"""
[server]
access_log = "off"
max_body_size = "2m"
[redis]
url = "{url}"
timeout = "150ms"
breaker_cooldown = "1s"
[[upstreams]]
name = "app"
servers = ["http://127.0.0.1:1"]
[[routes]]
name = "limited"
upstream = "app"
max_body_size = "64k"
[routes.rate_limit]
store = "redis"
on_store_error = "deny"
[[routes.rate_limit.limits]]
name = "per-ip"
algorithm = "sliding_log"
limit = 100
window = "1m"
[[routes.rate_limit.limits]]
name = "bucket"
algorithm = "token_bucket"
rate = 5.5
burst = 10
delay = 2
key = ["header:X-Api-Key", "path"]
fallback = "shared"
[[routes.rate_limit.limits]]
name = "nginx"
algorithm = "leaky_bucket"
rate = 10
burst = 20
nodelay = true
[routes.rate_limit.quota]
key = ["header:X-Api-Key"]
[[routes.rate_limit.quota.tiers]]
name = "free"
daily = 100
monthly = 1000
[[routes.rate_limit.quota.tiers]]
name = "pro"
daily = 10000
keys = ["k1"]
[routes.rate_limit.adaptive]
lag = "50ms"
steps = [2, 4]
recover_after = "30s"
[routes.rate_limit.connections]
max = 10
slot_ttl = "5m"
"""


def idempotency_config(redis_url: str) -> str:
    return f"""
[server]
access_log = "off"
workers = 2
[redis]
url = "{redis_url}"
[[upstreams]]
name = "app"
servers = ["http://127.0.0.1:1"]
[[routes]]
name = "pay"
paths = ["/pay"]
methods = ["POST"]
upstream = "app"
[routes.idempotency]
store = "redis"
required = true
concurrent = "wait"
max_wait = "2s"
ttl = "24h"
lease = "30s"
max_body_size = "256k"
max_response_size = "1m"
release = ["429", "503"]
fingerprint_headers = ["Content-Type"]
caller = ["header:X-Api-Key"]
on_store_error = "reject"
"""


def upstreams_config() -> str:
    """Balancers, health checks, circuit breakers, outlier detection, fallbacks, headers."""
    return f"""
[server]
access_log = "off"
trusted_proxies = ["10.0.0.0/8"]
client_header_timeout = "500ms"
[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"
[[upstreams]]
name = "app"
balancer = "hash"
hash_key = ["header:X-User", "ip"]
consistent = true
host = "app.internal"
keepalive_timeout = "30s"
connect_timeout = "2s"
fail_on = ["error", "timeout", "http_503"]
servers = [
  {{ url = "http://127.0.0.1:1", weight = 3, max_fails = 2, fail_timeout = "5s" }},
  {{ url = "http://127.0.0.1:2", max_conns = 100 }},
  {{ url = "http://127.0.0.1:3", backup = true }},
  {{ url = "http://127.0.0.1:4", down = true }},
]
[upstreams.retry]
tries = 2
timeout = "3s"
[upstreams.circuit_breaker]
consecutive_failures = 3
window = "20s"
cooldown = "15s"
[upstreams.health_check]
path = "/healthz"
interval = "1h"
timeout = "1s"
statuses = [200, 204]
[upstreams.outlier_detection]
interval = "30s"
ejection_time = "1m"
[upstreams.fallback]
upstream = "spare"
[[upstreams]]
name = "spare"
servers = ["http://127.0.0.1:5"]
[upstreams.fallback]
status = 503
body = '{{"status": "degraded"}}'
headers = {{ "Retry-After" = "30" }}
[[routes]]
name = "api"
hosts = ["api.example.com", "*.example.org"]
paths = ["/api/{{rest*}}"]
upstream = "app"
rewrite = "/v2/{{rest}}"
[routes.headers.request]
set = {{ "Authorization" = "Bearer {SECRET}", "X-Edge" = "1" }}
remove = ["Cookie"]
[routes.headers.response]
rename = {{ "X-Old" = "X-New" }}
[[routes]]
name = "health"
paths = ["/healthz"]
[routes.static]
body = "ok"
headers = {{ "Cache-Control" = "no-store" }}
"""


CONFIGS = {
    "shipped": lambda redis: shipped_config(),
    "rate-limits-redis": lambda redis: limits_config(redis.url),
    "idempotency-redis": lambda redis: idempotency_config(redis.url),
    "upstreams-resilience": lambda redis: upstreams_config(),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_admin_endpoint_answers_on_the_config(tmp_path, redis_server, name):
    with CliProxy(tmp_path, CONFIGS[name](redis_server)) as p:
        p.token = TOKEN if TOKEN in p.path.read_text() else None
        answers = {}
        for path in ("/status", "/routes", "/upstreams", "/config"):
            code, body = p.admin("GET", path)
            assert code == 200 and isinstance(body, dict), (path, body)
            answers[path] = body
        code, text = p.admin("GET", "/metrics")
        assert code == 200 and families(text)["edgeproxy_workers"]
        code, body = p.admin("POST", "/reload")
        assert code == 200 and body["result"] == "unchanged", body
        shown = orjson.dumps(answers).decode()
        assert SECRET not in shown and TOKEN not in shown
        cfg = answers["/config"]["config"]
        assert cfg["server"]["drain_timeout"] == 10.0  # durations in seconds
        assert cfg["server"]["max_body_size"] == (2 << 20 if name == "rate-limits-redis"
                                                  else 1 << 20)  # sizes in bytes
        assert [r["name"] for r in answers["/routes"]["routes"]] == [
            r["name"] for r in cfg["routes"]]


def test_config_values_keep_their_meaning_and_secrets_their_redaction(tmp_path, redis_server):
    with CliProxy(tmp_path, limits_config(redis_server.url)) as p:
        cfg = p.admin("GET", "/config")[1]["config"]
        assert cfg["redis"]["url"].startswith("redis://edge:<redacted>@127.0.0.1:")
        assert cfg["redis"]["timeout"] == 0.15 and cfg["redis"]["breaker_cooldown"] == 1.0
        route = p.admin("GET", "/routes")[1]["routes"][0]
        assert route["max_body_size"] == 65536
        limits = route["rate_limit"]["limits"]
        assert [lim["window"] for lim in limits] == [60.0, 60.0, 60.0]
        assert limits[1]["rate"] == 5.5 and limits[1]["key"] == ["header:X-Api-Key", "path"]
        assert route["rate_limit"]["adaptive"]["lag"] == 0.05
        assert route["rate_limit"]["connections"]["slot_ttl"] == 300.0
    (tmp_path / "up").mkdir()
    with CliProxy(tmp_path / "up", upstreams_config()) as p:
        p.token = TOKEN
        up = p.admin("GET", "/upstreams")[1]["upstreams"][0]
        assert up["circuit_breaker"]["cooldown"] == 15.0
        assert up["health_check"]["interval"] == 3600.0
        assert up["outlier_detection"]["ejection_time"] == 60.0
        assert up["fallback"]["upstream"] == "spare"
        route = p.admin("GET", "/routes")[1]["routes"][0]
        assert route["headers"]["request"]["set"] == {"Authorization": "<redacted>",
                                                      "X-Edge": "1"}


def test_an_internal_error_answers_the_catalog_message_and_logs_the_traceback(tmp_path):
    """A worker snapshot of an unknown shape (say, from a worker of another version) breaks
    the sums: the client gets the generic 500 with the request id, the log gets the rest."""
    with CliProxy(tmp_path, config("http://127.0.0.1:1", workers=1)) as p:
        assert wait_until(lambda: p.run_dir() is not None)
        odd = os.path.join(p.run_dir(), "worker-999999.json")
        with open(odd, "w") as f:
            f.write('{"pid": 999999, "generation": 1}')
        conn = http.client.HTTPConnection("127.0.0.1", p.admin_port, timeout=10)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        error = orjson.loads(resp.read())["error"]
        conn.close()
        assert resp.status == 500
        assert error == {"status": 500, "code": "internal_error",
                         "message": "the proxy failed while handling the request",
                         "request_id": resp.getheader("X-Request-ID")}
        assert len(error["request_id"]) == 32
        assert p.wait_stderr(f"request_id {error['request_id']}".encode())
        logged = p.read_stderr().decode()
        assert "Traceback" in logged and "KeyError: 'routes'" in logged
        os.unlink(odd)
        code, _ = p.admin("GET", "/metrics")  # the admin API itself goes on
        assert code == 200
