"""UpstreamCall: one request's way through an upstream, and the Sink it reports to.

The call picks a server, takes a pooled connection or opens one, sends the head the sink writes
and the body the sink collects, and turns what the upstream answers into events for the sink:
a response head (hop-by-hop fields gone), body chunks, completion, or a local answer when it
gives up (the fallback, 502/503/504). Retries happen here, before the sink hears of a head:
nginx proxy_next_upstream rules, bounded by tries, time and the retry budget; per-server
health and the upstream's circuit breaker are fed from here too.

The client's RequestContext (engine/chain/context.pyx) is a Sink; so is FetchSink, which
buffers the answer of a sub-request a filter makes (``await ctx.fetch(...)``).
"""

import asyncio
from functools import partial

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromFormat, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE

from engine.upstream.connection cimport UpstreamConnection
from engine.upstream.pool cimport Pool
from engine.upstream.upstream cimport (
    F_ERROR, F_HTTP_502, F_HTTP_503, F_HTTP_504, F_TIMEOUT, Server, Upstream, status_failure,
)
from engine.wire._common cimport (
    WRITER_STACK, Writer, is_lower, monotonic, w_bytes, w_field,
    w_free, w_init, w_put, w_raw,
)
from engine.wire.h1 cimport (
    R_CONNECTION, R_CONTENT_LENGTH, R_RELAY, R_TRANSFER_ENCODING, R_VIA, chunk, drop_named,
    fields_of, only_keep_alive, response_kind, tokens,
)

from engine.errors import Response, error_response
from engine.upstream.connection import UpstreamConnection as _UpstreamConnection
from engine.wire.framing import CHUNK_END, IDEMPOTENT, transfer_codings

cdef bytes _CHUNK_END = CHUNK_END
cdef frozenset _IDEMPOTENT = IDEMPOTENT
cdef bytes _HEAD = b"HEAD"
# Failures after which a request protected by an idempotency key may go to the next server.
cdef int _PROTECTED_RETRY = F_HTTP_502 | F_HTTP_503 | F_HTTP_504
cdef object _Response = Response

@cython.final
cdef class Clock:
    """The worker's clock: ``now`` in loop seconds, set by the worker's sweep."""

    def __init__(self, double now=0.0):
        self.now = now


cdef class WorkerCore:
    """The worker's state the data plane reads per request (see call.pxd); the worker
    itself, engine.control.worker.Worker, subclasses it in Python."""


cdef class Sink:
    """Base of what an UpstreamCall serves; every event is a C-level call. The defaults
    make a sink that ignores what it does not need."""

    cdef bytes request_head(self, UpstreamCall call):
        raise NotImplementedError

    cdef int on_head(self, UpstreamCall call, int status, bytes reason, list fields,
                     bytes content_length, bint no_body) except -1:
        return 0

    cdef int on_body_view(self, object view) except -1:
        # A piece of the body as a memoryview of the read it came in (a large answer's first
        # part): a sink that can send it as it is overrides this; any other gets bytes.
        return self.on_body(bytes(view))

    cdef int on_raw_head(self, UpstreamCall call, int status, bytes reason, bytes block,
                         bytes content_length) except -1:
        # A head whose relayed fields are still the upstream's lines (``block``, see
        # UpstreamCall.upstream_raw_head): a sink that writes them as they came overrides
        # this; any other gets them split, as on_head.
        return self.on_head(call, status, reason, fields_of(block), content_length, False)

    cdef int on_interim(self, UpstreamCall call, int status, bytes reason, list fields,
                        bytes via) except -1:
        return 0  # (a sub-request's sink has no client to tell)

    cdef int on_body(self, bytes chunk) except -1:
        return 0

    cdef int on_complete(self) except -1:
        return 0

    cdef int on_answer(self, object resp) except -1:
        return 0

    cdef int on_abort(self) except -1:
        return 0

    cdef int on_tunnel(self, UpstreamCall call) except -1:
        return 0

    cdef int on_tunnel_data(self, bytes data) except -1:
        return 0

    cdef int on_tunnel_closed(self) except -1:
        return 0

    cdef int set_deadline(self, double deadline) except -1:
        return 0

    cdef int body_paused(self, bint paused) except -1:
        return 0

    cdef int read_started(self) except -1:
        return 0

    cdef int read_done(self) except -1:
        return 0

    cdef bint reading_paused(self) except -1:
        return False


