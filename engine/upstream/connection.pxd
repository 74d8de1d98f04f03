cimport cython


@cython.final
cdef class ReadBuffer:
    cdef char* data                 # _READ_SIZE bytes
    cdef Py_ssize_t exports         # views of it alive (uvloop's, during a read, included)


@cython.final
cdef class UpstreamConnection:
    cdef public object pool         # engine.upstream.pool.Pool
    cdef public object transport
    cdef object send                # transport.write, bound once: no lookup per request
    cdef object is_closing          # transport.is_closing, likewise (asked at each acquire)
    cdef public object parser       # httptools.HttpResponseParser
    cdef public object call         # the engine.upstream.call.UpstreamCall being answered, or None
    cdef public Py_ssize_t requests
    cdef readonly Py_ssize_t whole_responses  # of them, answers taken without llhttp
    cdef public double idle_deadline
    cdef public list headers        # the response's fields, flat: [name, value, name, ...]
    cdef public bytes reason
    cdef public bint head_done
    cdef public bint lost
    cdef public bint skip_body      # the request was HEAD: the response has no body
    cdef public bint tunnel
    cdef public str stop            # why a callback raised _StopParsing: "head", "abort",
                                    # or "unsolicited" (bytes after a complete response)
    cdef public bint completed      # the response ended in the read being parsed
    cdef bint keep_alive            # ... and let the connection persist (RFC 9112 §9.3)
    cdef bytes head_bytes           # what arrived since the response began, until its head
    cdef Py_ssize_t head_from       # where in it the head being parsed starts (after a 1xx)
    cdef public bint http10         # the response's status line says HTTP/1.0
    cdef int status                 # ... and its status code
    cdef long long body_left        # what is still to come of a body _take_response took,
                                    # counted here (-1: none is, llhttp frames the body)
    cdef ReadBuffer reading         # what the read under way was given (get_buffer)

    cpdef bint usable(self) except -1
    cpdef start(self, object call, bytes head, bint skip_body)
    cdef int _parse(self, bytes data) except -1
    cdef bint _take_response(self, ReadBuffer buf, Py_ssize_t n) except -1
    cdef int _relay_body(self, ReadBuffer buf, Py_ssize_t start, Py_ssize_t n) except -1
    cdef bint _scan_head(self) except -1
    cdef const char* _status_line(self, const char* p, const char* stop,
                                  bint strict) except? NULL
    cdef bytes _strict_head(self, const char* base, Py_ssize_t n, Py_ssize_t* end,
                            long long* length)
    cdef int _complete(self, object reusable=*) except -1
    cdef int _fail(self, object exc) except -1
    cpdef close(self)
    cpdef abort(self)
    cpdef reset(self)
