"""The cache through the real CLI with two workers: POST /cache/purge reaches every worker's
cache (by URL, prefix and tag), bad purge requests are refused with the reason, and /metrics
counts hits, misses and what is stored."""

import http.client

import orjson
import pytest

from tests.e2e.test_admin import families, value
from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.e2e import wait_until
from tests.support.origin import Origin
from tests.support.scripted import Script

TOKEN = "cache-admin-token-0123456789"


def config(origin_url: str) -> str:
    return f"""
[server]
listen = "127.0.0.1:0"
access_log = "off"
workers = 2
watch_config = false

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[upstreams]]
name = "app"
servers = ["{origin_url}"]

[[routes]]
name = "pages"
paths = ["/*"]
upstream = "app"
[routes.cache]
"""


def purge(proxy, body: bytes, token: str = TOKEN):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=15)
    try:
        conn.request("POST", "/cache/purge", body=body,
                     headers={"Authorization": f"Bearer {token}",
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read())
    finally:
        conn.close()


def warm(proxy, paths, rounds=12):
    # New connections: the kernel spreads them over both workers (SO_REUSEPORT).
    for _ in range(rounds):
        for path in paths:
            with Conn(proxy.port) as c:
                assert c.request("GET", path).status == 200


@pytest.fixture
def cli(tmp_path):
    script = Script()
    for path, tag in (("/a/1", b"t1"), ("/a/2", b"t2"), ("/b", b"t1 t3")):
        script[path] = (200, [(b"Cache-Control", b"max-age=600"), (b"Surrogate-Key", tag)],
                        path.encode())
    with Origin(script) as origin, CliProxy(tmp_path, config(origin.url)) as proxy:
        proxy.token = TOKEN
        yield proxy, script


@pytest.mark.parametrize("body,purged", [
    pytest.param(b'{"url": "http://test/a/1"}', ["/a/1"], id="url"),
    pytest.param(b'{"url": "TEST/a/1"}', ["/a/1"], id="url-any-scheme-host-case"),
    pytest.param(b'{"prefix": "http://test/a/"}', ["/a/1", "/a/2"], id="prefix"),
    pytest.param(b'{"tag": "t1"}', ["/a/1", "/b"], id="tag"),
])
def test_a_purge_reaches_every_worker(cli, body, purged):
    proxy, script = cli
    paths = ["/a/1", "/a/2", "/b"]
    warm(proxy, paths)
    before = {p: script.count(p) for p in paths}
    assert all(1 <= n <= 2 for n in before.values())  # one miss per worker at most
    status, result = purge(proxy, body)
    assert status == 200, result
    assert result["workers"] == 2 and result["workers_pending"] == []
    assert 1 <= result["purged"] <= 2 * len(purged)
    warm(proxy, paths)
    for p in paths:
        grew = script.count(p) - before[p]
        assert (1 <= grew <= 2) if p in purged else grew == 0, p


@pytest.mark.parametrize("body,token,status", [
    pytest.param(b'{"url": "http://test/a/1"}', "wrong", 401, id="token"),
    pytest.param(b"not json", TOKEN, 400, id="not-json"),
    pytest.param(b'{"url": "/a", "tag": "t1"}', TOKEN, 400, id="two-kinds"),
    pytest.param(b'{"path": "/a"}', TOKEN, 400, id="unknown-kind"),
    pytest.param(b'{"tag": ""}', TOKEN, 400, id="empty"),
])
def test_bad_purge_requests_are_refused(cli, body, token, status):
    proxy, _ = cli
    code, result = purge(proxy, body, token)
    assert code == status and result["error"]["message"]


def test_metrics_count_hits_misses_and_what_is_stored(cli):
    proxy, script = cli
    warm(proxy, ["/a/1"], rounds=10)
    misses = script.count("/a/1")

    def counted():
        code, text = proxy.admin("GET", "/metrics")
        fams = families(text)
        return (value(fams, "edgeproxy_cache_requests", route="pages", outcome="hit")
                == 10 - misses
                and value(fams, "edgeproxy_cache_requests", route="pages", outcome="miss")
                == misses
                and value(fams, "edgeproxy_cache_stored", route="pages",
                          measure="memory_objects") == misses
                and value(fams, "edgeproxy_cache_stored", route="pages",
                          measure="memory_bytes") > 0)
    assert wait_until(counted, 10)
