"""The browser-facing edge in a real browser: headless Debian chromium, driven by Playwright
with the system browser (no browser download). A page served from one loopback origin calls
fetch() at edgeproxy on another; each test asserts what the page could read (CORS decides
that in the browser, not in our client). Then a compressed asset and a static file reloaded
with a conditional request.

Skipped only when /usr/bin/chromium is absent (.ci/run installs it)."""

import json

import pytest

from tests.support.browser import chromium, needs_chromium
from tests.support.e2e import wait_until
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

pytestmark = needs_chromium

TIMEOUT_MS = 5000
DATA = json.dumps([{"id": i, "name": f"item {i}"} for i in range(500)]).encode()
PAGE = b"<!doctype html><title>app</title><p>the app</p>"


def api(req):
    path = req.url.decode()
    if path == "/api/login":
        return ok(b"in", headers=[(b"Set-Cookie", b"sid=s3cret; Path=/; SameSite=Lax")])
    if path == "/api/whoami":
        return ok(req.header(b"cookie") or b"nobody")
    if path == "/api/echo":
        return ok(req.method + b" " + req.body, headers=[(b"X-Total", b"3"),
                                                         (b"X-Hidden", b"no")])
    return ok(b"simple", headers=[(b"X-Total", b"3"), (b"X-Hidden", b"no")])


def edge_config(page_origin: str, api_url: str, assets: str) -> str:
    return f"""
[server]
access_log = "off"

[filters.cors]
allow_origins = ["{page_origin}"]
allow_headers = ["Content-Type", "X-Api-Key"]
expose_headers = ["X-Total"]
allow_credentials = true

[[upstreams]]
name = "app"
servers = ["{api_url}"]

[[upstreams]]
name = "dead"
servers = ["http://127.0.0.1:1"]

[[routes]]
name = "api"
paths = ["/api/*"]
upstream = "app"

[[routes]]
name = "other"
paths = ["/other"]
upstream = "app"
[routes.cors]
allow_origins = ["https://somewhere-else.example"]

[[routes]]
name = "limited"
paths = ["/limited"]
upstream = "app"
[routes.rate_limit]
[[routes.rate_limit.limits]]
name = "tiny"
algorithm = "fixed_window"
limit = 1
window = "1h"

[[routes]]
name = "down"
paths = ["/down"]
upstream = "dead"

[[routes]]
name = "assets"
paths = ["/assets/*"]
strip_prefix = true
[routes.static_files]
root = "{assets}"
[routes.compression]
"""


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def setup(browser, tmp_path_factory):
    assets = tmp_path_factory.mktemp("assets")
    (assets / "data.json").write_bytes(DATA)
    (assets / "page.html").write_bytes(b"<!doctype html><p>static page</p>")
    with Origin(lambda req: ok(PAGE, headers=[(b"Content-Type", b"text/html")])) as site, \
            Origin(api) as upstream:
        page_origin = f"http://127.0.0.1:{site.port}"
        with InProcessProxy(edge_config(page_origin, upstream.url, str(assets))) as edge:
            context = browser.new_context()
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            page.goto(page_origin + "/")
            yield page, f"http://127.0.0.1:{edge.port}", upstream, edge
            context.close()


# What the page can read of a cross-origin fetch: status, body and two headers, or the
# error the browser raised when CORS refused it.
FETCH = """async ([url, init]) => {
  try {
    const r = await fetch(url, init || {});
    return {status: r.status, body: await r.text(),
            total: r.headers.get("x-total"), hidden: r.headers.get("x-hidden")};
  } catch (e) { return {error: e.name}; }
}"""


def fetch(page, url, init=None):
    return page.evaluate(FETCH, [url, init])


def test_simple_request_reads_body_and_only_exposed_headers(setup):
    page, edge, _, _ = setup
    r = fetch(page, edge + "/api/simple")
    assert r == {"status": 200, "body": "simple", "total": "3", "hidden": None}


def test_preflighted_request_is_answered_by_the_edge(setup):
    page, edge, upstream, _ = setup
    before = len(upstream.requests)
    r = fetch(page, edge + "/api/echo", {
        "method": "PUT", "body": '{"a":1}',
        "headers": {"Content-Type": "application/json", "X-Api-Key": "k"}})
    assert r["status"] == 200 and r["body"] == 'PUT {"a":1}'
    assert [q.method for q in upstream.requests[before:]] == [b"PUT"]  # no OPTIONS upstream


def test_credentialed_requests_carry_the_cookie(setup):
    page, edge, _, _ = setup
    assert fetch(page, edge + "/api/login", {"credentials": "include"})["status"] == 200
    r = fetch(page, edge + "/api/whoami", {"credentials": "include"})
    assert r["body"] == "sid=s3cret"


def test_a_disallowed_origin_cannot_read_the_answer(setup):
    page, edge, _, _ = setup
    assert fetch(page, edge + "/other") == {"error": "TypeError"}
    # and a preflight the edge refuses stops the request before it is sent
    r = fetch(page, edge + "/api/echo", {"method": "PUT", "headers": {"X-Secret": "1"}})
    assert r == {"error": "TypeError"}


def test_the_proxys_own_errors_are_readable(setup):
    page, edge, _, _ = setup
    first = fetch(page, edge + "/limited")
    second = fetch(page, edge + "/limited")
    down = fetch(page, edge + "/down")
    assert first["status"] == 200
    assert second["status"] == 429
    assert json.loads(second["body"])["error"]["code"] == "rate_limited"
    assert down["status"] in (502, 503)
    assert json.loads(down["body"])["error"]["status"] == down["status"]


def test_a_compressed_asset(setup):
    page, edge, _, _ = setup
    with page.expect_response(lambda resp: resp.url.endswith("/assets/data.json")) as info:
        r = fetch(page, edge + "/assets/data.json")
    assert r["status"] == 200 and r["body"].encode() == DATA
    headers = info.value.all_headers()
    assert headers["content-encoding"] in ("zstd", "br", "gzip")
    assert "accept-encoding" in headers["vary"].lower()


def test_a_static_file_reload_revalidates_with_304(setup):
    page, edge, _, proxy = setup

    def answered_3xx():
        route = next(r for r in proxy.worker.runtime.routes if r.name == "assets")
        return route.stats.by_status()[3]

    url = edge + "/assets/page.html"
    first = page.goto(url)
    assert first.status == 200 and "static page" in page.content()
    etag = first.all_headers()["etag"]
    before = proxy.call(answered_3xx)
    second = page.reload()
    assert second.request.all_headers().get("if-none-match") == etag
    # Chromium reports the revalidated copy as 200; the edge answered 304.
    assert wait_until(lambda: proxy.call(answered_3xx) == before + 1, timeout=2)
    assert "static page" in page.content()
