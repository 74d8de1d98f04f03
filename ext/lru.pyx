"""Byte-bounded LRU cache with per-item TTL (ext.lru).

`LruCache(max_bytes, max_entries=0)` holds at most `max_bytes` of caller-declared item sizes and,
when `max_entries` > 0, at most that many items; an insert that exceeds either cap evicts least
recently used items until both hold. Time is an argument: `now` is monotonic seconds (float), read
once per request by the caller, never by the cache.

- `get(key, now)` returns the value and marks it most recently used; an item whose
  `expires_at <= now` is removed and counts as a miss. Returns None on a miss.
- `set(key, value, size, now, ttl=0.0)`: ttl <= 0 means no expiry. Replacing a key updates the
  byte accounting. An item larger than `max_bytes` is not stored (and the old value for that key,
  if any, is dropped).
- `pop(key)` and `key in cache` ignore TTL (they take no `now`); `clear()` empties the cache but
  keeps the lifetime counters.
- `hits` / `misses` count `get` calls; `evictions` counts items removed to make room (not expired
  items, replacements or pops).

Cython siblings `from ext.lru cimport LruCache` and call `get`/`set`/`pop`/`clear` as C calls.
"""

cimport cython
from libc.math cimport INFINITY

from ext._lrulist cimport (
    LruLink, link_offset, lru_init, lru_oldest, lru_push_front, lru_touch, lru_unlink, node_at,
)


@cython.final
@cython.freelist(64)
@cython.no_gc
cdef class _Entry:
    # Not tracked by the cycle collector: a cache of 100k+ entries would lengthen every full
    # collection (tens of ms). The recency list holds no references (ext/_lrulist.pxd), so
    # entries form no cycle of their own; values must still not refer back to their cache.
    pass


cdef Py_ssize_t _LINK_OFFSET


cdef Py_ssize_t _measure_link_offset() except -1:
    cdef _Entry probe = _Entry()
    return link_offset(probe, &probe.link)


_LINK_OFFSET = _measure_link_offset()


cdef inline _Entry _entry_at(LruLink* link):
    return <_Entry>node_at(link, _LINK_OFFSET)


@cython.final
@cython.no_gc_clear  # tp_clear would free the entries while _root still points at them
cdef class LruCache:
    """Byte-bounded LRU cache with per-item TTL; see the module docstring."""

    def __cinit__(self, Py_ssize_t max_bytes, Py_ssize_t max_entries=0):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0 (0 = no count limit), got {max_entries}")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._map = {}
        lru_init(&self._root)

    def __len__(self):
        return len(self._map)

    def __contains__(self, key):
        return key in self._map

    def __repr__(self):
        return (f"LruCache(max_bytes={self.max_bytes}, max_entries={self.max_entries}, "
                f"len={len(self._map)}, size_bytes={self.size_bytes})")

    cdef int _remove(self, _Entry e) except -1:
        # Every caller holds its own reference to e, so it outlives the dict's until unlinked.
        del self._map[e.key]
        lru_unlink(&e.link)
        self.size_bytes -= e.size
        return 0

    cdef int _evict(self) except -1:
        # Amortised: each insert evicts at most as many items as it (and earlier inserts) added.
        cdef LruLink* oldest
        while self.size_bytes > self.max_bytes or (
            self.max_entries > 0 and len(self._map) > self.max_entries
        ):
            oldest = lru_oldest(&self._root)
            if oldest is NULL:
                break
            self._remove(_entry_at(oldest))
            self.evictions += 1
        return 0

    cpdef object get(self, object key, double now):
        """Return the value for key and mark it most recently used, or None on a miss."""
        cdef object found = self._map.get(key)
        cdef _Entry e
        if found is None:
            self.misses += 1
            return None
        e = <_Entry>found
        if e.expires_at <= now:
            self._remove(e)
            self.misses += 1
            return None
        self.hits += 1
        lru_touch(&self._root, &e.link)
        return e.value

    cpdef set(self, object key, object value, Py_ssize_t size, double now, double ttl=0.0):
        """Store value under key with its size in bytes; ttl <= 0 means no expiry."""
        cdef object found
        cdef object old = None
        cdef _Entry e
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        found = self._map.get(key)
        if size > self.max_bytes:
            if found is not None:
                self._remove(<_Entry>found)
            return None
        if found is None:
            e = _Entry()
            e.key = key
            self._map[key] = e
            lru_push_front(&self._root, &e.link)
        else:
            e = <_Entry>found
            lru_touch(&self._root, &e.link)
            self.size_bytes -= e.size
            # Released on return, when the cache is whole again: its __del__ may call back in.
            old = e.value
        e.value = value
        e.size = size
        e.expires_at = now + ttl if ttl > 0.0 else INFINITY
        self.size_bytes += size
        self._evict()
        return None

    cpdef object pop(self, object key):
        """Remove key and return its value (expired or not), or None if absent."""
        cdef object found = self._map.get(key)
        if found is None:
            return None
        self._remove(<_Entry>found)
        return (<_Entry>found).value

    cpdef clear(self):
        """Drop every item; the hits/misses/evictions counters are kept."""
        lru_init(&self._root)
        self._map.clear()
        self.size_bytes = 0
        return None
