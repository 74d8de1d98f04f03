"""One keep-alive connection to an upstream server, parsing its responses.

The usual response, a read that starts with a whole head framed by one Content-Length and
persisting, is taken here without llhttp (``_take_response``): its head is checked strictly
(a subset of what llhttp accepts, read the same way), the field lines it relays are handed on
as they came, in one bytes object, and its body is counted here: a large part of it goes on as
a view of the read it arrived in, a small one as a bytes copy. Any other response (chunked,
close-delimited, 1xx, 204/304, a HEAD's, a head split across reads, anything unusual) is
llhttp's (httptools): it validates the head and frames the body, and once it accepted a head
that head is split into names and values in C (``_scan_head``), not field by field in Python
callbacks.
Body bytes are never re-serialised (only re-chunked when the client side needs chunked framing).

Reads land in a shared ReadBuffer, not in a bytes object per read: the class is a buffered
protocol (get_buffer / buffer_updated), which spares uvloop's copy of every read, and a large
body is relayed to the client straight from the memory the kernel wrote it to.

A cdef class cannot subclass asyncio.BufferedProtocol; uvloop and httptools only duck-type
protocols, so this class implements every method they call (eof_received included).
"""

import socket
import struct

import httptools

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memchr, memcmp, memcpy

from engine.wire._common cimport field_bytes, is_tchar, same_lower
from engine.wire.h1 cimport (
    R_CONNECTION, R_CONTENT_LENGTH, R_DROP, R_RELAY, response_kind, split_fields,
)

# pyx-level cimport: connection.pxd cimports nothing, so the .pxd files have no cycle.
from engine.upstream.call cimport UpstreamCall

cdef object HttpResponseParser = httptools.HttpResponseParser
cdef object HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object HttpParserCallbackError = httptools.HttpParserCallbackError
cdef object HttpParserError = httptools.HttpParserError
cdef bytes _LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset


cdef bytes _OK = b"OK"

cdef enum:
    _READ_SIZE = 262144  # bytes a read may take: as uvloop's own receive buffer
    _VIEW_MIN = 16384  # a body part this large is handed on as a view of its read, not a copy
    _RUNS_MAX = 15  # runs of relayed lines before the last, in a head taken without llhttp


cdef inline bytes _digits(long long n):
    # ``n`` (>= 0) in decimal: a Content-Length as the client gets it (PyBytes_FromFormat
    # costs twenty times more).
    cdef char buf[20]
    cdef int i = 20
    while True:
        i -= 1
        buf[i] = <char>(48 + n % 10)
        n //= 10
        if n == 0:
            break
    return PyBytes_FromStringAndSize(buf + i, 20 - i)


cdef inline bint _framing_field(int kind, const char* name, Py_ssize_t n, const char* v,
                                const char* end, long long* length) noexcept:
    # Whether a field the proxy does not relay as it is (``kind``, not R_RELAY) leaves a head
    # no parser has seen as _take_response may take it: a Content-Length read into
    # ``length`` (the first, all digits, at most 18 of them); Connection only as
    # "keep-alive"; no Transfer-Encoding, Upgrade, Proxy-Connection or Via. The other
    # hop-by-hop fields are dropped, as from any response.
    cdef const char* q
    if kind == R_CONTENT_LENGTH:
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
    if kind == R_CONNECTION:
        while end > v and (end[-1] == b" " or end[-1] == b"\t"):
            end -= 1
        return end - v == 10 and same_lower(<const unsigned char*>v,
                                            <const unsigned char*>b"keep-alive", 10)
    if kind == R_DROP:
        return not (
            (n == 7 and same_lower(<const unsigned char*>name, <const unsigned char*>b"upgrade", 7))
            or (n == 16 and same_lower(<const unsigned char*>name,
                                       <const unsigned char*>b"proxy-connection", 16)))
    return False  # Transfer-Encoding; Via, which the sink combines with ours


cdef class ReadBuffer:
    """Where upstream reads land. One serves every upstream connection, as uvloop's own
    receive buffer serves a loop's, but only while nothing holds a view of it: a read under
    way does (uvloop's, so a loop in another thread gets a buffer of its own), and so does a
    body relayed as a view that waits in a client transport's buffer. Then the next read gets
    a new ReadBuffer, and the old one lives as long as its views."""

    def __cinit__(self):
        self.data = <char*>PyMem_Malloc(_READ_SIZE)
        if self.data is NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.data)

    def __len__(self):
        return _READ_SIZE  # (uvloop's TLS transport asks)

    def __getbuffer__(self, Py_buffer* view, int flags):
        PyBuffer_FillInfo(view, self, self.data, _READ_SIZE, 0, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer* view):
        self.exports -= 1


