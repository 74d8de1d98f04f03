"""The access log as operators read it: ISO-8601 UTC time, the upstream fields nginx users grep
for, nginx's combined format, and reopening on SIGUSR1 for logrotate."""

import datetime
import hashlib
import os
import re
import signal
import time

import orjson

from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.origin import Origin, closed_port, ok
from tests.support.proxy import InProcessProxy


def config(log, servers: list[str], fmt: str = "json") -> str:
    listed = ", ".join(f'"{s}"' for s in servers)
    return f"""
[server]
access_log = "{log}"
access_log_format = "{fmt}"

[[upstreams]]
name = "app"
servers = [{listed}]

[[routes]]
name = "app-route"
paths = ["/app/*"]
upstream = "app"
"""


def read_lines(log, count: int, timeout: float = 5.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_bytes().splitlines() if log.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{log} has {len(lines)} lines, not {count}")


def test_json_line_has_iso_time_and_the_upstream_fields(tmp_path):
    log = tmp_path / "access.log"
    dead = f"127.0.0.1:{closed_port()}"
    with Origin() as origin:
        live = f"127.0.0.1:{origin.port}"
        with InProcessProxy(config(log, [f"http://{dead}", origin.url])) as proxy:
            with Conn(proxy.port) as c:
                for _ in range(4):
                    assert c.request("GET", "/app/x?q=1").status == 200
                assert c.request("GET", "/nowhere").status == 404
            lines = [orjson.loads(x) for x in read_lines(log, 5)]
    before = datetime.datetime.now(datetime.UTC)
    for line in lines:
        # RFC 3339 UTC, milliseconds: sorts as text, no time zone to guess
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
        when = datetime.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        assert abs((before - when).total_seconds()) < 30
        assert "cache" in line and "consumer" in line and line["consumer"] is None
    proxied, missed = lines[:4], lines[4]
    assert all(x["upstream_status"] == 200 and x["query"] == "q=1" for x in proxied)
    # The connection refused by the first server went to the next one: both are listed, in
    # order, as nginx's $upstream_addr does.
    retried = [x for x in proxied if x["retries"]]
    assert retried, proxied
    assert all(x["upstream_addr"] == f"{dead}, {live}" and x["retries"] == 1 for x in retried)
    assert all(x["upstream_addr"] == live for x in proxied if not x["retries"])
    assert missed["status"] == 404 and missed["upstream_addr"] is None
    assert missed["upstream_status"] is None and missed["retries"] == 0


def test_combined_format_parses_as_nginx_combined(tmp_path):
    log = tmp_path / "access.log"
    with Origin(lambda req: ok(b"hi", status=201)) as origin:
        with InProcessProxy(config(log, [origin.url], fmt="combined")) as proxy:
            with Conn(proxy.port) as c:
                c.request("GET", '/app/a"b?x=1', headers=[
                    (b"User-Agent", b"curl/8.5"), (b"Referer", b"http://example.com/")])
            (line,) = read_lines(log, 1)
    m = re.fullmatch(
        rb'(\S+) - (\S+) \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "([^"]*)" (\d{3}) (\d+) '
        rb'"([^"]*)" "([^"]*)" (.*)', line)
    assert m, line
    ip, user, when, request, status, size, referer, agent, extra = m.groups()
    assert (ip, user, status, size) == (b"127.0.0.1", b"-", b"201", b"%d" % len(b"hi"))
    assert request == rb'GET /app/a\x22b?x=1 HTTP/1.1'  # a quote cannot end the field early
    assert (referer, agent) == (b"http://example.com/", b"curl/8.5")
    datetime.datetime.strptime(when.decode(), "%d/%b/%Y:%H:%M:%S %z")
    fields = dict(kv.split(b"=", 1) for kv in extra.split(b" "))
    assert fields[b"us"] == b"201" and fields[b"retries"] == b"0"
    assert fields[b"ua"] == b'"127.0.0.1:%d"' % origin.port
    assert fields[b"route"] == b"app-route" and len(fields[b"rid"]) == 32


def test_sigusr1_reopens_the_file_after_logrotate_moved_it(tmp_path):
    log = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    with Origin() as origin, CliProxy(tmp_path, config(log, [origin.url])) as proxy:
        with Conn(proxy.port) as c:
            assert c.request("GET", "/app/before").status == 200
            read_lines(log, 1)
            os.rename(log, rotated)  # what logrotate does, then its postrotate script:
            os.kill(proxy.proc.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 5
            while not log.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert c.request("GET", "/app/after").status == 200
            (after,) = read_lines(log, 1)
        assert proxy.proc.poll() is None, "SIGUSR1 must not stop the proxy"
    (before,) = rotated.read_bytes().splitlines()
    assert orjson.loads(before)["path"] == "/app/before"
    assert orjson.loads(after)["path"] == "/app/after"


def test_cache_and_consumer_fields_come_from_their_filters(tmp_path):
    # The cache's decision (as X-Cache would name it) and the authenticated consumer, like
    # nginx's $upstream_cache_status and Kong's consumer in its log.
    log = tmp_path / "access.log"
    with Origin(lambda req: ok(b"cached", headers=[(b"Cache-Control", b"public, max-age=60")])) as o:
        digest = hashlib.sha256(b"k-123").hexdigest()
        cfg = config(log, [o.url]) + f"""
[routes.cache]

[routes.auth]
methods = ["api_key"]

[[consumers]]
name = "mobile"
api_keys = ["sha256:{digest}"]
"""
        with InProcessProxy(cfg) as proxy, Conn(proxy.port) as c:
            for _ in range(2):
                assert c.request("GET", "/app/c", headers=[(b"X-API-Key", b"k-123")]).status == 200
            lines = [orjson.loads(x) for x in read_lines(log, 2)]
    assert [x["cache"] for x in lines] == ["MISS", "HIT"]
    assert [x["consumer"] for x in lines] == ["mobile", "mobile"]
