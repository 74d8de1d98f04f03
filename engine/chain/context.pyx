"""RequestContext: one request from its head to its answer, and the whole filter API.

A codec (engine/http: HTTP/1.1) parses a request head into a RequestContext and calls
``start`` when it is this request's turn. The runner here routes it, runs the chain's request
hooks in phase order (any may answer), then hands it to an UpstreamCall, whose events come
back here (the context is the call's Sink). Every answer, upstream or local (a filter's, an
error, a 404), passes back through the response hooks before the codec writes it
(``Stream.write_head``). Nothing here knows HTTP/1.1 framing: the codec does.
"""

import asyncio
import traceback

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromFormat, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_GET_LENGTH, PyUnicode_READ_CHAR

from engine.upstream.call cimport Sink, UpstreamCall
from engine.upstream.upstream cimport Upstream
from engine.wire._common cimport (
    WRITER_STACK, Writer, join_bytes, w_bytes, w_field, w_free, w_init, w_put, w_raw,
)
from engine.wire.h1 cimport drop_named, fields_of, tokens
from engine.wire.message cimport Response
from ext.router cimport Router

from engine.chain.filter import BUFFERED, STREAM
from engine.errors import StreamResponse, error_response
from engine.upstream.call import fetch as _fetch
from engine.wire.framing import random_hex

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

# Bytes of request body held while the upstream connection is being set up; past this the
# client socket stops being read (back-pressure instead of buffering a whole upload).
PENDING_LIMIT = 256 * 1024
cdef Py_ssize_t _PENDING_LIMIT = PENDING_LIMIT

cdef bytes _HEAD = b"HEAD"
cdef object _StreamResponse = StreamResponse
# Bytes a StreamResponse's source is asked for at a time (a static file's read size), and
# at most this many per turn of the loop, so one fast download does not starve the others.
cdef Py_ssize_t _SOURCE_CHUNK = 128 * 1024
cdef Py_ssize_t _SOURCE_TURN = 1024 * 1024


cdef inline bint _http10(str version) noexcept:
    # version == "1.0", without comparing strings (an HTTP/1.x version here)
    return PyUnicode_GET_LENGTH(version) == 3 and PyUnicode_READ_CHAR(version, 2) == 48


cdef inline bytes _via_entry(bytes entry, bint http10):
    # A Stream's Via entry ("1.1 name") for a message received as HTTP/1.0 ("1.0 name").
    return b"1.0" + entry[3:] if http10 else entry


class BodyTooLarge(Exception):
    """``read_body``: the request body is larger than the filter's limit."""


cdef class Stream:
    """Base of a codec's side of one request; the HTTP/1.1 ClientProtocol overrides all."""

    cdef int write_head(self, RequestContext ctx, int status, bytes reason, list headers,
                        bint flat, bytes content_length, bint no_body, bytes body,
                        bint tunnel) except -1:
        raise NotImplementedError

    cdef int write_raw_head(self, RequestContext ctx, int status, bytes reason, bytes block,
                            bytes content_length) except -1:
        # An upstream's head whose relayed fields are its own lines (``block``), with this
        # hop's Via when it adds one (RequestContext.on_raw_head). A codec that cannot write
        # them as they came gets them split.
        cdef list fields = fields_of(block)
        if self.via is not None:
            fields.append(b"Via")
            fields.append(self.via)
        return self.write_head(ctx, status, reason, fields, True, content_length, False, None,
                               False)

    cdef int write_body(self, RequestContext ctx, bytes data) except -1:
        raise NotImplementedError

    cdef int write_body_view(self, RequestContext ctx, object view) except -1:
        # A piece of the body as a memoryview (see Sink.on_body_view); copied for a codec
        # that takes bytes only.
        return self.write_body(ctx, bytes(view))

    cdef int end_body(self, RequestContext ctx) except -1:
        return 0

    cdef int send_continue(self, RequestContext ctx) except -1:
        return 0

    cdef int write_interim(self, RequestContext ctx, int status, bytes reason,
                           list fields) except -1:
        return 0  # a codec that cannot send 1xx (HTTP/2 here) leaves them out

    cdef int start_tunnel(self, RequestContext ctx, object transport,
                          double timeout) except -1:
        raise NotImplementedError

    cdef int begin_batch(self) except -1:
        return 0

    cdef int flush(self) except -1:
        return 0

    cdef int end_batch(self) except -1:
        return 0

    cdef str route_host(self, bytes host):
        return "" if host is None else host.decode("latin-1")

    cdef int exchange_finished(self, RequestContext ctx) except -1:
        return 0

    cdef int pause_reading_for(self, int reason) except -1:
        return 0

    cdef int resume_reading_for(self, int reason) except -1:
        return 0

    cdef int fail(self) except -1:
        return 0

    cpdef close(self):
        pass

    cpdef abort(self):
        pass


