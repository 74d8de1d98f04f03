"""Rate-limit algorithms over bounded per-key tables (ext.ratelimit).

Five limiters share one contract. Time is an argument: `now` is monotonic seconds (float),
read once per request by the caller and non-decreasing per key.

- `check(key, now, cost=1) -> (verdict, remaining, reset_after, wait)`: verdict ALLOW (1),
  DELAY (2: admitted, forward after `wait` seconds) or REJECT (0: retry after `wait` seconds,
  > 0; `inf` when `cost > limit`, which can never pass). A rejected check consumes nothing and
  never creates a key. `remaining` is the largest cost `check` would admit right now (>= 0);
  `reset_after` the seconds until the key is as good as new.
- `peek(key, now) -> (remaining, reset_after)` changes nothing (not even LRU order); an absent
  key peeks as a fresh one. `limit` is a fresh key's `remaining`, `window` the seconds that
  quota is per (`RateLimit-Policy: q=limit;w=window`).
- At most `max_keys` keys: admitting a new key into a full table evicts the least recently
  checked one (O(1): dict + the intrusive list of ext/_lrulist.pxd, as ext.lru).

Algorithms (`cost` units are requests):

- FixedWindow(limit, window): windows start at multiples of `window`; admit while
  count + cost <= limit. reset_after = wait = window end - now.
- SlidingLog(limit, window): one timestamp per admitted unit, expired when t <= now - window;
  admit while live + cost <= limit. reset_after = newest + window - now.
- SlidingCounter(limit, window): estimate = prev * (window - elapsed) / window + curr over
  aligned windows (the Cloudflare / APISIX two-window estimate); admit while
  estimate + cost <= limit. wait is solved in closed form; reset_after is 2*window - elapsed
  while the current window has a count, window - elapsed while only the previous one has.
- TokenBucket(rate, burst, delay=0): `burst` tokens refilled at `rate`/s, new keys full. With
  `delay` > 0 a request may drive the bucket down to -delay and is DELAYed until its deficit
  is refilled. limit = burst + delay.
- LeakyBucket(rate, burst, nodelay=False): nginx `limit_req`, see the class docstring.
  limit = burst + 1.

Cython siblings `from ext.ratelimit cimport Limiter, Decision` and call
`lim.decide(key, now, cost, &d)`: it returns the verdict and fills `d`, no tuple built.
"""

cimport cython
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.math cimport INFINITY, floor

from ext._lrulist cimport (
    LruLink, link_offset, lru_init, lru_oldest, lru_push_front, lru_touch, lru_unlink, node_at,
)

ALLOW = RL_ALLOW
DELAY = RL_DELAY
REJECT = RL_REJECT

# A REJECT always asks for a positive wait, even where rounding lands a closed-form answer on 0.
cdef double MIN_WAIT = 1e-9


cdef inline long _floor_units(double x) noexcept:
    # Whole cost units in x, never negative (x may sit an ulp below 0 after rounding).
    return <long>floor(x) if x > 0.0 else 0


cdef inline double _at_least(double x, double lo) noexcept:
    return x if x > lo else lo


@cython.no_gc
cdef class _Entry:
    pass


cdef Py_ssize_t _LINK_OFFSET


cdef Py_ssize_t _measure_link_offset() except -1:
    # Subclasses add their fields after _Entry's, so one offset serves every entry type.
    cdef _Entry probe = _Entry()
    return link_offset(probe, &probe.link)


_LINK_OFFSET = _measure_link_offset()


cdef inline _Entry _entry_at(LruLink* link):
    return <_Entry>node_at(link, _LINK_OFFSET)


@cython.final
@cython.no_gc
cdef class _WindowEntry(_Entry):
    pass


@cython.final
@cython.no_gc
cdef class _BucketEntry(_Entry):
    pass


@cython.final
@cython.no_gc
cdef class _LogEntry(_Entry):
    def __dealloc__(self):
        PyMem_Free(self.buf)


