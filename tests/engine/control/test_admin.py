"""The admin API's rules without processes: the token rule in the config, redaction, and the
HTTP handler (auth, errors) against a stand-in supervisor."""

import http.client

import orjson
import pytest

from engine.control.admin import REDACTED, AdminServer, config_json
from engine.control.config import parse
from engine.control.metrics import Totals
from engine.chain.schema import ConfigError

TOKEN = "s3cret-token-0123456789"

BASE = """
[[upstreams]]
name = "app"
servers = ["http://127.0.0.1:9001"]

[[routes]]
name = "r"
upstream = "app"
[routes.headers.request]
set = { "X-A" = "1" }
"""


def errors_of(text: str) -> list:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.errors


@pytest.mark.parametrize("listen", ["0.0.0.0:9901", "10.1.2.3:9901", "[::]:9901"])
def test_a_non_loopback_admin_listener_needs_a_token(listen):
    errors = errors_of(f'[admin]\nlisten = "{listen}"\n' + BASE)
    assert errors == [("admin.token", f'is required when admin.listen ("{listen}") is not a '
                                      "loopback address")]
    cfg = parse(f'[admin]\nlisten = "{listen}"\ntoken = "{TOKEN}"\n' + BASE)
    assert cfg.admin.token == TOKEN


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.2:9901", "[::1]:9901",
                                    "localhost:9901"])
def test_a_loopback_admin_listener_needs_no_token(listen):
    assert parse(f'[admin]\nlisten = "{listen}"\n' + BASE).admin.token is None


def test_a_disabled_admin_api_needs_no_token():
    assert not parse('[admin]\nenabled = false\nlisten = "0.0.0.0:9901"\n' + BASE).admin.enabled


def test_a_weak_token_is_refused():
    assert errors_of('[admin]\ntoken = "short"\n' + BASE)[0][0] == "admin.token"


def test_config_json_redacts_secrets_and_keeps_the_shape():
    cfg = parse(f'[admin]\ntoken = "{TOKEN}"\n' + BASE)
    data = config_json(cfg)
    assert data["admin"] == {"enabled": True, "listen": "127.0.0.1:9901", "token": REDACTED}
    assert TOKEN not in orjson.dumps(data).decode()
    route = data["routes"][0]
    assert route["headers"]["request"]["set"] == {"X-A": "1"}  # a table stays a table
    server = data["upstreams"][0]["servers"][0]
    assert (server["url"], server["weight"], server["backup"]) == ("http://127.0.0.1:9001", 1,
                                                                   False)
    assert config_json(cfg, redact=False)["admin"]["token"] == TOKEN


class StandIn:
    """What the admin handler asks of the supervisor."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.generation = 1
        self.config_path = "/etc/edgeproxy.toml"
        self.reloads = []
        self.logged = []

    def log_soon(self, message):
        self.logged.append(message)

    def status(self):
        return {"generation": self.generation}

    def totals(self):
        return Totals(), {}

    def control_figures(self):
        return {"version": "0", "started": 0.0, "workers": 1, "worker_restarts": 0,
                "reloads": {"ok": 0, "failed": 0, "unchanged": 0}, "last_reload_ok": 1,
                "generation": 1}

    def request_reload(self, trigger, timeout):
        self.reloads.append(trigger)
        return {"result": "failed", "generation": 1,
                "errors": [{"path": "routes[0].upstream", "message": "unknown upstream"}]}


@pytest.fixture
def admin():
    cfg = parse(f'[admin]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\n' + BASE)
    server = AdminServer(StandIn(cfg), cfg.admin.listen)
    server.start()
    yield server
    server.stop()


def call(server, method, path, token=TOKEN):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request(method, path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", TOKEN + "x"],
                         ids=["missing", "wrong", "longer"])
def test_every_endpoint_refuses_without_the_token(admin, token):
    for method, path in [("GET", "/status"), ("GET", "/metrics"), ("POST", "/reload"),
                         ("GET", "/nope")]:
        resp, body = call(admin, method, path, token)
        assert resp.status == 401
        assert resp.getheader("WWW-Authenticate").startswith("Bearer")
        assert orjson.loads(body)["error"]["code"] == "unauthorized"
    assert admin.supervisor.reloads == []


def test_with_the_token_endpoints_answer_json(admin):
    resp, body = call(admin, "GET", "/status")
    assert resp.status == 200 and orjson.loads(body) == {"generation": 1}
    resp, body = call(admin, "GET", "/config")
    assert orjson.loads(body)["config"]["admin"]["token"] == REDACTED
    resp, body = call(admin, "GET", "/metrics")
    assert resp.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    resp, body = call(admin, "GET", "/routes")
    assert orjson.loads(body)["routes"][0]["filters"] == ["headers"]


def test_errors_are_json_with_a_code(admin):
    resp, body = call(admin, "GET", "/nope")
    assert resp.status == 404 and orjson.loads(body)["error"]["code"] == "not_found"
    resp, body = call(admin, "GET", "/reload")
    assert resp.status == 405 and resp.getheader("Allow") == "POST"
    resp, body = call(admin, "POST", "/reload")
    error = orjson.loads(body)["error"]
    assert resp.status == 422 and error["code"] == "invalid_config"
    assert error["errors"] == [{"path": "routes[0].upstream", "message": "unknown upstream"}]
