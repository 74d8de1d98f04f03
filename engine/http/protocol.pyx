"""ClientProtocol: the HTTP/1.1 codec. One per client connection; httptools callbacks fill
RequestContexts (engine/chain/context.pyx), and the context writes its answer back through the
Stream methods here, which alone know HTTP/1.1 framing.

llhttp (httptools) parses every message but one kind: a read that is one whole bodyless "GET
... HTTP/1.1" head, the usual request, made only of bytes and fields whose meaning llhttp would
take exactly so (_whole_head: tokens, printable values, an origin-form target, no framing or
connection field but "Connection: keep-alive"). That head is split and taken here in C
(_whole_head_complete) with no Python call into the parser and none per field. Everything else,
and so every error, is llhttp's as before: the check only narrows what skips it.

Pipelined requests are parsed as they arrive but answered strictly in order: the request being
answered is ``active``; later ones wait in ``queue`` and reading pauses until it drains.

A cdef class cannot subclass asyncio.Protocol; uvloop and httptools only duck-type protocols, so
this class implements every method they call (eof_received included). The httptools callbacks
(``on_*``) stay ``def``: the parser looks them up by name.
"""

import re
import sys
import traceback
from collections import deque

import httptools

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy

from cpython.bytes cimport PyBytes_FromFormat, PyBytes_FromStringAndSize
from cpython.list cimport PyList_GET_SIZE

from engine.chain.context cimport (
    PAUSE_BROKEN, PAUSE_PENDING, PAUSE_PIPELINE, RequestContext, Stream,
)
from engine.http.stats cimport RouteStats
from engine.wire._common cimport (
    WRITER_STACK, Writer, field_bytes, header_kind, is_lower, is_tchar, join_bytes, kind_at,
    kind_table, monotonic, same_lower, w_bytes, w_field, w_free, w_init, w_put, w_raw,
)
from engine.wire.h1 cimport chunk

from engine.chain.context import PENDING_LIMIT
from engine.errors import error_response
from engine.wire.framing import (
    H_CONNECTION, H_CONTENT_LENGTH, H_EXPECT, H_FORWARDED, H_HOP, H_HOST, H_REQUEST_ID,
    H_FORWARDED_7239, H_TRACEPARENT, H_TRACESTATE, H_VIA, parse_traceparent, random_hex,
    H_TRANSFER_ENCODING, H_UPGRADE, H_XFF, REQUEST_KINDS, connection_tokens, host_for_routing,
    normalize_percent, peer_of, remove_dot_segments, split_target, transfer_codings,
    valid_host, via_entry,
)
from engine.wire.framing import CHUNK_END, CONTINUE, STATUS_LINES

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

cdef object _request_id_ok = re.compile(rb"[A-Za-z0-9._:@/+=\-]{1,200}").fullmatch

cdef object HttpRequestParser = httptools.HttpRequestParser
cdef object HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object HttpParserError = httptools.HttpParserError
cdef object HttpParserCallbackError = httptools.HttpParserCallbackError
cdef object HttpParserInvalidURLError = httptools.HttpParserInvalidURLError
cdef object HttpParserInvalidMethodError = httptools.HttpParserInvalidMethodError

# framing's header kinds as C ints (0: a field relayed as is).
cdef int K_HOST = H_HOST
cdef int K_CONTENT_LENGTH = H_CONTENT_LENGTH
cdef int K_TRANSFER_ENCODING = H_TRANSFER_ENCODING
cdef int K_CONNECTION = H_CONNECTION
cdef int K_EXPECT = H_EXPECT
cdef int K_UPGRADE = H_UPGRADE
cdef int K_XFF = H_XFF
cdef int K_REQUEST_ID = H_REQUEST_ID
cdef int K_FORWARDED = H_FORWARDED
cdef int K_FORWARDED_7239 = H_FORWARDED_7239
cdef int K_VIA = H_VIA
cdef int K_HOP = H_HOP
cdef int K_TRACEPARENT = H_TRACEPARENT
cdef int K_TRACESTATE = H_TRACESTATE

# REQUEST_KINDS by name length, looked up without .lower() (header_kind).
cdef list _REQUEST_KINDS = kind_table(REQUEST_KINDS)

cdef bytes _CHUNK_END = CHUNK_END
# Gathered writes below this many bytes are joined into one (a copy is cheaper than a
# writev's bookkeeping); above it they go out as a list of buffers.
cdef Py_ssize_t _JOIN_MAX = 16384

cdef bytes _ASTERISK = b"*"
cdef bytes _OPTIONS = b"OPTIONS"
# What llhttp is shown in place of an extension method (see _request_line): a method it
# knows that means nothing to its parsing (CONNECT would: it is never replaced).
cdef bytes _PLACEHOLDER = b"GET"

# The request-target bytes _whole_head takes without llhttp: those of RFC 3986 pchar, "/" and
# "?" (origin-form, RFC 9112 §3.2.1), all in llhttp's strict URL alphabet; the rest is llhttp's.
cdef bint _TARGET_BYTE[256]
for _c in range(256):
    _TARGET_BYTE[_c] = (48 <= _c <= 57 or 65 <= _c <= 90 or 97 <= _c <= 122
                        or _c in b"-._~%!$&'()*+,;=:@/?")
cdef bytes _CONTINUE = CONTINUE
cdef bytes _HEAD = b"HEAD"
cdef bytes _CONNECT = b"CONNECT"
cdef bytes _GET = b"GET"

# b"%d" % status for 100..999, so a status line is joined, not formatted.
cdef tuple _STATUS_CODES = tuple(b"%d" % s for s in range(1000))


cdef inline int _status_line(Writer* w, int status, bytes reason) except -1:
    # The HTTP/1.1 status line; the upstream's own reason phrase is kept when it sent one.
    if reason and 100 <= status <= 999:
        w_raw(w, "HTTP/1.1 ", 9)
        w_put(w, _STATUS_CODES[status])
        w_raw(w, " ", 1)
        w_put(w, reason)
        w_raw(w, "\r\n", 2)
    elif reason:
        w_put(w, b"HTTP/1.1 %d %s\r\n" % (status, reason))
    else:
        line = STATUS_LINES.get(status)
        w_put(w, line if line is not None else b"HTTP/1.1 %d \r\n" % status)
    return 0


cdef inline bytes _strip_ows(bytes value):
    # value.strip(b" \t") without the call when there is nothing to strip (the usual case).
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    cdef const char* p = PyBytes_AS_STRING(value)
    if n == 0 or (p[0] != b" " and p[0] != b"\t" and p[n - 1] != b" " and p[n - 1] != b"\t"):
        return value
    return value.strip(b" \t")


