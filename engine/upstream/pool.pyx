"""Keep-alive connection pool for one upstream server (nginx `keepalive N` semantics)."""

cimport cython

from engine.upstream.connection cimport UpstreamConnection

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX


@cython.final
cdef class Pool:
    """Idle upstream connections, newest on the right; the sweeper expires from the left."""

    def __init__(self, max_idle: int, idle_timeout: float, max_requests: int):
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        # The config puts no upper bound on keepalive_requests; past PY_SSIZE_T_MAX it is
        # unlimited anyway.
        self.max_requests = min(max_requests, PY_SSIZE_T_MAX)
        self.idle = []
        self.active = 0
        self.opened = 0
        self.closed = False

    cpdef object acquire(self):
        cdef UpstreamConnection conn
        cdef list idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    cpdef release(self, object conn, double now):
        cdef UpstreamConnection c = <UpstreamConnection?>conn
        # (a transport closing without ``lost`` yet is caught by acquire's usable() check)
        if (self.closed or len(self.idle) >= self.max_idle
                or c.requests >= self.max_requests or c.lost):
            c.close()
            return
        c.idle_deadline = now + self.idle_timeout
        self.idle.append(c)

    cpdef expire(self, double now):
        cdef list idle = self.idle
        cdef Py_ssize_t n = 0
        while n < len(idle) and (<UpstreamConnection?>idle[n]).idle_deadline <= now:
            n += 1
        if n:
            expired = idle[:n]
            del idle[:n]
            for conn in expired:
                (<UpstreamConnection>conn).close()

    cpdef discard(self, object conn):
        """Forget an idle connection the upstream closed."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    cpdef close(self):
        self.closed = True
        idle = self.idle
        while idle:
            (<UpstreamConnection?>idle.pop()).close()
