"""The cache's Redis tier: two edgeproxy processes share what one stored (the real CLI, the
suite's real redis-server); a memory hit never asks Redis; a purge drops the shared copy;
Redis down is a miss, never an error."""

import http.client

from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.e2e import wait_until
from tests.support.origin import Origin
from tests.support.scripted import Script


def config(origin_url: str, redis_url: str) -> str:
    return f"""
[server]
listen = "127.0.0.1:0"
access_log = "off"
workers = 1
watch_config = false

[redis]
url = "{redis_url}"
timeout = "0.2s"

[[upstreams]]
name = "app"
servers = ["{origin_url}"]

[[routes]]
name = "pages"
paths = ["/*"]
upstream = "app"
[routes.cache]
store = "redis"
"""


def instance(tmp_path, name, text):
    folder = tmp_path / name
    folder.mkdir()
    return CliProxy(folder, text)


def get(port, path):
    with Conn(port) as c:
        return c.request("GET", path)


def test_two_instances_share_what_one_stored(tmp_path, redis_server):
    script = Script()
    script["/s"] = (200, [(b"Cache-Control", b"max-age=600"), (b"ETag", b'"s"')],
                    bytes(range(256)) * 8)  # binary body, stored as it is
    with Origin(script) as origin, \
            instance(tmp_path, "a", config(origin.url, redis_server.url)) as a, \
            instance(tmp_path, "b", config(origin.url, redis_server.url)) as b:
        first = get(a.port, "/s")
        assert first.header(b"cache-status").endswith(b"stored")
        assert wait_until(lambda: redis_server.command("DBSIZE").strip() not in (b"0", b":0"))
        r = get(b.port, "/s")
        assert r.status == 200 and r.body == first.body
        assert r.header(b"cache-status").startswith(b"edgeproxy; hit")
        assert script.count("/s") == 1
        # b holds it in memory now: a memory hit does not need Redis.
        redis_server.command("FLUSHALL")
        assert get(b.port, "/s").header(b"cache-status").startswith(b"edgeproxy; hit")
        assert script.count("/s") == 1


def test_a_purge_drops_the_shared_copy(tmp_path, redis_server):
    script = Script()
    script["/p"] = (200, [(b"Cache-Control", b"max-age=600")], b"purge me")
    with Origin(script) as origin, \
            instance(tmp_path, "a", config(origin.url, redis_server.url)) as a, \
            instance(tmp_path, "b", config(origin.url, redis_server.url)) as b:
        get(a.port, "/p")
        conn = http.client.HTTPConnection("127.0.0.1", a.admin_port, timeout=15)
        conn.request("POST", "/cache/purge", body=b'{"prefix": "http://test/"}')
        assert conn.getresponse().status == 200
        conn.close()
        assert wait_until(lambda: redis_server.command("KEYS", "*cache:*").strip()
                          in (b"", b"*0"), 5)
        get(b.port, "/p")  # nothing shared: b goes upstream
        assert script.count("/p") == 2


def test_redis_down_is_a_miss(tmp_path, own_redis):
    script = Script()
    script["/d"] = (200, [(b"Cache-Control", b"max-age=600")], b"still served")
    own_redis.stop()
    with Origin(script) as origin, \
            CliProxy(tmp_path, config(origin.url, own_redis.url)) as a:
        r = get(a.port, "/d")
        assert r.status == 200 and r.body == b"still served"
        r = get(a.port, "/d")  # the memory tier still works
        assert r.header(b"cache-status").startswith(b"edgeproxy; hit")
        assert script.count("/d") == 1
