"""Reference rate limiters: plain Python, same API as ext/ratelimit.pyi.

Each key's state is a small list in an OrderedDict kept in recency order (oldest first), so the
LRU bound behaves like the Cython table. The arithmetic is written in the same order as the
Cython code so both give bit-identical floats.
"""

import math
from collections import OrderedDict

REJECT, ALLOW, DELAY = 0, 1, 2
MIN_WAIT = 1e-9
INF = math.inf


def _units(x):
    return math.floor(x) if x > 0.0 else 0


def _at_least(x, lo):
    return x if x > lo else lo


class _Limiter:
    def _table(self, max_keys):
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.max_keys = max_keys
        self.evictions = 0
        self._keys = OrderedDict()  # key -> state list; last = most recently checked

    def __len__(self):
        return len(self._keys)

    def __contains__(self, key):
        return key in self._keys

    def check(self, key, now, cost=1):
        if not isinstance(key, str):
            raise TypeError("key must be a str")
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost}")
        now = float(now)
        state = self._keys.get(key)
        if state is not None:
            self._keys.move_to_end(key)
            return self._step(state, now, cost)
        state = self._fresh()
        result = self._step(state, now, cost)
        if result[0] != REJECT:
            self._keys[key] = state
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
                self.evictions += 1
        return result

    def peek(self, key, now):
        if not isinstance(key, str):
            raise TypeError("key must be a str")
        state = self._keys.get(key)
        return self._view(list(state) if state is not None else self._fresh(), float(now))

    def remove(self, key):
        return self._keys.pop(key, None) is not None


def _window_args(limit, window):
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if not 0.0 < window < INF:
        raise ValueError(f"window must be a finite number > 0, got {window}")


def _rate_arg(rate):
    if not 0.0 < rate < INF:
        raise ValueError(f"rate must be a finite number > 0, got {rate}")


class FixedWindow(_Limiter):
    # state: [window index, count]
    def __init__(self, limit, window, max_keys=100_000):
        _window_args(limit, window)
        self.limit, self.window = limit, float(window)
        self._table(max_keys)

    def _fresh(self):
        return [-INF, 0]

    def _roll(self, state, now):
        idx = math.floor(now / self.window)
        if idx != state[0]:
            state[0], state[1] = idx, 0
        return _at_least(self.window - (now - idx * self.window), 0.0)

    def _step(self, state, now, cost):
        left = self._roll(state, now)
        if state[1] + cost > self.limit:
            wait = INF if cost > self.limit else _at_least(left, MIN_WAIT)
            return (REJECT, self.limit - state[1], left, wait)
        state[1] += cost
        return (ALLOW, self.limit - state[1], left, 0.0)

    def _view(self, state, now):
        left = self._roll(state, now)
        return (self.limit - state[1], left)


class SlidingLog(_Limiter):
    # state: a list of admitted timestamps, oldest first (the reference does not bound it by
    # capacity; admission keeps it <= limit anyway)
    def __init__(self, limit, window, max_keys=100_000):
        _window_args(limit, window)
        self.limit, self.window = limit, float(window)
        self._table(max_keys)

    def _fresh(self):
        return []

    def _live(self, log, now):
        cutoff = now - self.window
        return [t for t in log if not t <= cutoff]

    def _reset(self, live, now):
        return _at_least(live[-1] + self.window - now, 0.0) if live else 0.0

    def _step(self, log, now, cost):
        log[:] = self._live(log, now)
        if len(log) + cost > self.limit:
            if cost > self.limit:
                wait = INF
            else:
                oldest_to_go = log[len(log) + cost - self.limit - 1]
                wait = _at_least(oldest_to_go + self.window - now, MIN_WAIT)
            return (REJECT, self.limit - len(log), self._reset(log, now), wait)
        log.extend([now] * cost)
        return (ALLOW, self.limit - len(log), self._reset(log, now), 0.0)

    def _view(self, log, now):
        live = self._live(log, now)
        return (self.limit - len(live), self._reset(live, now))


