cimport cython

from engine.chain.context cimport RequestContext, Stream


cdef enum:
    WHOLE_FIELDS = 32                   # the most fields of a head taken without llhttp


cdef struct Span:                       # a field of such a head (see _whole_head)
    Py_ssize_t start, colon, value, end # offsets: name, ':', value (after OWS), CR
    int kind                            # its header_kind


@cython.final
cdef class RequestIds:
    cdef char buf[32]
    cdef unsigned long long n

    cpdef bytes next(self)


@cython.final
cdef class ClientProtocol(Stream):
    # Stream gives: worker, listener, peer_ip, peer_ip_bytes, trusted, scheme, closed,
    # write_paused, paused, deadline, client_body_timeout.
    cdef public object transport
    cdef object send                    # transport.write, bound once: no lookup per write
    cdef object send_many               # transport.writelines, likewise
    cdef RequestIds ids                 # the worker's
    cdef public object parser           # the httptools.HttpRequestParser of the stream
    cdef bint reusable                  # the last message left llhttp open between messages
    cdef Py_ssize_t whole_target        # the size of the request-target _whole_head checked
    cdef readonly Py_ssize_t whole_heads  # heads taken without llhttp (see _whole_head)
    cdef public RequestContext ex       # the request whose bytes are being parsed
    cdef public RequestContext active   # the request being answered
    cdef public object queue            # deque of parsed requests waiting for ``active``
    cdef public Py_ssize_t requests
    cdef public bint in_head
    cdef public bint broken
    cdef public object tunnel           # the upstream's transport, once a 101 switched
    cdef double tunnel_timeout          # an idle tunnel closes after this (upstream read_timeout)
    cdef readonly object settings       # engine.control.snapshot.Settings (see _use_settings)
    cdef public bint lingering
    cdef public bint half_closed        # the client shut down its sending side (eof_received)
    cdef public tuple host_key          # (Host bytes, router host key) last routed
    cdef public Py_ssize_t stalled      # bytes fed since the parser last delivered anything
    cdef bytes host_ok                  # the last Host value that passed valid_host
    cdef bint between                   # the parser is between two messages
    cdef bint next_http11               # ... and the next one's request line ends "HTTP/1.1"
    cdef bint next_scanned              # ... and _request_line saw its start
    cdef bytes next_method              # ... an extension method llhttp sees as a placeholder
    cdef bytes line_held                # a request line's method, held until it ends
    cdef int line_open                  # a request line's target has not ended (see
                                        # _line_continues): 1 not begun, 2 begun
    cdef list out                       # writes gathered while an upstream read is handled
    cdef Py_ssize_t out_size            # ... and their bytes
    cdef bint chunked_out               # the answer being written is chunked
    cdef bint parsing                   # a read is being parsed (see data_received)
    cdef RequestContext starting        # dispatched during a read: starts once it parsed

    # The head being parsed (one at a time): scratch state the context never sees.
    cdef bytes url
    cdef Py_ssize_t header_size
    cdef Py_ssize_t header_count
    cdef Py_ssize_t host_count
    cdef bytes te
    cdef bytes expect
    cdef bint line_http11               # its request line ended " HTTP/1.1"
    cdef bint line_scanned              # _request_line saw its start (see _unparsed_method)
    cdef bytes line_method              # its real method, when llhttp saw a placeholder
    cdef public list tunnel_pending     # bytes after an Upgrade request, before the 101
    cdef Py_ssize_t tunnel_pending_size

    # ``settings`` as C values, refreshed when the worker's snapshot changes.
    cdef object rt                      # the snapshot they come from
    cdef readonly object router         # rt.router
    cdef readonly Py_ssize_t max_request_line
    cdef readonly Py_ssize_t max_header_size
    cdef readonly Py_ssize_t max_header_count
    cdef readonly Py_ssize_t keepalive_requests
    cdef readonly double client_header_timeout
    cdef readonly double keepalive_timeout
    cdef readonly double send_timeout
    cdef readonly double lingering_timeout
    cdef readonly int tracing            # TRACING_MODES: 0 off, 1 propagate, 2 always

    cdef int _use_settings(self, object rt) except -1
    cdef Py_ssize_t _whole_head(self, bytes data, Span* spans) except -2
    cdef int _begin(self) except -1
    cdef int _field(self, RequestContext ex, int kind, bytes name, bytes value) except -1
    cdef int _head_complete(self, bytes method, bint persists) except -1
    cdef int _take_whole_head(self, bytes head, const Span* spans, Py_ssize_t count) except -1
    cdef int _whole_head_complete(self, bytes head, const Span* spans,
                                  Py_ssize_t count) except -1
    cdef int _dispatch(self, object ex) except -1
    cdef int _start(self, RequestContext ex) except -1
    cdef int _read_parsed(self, bint clean) except -1
    cdef int account(self, object exchange) except -1
    cdef int _close_after_response(self, object ex) except -1
    cdef int _reject(self, object ex, str code) except -1
    cdef int _body_too_large(self, object ex) except -1
    cdef int _parse_failed(self, object exc) except -1
    cdef int _internal_error(self, object exc) except -1
    cdef object _request_line(self, bytes data)
    cdef object _hold_line(self, bytes data)
    cdef object _line_continues(self, bytes data, Py_ssize_t k)
    cdef int _unparsed_method(self) except -1
    cdef int _bad_request(self, str code) except -1
    cdef int _upgrade_requested(self, bytes rest) except -1
    cdef int _write(self, bytes data) except -1
    cdef int _write_head(self, RequestContext ctx, int status, bytes reason, list headers,
                         bint flat, bytes block, bytes content_length, bint no_body,
                         bytes body, bint tunnel) except -1
    cpdef timed_out(self)
    cpdef linger(self)
