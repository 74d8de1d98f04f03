cimport cython

from engine.upstream.call cimport Clock, Sink, UpstreamCall, WorkerCore
from engine.wire.message cimport Response

# Why reading from the client is paused (bits of Stream.paused).
cdef enum:
    PAUSE_PIPELINE = 1
    PAUSE_PENDING = 2
    PAUSE_UPSTREAM = 4
    PAUSE_BROKEN = 8


cdef class RequestContext


cdef class Stream:
    # The codec seam: what a request context needs of the client connection it answers on.
    # engine/http/protocol.pyx (HTTP/1.1) implements it; an HTTP/2 codec would too, one
    # Stream per h2 stream, and no filter would notice.
    cdef public WorkerCore worker       # engine.control.worker.Worker: loop, log, sweep
    cdef public Clock clock             # the worker's (worker.ticks)
    cdef public object listener         # engine.control.listeners.Listener accepted on
    cdef public str peer_ip
    cdef public bytes peer_ip_bytes
    cdef public bint trusted            # the peer is a trusted proxy (X-Forwarded-*)
    cdef public bytes scheme            # b"http" / b"https": X-Forwarded-Proto
    cdef public bint closed
    cdef public bint write_paused       # the client is not reading our writes
    cdef public int paused              # PAUSE_* bits
    cdef public double deadline         # when the sweep calls timed_out
    cdef readonly double client_body_timeout
    cdef readonly bytes via             # this hop's Via entry, "1.1 <server.via>"; None: off
    cdef readonly bytes via_field       # b"Via: " + via + CRLF: what a request that came
                                        # with no Via gets (the usual case, one write)
    cdef public object front            # engine.chain.front.ListenerFront: the listener's
                                        # pre-routing step (TLS client cert, redirect), or None
    cdef public object client_cert      # engine.wire.tls.ClientCert verified by TLS, or None

    cdef int write_head(self, RequestContext ctx, int status, bytes reason, list headers,
                        bint flat, bytes content_length, bint no_body, bytes body,
                        bint tunnel) except -1
    cdef int write_raw_head(self, RequestContext ctx, int status, bytes reason, bytes block,
                            bytes content_length) except -1
    cdef int write_body(self, RequestContext ctx, bytes data) except -1
    cdef int write_body_view(self, RequestContext ctx, object view) except -1
    cdef int end_body(self, RequestContext ctx) except -1
    cdef int send_continue(self, RequestContext ctx) except -1
    cdef int write_interim(self, RequestContext ctx, int status, bytes reason,
                           list fields) except -1
    cdef int start_tunnel(self, RequestContext ctx, object transport, double timeout) except -1
    cdef int begin_batch(self) except -1
    cdef int flush(self) except -1
    cdef int end_batch(self) except -1
    cdef str route_host(self, bytes host)
    cdef int exchange_finished(self, RequestContext ctx) except -1
    cdef int pause_reading_for(self, int reason) except -1
    cdef int resume_reading_for(self, int reason) except -1
    cdef int fail(self) except -1
    cpdef close(self)
    cpdef abort(self)


cdef class Hooks:
    # A filter's hooks compiled to C (docs/filters.md, "Compiled hooks"): when a filter binds
    # a Hooks object's on_request or on_response, the chain calls ``request`` or ``response``
    # through the vtable, with no Python call.
    cdef bint raw                       # response_raw stands for response (see there)
    cdef object request(self, RequestContext ctx)
    cdef int response(self, RequestContext ctx, Response resp) except -1
    cdef bytes response_raw(self, RequestContext ctx, bytes block)


@cython.final
cdef class Chain:
    # One route's compiled filters (or the server-wide ones, for requests no route takes).
    cdef readonly tuple request         # (index, hook, Hooks or None) of on_request, in order
    cdef readonly tuple response        # (index, hook, Hooks or None) of on_response, reversed
    cdef readonly bint response_raw     # each of them is a Hooks' own, with ``raw`` set
    cdef readonly tuple response_body   # (index, filter) with on_response_body, reverse
    cdef readonly tuple log             # filters with on_log
    cdef readonly tuple filters         # every filter, phase order
    cdef readonly Py_ssize_t body_limit # bytes of response body kept for on_response_body
    cdef readonly bint body_buffered    # ... held back until complete (so they may edit it)


