"""Compression at the edge (engine/filters/compression.py) against a real proxy and origin:
negotiation with q-values, what is never compressed, validators, streaming."""

import socket
import time
import zlib

import brotli
import orjson
import pytest
import zstandard

from tests.support.client import Conn
from tests.support.e2e import proxy_config
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

BODY = orjson.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(400)])
JSON = (b"Content-Type", b"application/json")


def origin_answer(req):
    path = req.url.decode()
    if path == "/small":
        return ok(b'{"a":1}', headers=[JSON])
    if path == "/png":
        return ok(BODY, headers=[(b"Content-Type", b"image/png")])
    if path == "/encoded":
        return ok(zlib.compress(BODY), headers=[JSON, (b"Content-Encoding", b"deflate")])
    if path == "/no-transform":
        return ok(BODY, headers=[JSON, (b"Cache-Control", b"public, no-transform")])
    if path == "/etag":
        return ok(BODY, headers=[JSON, (b"ETag", b'"v1"'), (b"Accept-Ranges", b"bytes")])
    if path == "/empty":
        return b"HTTP/1.1 204 No Content\r\n\r\n"
    if path == "/not-modified":
        return b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"
    if path == "/chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(BODY[i:i + 5000]), BODY[i:i + 5000])
                          for i in range(0, len(BODY), 5000))
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    if path == "/slow":
        # The first part, then nothing: the client must get it compressed before the end.
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked"
                b"\r\n\r\n" + b"%x\r\n%s\r\n" % (2000, b"x" * 2000), "hang")
    return ok(BODY, headers=[JSON])


DECODE = {
    b"gzip": lambda b: zlib.decompress(b, 31),
    b"br": brotli.decompress,
    b"zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
}


@pytest.fixture(scope="module")
def edge():
    with Origin(origin_answer) as origin, InProcessProxy(proxy_config(
            origin.url, extra="[routes.compression]\n")) as p:
        yield p


@pytest.mark.parametrize("accept,coding", [
    pytest.param(b"gzip", b"gzip", id="gzip"),
    pytest.param(b"x-gzip", b"gzip", id="x-gzip-is-gzip"),
    pytest.param(b"br", b"br", id="br"),
    pytest.param(b"zstd", b"zstd", id="zstd"),
    pytest.param(b"gzip, deflate, br, zstd", b"zstd", id="ties-go-to-preference"),
    pytest.param(b"gzip;q=1, br;q=0.8", b"gzip", id="highest-q"),
    pytest.param(b"br;q=0, zstd;q=0, *", b"gzip", id="star-covers-the-rest"),
    pytest.param(b"GZIP;Q=0.5", b"gzip", id="case-insensitive"),
    pytest.param(b"*;q=0", None, id="star-refuses-all"),
    pytest.param(b"gzip;q=0", None, id="q0-refuses"),
    pytest.param(b"identity, gzip;q=0.5", None, id="identity-preferred"),
    pytest.param(b"deflate", None, id="nothing-we-have"),
    pytest.param(b"gzip;q=bogus", None, id="bad-q-is-0"),
    pytest.param(None, None, id="no-accept-encoding"),
])
def test_negotiation(edge, accept, coding):
    headers = [(b"Accept-Encoding", accept)] if accept is not None else []
    with Conn(edge.port) as c:
        r = c.request("GET", "/json", headers=headers)
    assert r.status == 200
    assert r.header(b"vary") == b"Accept-Encoding"  # eligible: caches must key on it
    assert r.header(b"content-encoding") == coding
    if coding is None:
        assert r.body == BODY
    else:
        assert r.header(b"content-length") is None
        assert r.header(b"transfer-encoding") == b"chunked"
        assert DECODE[coding](r.body) == BODY
        assert len(r.body) < len(BODY) // 3


@pytest.mark.parametrize("method,path,headers", [
    pytest.param("HEAD", "/json", [], id="head"),
    pytest.param("GET", "/small", [], id="under-min-length"),
    pytest.param("GET", "/png", [], id="type-not-listed"),
    pytest.param("GET", "/encoded", [], id="already-encoded"),
    pytest.param("GET", "/no-transform", [], id="no-transform"),
    pytest.param("GET", "/json", [(b"Range", b"bytes=0-10")], id="range-request"),
    pytest.param("GET", "/empty", [], id="204"),
    pytest.param("GET", "/not-modified", [], id="304"),
])
def test_never_compressed(edge, method, path, headers):
    with Conn(edge.port) as c:
        r = c.request(method, path, headers=[(b"Accept-Encoding", b"gzip, br, zstd")] + headers)
    assert r.header(b"content-encoding") in (None, b"deflate")
    if path == "/encoded":
        assert zlib.decompress(r.body) == BODY  # relayed as the upstream encoded it


def test_strong_etag_is_made_weak_and_ranges_no_longer_advertised(edge):
    with Conn(edge.port) as c:
        r = c.request("GET", "/etag", headers=[(b"Accept-Encoding", b"gzip")])
        plain = c.request("GET", "/etag")
    assert r.header(b"etag") == b'W/"v1"'
    assert r.header(b"accept-ranges") is None
    assert plain.header(b"etag") == b'"v1"'
    assert plain.header(b"accept-ranges") == b"bytes"


def test_a_chunked_upstream_answer_is_compressed_as_it_streams(edge):
    with Conn(edge.port) as c:
        r = c.request("GET", "/chunked", headers=[(b"Accept-Encoding", b"br")])
    assert r.header(b"content-encoding") == b"br"
    assert brotli.decompress(r.body) == BODY


def test_each_upstream_chunk_reaches_the_client_before_the_body_ends(edge):
    sock = socket.create_connection(("127.0.0.1", edge.port), timeout=5)
    try:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
        data = b""
        text = b""
        deadline = time.monotonic() + 5
        while len(text) < 2000 and time.monotonic() < deadline:
            data += sock.recv(65536)
            head, sep, rest = data.partition(b"\r\n\r\n")
            if not sep:
                continue
            assert b"Content-Encoding: gzip" in head
            # de-chunk what has arrived so far
            body, pos = b"", 0
            while True:
                nl = rest.find(b"\r\n", pos)
                if nl < 0:
                    break
                size = int(rest[pos:nl], 16)
                if len(rest) < nl + 2 + size + 2:
                    break
                body += rest[nl + 2:nl + 2 + size]
                pos = nl + 2 + size + 2
            text = zlib.decompressobj(31).decompress(body)
        assert text == b"x" * 2000, "the first chunk was held back by the encoder"
    finally:
        sock.close()


def test_a_local_answer_is_compressed_whole():
    config = proxy_config("http://127.0.0.1:1", extra="""
[[routes]]
name = "doc"
paths = ["/doc"]
[routes.static]
body = "%s"
content_type = "text/html"
[routes.compression]
""" % ("<p>hello</p>" * 200))
    with InProcessProxy(config) as p, Conn(p.port) as c:
        r = c.request("GET", "/doc", headers=[(b"Accept-Encoding", b"gzip")])
    assert r.header(b"content-encoding") == b"gzip"
    assert int(r.header(b"content-length")) == len(r.body)
    assert zlib.decompress(r.body, 31) == b"<p>hello</p>" * 200
