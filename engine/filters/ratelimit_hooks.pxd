from engine.chain.context cimport Hooks, RequestContext
from ext.ratelimit cimport Limiter


cdef struct Digits:
    char buf[24]
    Py_ssize_t start                # the number is buf[start:]


cdef class SingleLimit(Hooks):
    cdef readonly Limiter table
    cdef readonly object keyfn
    cdef readonly long cost
    cdef readonly object refuse     # what keyfn returns for "refuse: the key is missing"
    cdef readonly object refused    # (ctx, code, wait) -> the 429
    cdef readonly object keyless    # (ctx) -> the 429 of a request without the key
    cdef readonly object delay      # (wait) -> an awaitable that holds the request
    cdef readonly tuple limit       # the X-RateLimit-Limit field
    cdef readonly bytes sf          # the policy's name as a Structured Field item
    cdef readonly tuple policy      # the RateLimit-Policy field
    cdef readonly bint classic      # X-RateLimit-* headers
    cdef readonly bint ietf         # RateLimit and RateLimit-Policy
    cdef public object clock        # None: CLOCK_MONOTONIC; tests set a function of seconds

    cdef tuple _state(self, RequestContext ctx)
    cdef int _numbers(self, tuple state, Digits* remaining, Digits* t) except -1
    cdef bytes _item(self, Digits* remaining, Digits* t)