@cython.no_gc
cdef class Limiter:
    """Base of the limiters: the bounded key table and the Python-facing API."""

    def __cinit__(self, *args, **kwargs):
        self._map = {}
        lru_init(&self._root)
        self.max_keys = 1
        self.evictions = 0

    cdef int _init_table(self, Py_ssize_t max_keys) except -1:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.max_keys = max_keys
        self._blank = self._fresh()
        return 0

    def __len__(self):
        return len(self._map)

    def __contains__(self, key):
        return key in self._map

    def __repr__(self):
        return (f"{type(self).__name__}(limit={self.limit}, window={self.window}, "
                f"max_keys={self.max_keys}, len={len(self._map)})")

    cdef _Entry _fresh(self):
        raise TypeError("Limiter is abstract: use FixedWindow, SlidingLog, SlidingCounter, "
                        "TokenBucket or LeakyBucket")

    cdef int _step(self, _Entry e, double now, long cost, Decision* out) except -1:
        raise TypeError("Limiter is abstract")

    cdef void _view(self, _Entry e, double now, Decision* out) noexcept:
        out.remaining = 0
        out.reset_after = 0.0
        out.wait = 0.0

    cdef int decide(self, str key, double now, long cost, Decision* out) except -1:
        """Decide one request: returns RL_ALLOW / RL_DELAY / RL_REJECT and fills `out`."""
        cdef PyObject* found
        cdef _Entry e
        cdef _Entry lru
        cdef int verdict
        if key is None:
            raise TypeError("key must be a str, not None")
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost}")
        found = PyDict_GetItem(self._map, key)
        if found is not NULL:
            e = <_Entry>found
            lru_touch(&self._root, &e.link)
            return self._step(e, now, cost, out)
        e = self._fresh()
        verdict = self._step(e, now, cost, out)
        if verdict == RL_REJECT:
            return verdict
        e.key = key
        self._map[key] = e
        lru_push_front(&self._root, &e.link)
        if len(self._map) > self.max_keys:
            # The local keeps the evicted entry alive until it is unlinked.
            lru = _entry_at(lru_oldest(&self._root))
            del self._map[lru.key]
            lru_unlink(&lru.link)
            self.evictions += 1
        return verdict

    cdef int inspect(self, str key, double now, Decision* out) except -1:
        """Fill `out` for key as of `now` without changing any state; out.wait is 0."""
        cdef PyObject* found
        if key is None:
            raise TypeError("key must be a str, not None")
        found = PyDict_GetItem(self._map, key)
        self._view(<_Entry>found if found is not NULL else self._blank, now, out)
        out.wait = 0.0
        return 0

    cpdef tuple check(self, str key, double now, long cost=1):
        """Decide one request of `cost` units: (verdict, remaining, reset_after, wait)."""
        cdef Decision d
        cdef int verdict = self.decide(key, now, cost, &d)
        return (verdict, d.remaining, d.reset_after, d.wait)

    cpdef tuple peek(self, str key, double now):
        """(remaining, reset_after) for key at `now`, consuming nothing."""
        cdef Decision d
        self.inspect(key, now, &d)
        return (d.remaining, d.reset_after)

    cpdef bint remove(self, str key) except -1:
        """Forget key; True if it was held."""
        cdef PyObject* found = PyDict_GetItem(self._map, key)
        cdef _Entry e
        if found is NULL:
            return False
        e = <_Entry>found
        del self._map[key]
        lru_unlink(&e.link)
        return True


cdef int _check_window_args(long limit, double window) except -1:
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if not window > 0.0 or window == INFINITY:
        raise ValueError(f"window must be a finite number > 0, got {window}")
    return 0


cdef int _check_rate(double rate) except -1:
    if not rate > 0.0 or rate == INFINITY:
        raise ValueError(f"rate must be a finite number > 0, got {rate}")
    return 0


