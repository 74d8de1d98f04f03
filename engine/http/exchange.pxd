cimport cython

from engine.http._common cimport Writer
from engine.http.protocol cimport ClientProtocol
from engine.upstream.connection cimport UpstreamConnection
from engine.upstream.upstream cimport Server, Upstream


@cython.final
@cython.freelist(64)
cdef class Exchange:
    # Every attribute is public: filters (``ctx``), the worker's log phase and tests read them.
    # Fields not set in _init start as None / 0 / False.
    cdef public ClientProtocol proto
    cdef public object rt               # the snapshot this request keeps to the end (DESIGN.md)
    cdef public bytes method
    cdef public bytes url
    cdef public str version
    cdef public bint keep_alive
    cdef public list headers            # [(name, value)] bytes, original case
    cdef public bytes host
    cdef public Py_ssize_t host_count
    cdef public object content_length   # int, or None
    cdef public bytes te
    cdef public bint chunked
    cdef public list connection         # raw Connection field values, or None
    cdef public bytes expect
    cdef public bytes upgrade
    cdef public bytes xff
    cdef public dict forwarded
    cdef public bytes request_id
    cdef public bytes traceparent       # as received (tracing on), b"" when repeated
    cdef public bytes tracestate
    cdef public bytes trace_id          # 32 lowercase hex digits, when the request is traced
    cdef public bytes trace_flags
    cdef public str client_ip
    cdef public str path
    cdef public bytes query
    cdef public object route            # CompiledRoute
    cdef public object params
    cdef public Upstream upstream       # the route's, once proxying
    cdef public Server server
    cdef public list tried              # servers this request failed on (retries), or None
    cdef public int tries               # attempts made (servers sent to)
    cdef public double retry_until      # no new attempt after this (retry.timeout)
    cdef bint attempting                # server.active counts this request now
    cdef unsigned long long server_probe    # circuit probe tokens of the attempt (Circuit)
    cdef unsigned long long upstream_probe
    cdef int attempt_failure            # the failure bit the response status stands for
    cdef bint fell_back                 # went to the upstream's fallback upstream
    cdef bint exhausted                 # a retry found no server left
    cdef bint tunnel_held               # a tunnel counts in server.active until it ends
    cdef public bint protected          # a claimed idempotency key makes a POST repeatable
    cdef public bint finish_upstream    # read the response to the end even if the client goes
    cdef public object consumer         # the authenticated caller (auth filters), or None
    cdef public object vars             # per-request state of filters: a dict, or None
    cdef public list finish_hooks
    cdef public bint response_complete  # a whole response was written
    cdef public list capture            # the response body being kept (capture_response)
    cdef public Py_ssize_t capture_limit
    cdef Py_ssize_t capture_size
    cdef public object captured         # at finish: the kept body, or None
    cdef public object body_waiter      # future of read_body, or None
    cdef public Py_ssize_t body_limit
    cdef public UpstreamConnection conn
    cdef public list pending
    cdef public Py_ssize_t pending_size
    cdef public Py_ssize_t body_received
    cdef public bint body_done
    cdef public bint body_streamed
    cdef public bint chunked_up
    cdef public int status
    cdef public bint resp_chunked
    cdef public bint upstream_close_delimited
    cdef public bint head_sent
    cdef public Py_ssize_t bytes_out
    cdef public bint close_after
    cdef public str error
    cdef public Py_ssize_t ran
    cdef public bint finished
    cdef public double t_start
    cdef public double t_upstream
    cdef public object connecting       # asyncio.Task while connecting upstream
    cdef public bint retried
    cdef public list tunnel_pending
    cdef Py_ssize_t tunnel_pending_size  # bytes in tunnel_pending (bounded by PENDING_LIMIT)
    cdef public Py_ssize_t header_size
    cdef public Py_ssize_t header_count
    cdef public list out                # while an upstream read is being parsed: writes to coalesce
    cdef bint line_http11               # its request line ended " HTTP/1.1" (ClientProtocol)

    @staticmethod
    cdef Exchange new(ClientProtocol proto, object rt)
    cdef void _init(self, ClientProtocol proto, object rt) noexcept

    # request phase
    cdef int start(self) except -1
    cdef int run_filters(self, Py_ssize_t first) except -1
    cdef int proxy(self, object upstream) except -1
    cdef int send_to(self, Server server) except -1
    cdef int unavailable(self) except -1
    cdef int end_attempt(self, int failure) except -1
    cdef Server retry_target(self, int failure, bint sent)
    cdef int failed(self, str code) except -1
    cdef int retry(self, Server server) except -1
    cdef int ended(self) except -1
    cdef int connect(self) except -1
    cdef int attach(self, UpstreamConnection conn) except -1
    cdef bytes request_head(self)
    cdef int _request_head(self, Writer* w) except -1

    # request body
    cdef int client_body(self, bytes chunk) except -1
    cdef int client_body_end(self) except -1

    # upstream response
    cdef bint upstream_head(self, UpstreamConnection conn, int status, bytes reason,
                            list fields) except -1
    cdef int upstream_body(self, bytes chunk) except -1
    cdef int upstream_complete(self, UpstreamConnection conn, bint reusable) except -1
    cdef int upstream_failed(self, UpstreamConnection conn, str code, bint retry=*) except -1
    cdef int upstream_write_paused(self, bint paused) except -1
    cdef int timed_out(self) except -1

    # tunnel
    cdef int tunnel_to_client(self, bytes data) except -1
    cdef int drop_upstream(self) except -1
    cdef int tunnel_closed(self) except -1

    # answering
    cpdef respond(self, object resp)
    cdef int _write_head(self, object resp, int status, list headers, bint flat, bytes reason,
                         bytes content_length, bint no_body, bytes body,
                         bint tunnel) except -1
    cdef int flush(self) except -1
    cdef int finish(self) except -1