def _defines(obj, str name):
    # A hook is what the filter's attribute holds: a method, or a compiled hook the filter
    # bound in __init__ (engine/filters/header_edit.pyx), which runs with no Python frame.
    return getattr(obj, name, None) is not None


cdef class Hooks:
    """Base of a filter's hooks compiled to C (see context.pxd). Subclasses override
    ``request`` and ``response``; their on_request and on_response, the filter contract's
    callables, call them."""

    cdef object request(self, RequestContext ctx):
        return None

    cdef int response(self, RequestContext ctx, Response resp) except -1:
        return 0

    cdef bytes response_raw(self, RequestContext ctx, bytes block):
        # What ``response`` does, done to an upstream head's field lines as they came
        # ("name: value" CRLF each; no Content-Length, no hop-by-hop field, no Via: the
        # codec adds this hop's after the hooks): the edited lines. Asked only of hooks that
        # set ``raw``, and only when every response hook of the chain has: then the head is
        # never split into (name, value) pairs (RequestContext.on_raw_head).
        raise NotImplementedError

    def on_request(self, ctx):
        return self.request(<RequestContext?>ctx)

    def on_response(self, ctx, resp):
        self.response(<RequestContext?>ctx, <Response?>resp)

    def on_response_raw(self, ctx, bytes block):
        """``response_raw`` for Python callers (the chain calls it in C). Not a hook the
        chain looks for: it takes it from ``raw``."""
        return self.response_raw(<RequestContext?>ctx, block)

    @property
    def edits_raw(self):
        """Whether the chain may call response_raw instead of response."""
        return self.raw


def _entry(Py_ssize_t i, hook, str name):
    # (index, hook, the Hooks object when the hook is one's own method, for a C-level call)
    owner = getattr(hook, "__self__", None)
    if isinstance(owner, Hooks) and hook == getattr(owner, name):
        return (i, hook, owner)
    return (i, hook, None)


@cython.final
cdef class Chain:
    """A route's filters compiled for the runner: each hook's bound methods in the order
    they run, so a hook a filter does not define costs nothing per request."""

    def __init__(self, filters):
        cdef list body_needs
        built = sorted(filters, key=lambda f: f.PHASE)
        self.filters = tuple(built)
        self.request = tuple([_entry(i, f.on_request, "on_request") for i, f in enumerate(built)
                              if _defines(f, "on_request")])
        self.response = tuple([_entry(i, f.on_response, "on_response")
                               for i, f in enumerate(built) if _defines(f, "on_response")][::-1])
        self.response_raw = all([entry[2] is not None and (<Hooks>entry[2]).raw
                                 for entry in self.response])
        self.response_body = tuple([(i, f.on_response_body) for i, f in enumerate(built)
                                    if _defines(f, "on_response_body")][::-1])
        self.log = tuple([f.on_log for f in built if _defines(f, "on_log")])
        body_needs = [f.RESPONSE_BODY for f in built if _defines(f, "on_response_body")]
        for need in body_needs:
            if not (isinstance(need, tuple) and len(need) == 2 and need[0] in (STREAM, BUFFERED)
                    and need[1] > 0):
                raise TypeError("a filter with on_response_body declares RESPONSE_BODY = "
                                f"(STREAM or BUFFERED, max bytes), not {need!r}")
        self.body_limit = max([limit for _, limit in body_needs], default=0)
        self.body_buffered = any([mode == BUFFERED for mode, _ in body_needs])

    def __len__(self):
        return len(self.filters)


@cython.final
cdef class Route:
    """One route pattern: its chain, its upstream, and how the request path becomes the
    target sent upstream (``strip``: strip_prefix; ``rewrite``: a template)."""

    def __init__(self, str name, str pattern, upstream, long long max_body_size, Chain chain,
                 Py_ssize_t strip=0, list rewrite=None):
        self.name = name
        self.pattern = pattern
        self.upstream = upstream
        self.max_body_size = max_body_size
        self.chain = chain
        self.strip = strip
        self.rewrite = rewrite

    cpdef bytes target(self, RequestContext ctx):
        """The request target sent upstream: the (normalised) path, rewritten, plus the
        query."""
        cdef str path
        if self.rewrite is not None:
            params = ctx.params or {}
            path = "".join([params.get(p[1:], "") if p[:1] == "\0" else p
                            for p in self.rewrite])
        elif self.strip:
            path = ctx.path[self.strip:] or "/"
            if path[0] != "/":
                path = "/" + path
        else:
            path = ctx.path
        return path.encode("latin-1") + ctx.query if ctx.query else path.encode("latin-1")

    def __repr__(self):
        return f"<Route {self.name} {self.pattern}>"


