"""SingleLimit: the rate-limit filter's hooks for the common route, one limit counted in this
worker's memory (no quota, connection limit, adaptive divisor or consumer override), compiled:
the chain calls them with no Python frame and the table is asked at the C level. Every other
route runs the filter's general hooks (engine/filters/ratelimit.py); the answers and headers
are the same (tests/engine/filters/test_ratelimit.py runs both).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport ceil, isinf
from libc.string cimport memcpy

from engine.chain.context cimport Hooks, RequestContext
from engine.wire._common cimport (WRITER_STACK, Writer, monotonic, w_bytes, w_field, w_free,
                                  w_init, w_put, w_raw)
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


cdef inline void _digits(Digits* d, long long v) noexcept:
    # A decimal integer, without printf's format parsing (three header values per response).
    cdef unsigned long long u = <unsigned long long>(-v) if v < 0 else <unsigned long long>v
    d.start = 24
    while True:
        d.start -= 1
        d.buf[d.start] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        d.start -= 1
        d.buf[d.start] = b"-"


cdef inline bytes _number(Digits* d):
    return PyBytes_FromStringAndSize(d.buf + d.start, 24 - d.start)


@cython.final
cdef class SingleLimit(Hooks):
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
        self.raw = True

    cdef object request(self, RequestContext ctx):
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
        if ctx.vars is None:
            ctx.vars = {}
        (<dict?>ctx.vars)[_STATE] = state
        verdict = state[0]
        if verdict == RL_ALLOW:
            return None
        if verdict == RL_DELAY:
            return self.delay(state[3])
        return self.refused(ctx, "rate_limited", state[3])

    cdef int response(self, RequestContext ctx, Response resp) except -1:
        cdef tuple state = self._state(ctx)
        cdef list h
        cdef Digits remaining, t
        if state is None:
            return 0
        self._numbers(state, &remaining, &t)
        h = resp.headers
        if self.classic:
            h.append(self.limit)
            h.append((b"X-RateLimit-Remaining", _number(&remaining)))
            h.append((b"X-RateLimit-Reset", _number(&t)))
        if self.ietf:
            h.append(self.policy)
            h.append((b"RateLimit", self._item(&remaining, &t)))
        return 0

    cdef bytes response_raw(self, RequestContext ctx, bytes block):
        # The same fields as ``response``, written after the lines as one piece.
        cdef tuple state = self._state(ctx)
        cdef Digits remaining, t
        cdef Writer w
        cdef char stack[WRITER_STACK]
        if state is None:
            return block
        self._numbers(state, &remaining, &t)
        w_init(&w, stack, WRITER_STACK)
        try:
            w_put(&w, block)
            if self.classic:
                w_field(&w, self.limit[0], self.limit[1])
                w_raw(&w, "X-RateLimit-Remaining: ", 23)
                w_raw(&w, remaining.buf + remaining.start, 24 - remaining.start)
                w_raw(&w, "\r\nX-RateLimit-Reset: ", 21)
                w_raw(&w, t.buf + t.start, 24 - t.start)
                w_raw(&w, "\r\n", 2)
            if self.ietf:
                w_field(&w, self.policy[0], self.policy[1])
                w_raw(&w, "RateLimit: ", 11)
                w_put(&w, self.sf)
                w_raw(&w, ";r=", 3)
                w_raw(&w, remaining.buf + remaining.start, 24 - remaining.start)
                w_raw(&w, ";t=", 3)
                w_raw(&w, t.buf + t.start, 24 - t.start)
                w_raw(&w, "\r\n", 2)
            return w_bytes(&w)
        finally:
            w_free(&w)

    cdef tuple _state(self, RequestContext ctx):
        # (verdict, remaining, reset, wait) of this request, or None: it was not counted.
        vars = ctx.vars
        if vars is None:
            return None
        return (<dict?>vars).get(_STATE)

    cdef int _numbers(self, tuple state, Digits* remaining, Digits* t) except -1:
        _digits(remaining, state[1])
        # On a refusal t is the wait (draft §6: like Retry-After); else the window's reset.
        _digits(t, _seconds(state[3] if state[0] == RL_REJECT else state[2]))
        return 0

    cdef bytes _item(self, Digits* remaining, Digits* t):
        # draft §4: the policy's item with its remaining quota and reset, "name;r=..;t=.."
        cdef Py_ssize_t n = PyBytes_GET_SIZE(self.sf)
        cdef Py_ssize_t nr = 24 - remaining.start
        cdef Py_ssize_t nt = 24 - t.start
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n + 6 + nr + nt)
        cdef char* p = PyBytes_AS_STRING(out)
        memcpy(p, PyBytes_AS_STRING(self.sf), n)
        p += n
        memcpy(p, b";r=", 3)
        memcpy(p + 3, remaining.buf + remaining.start, nr)
        p += 3 + nr
        memcpy(p, b";t=", 3)
        memcpy(p + 3, t.buf + t.start, nt)
        return out
