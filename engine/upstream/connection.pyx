"""One keep-alive connection to an upstream server, parsing its responses.

The usual response, a read that starts with a whole head framed by one Content-Length and
persisting, is taken here without llhttp (``_take_response``): its head is checked strictly
(a subset of what llhttp accepts, read the same way) and split in C, and its body is counted
here, each later read relayed as the bytes object it arrived in. Any other response (chunked,
close-delimited, 1xx, 204/304, a HEAD's, a head split across reads, anything unusual) is
llhttp's (httptools): it validates the head and frames the body, and once it accepted a head
that head is split by the same code (``_split_head``), not field by field in Python callbacks.
Body bytes are never re-serialised (only re-chunked when the client side needs chunked framing).

A cdef class cannot subclass asyncio.Protocol; uvloop and httptools only duck-type protocols, so
this class implements every method they call (eof_received included).
"""

import socket
import struct

import httptools

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp

from engine.wire._common cimport field_bytes, is_tchar, same_lower

# pyx-level cimport: connection.pxd cimports nothing, so the .pxd files have no cycle.
from engine.upstream.call cimport UpstreamCall

cdef object HttpResponseParser = httptools.HttpResponseParser
cdef object HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object HttpParserCallbackError = httptools.HttpParserCallbackError
cdef object HttpParserError = httptools.HttpParserError
cdef bytes _LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset


# Field names most responses carry, spelled as most servers send them: a name found here is
# this object again rather than a new one per response (exact case: names are relayed as sent).
cdef list _COMMON_NAMES = [() for _ in range(32)]
for _name in (b"Date", b"Server", b"Content-Type", b"Content-Length", b"Connection",
              b"Last-Modified", b"ETag", b"Accept-Ranges", b"Cache-Control", b"Vary",
              b"Expires", b"Keep-Alive", b"Transfer-Encoding", b"Content-Encoding",
              b"Location", b"Set-Cookie", b"date", b"server", b"content-type",
              b"content-length", b"connection", b"etag", b"vary", b"cache-control"):
    _COMMON_NAMES[len(_name)] += (_name,)


cdef inline bytes _field_name(const char* p, Py_ssize_t n):
    cdef tuple known
    cdef Py_ssize_t i
    cdef const char* k
    if n < 32:
        known = <tuple>_COMMON_NAMES[n]
        for i in range(len(known)):
            k = PyBytes_AS_STRING(<bytes>known[i])
            if k[0] == p[0] and memcmp(k, p, n) == 0:
                return <bytes>known[i]
    return PyBytes_FromStringAndSize(p, n)


cdef bytes _OK = b"OK"


cdef inline bint _framing_field(const char* name, Py_ssize_t n, const char* v, const char* end,
                                long long* length) noexcept:
    # Whether a field of a head no parser has seen leaves it as _take_response may take it:
    # a Content-Length read into ``length`` (the first, all digits, at most 18 of them); no
    # Transfer-Encoding, Upgrade or Proxy-Connection; Connection only as "keep-alive". Any
    # other field is relayed as it is.
    cdef const char* q
    if n == 14 and same_lower(<const unsigned char*>name,
                              <const unsigned char*>b"content-length", 14):
        if length[0] >= 0 or v == end or end - v > 18:
            return False  # a second one (llhttp checks they agree), or none, or too long
        length[0] = 0
        q = v
        while q < end:
            if not (b"0" <= q[0] <= b"9"):
                return False
            length[0] = length[0] * 10 + (q[0] - 48)
            q += 1
        return True
    if n == 10 and same_lower(<const unsigned char*>name, <const unsigned char*>b"connection", 10):
        while end > v and (end[-1] == b" " or end[-1] == b"\t"):
            end -= 1
        return end - v == 10 and same_lower(<const unsigned char*>v,
                                            <const unsigned char*>b"keep-alive", 10)
    return not (
        (n == 17 and same_lower(<const unsigned char*>name,
                                <const unsigned char*>b"transfer-encoding", 17))
        or (n == 7 and same_lower(<const unsigned char*>name, <const unsigned char*>b"upgrade", 7))
        or (n == 16 and same_lower(<const unsigned char*>name,
                                   <const unsigned char*>b"proxy-connection", 16)))


class _StopParsing(Exception):
    """Raised from a parser callback to stop feeding this response (see ``stop``)."""