@cython.final
@cython.freelist(64)
cdef class RequestContext(Sink):
    @staticmethod
    cdef RequestContext new(Stream stream, object rt):
        cdef RequestContext ctx = RequestContext.__new__(RequestContext)
        ctx.stream = stream
        ctx.worker = stream.worker
        ctx.clock = stream.clock
        ctx.rt = rt  # the snapshot this request keeps to the end (DESIGN.md)
        ctx.method = b""
        ctx.version = "1.1"
        ctx.keep_alive = True
        ctx.headers = []
        ctx.request_id = b""
        ctx.client_ip = stream.peer_ip
        ctx.path = "/"
        ctx.query = b""
        # Everything else starts as None / 0 / False (see context.pxd).
        return ctx

    # -- the runner

    cdef int start(self) except -1:
        """Route, run the request hooks, then answer or go upstream."""
        cdef Stream stream = self.stream
        cdef Router router
        cdef Route r
        if self.error is not None:
            return self.answer(self.error)  # a malformed request (see respond)
        front = stream.front
        if front is not None:
            answer = front.before_routing(self)
            if answer is not None:
                self.respond(answer)
                return 0
        router = self.rt.router
        host = stream.route_host(self.host)
        route, extra = router.match(self.method, host, self.path)
        if route is None:
            if extra is None:
                # "OPTIONS *" asks about the server, which this gateway is to its clients
                # (RFC 9110 §9.3.7, §3.7): answered here, after the server-wide filters.
                self.miss = "server_options" if self.path == "*" else "not_found"
                self.chain = self.rt.server_chain
            else:
                # The path has a route, not for this method: that route's filters still run
                # (a CORS preflight to a GET route is answered there), then 405.
                self.miss = "method_not_allowed"
                self.allow = extra
                self.route = <Route>router.match(extra[0], host, self.path)[0]
                self.chain = self.route.chain
            return self.run_filters(0)
        r = <Route>route
        self.route = r
        self.params = extra
        self.chain = r.chain
        self.upstream = r.upstream
        if ((self.content_length is not None and self.content_length > r.max_body_size)
                or (self.body_received  # (arrived with the head)
                    and self.body_received > r.max_body_size)):
            self.close_after = True
            self.ran = PY_SSIZE_T_MAX
            return self.answer("body_too_large")
        return self.run_filters(0)

    cdef int run_filters(self, Py_ssize_t first) except -1:
        """Request hooks from ``first`` on, then the upstream (or the router's 404/405). A
        hook that returns an awaitable is awaited in a task (``task``: cancelled when the
        client goes or the deadline passes); the chain goes on from the next one after."""
        cdef tuple hooks = self.chain.request
        cdef Py_ssize_t i
        cdef Stream stream
        for i in range(first, len(hooks)):
            entry = <tuple>hooks[i]
            self.ran = <Py_ssize_t>entry[0] + 1
            compiled = entry[2]
            if compiled is not None:
                answer = (<Hooks>compiled).request(self)
            else:
                answer = entry[1](self)
            if answer is not None:
                if isinstance(answer, Response):
                    self.respond(answer)
                    return 0
                stream = self.stream
                stream.deadline = <double>self.clock.now + stream.client_body_timeout
                self.task = self.worker.loop.create_task(self._await_filter(answer, i + 1))
                return 0
        self.ran = PY_SSIZE_T_MAX  # the whole chain passed: every response hook runs
        if self.miss is not None:
            if self.allow is not None:
                return self.answer(self.miss, [(b"Allow", b", ".join(self.allow))])
            if self.miss == "server_options":
                # RFC 9110 §9.3.7: no content, so "Content-Length: 0"
                self.respond(Response(200, [], b""))
                return 0
            return self.answer(self.miss)
        return self.proxy()

    async def _await_filter(self, coro, Py_ssize_t next_index):
        try:
            answer = await coro
            self.task = None
            if self.finished:
                return
            if answer is not None:
                self.respond(answer)
            else:
                self.run_filters(next_index)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Ours, not the client's: a logged 500, as for a synchronous chain, never a
            # request left hanging.
            traceback.print_exc()
            self.task = None
            self.stream.fail()

    cdef int proxy(self) except -1:
        cdef UpstreamCall call
        if not isinstance(self.upstream, Upstream):
            self.upstream = self.rt.upstreams[self.upstream]  # a filter chose it by name
        call = UpstreamCall.new(self, <Upstream>self.upstream)
        return call.start()

    cdef int answer(self, str code, list headers=None) except -1:
        """Answer with the catalog's error ``code``."""
        self.respond(error_response(code, self.request_id.decode(), headers=headers))
        return 0

    # -- the filter API beyond attributes

    async def read_body(self, Py_ssize_t limit):
        """The whole request body (for a filter that must see it: an idempotency
        fingerprint). It is kept and then sent upstream with a Content-Length."""
        cdef Stream stream = self.stream
        if self.content_length is not None and self.content_length > limit:
            raise BodyTooLarge(limit)
        if not self.body_done:
            if self.expect_continue:
                # The client waits for this before sending the body (RFC 9110 §10.1.1).
                stream.send_continue(self)
                self.expect_continue = False
            self.body_limit = limit
            self.body_waiter = self.worker.loop.create_future()
            # Reading may have paused at PENDING_LIMIT: this body is wanted whole.
            stream.resume_reading_for(PAUSE_PENDING)
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

    def replace_body(self, bytes body not None):
        """After ``read_body``: send ``body`` upstream instead of the client's (a transform),
        with its own Content-Length."""
        if not self.body_done:
            raise RuntimeError("replace_body needs the whole body first (await read_body)")
        self.pending = [body] if body else None
        self.pending_size = PyBytes_GET_SIZE(body)
        self.content_length = self.pending_size  # request_head states pending_size
        self.chunked = False

    async def fetch(self, upstream, method, path, headers=(), body=None,
                    Py_ssize_t max_body=1048576, bytes host=None):
        """A sub-request through ``upstream`` (a name or an Upstream) with its balancing,
        pools, retries and breakers: the answer as a Response with the whole body (the
        proxy's JSON 502/503/504 when no server answered). It carries this request's id.
        ``host``: the Host sent when the upstream sets none (default: the server's
        authority); a cache revalidating a request passes the request's own."""
        if not isinstance(upstream, Upstream):
            upstream = self.rt.upstreams[upstream]
        if isinstance(method, str):
            method = method.encode()
        if isinstance(path, str):
            path = path.encode()
        return await _fetch(self.worker, upstream, method, path, list(headers), body,
                            self.request_id, max_body, host)

    # -- the request body (from the codec)

    cdef int client_body(self, bytes chunk) except -1:
        cdef UpstreamCall call = self.call
        if self.finished:
            return 0  # answered already: the rest of the body is read and dropped
        if call is not None and call.conn is not None:
            # Held until the codec has parsed the whole read (client_read_parsed): a bad
            # chunk later in it must find none of it sent (RFC 9112 §7.1).
            if self.body_held is None:
                self.body_held = [chunk]
            else:
                self.body_held.append(chunk)
            return 0
        if self.pending is None:
            self.pending = []
        self.pending.append(chunk)
        self.pending_size += PyBytes_GET_SIZE(chunk)
        if self.body_waiter is not None:
            if self.pending_size > self.body_limit and not self.body_waiter.done():
                self.body_waiter.set_result(None)  # read_body raises BodyTooLarge
        elif self.pending_size >= _PENDING_LIMIT:
            self.stream.pause_reading_for(PAUSE_PENDING)
        return 0

    cdef int client_body_end(self) except -1:
        self.body_done = True
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_result(None)
        if self.call is not None and self.call.conn is not None and not self.finished:
            # The end goes upstream with the rest of the read (client_read_parsed).
            if self.body_held is None:
                self.body_held = [None]
            else:
                self.body_held.append(None)
        return 0

    cdef int client_read_parsed(self) except -1:
        """The codec parsed the read that brought body bytes (or this request's message ended
        before its bad bytes): they go upstream now, in one write."""
        cdef list held = self.body_held
        cdef UpstreamCall call = self.call
        cdef bint end
        if held is None:
            return 0
        self.body_held = None
        if self.finished or call is None or call.conn is None:
            return 0
        end = held[len(held) - 1] is None
        if end:
            held.pop()
        if held:
            call.send_body(join_bytes(held) if len(held) > 1 else held[0])
        if end:
            call.body_end()
        return 0

    # -- Sink: what the upstream call reports

    cdef bytes request_head(self, UpstreamCall call):
        """The request head sent upstream: hop-by-hop fields removed (RFC 9110 §7.6.1),
        framing re-stated, X-Forwarded-*, X-Real-IP and X-Request-ID set."""
        cdef Writer w
        cdef char stack[WRITER_STACK]
        cdef list headers = self.headers
        cdef bytes host, peer
        cdef bytes via = self.via
        cdef tuple named
        cdef bint http10
        cdef Stream stream = self.stream
        if self.expect_continue and not self.body_done:
            # RFC 9110 §10.1.1: the proxy has accepted the request, so it asks for the body
            # itself; Expect is not forwarded.
            stream.send_continue(self)
            self.expect_continue = False
        host = call.upstream.host_header or self.host or call.server.authority
        w_init(&w, stack, WRITER_STACK)
        try:
            w_put(&w, self.method)
            w_raw(&w, " ", 1)
            w_put(&w, self.route.target(self))
            w_raw(&w, " HTTP/1.1\r\n", 11)
            w_field(&w, b"Host", host)
            if self.connection is not None:
                # Fields named by Connection are hop-by-hop too (RFC 9110 §7.6.1).
                named = tokens(self.connection)
                headers = drop_named(headers, named, False)
                if via is not None and b"via" in named:
                    via = None
            for name, value in headers:
                w_field(&w, name, value)
            if stream.via is not None:
                # RFC 9110 §7.6.3: a proxy adds its entry to every message it forwards, after
                # those received; received-protocol is the client's version.
                http10 = _http10(self.version)
                if not via and not http10:
                    w_put(&w, stream.via_field)
                else:
                    w_put(&w, b"Via: ")
                    if via:
                        w_put(&w, via)
                        w_raw(&w, ", ", 2)
                    w_put(&w, _via_entry(stream.via, http10))
                    w_raw(&w, "\r\n", 2)
            elif via is not None:
                w_field(&w, b"Via", via)  # (server.via off: relayed as received)
            if self.upgrade is not None:
                w_field(&w, b"Upgrade", self.upgrade)
                w_put(&w, b"Connection: upgrade\r\n")
            if self.body_done and (self.chunked or self.content_length is not None):
                # Whole body already here: state its length, as nginx does with buffered
                # bodies.
                w_put(&w, PyBytes_FromFormat("Content-Length: %zd\r\n", self.pending_size))
            elif self.content_length is not None:
                w_put(&w, b"Content-Length: %d\r\n" % self.content_length)
            elif self.chunked:
                w_put(&w, b"Transfer-Encoding: chunked\r\n")
                call.chunked_up = True
            peer = stream.peer_ip_bytes
            w_put(&w, b"X-Forwarded-For: ")
            if stream.trusted and self.xff:  # (an empty X-Forwarded-For adds no hop)
                w_put(&w, self.xff)
                w_raw(&w, ", ", 2)
            w_put(&w, peer)
            forwarded = self.forwarded
            w_put(&w, b"\r\nX-Forwarded-Proto: ")
            if forwarded is None:
                w_put(&w, stream.scheme)
                w_put(&w, b"\r\nX-Forwarded-Host: ")
                w_put(&w, self.host or host)
            else:
                w_put(&w, forwarded.get(b"x-forwarded-proto", stream.scheme))
                w_put(&w, b"\r\nX-Forwarded-Host: ")
                w_put(&w, forwarded.get(b"x-forwarded-host", self.host or host))
            w_put(&w, b"\r\nX-Real-IP: ")
            # The peer's address unless a trusted proxy named the client.
            w_put(&w, peer if self.client_ip is stream.peer_ip else self.client_ip.encode())
            w_put(&w, b"\r\nX-Request-ID: ")
            w_put(&w, self.request_id)
            if self.trace_id is not None:
                # This hop is a span of its own: same trace and flags, a new parent-id
                # (W3C Trace Context §3.2, §4.3); tracestate goes on unchanged.
                w_put(&w, b"\r\ntraceparent: 00-")
                w_put(&w, self.trace_id)
                w_raw(&w, "-", 1)
                w_put(&w, random_hex(8))
                w_raw(&w, "-", 1)
                w_put(&w, self.trace_flags)
                if self.tracestate:
                    w_put(&w, b"\r\ntracestate: ")
                    w_put(&w, self.tracestate)
            w_raw(&w, "\r\n\r\n", 4)
            return w_bytes(&w)
        finally:
            w_free(&w)

    cdef int on_head(self, UpstreamCall call, int status, bytes reason, list fields,
                     bytes content_length, bint no_body) except -1:
        cdef Chain chain = self.chain
        cdef bytes via = self.stream.via
        self.upstream_status = status  # for the access log, before any filter changes it
        if via is not None:
            # RFC 9110 §7.6.3, as on the request: the upstream's Via entries (call.via), then
            # ours with the version of the response received.
            via = _via_entry(via, call.conn is not None and call.conn.http10)
            fields.append(b"Via")
            fields.append(call.via + b", " + via if call.via else via)
        elif call.via is not None:
            fields.append(b"Via")
            fields.append(call.via)
        if status == 101:
            fields.append(b"Connection")
            fields.append(b"upgrade")
            return self._head(None, 101, reason, fields, True, None, False, None, True)
        if chain.body_limit and not no_body:
            self.body_copy = []
            if chain.body_buffered:
                # Held until the body is in, so body hooks may edit it (and its length).
                self.held = (status, reason, fields)
                return 0
        return self._head(None, status, reason, fields, True, content_length, no_body, None,
                          False)

    cdef int on_raw_head(self, UpstreamCall call, int status, bytes reason, bytes block,
                         bytes content_length) except -1:
        # The usual answer (see UpstreamCall.upstream_raw_head): its field lines go to the
        # client as they came, with this hop's Via (the upstream sent none, and spoke
        # HTTP/1.1), edited by compiled response hooks that can (Chain.response_raw), unless
        # hooks need them one by one: other response hooks get them as pairs, body hooks the
        # general path (on_head).
        cdef Chain chain = self.chain
        cdef list pairs
        if chain.body_limit:
            return self.on_head(call, status, reason, fields_of(block), content_length, False)
        self.upstream_status = status
        if self.ran and chain.response and chain.response_raw:
            # Compiled hooks that edit the lines themselves: no pairs at all.
            self.response_length = content_length
            for entry in chain.response:
                if <Py_ssize_t>(<tuple>entry)[0] < self.ran:
                    block = (<Hooks>(<tuple>entry)[2]).response_raw(self, block)
        elif self.ran and chain.response:
            # Response hooks see (name, value) pairs: made from the lines directly.
            pairs = fields_of(block, True)
            if self.stream.via is not None:
                pairs.append((b"Via", self.stream.via))
            return self._head(None, status, reason, pairs, False, content_length, False, None,
                              False)
        self.status = status
        self.head_sent = True
        return self.stream.write_raw_head(self, status, reason, block, content_length)

    cdef int on_interim(self, UpstreamCall call, int status, bytes reason, list fields,
                        bytes via) except -1:
        # RFC 9110 §15.2: an interim response (103 Early Hints, 102) goes to the client at
        # once, ahead of the final one; no filter sees it and no cache keeps it. Via as on
        # the final head (§7.6.3).
        cdef bytes ours = self.stream.via
        if self.finished or self.head_sent:
            return 0
        if ours is not None:
            ours = _via_entry(ours, call.conn is not None and call.conn.http10)
            fields.append(b"Via")
            fields.append(via + b", " + ours if via else ours)
        elif via is not None:
            fields.append(b"Via")
            fields.append(via)
        return self.stream.write_interim(self, status, reason, fields)

    cdef int on_body_view(self, object view) except -1:
        # Sent as it is, unless a body hook keeps a copy or an encoder transforms it.
        if self.body_copy is not None or self.transform is not None:
            return self.on_body(bytes(view))
        self.bytes_out += len(view)
        self.stream.write_body_view(self, view)
        self.stream.deadline = <double>self.clock.now + self.call.upstream.read_timeout
        return 0

    cdef int on_body(self, bytes chunk) except -1:
        cdef list copy = self.body_copy
        cdef Stream stream = self.stream
        cdef tuple held
        if copy is not None:
            self.body_copy_size += PyBytes_GET_SIZE(chunk)
            if self.body_copy_size <= self.chain.body_limit:
                copy.append(chunk)
                if self.held is not None:
                    return 0
            else:
                # Over the cap: the body streams untouched from here; body hooks get None.
                self.body_copy = None
                held = self.held
                if held is not None:
                    self.held = None
                    self._head(None, held[0], held[1], held[2], True, None, False, None,
                               False)
                    for part in copy:
                        self._send(part)
        self._send(chunk)
        stream.deadline = <double>self.clock.now + self.call.upstream.read_timeout
        return 0

    cdef int on_complete(self) except -1:
        cdef tuple held = self.held
        cdef list copy = self.body_copy
        cdef bytes body
        if held is not None:
            self.held = None
            self.body_copy = None
            # _head runs the body hooks after the head hooks, as for a local answer, so a
            # body hook knows the final head (a transform checks the Content-Type).
            self._head(None, held[0], held[1], held[2], True, None, False, join_bytes(copy),
                       False)
        else:
            if self.chain.response_body and self.ran:
                self._body_hooks(join_bytes(self.body_copy)
                                 if self.body_copy is not None else None)
                self.body_copy = None
            if self.transform is not None:
                self._send_tail()
            self.stream.end_body(self)
        self.response_complete = True
        return self.finish()

    cdef int on_answer(self, object resp) except -1:
        self.respond(resp)
        return 0

    cdef int on_abort(self) except -1:
        if self.held is not None:
            # A buffered answer broke off before anything reached the client.
            self.held = None
            self.body_copy = None
            self.close_after = True
            return self.answer("bad_gateway")
        # The answer broke off after its head went out: never let a truncated response
        # look complete, the client connection is dropped.
        self.close_after = True
        self.stream.abort()
        return self.finish()

    cdef int on_tunnel(self, UpstreamCall call) except -1:
        return self.stream.start_tunnel(self, call.conn.transport, call.upstream.read_timeout)

    cdef int on_tunnel_data(self, bytes data) except -1:
        self.bytes_out += PyBytes_GET_SIZE(data)
        return self.stream.write_body(self, data)

    cdef int on_tunnel_closed(self) except -1:
        self.close_after = True
        self.stream.close()
        return self.finish()

    cdef int set_deadline(self, double deadline) except -1:
        self.stream.deadline = deadline
        return 0

    cdef int body_paused(self, bint paused) except -1:
        cdef Stream stream = self.stream
        if paused:
            stream.pause_reading_for(PAUSE_UPSTREAM)
        else:
            stream.resume_reading_for(PAUSE_UPSTREAM | PAUSE_PENDING)
            if not self.body_done:
                stream.deadline = <double>self.clock.now + stream.client_body_timeout
        return 0

    cdef int read_started(self) except -1:
        return self.stream.begin_batch()

    cdef int read_done(self) except -1:
        return self.stream.end_batch()

    cdef bint reading_paused(self) except -1:
        return self.stream.write_paused

    # -- from the codec

    cdef int timed_out(self) except -1:
        """The connection's deadline passed while this request was being answered."""
        if self.source is not None:
            # A local body the client stopped taking (send_timeout): the head went out, so
            # the connection is dropped rather than the answer left looking complete.
            self._drop_source()
            self.close_after = True
            self.stream.abort()
            return self.finish()
        if self.task is not None:
            self.task.cancel()
            self.task = None
            if self.body_waiter is not None:
                # A filter waited for the body the client stopped sending (nginx
                # client_body_timeout): the client's fault, and no upstream was asked.
                self.close_after = True
                return self.answer("request_timeout")
            return self.answer("gateway_timeout")
        if self.call is not None and (self.call.connecting is not None
                                      or self.call.conn is not None):
            return self.call.timed_out()
        self.close_after = True
        return self.answer("request_timeout")

    cdef bint client_gone(self) except -1:
        """The client connection is gone. True when the request goes on without it: the
        upstream has the whole request and its answer is wanted (an idempotency record),
        so it is read to the end, like nginx proxy_ignore_client_abort."""
        cdef UpstreamCall call = self.call
        if self.finished:
            return False
        if (self.finish_upstream and call is not None and call.conn is not None
                and self.body_done and self.upgrade is None):
            if self.stream.write_paused:
                call.pause_reading(False)  # nothing waits on the client's buffer now
            self.stream.deadline = <double>self.clock.now + call.upstream.read_timeout
            return True
        self.finished = True  # nobody to answer: release upstream resources (ended)
        if self.source is not None:
            self._drop_source()
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if call is not None:
            call.drop()
        self.status = self.status or 499
        return False

    cdef int pause_upstream(self, bint paused) except -1:
        """The client stopped (or resumed) reading our writes: so does the upstream's."""
        cdef UpstreamCall call = self.call
        if self.source is not None:
            if not paused:
                self._pump()
            return 1
        if call is None or call.conn is None:
            return 0
        call.pause_reading(paused)
        if not paused:
            self.stream.deadline = <double>self.clock.now + call.upstream.read_timeout
        return 1

    cdef int ended(self) except -1:
        """The request is over (called once, by the codec's accounting)."""
        cdef UpstreamCall call = self.call
        if call is not None:
            call.ended()
            # The call refers to this context (its sink): letting go of it here frees both
            # by reference counting, not by a garbage collection per few hundred requests.
            self.server = call.server
            self.call = None
        if self.source is not None:
            self._drop_source()
        chain = self.chain
        if chain is not None and (<Chain>chain).log:
            for fn in (<Chain>chain).log:
                try:
                    fn(self)
                except Exception:
                    traceback.print_exc()
        return 0

    # -- answering

    cpdef respond(self, object resp):
        """Answer with a response the proxy made (a filter's, or an error)."""
        cdef bytes body
        if self.stream is None:
            raise TypeError("a RequestContext answers only once made by its codec")
        if self.finished or self.head_sent:
            if type(resp) is _StreamResponse:
                resp.source.close()
            return
        if self.chain is None:
            # Answered before routing (a malformed request, a timeout while the head
            # arrived): every response hook of the server-wide chain sees the answer, so
            # it carries CORS headers too, say.
            self.chain = self.rt.server_chain
            self.ran = PY_SSIZE_T_MAX
        if not self.body_done:
            # The rest of the request body is not read: close after answering.
            self.close_after = True
        if type(resp) is _StreamResponse:
            self._respond_stream(resp)
            return
        self._head(resp, resp.status, None, resp.headers, False, None,
                   self.method == _HEAD, resp.body or b"", False)
        self.response_complete = True
        self.finish()

    cdef int _head(self, object resp, int status, bytes reason, list headers, bint flat,
                   bytes content_length, bint no_body, bytes body, bint tunnel) except -1:
        # Response hooks, then the codec writes the head (and ``body``, a whole body, when
        # given). ``resp`` is the local answer (a Response with its body), or None for an
        # upstream's head: then a Response without a body is made only when response hooks
        # run. ``headers`` holds (name, value) pairs, or is flat (name, value, ...) when
        # ``flat``.
        cdef Py_ssize_t i
        cdef Chain chain = self.chain
        cdef bint local = resp is not None
        cdef Response r
        if chain is not None and self.ran:
            if chain.response:
                if local:
                    r = <Response?>resp
                else:
                    if flat:
                        headers = [(headers[i], headers[i + 1])
                                   for i in range(0, len(headers) - 1, 2)]
                    r = Response.__new__(Response)
                    r.status, r.headers, r.body = status, headers, None
                    self.response_length = content_length
                for entry in chain.response:
                    if <Py_ssize_t>(<tuple>entry)[0] < self.ran:
                        compiled = (<tuple>entry)[2]
                        if compiled is not None:
                            (<Hooks>compiled).response(self, r)
                        else:
                            (<tuple>entry)[1](self, r)
                if r.status != status:
                    reason = None  # the upstream's phrase named its own status (RFC 9112 §4)
                    status = r.status
                headers = r.headers
                flat = False
                if local:
                    body = r.body or b""  # a hook may replace a local answer's body
            if body is not None and chain.response_body:
                body = self._body_hooks(body)  # a local answer's, or a held one's
            if self.transform is not None:
                if no_body or tunnel:
                    self.transform = None  # nothing to encode
                elif body is not None:
                    body = self.transform.feed(body) + self.transform.finish()
                    self.transform = None
                else:
                    content_length = None  # re-encoded as it streams: chunked
        if body is not None:
            content_length = PyBytes_FromFormat("%zd", PyBytes_GET_SIZE(body))
        self.status = status
        self.head_sent = True
        return self.stream.write_head(self, status, reason, headers, flat, content_length,
                                      no_body, body, tunnel)

    cdef object _body_hooks(self, object body):
        # on_response_body of the filters that ran, in reverse: each gets the whole body
        # (None when it was over the cap or is incomplete); on a buffered chain, a hook's
        # returned bytes replace it.
        cdef Chain chain = self.chain
        for entry in chain.response_body:
            if <Py_ssize_t>(<tuple>entry)[0] < self.ran:
                result = (<tuple>entry)[1](self, body)
                if result is not None and chain.body_buffered and body is not None:
                    body = bytes(result)
        return body

    cdef int _send(self, bytes chunk) except -1:
        # One piece of a streamed body to the client, through a response hook's encoder.
        if self.transform is not None:
            chunk = self.transform.feed(chunk)
            if not PyBytes_GET_SIZE(chunk):
                return 0
        self.bytes_out += PyBytes_GET_SIZE(chunk)
        return self.stream.write_body(self, chunk)

    cdef int _send_tail(self) except -1:
        cdef bytes tail = self.transform.finish()
        self.transform = None
        if PyBytes_GET_SIZE(tail):
            self.bytes_out += PyBytes_GET_SIZE(tail)
            self.stream.write_body(self, tail)
        return 0

    cdef int _respond_stream(self, object resp) except -1:
        # A local answer whose body is read as the client takes it (engine.errors
        # StreamResponse): the head through the response hooks as an upstream's would go,
        # then _pump, resumed by pause_upstream when the client drains.
        cdef bint no_body = self.method == _HEAD
        self._head(None, resp.status, None, resp.headers, False,
                   PyBytes_FromFormat("%zd", <Py_ssize_t>resp.length), no_body, None, False)
        if no_body or self.status == 204 or self.status == 304:
            resp.source.close()
            self.response_complete = True
            return self.finish()
        self.source = resp.source
        return self._pump()

    cdef int _pump(self) except -1:
        cdef Stream stream = self.stream
        cdef bytes chunk
        cdef Py_ssize_t sent = 0
        while self.source is not None and not stream.write_paused and not stream.closed:
            if sent >= _SOURCE_TURN:
                self.worker.loop.call_soon(self._pump_later)
                return 0
            try:
                chunk = self.source.read(_SOURCE_CHUNK)
            except OSError:
                traceback.print_exc()
                chunk = None
            if chunk is None:
                # The source failed (a file shrank, a disk error) after the head went out.
                self._drop_source()
                self.close_after = True
                stream.abort()
                return self.finish()
            if not PyBytes_GET_SIZE(chunk):
                self._drop_source()
                if self.transform is not None:
                    self._send_tail()
                stream.end_body(self)
                self.response_complete = True
                return self.finish()
            self._send(chunk)
            sent += PyBytes_GET_SIZE(chunk)
            stream.flush()  # the transport's buffer, not a batch, tells when to pause
        return 0

    def _pump_later(self):
        if self.source is not None and not self.finished:
            self._pump()

    cdef int _drop_source(self) except -1:
        source = self.source
        self.source = None
        try:
            source.close()
        except OSError:
            traceback.print_exc()
        return 0

    cdef int finish(self) except -1:
        if self.finished:
            return 0
        self.stream.flush()
        self.finished = True
        return self.stream.exchange_finished(self)
