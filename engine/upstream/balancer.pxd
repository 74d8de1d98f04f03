cimport cython


cdef class Balancer:
    # Picks one server of an upstream per request. Subclasses (Cython or Python) override
    # pick; Upstream calls it at the C level.
    cdef public list servers

    cpdef object pick(self, object ctx)


@cython.final
cdef class RoundRobin(Balancer):
    cdef Py_ssize_t n
    cdef Py_ssize_t* weight
    cdef Py_ssize_t* current
    cdef readonly Py_ssize_t total
