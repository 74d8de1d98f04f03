"""The path for a read that is one whole bodyless GET head taken without llhttp
(ClientProtocol._whole_head checks it, _whole_head_complete takes it) against llhttp.

Each head is sent twice over a real socket: alone, as one read (the whole-head path, when its
check passes), and with a second request after it in the same write (llhttp, which parses any
read holding more than one head). What reaches the origin and what the client is answered must
be the same both ways: a head the check let through that llhttp reads differently, or refuses,
would show here.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.client import Conn
from tests.support.e2e import mostly, proxy_config, wait_until
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

LIMITS = """
max_request_line = 200
max_header_size = 600
max_header_count = 40
"""

NEXT = b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def origin():
    with Origin() as o:
        yield o


@pytest.fixture(scope="module")
def proxy(origin):
    with InProcessProxy(proxy_config(origin.url, server=LIMITS)) as p:
        yield p


def head(target: bytes = b"/x", fields: bytes = b"Host: t\r\n") -> bytes:
    return b"GET %s HTTP/1.1\r\n%s\r\n" % (target, fields)


def numbered(n: int) -> bytes:
    return b"".join(b"X-F%d: v\r\n" % i for i in range(n))


def server_side(proxy, c: Conn):
    """The proxy's ClientProtocol for the client connection ``c`` (None before it has one)."""
    port = c.sock.getsockname()[1]
    for conn in list(proxy.worker.conns):
        peer = conn.transport.get_extra_info("peername")
        if peer and peer[1] == port:
            return conn
    return None


def _same_either_way(name: bytes, value: bytes, rid: bytes) -> bytes:
    # The request id the proxy made, and the span id of its hop in traceparent, are new for
    # every request.
    if value == rid:
        return b"<request id>"
    if name.lower() == b"traceparent":
        return value[:36] + b"<span id>" + value[52:]
    return value


def exchange(proxy, origin, data: bytes, general: bool):
    """What the origin got for ``data`` (None if nothing), how the client was answered, and
    which path took the head ("whole" or "llhttp"; None once the connection closed)."""
    before = len(origin.requests)
    with Conn(proxy.port) as c:
        c.send(data + NEXT if general else data)
        r = c.response()
        rid = r.header(b"x-request-id")
        parser = None
        if r.header(b"connection") != b"close":
            if general:
                assert c.response().status == 200  # NEXT
            conn = server_side(proxy, c)
            parser = "whole" if conn.whole_heads else "llhttp"
    got = None
    if len(origin.requests) > before:
        req = origin.requests[before]
        got = (req.method, req.url, req.version,
               [(n.lower(), _same_either_way(n, v, rid)) for n, v in req.headers])
    json = r.header(b"content-type") == b"application/json"
    answer = (r.status, r.header(b"connection"), r.json()["error"]["code"] if json else r.body,
              rid if rid in data else None)  # (the client's own X-Request-ID, echoed)
    return got, answer, parser