cdef ReadBuffer _reads = ReadBuffer()
cdef Py_ssize_t _replaced = 0


def read_buffers_replaced():
    """How many times a read found the shared ReadBuffer held by a view, and got a new one."""
    return _replaced


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
        self.is_closing = transport.is_closing
        self.pool.opened += 1

    # -- asyncio.BufferedProtocol

    def get_buffer(self, Py_ssize_t sizehint):
        global _reads, _replaced
        if _reads.exports:
            _reads = ReadBuffer()  # the last one's memory is still being sent from
            _replaced += 1
        self.reading = _reads
        return _reads

    def buffer_updated(self, Py_ssize_t n):
        cdef ReadBuffer buf = self.reading
        cdef UpstreamCall ex
        if buf is None:
            raise RuntimeError("buffer_updated without get_buffer")  # (uvloop fails the transport)
        self.reading = None
        if self.tunnel:
            (<UpstreamCall?>self.call).tunnel_data(PyBytes_FromStringAndSize(buf.data, n))
            return
        if self.call is None:
            # An idle connection must not talk; whatever it says, it is not reusable.
            self.close()
            return
        ex = <UpstreamCall>self.call
        ex.read_started()  # what this read produces for the client leaves in one write
        try:
            if self.body_left >= 0:
                self._relay_body(buf, 0, n)
            elif (self.head_done or self.head_bytes is not None or self.skip_body
                    or not self._take_response(buf, n)):
                self._parse(PyBytes_FromStringAndSize(buf.data, n))
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

    cdef bint _take_response(self, ReadBuffer buf, Py_ssize_t n) except -1:
        # The read (``n`` bytes of ``buf``) starts a response: take it without llhttp when it
        # holds the whole head, which _strict_head finds strict, with a final status that has
        # a body (not 1xx, 204 or 304: RFC 9112 §6.3), framed by one Content-Length and
        # persisting, and no more than that body. False: llhttp parses it, as any other
        # response.
        cdef long long length = -1
        cdef Py_ssize_t end = 0
        cdef bytes block = self._strict_head(buf.data, n, &end, &length)
        if block is None:
            return False
        if n - end > length:
            return False  # bytes after the response (llhttp's "unsolicited" sees to them)
        self.head_done = True
        self.whole_responses += 1
        if not (<UpstreamCall>self.call).upstream_raw_head(self, self.status, self.reason, block,
                                                           _digits(length)):
            return True  # the exchange already dealt with this connection
        self.body_left = length
        self._relay_body(buf, end, n - end)
        return True

    cdef int _relay_body(self, ReadBuffer buf, Py_ssize_t start, Py_ssize_t n) except -1:
        # ``n`` bytes at ``start`` of a read, of a body _take_response took: relayed as they
        # came, up to its Content-Length; a large part as a view of the read (most of a large
        # answer comes in the read that holds its head), a small one as a copy.
        cdef bint over = n > self.body_left
        if over:
            n = self.body_left  # and the rest answers nothing asked: never reuse
        self.body_left -= n
        if n >= _VIEW_MIN:
            (<UpstreamCall>self.call).upstream_body_view(memoryview(buf)[start:start + n])
        elif n:
            (<UpstreamCall>self.call).upstream_body(
                PyBytes_FromStringAndSize(buf.data + start, n))
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
            self.completed = True  # handed over by _parse once the read is parsed
            # (llhttp resets its keep-alive flag for the next message: read it now)
            self.keep_alive = self.parser.should_keep_alive()

    cdef bint _scan_head(self) except -1:
        # The head llhttp has just accepted, from ``head_bytes`` at ``head_from``, split:
        # its fields go to ``headers``, flat. False if the bytes are not what llhttp accepted.
        #
        # llhttp checked the syntax (CRLF line ends, token names with no space before the
        # colon, no obs-fold, no CTLs), so the head is the lines up to the first empty one.
        cdef bytes head = self.head_bytes
        cdef const char* base
        cdef const char* stop
        cdef const char* p
        cdef list fields = []
        cdef Py_ssize_t n
        if head is None:
            return False
        base = PyBytes_AS_STRING(head)
        stop = base + PyBytes_GET_SIZE(head)
        p = self._status_line(base + self.head_from, stop, False)
        if p is NULL:
            return False
        n = split_fields(p, stop, True, fields)
        if n < 0:
            return False
        self.headers = fields
        self.head_from = p + n - base
        return True

    cdef const char* _status_line(self, const char* p, const char* stop,
                                  bint strict) except? NULL:
        # HTTP-version SP status-code SP [reason-phrase] CRLF at ``p`` (RFC 9112 §4), into
        # ``status``, ``reason`` and ``http10``; returns where the fields start, or NULL.
        # ``strict``: no parser has seen it, and it is taken only as "HTTP/1.1", a status of
        # 200-599 other than 204 and 304, and a reason phrase of is_field_byte.
        cdef const char* eol = <const char*>memchr(p, b"\r", stop - p)
        cdef const char* sp
        cdef int status
        if eol is NULL:
            return NULL
        sp = <const char*>memchr(p, b" ", eol - p)
        if sp is NULL or eol - sp < 4:
            return NULL
        # status-code = 3DIGIT, as llhttp checked: read here, not asked of it
        if not (b"0" <= sp[1] <= b"9" and b"0" <= sp[2] <= b"9" and b"0" <= sp[3] <= b"9"):
            return NULL
        status = (sp[1] - 48) * 100 + (sp[2] - 48) * 10 + (sp[3] - 48)
        if strict:
            if (sp - p != 8 or memcmp(p, b"HTTP/1.1", 8) != 0 or status < 200 or status > 599
                    or status == 204 or status == 304 or eol - sp < 5 or sp[4] != b" "
                    or eol + 1 == stop or eol[1] != b"\n"
                    or not field_bytes(sp + 5, eol)):
                return NULL
        # The version, for Via's received-protocol (RFC 9110 §7.6.3).
        self.http10 = sp - p == 8 and memcmp(p, b"HTTP/1.0", 8) == 0
        self.status = status
        if eol - sp == 7 and sp[5] == b"O" and sp[6] == b"K":
            self.reason = _OK
        else:
            self.reason = PyBytes_FromStringAndSize(sp + 5, eol - sp - 5) if eol - sp > 5 else b""
        return eol + 2

    cdef bytes _strict_head(self, const char* base, Py_ssize_t n, Py_ssize_t* end,
                            long long* length):
        # The head that starts the ``n`` bytes at ``base``, when no parser has seen it: taken
        # only when it is a strict status line (_status_line), field lines of token names,
        # values of is_field_byte and CRLF ends, and fields _framing_field allows, one of them a
        # Content-Length (into ``length``). That is a subset of what llhttp accepts, framed
        # and persisting as llhttp would have it (RFC 9112 §6.3, §9.3). Returns the field
        # lines the proxy relays, as they came (the others cut out), and sets ``end`` to where
        # the head ends; None: llhttp's.
        cdef const char* stop = base + n
        cdef const char* p = self._status_line(base, stop, True)
        cdef const char* eol
        cdef const char* colon
        cdef const char* v
        cdef const char* run                  # where the current run of relayed lines began
        cdef const char* runs[2 * _RUNS_MAX + 2]  # the runs: start, end, ...
        cdef int count = 0
        cdef int kind, i
        cdef Py_ssize_t size = 0
        cdef bytes block
        cdef char* out
        if p is NULL:
            return None
        run = p
        while True:
            eol = <const char*>memchr(p, b"\r", stop - p) if p < stop else NULL
            if eol is NULL or eol + 1 == stop or eol[1] != b"\n":
                return None
            if eol == p:
                break  # the empty line that ends the head
            colon = p
            while colon < eol and is_tchar(<unsigned char>colon[0]):
                colon += 1
            if colon == p or colon == eol or colon[0] != b":":
                return None
            v = colon + 1
            while v < eol and (v[0] == b" " or v[0] == b"\t"):
                v += 1
            if not field_bytes(v, eol):
                return None
            kind = response_kind(p, colon - p)
            if kind == R_RELAY:
                if eol > v and (eol[-1] == b" " or eol[-1] == b"\t"):
                    return None  # (relayed by llhttp's path, without the whitespace)
            else:
                if not _framing_field(kind, p, colon - p, v, eol, length):
                    return None
                if p > run:
                    if count == _RUNS_MAX:
                        return None  # (a head this cut up is llhttp's)
                    runs[2 * count] = run
                    runs[2 * count + 1] = p
                    count += 1
                    size += p - run
                run = eol + 2
            p = eol + 2
        if length[0] < 0:
            return None  # no Content-Length: chunked or close-delimited, llhttp's
        runs[2 * count] = run
        runs[2 * count + 1] = p
        size += p - run
        block = PyBytes_FromStringAndSize(NULL, size)
        out = PyBytes_AS_STRING(block)
        for i in range(count + 1):
            memcpy(out, runs[2 * i], runs[2 * i + 1] - runs[2 * i])
            out += runs[2 * i + 1] - runs[2 * i]
        end[0] = p + 2 - base
        return block

    # -- exchange side

    cpdef bint usable(self) except -1:
        return not self.lost and not self.is_closing()

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
