"""Reference LruCache: an OrderedDict in recency order (oldest first). Same API as ext/lru.pyi."""

import math
from collections import OrderedDict


class LruCache:
    def __init__(self, max_bytes, max_entries=0):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0 (0 = no count limit), got {max_entries}")
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._items = OrderedDict()  # key -> (value, size, expires_at); last = most recent
        self._size_bytes = 0  # always sum(size for _, size, _ in self._items.values())
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    max_bytes = property(lambda self: self._max_bytes)
    max_entries = property(lambda self: self._max_entries)
    hits = property(lambda self: self._hits)
    misses = property(lambda self: self._misses)
    evictions = property(lambda self: self._evictions)

    size_bytes = property(lambda self: self._size_bytes)

    def __len__(self):
        return len(self._items)

    def __contains__(self, key):
        return key in self._items

    def get(self, key, now):
        if key not in self._items:
            self._misses += 1
            return None
        value, _, expires_at = self._items[key]
        if expires_at <= now:
            self._drop(key)
            self._misses += 1
            return None
        self._items.move_to_end(key)
        self._hits += 1
        return value

    def set(self, key, value, size, now, ttl=0.0):
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if key in self._items:
            self._drop(key)
        if size > self._max_bytes:
            return
        expires_at = now + ttl if ttl > 0 else math.inf
        self._items[key] = (value, size, expires_at)
        self._size_bytes += size
        while self._size_bytes > self._max_bytes or (
            self._max_entries and len(self._items) > self._max_entries
        ):
            oldest = next(iter(self._items))
            self._drop(oldest)
            self._evictions += 1

    def pop(self, key):
        if key not in self._items:
            return None
        return self._drop(key)

    def clear(self):
        self._items.clear()
        self._size_bytes = 0

    def _drop(self, key):
        value, size, _ = self._items.pop(key)
        self._size_bytes -= size
        return value
