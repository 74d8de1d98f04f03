cimport cython


@cython.final
cdef class Pool:
    # Idle upstream connections, newest on the right; the sweeper expires from the left.
    cdef public Py_ssize_t max_idle
    cdef public double idle_timeout
    cdef public Py_ssize_t max_requests
    cdef public list idle           # UpstreamConnections
    cdef public Py_ssize_t active   # connections carrying a request now (least_conn, admin API)
    cdef public Py_ssize_t opened   # connections made to the server, ever (/metrics: churn)
    cdef public bint closed

    cpdef object acquire(self)
    cpdef release(self, object conn, double now)
    cpdef expire(self, double now)
    cpdef discard(self, object conn)
    cpdef close(self)