@cython.final
cdef class Route:
    # One route pattern as the router returns it (compiled by engine/control/snapshot.py).
    cdef readonly str name
    cdef readonly str pattern
    cdef public object upstream         # engine.upstream.upstream.Upstream, or None
    cdef readonly long long max_body_size
    cdef public Chain chain
    cdef readonly Py_ssize_t strip      # chars of the path strip_prefix removes
    cdef readonly list rewrite          # rewrite template: literals and "\0param" parts
    cdef public object stats            # the serving worker's RouteStats for this route

    cpdef bytes target(self, RequestContext ctx)


@cython.final
@cython.freelist(64)
cdef class RequestContext(Sink):
    # Every public attribute is the filter API (typed in context.pyi); the codec fills the
    # request head, the runner and the upstream call the rest.
    cdef public Stream stream
    cdef public object rt               # the snapshot this request keeps to the end (DESIGN.md)
    cdef public str version             # "1.1", "1.0" (later "2")
    cdef public bint keep_alive
    cdef public list headers            # [(name, value)] bytes, original case
    cdef public bytes host
    cdef public list connection         # raw Connection field values, or None
    cdef public bint expect_continue    # the client waits for 100 Continue before the body
    cdef public bytes xff
    cdef public bytes via               # the Via received, field lines combined, or None
    cdef public dict forwarded
    cdef public bytes traceparent       # as received (tracing on), b"" when repeated
    cdef public bytes tracestate
    cdef public bytes trace_id          # 32 lowercase hex digits, when the request is traced
    cdef public bytes trace_flags
    cdef public str client_ip
    cdef public str path
    cdef public bytes query
    cdef public Route route             # or None: no route took it
    cdef public object params
    cdef public str miss                # why no route took it: "not_found", or
    cdef public tuple allow             # "method_not_allowed" with these methods, or
                                        # "server_options" (OPTIONS *, answered 200)
    cdef public Chain chain             # the route's filters, or the server-wide ones
    cdef public object upstream         # where the request goes: the route's, or a filter's pick
    cdef public object server           # the server that answered last (set when it ended)
    cdef public int upstream_status     # the status the upstream answered (0: none)
    cdef public object consumer         # the authenticated caller (auth filters), or None
    cdef public object vars             # per-request state of filters: a dict, or None
    cdef public bint finish_upstream    # read the response to the end even if the client goes
    cdef public int status
    cdef public bint head_sent
    cdef public bint response_complete  # a whole response was written
    cdef public Py_ssize_t bytes_out
    cdef public bint close_after
    cdef public str error               # a codec error to answer instead of routing
    cdef public Py_ssize_t ran          # request hooks run (response hooks mirror them)
    cdef public double t_start
    cdef public object task             # asyncio.Task of a filter being awaited, or None
    cdef public object body_waiter      # future of read_body, or None
    cdef public Py_ssize_t body_limit
    cdef list body_copy                 # the response body kept for on_response_body
    cdef Py_ssize_t body_copy_size
    cdef tuple held                     # a buffered response's head, until its body is in
    cdef list body_held                 # body bytes of the read being parsed, for the
                                        # upstream (None: the end); see client_read_parsed
    cdef public object transform        # a response hook's body encoder (feed/finish), or None
    cdef public bytes response_length   # an upstream answer's Content-Length, for hooks
    cdef object source                  # a StreamResponse's body, read as the client takes it

    @staticmethod
    cdef RequestContext new(Stream stream, object rt)

    cdef int start(self) except -1
    cdef int run_filters(self, Py_ssize_t first) except -1
    cdef int proxy(self) except -1
    cdef int answer(self, str code, list headers=*) except -1
    cdef int client_body(self, bytes chunk) except -1
    cdef int client_body_end(self) except -1
    cdef int client_read_parsed(self) except -1
    cdef int timed_out(self) except -1
    cdef bint client_gone(self) except -1
    cdef int pause_upstream(self, bint paused) except -1
    cdef int ended(self) except -1
    cpdef respond(self, object resp)
    cdef int _head(self, object resp, int status, bytes reason, list headers, bint flat,
                   bytes content_length, bint no_body, bytes body, bint tunnel) except -1
    cdef object _body_hooks(self, object body)
    cdef int _send(self, bytes chunk) except -1
    cdef int _send_tail(self) except -1
    cdef int _respond_stream(self, object resp) except -1
    cdef int _pump(self) except -1
    cdef int _drop_source(self) except -1
    cdef int finish(self) except -1