class SlidingCounter(_Limiter):
    # state: [window index, prev count, curr count]
    def __init__(self, limit, window, max_keys=100_000):
        _window_args(limit, window)
        self.limit, self.window = limit, float(window)
        self._table(max_keys)

    def _fresh(self):
        return [-INF, 0, 0]

    def _roll(self, state, now):
        idx = math.floor(now / self.window)
        if idx != state[0]:
            state[1] = state[2] if idx == state[0] + 1.0 else 0
            state[0], state[2] = idx, 0
        return now - idx * self.window

    def _estimate(self, prev, curr, elapsed):
        w = self.window
        return prev * (w - elapsed) / w + curr

    def _reset(self, prev, curr, elapsed):
        if curr > 0:
            return _at_least(2.0 * self.window - elapsed, 0.0)
        if prev > 0:
            return _at_least(self.window - elapsed, 0.0)
        return 0.0

    def _step(self, state, now, cost):
        elapsed = self._roll(state, now)
        _, prev, curr = state
        w, limit = self.window, self.limit
        room = limit - self._estimate(prev, curr, elapsed)
        if cost > room:
            if cost > limit:
                wait = INF
            elif curr + cost <= limit:  # later in this window, as prev's weight shrinks
                wait = _at_least((w - elapsed) - (limit - cost - curr) * w / prev, MIN_WAIT)
            else:  # in the next window, as this window's count fades
                wait = _at_least((w - elapsed) + (w - (limit - cost) * w / curr), MIN_WAIT)
            return (REJECT, _units(room), self._reset(prev, curr, elapsed), wait)
        state[2] = curr = curr + cost
        remaining = _units(limit - self._estimate(prev, curr, elapsed))
        return (ALLOW, remaining, self._reset(prev, curr, elapsed), 0.0)

    def _view(self, state, now):
        elapsed = self._roll(state, now)
        _, prev, curr = state
        return (_units(self.limit - self._estimate(prev, curr, elapsed)),
                self._reset(prev, curr, elapsed))


class TokenBucket(_Limiter):
    # state: [tokens, last]
    def __init__(self, rate, burst, delay=0, max_keys=100_000):
        _rate_arg(rate)
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.rate, self.burst, self.delay = float(rate), burst, delay
        self.limit = burst + delay
        self.window = self.limit / self.rate
        self._table(max_keys)

    def _fresh(self):
        return [float(self.burst), -INF]

    def _tokens(self, state, now):
        elapsed = max(now - state[1], 0.0)
        return min(state[0] + self.rate * elapsed, float(self.burst))

    def _step(self, state, now, cost):
        tokens = self._tokens(state, now)
        avail = tokens + self.delay
        if cost > avail:
            wait = INF if cost > self.limit else _at_least((cost - avail) / self.rate, MIN_WAIT)
            return (REJECT, _units(avail), (self.burst - tokens) / self.rate, wait)
        tokens = tokens - cost
        state[:] = [tokens, now]
        remaining, reset = _units(tokens + self.delay), (self.burst - tokens) / self.rate
        if tokens >= 0.0:
            return (ALLOW, remaining, reset, 0.0)
        return (DELAY, remaining, reset, -tokens / self.rate)

    def _view(self, state, now):
        tokens = self._tokens(state, now)
        return (_units(tokens + self.delay), (self.burst - tokens) / self.rate)


class LeakyBucket(_Limiter):
    # state: [excess, last]; nginx limit_req, see ext/ratelimit.pyx
    def __init__(self, rate, burst, nodelay=False, max_keys=100_000):
        _rate_arg(rate)
        if burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst}")
        self.rate, self.burst, self.nodelay = float(rate), burst, bool(nodelay)
        self.limit = burst + 1
        self.window = self.limit / self.rate
        self._table(max_keys)

    def _fresh(self):
        return [-1.0, -INF]

    def _level(self, state, now):
        elapsed = max(now - state[1], 0.0)
        return max(state[0] - self.rate * elapsed, -1.0)

    def _step(self, state, now, cost):
        level = self._level(state, now)
        room = self.burst - level
        if cost > room:
            wait = INF if cost > self.limit else _at_least((cost - room) / self.rate, MIN_WAIT)
            return (REJECT, _units(room), (level + 1.0) / self.rate, wait)
        level = level + cost
        state[:] = [level, now]
        remaining, reset = _units(self.burst - level), (level + 1.0) / self.rate
        if self.nodelay or level <= 0.0:
            return (ALLOW, remaining, reset, 0.0)
        return (DELAY, remaining, reset, level / self.rate)

    def _view(self, state, now):
        level = self._level(state, now)
        return (_units(self.burst - level), (level + 1.0) / self.rate)