@cython.final
@cython.freelist(64)
cdef class UpstreamCall:
    @staticmethod
    cdef UpstreamCall new(Sink sink, Upstream upstream):
        cdef UpstreamCall call = UpstreamCall.__new__(UpstreamCall)
        call.sink = sink
        call.upstream = upstream
        sink.call = call
        return call

    cdef int start(self) except -1:
        """Send the request to a server of ``upstream`` (or answer why not)."""
        cdef Upstream upstream = self.upstream
        cdef Server server
        cdef double now = self.sink.clock.now
        if self.tries == 0:
            upstream.budget.request(now)
            self.retry_until = now + upstream.retry_timeout
            if upstream.circuit is not None:
                # The upstream-wide breaker judges what the client gets (the call's final
                # outcome, retries included), not each attempt: the per-server breakers
                # do that. One failing server must not open a healthy upstream's circuit.
                if not upstream.circuit.admits(now):
                    return self.unavailable()
                self.upstream_probe = upstream.circuit.begin(now)
                self.settling = True
        server = upstream.pick(self.sink, now)
        if server is None:
            return self.unavailable()
        return self.send_to(server)

    cdef int send_to(self, Server server) except -1:
        """One attempt: ``server`` takes the request (a pooled connection or a new one)."""
        cdef double now = self.sink.clock.now
        self.server = server
        self.tries += 1
        self.attempting = True
        self.attempt_failure = 0
        server.active += 1
        self.server_probe = 0
        if server.health is not None:
            self.server_probe = server.health.begin(now)
        conn = server.pool.acquire()
        if conn is not None:
            return self.attach(conn)
        return self.connect()

    cdef int unavailable(self) except -1:
        """No server may take the request: the fallback upstream, the static fallback, or
        503 with Retry-After (RFC 9110 §15.6.4, §10.2.3)."""
        cdef Upstream upstream = self.upstream
        cdef Sink sink = self.sink
        if upstream.fallback_to is not None and not self.fell_back:
            # The fallback upstream gets its own tries, retry time, budget and breaker.
            self.settle_upstream()
            self.fell_back = True
            self.sink.tried = None
            self.tries = 0
            self.exhausted = False
            self.upstream = upstream.fallback_to
            return self.start()
        self.failure = F_ERROR
        self.settle_upstream()
        fallback = upstream.fallback
        if fallback is not None:
            # (a copy: response filters edit the headers of what they answer)
            return sink.on_answer(_Response(fallback.status, list(fallback.headers),
                                            fallback.body))
        seconds = upstream.available_in(<double>sink.clock.now)
        return sink.on_answer(error_response(
            "upstream_unavailable", sink.request_id.decode(),
            headers=[(b"Retry-After", b"%d" % max(1, <long>(seconds + 0.999)))]))

    cdef int settle_upstream(self) except -1:
        # The upstream-wide breaker's verdict on this call: ``failure`` (0 = answered, -1 =
        # no verdict), once.
        cdef Upstream upstream = self.upstream
        if not self.settling:
            return 0
        self.settling = False
        if self.failure < 0:
            upstream.circuit.cancel(self.upstream_probe)
        else:
            upstream.circuit.record(not (self.failure & upstream.fail_mask),
                                    self.sink.clock.now, self.upstream_probe)
        self.upstream_probe = 0
        return 0

    cdef int end_attempt(self, int failure) except -1:
        """The current attempt is over: ``failure`` 0 = the server answered, a failure bit,
        or -1 = no verdict (the client went away)."""
        cdef Server server = self.server
        if server is None or not self.attempting:
            return 0
        self.attempting = False
        server.active -= 1
        if server.health is not None:
            if failure < 0:
                server.health.cancel(self.server_probe)
            else:
                server.health.record(not (failure & self.upstream.fail_mask),
                                     self.sink.clock.now, self.server_probe)
        return 0

    cdef Server retry_target(self, int failure, bint sent):
        """The server to try next after ``failure``, or None when the request may not or
        cannot be retried (nginx proxy_next_upstream rules). ``sent``: the request reached
        the server (else the connection was never made). ``exhausted`` is set when the
        request could be retried but no server is left: the fallback's case."""
        cdef Upstream upstream = self.upstream
        cdef Sink sink = self.sink
        cdef double now = sink.clock.now
        if (not failure & upstream.retry_mask or self.head_sent or sink.finished
                or self.body_streamed or self.tries >= upstream.tries
                or now >= self.retry_until):
            return None
        if sent and sink.method not in _IDEMPOTENT and not (
                sink.protected and failure & _PROTECTED_RETRY):
            # A POST or PATCH the upstream may have acted on is never sent twice (nginx
            # 1.9.13 non_idempotent rule; RFC 9110 §9.2.2). One that never got through may
            # go elsewhere. A claimed idempotency key adds only the answers in which the
            # upstream itself says it did not act (502/503/504): after a timeout or a lost
            # connection the outcome is unknown, and a second server would run it again.
            return None
        if self.sink.tried is None:
            self.sink.tried = [self.server]
        else:
            self.sink.tried.append(self.server)
        server = upstream.pick(sink, now)
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
        self.failure = F_TIMEOUT if code == "gateway_timeout" else F_ERROR
        self.settle_upstream()
        return self.sink.on_answer(error_response(code, self.sink.request_id.decode()))

    cdef int retry(self, Server server) except -1:
        self.retried = False  # a stale pooled connection of the next server may be retried
        return self.send_to(server)

    cdef int connect(self) except -1:
        cdef Sink sink = self.sink
        sink.set_deadline(<double>sink.clock.now + self.upstream.connect_timeout)
        self.connecting = sink.worker.loop.create_task(self._connect(self.server))
        return 0

    async def _connect(self, server):
        # Cancelled (timeout, client gone): whoever cancels this task ends the attempt and
        # may already have started the next one, so a cancelled task touches nothing.
        cdef WorkerCore worker = self.sink.worker
        try:
            if server.ssl is None:  # (TLS: uvloop's)
                _, conn = await worker.poller.connect(
                    partial(_UpstreamConnection, server.pool), server.host, server.port)
            else:
                _, conn = await worker.loop.create_connection(
                    partial(_UpstreamConnection, server.pool), server.host, server.port,
                    ssl=server.ssl, server_hostname=server.server_hostname)
        except OSError:  # (ssl.SSLError too: a certificate that does not verify)
            self.connecting = None
            if not self.sink.finished:
                self.upstream_failed(None, "bad_gateway", True)
            return
        self.connecting = None
        if self.sink.finished:
            (<Pool?>server.pool).release(conn, self.sink.clock.now)
            return
        self.attach(conn)

    cdef int attach(self, UpstreamConnection conn) except -1:
        cdef Sink sink = self.sink
        cdef bytes data
        cdef list parts
        self.conn = conn
        self.server.pool.active += 1
        data = sink.request_head(self)
        pending = sink.pending
        if pending or (self.chunked_up and sink.body_done):
            parts = [data]
            if pending:
                if self.chunked_up:
                    for c in pending:
                        parts.append(chunk(c))
                else:
                    parts += pending
                if not sink.body_done:
                    # From now on the body streams straight through. A complete body stays
                    # in ``pending`` so a stale keep-alive connection can be retried; part of
                    # one sent now makes the request unrepeatable.
                    self.body_streamed = True
                    sink.pending = None
                    sink.pending_size = 0
            if self.chunked_up and sink.body_done:
                parts.append(_CHUNK_END)
            data = b"".join(parts)
        if not sink.t_upstream:
            sink.t_upstream = monotonic()
        # Until the body is in, the wait is on the client (client_body_timeout, 408): the
        # sink knows that timeout; here it is the upstream's.
        if sink.body_done:
            sink.set_deadline(<double>sink.clock.now + self.upstream.read_timeout)
        else:
            sink.body_paused(False)
        conn.start(self, data, sink.method == _HEAD)
        if sink.reading_paused():
            # The client is not reading (an earlier pipelined answer filled its buffer):
            # this response waits upstream until it reads again, it is not buffered here.
            conn.transport.pause_reading()
        return 0

    # -- the request body (the sink hands on what arrives after attach)

    cdef int send_body(self, bytes data) except -1:
        cdef UpstreamConnection conn = self.conn
        if self.chunked_up:
            conn.transport.write(chunk(data))
        else:
            conn.transport.write(data)
        self.body_streamed = True
        return 0

    cdef int body_end(self) except -1:
        cdef Sink sink = self.sink
        if self.conn is not None:
            if self.chunked_up:
                self.conn.transport.write(_CHUNK_END)
            sink.set_deadline(<double>sink.clock.now + self.upstream.read_timeout)
        return 0

    # -- the upstream's answer (called by UpstreamConnection)

    cdef int read_started(self) except -1:
        return self.sink.read_started()

    cdef int read_done(self) except -1:
        return self.sink.read_done()

    cdef bint upstream_head(self, UpstreamConnection conn, int status, bytes reason,
                            list fields) except -1:
        """The response head (``fields`` flat: name, value, ...), hop-by-hop fields removed
        and framing checked, goes to the sink. False when it must not be relayed."""
        cdef bytes cl = None
        cdef bytes te = None
        cdef list connection = None
        cdef bytes via = None
        cdef list out = []  # the fields relayed, flat
        cdef tuple named
        cdef bytes name, value
        cdef Py_ssize_t i
        cdef int kind
        cdef bint no_body
        cdef Sink sink = self.sink
        if sink.finished:
            conn.abort()
            return False
        for i in range(0, len(fields) - 1, 2):
            name = fields[i]
            value = fields[i + 1]
            kind = response_kind(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
            if kind == R_RELAY:
                out.append(name)
                out.append(value)
            elif kind == R_CONTENT_LENGTH:
                cl = value
            elif kind == R_TRANSFER_ENCODING:
                te = value if te is None else te + b", " + value
            elif kind == R_CONNECTION:
                if connection is None:
                    connection = [value]
                else:
                    connection.append(value)
            elif kind == R_VIA:
                via = value if via is None else via + b", " + value  # (RFC 9110 §5.3)
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
        if connection is not None and not only_keep_alive(connection):
            # (A lone "keep-alive" names a field that is not in ``out``: it was dropped.)
            named = tokens(connection)
            if status == 101 and b"upgrade" in named:
                # the protocol switched to (RFC 9110 §7.8)
                named = tuple([t for t in named if t != b"upgrade"])
            out = drop_named(out, named, True)
            if b"via" in named:
                via = None
        if not self._status_verdict(status):
            return False
        if status == 101:
            if sink.upgrade is None:
                self.upstream_failed(conn, "bad_gateway", False)
                conn.abort()
                return False
            # The server answered: that is the attempt's verdict, now, not when the tunnel
            # closes hours later (a half-open circuit's probe must not be held that long).
            # The tunnel still occupies the server (max_conns, least_conn) until it ends.
            self.end_attempt(0)
            self.settle_upstream()
            self.server.active += 1
            self.tunnel_held = True
            self.head_sent = True
            # Set before llhttp "completes" the 101 (on_message_complete): from here on the
            # connection's bytes are the tunnel's.
            conn.tunnel = True
            self.via = via
            sink.on_head(self, 101, reason, out, None, True)
            return sink.on_tunnel(self)
        no_body = status == 204 or status == 304 or sink.method == _HEAD
        self.close_delimited = not no_body and cl is None and te is None
        self.via = via
        self.head_sent = True
        sink.on_head(self, status, reason, out, cl, no_body)
        return True

    cdef bint upstream_raw_head(self, UpstreamConnection conn, int status, bytes reason,
                                bytes block, bytes content_length) except -1:
        """A final head the connection took without llhttp (a status of 200-599 but 204 and
        304, framed by ``content_length``, no Transfer-Encoding, Via or Connection but
        keep-alive): ``block`` holds its field lines as they came, hop-by-hop ones cut out.
        False when it must not be relayed."""
        cdef Sink sink = self.sink
        if sink.finished:
            conn.abort()
            return False
        if not self._status_verdict(status):
            return False
        self.close_delimited = False
        self.via = None
        self.head_sent = True
        sink.on_raw_head(self, status, reason, block, content_length)
        return True

    cdef bint _status_verdict(self, int status) except -1:
        # What a final status says of the attempt: False when the next server is tried
        # instead (the response is dropped unread).
        cdef int failure = status_failure(status)
        cdef Server server
        if failure:
            server = self.retry_target(failure, True)
            if server is not None:
                self.end_attempt(failure)
                self.drop()
                self.retry(server)
                return False
            self.attempt_failure = failure
        self.failure = failure
        return True

    cdef int upstream_interim(self, UpstreamConnection conn, int status, bytes reason,
                              list fields) except -1:
        """An interim (1xx) head, before the final one: relayed without its hop-by-hop
        fields (RFC 9110 §7.6.1); Via apart, as for ``upstream_head``."""
        cdef list out = []
        cdef list connection = None
        cdef bytes via = None
        cdef bytes name, value
        cdef Py_ssize_t i
        cdef int kind
        if self.sink.finished:
            return 0
        for i in range(0, len(fields) - 1, 2):
            name = fields[i]
            value = fields[i + 1]
            kind = response_kind(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
            if kind == R_RELAY:
                out.append(name)
                out.append(value)
            elif kind == R_CONNECTION:
                if connection is None:
                    connection = [value]
                else:
                    connection.append(value)
            elif kind == R_VIA:
                via = value if via is None else via + b", " + value
        if connection is not None and not only_keep_alive(connection):
            named = tokens(connection)
            out = drop_named(out, named, True)
            if b"via" in named:
                via = None
        return self.sink.on_interim(self, status, reason, out, via)

    cdef int upstream_body(self, bytes data) except -1:
        return self.sink.on_body(data)

    cdef int upstream_body_view(self, object view) except -1:
        return self.sink.on_body_view(view)

    cdef int upstream_complete(self, UpstreamConnection conn, bint reusable) except -1:
        cdef Sink sink = self.sink
        cdef Pool pool = self.server.pool
        self.conn = None
        pool.active -= 1
        self.end_attempt(self.attempt_failure)
        self.settle_upstream()
        self.complete = True
        if reusable and sink.body_done and sink.upgrade is None:
            # A refused upgrade's connection is not reused: the upstream's parser may
            # already treat it as switched (llhttp pauses on every Upgrade request).
            pool.release(conn, <double>sink.clock.now)
        else:
            conn.close()
        if self.write_paused:
            # Answered before the whole body was sent: the client may be paused on this
            # upstream's full buffer; the rest of its body is read and dropped now.
            self.write_paused = False
            sink.body_paused(False)
        return sink.on_complete()

    cdef int upstream_failed(self, UpstreamConnection conn, str code, bint retry=True) except -1:
        """``retry`` is False when the upstream answered something (a malformed response):
        that is its answer, not a connection lost in a keep-alive race."""
        cdef Server server
        cdef Sink sink = self.sink
        if conn is not None and self.conn is conn:
            self.conn = None
            self.server.pool.active -= 1
            if (retry and conn.requests > 1 and not self.head_sent and not self.body_streamed
                    and not self.retried and not sink.finished
                    and sink.method in _IDEMPOTENT
                    and (sink.body_done or not sink.body_received)):
                # The keep-alive connection was closed by the server as we reused it
                # (RFC 9112 §9.3.1): resend once on a fresh one, but only an idempotent
                # request, which may be repeated automatically (RFC 9112 §9.3.1.1).
                self.retried = True
                return self.connect()
        if sink.finished:
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
            return self.failed(code)
        # Never let a truncated response look complete: the sink drops its client.
        self.failure = F_ERROR
        self.settle_upstream()
        return sink.on_abort()

    cdef int upstream_write_paused(self, bint paused) except -1:
        cdef Sink sink = self.sink
        self.write_paused = paused
        if paused:
            # The upstream is not taking the body: its send_timeout runs, not the client's.
            sink.body_paused(True)
            sink.set_deadline(<double>sink.clock.now + self.upstream.send_timeout)
        elif sink.body_done:
            sink.body_paused(False)
            sink.set_deadline(<double>sink.clock.now + self.upstream.read_timeout)
        else:
            sink.body_paused(False)
        return 0

    cdef int tunnel_data(self, bytes data) except -1:
        cdef Sink sink = self.sink
        sink.on_tunnel_data(data)
        sink.set_deadline(<double>sink.clock.now + self.upstream.read_timeout)
        return 0

    cdef int tunnel_closed(self) except -1:
        if self.conn is not None:
            self.conn = None
            self.server.pool.active -= 1
        return self.sink.on_tunnel_closed()

    # -- from the sink

    cdef int pause_reading(self, bint paused) except -1:
        """The sink cannot take more of the answer now (its client is not reading)."""
        if self.conn is not None:
            if paused:
                self.conn.transport.pause_reading()
            else:
                self.conn.transport.resume_reading()
        return 0

    cdef int timed_out(self) except -1:
        """The sink's deadline passed while this call was running."""
        cdef Server server = None
        cdef Sink sink = self.sink
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
            server = self.retry_target(F_TIMEOUT, False)
            self.end_attempt(F_TIMEOUT)
            if server is not None:
                return self.retry(server)
            return self.failed("gateway_timeout")
        if self.conn is None:
            return 0
        if sink.body_done and not self.head_sent:
            server = self.retry_target(F_TIMEOUT, True)
        self.end_attempt(F_TIMEOUT)
        self.drop()
        if server is not None:
            return self.retry(server)
        if self.head_sent:
            self.failure = F_TIMEOUT
            self.settle_upstream()
            return sink.on_abort()
        if not sink.body_done and not self.write_paused:
            # The client stopped sending the body it announced (nginx client_body_timeout);
            # the upstream never got a whole request, and is not to blame.
            self.failure = -1
            self.settle_upstream()
            return sink.on_answer(error_response("request_timeout",
                                                 sink.request_id.decode()))
        return self.failed("gateway_timeout")

    cdef int drop(self) except -1:
        """Abandon the upstream connection mid-exchange: it is in an unknown state."""
        cdef UpstreamConnection conn = self.conn
        if conn is not None:
            self.conn = None
            self.server.pool.active -= 1
            if self.sink.body_done:
                conn.abort()
            else:
                # The server holds a head and part of a body that will never be completed
                # (RFC 9112 §7.1: a bad chunk, a 413, a client gone mid-body): a reset, so
                # nothing can take it for a whole request.
                conn.reset()
        if self.attempting:
            self.end_attempt(-1)
        return 0

    cdef int ended(self) except -1:
        """The sink is done with this call, however it ended (called once)."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self.drop()
        if self.settling:
            self.failure = -1  # no verdict: nobody waited for the outcome
            self.settle_upstream()
        if self.tunnel_held:
            self.tunnel_held = False
            self.server.active -= 1
        return 0


# -- sub-requests

cdef tuple _FETCH_DROP = (b"host", b"content-length", b"transfer-encoding", b"connection")


@cython.final
cdef class FetchSink(Sink):
    """A request the gateway makes itself, through an upstream's balancing, pools, retries
    and breakers; the whole answer is buffered (up to ``max_body``)."""

    def __init__(self, worker, bytes method, bytes target, list headers, bytes body,
                 bytes request_id, Py_ssize_t max_body, bytes host):
        self.worker = worker
        self.clock = worker.ticks
        self.method = method
        self.target = target
        self.headers = [(n, v) for n, v in headers if n.lower() not in _FETCH_DROP]
        self.host = host
        self.request_id = request_id
        self.pending = [body] if body else None
        self.pending_size = len(body) if body else 0
        self.content_length = None if body is None else self.pending_size
        self.body_done = True
        self.max_body = max_body
        self.body_parts = []
        self.done = worker.loop.create_future()

    cdef bytes request_head(self, UpstreamCall call):
        cdef Writer w
        cdef char stack[WRITER_STACK]
        w_init(&w, stack, WRITER_STACK)
        try:
            w_put(&w, self.method)
            w_raw(&w, " ", 1)
            w_put(&w, self.target)
            w_raw(&w, " HTTP/1.1\r\n", 11)
            w_field(&w, b"Host", call.upstream.host_header or self.host or call.server.authority)
            for name, value in self.headers:
                w_field(&w, name, value)
            if self.content_length is not None:
                w_put(&w, PyBytes_FromFormat("Content-Length: %zd\r\n", self.pending_size))
            w_put(&w, b"X-Request-ID: ")
            w_put(&w, self.request_id)
            w_raw(&w, "\r\n\r\n", 4)
            return w_bytes(&w)
        finally:
            w_free(&w)

    cdef int on_head(self, UpstreamCall call, int status, bytes reason, list fields,
                     bytes content_length, bint no_body) except -1:
        self.status = status
        self.response_headers = [(fields[i], fields[i + 1])
                                 for i in range(0, len(fields) - 1, 2)]
        if call.via is not None:
            self.response_headers.append((b"Via", call.via))  # (the gateway made the request)
        return 0

    cdef int on_body(self, bytes data) except -1:
        self.body_size += PyBytes_GET_SIZE(data)
        if self.body_size > self.max_body:
            self.call.drop()
            return self._settle(error_response("bad_gateway", self.request_id.decode(),
                                               "the sub-request's answer is too large"))
        self.body_parts.append(data)
        return 0

    cdef int on_complete(self) except -1:
        return self._settle(Response(self.status, self.response_headers,
                                     b"".join(self.body_parts)))

    cdef int on_answer(self, object resp) except -1:
        return self._settle(resp)

    cdef int on_abort(self) except -1:
        return self._settle(error_response("bad_gateway", self.request_id.decode()))

    cdef int on_tunnel(self, UpstreamCall call) except -1:
        call.drop()
        return self._settle(error_response("bad_gateway", self.request_id.decode()))

    cdef int set_deadline(self, double deadline) except -1:
        # One timer, re-armed only when it fires early: a deadline moved by every read
        # costs an assignment, not a timer.
        self.deadline = deadline
        if self.timer is None and not self.finished:
            self.timer = self.worker.loop.call_at(deadline, self._expired)
        return 0

    def _expired(self):
        self.timer = None
        if self.finished:
            return
        if self.worker.loop.time() < self.deadline:
            self.timer = self.worker.loop.call_at(self.deadline, self._expired)
            return
        self.call.timed_out()

    cdef int _settle(self, object resp) except -1:
        cdef UpstreamCall call = self.call
        if self.finished:
            return 0
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if call is not None:
            call.ended()
        if not self.done.done():
            self.done.set_result(resp)
        return 0

    def abandon(self):
        """The caller stopped waiting (cancelled): release the upstream connection."""
        self._settle(None)

    async def wait(self):
        try:
            return await asyncio.shield(self.done)
        except asyncio.CancelledError:
            self.abandon()
            raise


async def fetch(worker, Upstream upstream not None, bytes method, bytes target, list headers,
                bytes body, bytes request_id, Py_ssize_t max_body, bytes host=None):
    # ``body`` None: no body and no Content-Length (b"": "Content-Length: 0").
    """``Response`` of a sub-request through ``upstream``; the proxy's own error answer
    (502/503/504 JSON) when no server answered."""
    cdef FetchSink sink = FetchSink(worker, method, target, headers, body, request_id,
                                    max_body, host)
    cdef UpstreamCall call = UpstreamCall.new(sink, upstream)
    call.start()
    return await sink.wait()
