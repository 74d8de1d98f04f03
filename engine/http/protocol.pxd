cimport cython

from engine.upstream.connection cimport UpstreamConnection

# Why reading from the client is paused (bits of ClientProtocol.paused).
cdef enum:
    PAUSE_PIPELINE = 1
    PAUSE_PENDING = 2
    PAUSE_UPSTREAM = 4
    PAUSE_BROKEN = 8


@cython.final
cdef class ClientProtocol:
    cdef public object worker
    cdef public object transport
    cdef public object parser           # httptools.HttpRequestParser
    cdef public str peer_ip
    cdef public bytes peer_ip_bytes
    cdef public bint trusted
    # Exchanges are typed object here so that this .pxd needs nothing from exchange.pxd
    # (which cimports this one); protocol.pyx casts them.
    cdef public object ex               # the exchange whose bytes are being parsed
    cdef public object active           # the exchange being answered
    cdef public object queue            # deque of parsed exchanges waiting for ``active``
    cdef public int paused
    cdef public double deadline
    cdef public Py_ssize_t requests
    cdef public bint in_head
    cdef public bint broken
    cdef public UpstreamConnection tunnel
    cdef double tunnel_timeout          # an idle tunnel closes after this (upstream read_timeout)
    cdef public bint closed
    cdef public bint write_paused
    cdef readonly object settings       # engine.control.snapshot.Settings (see _use_settings)
    cdef public bint lingering
    cdef public tuple host_key          # (Host bytes, router host key) last routed
    cdef public Py_ssize_t stalled      # bytes fed since the parser last delivered anything
    cdef bytes host_ok                  # the last Host value that passed valid_host
    cdef bint between                   # the parser is between two messages
    cdef bint next_http11               # ... and the next one's request line ends "HTTP/1.1"

    # ``settings`` as C values, refreshed when the worker's snapshot changes.
    cdef object rt                      # the snapshot they come from
    cdef readonly object router         # rt.router
    cdef readonly Py_ssize_t max_request_line
    cdef readonly Py_ssize_t max_header_size
    cdef readonly Py_ssize_t max_header_count
    cdef readonly Py_ssize_t keepalive_requests
    cdef readonly double client_header_timeout
    cdef readonly double client_body_timeout
    cdef readonly double keepalive_timeout
    cdef readonly double send_timeout
    cdef readonly double lingering_timeout
    cdef readonly int tracing            # TRACING_MODES: 0 off, 1 propagate, 2 always

    cdef int _use_settings(self, object rt) except -1
    cdef int _dispatch(self, object ex) except -1
    cdef int account(self, object exchange) except -1
    cdef int exchange_finished(self, object ex) except -1
    cdef int _close_after_response(self, object ex) except -1
    cdef int _reject(self, object ex, str code) except -1
    cdef int _body_too_large(self, object ex) except -1
    cdef int _parse_failed(self, object exc) except -1
    cdef int _internal_error(self) except -1
    cdef int _bad_request(self, str code) except -1
    cdef str route_host(self, bytes host)
    cdef int _upgrade_requested(self, bytes rest) except -1
    cdef int start_tunnel(self, object ex, UpstreamConnection conn) except -1
    cdef int pause_reading_for(self, int reason) except -1
    cdef int resume_reading_for(self, int reason) except -1
    cpdef timed_out(self)
    cpdef linger(self)
    cpdef close(self)
    cpdef abort(self)