CASES = [
    # (id, head, whether the whole-head path takes it when it comes alone; None: the
    # answer closes the connection)
    ("plain", head(fields=b"Host: 127.0.0.1:18080\r\nUser-Agent: wrk\r\nAccept: */*\r\n"), True),
    ("no-fields-but-host", head(), True),
    ("whitespace", head(fields=b"Host:t\r\nX-A:   spaced \t \r\nX-B:\tq\r\nX-Empty:\r\n"
                               b"X-Blank: \t \r\nX-In: a  b\r\n"), True),
    ("colons", head(fields=b"Host: t\r\nX-C: a:b::c\r\n"), True),
    ("obs-text", head(fields=b"Host: t\r\nX-Obs: caf\xe9 \x80\xff\r\n"), False),
    ("del-in-value", head(fields=b"Host: t\r\nX-Del: a\x7fb\r\n"), None),
    ("every-printable-byte", head(fields=b"Host: t\r\nX-P: " + bytes(range(0x20, 0x7f))
                                        + b"\t\t" + bytes(range(0x21, 0x7f)) + b"\r\n"), True),
    ("repeated-and-case", head(fields=b"hOsT: t\r\nX-Forwarded-For: 10.0.0.1\r\n"
                                      b"x-forwarded-for: 10.0.0.2\r\nVia: 1.0 a\r\nVIA: 1.1 b\r\n"
                                      b"Cookie: a=1\r\nCookie: b=2\r\n"), True),
    ("request-id", head(fields=b"Host: t\r\nX-Request-ID: abc-123\r\n"), True),
    ("bad-request-id", head(fields=b"Host: t\r\nX-Request-ID: a b\r\n"), True),
    ("hop-by-hop", head(fields=b"Host: t\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n"
                               b"Keep-Alive: timeout=5\r\nTE: trailers\r\n"
                               b"Proxy-Connection: keep-alive\r\n"), False),
    ("hop-by-hop-without-connection-tokens",
     head(fields=b"Host: t\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X\r\n"
                 b"Proxy-Authorization: Basic eDp5\r\n"), True),
    ("connection-keep-alive", head(fields=b"Host: t\r\nConnection: keep-alive\r\n"), True),
    ("connection-keep-alive-any-case", head(fields=b"Host: t\r\nconnection: Keep-Alive\r\n"),
     True),
    ("proxy-connection-keep-alive", head(fields=b"Host: t\r\nProxy-Connection: keep-alive\r\n"),
     True),
    ("connection-keep-alive-trailing-space",
     head(fields=b"Host: t\r\nConnection: keep-alive \r\n"), False),
    ("connection-empty", head(fields=b"Host: t\r\nConnection:\r\n"), False),
    ("connection-other-token", head(fields=b"Host: t\r\nConnection: X-Drop\r\nX-Drop: 1\r\n"),
     False),
    ("proxy-connection-close", head(fields=b"Host: t\r\nProxy-Connection: close\r\n"), None),
    ("connection-close", head(fields=b"Host: t\r\nConnection: close\r\n"), None),
    ("connection-close-in-a-list", head(fields=b"Host: t\r\nConnection: keep-alive, CLOSE\r\n"),
     None),
    ("forwarded-fields", head(fields=b"Host: t\r\nX-Forwarded-Proto: https\r\n"
                                     b"X-Forwarded-Host: h\r\nX-Real-IP: 1.2.3.4\r\n"
                                     b"Forwarded: for=1.2.3.4\r\n"), True),
    ("trace-context", head(fields=b"Host: t\r\ntraceparent: "
                                  b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
                                  b"tracestate: a=1\r\ntracestate: b=2\r\n"), True),
    ("query-dots-percent", head(target=b"/a/./b/../c%2fd%41?x=1&y=%20"), True),
    ("absolute-form", head(target=b"http://other.example/abs?q=1"), False),
    ("target-beyond-pchar", head(target=b"/a|b^c{d}"), False),
    ("target-with-fragment", head(target=b"/a?b#frag"), False),
    ("expect-continue", head(fields=b"Host: t\r\nExpect: 100-continue\r\n"), True),
    ("expect-other", head(fields=b"Host: t\r\nExpect: something\r\n"), None),
    ("no-host", head(fields=b""), None),
    ("two-hosts", head(fields=b"Host: t\r\nHost: u\r\n"), None),
    ("bad-host", head(fields=b"Host: t u\r\n"), None),
    ("content-length-zero", head(fields=b"Host: t\r\nContent-Length: 0\r\n"), False),
    ("upgrade-without-connection", head(fields=b"Host: t\r\nUpgrade: websocket\r\n"), False),
    # ClientProtocol's WHOLE_FIELDS (32) and the configured limits, on either side.
    ("fields-at-whole-fields", head(fields=b"Host: t\r\n" + numbered(31)), True),
    ("fields-over-whole-fields", head(fields=b"Host: t\r\n" + numbered(32)), False),
    ("fields-at-count-limit", head(fields=b"Host: t\r\n" + numbered(39)), False),
    ("fields-over-count-limit", head(fields=b"Host: t\r\n" + numbered(40)), None),
    # on_header counts name + value + 4 per field: Host: t is 9, X-Big: ... is 9 + n.
    ("size-at-limit", head(fields=b"Host: t\r\nX-Big: " + b"v" * 582 + b"\r\n"), True),
    ("size-over-limit", head(fields=b"Host: t\r\nX-Big: " + b"v" * 583 + b"\r\n"), None),
    ("size-at-limit-with-whitespace",
     head(fields=b"Host: t\r\nX-Big:  \t" + b"v" * 580 + b" \r\n"), True),
    ("target-at-limit", head(target=b"/" + b"a" * 199), True),
    ("target-over-limit", head(target=b"/" + b"a" * 200), None),
    # What llhttp refuses: the check sends it there.
    ("space-in-name", head(fields=b"Host: t\r\nX-Request-ID: early\r\nBad Name: 1\r\n"), None),
    ("space-before-colon", head(fields=b"Host : t\r\n"), None),
    ("empty-name", head(fields=b"Host: t\r\n: v\r\n"), None),
    ("no-colon", head(fields=b"Host: t\r\nX-None\r\n"), None),
    ("control-byte", head(fields=b"Host: t\r\nX: a\x01b\r\n"), None),
    ("obs-fold", head(fields=b"Host: t\r\nX: a\r\n b\r\n"), None),
    ("bare-lf", head(fields=b"Host: t\nX: 1\r\n"), None),
    ("bare-cr", head(fields=b"Host: t\r\nX: a\rb\r\n"), None),
    ("tab-in-target", head(target=b"/a\tb"), None),
    ("two-spaces-before-target", b"GET  /x HTTP/1.1\r\nHost: t\r\n\r\n", False),
]


