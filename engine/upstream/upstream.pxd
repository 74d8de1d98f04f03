cimport cython

from engine.upstream.balancer cimport Balancer
from engine.upstream.pool cimport Pool


@cython.final
cdef class Server:
    cdef public str url
    cdef public str host
    cdef public int port
    cdef public Py_ssize_t weight
    cdef public Pool pool
    cdef public bytes authority     # Host header for HTTP/1.0 requests that sent none
    cdef public bint backup         # takes traffic only when no primary is available
    cdef public bint down           # config: never picked
    cdef public Py_ssize_t max_conns  # requests in flight at once; 0 = unlimited
    cdef public Py_ssize_t active   # requests in flight to this server now (this worker)
    cdef public object health       # engine.upstream.health.Health, or None

    cpdef bint available(self, double now) except -1


@cython.final
cdef class Upstream:
    cdef public str name
    cdef public list servers        # [Server]
    cdef public Balancer balancer
    cdef public bytes host_header
    cdef public double connect_timeout
    cdef public double send_timeout
    cdef public double read_timeout
    cdef public object key          # frozen config: equal config -> pools carried over on reload

    cpdef object pick(self, object ctx, double now)
