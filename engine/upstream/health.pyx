"""Server health: passive failure counting, active checks, circuit breaker, ejection."""

cimport cython


@cython.final
cdef class Health:
    cpdef bint available(self, double now) except -1:
        return True