@pytest.mark.parametrize("data, fast", [pytest.param(d, f, id=i) for i, d, f in CASES])
def test_one_read_and_a_pipelined_read_are_parsed_alike(proxy, origin, data, fast):
    alone = exchange(proxy, origin, data, general=False)
    pipelined = exchange(proxy, origin, data, general=True)
    assert alone[:2] == pipelined[:2]
    if fast is not None:  # (None: an answer that closes the connection)
        assert alone[2] == ("whole" if fast else "llhttp")
        assert pipelined[2] == "llhttp"


@pytest.mark.parametrize("bad", [b"\x00", b"\x08", b"\x1f", b"\n", b"\x7f", b"\x80", b"\xff"])
def test_a_byte_outside_the_check_anywhere_in_a_value_leaves_the_head_to_llhttp(
        proxy, origin, bad):
    # The value check looks at eight bytes at a time: a bad byte in any place of a word, and
    # in the bytes after the last whole word, must be seen.
    for at in range(27):
        value = b"v" * at + bad + b"w" * (26 - at)
        alone = exchange(proxy, origin, head(fields=b"Host: t\r\nX-V: " + value + b"\r\n"),
                         general=False)
        assert alone[2] in ("llhttp", None), at


def test_the_plain_head_reaches_the_origin_field_for_field(proxy, origin):
    # Not only alike both ways: right (a split both paths shared would pass the test above).
    got, answer, parser = exchange(
        proxy, origin, head(b"/p?q=1", b"Host: t\r\nX-A:  a b \r\nX-Empty:\r\nAccept: */*\r\n"),
        general=False)
    assert parser == "whole" and answer == (200, None, b"/p?q=1", None)
    method, url, version, headers = got
    assert (method, url, version) == (b"GET", b"/p?q=1", "1.1")
    assert (b"x-a", b"a b ") in headers and (b"x-empty", b"") in headers
    assert (b"accept", b"*/*") in headers and (b"host", b"t") in headers


def test_one_connection_moves_between_the_paths(proxy, origin):
    with Conn(proxy.port) as c:
        conn = None
        whole = 0
        for data, body, fast in [
            (head(b"/1"), b"/1", True),
            (b"POST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", b"hello", False),
            (head(b"/3"), b"/3", True),
            (b"POST /4 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n0\r\n\r\n", b"abc", False),
            (head(b"/5"), b"/5", True),
            (head(b"/6") + head(b"/7"), b"/6", False),
        ]:
            c.send(data)
            r = c.response()
            assert (r.status, r.body) == (200, body)
            conn = conn or server_side(proxy, c)
            whole += fast
            assert conn.whole_heads == whole
        assert c.response().body == b"/7"


def test_a_head_split_across_reads_goes_to_llhttp(proxy, origin):
    data = head(b"/split", b"Host: t\r\nX-A: 1\r\n")
    with Conn(proxy.port) as c:
        c.send(data[:20])  # (the request line without its LF)
        assert wait_until(lambda: getattr(server_side(proxy, c), "in_head", False), 5)
        c.send(data[20:])
        r = c.response()
        assert (r.status, r.body) == (200, b"/split")
        assert server_side(proxy, c).whole_heads == 0
        assert (b"X-A", b"1") in origin.requests[-1].headers


