"""The path for a response taken without llhttp (UpstreamConnection._take_response: a whole,
strict head framed by one Content-Length that persists) against llhttp.

Each answer is served twice by a real origin: in one write (the path without llhttp, when its
check passes) and with its head cut in two writes 30 ms apart (llhttp, which takes any head that
arrives in pieces). What the client is answered, and whether the upstream connection is used
again, must be the same both ways: a head the check let through that llhttp reads, frames or
keeps alive differently would show here.
"""

import socket
import time
import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.upstream.connection import read_buffers_replaced
from tests.support.client import Conn
from tests.support.e2e import mostly, proxy_config
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

PROBE = ok(b"probe")

# A route whose response hooks are all compiled ones that edit a head's lines as they came
# (Chain.response_raw): what llhttp's path gives as pairs must come out the same.
EDITED_ROUTE = """
[[routes]]
name = "edited"
paths = ["/edited/*"]
upstream = "app"
[routes.headers.response]
set = { "X-Served-By" = "edgeproxy" }
add = { "X-Frame-Options" = "DENY" }
remove = ["X-A"]
rename = { "ETag" = "X-Origin-ETag" }
[[routes.rate_limit.limits]]
name = "per-ip"
algorithm = "sliding_counter"
limit = 100000000
window = "1m"
key = ["ip"]

[[routes]]
name = "unvia"
paths = ["/unvia/*"]
upstream = "app"
[routes.headers.response]
remove = ["Via"]
"""


class Answers:
    """What the origin answers a case's request with, whole or cut in two writes."""

    def __init__(self):
        self.answer = b""
        self.split = False

    def closes(self) -> bool:
        # (an answer that says it closes does: a body up to the close must end)
        return b"onnection: close" in self.answer

    def handler(self, req):
        if req.url == b"/probe":
            return PROBE
        if self.split:
            return b""  # (written by on_head)
        return self.answer, "close" if self.closes() else "keep"

    def on_head(self, req, transport):
        if req.url != b"/probe" and self.split:
            answer, closes = self.answer, self.closes()
            transport.write(answer[:5])  # (in the status line: no parser can take it yet)

            def rest():
                if not transport.is_closing():
                    transport.write(answer[5:])
                    if closes:
                        transport.close()
            origin.loop.call_later(0.03, rest)


answers = Answers()
origin = None


@pytest.fixture(scope="module")
def proxy():
    global origin
    with Origin(answers.handler, on_head=answers.on_head) as o:
        origin = o
        # (an answer whose framing never ends is cut by the read timeout, not waited on)
        with InProcessProxy(proxy_config(o.url, upstream="read_timeout = 1.0",
                                         extra=EDITED_ROUTE)) as p:
            yield p


def whole_taken(proxy) -> int:
    """Responses taken without llhttp, summed over the pooled idle connections."""
    return sum(proxy.call(lambda: [c.whole_responses for p in proxy.worker.runtime.pools.values()
                                   for c in p.idle]))


def exchange(proxy, answer: bytes, split: bool, path: bytes = b"/case"):
    """How the client was answered (status line, fields but Date, body, whether it was
    whole), whether the next request went on the same upstream connection, and whether the
    path without llhttp took the answer."""
    answers.answer, answers.split = answer, split
    before = len(origin.requests)
    taken = whole_taken(proxy)
    with Conn(proxy.port) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
        interim = []
        r = c.response()
        while r.status < 200:  # (relayed 1xx, the final answer after them)
            interim.append((r.status, r.reason))
            r = c.response()
        seen = (interim, (r.status, r.reason),
                sorted((n.lower(), v) for n, v in r.headers
                       if n.lower() not in (b"date", b"x-request-id")),
                _without_request_id(r.body), r.complete)
        # (the upstream connection went back to the pool before the answer was relayed)
        whole = whole_taken(proxy) > taken
        if r.header(b"connection") == b"close" or not r.complete:
            return seen, None, whole
        assert c.request("GET", "/probe").body == b"probe"
    case, probe = origin.requests[before], origin.requests[before + 1]
    return seen, case.conn_id == probe.conn_id, whole


def _without_request_id(body: bytes) -> bytes:
    # The proxy's own error bodies name the request, new each time.
    if body.startswith(b'{"error"'):
        err = orjson.loads(body)
        err["error"].pop("request_id", None)
        return orjson.dumps(err)
    return body


def answer(status=b"200 OK", fields=b"Content-Length: 5\r\n", body=b"hello") -> bytes:
    return b"HTTP/1.1 %s\r\n%s\r\n%s" % (status, fields, body)


BIG = bytes(range(256)) * 400

