"""What the operator hears of a store breaker: one JSON line on stderr when it opens (a
warning: features now apply their ``on_store_error`` policy, so limits or idempotency may not
be enforced) and one when it closes again.

Rate-bounded like a token bucket: ``burst`` lines at once (an outage's open and close), then
one per ``interval``. Transitions past that are counted, and when the bucket refills the
current state is logged with how many transitions went unlogged, so a flapping store costs a
line per interval and the last line always tells the current state. Time is an argument
(``now``); ``flush_later`` arms the loop timer that pays a line owed.
"""

import sys
import time

import orjson


_WHOLE = 1 - 1e-9  # a token, give or take float rounding of the refill


class BreakerLog:
    __slots__ = ("store", "interval", "burst", "tokens", "refilled", "opened", "since",
                 "error", "unlogged", "due", "timer")

    def __init__(self, store: str, interval: float = 10.0, burst: int = 2):
        self.store = store  # who, for the line: "host:port/db", never the URL's password
        self.interval = interval
        self.burst = burst
        self.tokens = float(burst)
        self.refilled = None  # when tokens were last counted
        self.opened = False  # the breaker's state now
        self.since = 0.0  # when the breaker last opened
        self.error = ""
        self.unlogged = 0
        self.due = None  # when flush() should run: a line is owed
        self.timer = None

    def changed(self, opened: bool, now: float, error: str = "") -> None:
        """The breaker opened (``error``: the failure that tripped it) or closed."""
        self.opened = opened
        if opened:
            self.since = now
            self.error = error
        self._refill(now)
        if self.due is None and self.tokens >= _WHOLE:
            self._emit(now)
            return
        self.unlogged += 1
        if self.due is None:
            self.due = now + (1 - self.tokens) * self.interval

    def flush(self, now: float) -> None:
        """Log the current state if a line is owed and the bucket allows it."""
        if self.due is None:
            return
        self._refill(now)
        if self.tokens < _WHOLE:
            self.due = now + (1 - self.tokens) * self.interval
            return
        self.due = None
        if self.unlogged:
            self._emit(now)

    def flush_later(self, loop, clock) -> None:
        """Have ``loop`` call flush when a line is owed (``clock``: the ``now`` of the caller)."""
        if self.due is None or self.timer is not None:
            return

        def fire():
            self.timer = None
            self.flush(clock())
            self.flush_later(loop, clock)

        self.timer = loop.call_later(max(0.0, self.due - clock()), fire)

    def _refill(self, now: float) -> None:
        if self.refilled is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.refilled) / self.interval)
        self.refilled = now

    def _emit(self, now: float) -> None:
        self.tokens -= 1
        if self.opened:
            line = {"level": "warning", "event": "redis_breaker_open", "redis": self.store,
                    "error": self.error,
                    "effect": "features with store = \"redis\" apply their on_store_error "
                              "policy until Redis answers again"}
        else:
            line = {"level": "info", "event": "redis_breaker_closed", "redis": self.store,
                    "down_seconds": round(now - self.since, 3)}
        if self.unlogged:
            line["transitions_not_logged"] = self.unlogged
        self.unlogged = 0
        try:
            sys.stderr.buffer.write(orjson.dumps({"time": time.time(), **line},
                                                 option=orjson.OPT_APPEND_NEWLINE))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