@cython.final
cdef class UpstreamConnection:
    def __init__(self, pool):
        self.pool = pool
        self.transport = None
        self.parser = HttpResponseParser(self)
        self.call = None
        self.requests = 0
        self.idle_deadline = 0.0
        self.headers = []
        self.reason = b""
        self.head_done = False
        self.lost = False
        self.skip_body = False
        self.tunnel = False
        self.stop = None
        self.completed = False
        self.body_left = -1

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        self.send = transport.write
        self.pool.opened += 1

    def data_received(self, data):
        cdef UpstreamCall ex
        if self.tunnel:
            (<UpstreamCall?>self.call).tunnel_data(data)
            return
        if self.call is None:
            # An idle connection must not talk; whatever it says, it is not reusable.
            self.close()
            return
        ex = <UpstreamCall>self.call
        ex.read_started()  # what this read produces for the client leaves in one write
        try:
            if self.body_left >= 0:
                self._count_body(data)
            elif (self.head_done or self.head_bytes is not None or self.skip_body
                    or not self._take_response(data)):
                self._parse(data)
        finally:
            ex.read_done()

    cdef int _parse(self, bytes data) except -1:
        # llhttp parses the read (see the module's doc).
        if not self.head_done:
            # The head being parsed: its bytes are split once llhttp accepted them.
            if self.head_bytes is None:
                self.head_bytes = data
            else:
                self.head_bytes = self.head_bytes + data
        try:
            self.parser.feed_data(data)
            if self.completed:
                # The response ended in this read. It is handed over only now, after the
                # parser is done with the read: releasing the connection from inside the
                # callback would let the next request's exchange take whatever else the
                # read held as its response (RFC 9112 §9.3: responses match requests in order).
                self.completed = False
                self._complete(self.keep_alive)
        except HttpParserUpgrade as exc:
            rest = data[exc.args[0]:] if exc.args else b""
            self.tunnel = True
            if rest:
                (<UpstreamCall>self.call).tunnel_data(rest)
        except HttpParserCallbackError as exc:
            stop = self.stop
            self.stop = None
            if stop == "head":
                # HEAD: llhttp cannot be told the body is absent (RFC 9110 §9.3.2), so start
                # a fresh parser for the next response; only the old one knows whether this
                # response let the connection persist (RFC 9112 §9.3).
                reusable = self.parser.should_keep_alive()
                self.parser = HttpResponseParser(self)
                self._complete(reusable)
            elif stop == "unsolicited":
                # Bytes after a complete response, before we asked again: never reuse.
                self.completed = False
                self._complete(False)
            elif stop is None:
                self._fail(exc)
            # stop == "abort": the exchange already failed this connection
        except HttpParserError as exc:
            if self.completed:
                # The response ended in this read and what llhttp refused came after it
                # (bytes after "Connection: close", say): the answer stands, whole, and the
                # connection is not used again (RFC 9112 §9.6), as nginx discards them.
                self.completed = False
                self._complete(False)
            else:
                self._fail(exc)
        return 0

    cdef bint _take_response(self, bytes data) except -1:
        # ``data`` starts a response: take it without llhttp when it holds the whole head,
        # which _split_head finds strict, with a final status that has a body (not 1xx, 204
        # or 304: RFC 9112 §6.3), framed by one Content-Length and persisting, and no more
        # than that body. False: llhttp parses it, as any other response.
        cdef long long length = -1
        cdef Py_ssize_t end = self._split_head(data, 0, &length)
        cdef Py_ssize_t rest
        if end < 0:
            return False
        rest = PyBytes_GET_SIZE(data) - end
        if rest > length:
            return False  # bytes after the response (llhttp's "unsolicited" sees to them)
        self.head_done = True
        self.whole_responses += 1
        if not (<UpstreamCall>self.call).upstream_head(self, self.status, self.reason,
                                                       self.headers):
            return True  # the exchange already dealt with this connection
        self.body_left = length
        if rest:
            # (a bytes copy of the rest, without a slice object's round trip)
            self._count_body(PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + end, rest))
        elif length == 0:
            self.body_left = -1
            self._complete(True)
        return True

    cdef int _count_body(self, bytes data) except -1:
        # A read of a body _take_response took: relayed as it came, up to its Content-Length.
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef bint over = n > self.body_left
        if over:
            data = data[:self.body_left]  # and the rest answers nothing asked: never reuse
            n = self.body_left
        self.body_left -= n
        (<UpstreamCall>self.call).upstream_body(data)
        if self.body_left == 0:
            self.body_left = -1
            self._complete(not over)
        return 0

    def eof_received(self):
        return None  # asyncio.Protocol's default: the transport closes itself

    def connection_lost(self, exc):
        cdef UpstreamCall ex
        self.lost = True
        if self.call is None:
            self.pool.discard(self)
            return
        ex = <UpstreamCall>self.call
        self.call = None
        if self.tunnel:
            ex.tunnel_closed()
        elif self.head_done and ex.close_delimited:
            ex.upstream_complete(self, False)  # RFC 9112 §6.3 rule 8: EOF ends it
        else:
            ex.upstream_failed(self, "bad_gateway", True)

    def pause_writing(self):
        if self.call is not None:
            (<UpstreamCall>self.call).upstream_write_paused(True)

    def resume_writing(self):
        if self.call is not None:
            (<UpstreamCall>self.call).upstream_write_paused(False)

    # -- httptools callbacks

    def on_message_begin(self):
        if self.completed:
            self.stop = "unsolicited"
            raise _StopParsing

    def on_headers_complete(self):
        cdef int status
        if not self._scan_head():
            self.stop = None  # malformed as far as we are concerned: a 502, never relayed
            raise _StopParsing
        status = self.status
        if status < 200 and status != 101:
            # An interim response; the final one follows. RFC 9110 §15.2: 102 and 103 (Early
            # Hints) are relayed to the client. A 100 is not: the proxy answers the client's
            # Expect itself and sends none upstream (§10.1.1), so it answers nothing asked.
            if status != 100:
                (<UpstreamCall?>self.call).upstream_interim(self, status, self.reason,
                                                            self.headers)
            return
        self.head_done = True
        self.head_bytes = None
        if not (<UpstreamCall?>self.call).upstream_head(self, status, self.reason, self.headers):
            self.stop = "abort"
            raise _StopParsing
        if self.skip_body and status != 101:
            self.stop = "head"
            raise _StopParsing

    def on_body(self, bytes body):
        (<UpstreamCall?>self.call).upstream_body(body)

    def on_message_complete(self):
        if self.head_done and not self.tunnel:
            # (llhttp also "completes" a 101: that is where the tunnel starts)
            self.completed = True  # handed over by data_received once the read is parsed
            # (llhttp resets its keep-alive flag for the next message: read it now)
            self.keep_alive = self.parser.should_keep_alive()

    cdef bint _scan_head(self) except -1:
        # The head llhttp has just accepted, from ``head_bytes`` at ``head_from``, split.
        # False if the bytes are not what llhttp accepted.
        cdef Py_ssize_t end
        if self.head_bytes is None:
            return False
        end = self._split_head(self.head_bytes, self.head_from, NULL)
        if end < 0:
            return False
        self.head_from = end
        return True

    cdef Py_ssize_t _split_head(self, bytes head, Py_ssize_t at, long long* length) except -2:
        # The head at ``at`` in ``head``: its status, reason phrase and fields (flat) go to
        # ``status``, ``reason`` and ``headers``; returns where it ends, or -1. Field values
        # lose their surrounding whitespace (RFC 9110 §5.5).
        #
        # With ``length`` NULL, llhttp has accepted the head: it checked the syntax (CRLF line
        # ends, token names with no space before the colon, no obs-fold, no CTLs), so the
        # head is the lines up to the first empty one. Otherwise no parser has seen it and it
        # is taken only when it is all of: "HTTP/1.1", a status of 200-599 other than 204 and
        # 304, a reason phrase and values of is_field_byte, token names, CRLF line ends, one
        # Content-Length of digits (into ``length``), no Transfer-Encoding, Upgrade or
        # Proxy-Connection, and Connection only as "keep-alive". That is a subset of what
        # llhttp accepts, framed and persisting as llhttp would have it (RFC 9112 §6.3, §9.3).
        cdef bint strict = length is not NULL
        cdef const char* base = PyBytes_AS_STRING(head)
        cdef const char* p = base + at
        cdef const char* stop = base + PyBytes_GET_SIZE(head)
        cdef const char* eol
        cdef const char* colon
        cdef const char* v
        cdef const char* ve
        cdef const char* sp
        cdef list fields = []
        cdef int status
        # Status line: HTTP-version SP status-code SP [reason-phrase] (RFC 9112 §4).
        eol = <const char*>memchr(p, b"\r", stop - p)
        if eol is NULL:
            return -1
        sp = <const char*>memchr(p, b" ", eol - p)
        if sp is NULL or eol - sp < 4:
            return -1
        # The version, for Via's received-protocol (RFC 9110 §7.6.3).
        self.http10 = sp - p == 8 and memcmp(p, b"HTTP/1.0", 8) == 0
        # status-code = 3DIGIT (RFC 9112 §4), as llhttp checked: read here, not asked of it
        if not (b"0" <= sp[1] <= b"9" and b"0" <= sp[2] <= b"9" and b"0" <= sp[3] <= b"9"):
            return -1
        status = (sp[1] - 48) * 100 + (sp[2] - 48) * 10 + (sp[3] - 48)
        if strict:
            if (sp - p != 8 or memcmp(p, b"HTTP/1.1", 8) != 0 or status < 200 or status > 599
                    or status == 204 or status == 304 or eol - sp < 5 or sp[4] != b" "
                    or eol + 1 == stop or eol[1] != b"\n"):
                return -1
            if not field_bytes(sp + 5, eol):
                return -1
        self.status = status
        if eol - sp == 7 and sp[5] == b"O" and sp[6] == b"K":
            self.reason = _OK
        else:
            self.reason = PyBytes_FromStringAndSize(sp + 5, eol - sp - 5) if eol - sp > 5 else b""
        p = eol + 2
        while True:
            eol = <const char*>memchr(p, b"\r", stop - p) if p < stop else NULL
            if eol is NULL:
                return -1
            if strict and (eol + 1 == stop or eol[1] != b"\n"):
                return -1
            if eol == p:
                break  # the empty line that ends the head
            if strict:
                colon = p
                while colon < eol and is_tchar(<unsigned char>colon[0]):
                    colon += 1
                if colon == p or colon == eol or colon[0] != b":":
                    return -1
            else:
                colon = <const char*>memchr(p, b":", eol - p)
                if colon is NULL or colon == p:
                    return -1
            v = colon + 1
            ve = eol
            while v < ve and (v[0] == b" " or v[0] == b"\t"):
                v += 1
            if strict and not (field_bytes(v, eol)
                               and _framing_field(p, colon - p, v, eol, length)):
                return -1
            while ve > v and (ve[-1] == b" " or ve[-1] == b"\t"):
                ve -= 1
            fields.append(_field_name(p, colon - p))
            fields.append(PyBytes_FromStringAndSize(v, ve - v))
            p = eol + 2
        if strict and length[0] < 0:
            return -1  # no Content-Length: chunked or close-delimited, llhttp's
        self.headers = fields
        return eol + 2 - base

    # -- exchange side

    cpdef bint usable(self) except -1:
        return not self.lost and not self.transport.is_closing()

    cpdef start(self, object call, bytes head, bint skip_body):
        self.call = call
        self.requests += 1
        self.headers = []
        self.reason = b""
        self.head_done = False
        self.head_bytes = None
        self.head_from = 0
        self.skip_body = skip_body
        self.http10 = False
        self.body_left = -1
        self.send(head)

    cdef int _complete(self, object reusable=None) except -1:
        cdef UpstreamCall ex
        if self.call is None:
            return 0
        ex = <UpstreamCall>self.call
        self.call = None
        if reusable is None:
            reusable = self.parser.should_keep_alive()
        ex.upstream_complete(self, reusable)
        return 0

    cdef int _fail(self, object exc) except -1:
        ex = self.call
        self.call = None
        self.close()
        if ex is not None:
            (<UpstreamCall>ex).upstream_failed(self, "bad_gateway", False)  # it answered, badly
        return 0

    cpdef close(self):
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    cpdef abort(self):
        self.lost = True
        self.call = None
        if self.transport is not None:
            self.transport.abort()

    cpdef reset(self):
        """Abort with a TCP reset: the request on it is cut off (a bad body, a client gone
        mid-body), and a reset cannot be taken for the end of a message, as a FIN after a
        close-delimited or truncated body could."""
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
                except OSError:
                    pass
        self.abort()