CASES = [
    # (id, answer, whether the path without llhttp takes it when it comes whole)
    ("plain", answer(fields=b"Content-Length: 5\r\nContent-Type: text/plain\r\n"), True),
    ("fields-in-any-case", answer(fields=b"content-length: 5\r\nX-A: 1\r\nx-a: 2\r\n"), True),
    ("whitespace", answer(fields=b"Content-Length:5\r\nX-A:  a b\r\nX-B:\tq\r\n"
                                 b"X-Empty:\r\nX-Blank: \t \r\n"), True),
    # (relayed as sent, a line would keep its trailing whitespace: llhttp's path cuts it)
    ("whitespace-after-a-value", answer(fields=b"Content-Length: 5\r\nX-A: a b \t\r\n"),
     False),
    ("symbols-in-values", answer(fields=b"Content-Length: 5\r\nX-S: ~!\"#$%&'()*+,-./:;<=>?@[]\r\n"),
     True),
    ("reason-phrase", answer(status=b"201 Made It"), True),
    ("empty-reason", answer(status=b"200 "), True),
    ("no-reason", answer(status=b"200"), False),
    ("reason-obs-text", answer(status=b"200 \xe9t\xe9"), False),
    ("not-found", answer(status=b"404 Not Found"), True),
    ("empty-body", answer(fields=b"Content-Length: 0\r\n", body=b""), True),
    ("large-body", answer(fields=b"Content-Length: %d\r\n" % len(BIG), body=BIG), True),
    ("connection-keep-alive", answer(fields=b"Content-Length: 5\r\nConnection: keep-alive\r\n"),
     True),
    ("connection-keep-alive-any-case",
     answer(fields=b"Content-Length: 5\r\nConnection: Keep-Alive \r\n"), True),
    ("connection-close", answer(fields=b"Content-Length: 5\r\nConnection: close\r\n"), False),
    ("connection-tokens", answer(fields=b"Content-Length: 5\r\nConnection: keep-alive, X-D\r\n"
                                        b"X-D: 1\r\n"), False),
    ("proxy-connection", answer(fields=b"Content-Length: 5\r\nProxy-Connection: keep-alive\r\n"),
     False),
    ("upgrade-field", answer(fields=b"Content-Length: 5\r\nUpgrade: h2c\r\n"), False),
    ("http-1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", False),
    ("chunked", answer(fields=b"Transfer-Encoding: chunked\r\n", body=b"5\r\nhello\r\n0\r\n\r\n"),
     False),
    ("length-and-chunked", answer(fields=b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                                  body=b"5\r\nhello\r\n0\r\n\r\n"), False),
    ("two-lengths", answer(fields=b"Content-Length: 5\r\nContent-Length: 5\r\n"), False),
    ("length-with-space", answer(fields=b"Content-Length: 5 \r\n"), False),
    ("length-signed", answer(fields=b"Content-Length: +5\r\n"), False),
    ("length-long", answer(fields=b"Content-Length: 0000000000000000005\r\n"), False),
    ("no-length", answer(fields=b"Connection: close\r\n"), False),
    ("no-content", answer(status=b"204 No Content", fields=b"Content-Length: 0\r\n", body=b""),
     False),
    ("not-modified", answer(status=b"304 Not Modified", fields=b"Content-Length: 5\r\n", body=b""),
     False),
    ("interim-first", b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n" + answer(), False),
    ("bytes-after-the-body", answer() + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", False),
    ("obs-text-value", answer(fields=b"Content-Length: 5\r\nX-O: caf\xe9\r\n"), False),
    ("control-byte", answer(fields=b"Content-Length: 5\r\nX-C: a\x01b\r\n"), False),
    ("obs-fold", answer(fields=b"Content-Length: 5\r\nX-F: a\r\n b\r\n"), False),
    ("space-before-colon", answer(fields=b"Content-Length: 5\r\nX-A : 1\r\n"), False),
    ("bare-lf", answer(fields=b"Content-Length: 5\nX-A: 1\r\n"), False),
    ("empty-name", answer(fields=b"Content-Length: 5\r\n: v\r\n"), False),
    ("no-colon", answer(fields=b"Content-Length: 5\r\nX-A\r\n"), False),
    ("status-600", answer(status=b"600 Odd"), False),
]


@pytest.mark.parametrize("data, whole", [pytest.param(d, w, id=i) for i, d, w in CASES])
def test_a_whole_and_a_split_answer_are_relayed_alike(proxy, data, whole):
    alone = exchange(proxy, data, split=False)
    split = exchange(proxy, data, split=True)
    assert alone[:2] == split[:2]
    assert (alone[2], split[2]) == (whole, False)


# Values that change from one request to the next.
_COUNTED = (b"x-ratelimit-remaining", b"ratelimit")


@pytest.mark.parametrize("data, whole", [pytest.param(d, w, id=i) for i, d, w in CASES
                                         if w or i in ("chunked", "http-1.0", "connection-close")])
def test_an_answer_edited_by_compiled_hooks_is_the_same_whole_and_split(proxy, data, whole):
    # Whole: the hooks edit the lines as they came; split: llhttp's path gives them pairs.
    assert proxy.call(lambda: [len(r.chain.response) > 0 and r.chain.response_raw
                               for r in proxy.worker.runtime.routes
                               if r.name == "edited"]) == [True]
    alone = exchange(proxy, data, split=False, path=b"/edited/case")
    split = exchange(proxy, data, split=True, path=b"/edited/case")
    assert (alone[1], alone[2]) == (split[1], whole)
    fields = [(n, b"*" if n in _COUNTED else v) for n, v in alone[0][2]]
    assert (alone[0][:2], fields, alone[0][3:]) == (
        split[0][:2], [(n, b"*" if n in _COUNTED else v) for n, v in split[0][2]], split[0][3:])
    if alone[0][1][0] == 200:
        names = [n for n, _ in fields]
        assert (b"x-served-by", b"edgeproxy") in fields and (b"x-frame-options", b"DENY") in fields
        assert b"x-a" not in names and b"etag" not in names and b"ratelimit-policy" in names
        assert names.count(b"via") == 1


def test_an_edit_that_removes_via_removes_this_hops_too(proxy):
    # Via is added by the codec after lines are edited, so this edit takes the pairs path.
    assert proxy.call(lambda: [r.chain.response_raw for r in proxy.worker.runtime.routes
                               if r.name == "unvia"]) == [False]
    for split in (False, True):
        seen, _, whole = exchange(proxy, answer(), split=split, path=b"/unvia/case")
        assert whole != split and seen[1] == (200, b"OK")
        assert b"via" not in [n for n, _ in seen[2]]
    seen, _, whole = exchange(proxy, answer(), split=False, path=b"/edited/case")
    assert whole and b"via" in [n for n, _ in seen[2]]


def test_the_plain_answer_reaches_the_client_field_for_field(proxy):
    # Not only alike both ways: right (a split both paths shared would pass the test above).
    (interim, status, fields, body, complete), reused, whole = exchange(
        proxy, answer(status=b"201 Made It",
                      fields=b"Content-Length: 5\r\nX-A:  a b\r\nETag: \"x\"\r\n"), split=False)
    assert whole and reused and complete and not interim
    assert (status, body) == ((201, b"Made It"), b"hello")
    assert (b"x-a", b"a b") in fields and (b"etag", b'"x"') in fields
    assert (b"content-length", b"5") in fields


def test_a_body_in_reads_of_its_own_is_counted_to_its_length(proxy):
    # The head alone, then the body in pieces: each read is relayed as it came, and the
    # response ends at its Content-Length exactly, whatever follows later.
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"

    def write_slowly(req, transport):
        for i, piece in enumerate([head, b"hello", b" ", b"world!"]):
            origin.loop.call_later(0.03 * i, transport.write, piece)

    answers.answer, answers.split = b"", False
    saved = origin.on_head
    origin.on_head = lambda req, transport: (
        write_slowly(req, transport) if req.url == b"/slow" else None)
    try:
        with Conn(proxy.port) as c:
            taken = whole_taken(proxy)
            started = time.monotonic()
            r = c.request("GET", "/slow")
            assert (r.status, r.body, r.complete) == (200, b"hello world!", True)
            assert time.monotonic() - started >= 0.08  # (the pieces did come apart)
            assert whole_taken(proxy) == taken + 1
            assert c.request("GET", "/probe").body == b"probe"
    finally:
        origin.on_head = saved


TEXT = b"".join(b"%06d edgeproxy relays this line\n" % i for i in range(3000))  # ~100 KiB


@pytest.mark.parametrize("extra, accept", [
    pytest.param("", None, id="relayed-as-a-view-of-the-read"),
    pytest.param("[routes.compression]\n", b"gzip", id="an-encoder-gets-bytes"),
    pytest.param("[routes.cache]\n", None, id="a-body-hook-keeps-bytes"),
])
def test_a_large_answer_whose_head_read_holds_most_of_it_arrives_whole(extra, accept):
    # Most of a large answer comes in the read that holds its head: that part goes on as a
    # view of the read, or as bytes where an encoder or a body hook needs them.
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=60\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(TEXT), TEXT))
    headers = ((b"Accept-Encoding", accept),) if accept else ()
    with Origin(lambda req: (answer, "keep")) as o, \
            InProcessProxy(proxy_config(o.url, extra=extra)) as p:
        with Conn(p.port) as c:
            for _ in range(2):  # (the second from the cache, on that route)
                r = c.request("GET", "/big", headers=headers)
                assert (r.status, r.complete) == (200, True)
                body = zlib.decompress(r.body, 31) if accept else r.body
                assert body == TEXT
                assert r.header(b"content-encoding") == (b"gzip" if accept else None)
        # (the whole path took it: one read held the head and most of the body)
        assert whole_taken(p) >= 1


