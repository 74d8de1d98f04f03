"""Server health: passive failure counting (nginx max_fails), circuit breakers, the active
checks' and the outlier evaluator's verdicts, and the retry budget.

Everything takes the caller's clock (``now``, the worker's monotonic time), so transitions are
tested with a controlled clock. One worker's state is its own, like nginx without a shared
zone: each worker learns of a failing server by itself.
"""

cimport cython

CLOSED = 0
OPEN = 1
HALF_OPEN = 2
STATE_NAMES = ("closed", "open", "half_open")


@cython.final
cdef class Circuit:
    """A circuit breaker. Closed: requests flow, outcomes are counted. It opens after
    ``consecutive`` failures in a row, or when the failure share over the rolling ``window``
    reaches ``rate`` with at least ``min_requests`` requests in it. Open: nothing is admitted
    for ``cooldown`` seconds. Half-open: ``probes`` requests are admitted; all succeeding
    closes it, any failing opens it again for another cool-down."""

    def __init__(self, int consecutive=5, double rate=0.5, int min_requests=20,
                 double window=10.0, double cooldown=30.0, int probes=1):
        self.state = CLOSED
        self.consecutive_limit = consecutive
        self.rate_limit = rate
        self.min_requests = min_requests
        self.window = window
        self.cooldown = cooldown
        self.probes = max(probes, 1)
        self.bucket_width = window / N_BUCKETS
        self.bucket_at = 0
        self.idx = 0
        for i in range(N_BUCKETS):
            self.req[i] = 0
            self.fail[i] = 0

    cdef void _roll(self, double now) noexcept:
        # Advance the ring of buckets to ``now``, clearing the ones that fell out.
        cdef long long at = <long long>(now / self.bucket_width)
        cdef long long steps = at - self.bucket_at
        cdef int i
        if steps <= 0:
            return
        if steps > N_BUCKETS:
            steps = N_BUCKETS
        for i in range(<int>steps):
            self.idx = (self.idx + 1) % N_BUCKETS
            self.req[self.idx] = 0
            self.fail[self.idx] = 0
        self.bucket_at = at

    cpdef bint admits(self, double now) except -1:
        """May a request go now? (No side effect: balancers ask this of every candidate.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return now >= self.opened_at + self.cooldown
        return self.probes_out < self.probes

    cpdef unsigned long long begin(self, double now):
        """A request was sent. In half-open it is one of the probes: the token returned
        (the opening it probes, > 0) goes back with its outcome; 0 for any other request."""
        if self.state == OPEN and now >= self.opened_at + self.cooldown:
            self.state = HALF_OPEN
            self.probes_out = 0
            self.probe_ok = 0
        if self.state == HALF_OPEN:
            self.probes_out += 1
            return self.opened
        return 0

    cpdef cancel(self, unsigned long long token):
        """A request that began ended with no verdict (its client went away)."""
        if self.state == HALF_OPEN and token == self.opened and self.probes_out > 0:
            self.probes_out -= 1

    cpdef record(self, bint ok, double now, unsigned long long token=0):
        cdef long long total = 0, failed = 0
        cdef int i
        if self.state == HALF_OPEN:
            if token != self.opened:
                return  # sent before this half-open spell: not one of its probes
            if not ok:
                self._open(now)
                return
            self.probe_ok += 1
            if self.probe_ok >= self.probes:
                self.state = CLOSED
                self.consecutive = 0
                for i in range(N_BUCKETS):
                    self.req[i] = 0
                    self.fail[i] = 0
            return
        if self.state == OPEN:
            return  # a request admitted before it opened: no news
        self._roll(now)
        self.req[self.idx] += 1
        if ok:
            self.consecutive = 0
            return
        self.fail[self.idx] += 1
        self.consecutive += 1
        if self.consecutive_limit and self.consecutive >= self.consecutive_limit:
            self._open(now)
            return
        if self.rate_limit > 0:
            for i in range(N_BUCKETS):
                total += self.req[i]
                failed += self.fail[i]
            if total >= self.min_requests and failed >= self.rate_limit * total:
                self._open(now)

    cdef void _open(self, double now) noexcept:
        self.state = OPEN
        self.opened_at = now
        self.opened += 1
        self.consecutive = 0
        self.probes_out = 0
        self.probe_ok = 0

    cpdef double retry_after(self, double now):
        """Seconds until it admits again (0 when it does now)."""
        if self.state == OPEN:
            return max(0.0, self.opened_at + self.cooldown - now)
        return 0.0

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]


@cython.final
cdef class Health:
    """One server: available unless marked failed (passive), unhealthy (active checks),
    ejected (outliers) or its circuit is open."""

    def __init__(self, int max_fails=1, double fail_timeout=10.0, Circuit circuit=None):
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.circuit = circuit
        self.healthy = True

    cpdef bint available(self, double now) except -1:
        if not self.healthy or now < self.down_until or now < self.ejected_until:
            return False
        return self.circuit is None or self.circuit.admits(now)

    cpdef unsigned long long begin(self, double now):
        """A request was sent to the server; returns its circuit probe token (Circuit)."""
        if self.circuit is not None:
            return self.circuit.begin(now)
        return 0

    cpdef cancel(self, unsigned long long token):
        if self.circuit is not None:
            self.circuit.cancel(token)

    cpdef record(self, bint ok, double now, unsigned long long token=0):
        """The outcome of one request (nginx: a failure is what proxy_next_upstream counts)."""
        self.requests += 1
        self.total_requests += 1
        if not ok:
            self.failures += 1
            self.total_failures += 1
            if self.max_fails:
                # nginx max_fails/fail_timeout: failures counted within fail_timeout of the
                # first; reaching max_fails takes the server out for fail_timeout.
                if now - self.first_fail > self.fail_timeout:
                    self.fails = 0
                    self.first_fail = now
                self.fails += 1
                if self.fails >= self.max_fails:
                    self.down_until = now + self.fail_timeout
                    self.fails = 0
        else:
            self.fails = 0
        if self.circuit is not None:
            self.circuit.record(ok, now, token)

    cpdef double available_in(self, double now):
        """Seconds until this server may be available again (for Retry-After); 0 if now."""
        cdef double t = max(self.down_until, self.ejected_until) - now
        if self.circuit is not None:
            t = max(t, self.circuit.retry_after(now))
        if not self.healthy:
            t = max(t, 1.0)
        return max(t, 0.0)

    @property
    def state(self) -> str:
        """For the admin API."""
        if not self.healthy:
            return "unhealthy"
        return "ok"


@cython.final
cdef class RetryBudget:
    """Retries may be at most ``ratio`` of an upstream's requests (over the current and the
    previous window), plus ``min_per_window`` always allowed (Envoy's retry_budget:
    budget_percent and min_retry_concurrency), so a failing fleet is not hit by a storm."""

    def __init__(self, double ratio=0.2, long long min_per_window=3, double window=10.0):
        self.ratio = ratio
        self.min_per_window = min_per_window
        self.width = window
        self.at = 0
        self.requests[0] = self.requests[1] = 0
        self.retries[0] = self.retries[1] = 0

    cdef void _roll(self, double now) noexcept:
        cdef long long at = <long long>(now / self.width)
        if at != self.at:
            if at == self.at + 1:
                self.requests[1] = self.requests[0]
                self.retries[1] = self.retries[0]
            else:
                self.requests[1] = 0
                self.retries[1] = 0
            self.requests[0] = 0
            self.retries[0] = 0
            self.at = at

    cpdef void request(self, double now):
        self._roll(now)
        self.requests[0] += 1

    cpdef bint allow(self, double now):
        """Take one retry from the budget if there is one."""
        cdef long long requests, retries
        self._roll(now)
        requests = self.requests[0] + self.requests[1]
        retries = self.retries[0] + self.retries[1]
        if retries < self.min_per_window or retries < self.ratio * requests:
            self.retries[0] += 1
            self.total += 1
            return True
        return False
