"""The static_files route kind (engine/filters/static_files.py) on a real proxy over a real
directory: validators and conditional requests, ranges, index, precompressed siblings,
streaming large files under back-pressure, and a path traversal attack list."""

import gzip
import os
import socket
import time
import zlib

import brotli
import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from tests.support.client import Conn
from tests.support.e2e import proxy_config
from tests.support.proxy import InProcessProxy

SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT"
APP_JS = b"console.log('app');\n" * 10
CSS = b"body { color: red; }\n" * 200
BIG = os.urandom(3 * 1024 * 1024 + 17)
BIG_TEXT = b"".join(b"line %d of a large text file\n" % i for i in range(40000))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("static")
    root = base / "root"
    outside = base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (root / "index.html").write_bytes(b"<h1>home</h1>")
    (root / "app.js").write_bytes(APP_JS)
    (root / "style.css").write_bytes(CSS)
    (root / "style.css.gz").write_bytes(gzip.compress(CSS))
    (root / "style.css.br").write_bytes(brotli.compress(CSS))
    (root / "stale.css").write_bytes(CSS)
    (root / "stale.css.gz").write_bytes(gzip.compress(b"old"))
    os.utime(root / "stale.css.gz", (1_000_000_000, 1_000_000_000))  # older than the file
    (root / "big.bin").write_bytes(BIG)
    (root / "big.txt").write_bytes(BIG_TEXT)
    (root / "sub" / "index.html").write_bytes(b"<h1>sub</h1>")
    (root / ".env").write_bytes(SECRET)
    (root / "link_out").symlink_to(outside / "secret.txt")
    (root / "dir_link").symlink_to(outside)
    (root / "link_in.js").symlink_to(root / "app.js")
    config = proxy_config("http://127.0.0.1:1", paths='["/api/*"]', extra=f"""
[[routes]]
name = "static"
paths = ["/static/*"]
strip_prefix = true
[routes.static_files]
root = "{root}"

[[routes]]
name = "assets"
paths = ["/assets/*"]
strip_prefix = true
[routes.static_files]
root = "{root}"
expires = "365d"
precompressed = false
[routes.compression]
""")
    with InProcessProxy(config) as p:
        yield p


def get(p, path, headers=(), method="GET"):
    with Conn(p.port) as c:
        return c.request(method, path, headers=list(headers))


def test_a_file_with_type_validators_and_cache_control(site):
    r = get(site, "/static/app.js")
    assert r.status == 200 and r.body == APP_JS
    assert r.header(b"content-type") == b"text/javascript; charset=utf-8"
    assert r.header(b"etag").startswith(b'"')
    assert r.header(b"last-modified").endswith(b"GMT")
    assert r.header(b"cache-control") == b"no-cache"
    assert r.header(b"accept-ranges") == b"bytes"
    assert int(r.header(b"content-length")) == len(APP_JS)


def test_expires_sets_max_age_and_expires(site):
    r = get(site, "/assets/app.js")
    assert r.header(b"cache-control") == b"max-age=31536000"
    assert r.header(b"expires").endswith(b"GMT")


def test_head_states_the_length_without_a_body(site):
    r = get(site, "/static/big.bin", method="HEAD")
    assert r.status == 200 and r.body == b""
    assert int(r.header(b"content-length")) == len(BIG)


