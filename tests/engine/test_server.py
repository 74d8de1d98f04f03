"""The worker: JSON access log lines with every field, written to the configured place."""

import time

import orjson

from tests.support.client import Conn
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy


def test_access_log_line_per_request(tmp_path):
    log = tmp_path / "access.log"
    config = f"""
[server]
access_log = "{log}"

[[upstreams]]
name = "app"
servers = ["http://127.0.0.1:{{port}}"]

[[routes]]
name = "app-route"
paths = ["/app/*"]
upstream = "app"
"""
    with Origin() as origin:
        with InProcessProxy(config.replace("{port}", str(origin.port))) as proxy:
            with Conn(proxy.port) as c:
                r1 = c.request("POST", "/app/x", body=b"12345")
                r2 = c.request("GET", "/missing")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and log.read_bytes().count(b"\n") < 2:
                time.sleep(0.05)
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == r1.header(b"x-request-id").decode()
    assert (first["method"], first["path"], first["status"]) == ("POST", "/app/x", 200)
    assert first["route"] == "app-route" and first["upstream"] == origin.url
    assert first["client_ip"] == "127.0.0.1"
    assert first["bytes_in"] == 5 and first["bytes_out"] == len(r1.body)
    assert first["duration_ms"] >= first["upstream_ms"] >= 0
    assert second["status"] == 404 and second["route"] is None
    assert second["request_id"] == r2.header(b"x-request-id").decode()


def test_access_log_off_writes_nothing(tmp_path, capfd):
    config = """
[server]
access_log = "off"
[[routes]]
name = "s"
[routes.static]
body = "x"
"""
    with InProcessProxy(config) as proxy, Conn(proxy.port) as c:
        assert c.request("GET", "/").status == 200
    assert b"request_id" not in capfd.readouterr().out.encode()
