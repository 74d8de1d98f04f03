"""Per-route request counters of one worker, updated at C level once per finished request.

Summing across workers and the Prometheus exposition live in engine/control/metrics.py.
Method and status classes keep label cardinality fixed whatever clients send.
"""

cimport cython

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other")
STATUSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")  # index = status // 100, else 0
# Seconds. Upper bounds (Prometheus ``le``): a proxy's own latency is sub-millisecond, an
# upstream's can be a minute (the default read_timeout).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0)
assert len(METHODS) == N_METHODS and len(STATUSES) == N_STATUS and len(BUCKETS) == N_BUCKETS

cdef dict _METHOD_INDEX = {m.encode(): i for i, m in enumerate(METHODS[:N_METHODS - 1])}
cdef double _BOUNDS[N_BUCKETS]
for _i, _b in enumerate(BUCKETS):
    _BOUNDS[_i] = _b


cdef inline int _bucket(double seconds) noexcept:
    """Index of the first bound >= seconds (``le`` is "less than or equal"); N_BUCKETS = +Inf."""
    cdef int i
    for i in range(N_BUCKETS):
        if seconds <= _BOUNDS[i]:
            return i
    return N_BUCKETS


@cython.final
cdef class RouteStats:
    """Counters of one route in one worker. ``requests`` is indexed by
    ``method_index * N_STATUS + status_class``; ``duration`` and ``upstream`` hold one count
    per bucket of BUCKETS plus +Inf (not cumulative: the exposition sums them)."""

    cpdef void observe(self, bytes method, int status, long long bytes_in, long long bytes_out,
                       double took, double upstream_took):
        """Count one finished request; ``upstream_took`` < 0 when it never went upstream."""
        cdef object index = _METHOD_INDEX.get(method)
        cdef int m = N_METHODS - 1 if index is None else <int>index
        cdef int s = status // 100 if 0 <= status < 600 else 0
        self.requests[m * N_STATUS + s] += 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        if took >= 0:
            self.duration[_bucket(took)] += 1
            self.duration_sum += took
        if upstream_took >= 0:
            self.upstream[_bucket(upstream_took)] += 1
            self.upstream_sum += upstream_took

    @property
    def total(self) -> int:
        cdef long long n = 0
        for i in range(N_METHODS * N_STATUS):
            n += self.requests[i]
        return n

    def by_status(self) -> list:
        """Requests per status class, indexed like STATUSES."""
        out = [0] * N_STATUS
        for i in range(N_METHODS * N_STATUS):
            out[i % N_STATUS] += self.requests[i]
        return out

    def to_dict(self) -> dict:
        return {
            "requests": [self.requests[i] for i in range(N_METHODS * N_STATUS)],
            "duration": [self.duration[i] for i in range(N_BUCKETS + 1)],
            "duration_sum": self.duration_sum,
            "upstream": [self.upstream[i] for i in range(N_BUCKETS + 1)],
            "upstream_sum": self.upstream_sum,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
