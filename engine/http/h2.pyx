"""The HTTP/2 codec (RFC 9113) over the ``h2`` library: one H2Connection per client
connection, one H2Stream (a chain Stream, engine/chain/context.pyx) per request, so the runner,
every filter and the upstream call serve HTTP/2 exactly as they serve HTTP/1.1. Upstreams stay
HTTP/1.1.

Limits (docs/http2.md says why):
- SETTINGS_MAX_CONCURRENT_STREAMS 128 (nginx's); a stream past it is refused by h2.
- SETTINGS_MAX_HEADER_LIST_SIZE = server.max_header_size: HPACK decoding stops (and the
  connection closes) as soon as the decoded list passes it, so a small header block that
  inflates (an HPACK bomb) costs no more than the limit; h2 keeps the dynamic table at 4 KiB.
- A header block may span at most 64 CONTINUATION frames of 16 KiB (h2's bound): a
  CONTINUATION flood is a connection error, not a buffer that grows.
- Streams the client resets (CVE-2023-44487, rapid reset) draw on a budget of RESET_BURST
  refilled at RESET_RATE per second; an empty budget is a GOAWAY(ENHANCE_YOUR_CALM).
- server.keepalive_requests streams per connection, then GOAWAY (as nginx does).
"""

import sys
import traceback

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

cimport cython
from cpython.bytes cimport PyBytes_GET_SIZE

from engine.chain.context cimport PAUSE_PENDING, PAUSE_UPSTREAM, RequestContext, Stream
from engine.http.stats cimport RouteStats
from engine.upstream.call cimport WorkerCore
from engine.wire._common cimport monotonic

