cimport cython

from ext._lrulist cimport LruLink

# Verdicts at the C level; the module exposes them to Python as REJECT / ALLOW / DELAY.
cdef enum:
    RL_REJECT = 0
    RL_ALLOW = 1
    RL_DELAY = 2


ctypedef struct Decision:
    long remaining              # cost units check() would still admit now (>= 0)
    double reset_after          # seconds until the key is as good as new
    double wait                 # DELAY: hold this long; REJECT: retry after (inf: never)


@cython.no_gc
cdef class _Entry:
    # One key's state, linked into Limiter's recency list. Not GC tracked: it holds only its
    # str key (the list's links own nothing, see ext/_lrulist.pxd).
    cdef str key
    cdef LruLink link


@cython.final
@cython.no_gc
cdef class _WindowEntry(_Entry):
    cdef double start           # FixedWindow / SlidingCounter: current window's index
    cdef long curr              # cost units admitted in the current window
    cdef long prev              # SlidingCounter: ... in the window before it


@cython.final
@cython.no_gc
cdef class _BucketEntry(_Entry):
    cdef double level           # TokenBucket: tokens; LeakyBucket: excess (nginx), >= -1
    cdef double last            # when `level` was computed


@cython.final
@cython.no_gc
cdef class _LogEntry(_Entry):
    # Ring buffer of admitted timestamps (one per cost unit), oldest at `head`; grows by
    # doubling up to the limiter's `limit`.
    cdef double* buf
    cdef Py_ssize_t head
    cdef Py_ssize_t size
    cdef Py_ssize_t cap


@cython.no_gc
cdef class Limiter:
    # Base of every algorithm: the bounded key table. Subclasses implement _fresh/_step/_view.
    # Not GC tracked: it only refers to str keys and untracked entries, so it can never be
    # part of a cycle.
    cdef readonly long limit
    cdef readonly double window
    cdef readonly Py_ssize_t max_keys
    cdef readonly unsigned long long evictions
    cdef dict _map              # key -> _Entry, the entries' only owner
    cdef LruLink _root          # the same entries, most recently checked first
    cdef _Entry _blank          # a fresh entry, read (never written) by peek of an absent key

    cdef int decide(self, str key, double now, long cost, Decision* out) except -1
    cdef int inspect(self, str key, double now, Decision* out) except -1
    cpdef tuple check(self, str key, double now, long cost=*)
    cpdef tuple peek(self, str key, double now)
    cpdef bint remove(self, str key) except -1

    cdef _Entry _fresh(self)
    cdef int _step(self, _Entry e, double now, long cost, Decision* out) except -1
    cdef void _view(self, _Entry e, double now, Decision* out) noexcept
    cdef int _init_table(self, Py_ssize_t max_keys) except -1


# Not final: Cython 3 refuses a final subclass that overrides pxd-declared cdef methods.
@cython.no_gc
cdef class FixedWindow(Limiter):
    cdef _Entry _fresh(self)
    cdef int _step(self, _Entry e, double now, long cost, Decision* out) except -1
    cdef void _view(self, _Entry e, double now, Decision* out) noexcept


@cython.no_gc
cdef class SlidingLog(Limiter):
    cdef inline double _newest_reset(self, _LogEntry e, Py_ssize_t live, double now) noexcept
    cdef _Entry _fresh(self)
    cdef int _step(self, _Entry e, double now, long cost, Decision* out) except -1
    cdef void _view(self, _Entry e, double now, Decision* out) noexcept


@cython.no_gc
cdef class SlidingCounter(Limiter):
    cdef inline double _reset(self, long prev, long curr, double elapsed) noexcept
    cdef _Entry _fresh(self)
    cdef int _step(self, _Entry e, double now, long cost, Decision* out) except -1
    cdef void _view(self, _Entry e, double now, Decision* out) noexcept


@cython.no_gc
cdef class TokenBucket(Limiter):
    cdef readonly double rate
    cdef readonly long burst
    cdef readonly long delay
    cdef inline double _tokens(self, _BucketEntry e, double now) noexcept
    cdef _Entry _fresh(self)
    cdef int _step(self, _Entry e, double now, long cost, Decision* out) except -1
    cdef void _view(self, _Entry e, double now, Decision* out) noexcept


@cython.no_gc
cdef class LeakyBucket(Limiter):
    cdef readonly double rate
    cdef readonly long burst
    cdef readonly bint nodelay
    cdef inline double _level(self, _BucketEntry e, double now) noexcept
    cdef _Entry _fresh(self)
    cdef int _step(self, _Entry e, double now, long cost, Decision* out) except -1
    cdef void _view(self, _Entry e, double now, Decision* out) noexcept
