cimport cython
from libc.stdint cimport uint32_t, uint64_t

from ext.hashring cimport HashRing


cdef class Balancer:
    # Picks one server of an upstream per request. Subclasses (Cython or Python) override
    # pick; Upstream calls it at the C level. A pick skips servers that are not
    # ``available(now)`` and those in ``ctx.tried`` (None, or the servers this request
    # already failed on), and returns None when nothing is left.
    cdef public list servers

    cpdef object pick(self, object ctx, double now)


@cython.final
cdef class RoundRobin(Balancer):
    cdef Py_ssize_t n
    cdef Py_ssize_t* weight
    cdef Py_ssize_t* current
    cdef readonly Py_ssize_t total


@cython.final
cdef class LeastConn(Balancer):
    cdef Py_ssize_t n
    cdef Py_ssize_t* current    # smooth round robin among the least loaded (ties)


@cython.final
cdef class _Spans:
    # Servers laid end to end by weight: a number in [0, total) falls in one server's span.
    cdef Py_ssize_t n
    cdef Py_ssize_t total
    cdef Py_ssize_t* end        # end[i] = weight[0] + ... + weight[i]

    cdef Py_ssize_t find(self, Py_ssize_t w) noexcept


@cython.final
cdef class IpHash(Balancer):
    cdef Py_ssize_t n
    cdef _Spans spans
    cdef RoundRobin rr


@cython.final
cdef class Hash(Balancer):
    cdef Py_ssize_t n
    cdef object key             # fn(ctx) -> str | None (engine.chain.keys.compile_key)
    cdef readonly bint consistent
    cdef readonly HashRing ring  # consistent only
    cdef uint32_t* seen         # consistent only: per server, the walk that last saw it
    cdef uint32_t walk
    cdef _Spans spans           # not consistent
    cdef RoundRobin rr

    cdef object _ring_pick(self, const unsigned char* key, Py_ssize_t n, object tried,
                           double now)
    cdef object _rehash_pick(self, const unsigned char* key, Py_ssize_t n, object tried,
                             double now)


@cython.final
cdef class RandomTwo(Balancer):
    cdef Py_ssize_t n
    cdef _Spans spans
    cdef uint64_t state         # splitmix64
    cdef Py_ssize_t* scratch    # usable servers, when sampling keeps missing them

    cdef Py_ssize_t _draw(self, Py_ssize_t total) noexcept
    cdef Py_ssize_t _pick_among(self, Py_ssize_t m, Py_ssize_t total, Py_ssize_t skip)