def test_a_body_waiting_for_a_slow_client_is_not_overwritten_by_later_reads():
    # Reads land in a buffer shared by every upstream connection (ReadBuffer). A large body
    # goes to its client as views of that buffer, so while a slow client has not taken them
    # the answers read meanwhile must land elsewhere, not over the bytes still to be sent.
    big = (bytes(range(251)) * ((8 << 20) // 251 + 1))[:8 << 20]
    other = b"B" * 40_000
    bodies = {b"/big": big, b"/other": other}

    def handler(req):
        body = bodies[req.url]
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), "keep"

    with Origin(handler) as o, InProcessProxy(proxy_config(o.url)) as p:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connect: the window)
        slow.settimeout(10)
        try:
            slow.connect(("127.0.0.1", p.port))
            slow.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            got = slow.recv(1024)  # the answer has begun: most of it now waits in the proxy
            replaced = read_buffers_replaced()
            with Conn(p.port) as c:
                for _ in range(20):
                    r = c.request("GET", "/other")
                    assert (r.status, r.body) == (200, other)
            assert read_buffers_replaced() > replaced  # (the case this test is for)
            head_end = -1
            while head_end < 0 or len(got) < head_end + 4 + len(big):
                chunk = slow.recv(1 << 20)
                assert chunk, "the proxy closed before the body ended"
                got += chunk
                head_end = got.find(b"\r\n\r\n")
            assert got[head_end + 4:] == big
        finally:
            slow.close()