@cython.no_gc
cdef class FixedWindow(Limiter):
    """At most `limit` cost units per aligned `window` seconds."""

    def __init__(self, long limit, double window, Py_ssize_t max_keys=100_000):
        _check_window_args(limit, window)
        self.limit = limit
        self.window = window
        self._init_table(max_keys)

    cdef _Entry _fresh(self):
        cdef _WindowEntry e = _WindowEntry()
        e.start = -INFINITY
        return e

    cdef int _step(self, _Entry entry, double now, long cost, Decision* out) except -1:
        cdef _WindowEntry e = <_WindowEntry>entry
        cdef double idx = floor(now / self.window)
        cdef double left = _at_least(self.window - (now - idx * self.window), 0.0)
        if idx != e.start:
            e.start = idx
            e.curr = 0
        out.reset_after = left
        if cost > self.limit - e.curr:
            out.remaining = self.limit - e.curr
            out.wait = INFINITY if cost > self.limit else _at_least(left, MIN_WAIT)
            return RL_REJECT
        e.curr += cost
        out.remaining = self.limit - e.curr
        out.wait = 0.0
        return RL_ALLOW

    cdef void _view(self, _Entry entry, double now, Decision* out) noexcept:
        cdef _WindowEntry e = <_WindowEntry>entry
        cdef double idx = floor(now / self.window)
        out.reset_after = _at_least(self.window - (now - idx * self.window), 0.0)
        out.remaining = self.limit - (e.curr if idx == e.start else 0)


@cython.no_gc
cdef class SlidingLog(Limiter):
    """At most `limit` cost units in any `window` seconds, from a log of admitted times.

    Memory: up to `limit` doubles per key (the log of a key holds at most `limit` entries).
    """

    def __init__(self, long limit, double window, Py_ssize_t max_keys=100_000):
        _check_window_args(limit, window)
        self.limit = limit
        self.window = window
        self._init_table(max_keys)

    cdef _Entry _fresh(self):
        return _LogEntry()

    cdef inline double _newest_reset(self, _LogEntry e, Py_ssize_t live, double now) noexcept:
        if live == 0:
            return 0.0
        return _at_least(e.buf[(e.head + e.size - 1) % e.cap] + self.window - now, 0.0)

    cdef int _step(self, _Entry entry, double now, long cost, Decision* out) except -1:
        cdef _LogEntry e = <_LogEntry>entry
        cdef double cutoff = now - self.window
        cdef Py_ssize_t i
        cdef Py_ssize_t need
        cdef Py_ssize_t cap
        cdef double* buf
        # Timestamps are non-decreasing, so the expired ones are a prefix.
        while e.size > 0 and e.buf[e.head] <= cutoff:
            e.head = (e.head + 1) % e.cap
            e.size -= 1
        if cost > self.limit - e.size:
            out.remaining = self.limit - e.size
            out.reset_after = self._newest_reset(e, e.size, now)
            if cost > self.limit:
                out.wait = INFINITY
            else:
                # The (size + cost - limit)-th oldest entry must expire first.
                i = e.size + cost - self.limit - 1
                out.wait = _at_least(e.buf[(e.head + i) % e.cap] + self.window - now, MIN_WAIT)
            return RL_REJECT
        need = e.size + cost
        if need > e.cap:
            cap = e.cap * 2 if e.cap * 2 > need else need
            if cap > self.limit:
                cap = self.limit
            buf = <double*>PyMem_Malloc(cap * sizeof(double))
            if buf is NULL:
                raise MemoryError()
            for i in range(e.size):
                buf[i] = e.buf[(e.head + i) % e.cap]
            PyMem_Free(e.buf)
            e.buf = buf
            e.cap = cap
            e.head = 0
        for i in range(e.size, need):
            e.buf[(e.head + i) % e.cap] = now
        e.size = need
        out.remaining = self.limit - e.size
        out.reset_after = self._newest_reset(e, e.size, now)
        out.wait = 0.0
        return RL_ALLOW

    cdef void _view(self, _Entry entry, double now, Decision* out) noexcept:
        cdef _LogEntry e = <_LogEntry>entry
        cdef double cutoff = now - self.window
        cdef Py_ssize_t expired = 0
        while expired < e.size and e.buf[(e.head + expired) % e.cap] <= cutoff:
            expired += 1
        out.remaining = self.limit - (e.size - expired)
        out.reset_after = self._newest_reset(e, e.size - expired, now)