def test_after_connection_close_a_later_read_is_not_processed():
    # RFC 9112 §9.6. The request that closes came alone; the next one comes in a read of its
    # own while the first is still being answered: it is not processed.
    with Origin(handler=lambda req: (ok(req.url), 0.5)) as origin, \
            InProcessProxy(proxy_config(origin.url)) as proxy, Conn(proxy.port) as c:
        c.send(head(b"/first", b"Host: t\r\nConnection: close\r\n"))
        assert wait_until(lambda: len(origin.requests) == 1, 5)
        c.send(head(b"/later"))
        r = c.response()
        assert (r.status, r.body, r.header(b"connection")) == (200, b"/first", b"close")
        assert c.closed()
        assert [req.url for req in origin.requests] == [b"/first"]


def test_a_reload_s_limits_apply_to_the_next_whole_head_on_an_open_connection(origin):
    # The whole-head path checks the head against the limits itself: they must be the
    # reloaded ones from the first message after the reload, as for llhttp.
    big = head(fields=b"Host: t\r\nX-Big: " + b"v" * 300 + b"\r\n")
    with InProcessProxy(proxy_config(origin.url, server=LIMITS)) as p:
        with Conn(p.port) as c:
            c.send(big)
            assert c.response().status == 200
            p.swap(proxy_config(origin.url, server=LIMITS.replace("600", "256")))
            c.send(big)
            assert c.response().status == 431


# Heads near the edge of what the whole-head path takes: mostly heads it could take, each with
# a chance of one byte or field on the wrong side of its check, so that both sides are probed.
_TARGET = st.tuples(
    st.lists(st.sampled_from([b"a", b"Z", b"9", b"-", b"~", b"%2F", b"%zz", b"?", b"=", b"&",
                              b"@", b":", b"!", b".", b"/", b"..", b"(", b"*", b";"]),
             max_size=6).map(b"".join),
    mostly(st.just(b""), st.sampled_from([b"#", b"|", b"^", b"{", b"\\", b'"', b"<", b"\x7f",
                                          b"\x80", b"\x00", b"\t", b" ", b"\r", b"\n"])),
).map(lambda t: b"/" + t[0] + t[1])
_NAME = mostly(
    st.sampled_from([b"X-A", b"x-a", b"Cookie", b"Accept", b"X-Request-ID", b"Via", b"TE",
                    b"X-Forwarded-For", b"Keep-Alive", b"X!#$%&'*+.^_`|~", b"Expect"]),
    st.sampled_from([b"Connection", b"Proxy-Connection", b"Upgrade", b"Host", b"X A", b"X\x80",
                    b"X\x7f", b"X:Y", b"", b" X", b"X\t"]))
_GOOD_VALUE = st.lists(st.sampled_from(
    [b"keep-alive", b"Keep-Alive", b"close", b"v", b" ", b"\t", b",", b":", b"0", b"5",
     b"chunked", b"100-continue", b"abc-123", b"10.0.0.1", b"~!\"#$%&'()*+"]),
    max_size=3).map(b"".join)
_VALUE = st.tuples(
    _GOOD_VALUE,
    mostly(st.just(b""), st.sampled_from([b"\x7f", b"\x80", b"\xff", b"\x00", b"\x01",
                                          b"\x1f", b"\r", b"\n", b"\r\n ", b"\r\nX"])),
    _GOOD_VALUE,
).map(b"".join)


# Framing fields, with values that never leave the request waiting on a body it does not send.
_FRAMING = st.tuples(st.sampled_from([b"Content-Length", b"Transfer-Encoding"]),
                     st.sampled_from([b"0", b"", b"00", b"0 ", b"-1", b"abc", b"gzip"]))


@settings(max_examples=300, deadline=None)
@given(target=_TARGET, fields=st.lists(mostly(st.tuples(_NAME, _VALUE), _FRAMING), max_size=4),
       with_host=mostly(st.just(True), st.just(False)))
def test_any_head_is_parsed_alike_alone_and_pipelined(proxy, origin, target, fields, with_host):
    data = head(target, (b"Host: t\r\n" if with_host else b"")
                + b"".join(b"%s: %s\r\n" % field for field in fields))
    alone = exchange(proxy, origin, data, general=False)
    pipelined = exchange(proxy, origin, data, general=True)
    assert alone[:2] == pipelined[:2]