# Answers near the edge of what the path without llhttp takes: mostly answers it could take,
# each with a chance of one byte or field on the wrong side of its check.
_STATUS = mostly(st.sampled_from([b"200 OK", b"201 Created", b"404 Not Found", b"200 ",
                                  b"503 Busy", b"299 x\ty"]),
                 st.sampled_from([b"200", b"204 No Content", b"304 Not Modified", b"100 Go",
                                  b"600 X", b"2000 X", b"200 \x80", b"200 a\x01", b"20 X"]))
_NAME = mostly(st.sampled_from([b"X-A", b"ETag", b"Cache-Control", b"Set-Cookie",
                                b"Keep-Alive", b"X!#$%&'*+.^_`|~", b"Content-Type"]),
               st.sampled_from([b"Connection", b"Proxy-Connection", b"Content-Length",
                                b"Transfer-Encoding", b"Upgrade", b"X A", b"X\x80", b"",
                                b" X", b"X\t"]))
_GOOD_VALUE = st.lists(st.sampled_from([b"keep-alive", b"close", b"v", b" ", b"\t", b",",
                                        b"chunked", b"0", b"5", b"~!\"#$%&"]),
                       max_size=3).map(b"".join)
_VALUE = st.tuples(_GOOD_VALUE,
                   mostly(st.just(b""), st.sampled_from([b"\x7f", b"\x80", b"\x00", b"\r",
                                                         b"\n", b"\r\n ", b"\r\nX"])),
                   _GOOD_VALUE).map(b"".join)
_LENGTH = mostly(st.sampled_from([b"Content-Length: 5\r\n"]),
                 st.sampled_from([b"Content-Length: 4\r\n",
                                  b"Content-Length: 5\r\nContent-Length: 5\r\n",
                                  b"Content-Length: 05 \r\n"]))


@settings(max_examples=150, deadline=None)
@given(status=_STATUS, fields=st.lists(st.tuples(_NAME, _VALUE), max_size=3), length=_LENGTH,
       tail=mostly(st.just(b""), st.sampled_from([b"x", b"HTTP/1.1 200 OK\r\n\r\n"])))
def test_any_answer_is_relayed_alike_whole_and_split(proxy, status, fields, length, tail):
    data = answer(status, length + b"".join(b"%s: %s\r\n" % f for f in fields)) + tail
    alone = exchange(proxy, data, split=False)
    split = exchange(proxy, data, split=True)
    assert alone[:2] == split[:2]
