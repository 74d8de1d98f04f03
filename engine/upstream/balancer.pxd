cimport cython


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
