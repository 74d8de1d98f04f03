"""The live status page on the admin listener: its files and JSON over HTTP, then in a real
browser (headless Debian chromium driven by Playwright, tests/support/browser.py): what it
renders for a running proxy under a little load, and an upstream server shown down once its
origin stops."""

import os
import pathlib
import threading
import time

import pytest

from tests.support.browser import chromium, needs_chromium
from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.origin import Origin


def config(a: str, b: str) -> str:
    return f"""
[server]
listen = "127.0.0.1:0"
access_log = "off"

[[upstreams]]
name = "shop"
servers = ["{a}", "{b}"]
[upstreams.health_check]
path = "/"
interval = "100ms"
timeout = "200ms"
unhealthy_threshold = 2

[[routes]]
name = "catalog"
paths = ["/catalog/*"]
upstream = "shop"

[[routes.rate_limit.limits]]
name = "per-ip"
limit = 30
window = "1m"
key = ["ip"]

[admin]
listen = "127.0.0.1:0"
token = "s3cret-admin-token"
"""


@pytest.fixture
def page():
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 1600})
        context.set_default_timeout(10000)
        context.set_default_navigation_timeout(20000)
        try:
            yield context.new_page()
        finally:
            context.close()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def load(port: int, stop: threading.Event) -> None:
    """A little traffic for the rates and status mix: a request every 20 ms."""
    with Conn(port) as c:
        while not stop.is_set():
            c.request("GET", "/catalog/items")
            stop.wait(0.02)


@needs_chromium
def test_dashboard_renders_live_state_and_an_upstream_going_down(tmp_path, page):
    shot = pathlib.Path(os.environ.get("EDGEPROXY_ARTIFACTS", tmp_path)) / "dashboard.png"
    stop = threading.Event()
    b_origin = Origin().__enter__()
    b_running = True
    with Origin() as a:
        b = b_origin.url
        with CliProxy(tmp_path, config(a.url, b)) as proxy:
            traffic = threading.Thread(target=load, args=(proxy.port, stop), daemon=True)
            traffic.start()
            try:
                page.goto(f"http://127.0.0.1:{proxy.admin_port}/dashboard")
                # The page needs no token; its JSON does: it asks for the token.
                page.locator("#login").wait_for(state="visible")
                page.fill("#token", "s3cret-admin-token")
                page.click("#login button")

                def rows(table):  # read in one go: the page replaces rows every poll
                    return page.evaluate(
                        "table => [...document.querySelectorAll(table + ' tbody tr')]"
                        ".map(tr => ({attrs: Object.fromEntries([...tr.attributes]"
                        ".map(a => [a.name, a.value])), cells: [...tr.cells]"
                        ".map(td => td.textContent)}))", "#" + table)

                def server_health(url):
                    found = [r for r in rows("servers")
                             if r["attrs"].get("data-server") == f"shop {url}"]
                    return found[0]["attrs"]["data-health"] if found else None

                def route_cells():
                    found = [r["cells"] for r in rows("routes")
                             if r["attrs"].get("data-route") == "catalog"]
                    # a rate and a p50 once two polls saw traffic
                    return found[0] if found and found[0][1] not in ("–", "0.0") \
                        and found[0][6] != "–" else None

                wait_for(lambda: server_health(a.url) == "up" and server_health(b) == "up",
                         10, "both servers up")
                cells = wait_for(route_cells, 10, "a request rate and a p50 for the route")
                assert float(cells[1]) > 0  # req/s
                assert cells[2].endswith("%") and cells[4].endswith("%")  # 2xx and 4xx (429)
                assert float(cells[6]) > 0 and float(cells[8]) >= float(cells[6])
                events = wait_for(lambda: [" ".join(r["cells"]) for r in rows("events")],
                                  10, "the rate-limit counters")
                assert any("ratelimit catalog rate_limited" in e for e in events), events
                config_text = page.inner_text("#config")
                assert "s3cret-admin-token" not in config_text and "<redacted>" in config_text

                b_origin.__exit__(None, None, None)  # the origin stops: checks fail
                b_running = False
                wait_for(lambda: server_health(b) == "down", 15, "the stopped server down")
                assert server_health(a.url) == "up"
                (down,) = [r for r in rows("servers")
                           if r["attrs"].get("data-server") == f"shop {b}"]
                assert "down" in down["cells"]
                page.screenshot(path=str(shot))
            finally:
                stop.set()
                traffic.join(5)
                if b_running:
                    b_origin.__exit__(None, None, None)
    assert shot.stat().st_size > 10_000, "the screenshot artifact"


def test_dashboard_files_need_no_token_and_its_json_does(tmp_path):
    import http.client

    with Origin() as a, CliProxy(tmp_path, config(a.url, a.url + "/")) as proxy:
        with Conn(proxy.port) as c:
            for _ in range(3):
                c.request("GET", "/catalog/x")
        for path, kind in (("/dashboard", "text/html"), ("/dashboard/app.js", "text/javascript"),
                           ("/dashboard/style.css", "text/css")):
            conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=10)
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status == 200 and resp.getheader("Content-Type").startswith(kind)
            # Nothing from elsewhere: no CDN, no inline script, no framing.
            assert "script-src 'self'" in resp.getheader("Content-Security-Policy")
            assert b"http://" not in body and b"https://" not in body
        assert proxy.admin("GET", "/stats")[0] == 401
        def counted():  # workers publish their counters about once a second
            status, stats = proxy.admin("GET", "/stats", token="s3cret-admin-token")
            assert status == 200
            route = stats["routes"].get("catalog")
            return (stats, route) if route and route["requests"] == 3 else None

        stats, route = wait_for(counted, 10, "the three requests counted")
        assert route["requests"] == 3 and route["status"]["2xx"] + route["status"]["4xx"] == 3
        assert len(route["duration"]) == len(stats["buckets"]) + 1
        assert sum(route["duration"]) == 3
        proxy.token = "s3cret-admin-token"
        proxy.admin("POST", "/reload")
        status, st = proxy.admin("GET", "/status")
        assert [r["result"] for r in st["recent_reloads"]] == ["unchanged"]