cdef inline bint _line_is_http11(object data) noexcept:
    # Whether ``data``, read at the start of a message, holds a whole request line that ends
    # " HTTP/1.1" CRLF. The version is the line's last token (RFC 9112 §3), so whatever llhttp
    # accepts as this line has version 1.1; a line it rejects never reaches its headers.
    cdef const char* p
    cdef const char* end
    if not PyBytes_CheckExact(data):
        return False
    p = PyBytes_AS_STRING(data)
    if PyBytes_GET_SIZE(data) < 14 or not (65 <= p[0] <= 90):
        return False  # (no method at the start, A-Z: a leading empty line, say)
    end = <const char*>memchr(p, b"\n", PyBytes_GET_SIZE(data))
    return end is not NULL and end - p >= 13 and memcmp(end - 10, b" HTTP/1.1\r", 10) == 0


cdef inline bint _keeps_name(int kind) noexcept:
    # Whether ClientProtocol._field may use the name of a field of this kind: all but those
    # it keeps by value alone.
    return not (kind == K_HOST or kind == K_CONTENT_LENGTH or kind == K_TRANSFER_ENCODING
                or kind == K_CONNECTION or kind == K_EXPECT or kind == K_UPGRADE
                or kind == K_XFF or kind == K_REQUEST_ID or kind == K_VIA)


cdef const char* _HEX = b"0123456789abcdef"


@cython.final
cdef class RequestIds:
    """The worker's request ids: a random per-process prefix (12 hex digits) and a counter
    (20 hex digits), 32 in all, made without a Python call per request."""

    def __init__(self, bytes prefix not None):
        if len(prefix) != 12:
            raise ValueError("the prefix is 12 hex digits")
        memcpy(self.buf, PyBytes_AS_STRING(prefix), 12)
        self.n = 0

    cpdef bytes next(self):
        cdef unsigned long long v
        cdef int i
        self.n += 1
        v = self.n
        for i in range(31, 11, -1):
            self.buf[i] = _HEX[v & 15]
            v >>= 4
        return PyBytes_FromStringAndSize(self.buf, 32)


cdef inline bint _common_method(const char* p, Py_ssize_t n) noexcept:
    # The methods llhttp is left to parse as they are; any other token reaches it as
    # _PLACEHOLDER, so its fixed method list turns no valid method into a 400 (RFC 9110 §9.1).
    if n == 3:
        return memcmp(p, "GET", 3) == 0 or memcmp(p, "PUT", 3) == 0
    if n == 4:
        return memcmp(p, "POST", 4) == 0 or memcmp(p, "HEAD", 4) == 0
    if n == 5:
        return memcmp(p, "PATCH", 5) == 0
    if n == 6:
        return memcmp(p, "DELETE", 6) == 0
    if n == 7:
        return memcmp(p, "OPTIONS", 7) == 0 or memcmp(p, "CONNECT", 7) == 0
    return False


class _Rejected(Exception):
    """Raised from a parser callback after the request was answered with an error."""


