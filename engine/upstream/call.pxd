cimport cython

from engine.upstream.connection cimport UpstreamConnection
from engine.upstream.upstream cimport Server, Upstream


cdef class UpstreamCall


@cython.final
cdef class Clock:
    # The worker's coarse clock (loop time, advanced by its sweep), read at the C level by
    # everything that sets a deadline on the hot path.
    cdef public double now


cdef class WorkerCore:
    # What the data plane reads of its worker on every request, as C fields (an attribute
    # of a Python object is a dict lookup). engine.control.worker.Worker is a Python
    # subclass that holds the rest.
    cdef public object loop
    cdef public object poller           # engine.wire.epoll.Poller: plain TCP sockets
    cdef public object runtime          # engine.control.snapshot.Runtime serving now
    cdef public Clock ticks             # ``now``, advanced by the worker's sweep
    cdef public object request_ids      # engine.http.protocol.RequestIds
    cdef public set conns               # the client connections open
    cdef public bint draining           # stopping: connections close once idle
    cdef public object access_log       # or None
    cdef public object unrouted_stats   # RouteStats of the requests no route matched


cdef class Sink:
    # The side an UpstreamCall serves: it holds the request (its head is written by
    # ``request_head``, its body arrives in ``pending`` until ``body_done``) and receives the
    # answer as events. The client's RequestContext is one (engine/chain/context.pyx); a
    # sub-request's buffer is another (FetchSink below).
    cdef public WorkerCore worker       # engine.control.worker.Worker: its loop
    cdef public Clock clock             # the worker's clock
    cdef public bytes method
    cdef public bytes request_id
    cdef public bytes upgrade           # the protocol asked for (Upgrade), or None
    cdef public object content_length   # int, or None
    cdef public bint chunked            # the body arrives chunked (length unknown)
    cdef public list pending            # body bytes received and not sent upstream yet
    cdef public Py_ssize_t pending_size
    cdef public Py_ssize_t body_received
    cdef public bint body_done          # the whole request body is here
    cdef public bint protected          # a claimed idempotency key makes a POST repeatable
    cdef public bint finished           # answered (or abandoned): events are ignored
    cdef public double t_upstream       # when the request first went upstream (0: never)
    cdef public UpstreamCall call       # the call serving this request, or None
    cdef public list tried              # servers it failed on (balancers skip them), or None

    cdef bytes request_head(self, UpstreamCall call)
    cdef int on_head(self, UpstreamCall call, int status, bytes reason, list fields,
                     bytes content_length, bint no_body) except -1
    cdef int on_raw_head(self, UpstreamCall call, int status, bytes reason, bytes block,
                         bytes content_length) except -1
    cdef int on_interim(self, UpstreamCall call, int status, bytes reason, list fields,
                        bytes via) except -1
    cdef int on_body(self, bytes chunk) except -1
    cdef int on_body_view(self, object view) except -1
    cdef int on_complete(self) except -1
    cdef int on_answer(self, object resp) except -1
    cdef int on_abort(self) except -1
    cdef int on_tunnel(self, UpstreamCall call) except -1
    cdef int on_tunnel_data(self, bytes data) except -1
    cdef int on_tunnel_closed(self) except -1
    cdef int set_deadline(self, double deadline) except -1
    cdef int body_paused(self, bint paused) except -1
    cdef int read_started(self) except -1
    cdef int read_done(self) except -1
    cdef bint reading_paused(self) except -1


@cython.final
@cython.freelist(64)
cdef class UpstreamCall:
    # One request's way through an upstream: pick, connect, send, retries (tries, time,
    # budget), circuit breakers, the fallback; its events go to ``sink``.
    cdef public Sink sink
    cdef public Upstream upstream       # the upstream being tried (the fallback's, after it)
    cdef public Server server           # the server of the current attempt
    cdef public UpstreamConnection conn
    cdef public object connecting       # asyncio.Task while connecting
    cdef public int tries               # attempts made (servers sent to)
    cdef public double retry_until      # no new attempt after this (retry.timeout)
    cdef public bint head_sent          # the answer's head went to the sink
    cdef public bint body_streamed      # part of the body went upstream: not repeatable
    cdef public bint chunked_up         # the body goes upstream chunked
    cdef public bint close_delimited    # the answer's body ends when the upstream closes
    cdef public bint complete           # the answer ended (upstream_complete)
    cdef public bytes via               # the answer's Via, out of its fields (the sink adds
                                        # it back, with its own entry), or None
    cdef public int failure             # the failure bit the final answer stands for
    cdef bint attempting                # server.active counts this request now
    cdef unsigned long long server_probe    # circuit probe tokens of the attempt (Circuit)
    cdef unsigned long long upstream_probe
    cdef int attempt_failure            # the failure bit the response status stands for
    cdef bint fell_back                 # went to the upstream's fallback upstream
    cdef bint exhausted                 # a retry found no server left
    cdef bint retried                   # a stale pooled connection was retried once
    cdef bint write_paused              # the upstream is not taking the body
    cdef bint tunnel_held               # a tunnel counts in server.active until it ends
    cdef bint settling                  # the upstream's breaker waits for this call's verdict

    @staticmethod
    cdef UpstreamCall new(Sink sink, Upstream upstream)
    cdef int start(self) except -1
    cdef int send_to(self, Server server) except -1
    cdef int unavailable(self) except -1
    cdef int settle_upstream(self) except -1
    cdef int end_attempt(self, int failure) except -1
    cdef Server retry_target(self, int failure, bint sent)
    cdef int failed(self, str code) except -1
    cdef int retry(self, Server server) except -1
    cdef int connect(self) except -1
    cdef int attach(self, UpstreamConnection conn) except -1

    # the request body, from the sink
    cdef int send_body(self, bytes data) except -1
    cdef int body_end(self) except -1

    # the answer, from UpstreamConnection
    cdef bint upstream_head(self, UpstreamConnection conn, int status, bytes reason,
                            list fields) except -1
    cdef bint upstream_raw_head(self, UpstreamConnection conn, int status, bytes reason,
                                bytes block, bytes content_length) except -1
    cdef bint _status_verdict(self, int status) except -1
    cdef int upstream_interim(self, UpstreamConnection conn, int status, bytes reason,
                              list fields) except -1
    cdef int upstream_body(self, bytes data) except -1
    cdef int upstream_body_view(self, object view) except -1
    cdef int upstream_complete(self, UpstreamConnection conn, bint reusable) except -1
    cdef int upstream_failed(self, UpstreamConnection conn, str code, bint retry=*) except -1
    cdef int upstream_write_paused(self, bint paused) except -1
    cdef int tunnel_data(self, bytes data) except -1
    cdef int tunnel_closed(self) except -1
    cdef int read_started(self) except -1
    cdef int read_done(self) except -1

    # from the sink
    cdef int timed_out(self) except -1
    cdef int drop(self) except -1
    cdef int ended(self) except -1
    cdef int pause_reading(self, bint paused) except -1


@cython.final
cdef class FetchSink(Sink):
    # A sub-request's side (RequestContext.fetch): a plain request, the answer buffered.
    cdef bytes target
    cdef list headers
    cdef bytes host
    cdef public int status
    cdef public list response_headers
    cdef list body_parts
    cdef Py_ssize_t body_size
    cdef Py_ssize_t max_body
    cdef object done                    # the future fetch() awaits
    cdef object timer                   # the deadline's TimerHandle
    cdef double deadline

    cdef int _settle(self, object resp) except -1
