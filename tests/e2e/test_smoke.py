"""The basic proxy path, in-process and through the CLI, against a real origin."""

from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy


def config(origin_url: str, extra: str = "") -> str:
    return f"""
[server]
access_log = "off"

[[upstreams]]
name = "app"
servers = ["{origin_url}"]

[[routes]]
name = "all"
paths = ["/*"]
upstream = "app"
{extra}
"""


def test_get_is_proxied_with_forwarding_headers():
    with Origin() as origin, InProcessProxy(config(origin.url)) as proxy, Conn(proxy.port) as c:
        r = c.request("GET", "/hello?x=1", headers=[(b"X-Custom", b"yes")])
        assert r.status == 200
        assert r.body == b"/hello?x=1"
        req = origin.requests[0]
        assert req.header(b"x-custom") == b"yes"
        assert req.header(b"x-forwarded-for") == b"127.0.0.1"
        assert req.header(b"x-request-id") == r.header(b"x-request-id")
        assert len(r.header(b"x-request-id")) == 32


def test_keepalive_reuses_one_upstream_connection():
    with Origin() as origin, InProcessProxy(config(origin.url)) as proxy, Conn(proxy.port) as c:
        for i in range(5):
            r = c.request("POST", f"/n{i}", body=b"x" * i * 100)
            assert r.status == 200
        assert origin.connections == 1


def test_cli_serves_and_stops_cleanly(tmp_path):
    with Origin() as origin, CliProxy(tmp_path, config(origin.url)) as proxy:
        with Conn(proxy.port) as c:
            assert c.request("GET", "/cli").body == b"/cli"
        assert proxy.stop() == 0
