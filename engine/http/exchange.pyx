"""One request/response exchange: the filter chain's context and the proxying state machine.

An Exchange is created when a request line starts and lives until its response is written. It
is the ``ctx`` filters receive. Client-side callbacks come from ClientProtocol, upstream-side
callbacks from UpstreamConnection; both are C-level method calls on the hot path.
"""

import asyncio
import traceback
from functools import partial

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromFormat, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE

from engine.http._common cimport (
    WRITER_STACK, Writer, header_kind, is_lower, join_bytes, kind_table, same_lower, w_bytes,
    w_field, w_free, w_init, w_put, w_raw,
)
from engine.http.protocol cimport PAUSE_PENDING, PAUSE_UPSTREAM, ClientProtocol
from engine.http.stats cimport monotonic
from engine.upstream.connection cimport UpstreamConnection
from engine.upstream.pool cimport Pool
from engine.upstream.upstream cimport (
    F_ERROR, F_HTTP_502, F_HTTP_503, F_HTTP_504, F_TIMEOUT, Server, Upstream, status_failure,
)

from engine.errors import error_response
from engine.http.framing import HOP_BY_HOP, connection_tokens, random_hex, transfer_codings
from engine.http.messages import STATUS_LINES, Response
from engine.upstream.connection import UpstreamConnection as _UpstreamConnection

# Bytes of request body held while the upstream connection is being set up; past this the
# client socket stops being read (back-pressure instead of buffering a whole upload).
PENDING_LIMIT = 256 * 1024
cdef Py_ssize_t _PENDING_LIMIT = PENDING_LIMIT



class BodyTooLarge(Exception):
    """``read_body``: the request body is larger than the filter's limit."""


CHUNK_END = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# RFC 9110 §9.2.2: requests a client may repeat automatically (RFC 9112 §9.3.1.1).
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))

cdef bytes _CHUNK_END = CHUNK_END
cdef bytes _CONTINUE = CONTINUE
cdef frozenset _IDEMPOTENT = IDEMPOTENT
cdef bytes _HEAD = b"HEAD"
# Failures after which a request protected by an idempotency key may go to the next server.
cdef int _PROTECTED_RETRY = F_HTTP_502 | F_HTTP_503 | F_HTTP_504
cdef object _Response = Response

# Response headers the proxy re-frames or replaces rather than relays.
cdef enum:
    _R_RELAY = 0
    _R_CONTENT_LENGTH = 1
    _R_TRANSFER_ENCODING = 2
    _R_CONNECTION = 3
    _R_DROP = 4

RESPONSE_KINDS = {
    b"content-length": _R_CONTENT_LENGTH,
    b"transfer-encoding": _R_TRANSFER_ENCODING,
    b"connection": _R_CONNECTION,
    b"x-request-id": _R_DROP,  # replaced by ours, so the client sees one id
}
for _name in HOP_BY_HOP:
    RESPONSE_KINDS.setdefault(_name, _R_DROP)

# RESPONSE_KINDS by name length, looked up without .lower() (header_kind).
cdef list _RESPONSE_KINDS = kind_table(RESPONSE_KINDS)


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


cdef inline bytes _chunk(bytes data):
    # One chunk of a chunked body (RFC 9112 §7.1).
    return b"".join((PyBytes_FromFormat("%x\r\n", <int>PyBytes_GET_SIZE(data)), data, b"\r\n"))


# Connection field value -> its tokens (connection_tokens), as most connections repeat one
# value ("keep-alive", "close"). Bounded: cleared when full; long values are not remembered.
cdef dict _tokens_cache = {}
cdef Py_ssize_t _TOKENS_MAX = 256
cdef Py_ssize_t _TOKENS_VALUE_MAX = 128


cdef tuple _tokens(list values):
    cdef tuple tokens
    if len(values) != 1:
        return tuple(connection_tokens(values))
    value = values[0]
    tokens = _tokens_cache.get(value)
    if tokens is None:
        tokens = tuple(connection_tokens(values))
        if len(value) <= _TOKENS_VALUE_MAX:
            if len(_tokens_cache) >= _TOKENS_MAX:
                _tokens_cache.clear()
            _tokens_cache[value] = tokens
    return tokens


cdef inline bint _only_keep_alive(list values) except -1:
    # The usual ``Connection: keep-alive`` of a response.
    cdef bytes value
    if PyList_GET_SIZE(values) != 1:
        return False
    value = values[0]
    return is_lower(value, "keep-alive", 10)