def test_a_large_file_streams_under_back_pressure(site):
    with socket.create_connection(("127.0.0.1", site.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"GET /static/app.js HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)  # the proxy's writes fill the socket and its buffer: it pauses
        held = site.call(lambda: max(c.transport.get_write_buffer_size()
                                     for c in site.worker.conns))
        assert held <= 512 * 1024, "the file was read ahead of what the client takes"
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            if data.endswith(APP_JS) and len(data) > len(BIG):
                break
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(BIG) in head
    assert rest[:len(BIG)] == BIG
    assert rest[len(BIG):].startswith(b"HTTP/1.1 200")  # the pipelined request after it


def test_a_large_text_file_is_compressed_as_it_streams(site):
    r = get(site, "/assets/big.txt", [(b"Accept-Encoding", b"gzip")])
    assert r.header(b"content-encoding") == b"gzip"
    assert r.header(b"transfer-encoding") == b"chunked"
    assert r.header(b"etag").startswith(b'W/"')
    assert zlib.decompress(r.body, 31) == BIG_TEXT


@pytest.mark.parametrize("headers,status", [
    pytest.param(lambda r: [(b"If-None-Match", r.header(b"etag"))], 304, id="inm-match"),
    pytest.param(lambda r: [(b"If-None-Match", b'"x", W/' + r.header(b"etag"))], 304,
                 id="inm-weak-match"),
    pytest.param(lambda r: [(b"If-None-Match", b"*")], 304, id="inm-star"),
    pytest.param(lambda r: [(b"If-None-Match", b'"other"')], 200, id="inm-miss"),
    pytest.param(lambda r: [(b"If-Modified-Since", r.header(b"last-modified"))], 304,
                 id="ims-same"),
    pytest.param(lambda r: [(b"If-Modified-Since", b"Sat, 01 Jan 2000 00:00:00 GMT")], 200,
                 id="ims-older"),
    pytest.param(lambda r: [(b"If-Modified-Since", b"not a date")], 200, id="ims-invalid"),
    pytest.param(lambda r: [(b"If-None-Match", b'"other"'),
                            (b"If-Modified-Since", r.header(b"last-modified"))], 200,
                 id="inm-wins-over-ims"),
    pytest.param(lambda r: [(b"If-Match", b'"other"')], 412, id="if-match-miss"),
    pytest.param(lambda r: [(b"If-Match", r.header(b"etag"))], 200, id="if-match-hit"),
    pytest.param(lambda r: [(b"If-Unmodified-Since", b"Sat, 01 Jan 2000 00:00:00 GMT")], 412,
                 id="ius-older"),
])
def test_conditional_requests(site, headers, status):
    first = get(site, "/static/app.js")
    r = get(site, "/static/app.js", headers(first))
    assert r.status == status
    if status == 304:
        assert r.body == b"" and r.header(b"etag") == first.header(b"etag")
        assert r.header(b"cache-control") == b"no-cache"


@pytest.mark.parametrize("spec,status,content_range,body", [
    pytest.param(b"bytes=0-9", 206, b"bytes 0-9/200", APP_JS[:10], id="first-ten"),
    pytest.param(b"bytes=190-", 206, b"bytes 190-199/200", APP_JS[190:], id="open-ended"),
    pytest.param(b"bytes=-5", 206, b"bytes 195-199/200", APP_JS[-5:], id="suffix"),
    pytest.param(b"bytes=150-999", 206, b"bytes 150-199/200", APP_JS[150:], id="clamped"),
    pytest.param(b"bytes=200-", 416, b"bytes */200", None, id="past-the-end"),
    pytest.param(b"bytes=-0", 416, b"bytes */200", None, id="empty-suffix"),
    pytest.param(b"bytes=0-1,5-6", 200, None, APP_JS, id="several-ranges-ignored"),
    pytest.param(b"bytes=5-1", 200, None, APP_JS, id="invalid-ignored"),
    pytest.param(b"items=0-1", 200, None, APP_JS, id="other-unit-ignored"),
])
def test_single_byte_ranges(site, spec, status, content_range, body):
    assert len(APP_JS) == 200
    r = get(site, "/static/app.js", [(b"Range", spec)])
    assert r.status == status
    assert r.header(b"content-range") == content_range
    if body is not None:
        assert r.body == body


def test_if_range_and_a_range_of_a_streamed_file(site):
    etag = get(site, "/static/big.bin", method="HEAD").header(b"etag")
    hit = get(site, "/static/big.bin", [(b"Range", b"bytes=1000-1999999"), (b"If-Range", etag)])
    stale = get(site, "/static/app.js", [(b"Range", b"bytes=0-1"), (b"If-Range", b'"old"')])
    assert hit.status == 206 and hit.body == BIG[1000:2000000]
    assert stale.status == 200 and stale.body == APP_JS


def test_index_and_directory_redirect(site):
    assert get(site, "/static/").body == b"<h1>home</h1>"
    r = get(site, "/static/sub")
    assert r.status == 301 and r.header(b"location") == b"/static/sub/"
    assert get(site, "/static/sub/").body == b"<h1>sub</h1>"


@pytest.mark.parametrize("accept,coding,decode", [
    pytest.param(b"br, gzip", b"br", brotli.decompress, id="br"),
    pytest.param(b"gzip", b"gzip", gzip.decompress, id="gzip"),
    pytest.param(b"gzip;q=0.5, br;q=0.1", b"gzip", gzip.decompress, id="by-q"),
    pytest.param(b"identity", None, lambda b: b, id="identity"),
])
def test_precompressed_siblings(site, accept, coding, decode):
    r = get(site, "/static/style.css", [(b"Accept-Encoding", accept)])
    assert r.status == 200
    assert r.header(b"content-encoding") == coding
    assert r.header(b"vary") == b"Accept-Encoding"
    assert decode(r.body) == CSS
    assert r.header(b"content-type") == b"text/css; charset=utf-8"


def test_a_sibling_older_than_its_file_is_not_served(site):
    r = get(site, "/static/stale.css", [(b"Accept-Encoding", b"gzip")])
    assert r.header(b"content-encoding") is None and r.body == CSS


def test_precompressed_variants_have_their_own_etag(site):
    plain = get(site, "/static/style.css").header(b"etag")
    br = get(site, "/static/style.css", [(b"Accept-Encoding", b"br")]).header(b"etag")
    assert plain != br


ATTACKS = [
    "/static/../outside/secret.txt",
    "/static/%2e%2e/outside/secret.txt",
    "/static/%2e%2e%2foutside%2fsecret.txt",
    "/static/..%2f..%2foutside%2fsecret.txt",
    "/static/%2E%2E%2F%2E%2E%2Foutside/secret.txt",
    "/static/sub/..%2f..%2foutside%2fsecret.txt",
    "/static/%252e%252e%252foutside%252fsecret.txt",
    "/static/..%5c..%5coutside%5csecret.txt",
    "/static/app.js%00.png",
    "/static/%00",
    "/static/link_out",
    "/static/dir_link/secret.txt",
    "/static/.env",
    "/static/%2eenv",
    "/static/%2fetc%2fpasswd",
    "/static//etc/passwd",
    "/static/./../outside/secret.txt",
    "/static/sub/../../outside/secret.txt",
]


@pytest.mark.parametrize("path", ATTACKS)
def test_path_traversal_is_impossible(site, path):
    r = get(site, path)
    assert r.status in (400, 404), (r.status, r.body[:80])
    assert SECRET not in r.body and b"root:" not in r.body


def test_a_symlink_inside_the_root_is_served(site):
    assert get(site, "/static/link_in.js").body == APP_JS


def test_only_get_and_head(site):
    r = get(site, "/static/app.js", method="DELETE")
    assert r.status == 405 and r.header(b"allow") == b"GET, HEAD"


def test_a_missing_root_is_a_config_error(tmp_path):
    text = proxy_config("http://127.0.0.1:1", extra=f"""
[[routes]]
name = "s"
paths = ["/s/*"]
[routes.static_files]
root = "{tmp_path / 'nope'}"
""")
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert any(p == "routes[1].static_files.root" and "not a directory" in m
               for p, m in info.value.errors)
