"""Keep-alive connection pool for one upstream server (nginx `keepalive N` semantics)."""

from collections import deque


class Pool:
    """Idle upstream connections, newest on the right; the sweeper expires from the left."""

    __slots__ = ("max_idle", "idle_timeout", "max_requests", "idle", "active", "closed")

    def __init__(self, max_idle: int, idle_timeout: float, max_requests: int):
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        self.idle: deque = deque()
        self.active = 0  # connections carrying a request now (least_conn, admin API)
        self.closed = False

    def acquire(self):
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def release(self, conn, now: float) -> None:
        if (self.closed or len(self.idle) >= self.max_idle
                or conn.requests >= self.max_requests or not conn.usable()):
            conn.close()
            return
        conn.idle_deadline = now + self.idle_timeout
        self.idle.append(conn)

    def expire(self, now: float) -> None:
        idle = self.idle
        while idle and idle[0].idle_deadline <= now:
            idle.popleft().close()

    def discard(self, conn) -> None:
        """Forget an idle connection the upstream closed."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        self.closed = True
        while self.idle:
            self.idle.pop().close()
