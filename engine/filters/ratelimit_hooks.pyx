"""SingleLimit: the rate-limit filter's hooks for the common route, one limit counted in this
worker's memory (no quota, connection limit, adaptive divisor or consumer override), compiled:
the chain calls them with no Python frame and the table is asked at the C level. Every other
route runs the filter's general hooks (engine/filters/ratelimit.py); the answers and headers
are the same (tests/engine/filters/test_ratelimit.py runs both).
"""

cimport cython
from libc.math cimport ceil, isinf

from engine.wire._common cimport Writer, monotonic, w_bytes, w_free, w_init, w_int, w_put, w_raw
from engine.wire.message cimport Response
from ext.ratelimit cimport Limiter, RL_ALLOW, RL_DELAY, RL_REJECT

# The per-request state's key in ctx.vars, as the general hooks use it.
cdef str _STATE = "ratelimit"


cdef inline long long _seconds(double t) noexcept:
    # Whole seconds, rounded up so a client that waits them is not early (RFC 9110 §10.2.3,
    # draft-ietf-httpapi-ratelimit-headers §4.1 "t"); 0 when nothing is to wait for.
    if isinf(t) or not t > 0:
        return 0
    return <long long>ceil(min(t, 1e15))  # (a bound no window reaches: no overflow)


cdef inline bytes _number(long long v):
    cdef char buf[24]
    cdef Writer w
    w_init(&w, buf, 24)
    w_int(&w, v)
    return w_bytes(&w)


@cython.final
cdef class SingleLimit:
    """``keyfn(ctx)``: the key (str), None (not counted) or ``refuse`` (the limit's key is
    missing and its fallback says refuse); ``refused(ctx, code, wait)`` and
    ``keyless(ctx)`` make the 429s, ``delay(wait)`` the awaitable that holds a request."""

    def __init__(self, Limiter table, keyfn, long cost, refuse, refused, keyless, delay,
                 bytes limit, bytes sf, bytes policy, bint classic, bint ietf):
        self.table = table
        self.keyfn = keyfn
        self.cost = cost
        self.refuse = refuse
        self.refused = refused
        self.keyless = keyless
        self.delay = delay
        self.limit = (b"X-RateLimit-Limit", limit)  # (the constant fields, made once)
        self.sf = sf
        self.policy = (b"RateLimit-Policy", policy)
        self.classic = classic
        self.ietf = ietf
        self.clock = None

    def on_request(self, ctx):
        cdef tuple state
        cdef int verdict
        cdef double now
        key = self.keyfn(ctx)
        if key is None:
            return None
        if key is self.refuse:
            return self.keyless(ctx)
        now = monotonic() if self.clock is None else self.clock()
        state = self.table.check(key, now, self.cost)  # (verdict, remaining, reset, wait)
        vars = ctx.vars
        if vars is None:
            ctx.vars = vars = {}
        vars[_STATE] = state
        verdict = state[0]
        if verdict == RL_ALLOW:
            return None
        if verdict == RL_DELAY:
            return self.delay(state[3])
        return self.refused(ctx, "rate_limited", state[3])

    def on_response(self, ctx, resp):
        cdef tuple state
        cdef list h
        cdef long long remaining, t
        vars = ctx.vars
        if vars is None:
            return
        state = vars.get(_STATE)
        if state is None:
            return
        remaining = state[1]
        # On a refusal t is the wait (draft §6: like Retry-After); else the window's reset.
        t = _seconds(state[3] if state[0] == RL_REJECT else state[2])
        h = (<Response?>resp).headers
        if self.classic:
            h.append(self.limit)
            h.append((b"X-RateLimit-Remaining", _number(remaining)))
            h.append((b"X-RateLimit-Reset", _number(t)))
        if self.ietf:
            h.append(self.policy)
            h.append((b"RateLimit", self._item(remaining, t)))

    cdef bytes _item(self, long long remaining, long long t):
        # draft §4: the policy's item with its remaining quota and reset, "name;r=..;t=.."
        cdef char buf[256]
        cdef Writer w
        w_init(&w, buf, 256)
        try:
            w_put(&w, self.sf)
            w_raw(&w, ";r=", 3)
            w_int(&w, remaining)
            w_raw(&w, ";t=", 3)
            w_int(&w, t)
            return w_bytes(&w)
        finally:
            w_free(&w)