@cython.no_gc
cdef class SlidingCounter(Limiter):
    """At most `limit` cost units per `window`, by the weighted two-window estimate."""

    def __init__(self, long limit, double window, Py_ssize_t max_keys=100_000):
        _check_window_args(limit, window)
        self.limit = limit
        self.window = window
        self._init_table(max_keys)

    cdef _Entry _fresh(self):
        cdef _WindowEntry e = _WindowEntry()
        e.start = -INFINITY
        return e

    cdef inline double _reset(self, long prev, long curr, double elapsed) noexcept:
        # curr still counts (as next window's prev) until the end of the next window.
        if curr > 0:
            return _at_least(2.0 * self.window - elapsed, 0.0)
        if prev > 0:
            return _at_least(self.window - elapsed, 0.0)
        return 0.0

    cdef int _step(self, _Entry entry, double now, long cost, Decision* out) except -1:
        cdef _WindowEntry e = <_WindowEntry>entry
        cdef double w = self.window
        cdef double idx = floor(now / w)
        cdef double elapsed = now - idx * w
        cdef double room
        if idx != e.start:
            e.prev = e.curr if idx == e.start + 1.0 else 0
            e.curr = 0
            e.start = idx
        room = self.limit - (e.prev * (w - elapsed) / w + e.curr)
        if cost > room:
            out.remaining = _floor_units(room)
            out.reset_after = self._reset(e.prev, e.curr, elapsed)
            if cost > self.limit:
                out.wait = INFINITY
            elif e.curr + cost <= self.limit:
                # Within this window, once prev's weight has shrunk enough (prev > 0 here).
                out.wait = _at_least(
                    (w - elapsed) - (self.limit - cost - e.curr) * w / e.prev, MIN_WAIT)
            else:
                # Only in the next window, once this window's count (then prev) has faded.
                out.wait = _at_least(
                    (w - elapsed) + (w - (self.limit - cost) * w / e.curr), MIN_WAIT)
            return RL_REJECT
        e.curr += cost
        out.remaining = _floor_units(self.limit - (e.prev * (w - elapsed) / w + e.curr))
        out.reset_after = self._reset(e.prev, e.curr, elapsed)
        out.wait = 0.0
        return RL_ALLOW

    cdef void _view(self, _Entry entry, double now, Decision* out) noexcept:
        cdef _WindowEntry e = <_WindowEntry>entry
        cdef double w = self.window
        cdef double idx = floor(now / w)
        cdef double elapsed = now - idx * w
        cdef long prev = e.prev
        cdef long curr = e.curr
        if idx != e.start:
            prev = e.curr if idx == e.start + 1.0 else 0
            curr = 0
        out.remaining = _floor_units(self.limit - (prev * (w - elapsed) / w + curr))
        out.reset_after = self._reset(prev, curr, elapsed)


