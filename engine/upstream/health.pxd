cimport cython


@cython.final
cdef class Health:
    cpdef bint available(self, double now) except -1
