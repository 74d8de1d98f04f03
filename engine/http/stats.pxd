cimport cython


cdef enum:
    N_METHODS = 8     # METHODS in stats.pyx
    N_STATUS = 6      # STATUSES
    N_BUCKETS = 16    # BUCKETS; the histograms have one more slot, for +Inf


@cython.final
cdef class RouteStats:
    cdef long long requests[N_METHODS * N_STATUS]
    cdef long long duration[N_BUCKETS + 1]
    cdef long long upstream[N_BUCKETS + 1]
    cdef public double duration_sum
    cdef public double upstream_sum
    cdef public long long bytes_in
    cdef public long long bytes_out

    cpdef void observe(self, bytes method, int status, long long bytes_in, long long bytes_out,
                       double took, double upstream_took)
