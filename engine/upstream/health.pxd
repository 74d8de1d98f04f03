cimport cython

cdef enum:
    N_BUCKETS = 10


@cython.final
cdef class Circuit:
    # closed -> open -> half-open -> closed (engine/upstream/health.pyx)
    cdef readonly int state             # CLOSED, OPEN, HALF_OPEN
    cdef readonly int consecutive_limit
    cdef readonly double rate_limit
    cdef readonly int min_requests
    cdef readonly double window
    cdef readonly double cooldown
    cdef readonly int probes
    cdef readonly int consecutive
    cdef readonly double opened_at
    cdef readonly unsigned long long opened  # times it opened (metrics)
    cdef int probes_out
    cdef int probe_ok
    cdef long long req[N_BUCKETS]
    cdef long long fail[N_BUCKETS]
    cdef double bucket_width
    cdef long long bucket_at            # index of the bucket ``idx`` counts for
    cdef int idx

    cpdef bint admits(self, double now) except -1
    cpdef unsigned long long begin(self, double now)
    cpdef cancel(self, unsigned long long token)
    cpdef record(self, bint ok, double now, unsigned long long token=*)
    cpdef double retry_after(self, double now)
    cdef void _roll(self, double now) noexcept
    cdef void _open(self, double now) noexcept


@cython.final
cdef class Health:
    # One server's state; outlives reloads (kept by upstream name and server URL).
    cdef public int max_fails
    cdef public double fail_timeout
    cdef public Circuit circuit         # or None
    cdef readonly int fails
    cdef readonly double first_fail
    cdef public double down_until       # passive: unavailable until (nginx max_fails)
    cdef public bint healthy            # active checks' verdict (True until one says no)
    cdef public double ejected_until    # outlier ejection
    cdef public unsigned long long requests   # since the outlier evaluator last looked
    cdef public unsigned long long failures
    cdef public unsigned long long total_requests
    cdef public unsigned long long total_failures

    cpdef bint available(self, double now) except -1
    cpdef unsigned long long begin(self, double now)
    cpdef cancel(self, unsigned long long token)
    cpdef record(self, bint ok, double now, unsigned long long token=*)
    cpdef double available_in(self, double now)


@cython.final
cdef class RetryBudget:
    cdef readonly double ratio
    cdef readonly long long min_per_window
    cdef double width
    cdef long long at
    cdef long long requests[2]
    cdef long long retries[2]
    cdef readonly unsigned long long total   # retries taken, since the worker started

    cdef void _roll(self, double now) noexcept
    cpdef void request(self, double now)
    cpdef bint allow(self, double now)