from engine.errors import error_response
from engine.wire.framing import (
    H_CONNECTION, H_CONTENT_LENGTH, H_EXPECT, H_FORWARDED, H_FORWARDED_7239, H_HOP, H_HOST,
    H_REQUEST_ID, H_TRACEPARENT, H_TRACESTATE, H_TRANSFER_ENCODING, H_UPGRADE, H_VIA, H_XFF,
    REQUEST_KINDS, host_for_routing, normalize_percent, parse_traceparent, peer_of, random_hex,
    remove_dot_segments, valid_host, via_entry,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4

MAX_CONCURRENT_STREAMS = 128
# Response bytes a stream may hold beyond what the client's flow-control window lets out;
# past this its upstream is paused (the same back-pressure as a slow HTTP/1.1 client).
STREAM_BUFFER = 65536
# The connection-level receive window: streams' own windows (65535 each) bound each upload.
CONNECTION_WINDOW = 1 << 20
RESET_BURST = 200
RESET_RATE = 100.0

cdef object _events_RequestReceived = h2.events.RequestReceived
cdef object _events_DataReceived = h2.events.DataReceived
cdef object _events_StreamEnded = h2.events.StreamEnded
cdef object _events_StreamReset = h2.events.StreamReset
cdef object _events_WindowUpdated = h2.events.WindowUpdated
cdef object _events_RemoteSettingsChanged = h2.events.RemoteSettingsChanged
cdef object _events_ConnectionTerminated = h2.events.ConnectionTerminated
cdef object _ProtocolError = h2.exceptions.ProtocolError
cdef object _StreamClosedError = h2.exceptions.StreamClosedError
cdef object _FlowControlError = h2.exceptions.FlowControlError
cdef object _ErrorCodes = h2.errors.ErrorCodes

cdef bytes _HEAD = b"HEAD"
# Response fields that are connection-specific: never sent in HTTP/2 (RFC 9113 §8.2.2).
cdef frozenset _CONNECTION_SPECIFIC = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
cdef tuple _STATUS = tuple(b"%d" % s for s in range(1000))


@cython.final
cdef class H2Stream(Stream):
    """One request of an HTTP/2 connection: the Stream its RequestContext answers on."""

    cdef public H2Connection conn
    cdef public int stream_id
    cdef public RequestContext ctx
    cdef list out                       # DATA waiting for flow-control window
    cdef Py_ssize_t out_size
    cdef bint end_queued                # END_STREAM goes after ``out``
    cdef bint ended                     # END_STREAM sent (or the stream was reset)
    cdef bint head_out                  # a response HEADERS frame went out
    cdef Py_ssize_t unacked             # received DATA not acknowledged while paused

    cdef int write_head(self, RequestContext ctx, int status, bytes reason, list headers,
                        bint flat, bytes content_length, bint no_body, bytes body,
                        bint tunnel) except -1:
        cdef list out = [(b":status", _STATUS[status] if 100 <= status <= 999
                          else b"%d" % status)]
        cdef Py_ssize_t i
        cdef bytes name
        cdef bint end
        if self.ended:
            return 0
        pairs = ([(headers[i], headers[i + 1]) for i in range(0, len(headers) - 1, 2)]
                 if flat else headers)
        for name, value in pairs:
            name = name.lower()
            if name not in _CONNECTION_SPECIFIC:
                out.append((name, value))
        if content_length is not None and status != 204 and status != 304:
            out.append((b"content-length", content_length))
        out.append((b"x-request-id", ctx.request_id))
        # RFC 9110 §15.3.5, §15.4.5: no content in 1xx, 204, 304 (nor for HEAD).
        no_body = no_body or status < 200 or status == 204 or status == 304
        end = no_body or body is not None
        self.head_out = True
        self.conn.send_headers(self.stream_id, out, no_body)
        if no_body:
            self.sent_end()
        elif body is not None:
            if body:
                ctx.bytes_out += PyBytes_GET_SIZE(body)
                self.queue(body)
            self.end_queued = True
            self.pump()
        return 0

    cdef int write_body(self, RequestContext ctx, bytes data) except -1:
        if self.ended or self.end_queued or not PyBytes_GET_SIZE(data):
            return 0
        self.queue(data)
        self.pump()
        return 0

    cdef int end_body(self, RequestContext ctx) except -1:
        if not self.ended and not self.end_queued:
            self.end_queued = True
            self.pump()
        return 0

    cdef int send_continue(self, RequestContext ctx) except -1:
        # RFC 9113 §8.1: an interim response is a HEADERS frame of its own.
        if not self.ended and not self.head_out:
            self.conn.send_headers(self.stream_id, [(b":status", b"100")], False)
        return 0

    cdef int start_tunnel(self, RequestContext ctx, object transport,
                          double timeout) except -1:
        # Upgrade is connection-specific and refused on HTTP/2 (see H2Connection.request),
        # so no upstream ever switches protocols for one of its streams.
        self.abort()
        return 0

    cdef int begin_batch(self) except -1:
        self.conn.batch += 1
        return 0

    cdef int flush(self) except -1:
        if not self.conn.batch:
            self.conn.flush()
        return 0

    cdef int end_batch(self) except -1:
        if self.conn.batch:
            self.conn.batch -= 1
        if not self.conn.batch:
            self.conn.flush()
        return 0

    cdef str route_host(self, bytes host):
        return "" if host is None else host_for_routing(host)

    cdef int exchange_finished(self, RequestContext ctx) except -1:
        self.conn.finished(self)
        return 0

    cdef int pause_reading_for(self, int reason) except -1:
        # An HTTP/2 stream's body is paused by not acknowledging it: the client runs out of
        # window (RFC 9113 §5.2), other streams go on.
        self.paused |= reason
        return 0

    cdef int resume_reading_for(self, int reason) except -1:
        cdef Py_ssize_t n
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.unacked:
                n, self.unacked = self.unacked, 0
                self.conn.acknowledge(self.stream_id, n)
        return 0

    cdef int fail(self) except -1:
        cdef RequestContext ctx = self.ctx
        if ctx.finished or ctx.head_sent:
            self.abort()
            return 0
        if ctx.task is not None:
            ctx.task.cancel()
            ctx.task = None
        if ctx.call is not None:
            ctx.call.drop()
        ctx.respond(error_response("internal_error", ctx.request_id.decode()))
        return 0

    cpdef close(self):
        self.end_body(self.ctx)

    cpdef abort(self):
        # A response cut short must not look complete: the stream is reset (RFC 9113 §8.1).
        if not self.ended:
            self.ended = True
            self.out = None
            self.conn.reset(self.stream_id, _ErrorCodes.INTERNAL_ERROR)

    # -- the codec's side

    cdef int queue(self, bytes data) except -1:
        self.conn.sending[self.stream_id] = self
        if self.out is None:
            self.out = [data]
        else:
            self.out.append(data)
        self.out_size += PyBytes_GET_SIZE(data)
        return 0

    cdef int pump(self) except -1:
        """Send what the flow-control windows allow; pause the upstream while more than
        STREAM_BUFFER waits, resume it once the client caught up."""
        cdef list out = self.out
        cdef bytes data
        cdef Py_ssize_t n
        if self.ended:
            return 0
        if out:
            while out and not self.conn.write_paused:
                data = out[0]
                n = min(self.conn.window(self.stream_id), PyBytes_GET_SIZE(data))
                if n <= 0:
                    break
                if n == PyBytes_GET_SIZE(data):
                    out.pop(0)
                else:
                    out[0] = data[n:]
                    data = data[:n]
                self.out_size -= n
                self.conn.send_data(self.stream_id, data)
        if not out and self.end_queued:
            self.conn.end_stream(self.stream_id)
            self.sent_end()
        if self.ended:
            self.conn.sending.pop(self.stream_id, None)
        if self.out_size > STREAM_BUFFER:
            if not self.write_paused:
                self.write_paused = True
                self.deadline = <double>self.clock.now + self.conn.send_timeout
                self.ctx.pause_upstream(True)
        elif self.write_paused:
            self.write_paused = False
            self.ctx.pause_upstream(False)
        return 0

    cdef int sent_end(self) except -1:
        # END_STREAM went out. A request body still coming is not wanted: RST_STREAM
        # NO_ERROR after a complete response (RFC 9113 §8.1).
        self.ended = True
        self.conn.sending.pop(self.stream_id, None)
        if not self.ctx.body_done and not self.closed:
            self.conn.reset(self.stream_id, _ErrorCodes.NO_ERROR)
        return 0

    cdef int received(self, bytes data, Py_ssize_t flow) except -1:
        cdef RequestContext ctx = self.ctx
        ctx.body_received += PyBytes_GET_SIZE(data)
        if self.paused:
            self.unacked += flow
        else:
            self.conn.acknowledge(self.stream_id, flow)
        if ctx.route is not None and ctx.body_received > ctx.route.max_body_size:
            return self.too_large()
        if ctx.call is not None and ctx.call.conn is not None or ctx.body_waiter is not None:
            self.deadline = <double>self.clock.now + self.client_body_timeout
        ctx.client_body(data)
        ctx.client_read_parsed()
        return 0

    cdef int too_large(self) except -1:
        cdef RequestContext ctx = self.ctx
        if not ctx.finished and not ctx.head_sent:
            if ctx.call is not None:
                ctx.call.drop()
            ctx.respond(error_response("body_too_large", ctx.request_id.decode()))
        # The rest of the body is not wanted (RFC 9113 §8.1: a complete response, then
        # RST_STREAM NO_ERROR tells the client to stop sending).
        if not self.ended:
            self.abort()
        return 0

    cdef int body_end(self) except -1:
        cdef RequestContext ctx = self.ctx
        if not ctx.body_done:
            ctx.client_body_end()
            ctx.client_read_parsed()
        return 0

    cdef int cancelled(self) except -1:
        """The client reset the stream: an abort, as a closed HTTP/1.1 connection is."""
        cdef RequestContext ctx = self.ctx
        self.ended = True
        self.closed = True
        self.out = None
        if not ctx.finished and not ctx.client_gone():
            self.conn.finished(self)
        return 0

    cdef int timed_out(self) except -1:
        cdef RequestContext ctx = self.ctx
        if self.write_paused or ctx.finished:
            self.abort()
            if not ctx.finished:
                ctx.client_gone()
                self.conn.finished(self)
        else:
            ctx.timed_out()
        return 0


@cython.final
cdef class H2Connection:
    """One HTTP/2 client connection (an asyncio protocol, duck-typed as uvloop wants)."""

    cdef public WorkerCore worker
    cdef public object listener
    cdef public object transport
    cdef public object h2
    cdef public dict streams            # stream id -> H2Stream being answered
    cdef public dict sending            # stream id -> H2Stream with DATA waiting for window
    cdef public double deadline
    cdef public object active           # (worker.drain) not None while a stream is open
    cdef public bint in_head
    cdef public Py_ssize_t requests
    cdef public bint closed
    cdef public bint lingering          # after an error's GOAWAY: reading only to discard
    cdef public bint write_paused
    cdef public int goaway              # last stream id a GOAWAY let through; -1: none yet
    cdef public int batch
    cdef object rt
    cdef object settings
    cdef object ids
    cdef object clock
    cdef str peer_ip
    cdef bytes peer_ip_bytes
    cdef bint trusted
    cdef object front
    cdef public object client_cert     # set by the listener's front (engine/chain/front.py)
    cdef bytes via
    cdef bytes via_field
    cdef double reset_budget
    cdef double reset_at
    cdef public double send_timeout

    def __init__(self, worker, listener=None):
        self.worker = worker
        self.listener = listener
        self.clock = worker.ticks
        self.ids = worker.request_ids
        self.streams = {}
        self.sending = {}
        self.goaway = -1
        self.front = listener.front if listener is not None else None
        self.reset_budget = RESET_BURST
        self._use_settings(worker.runtime)

    cdef int _use_settings(self, object rt) except -1:
        settings = rt.settings
        self.rt = rt
        self.settings = settings
        self.send_timeout = settings.send_timeout
        self.via, self.via_field = via_entry(settings.via)
        return 0

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        self.peer_ip, self.peer_ip_bytes, self.trusted = peer_of(transport, self.settings)
        if self.front is not None:
            self.front.connection_made(self, transport)  # (a TLS client certificate)
        # Outbound fields are the upstream's, parsed by llhttp, lowercased and stripped of
        # connection-specific ones in write_head: h2's second look would only cost time.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_outbound_headers=False)
        conn = self.h2 = h2.connection.H2Connection(config=config)
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.settings.max_header_size,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        # From the first frame, not once the client acknowledged our SETTINGS (h2 waits).
        conn.decoder.max_header_list_size = self.settings.max_header_size
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.deadline = <double>self.clock.now + self.settings.client_header_timeout
        self.worker.conns.add(self)
        self.flush()

    def data_received(self, data):
        cdef H2Stream stream
        if self.closed or self.lingering:
            return
        try:
            events = self.h2.receive_data(data)
        except _ProtocolError as exc:
            return self._connection_error(exc)
        self.batch += 1
        try:
            for event in events:
                kind = type(event)
                if kind is _events_DataReceived:
                    stream = self.streams.get(event.stream_id)
                    if stream is None:
                        self.acknowledge(event.stream_id, event.flow_controlled_length)
                    else:
                        stream.received(event.data, event.flow_controlled_length)
                elif kind is _events_RequestReceived:
                    self.request(event.stream_id, event.headers, event.stream_ended is not None)
                elif kind is _events_StreamEnded:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.body_end()
                elif kind is _events_StreamReset:
                    self.client_reset(event.stream_id)
                elif kind is _events_WindowUpdated or kind is _events_RemoteSettingsChanged:
                    self.pump_all()
                elif kind is _events_ConnectionTerminated:
                    # The client sends no new streams; those it started are answered.
                    self.goaway = max(self.goaway, event.last_stream_id or 0)
                    if not self.streams:
                        self.close()
                if self.closed or self.lingering:
                    break  # (after an error's GOAWAY nothing more is processed, nor sent)
        except Exception as exc:  # our bug: logged, the connection closes, the worker lives
            sys.stderr.write("edgeproxy: internal error in the HTTP/2 codec:\n"
                             + "".join(traceback.format_exception(exc)))
            self.abort()
        finally:
            self.batch -= 1
        self.flush()

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        cdef H2Stream stream
        self.closed = True
        for stream in list(self.streams.values()):
            stream.closed = True
            stream.ended = True
            if not stream.ctx.finished and not stream.ctx.client_gone():
                self.finished(stream)
        if not self.streams:
            self.worker.conns.discard(self)

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        self.pump_all()
        self.flush()

    # -- requests

    cdef int request(self, int stream_id, list fields, bint ended) except -1:
        cdef H2Stream stream
        cdef RequestContext ctx
        rt = self.worker.runtime
        if rt is not self.rt:
            self._use_settings(rt)
        if self.goaway >= 0 and stream_id > self.goaway:
            # After our GOAWAY: refused, so the client may safely retry it (RFC 9113 §8.7).
            self.reset(stream_id, _ErrorCodes.REFUSED_STREAM)
            return 0
        stream = H2Stream.__new__(H2Stream)
        stream.conn = self
        stream.stream_id = stream_id
        stream.worker = self.worker
        stream.clock = self.clock
        stream.listener = self.listener
        stream.scheme = self.listener.scheme if self.listener is not None else b"http"
        stream.peer_ip = self.peer_ip
        stream.peer_ip_bytes = self.peer_ip_bytes
        stream.trusted = self.trusted
        stream.front = self.front
        stream.client_cert = self.client_cert
        stream.client_body_timeout = self.settings.client_body_timeout
        stream.via = self.via
        stream.via_field = self.via_field
        stream.deadline = <double>self.clock.now + self.settings.client_body_timeout
        ctx = RequestContext.new(stream, rt)
        stream.ctx = ctx
        ctx.version = "2"
        ctx.t_start = monotonic()
        self.streams[stream_id] = stream
        self.active = True
        self.requests += 1
        if self.requests >= self.settings.keepalive_requests:
            self.send_goaway(stream_id)  # (nginx: keepalive_requests covers HTTP/2 streams)
        self.deadline = min(self.deadline, stream.deadline)
        error = self.fill(ctx, fields)
        if ended:
            ctx.body_done = True
        elif ctx.content_length is None:
            ctx.chunked = True  # a body of unknown length: sent upstream chunked
        elif ctx.content_length == 0:
            ctx.body_done = True  # (DATA beyond it is h2's protocol error)
        if error is not None:
            ctx.error = error
        try:
            ctx.start()
        except Exception as exc:
            sys.stderr.write("edgeproxy: internal error while handling a request:\n"
                             + "".join(traceback.format_exception(exc)))
            stream.fail()
        return 0

    cdef object fill(self, RequestContext ctx, list fields):
        """The request head from HTTP/2 fields (validated by h2: pseudo-headers, lowercase
        names, no connection-specific fields, RFC 9113 §8.2-8.3); the catalog error to
        answer, or None."""
        cdef bytes name, value, path = None, authority = None
        cdef list cookies = None
        cdef int kind
        error = None
        settings = self.settings
        for name, value in fields:
            if name[0] == 58:  # ":"
                if name == b":method":
                    ctx.method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            kind = REQUEST_KINDS.get(name, 0)
            if kind == 0:
                if name == b"cookie":
                    # RFC 9113 §8.2.3: split crumbs are joined again for HTTP/1.1.
                    if cookies is None:
                        cookies = [value]
                    else:
                        cookies.append(value)
                else:
                    ctx.headers.append((name, value))
            elif kind == H_HOST:
                if ctx.host is None:
                    ctx.host = value
            elif kind == H_CONTENT_LENGTH:
                if not value.isdigit() or (ctx.content_length is not None
                                           and int(value) != ctx.content_length):
                    error = "bad_framing"
                else:
                    ctx.content_length = int(value)
            elif kind == H_XFF:
                ctx.xff = value if ctx.xff is None else ctx.xff + b", " + value
            elif kind == H_REQUEST_ID:
                if 0 < len(value) <= 200 and value.isascii() and value.isprintable() \
                        and b" " not in value:
                    ctx.request_id = value
            elif kind == H_EXPECT:
                if value.strip(b" \t").lower() == b"100-continue":
                    ctx.expect_continue = True
                else:
                    error = "expectation_failed"
            elif kind == H_VIA:
                ctx.via = value if ctx.via is None else ctx.via + b", " + value
            elif kind == H_FORWARDED:
                if self.trusted:
                    if ctx.forwarded is None:
                        ctx.forwarded = {}
                    ctx.forwarded[name] = value
            elif kind == H_FORWARDED_7239:
                if self.trusted:
                    ctx.headers.append((name, value))
            elif kind == H_TRACEPARENT and settings.tracing:
                ctx.traceparent = value if ctx.traceparent is None else b""
            elif kind == H_TRACESTATE and settings.tracing:
                ctx.tracestate = value if ctx.tracestate is None else ctx.tracestate + b"," + value
            elif kind == H_TRACEPARENT or kind == H_TRACESTATE:
                ctx.headers.append((name, value))
            # else: hop-by-hop (H_HOP, H_CONNECTION, H_TRANSFER_ENCODING, H_UPGRADE),
            # which h2 refuses anyway but "te: trailers": dropped
        if cookies is not None:
            ctx.headers.append((b"cookie", b"; ".join(cookies)))
        if not ctx.request_id:
            ctx.request_id = self.ids.next()
        if authority is not None:
            ctx.host = authority  # RFC 9113 §8.3.1: :authority over Host
        if ctx.host is None or not valid_host(ctx.host):
            error = error or "bad_host"
        if ctx.method == b"CONNECT":
            error = error or "not_implemented"  # (no tunnels over HTTP/2: RFC 8441 later)
            path = b"/"
        if path is None:
            path = b"/"
        if path == b"*" and ctx.method == b"OPTIONS":
            ctx.path = "*"
        elif path[:1] != b"/":
            error = error or "bad_target"
        else:
            q = path.find(b"?")
            if q >= 0:
                ctx.query = path[q:]
                path = path[:q]
            path_str = path.decode("latin-1")
            if "%" in path_str:
                path_str = normalize_percent(path_str)
            if "/." in path_str:
                path_str = remove_dot_segments(path_str)
            ctx.path = path_str
        if self.trusted and ctx.xff is not None:
            ctx.client_ip = settings.real_ip(ctx.xff, self.peer_ip)
        if ctx.traceparent is not None:
            parsed = parse_traceparent(ctx.traceparent)
            if parsed is None:
                ctx.tracestate = None
            else:
                ctx.trace_id, ctx.trace_flags = parsed
        if ctx.trace_id is None and settings.tracing == 2:
            ctx.trace_id = random_hex(16)
            ctx.trace_flags = b"01"
            ctx.tracestate = None
        return error

    cdef int client_reset(self, int stream_id) except -1:
        cdef H2Stream stream = self.streams.get(stream_id)
        cdef double now = self.clock.now
        if stream is None:
            return 0
        # Rapid reset (CVE-2023-44487): each cancelled stream may have cost an upstream
        # request; a client that cancels faster than RESET_RATE on average is cut off.
        self.reset_budget = min(RESET_BURST,
                                self.reset_budget + (now - self.reset_at) * RESET_RATE)
        self.reset_at = now
        self.reset_budget -= 1
        stream.cancelled()
        if self.reset_budget < 0:
            self.send_goaway(self.h2.highest_inbound_stream_id,
                             _ErrorCodes.ENHANCE_YOUR_CALM)
            self.linger()
            self.abort_streams()
        return 0

    cdef int finished(self, H2Stream stream) except -1:
        """``stream``'s request is over: counted, logged, forgotten."""
        cdef RequestContext ctx = stream.ctx
        cdef double now
        cdef RouteStats stats
        if self.streams.pop(stream.stream_id, None) is None:
            return 0
        if not stream.ended and not stream.end_queued and not self.closed:
            # Over without a complete answer (an abort): the client must not wait on it.
            stream.ended = True
            self.reset(stream.stream_id, _ErrorCodes.CANCEL)
        now = monotonic()
        took = now - ctx.t_start if ctx.t_start else -1.0
        upstream_took = now - ctx.t_upstream if ctx.t_upstream else -1.0
        ctx.ended()
        route = ctx.route
        stats = self.worker.unrouted_stats if route is None else route.stats
        if stats is not None:
            stats.observe(ctx.method, ctx.status, ctx.body_received, ctx.bytes_out, took,
                          upstream_took)
        if self.worker.access_log is not None:
            self.worker.log_exchange(ctx, took, upstream_took)
        if not self.streams:
            self.active = None
            if self.closed:
                self.worker.conns.discard(self)
            elif self.lingering:
                pass  # it closes when the client does, or at its deadline
            elif (self.goaway >= 0 or self.worker.draining) and not self.sending:
                self.close()
            else:
                self.deadline = <double>self.clock.now + self.settings.keepalive_timeout
        return 0

    # -- sending (h2 frames the bytes; flush writes them)

    cdef int send_headers(self, int stream_id, list fields, bint end) except -1:
        try:
            self.h2.send_headers(stream_id, fields, end_stream=end)
        except _StreamClosedError:
            pass  # the client reset it meanwhile
        except _ProtocolError:
            self.reset(stream_id, _ErrorCodes.INTERNAL_ERROR)
        return self.flush_if_idle()

    cdef int send_data(self, int stream_id, bytes data) except -1:
        cdef Py_ssize_t size = self.h2.max_outbound_frame_size
        cdef Py_ssize_t i
        try:
            for i in range(0, PyBytes_GET_SIZE(data), size):
                self.h2.send_data(stream_id, data[i:i + size])
        except _StreamClosedError:
            pass
        return self.flush_if_idle()

    cdef int end_stream(self, int stream_id) except -1:
        try:
            self.h2.end_stream(stream_id)
        except _StreamClosedError:
            pass
        return self.flush_if_idle()

    cdef int reset(self, int stream_id, object code) except -1:
        try:
            self.h2.reset_stream(stream_id, code)
        except (_StreamClosedError, _ProtocolError):
            pass
        return self.flush_if_idle()

    cdef int acknowledge(self, int stream_id, Py_ssize_t n) except -1:
        if n:
            try:
                self.h2.acknowledge_received_data(n, stream_id)
            except (_StreamClosedError, _ProtocolError):
                pass
        return 0

    cdef Py_ssize_t window(self, int stream_id) except -1:
        try:
            return self.h2.local_flow_control_window(stream_id)
        except (_StreamClosedError, _ProtocolError):
            return 0

    cdef int pump_all(self) except -1:
        cdef H2Stream stream
        for stream in list(self.sending.values()):
            stream.pump()
        if not self.sending and not self.streams and not self.lingering and (
                self.goaway >= 0 or self.worker.draining):
            self.close()
        return 0

    cdef int flush_if_idle(self) except -1:
        if not self.batch:
            self.flush()
        return 0

    cdef int flush(self) except -1:
        if self.closed or self.h2 is None:
            return 0
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)
        return 0

    cdef int send_goaway(self, int last_stream_id, object code=0) except -1:
        """GOAWAY without closing h2's state machine (h2's close_connection would forbid
        the frames of streams still being answered): no stream after ``last_stream_id``
        is processed (RFC 9113 §6.8)."""
        if self.goaway >= 0 and not code:
            return 0
        self.flush()
        self.goaway = last_stream_id
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = code
        if not self.closed:
            self.transport.write(frame.serialize())
        return 0

    cdef int _connection_error(self, object exc) except -1:
        code = getattr(exc, "error_code", None) or _ErrorCodes.PROTOCOL_ERROR
        self.flush()  # whatever h2 queued for the error (its GOAWAY), then nothing more
        if self.goaway < 0 or code:
            self.send_goaway(self.h2.highest_inbound_stream_id or 0, code)
        self.linger()
        self.abort_streams()
        return 0

    cdef int linger(self) except -1:
        # The GOAWAY of an error is sent, but the client may still be sending: closing with
        # its frames unread makes the kernel reset the connection, and a reset can discard
        # the GOAWAY before the client reads why (nginx's lingering_close, as the HTTP/1.1
        # codec does). Half-close, read on and discard until the client closes or
        # lingering_timeout passes.
        if self.closed or self.lingering:
            return 0
        self.lingering = True
        self.flush()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.deadline = <double>self.clock.now + self.settings.lingering_timeout
        return 0

    cdef int abort_streams(self) except -1:
        cdef H2Stream stream
        for stream in list(self.streams.values()):
            stream.ended = True
            if not stream.ctx.finished:
                stream.ctx.client_gone()
            self.finished(stream)
        return 0

    # -- the worker's side: sweep, drain

    cpdef timed_out(self):
        cdef H2Stream stream
        cdef double now = self.clock.now
        cdef double nxt
        if self.lingering or not self.streams:
            # Idle past keepalive_timeout (or no request since the preface); or answers
            # the client does not read (no window) past send_timeout.
            self.close()
            return
        for stream in list(self.streams.values()):
            if stream.deadline and stream.deadline <= now:
                stream.timed_out()
        # The streams set their own deadlines as they go: look again within a second.
        nxt = now + 1.0
        for stream in self.streams.values():
            if stream.deadline and stream.deadline < nxt:
                nxt = stream.deadline
        if self.streams:
            self.deadline = nxt

    def shutdown(self):
        """Draining: no new streams (GOAWAY now); those in flight are answered."""
        if self.h2 is not None and not self.closed:
            self.send_goaway(self.h2.highest_inbound_stream_id or 0)
            if not self.streams and not self.sending:
                self.close()

    cpdef close(self):
        if not self.closed:
            if self.goaway < 0 and self.h2 is not None:
                self.send_goaway(self.h2.highest_inbound_stream_id or 0)
            self.closed = True
            self.transport.close()

    cpdef abort(self):
        if not self.closed:
            self.closed = True
            self.transport.abort()