cdef list _drop_named(list headers, tuple named, bint flat):
    # ``headers`` without the fields whose (lowercased) name is in ``named``; the same list
    # when there are none. ``headers`` holds (name, value) pairs, or is flat when ``flat``.
    cdef list out = None
    cdef Py_ssize_t i, n
    cdef Py_ssize_t step = 2 if flat else 1
    cdef bytes token
    for i in range(0, len(headers), step):
        name = headers[i] if flat else headers[i][0]
        n = len(name)
        for token in named:
            if PyBytes_GET_SIZE(token) != n:
                continue
            if isinstance(name, bytes):
                if same_lower(<const unsigned char*>PyBytes_AS_STRING(name),
                              <const unsigned char*>PyBytes_AS_STRING(token), n):
                    break
            elif name.lower() == token:
                break
        else:
            if out is not None:
                out += headers[i:i + step]
            continue
        if out is None:
            out = headers[:i]
    return headers if out is None else out


@cython.final
@cython.freelist(64)
cdef class Exchange:
    @staticmethod
    cdef Exchange new(ClientProtocol proto, object rt):
        cdef Exchange ex = Exchange.__new__(Exchange)
        ex._init(proto, rt)
        return ex

    def __init__(self, ClientProtocol proto not None, rt):
        self._init(proto, rt)

    cdef void _init(self, ClientProtocol proto, object rt) noexcept:
        self.proto = proto
        self.rt = rt  # the snapshot this request keeps to the end (DESIGN.md)
        self.method = b""
        self.url = b""
        self.version = "1.1"
        self.keep_alive = True
        self.headers = []
        self.request_id = b""
        self.client_ip = proto.peer_ip
        self.path = "/"
        self.query = b""
        # Everything else starts as None / 0 / False (see exchange.pxd).

    # -- request phase

    cdef int start(self) except -1:
        """Route, run the request filters, then answer or go upstream."""
        cdef ClientProtocol proto
        if self.error is not None:
            self.respond(error_response(self.error, self.request_id.decode()))
            return 0
        proto = self.proto
        router = proto.router if self.rt is proto.rt else self.rt.router
        route, extra = router.match(self.method, proto.route_host(self.host), self.path)
        if route is None:
            if extra is None:
                self.respond(error_response("not_found", self.request_id.decode()))
            else:
                self.respond(error_response("method_not_allowed", self.request_id.decode(),
                                            headers=[(b"Allow", b", ".join(extra))]))
            return 0
        self.route = route
        self.params = extra
        if self.content_length is not None and self.content_length > route.max_body_size:
            self.close_after = True
            self.respond(error_response("body_too_large", self.request_id.decode()))
            return 0
        return self.run_filters(0)

    cdef int run_filters(self, Py_ssize_t first) except -1:
        """Request filters from index ``first`` on, then upstream. A filter that returns a
        coroutine is awaited in a task (``connecting``: cancelled like a connect when the
        client goes or the deadline passes); the chain goes on from the next one after."""
        cdef tuple filters = self.route.request_filters
        cdef Py_ssize_t i
        cdef ClientProtocol proto
        for i in range(first, len(filters)):
            self.ran += 1
            answer = filters[i].on_request(self)
            if answer is not None:
                if isinstance(answer, _Response):
                    self.respond(answer)
                    return 0
                proto = self.proto
                proto.deadline = <double>proto.worker.now + proto.client_body_timeout
                self.connecting = proto.worker.loop.create_task(
                    self._await_filter(answer, i + 1))
                return 0
        return self.proxy(self.route.upstream)

    async def _await_filter(self, coro, Py_ssize_t next_index):
        try:
            answer = await coro
            self.connecting = None
            if self.finished:
                return
            if answer is not None:
                self.respond(answer)
            else:
                self.run_filters(next_index)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Ours, not the client's: a logged 500, as for a synchronous chain
            # (ClientProtocol._internal_error), never a request left hanging.
            traceback.print_exc()
            self.connecting = None
            self.proto._internal_error()

    async def read_body(self, Py_ssize_t limit):
        """The whole request body (for a filter that must see it: an idempotency
        fingerprint). It is kept and then sent upstream with a Content-Length."""
        if self.content_length is not None and self.content_length > limit:
            raise BodyTooLarge(limit)
        if not self.body_done:
            if self.expect is not None and self.version == "1.1":
                # The client waits for this before sending the body (RFC 9110 §10.1.1).
                self.proto.transport.write(_CONTINUE)
                self.expect = None
            self.body_limit = limit
            self.body_waiter = self.proto.worker.loop.create_future()
            # Reading may have paused at PENDING_LIMIT: this body is wanted whole.
            self.proto.resume_reading_for(PAUSE_PENDING)
            try:
                await self.body_waiter
            finally:
                self.body_waiter = None
        if self.pending_size > limit:
            raise BodyTooLarge(limit)
        if not self.pending:
            return b""
        if len(self.pending) > 1:
            self.pending = [b"".join(self.pending)]
        return self.pending[0]

    def add_finish_hook(self, fn):
        """``fn(self)`` once when this exchange ends, however it ends."""
        if self.finish_hooks is None:
            self.finish_hooks = [fn]
        else:
            self.finish_hooks.append(fn)

    def capture_response(self, Py_ssize_t limit):
        """Keep a copy of the response body, up to ``limit`` bytes: ``captured`` at finish."""
        if self.capture is None:
            self.capture = []
            self.capture_size = 0
        self.capture_limit = limit

    cdef int ended(self) except -1:
        """The exchange is over (called once, by ClientProtocol.account)."""
        if self.attempting:
            self.end_attempt(-1)
        if self.tunnel_held:
            self.tunnel_held = False
            self.server.active -= 1
        if self.capture is not None:
            if self.response_complete and self.capture_size <= self.capture_limit:
                self.captured = b"".join(self.capture)
            self.capture = None
        hooks = self.finish_hooks
        if hooks is not None:
            self.finish_hooks = None
            for fn in hooks:
                try:
                    fn(self)
                except Exception:
                    traceback.print_exc()
        return 0

    cdef int proxy(self, object upstream_) except -1:
        cdef Upstream upstream = <Upstream?>upstream_
        cdef Server server
        cdef double now = self.proto.worker.now
        self.upstream = upstream
        if self.tries == 0:
            upstream.budget.request(now)
            self.retry_until = now + upstream.retry_timeout
        if upstream.circuit is not None and not upstream.circuit.admits(now):
            return self.unavailable()
        server = upstream.pick(self, now)
        if server is None:
            return self.unavailable()
        if self.expect is not None and not self.body_done and self.version == "1.1":
            # RFC 9110 §10.1.1: the proxy has accepted the request, so it asks for the body
            # itself; Expect is not forwarded.
            self.proto.transport.write(_CONTINUE)
        return self.send_to(server)

    cdef int send_to(self, Server server) except -1:
        """One attempt: ``server`` takes the request (a pooled connection or a new one)."""
        cdef double now = self.proto.worker.now
        self.server = server
        self.tries += 1
        self.attempting = True
        self.attempt_failure = 0
        server.active += 1
        self.server_probe = self.upstream_probe = 0
        if server.health is not None:
            self.server_probe = server.health.begin(now)
        if self.upstream.circuit is not None:
            self.upstream_probe = self.upstream.circuit.begin(now)
        conn = server.pool.acquire()
        if conn is not None:
            return self.attach(conn)
        return self.connect()

    cdef int unavailable(self) except -1:
        """No server may take the request: the fallback upstream, the static fallback, or
        503 with Retry-After (RFC 9110 §15.6.4, §10.2.3)."""
        cdef Upstream upstream = self.upstream
        if upstream.fallback_to is not None and not self.fell_back:
            # The fallback upstream gets its own tries, retry time and budget.
            self.fell_back = True
            self.tried = None
            self.tries = 0
            self.exhausted = False
            return self.proxy(upstream.fallback_to)
        fallback = upstream.fallback
        if fallback is not None:
            # (a copy: response filters edit the headers of what they answer)
            self.respond(_Response(fallback.status, list(fallback.headers), fallback.body))
            return 0
        seconds = upstream.available_in(<double>self.proto.worker.now)
        self.respond(error_response(
            "upstream_unavailable", self.request_id.decode(),
            headers=[(b"Retry-After", b"%d" % max(1, <long>(seconds + 0.999)))]))
        return 0

    cdef int end_attempt(self, int failure) except -1:
        """The current attempt is over: ``failure`` 0 = the server answered, a failure bit,
        or -1 = no verdict (the client went away)."""
        cdef Server server = self.server
        cdef Upstream upstream = self.upstream
        cdef double now
        cdef bint ok
        if not self.attempting:
            return 0
        self.attempting = False
        server.active -= 1
        if failure < 0:
            if server.health is not None:
                server.health.cancel(self.server_probe)
            if upstream.circuit is not None:
                upstream.circuit.cancel(self.upstream_probe)
            return 0
        now = self.proto.worker.now
        ok = not (failure & upstream.fail_mask)
        if server.health is not None:
            server.health.record(ok, now, self.server_probe)
        if upstream.circuit is not None:
            upstream.circuit.record(ok, now, self.upstream_probe)
        return 0

    cdef Server retry_target(self, int failure, bint sent):
        """The server to try next after ``failure``, or None when the request may not or
        cannot be retried (nginx proxy_next_upstream rules). ``sent``: the request reached
        the server (else the connection was never made). ``exhausted`` is set when the
        request could be retried but no server is left: the fallback's case."""
        cdef Upstream upstream = self.upstream
        cdef double now = self.proto.worker.now
        if (not failure & upstream.retry_mask or self.head_sent or self.finished
                or self.body_streamed or self.tries >= upstream.tries
                or now >= self.retry_until):
            return None
        if sent and self.method not in _IDEMPOTENT and not (
                self.protected and failure & _PROTECTED_RETRY):
            # A POST or PATCH the upstream may have acted on is never sent twice (nginx
            # 1.9.13 non_idempotent rule; RFC 9110 §9.2.2). One that never got through may
            # go elsewhere. A claimed idempotency key adds only the answers in which the
            # upstream itself says it did not act (502/503/504): after a timeout or a lost
            # connection the outcome is unknown, and a second server would run it again.
            return None
        if self.tried is None:
            self.tried = [self.server]
        else:
            self.tried.append(self.server)
        server = upstream.pick(self, now)
        if server is None:
            self.exhausted = True
            return None
        if not upstream.budget.allow(now):
            return None
        return server

    cdef int failed(self, str code) except -1:
        """Answer for a failed attempt that is not retried: the fallback when the request
        ran out of servers (nginx ``error_page 502 = @fallback``), else ``code``."""
        cdef Upstream upstream = self.upstream
        if self.exhausted and (upstream.fallback is not None or
                               (upstream.fallback_to is not None and not self.fell_back)):
            return self.unavailable()
        self.respond(error_response(code, self.request_id.decode()))
        return 0

    cdef int retry(self, Server server) except -1:
        self.retried = False  # a stale pooled connection of the next server may be retried
        return self.send_to(server)

    cdef int connect(self) except -1:
        cdef ClientProtocol proto = self.proto
        proto.deadline = <double>proto.worker.now + self.upstream.connect_timeout
        self.connecting = proto.worker.loop.create_task(self._connect(self.server))
        return 0

    async def _connect(self, server):
        # Cancelled (timeout, client gone): whoever cancels this task ends the attempt and
        # may already have started the next one, so a cancelled task touches nothing.
        loop = self.proto.worker.loop
        try:
            _, conn = await loop.create_connection(
                partial(_UpstreamConnection, server.pool), server.host, server.port)
        except OSError:
            self.connecting = None
            if not self.finished:
                self.upstream_failed(None, "bad_gateway", True)
            return
        self.connecting = None
        if self.finished:
            (<Pool?>server.pool).release(conn, self.proto.worker.now)
            return
        self.attach(conn)

    cdef int attach(self, UpstreamConnection conn) except -1:
        cdef ClientProtocol proto = self.proto
        cdef bytes data
        cdef list parts
        self.conn = conn
        self.server.pool.active += 1
        data = self.request_head()
        pending = self.pending
        if pending or (self.chunked_up and self.body_done):
            parts = [data]
            if pending:
                if self.chunked_up:
                    for c in pending:
                        parts.append(_chunk(c))
                else:
                    parts += pending
                if not self.body_done:
                    # From now on the body streams straight through. A complete body stays
                    # in ``pending`` so a stale keep-alive connection can be retried; part of
                    # one sent now makes the request unrepeatable.
                    self.body_streamed = True
                    self.pending = None
                    self.pending_size = 0
                    proto.resume_reading_for(PAUSE_PENDING)
            if self.chunked_up and self.body_done:
                parts.append(_CHUNK_END)
            data = b"".join(parts)
        # Until the body is in, the wait is on the client (client_body_timeout, 408).
        proto.deadline = <double>proto.worker.now + (
            self.upstream.read_timeout if self.body_done else proto.client_body_timeout)
        self.t_upstream = monotonic()
        conn.start(self, data, self.method == _HEAD)
        if proto.write_paused:
            # The client is not reading (an earlier pipelined answer filled its buffer):
            # this response waits upstream until resume_writing, it is not buffered here.
            conn.transport.pause_reading()
        return 0

    cdef bytes request_head(self):
        """The request head sent upstream: hop-by-hop fields removed (RFC 9110 §7.6.1),
        framing re-stated, X-Forwarded-*, X-Real-IP and X-Request-ID set."""
        cdef Writer w
        cdef char stack[WRITER_STACK]
        w_init(&w, stack, WRITER_STACK)
        try:
            self._request_head(&w)
            return w_bytes(&w)
        finally:
            w_free(&w)

    cdef int _request_head(self, Writer* w) except -1:
        cdef ClientProtocol proto = self.proto
        cdef list headers = self.headers
        cdef bytes host, peer
        host = self.upstream.host_header or self.host or self.server.authority
        w_put(w, self.method)
        w_raw(w, " ", 1)
        w_put(w, self.route.target(self))
        w_raw(w, " HTTP/1.1\r\n", 11)
        w_field(w, b"Host", host)
        if self.connection is not None:
            # Fields named by Connection are hop-by-hop too (RFC 9110 §7.6.1).
            headers = _drop_named(headers, _tokens(self.connection), False)
        for name, value in headers:
            w_field(w, name, value)
        if self.upgrade is not None:
            w_field(w, b"Upgrade", self.upgrade)
            w_put(w, b"Connection: upgrade\r\n")
        if self.body_done and (self.chunked or self.content_length is not None):
            # Whole body already here: state its length, as nginx does with buffered bodies.
            w_put(w, PyBytes_FromFormat("Content-Length: %zd\r\n", self.pending_size))
        elif self.content_length is not None:
            w_put(w, b"Content-Length: %d\r\n" % self.content_length)
        elif self.chunked:
            w_put(w, b"Transfer-Encoding: chunked\r\n")
            self.chunked_up = True
        peer = proto.peer_ip_bytes
        w_put(w, b"X-Forwarded-For: ")
        if proto.trusted and self.xff:  # (an empty X-Forwarded-For adds no hop)
            w_put(w, self.xff)
            w_raw(w, ", ", 2)
        w_put(w, peer)
        forwarded = self.forwarded
        if forwarded is None:
            w_put(w, b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ")
            w_put(w, self.host or host)
        else:
            w_put(w, b"\r\nX-Forwarded-Proto: ")
            w_put(w, forwarded.get(b"x-forwarded-proto", b"http"))
            w_put(w, b"\r\nX-Forwarded-Host: ")
            w_put(w, forwarded.get(b"x-forwarded-host", self.host or host))
        w_put(w, b"\r\nX-Real-IP: ")
        # The peer's address unless a trusted proxy named the client.
        w_put(w, peer if self.client_ip is proto.peer_ip else self.client_ip.encode())
        w_put(w, b"\r\nX-Request-ID: ")
        w_put(w, self.request_id)
        if self.trace_id is not None:
            # This hop is a span of its own: same trace and flags, a new parent-id
            # (W3C Trace Context §3.2, §4.3); tracestate goes on unchanged.
            w_put(w, b"\r\ntraceparent: 00-")
            w_put(w, self.trace_id)
            w_raw(w, "-", 1)
            w_put(w, random_hex(8))
            w_raw(w, "-", 1)
            w_put(w, self.trace_flags)
            if self.tracestate:
                w_put(w, b"\r\ntracestate: ")
                w_put(w, self.tracestate)
        w_raw(w, "\r\n\r\n", 4)
        return 0

    # -- request body (called by ClientProtocol for the exchange being parsed)

    cdef int client_body(self, bytes chunk) except -1:
        cdef UpstreamConnection conn = self.conn
        if self.finished:
            return 0  # answered already: the rest of the body is read and dropped
        if conn is not None:
            if self.chunked_up:
                conn.transport.write(_chunk(chunk))
            else:
                conn.transport.write(chunk)
            self.body_streamed = True
            return 0
        if self.pending is None:
            self.pending = []
        self.pending.append(chunk)
        self.pending_size += len(chunk)
        if self.body_waiter is not None:
            if self.pending_size > self.body_limit and not self.body_waiter.done():
                self.body_waiter.set_result(None)  # read_body raises BodyTooLarge
        elif self.pending_size >= _PENDING_LIMIT:
            self.proto.pause_reading_for(PAUSE_PENDING)
        return 0

    cdef int client_body_end(self) except -1:
        cdef UpstreamConnection conn = self.conn
        cdef ClientProtocol proto = self.proto
        self.body_done = True
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_result(None)
        if conn is not None and not self.finished:
            if self.chunked_up:
                conn.transport.write(_CHUNK_END)
            proto.deadline = <double>proto.worker.now + self.upstream.read_timeout
        return 0

    # -- upstream response (called by UpstreamConnection)

    cdef bint upstream_head(self, UpstreamConnection conn, int status, bytes reason,
                            list fields) except -1:
        """Relay the response head (``fields`` flat: name, value, ...). False when the
        response must not be relayed."""
        cdef bytes cl = None
        cdef bytes te = None
        cdef list connection = None
        cdef list out = []  # the fields relayed, flat
        cdef tuple named
        cdef bytes name, value
        cdef Py_ssize_t i
        cdef int kind, failure
        cdef bint no_body
        cdef Server server
        if self.finished:
            conn.abort()
            return False
        for i in range(0, len(fields) - 1, 2):
            name = fields[i]
            value = fields[i + 1]
            kind = header_kind(_RESPONSE_KINDS, name)
            if kind == _R_RELAY:
                out.append(name)
                out.append(value)
            elif kind == _R_CONTENT_LENGTH:
                cl = value
            elif kind == _R_TRANSFER_ENCODING:
                te = value if te is None else te + b", " + value
            elif kind == _R_CONNECTION:
                if connection is None:
                    connection = [value]
                else:
                    connection.append(value)
            elif status == 101 and name.lower() == b"upgrade":
                out.append(name)
                out.append(value)
        if te is not None and not is_lower(te, "chunked", 7) and \
                transfer_codings(te) != [b"chunked"]:
            # A coding we would have to relay undecoded: ambiguous for the client (RFC 9112
            # §6.1); refuse rather than guess.
            self.upstream_failed(conn, "bad_gateway", False)
            conn.abort()
            return False
        if connection is not None and not _only_keep_alive(connection):
            # (A lone "keep-alive" names a field that is not in ``out``: it was dropped.)
            named = _tokens(connection)
            if status == 101 and b"upgrade" in named:
                # the protocol switched to (RFC 9110 §7.8)
                named = tuple([t for t in named if t != b"upgrade"])
            out = _drop_named(out, named, True)
        if status_failure(status):
            failure = status_failure(status)
            server = self.retry_target(failure, True)
            if server is not None:
                # The next server answers instead; this response is dropped unread.
                self.end_attempt(failure)
                self.drop_upstream()
                self.retry(server)
                return False
            self.attempt_failure = failure
        if status == 101:
            if self.upgrade is None:
                self.upstream_failed(conn, "bad_gateway", False)
                conn.abort()
                return False
            out.append(b"Connection")
            out.append(b"upgrade")
            # The server answered: that is the attempt's verdict, now, not when the tunnel
            # closes hours later (a half-open circuit's probe must not be held that long).
            # The tunnel still occupies the server (max_conns, least_conn) until it ends.
            self.end_attempt(0)
            self.server.active += 1
            self.tunnel_held = True
            self._write_head(None, 101, out, True, reason, None, False, None, True)
            return True
        no_body = status == 204 or status == 304 or self.method == _HEAD
        self.upstream_close_delimited = not no_body and cl is None and te is None
        self._write_head(None, status, out, True, reason, cl, no_body, None, False)
        return True

    cdef int upstream_body(self, bytes chunk) except -1:
        cdef ClientProtocol proto = self.proto
        if self.capture is not None:
            self.capture_size += len(chunk)
            if self.capture_size <= self.capture_limit:
                self.capture.append(chunk)
        if self.resp_chunked:
            chunk = _chunk(chunk)
        out = self.out
        if out is not None:
            out.append(chunk)
        else:
            proto.transport.write(chunk)
        self.bytes_out += len(chunk)
        proto.deadline = <double>proto.worker.now + self.upstream.read_timeout
        return 0

    cdef int upstream_complete(self, UpstreamConnection conn, bint reusable) except -1:
        cdef ClientProtocol proto = self.proto
        cdef Pool pool
        if self.resp_chunked:
            if self.out is not None:
                self.out.append(_CHUNK_END)
            else:
                proto.transport.write(_CHUNK_END)
        self.conn = None
        pool = self.server.pool
        pool.active -= 1
        self.end_attempt(self.attempt_failure)
        self.response_complete = True
        if reusable and self.body_done and self.upgrade is None:
            # A refused upgrade's connection is not reused: the upstream's parser may
            # already treat it as switched (llhttp pauses on every Upgrade request).
            pool.release(conn, <double>proto.worker.now)
        else:
            conn.close()
            # Answered before the whole body was sent: the client may be paused on this
            # upstream's full buffer; the rest of its body is read and dropped now.
            proto.resume_reading_for(PAUSE_UPSTREAM)
        return self.finish()

    cdef int upstream_failed(self, UpstreamConnection conn, str code, bint retry=True) except -1:
        """``retry`` is False when the upstream answered something (a malformed response):
        that is its answer, not a connection lost in a keep-alive race."""
        cdef Server server
        if conn is not None and self.conn is conn:
            self.conn = None
            self.server.pool.active -= 1
            if (retry and conn.requests > 1 and not self.head_sent and not self.body_streamed
                    and not self.retried and not self.finished
                    and self.method in _IDEMPOTENT
                    and (self.body_done or not self.body_received)):
                # The keep-alive connection was closed by the server as we reused it
                # (RFC 9112 §9.3.1): resend once on a fresh one, but only an idempotent
                # request, which may be repeated automatically (RFC 9112 §9.3.1.1).
                self.retried = True
                return self.connect()
        if self.finished:
            return 0
        if retry and not self.head_sent:
            # Connect refused or connection lost before a response: nginx "error".
            server = self.retry_target(F_ERROR, conn is not None)
            self.end_attempt(F_ERROR)
            if server is not None:
                return self.retry(server)
        else:
            self.end_attempt(F_ERROR)
        if not self.head_sent:
            self.failed(code)
        else:
            # Never let a truncated response look complete: drop the client connection.
            self.close_after = True
            self.proto.abort()
            self.finish()
        return 0

    cdef int upstream_write_paused(self, bint paused) except -1:
        cdef ClientProtocol proto = self.proto
        if paused:
            proto.pause_reading_for(PAUSE_UPSTREAM)
            # The upstream is not taking the body: its send_timeout runs, not the client's.
            proto.deadline = <double>proto.worker.now + self.upstream.send_timeout
        else:
            proto.resume_reading_for(PAUSE_UPSTREAM)
            proto.deadline = <double>proto.worker.now + (
                proto.client_body_timeout if not self.body_done else self.upstream.read_timeout)
        return 0

    cdef int timed_out(self) except -1:
        """The connection's deadline passed while this exchange was active."""
        cdef Server server
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
            if self.attempting:
                server = self.retry_target(F_TIMEOUT, False)
                self.end_attempt(F_TIMEOUT)
                if server is not None:
                    return self.retry(server)
                return self.failed("gateway_timeout")
            if self.body_waiter is not None:
                # A filter waited for the body the client stopped sending (nginx
                # client_body_timeout): the client's fault, and no upstream was asked.
                self.close_after = True
                self.respond(error_response("request_timeout", self.request_id.decode()))
                return 0
            self.respond(error_response("gateway_timeout", self.request_id.decode()))
        elif self.conn is not None:
            server = None
            if self.body_done and not self.head_sent:
                server = self.retry_target(F_TIMEOUT, True)
            self.end_attempt(F_TIMEOUT)
            self.drop_upstream()
            if server is not None:
                return self.retry(server)
            if self.head_sent:
                self.close_after = True
                self.proto.abort()
                self.finish()
            elif not self.body_done and not self.proto.paused & PAUSE_UPSTREAM:
                # The client stopped sending the body it announced (nginx
                # client_body_timeout); the upstream never got a whole request.
                self.respond(error_response("request_timeout", self.request_id.decode()))
            else:
                self.failed("gateway_timeout")
        else:
            self.close_after = True
            self.respond(error_response("request_timeout", self.request_id.decode()))
        return 0

    # -- tunnel (after a relayed 101)

    cdef int tunnel_to_client(self, bytes data) except -1:
        cdef ClientProtocol proto = self.proto
        if self.out is not None:
            self.out.append(data)  # behind the 101 head still waiting in ``out``
        else:
            proto.transport.write(data)
        self.bytes_out += len(data)
        proto.deadline = <double>proto.worker.now + self.upstream.read_timeout
        return 0

    cdef int drop_upstream(self) except -1:
        """Abandon the upstream connection mid-exchange: it is in an unknown state."""
        cdef UpstreamConnection conn = self.conn
        if conn is not None:
            self.conn = None
            self.server.pool.active -= 1
            conn.abort()
        if self.attempting:
            self.end_attempt(-1)
        return 0

    cdef int tunnel_closed(self) except -1:
        if self.conn is not None:
            self.conn = None
            self.server.pool.active -= 1
        self.close_after = True
        self.proto.close()
        return self.finish()

    # -- answering

    cpdef respond(self, object resp):
        """Answer with a response the proxy made (a filter's, or an error)."""
        cdef bytes body
        if self.proto is None:
            raise TypeError("an Exchange answers only once made by its ClientProtocol")
        if self.finished or self.head_sent:
            return
        body = resp.body or b""
        if not self.body_done:
            # The rest of the request body is not read: close after answering.
            self.close_after = True
        if self.capture is not None:
            self.capture.append(body)
            self.capture_size += PyBytes_GET_SIZE(body)
        self._write_head(resp, resp.status, resp.headers, False, None,
                         PyBytes_FromFormat("%zd", PyBytes_GET_SIZE(body)),
                         self.method == _HEAD, body, False)
        self.response_complete = True
        self.finish()

    cdef int _write_head(self, object resp, int status, list headers, bint flat, bytes reason,
                         bytes content_length, bint no_body, bytes body,
                         bint tunnel) except -1:
        # ``resp`` is the Response being answered, or None for an upstream's head: then one
        # is made only when response filters run. ``headers`` holds (name, value) pairs, or
        # is flat (name, value, ...) when ``flat``.
        cdef Py_ssize_t i
        cdef ClientProtocol proto = self.proto
        cdef Writer w
        cdef char stack[WRITER_STACK]
        cdef bytes data
        route = self.route
        if route is not None and self.ran:
            response_filters = route.response_filters
            if response_filters:
                if resp is None:
                    if flat:
                        headers = [(headers[i], headers[i + 1])
                                   for i in range(0, len(headers) - 1, 2)]
                    resp = Response(status, headers, None)
                for index, f in response_filters:
                    if index < self.ran:
                        f.on_response(self, resp)
                status = resp.status
                headers = resp.headers
                flat = False
        w_init(&w, stack, WRITER_STACK)
        try:
            _status_line(&w, status, reason)
            if flat:
                for i in range(0, len(headers) - 1, 2):
                    w_field(&w, headers[i], headers[i + 1])
            else:
                for name, value in headers:
                    w_field(&w, name, value)
            if tunnel:
                pass
            elif content_length is not None:
                if not (status == 204 or status == 304) or no_body and self.method == _HEAD:
                    w_field(&w, b"Content-Length", content_length)
            elif not no_body:
                if self.version == "1.1":
                    w_put(&w, b"Transfer-Encoding: chunked\r\n")
                    self.resp_chunked = True
                else:
                    self.close_after = True  # close-delimited body for an HTTP/1.0 client
            if not tunnel:
                if self.upgrade is not None:
                    # Answered without switching protocols: the client may already be sending
                    # the new protocol, and llhttp parses nothing after an Upgrade request.
                    self.close_after = True
                if self.close_after or not self.keep_alive or proto.worker.draining:
                    self.close_after = True
                    w_put(&w, b"Connection: close\r\n")
                elif self.version == "1.0":
                    w_put(&w, b"Connection: keep-alive\r\n")
            w_put(&w, b"X-Request-ID: ")
            w_put(&w, self.request_id)
            w_raw(&w, "\r\n\r\n", 4)
            # 1xx, 204 and 304 have no content, whatever a static route says (RFC 9110
            # §15.3.5, §15.4.5; RFC 9112 §6.3 rule 1): bytes after the head would be read as
            # the next response.
            if body and not no_body and status >= 200 and status != 204 and status != 304:
                w_put(&w, body)
                self.bytes_out += len(body)
            data = w_bytes(&w)
        finally:
            w_free(&w)
        self.status = status
        self.head_sent = True
        if self.out is not None:
            self.out.append(data)
        else:
            proto.transport.write(data)
        if tunnel:
            proto.start_tunnel(self, self.conn)
        return 0

    cdef int flush(self) except -1:
        """Write what the current upstream read produced in one send (head and body of a
        small response then cost one syscall, not two)."""
        cdef list out = self.out
        if out and not self.proto.closed:
            self.proto.transport.write(join_bytes(out) if PyList_GET_SIZE(out) > 1 else out[0])
            out.clear()
        return 0

    cdef int finish(self) except -1:
        if self.finished:
            return 0
        self.flush()
        self.finished = True
        return self.proto.exchange_finished(self)