@cython.no_gc
cdef class TokenBucket(Limiter):
    """`burst` tokens refilled at `rate` per second; new keys start full.

    With `delay` > 0 (throttling) a request that finds too few tokens may take the bucket down
    to -delay: it is admitted as DELAY and must wait until its deficit is refilled. Beyond that
    it is rejected. limit = burst + delay, window = limit / rate.
    """

    def __init__(self, double rate, long burst, long delay=0, Py_ssize_t max_keys=100_000):
        _check_rate(rate)
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.rate = rate
        self.burst = burst
        self.delay = delay
        self.limit = burst + delay
        self.window = self.limit / rate
        self._init_table(max_keys)

    cdef _Entry _fresh(self):
        cdef _BucketEntry e = _BucketEntry()
        e.level = <double>self.burst
        e.last = -INFINITY
        return e

    cdef inline double _tokens(self, _BucketEntry e, double now) noexcept:
        cdef double elapsed = now - e.last
        cdef double tokens
        if elapsed < 0.0:
            elapsed = 0.0
        tokens = e.level + self.rate * elapsed
        return tokens if tokens < self.burst else <double>self.burst

    cdef int _step(self, _Entry entry, double now, long cost, Decision* out) except -1:
        cdef _BucketEntry e = <_BucketEntry>entry
        cdef double tokens = self._tokens(e, now)
        cdef double avail = tokens + self.delay
        if cost > avail:
            out.remaining = _floor_units(avail)
            out.reset_after = (self.burst - tokens) / self.rate
            out.wait = (INFINITY if cost > self.limit
                        else _at_least((cost - avail) / self.rate, MIN_WAIT))
            return RL_REJECT
        tokens = tokens - cost
        e.level = tokens
        e.last = now
        out.remaining = _floor_units(tokens + self.delay)
        out.reset_after = (self.burst - tokens) / self.rate
        if tokens >= 0.0:
            out.wait = 0.0
            return RL_ALLOW
        out.wait = -tokens / self.rate
        return RL_DELAY

    cdef void _view(self, _Entry entry, double now, Decision* out) noexcept:
        cdef double tokens = self._tokens(<_BucketEntry>entry, now)
        out.remaining = _floor_units(tokens + self.delay)
        out.reset_after = (self.burst - tokens) / self.rate


@cython.no_gc
cdef class LeakyBucket(Limiter):
    """nginx `limit_req`: a bucket of `excess` requests leaking at `rate` per second.

    Per ngx_http_limit_req_lookup (`excess = lr->excess - rate * ms / 1000 + 1000`, clamped at
    0 after adding, a new key stored with excess 0), generalised to `cost`:
    level = max(excess - rate * elapsed, -1) (a new key is at -1), new = level + cost.
    REJECT if new > burst (state unchanged). Otherwise new is stored; ALLOW if nodelay or
    new <= 0, else DELAY by new / rate (ngx_http_limit_req_account: delay = excess * 1000 / rate
    ms, excess being the value after this request). So a drained key takes burst + 1 requests at
    one instant, as nginx does: limit = burst + 1, window = limit / rate.
    """

    def __init__(self, double rate, long burst, bint nodelay=False,
                 Py_ssize_t max_keys=100_000):
        _check_rate(rate)
        if burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst}")
        self.rate = rate
        self.burst = burst
        self.nodelay = nodelay
        self.limit = burst + 1
        self.window = self.limit / rate
        self._init_table(max_keys)

    cdef _Entry _fresh(self):
        cdef _BucketEntry e = _BucketEntry()
        e.level = -1.0
        e.last = -INFINITY
        return e

    cdef inline double _level(self, _BucketEntry e, double now) noexcept:
        cdef double elapsed = now - e.last
        cdef double level
        if elapsed < 0.0:
            elapsed = 0.0
        level = e.level - self.rate * elapsed
        return level if level > -1.0 else -1.0

    cdef int _step(self, _Entry entry, double now, long cost, Decision* out) except -1:
        cdef _BucketEntry e = <_BucketEntry>entry
        cdef double level = self._level(e, now)
        cdef double room = self.burst - level
        if cost > room:
            out.remaining = _floor_units(room)
            out.reset_after = (level + 1.0) / self.rate
            out.wait = (INFINITY if cost > self.limit
                        else _at_least((cost - room) / self.rate, MIN_WAIT))
            return RL_REJECT
        level = level + cost
        e.level = level
        e.last = now
        out.remaining = _floor_units(self.burst - level)
        out.reset_after = (level + 1.0) / self.rate
        if self.nodelay or level <= 0.0:
            out.wait = 0.0
            return RL_ALLOW
        out.wait = level / self.rate
        return RL_DELAY

    cdef void _view(self, _Entry entry, double now, Decision* out) noexcept:
        cdef double level = self._level(<_BucketEntry>entry, now)
        out.remaining = _floor_units(self.burst - level)
        out.reset_after = (level + 1.0) / self.rate
