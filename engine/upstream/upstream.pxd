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

    cpdef object pick(self, object ctx)
