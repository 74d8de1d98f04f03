"""Rate-limit state in worker memory (``store = "memory"``), the twin of the Redis checks in
engine.stores.ratelimit: calendar quotas (its CALENDAR check) and connection slots (SLOT);
the limits themselves are ext.ratelimit's tables. Also the load monitor behind adaptive limits,
per worker whatever the store.

Every method takes ``now`` (STYLE.md rule 5): tests drive them with explicit numbers.
"""

from collections import OrderedDict

from engine.stores.ratelimit import period_bounds

DAY, MONTH = 1, 2


class QuotaTable:
    """Counts per key for the current UTC day and month, LRU-bounded to ``max_keys`` (an
    evicted key starts again from zero: the bound wins over exactness for the idlest key)."""

    __slots__ = ("max_keys", "_map", "evictions")

    def __init__(self, max_keys: int):
        self.max_keys = max_keys
        self._map = OrderedDict()  # key -> [day start, day count, month start, month count]
        self.evictions = 0

    def peek(self, key: str, period: int, now: float) -> tuple[int, float]:
        """(count so far, seconds until the period resets) for wall time ``now``."""
        start, end = period_bounds(now, period)
        e = self._map.get(key)
        i = 0 if period == DAY else 2
        count = e[i + 1] if e is not None and e[i] == start else 0
        return count, end - now

    def add(self, key: str, cost: int, now: float) -> None:
        """Count ``cost`` in both periods."""
        e = self._map.get(key)
        if e is None:
            if len(self._map) >= self.max_keys:
                self._map.popitem(last=False)
                self.evictions += 1
            e = self._map[key] = [0.0, 0, 0.0, 0]
        else:
            self._map.move_to_end(key)
        for i, period in ((0, DAY), (2, MONTH)):
            start = period_bounds(now, period)[0]
            if e[i] != start:
                e[i], e[i + 1] = start, 0
            e[i + 1] += cost

    def __len__(self) -> int:
        return len(self._map)


class SlotTable:
    """Requests in flight per key (nginx limit_conn counts requests being processed, not
    idle connections). A key is dropped when its count returns to zero, so the table never
    holds more keys than there are requests in flight."""

    __slots__ = ("_map",)

    def __init__(self):
        self._map = {}

    def count(self, key: str) -> int:
        return self._map.get(key, 0)

    def acquire(self, key: str) -> None:
        self._map[key] = self._map.get(key, 0) + 1

    def release(self, key: str) -> None:
        n = self._map.get(key, 0) - 1
        if n > 0:
            self._map[key] = n
        else:
            self._map.pop(key, None)

    def __len__(self) -> int:
        return len(self._map)


class LoadMonitor:
    """The worker's load level, sampled on every worker sweep.

    Overloaded (event-loop lag over ``lag`` or requests in flight over ``in_flight``): one
    step up per sample, to at most the last step. Calm (both at or under ``recover_ratio`` of
    their thresholds) for ``recover_after`` seconds: one step back down, and the calm period
    starts again (hysteresis: the band between calm and overloaded holds the level, so a
    load near a threshold does not flap). ``divisor`` divides every limit of the route.
    """

    __slots__ = ("cfg", "level", "divisor", "calm_since", "last_sweep", "last_lag",
                 "last_in_flight")

    def __init__(self, cfg):
        self.cfg = cfg
        self.level = 0
        self.divisor = 1
        self.calm_since = None
        self.last_sweep = None
        self.last_lag = 0.0
        self.last_in_flight = 0

    def sample(self, worker, now: float) -> None:
        """shared.periodic hook: the sweep is scheduled ``tick_interval`` after the previous
        one, so any delay beyond that is time the loop was busy elsewhere (its lag)."""
        lag = 0.0
        if self.last_sweep is not None:
            lag = max(0.0, now - self.last_sweep - worker.tick_interval)
        self.last_sweep = now
        in_flight = 0
        for conn in worker.conns:
            if getattr(conn, "active", None) is not None:
                in_flight += 1
        self.observe(lag, in_flight, now)

    def observe(self, lag: float, in_flight: int, now: float) -> int:
        cfg = self.cfg
        self.last_lag, self.last_in_flight = lag, in_flight
        over = lag > cfg.lag or (cfg.in_flight > 0 and in_flight > cfg.in_flight)
        calm = lag <= cfg.lag * cfg.recover_ratio and (
            cfg.in_flight == 0 or in_flight <= cfg.in_flight * cfg.recover_ratio)
        if over:
            self.level = min(self.level + 1, len(cfg.steps))
            self.calm_since = None
        elif calm and self.level:
            if self.calm_since is None:
                self.calm_since = now
            elif now - self.calm_since >= cfg.recover_after:
                self.level -= 1
                self.calm_since = now
        else:
            self.calm_since = None
        self.divisor = cfg.steps[self.level - 1] if self.level else 1
        return self.level
