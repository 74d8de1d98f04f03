"""Response cache storage: the memory tier (one worker's byte-bounded LRU).

A key is a URL (``scheme://host/path?query``); its value is the list of stored responses for
that URL (its Vary variants), newest first, opaque here. An index by key and by surrogate key
(tag) lets a purge by prefix or tag find what to drop; it may name keys the LRU evicted
since, and is pruned of them when it grows past twice the live entries.
"""

try:
    from ext.lru import LruCache
except ImportError as exc:  # no pure-Python fallback (STYLE.md rule 7)
    raise ImportError(f"edgeproxy's Cython extensions are not built ({exc}); run "
                      "`python setup.py build_ext --inplace`") from None

# Bookkeeping bytes counted per stored response on top of its body and headers, so a flood of
# tiny responses still meets the byte bound.
OVERHEAD = 256


class MemoryStore:
    __slots__ = ("lru", "keys", "tags", "prune_at")

    def __init__(self, max_bytes: int):
        self.lru = LruCache(max_bytes)
        self.keys = set()  # every key set since the last prune
        self.tags = {}  # tag -> set of keys
        self.prune_at = 1024

    @property
    def size_bytes(self) -> int:
        return self.lru.size_bytes

    def __len__(self) -> int:
        return len(self.lru)

    def get(self, key: bytes, now: float):
        return self.lru.get(key, now)

    def put(self, key: bytes, variants: list, size: int, now: float, ttl: float,
            tags=()) -> None:
        self.lru.set(key, variants, size, now, ttl)
        self.keys.add(key)
        for tag in tags:
            self.tags.setdefault(tag, set()).add(key)
        if len(self.keys) > self.prune_at:
            self._prune()

    def pop(self, key: bytes) -> bool:
        self.keys.discard(key)
        return self.lru.pop(key) is not None

    def purge_prefix(self, prefix: bytes) -> int:
        return sum([self.pop(k) for k in [k for k in self.keys if k.startswith(prefix)]])

    def purge_tag(self, tag: bytes) -> int:
        return sum([self.pop(k) for k in self.tags.pop(tag, ())])

    def clear(self) -> int:
        n = len(self.lru)
        self.lru.clear()
        self.keys.clear()
        self.tags.clear()
        return n

    def _prune(self) -> None:
        lru = self.lru
        self.keys = {k for k in self.keys if k in lru}
        for tag in list(self.tags):
            live = {k for k in self.tags[tag] if k in lru}
            if live:
                self.tags[tag] = live
            else:
                del self.tags[tag]
        self.prune_at = max(1024, 2 * len(self.keys))