class _Void:
    """The transport of a client that went away while its exchange goes on: writes vanish."""

    def write(self, data):
        pass

    def writelines(self, data):
        pass

    def close(self):
        pass

    def abort(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def is_closing(self):
        return True

    def get_extra_info(self, name, default=None):
        return default


_VOID = _Void()


@cython.final
cdef class ClientProtocol(Stream):
    def __init__(self, worker, listener=None):
        self.worker = worker
        self.clock = worker.ticks
        self.ids = worker.request_ids
        self.listener = listener
        self.scheme = listener.scheme if listener is not None else b"http"
        self.front = listener.front if listener is not None else None
        self.transport = None
        self.parser = HttpRequestParser(self)
        self.reusable = True
        self.peer_ip = ""
        self.peer_ip_bytes = b""
        self.trusted = False
        self.ex = None  # the exchange whose bytes are being parsed
        self.active = None  # the exchange being answered
        self.queue = None
        self.paused = 0
        self.deadline = 0.0
        self.requests = 0
        self.in_head = False
        self.broken = False
        self.tunnel = None
        self.closed = False
        self.write_paused = False
        self._use_settings(worker.runtime)
        self.lingering = False
        self.host_key = (None, "")
        self.host_ok = None
        self.between = True
        self.next_http11 = False
        self.stalled = 0  # bytes fed since the parser last delivered anything

    cdef int _use_settings(self, object rt) except -1:
        settings = rt.settings
        self.rt = rt
        self.router = rt.router
        self.settings = settings
        self.max_request_line = settings.max_request_line
        self.max_header_size = settings.max_header_size
        self.max_header_count = settings.max_header_count
        self.keepalive_requests = min(settings.keepalive_requests, PY_SSIZE_T_MAX)
        self.client_header_timeout = settings.client_header_timeout
        self.client_body_timeout = settings.client_body_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.send_timeout = settings.send_timeout
        self.lingering_timeout = settings.lingering_timeout
        self.tracing = settings.tracing
        self.via, self.via_field = via_entry(settings.via)
        return 0

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        self.send = transport.write
        self.send_many = transport.writelines
        self.peer_ip, self.peer_ip_bytes, self.trusted = peer_of(transport, self.settings)
        if self.front is not None:
            self.front.connection_made(self, transport)  # (a TLS client certificate)
        self.deadline = <double>self.clock.now + self.client_header_timeout
        self.worker.conns.add(self)

    def data_received(self, data):
        cdef RequestContext ex
        cdef bint in_head
        cdef Py_ssize_t received
        cdef Py_ssize_t count
        cdef Span spans[WHOLE_FIELDS]
        if self.tunnel is not None:
            self.tunnel.write(data)
            self.deadline = <double>self.clock.now + self.tunnel_timeout
            return
        if self.broken or self.lingering:
            return
        ex = self.ex
        if ex is not None and ex.upgrade is not None and self.tunnel_pending is not None:
            self.tunnel_pending.append(data)  # bytes after an upgrade request, before the 101
            self.tunnel_pending_size += PyBytes_GET_SIZE(data)
            if self.tunnel_pending_size >= PENDING_LIMIT:
                self.pause_reading_for(PAUSE_PENDING)  # start_tunnel resumes
            return
        in_head = self.in_head
        received = ex.body_received if ex is not None else 0
        if self.between:
            if self.line_held is not None:
                data = self.line_held + data
                self.line_held = None
            # A read that starts a message usually holds its whole request line: when that
            # ends " HTTP/1.1", the version is known without get_http_version (which formats
            # a new string per call, a tenth of this request's cost).
            self.next_http11 = _line_is_http11(data)
            self.next_scanned = True
            if not self.next_http11 or memcmp(PyBytes_AS_STRING(data), b"GET ", 4) != 0:
                # (not the usual line, "GET ... HTTP/1.1" whole): see to its method and form
                data = self._request_line(data)
                if data is None:
                    return  # the method is held until it ends, or answered 400
            elif self.reusable:
                # llhttp is between messages and the last one left the connection open: this
                # one may skip it, when it is one whole head _whole_head can take.
                if self.worker.runtime is not self.rt:
                    # (a reload's limits apply from this message on, as on_message_begin
                    # applies them for llhttp)
                    self._use_settings(self.worker.runtime)
                count = self._whole_head(data, spans)
                if count >= 0:
                    self._take_whole_head(data, spans, count)
                    return
        elif self.line_open and self._line_continues(data, 0) is None:
            return  # answered 400
        # The whole read is parsed before anything derived from it goes upstream (a request's
        # start, its body bytes): a chunk-size overflow or a bare-LF chunk line later in the
        # same read must find nothing sent (RFC 9112 §7.1, §2.2). See _read_parsed.
        self.parsing = True
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self.parsing = False
            self._upgrade_requested(data[exc.args[0]:] if exc.args else b"")
            self._read_parsed(True)
            return
        except HttpParserError as exc:
            self.parsing = False
            if not self.broken and not self.closed:
                self._parse_failed(exc)
            self._read_parsed(False)
            return
        self.parsing = False
        self._read_parsed(True)
        if (ex is not None and self.ex is ex and self.in_head == in_head
                and ex.body_received == received and not ex.body_done):
            # httptools holds an unfinished header field (head or trailers) in memory until
            # it ends; bound what may arrive without the parser delivering anything.
            self.stalled += len(data)
            if self.stalled > self.max_request_line + self.max_header_size:
                self._bad_request("headers_too_large")
        else:
            self.stalled = 0

    def eof_received(self):
        # A half-close is not an abort: a client that shut down its sending side after whole
        # requests still reads their answers, then the connection closes (as HAProxy and
        # Envoy do). The client is gone only when a write fails or it resets
        # (connection_lost). A request the EOF cut off can never end: that client is gone.
        cdef RequestContext ex = self.ex
        cdef RequestContext last = self.active
        if self.tunnel is not None or self.lingering or self.closed or last is None:
            return None  # nothing to answer: asyncio closes the transport
        if not self.broken and (self.in_head or self.line_held is not None or (
                ex is not None and not ex.body_done and not ex.finished)):
            return None
        self.half_closed = True
        if self.queue:
            last = self.queue[len(self.queue) - 1]
        if not last.head_sent:
            last.keep_alive = False  # its answer says "Connection: close" (RFC 9112 §9.6)
        return True  # the transport stays open for the answers

    def connection_lost(self, exc):
        cdef RequestContext ex
        self.closed = True
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.close()
        ex = self.active
        if ex is not None and not ex.finished:
            if ex.client_gone():
                # The request goes on into the void (see RequestContext.client_gone); the
                # connection stays in worker.conns so its deadline still bounds the wait.
                self.transport = _VOID
                self.send = _VOID.write
                self.send_many = _VOID.writelines
                self.write_paused = False
                return
            self.worker.conns.discard(self)
            self.account(ex)
            return
        self.worker.conns.discard(self)

    def pause_writing(self):
        cdef RequestContext ex = self.active
        self.write_paused = True
        self.deadline = <double>self.clock.now + self.send_timeout
        if ex is not None and ex.pause_upstream(True):
            pass
        elif self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self):
        cdef RequestContext ex = self.active
        self.write_paused = False
        # The send_timeout set by pause_writing gives way to what runs otherwise.
        if ex is not None and ex.pause_upstream(False):
            pass
        elif self.tunnel is not None:
            self.tunnel.resume_reading()
            self.deadline = <double>self.clock.now + self.tunnel_timeout
        elif ex is None and not self.in_head:
            self.deadline = <double>self.clock.now + self.keepalive_timeout

    # -- httptools callbacks

    def on_message_begin(self):
        self._begin()

    cdef int _begin(self) except -1:
        cdef RequestContext ex
        if self.broken or self.closed:
            # An answer already decided to close (or linger): RFC 9112 §9.6, no request after
            # it is processed, even one that arrived in the same read.
            raise _Rejected("closing")
        rt = self.worker.runtime
        if rt is not self.rt:
            self._use_settings(rt)
        self.ex = ex = RequestContext.new(self, rt)
        # The head being parsed: scratch state of this codec, not the context's.
        self.line_http11 = self.next_http11  # (for the first message of the read only)
        self.next_http11 = False
        self.line_scanned = self.next_scanned
        self.next_scanned = False
        self.line_method = self.next_method
        self.next_method = None
        self.url = b""
        self.header_size = self.header_count = self.host_count = 0
        self.te = self.expect = None
        self.between = False
        self.in_head = True
        if self.active is None:
            self.deadline = <double>self.clock.now + self.client_header_timeout
        return 0

    def on_url(self, bytes url):
        cdef RequestContext ex = <RequestContext?>self.ex
        self.url = self.url + url if PyBytes_GET_SIZE(self.url) else url
        if PyBytes_GET_SIZE(self.url) > self.max_request_line:
            self._reject(ex, "uri_too_long")

    def on_header(self, bytes name, bytes value):
        cdef RequestContext ex = <RequestContext?>self.ex
        self.header_size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
        self.header_count += 1
        self.stalled = 0  # a field ended: only the one after it is unfinished
        if self.header_size > self.max_header_size or self.header_count > self.max_header_count:
            if not self.in_head:
                self._bad_request("headers_too_large")  # trailers count too
                raise _Rejected("headers_too_large")
            self._reject(ex, "headers_too_large")
        if self.in_head:  # (trailer fields are not forwarded: RFC 9110 §6.5.1 allows that)
            self._field(ex, header_kind(_REQUEST_KINDS, name), name, value)

    cdef int _field(self, RequestContext ex, int kind, bytes name, bytes value) except -1:
        # One field of the head, of header_kind ``kind``: the ones the codec acts on are kept
        # apart, the rest relayed. ``name`` is None when _keeps_name(kind) is false.
        if kind == 0:
            ex.headers.append((name, value))
        elif kind == K_HOST:
            self.host_count += 1
            ex.host = _strip_ows(value)
        elif kind == K_CONTENT_LENGTH:
            ex.content_length = int(value)  # llhttp allows digits only, and one field
        elif kind == K_TRANSFER_ENCODING:
            self.te = value if self.te is None else self.te + b", " + value
        elif kind == K_CONNECTION:
            if ex.connection is None:
                ex.connection = [value]
            else:
                ex.connection.append(value)
        elif kind == K_XFF:
            ex.xff = value if ex.xff is None else ex.xff + b", " + value
        elif kind == K_REQUEST_ID:
            if _request_id_ok(value):
                ex.request_id = value
        elif kind == K_EXPECT:
            self.expect = value
        elif kind == K_UPGRADE:
            ex.upgrade = value
        elif kind == K_VIA:
            # Several Via lines are one list (RFC 9110 §5.3); the proxy's entry goes last.
            ex.via = value if ex.via is None else ex.via + b", " + value
        elif kind == K_FORWARDED:
            if self.trusted:
                if ex.forwarded is None:
                    ex.forwarded = {}
                ex.forwarded[name.lower()] = value
        elif kind == K_FORWARDED_7239:
            # Like X-Forwarded-For: what an untrusted client claims about hops is dropped.
            if self.trusted:
                ex.headers.append((name, value))
        elif kind == K_TRACEPARENT or kind == K_TRACESTATE:
            if not self.tracing:
                ex.headers.append((name, value))  # tracing off: relayed like any field
            elif kind == K_TRACEPARENT:
                # Two traceparent fields make it invalid (W3C Trace Context §3.2).
                ex.traceparent = value if ex.traceparent is None else b""
            else:
                # Several tracestate lines are one list (§3.3.1.1); combined as RFC 9110 §5.3.
                ex.tracestate = value if ex.tracestate is None else ex.tracestate + b"," + value
        # else H_HOP: dropped, tracing or not (RFC 9110 §7.6.1)
        return 0

    def on_headers_complete(self):
        self._head_complete(None, False)

    cdef int _take_whole_head(self, bytes head, const Span* spans, Py_ssize_t count) except -1:
        # The read ``head`` is the whole head _whole_head checked: its message begins and ends
        # here, parsed as llhttp would, with what llhttp's callbacks would raise handled as
        # data_received handles it when they do.
        self.parsing = True
        try:
            self._whole_head_complete(head, spans, count)
        except _Rejected:
            # (answered already; inside llhttp it comes back as a callback error)
            self.parsing = False
            return self._read_parsed(False)
        except Exception as exc:
            self.parsing = False
            if not self.broken and not self.closed:
                self._internal_error(exc)
            return self._read_parsed(False)
        self.parsing = False
        self.stalled = 0
        return self._read_parsed(True)

    cdef int _whole_head_complete(self, bytes head, const Span* spans,
                                  Py_ssize_t count) except -1:
        # The message begins and ends here (it has no body), its fields taken in order as
        # on_header takes them. It persists: HTTP/1.1 with no Connection field or only
        # "keep-alive" (RFC 9112 §9.3), as llhttp would have told.
        cdef const char* p = PyBytes_AS_STRING(head)
        cdef RequestContext ex
        cdef Py_ssize_t i
        cdef int kind
        self._begin()
        ex = <RequestContext>self.ex
        self.url = PyBytes_FromStringAndSize(p + 4, self.whole_target)
        for i in range(count):
            kind = spans[i].kind
            self._field(ex, kind,
                        PyBytes_FromStringAndSize(p + spans[i].start,
                                                  spans[i].colon - spans[i].start)
                        if _keeps_name(kind) else None,
                        PyBytes_FromStringAndSize(p + spans[i].value,
                                                  spans[i].end - spans[i].value))
        self.whole_heads += 1
        self._head_complete(_GET, True)
        self.between = True
        return 0

    cdef int _head_complete(self, bytes method, bint persists) except -1:
        # llhttp accepted the head of ``ex``. ``method``: llhttp's, when known without asking
        # it (None: ask); ``persists``: llhttp keeps the connection alive, known so.
        cdef RequestContext ex = <RequestContext?>self.ex
        cdef str version, path_str
        cdef bint keep_alive
        cdef bytes url, host, path, authority
        cdef const char* p
        cdef const char* q
        self.in_head = False
        parser = self.parser
        if self.line_method is not None:
            ex.method = self.line_method
        else:
            ex.method = parser.get_method() if method is None else method
        keep_alive = persists or parser.should_keep_alive()
        # Whether the next message may go to either parser (see data_received): not after
        # one that closes (llhttp refuses what follows) or that upgrades (it pauses).
        self.reusable = keep_alive and ex.upgrade is None and ex.method != _CONNECT
        if self.line_http11 and (keep_alive or ex.connection is not None):
            # (llhttp keeps an HTTP/1.1 request without Connection alive: a check for free)
            version = "1.1"
        else:
            version = parser.get_http_version()
        ex.version = version
        ex.keep_alive = keep_alive and self.requests + 1 < self.keepalive_requests
        if not ex.request_id:
            ex.request_id = self.ids.next()
        ex.t_start = monotonic()
        if version != "1.1" and version != "1.0":
            self._reject(ex, "version_not_supported")
        # RFC 9112 §3.2: exactly one Host, valid, in every HTTP/1.1 request.
        if self.host_count > 1 or (self.host_count == 0 and version == "1.1"):
            self._reject(ex, "bad_host")
        if self.expect is not None:
            if self.expect.strip(b" \t").lower() != b"100-continue":
                self._reject(ex, "expectation_failed")  # RFC 9110 §10.1.1: the only one
            # An HTTP/1.0 client never waits for 100 Continue (RFC 9110 §10.1.1).
            ex.expect_continue = version == "1.1"
        host = ex.host
        if host is not None and host != self.host_ok:  # (a connection usually repeats one)
            if not valid_host(host):
                self._reject(ex, "bad_host")
            self.host_ok = host
        if self.te is not None:
            # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing; chunked must
            # be the final coding (llhttp checks) and is the only one we implement.
            if version == "1.0":
                self._reject(ex, "bad_framing")
            if not is_lower(self.te, "chunked", 7):  # (the usual value needs no splitting)
                codings = transfer_codings(self.te)
                if not codings or codings[len(codings) - 1] != b"chunked":
                    self._reject(ex, "bad_framing")
                if len(codings) > 1:
                    self._reject(ex, "not_implemented")
            ex.chunked = True
        else:
            ex.body_done = ex.content_length is None or ex.content_length == 0
        url = self.url
        p = PyBytes_AS_STRING(url)
        if PyBytes_GET_SIZE(url) and p[0] == b"/":
            # Origin-form, the common case of split_target, without the call.
            authority = None
            q = <const char*>memchr(p, b"?", PyBytes_GET_SIZE(url))
            if q is NULL:
                path = url
                ex.query = b""
            else:
                path = url[:q - p]
                ex.query = url[q - p:]
        elif url == _ASTERISK and ex.method == _OPTIONS:
            # asterisk-form: the server itself (RFC 9112 §3.2.4), answered by the runner
            authority = None
            path = url
            ex.query = b""
        else:
            try:
                authority, path, ex.query = split_target(url)
            except ValueError:
                self._reject(ex, "bad_target")
        if authority is not None:
            ex.host = authority  # RFC 9112 §3.2.2: absolute-form overrides Host
            if not valid_host(authority):
                self._reject(ex, "bad_host")
        path_str = path.decode("latin-1")
        if "%" in path_str:
            path_str = normalize_percent(path_str)
        if "/." in path_str:
            path_str = remove_dot_segments(path_str)
        ex.path = path_str
        if ex.upgrade is not None:
            if ex.connection is None or b"upgrade" not in connection_tokens(ex.connection):
                ex.upgrade = None  # Upgrade without Connection: upgrade is not a request
        if self.trusted and ex.xff is not None:
            ex.client_ip = self.worker.runtime.settings.real_ip(ex.xff, self.peer_ip)
        if ex.traceparent is not None:
            parsed = parse_traceparent(ex.traceparent)
            if parsed is None:
                ex.tracestate = None  # an invalid traceparent takes its tracestate along
            else:
                ex.trace_id, ex.trace_flags = parsed
        if ex.trace_id is None and self.tracing == 2:
            ex.trace_id = random_hex(16)
            ex.trace_flags = b"01"  # a trace the edge starts is sampled
            ex.tracestate = None
        return self._dispatch(ex)

    def on_body(self, bytes body):
        cdef RequestContext ex = <RequestContext?>self.ex
        ex.body_received += PyBytes_GET_SIZE(body)
        if ex.route is not None and ex.body_received > ex.route.max_body_size:
            self._body_too_large(ex)
        if self.active is ex and ((ex.call is not None and ex.call.conn is not None)
                                  or ex.body_waiter is not None):
            # Waiting on the client's body: the timeout is between two reads. (While the
            # upstream connects, its connect_timeout runs instead; a queued request's body
            # leaves the deadline of the one being answered alone.)
            self.deadline = <double>self.clock.now + self.client_body_timeout
        ex.client_body(body)

    def on_message_complete(self):
        cdef RequestContext ex = <RequestContext?>self.ex
        self.between = True
        if not ex.body_done:
            ex.client_body_end()

    # -- dispatch and completion

    cdef int _dispatch(self, object ex) except -1:
        if self.active is None:
            self.active = ex
            self._start(<RequestContext>ex)
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append(ex)
            self.pause_reading_for(PAUSE_PIPELINE)
        return 0

    cdef int _start(self, RequestContext ex) except -1:
        if self.parsing:
            self.starting = ex  # once the read that holds its head has parsed (_read_parsed)
            return 0
        return ex.start()

    cdef int _read_parsed(self, bint clean) except -1:
        # A read was parsed, ``clean``ly or up to an error (answered already): what it derived
        # goes out now. After an error only a request whose message ended before the bad bytes
        # does; the one they belong to was answered 400 and its upstream connection reset.
        cdef RequestContext ex = self.active
        if self.closed:
            self.starting = None
            return 0
        if ex is not None and ex.body_held is not None and (clean or ex.body_done):
            ex.client_read_parsed()
        ex = self.starting
        if ex is not None:
            self.starting = None
            if not ex.finished:
                try:
                    ex.start()
                except Exception as exc:
                    return self._internal_error(exc)  # (a filter's bug, say)
        return 0

    cdef int account(self, object exchange) except -1:
        """Count a finished request in its route's stats; the access log only when it is on."""
        cdef RequestContext ex = <RequestContext>exchange
        cdef double now = monotonic()
        cdef double took = now - ex.t_start if ex.t_start else -1.0
        cdef double upstream_took = now - ex.t_upstream if ex.t_upstream else -1.0
        cdef RouteStats stats
        ex.ended()
        route = ex.route
        stats = self.worker.unrouted_stats if route is None else route.stats
        if stats is not None:
            stats.observe(ex.method, ex.status, ex.body_received, ex.bytes_out, took,
                          upstream_took)
        if self.worker.access_log is not None:
            self.worker.log_exchange(ex, took, upstream_took)
        return 0

    cdef int exchange_finished(self, RequestContext ex) except -1:
        self.account(ex)
        if self.closed:
            # (an exchange finished after its client left: see connection_lost)
            self.active = None
            self.worker.conns.discard(self)
            return 0
        if self.active is not ex:
            return 0
        self.active = None
        self.requests += 1
        if (<RequestContext>ex).close_after:
            return self._close_after_response(ex)
        queue = self.queue
        if queue:
            nxt = queue.popleft()
            self.active = nxt
            if not queue:
                # The last queued request may still be sending its body: read it.
                self.resume_reading_for(PAUSE_PIPELINE)
            return self._start(<RequestContext?>nxt)
        if self.half_closed:
            self.close()  # the client sends nothing more: every request it made is answered
            return 0
        self.resume_reading_for(PAUSE_PIPELINE)
        if self.worker.draining and not self.in_head:
            self.close()
        elif self.in_head:
            self.deadline = <double>self.clock.now + self.client_header_timeout
        else:
            self.deadline = <double>self.clock.now + self.keepalive_timeout
        return 0

    cdef int _close_after_response(self, object ex) except -1:
        if ((<RequestContext>ex).body_done and not self.broken) or self.half_closed:
            # (after a half-close every byte the client sent was read: nothing to linger for)
            self.close()
        else:
            self.linger()
        return 0

    # -- Stream: writing the answer

    cdef int write_head(self, RequestContext ctx, int status, bytes reason, list headers,
                        bint flat, bytes content_length, bint no_body, bytes body,
                        bint tunnel) except -1:
        # ``headers`` holds (name, value) pairs, or is flat (name, value, ...) when ``flat``;
        # ``body`` is a whole body to send with the head, or None (it follows).
        return self._write_head(ctx, status, reason, headers, flat, None, content_length,
                                no_body, body, tunnel)

    cdef int write_raw_head(self, RequestContext ctx, int status, bytes reason, bytes block,
                            bytes content_length) except -1:
        return self._write_head(ctx, status, reason, None, False, block, content_length,
                                False, None, False)

    cdef int _write_head(self, RequestContext ctx, int status, bytes reason, list headers,
                         bint flat, bytes block, bytes content_length, bint no_body,
                         bytes body, bint tunnel) except -1:
        # The fields are ``headers`` (see write_head), or ``block``, field lines as an
        # upstream sent them, followed by this hop's Via.
        cdef Py_ssize_t i
        cdef Writer w
        cdef char stack[WRITER_STACK]
        cdef bytes data
        self.chunked_out = False
        w_init(&w, stack, WRITER_STACK)
        try:
            _status_line(&w, status, reason)
            if block is not None:
                w_put(&w, block)
                if self.via_field is not None:
                    w_put(&w, self.via_field)
            elif flat:
                for i in range(0, len(headers) - 1, 2):
                    w_field(&w, headers[i], headers[i + 1])
            else:
                for name, value in headers:
                    w_field(&w, name, value)
            if tunnel:
                pass
            elif content_length is not None:
                if not (status == 204 or status == 304) or no_body and ctx.method == _HEAD:
                    w_field(&w, b"Content-Length", content_length)
            elif not no_body:
                if ctx.version == "1.1":
                    w_put(&w, b"Transfer-Encoding: chunked\r\n")
                    self.chunked_out = True
                else:
                    ctx.close_after = True  # close-delimited body for an HTTP/1.0 client
            if not tunnel:
                if ctx.upgrade is not None:
                    # Answered without switching protocols: the client may already be sending
                    # the new protocol, and llhttp parses nothing after an Upgrade request.
                    ctx.close_after = True
                if ctx.close_after or not ctx.keep_alive or self.worker.draining:
                    ctx.close_after = True
                    w_put(&w, b"Connection: close\r\n")
                elif ctx.version == "1.0":
                    w_put(&w, b"Connection: keep-alive\r\n")
            w_put(&w, b"X-Request-ID: ")
            w_put(&w, ctx.request_id)
            w_raw(&w, "\r\n\r\n", 4)
            # 1xx, 204 and 304 have no content, whatever a static route says (RFC 9110
            # §15.3.5, §15.4.5; RFC 9112 §6.3 rule 1): bytes after the head would be read as
            # the next response.
            if body and not no_body and status >= 200 and status != 204 and status != 304:
                w_put(&w, body)
                ctx.bytes_out += PyBytes_GET_SIZE(body)
            data = w_bytes(&w)
        finally:
            w_free(&w)
        self._write(data)
        return 0

    cdef int write_body(self, RequestContext ctx, bytes data) except -1:
        if not self.chunked_out:
            return self._write(data)
        if self.out is None or PyBytes_GET_SIZE(data) < _JOIN_MAX:
            return self._write(chunk(data))
        # Re-chunked without copying the data: size line, data, CRLF (RFC 9112 §7.1).
        self._write(PyBytes_FromFormat("%zx\r\n", PyBytes_GET_SIZE(data)))
        self._write(data)
        return self._write(b"\r\n")

    cdef int write_body_view(self, RequestContext ctx, object view) except -1:
        cdef Py_ssize_t n = len(view)
        if self.chunked_out or n < _JOIN_MAX:
            return self.write_body(ctx, bytes(view))  # (flush joins small parts: bytes only)
        if self.out is not None:
            self.out.append(view)
            self.out_size += n
        else:
            self.send(view)
        return 0

    cdef int end_body(self, RequestContext ctx) except -1:
        if self.chunked_out:
            self.chunked_out = False
            self._write(_CHUNK_END)
        return 0

    cdef int send_continue(self, RequestContext ctx) except -1:
        if ctx.version == "1.1" and not self.closed:
            self.transport.write(_CONTINUE)
        return 0

    cdef int write_interim(self, RequestContext ctx, int status, bytes reason,
                           list fields) except -1:
        # RFC 9110 §15.2: never to an HTTP/1.0 client. ``fields`` flat (name, value, ...).
        cdef Py_ssize_t i
        cdef Writer w
        cdef char stack[WRITER_STACK]
        cdef bytes data
        if ctx.version != "1.1" or self.closed:
            return 0
        w_init(&w, stack, WRITER_STACK)
        try:
            _status_line(&w, status, reason)
            for i in range(0, len(fields) - 1, 2):
                w_field(&w, fields[i], fields[i + 1])
            w_raw(&w, "\r\n", 2)
            data = w_bytes(&w)
        finally:
            w_free(&w)
        return self._write(data)

    cdef int _write(self, bytes data) except -1:
        if self.out is not None:
            self.out.append(data)
            self.out_size += PyBytes_GET_SIZE(data)
        else:
            self.send(data)
        return 0

    cdef int begin_batch(self) except -1:
        """Writes are gathered until end_batch: what one upstream read produced (a small
        response's head and body) leaves in one send, not two."""
        self.out = []
        self.out_size = 0
        return 0

    cdef int flush(self) except -1:
        cdef list out = self.out
        if out and not self.closed:
            if PyList_GET_SIZE(out) == 1:
                self.send(out[0])
            elif self.out_size < _JOIN_MAX:
                self.send(join_bytes(out))
            else:
                # Large parts (a 64 KiB body) go out as they are, in one writev: joining
                # would copy every byte once more.
                self.send_many(out)
            out.clear()
            self.out_size = 0
        return 0

    cdef int end_batch(self) except -1:
        self.flush()
        self.out = None
        return 0

    # -- errors

    cdef int _reject(self, object ex_, str code) except -1:
        """Answer ``ex`` with an error (in pipeline order), then stop reading."""
        cdef RequestContext ex = ex_
        if not ex.request_id:
            ex.request_id = self.ids.next()  # rejected before the head ended
        ex.error = code
        ex.close_after = True
        self.broken = True
        self.pause_reading_for(PAUSE_BROKEN)
        if (self.queue is None or ex not in self.queue) and ex is not self.active:
            self._dispatch(ex)
        raise _Rejected(code)

    cdef int _body_too_large(self, object ex_) except -1:
        cdef RequestContext ex = ex_
        ex.close_after = True
        if ex.finished:
            # Answered early (the upstream did not wait for the body); the rest was being
            # drained, but not past the limit.
            self.linger()
            raise _Rejected("body_too_large")
        if not ex.head_sent:
            if ex.call is not None:
                ex.call.drop()
            ex.error = "body_too_large"
            if self.active is ex:
                ex.respond(error_response("body_too_large", ex.request_id.decode()))
        self.broken = True
        self.pause_reading_for(PAUSE_BROKEN)
        raise _Rejected("body_too_large")

    cdef int _parse_failed(self, object exc) except -1:
        cause = exc.__context__
        if (isinstance(exc, HttpParserCallbackError) and cause is not None
                and not isinstance(cause, _Rejected)):
            return self._internal_error(cause)  # our own code failed inside a callback
        if (isinstance(exc, HttpParserInvalidMethodError) and self.in_head
                and not self.line_scanned):
            return self._unparsed_method()
        if isinstance(exc, HttpParserInvalidURLError):
            code = "bad_target"
        else:
            msg = str(exc).lower()  # (llhttp's reasons: "Chunk size overflow", "... chunk size")
            if "http version" in msg:
                code = "version_not_supported"  # llhttp knows 0.9, 1.x and 2.0 only
            elif "content-length" in msg or "transfer-encoding" in msg or "chunk" in msg:
                code = "bad_framing"
            else:
                code = "bad_request"
        return self._bad_request(code)

    cdef object _request_line(self, bytes data):
        # ``data`` starts a message: the bytes to feed llhttp, or None when they are held (the
        # method has not ended) or were answered (400). Only a read's first message is seen
        # here: llhttp tells no offsets, so one pipelined after another in the same read is
        # its alone (see _unparsed_method).
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t j, k, limit
        cdef bint common
        cdef const char* eol
        while i + 1 < n and p[i] == b"\r" and p[i + 1] == b"\n":
            i += 2  # empty lines before a request-line are ignored (RFC 9112 §2.2), by llhttp too
        eol = <const char*>memchr(p + i, b"\n", n - i)
        if (eol is not NULL and eol - (p + i) >= 14 and memcmp(eol - 10, b" HTTP/1.", 8) == 0
                and eol[-1] == b"\r" and b"2" <= eol[-2] <= b"9"):
            # HTTP/1.2 to 1.9: RFC 9110 §2.5 says to process a higher minor version of a
            # major version we implement as the highest minor we conform to, 1.1 (llhttp
            # refuses them, which would be a 505).
            k = eol - 2 - p
            data = data[:k] + b"1" + data[k + 1:]
            p = PyBytes_AS_STRING(data)
            self.next_http11 = True
        limit = min(n, i + self.max_request_line)
        j = i
        while j < limit and is_tchar(<unsigned char>p[j]):
            j += 1
        if j == n and i < n and n - i < self.max_request_line:
            return self._hold_line(data)  # the method has not ended
        if j == i or j == limit or p[j] != b" ":
            return data  # no method and a space: llhttp's error, a 400
        common = _common_method(p + i, j - i)
        if common and self.next_http11:
            return data  # the usual request line, whole: llhttp parses it as it is
        self.line_open = 1
        data = self._line_continues(data, j)
        if data is None or common:
            return data
        # An extension method (RFC 9110 §9.1): llhttp parses the message with _PLACEHOLDER,
        # the request keeps its own (on_headers_complete).
        self.next_method = data[i:j]
        return data[:i] + _PLACEHOLDER + data[j:]

    cdef Py_ssize_t _whole_head(self, bytes data, Span* spans) except -2:
        # Whether ``data``, a read that starts with a whole "GET ... HTTP/1.1" line, is one
        # head that _whole_head_complete may take without llhttp: then the number of its
        # fields, each in ``spans``; else -1, and llhttp parses the read.
        #
        # Taken is only what llhttp (strict: no lenient flags) accepts and reads the same way,
        # so that skipping it changes no answer:
        # - an origin-form target of _TARGET_BYTE, within max_request_line (on_url's limit);
        # - field lines that end CRLF, each a token name, a colon and a value of
        #   is_field_byte: so no bare CR or LF, no obs-fold, no whitespace before a colon, no
        #   control byte, no obs-text;
        # - no field that frames a body or upgrades (Content-Length, Transfer-Encoding,
        #   Upgrade: RFC 9112 §6.3, RFC 9110 §7.8); Connection and Proxy-Connection only as
        #   "keep-alive" (llhttp reads their tokens for persistence, RFC 9112 §9.3);
        # - at most WHOLE_FIELDS fields, within the limits on_header checks, counted as it
        #   counts them, so a head at a limit goes where it is refused as before;
        # - nothing after the empty line (a pipelined request is llhttp's).
        cdef const char* start = PyBytes_AS_STRING(data)
        cdef const char* stop = start + PyBytes_GET_SIZE(data)
        cdef const char* p
        cdef const char* q
        cdef const char* eol
        cdef const char* colon
        cdef const char* v
        cdef Py_ssize_t target
        cdef Py_ssize_t size = 0
        cdef Py_ssize_t count = 0
        cdef int kind
        if PyBytes_GET_SIZE(data) < 18 or memcmp(stop - 4, b"\r\n\r\n", 4) != 0:
            return -1
        # The request line, "GET " target " HTTP/1.1" CRLF (_line_is_http11 saw its end).
        eol = <const char*>memchr(start, b"\n", stop - start) - 1
        target = eol - 9 - (start + 4)
        if target <= 0 or target > self.max_request_line or start[4] != b"/":
            return -1
        q = start + 4
        while q < eol - 9:
            if not _TARGET_BYTE[<unsigned char>q[0]]:
                return -1
            q += 1
        p = eol + 2
        while True:
            # (the read ends CRLF CRLF: a CR found here has a byte after it)
            eol = <const char*>memchr(p, b"\r", stop - p)
            if eol is NULL or eol[1] != b"\n":
                return -1
            if eol == p:
                break  # the empty line
            colon = p
            while colon < eol and is_tchar(<unsigned char>colon[0]):
                colon += 1
            if colon == p or colon == eol or colon[0] != b":" or count == WHOLE_FIELDS:
                return -1
            kind = kind_at(_REQUEST_KINDS, <const unsigned char*>p, colon - p)
            if kind == K_CONTENT_LENGTH or kind == K_TRANSFER_ENCODING or kind == K_UPGRADE:
                return -1
            v = colon + 1
            while v < eol and (v[0] == b" " or v[0] == b"\t"):
                v += 1
            if not field_bytes(v, eol):
                return -1
            if (kind == K_CONNECTION or (kind == K_HOP and colon - p == 16 and same_lower(
                    <const unsigned char*>p, <const unsigned char*>b"proxy-connection", 16))):
                if not (eol - v == 10 and same_lower(<const unsigned char*>v,
                                                     <const unsigned char*>b"keep-alive", 10)):
                    return -1
            size += (colon - p) + (eol - v) + 4
            if size > self.max_header_size or count + 1 > self.max_header_count:
                return -1
            spans[count].start = p - start
            spans[count].colon = colon - start
            spans[count].value = v - start
            spans[count].end = eol - start
            spans[count].kind = kind
            count += 1
            p = eol + 2
        if eol + 2 != stop:
            return -1  # more after the head: pipelined requests
        self.whole_target = target
        return count

    cdef object _line_continues(self, bytes data, Py_ssize_t k):
        # RFC 9112 §3: request-line = method SP request-target SP HTTP-version. llhttp takes a
        # line without the version for HTTP/0.9 and waits on a header section: 400 now. From
        # ``k``, ``data`` continues a request line whose target has not ended (line_open 1:
        # not begun, 2: begun); a space after the target ends the watch (the rest is llhttp's).
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if self.line_open == 1:
            while k < n and p[k] == b" ":
                k += 1
            if k < n:
                self.line_open = 2
        while k < n and p[k] != b" " and p[k] != b"\r" and p[k] != b"\n":
            k += 1
        if k == n:
            return data  # (the line goes on in the next read)
        self.line_open = 0
        if p[k] != b" ":
            self._bad_request("bad_request")
            return None
        return data

    cdef object _hold_line(self, bytes data):
        if self.active is None:
            # a request has begun: the header timeout runs, not the keep-alive one
            self.deadline = <double>self.worker.now + self.client_header_timeout
        self.line_held = data
        self.next_scanned = False
        return None

    cdef int _unparsed_method(self) except -1:
        # llhttp refused the method of a request pipelined after another in the same read, so
        # _request_line never saw it and llhttp gives no offset to resume from. The requests
        # before it are answered, then the connection closes with this one unanswered: a
        # client retries it on a new connection (RFC 9112 §9.3.2), where it is parsed first.
        cdef RequestContext last = self.queue[len(self.queue) - 1] if self.queue else self.active
        self.broken = True
        self.pause_reading_for(PAUSE_BROKEN)
        self.in_head = False
        self.ex = None
        if last is None:
            self.close()
        elif last.head_sent:
            last.close_after = True
        else:
            last.keep_alive = False  # "Connection: close" on its answer (RFC 9112 §9.6)
        return 0

    cdef int _internal_error(self, object exc) except -1:
        # Our own code failed handling a request: the client is not at fault. Log it and
        # answer 500; the connection closes as for bad input.
        sys.stderr.write("edgeproxy: internal error while handling a request:\n"
                         + "".join(traceback.format_exception(exc)))
        return self.fail()

    cdef int fail(self) except -1:
        """Answer the request being handled with a 500 and close (nothing after it is
        trusted to be parsed right)."""
        cdef RequestContext ex = self.active if self.active is not None else self.ex
        self.broken = True
        self.pause_reading_for(PAUSE_BROKEN)
        if ex is None or ex.finished or ex.head_sent:
            self.abort()
            return 0
        if ex.task is not None:
            ex.task.cancel()
            ex.task = None
        if ex.call is not None:
            ex.call.drop()
        if not ex.request_id:
            ex.request_id = self.ids.next()
        ex.close_after = True
        if self.active is None:
            self.active = ex
        ex.respond(error_response("internal_error", ex.request_id.decode()))
        return 0

    cdef int _bad_request(self, str code) except -1:
        """The bytes being parsed are bad: answer ``code`` for the request they belong to
        (or the one after the last complete request), then close."""
        cdef RequestContext ex = self.ex
        self.broken = True
        self.pause_reading_for(PAUSE_BROKEN)
        if ex is None or ex.finished or ex.body_done:
            # The error is in bytes after ``ex``'s complete message.
            if ex is not None and not ex.keep_alive and not ex.finished:
                return 0  # llhttp refuses data after "close" (RFC 9112 §9.6): answer ex alone
            ex = RequestContext.new(self, self.worker.runtime)
        if not ex.request_id:
            ex.request_id = self.ids.next()
        if ex.head_sent:
            self.abort()  # the response already started; the request was bad mid-body
            return 0
        ex.error = code
        ex.close_after = True
        if ex is self.active:
            if ex.call is not None:
                ex.call.drop()
            if ex.task is not None:
                ex.task.cancel()
                ex.task = None
            ex.respond(error_response(code, ex.request_id.decode()))
        elif self.queue is None or ex not in self.queue:
            self._dispatch(ex)
        return 0

    cdef str route_host(self, bytes host):
        """The router's host key; a connection usually repeats one Host, so remember it."""
        cdef bytes seen
        if host is None:
            return ""
        seen = self.host_key[0]
        if host == seen:
            return self.host_key[1]
        key = host_for_routing(host)
        self.host_key = (host, key)
        return key

    # -- upgrade / tunnel

    cdef int _upgrade_requested(self, bytes rest) except -1:
        cdef RequestContext ex = self.ex
        if ex is None or ex.upgrade is None or ex.finished:
            self.close()
            return 0
        self.tunnel_pending = [rest] if rest else []
        return 0

    cdef int start_tunnel(self, RequestContext ctx, object transport, double timeout) except -1:
        # ``transport``: the upstream connection's, which the client's bytes now go to.
        self.tunnel = transport
        pending = self.tunnel_pending
        self.tunnel_pending = None
        if pending:
            transport.write(b"".join(pending))
        # nginx closes a tunnel nothing crossed for proxy_read_timeout; so do we, either way.
        self.tunnel_timeout = timeout
        self.deadline = <double>self.clock.now + self.tunnel_timeout
        return self.resume_reading_for(0xFF)

    # -- flow control and closing

    cdef int pause_reading_for(self, int reason) except -1:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason
        return 0

    cdef int resume_reading_for(self, int reason) except -1:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()
        return 0

    cpdef timed_out(self):
        cdef RequestContext ex = self.active
        cdef RequestContext parsing = self.ex
        if self.lingering or self.tunnel is not None:
            self.abort()
        elif ex is not None:
            if self.write_paused:
                self.abort()
            else:
                ex.timed_out()
        elif self.in_head or self.line_held is not None or (
                parsing is not None and not parsing.body_done and not parsing.finished):
            if parsing is None or self.line_held is not None:
                parsing = RequestContext.new(self, self.worker.runtime)
            ex = parsing
            if not ex.request_id:
                ex.request_id = self.ids.next()
            ex.close_after = True
            self.active = ex
            ex.respond(error_response("request_timeout", ex.request_id.decode()))
        else:
            self.close()  # idle keep-alive connection

    cpdef linger(self):
        """Half-close and drain for a moment, so the client reads our answer before the
        kernel would reset the connection on unread request bytes (nginx lingering_close)."""
        if self.closed:
            return
        self.lingering = True
        self.broken = True  # nothing more is parsed
        self.paused = 0
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.deadline = <double>self.clock.now + self.lingering_timeout

    cpdef close(self):
        if not self.closed:
            self.closed = True
            self.transport.close()

    cpdef abort(self):
        if not self.closed:
            self.closed = True
            self.transport.abort()
