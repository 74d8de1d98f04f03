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


@cython.final
@cython.freelist(64)
@cython.no_gc
cdef class _Entry:
    # Not tracked by the cycle collector: a cache of 100k+ entries would lengthen every full
    # collection (tens of ms). The cache breaks the list's cycles itself (clear, __dealloc__);
    # so values must not refer back to their cache.
    pass


@cython.final
@cython.no_gc_clear  # __dealloc__ needs _root to unlink the entries
cdef class LruCache:
    """Byte-bounded LRU cache with per-item TTL; see the module docstring."""

    def __dealloc__(self):
        if self._root is not None:
            self.clear()
            self._root.prev = None
            self._root.next = None

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
        root = _Entry()
        root.prev = root
        root.next = root
        self._root = root

    def __len__(self):
        return len(self._map)

    def __contains__(self, key):
        return key in self._map

    def __repr__(self):
        return (f"LruCache(max_bytes={self.max_bytes}, max_entries={self.max_entries}, "
                f"len={len(self._map)}, size_bytes={self.size_bytes})")

    cdef inline void _unlink(self, _Entry e) noexcept:
        e.prev.next = e.next
        e.next.prev = e.prev
        # Break the links so a dropped entry is freed by refcount, not left to the cycle GC.
        e.prev = None
        e.next = None

    cdef inline void _push_front(self, _Entry e) noexcept:
        cdef _Entry root = self._root
        e.prev = root
        e.next = root.next
        root.next.prev = e
        root.next = e

    cdef int _remove(self, _Entry e) except -1:
        del self._map[e.key]
        self._unlink(e)
        self.size_bytes -= e.size
        return 0

    cdef int _evict(self) except -1:
        # Amortised: each insert evicts at most as many items as it (and earlier inserts) added.
        cdef _Entry lru
        while self.size_bytes > self.max_bytes or (
            self.max_entries > 0 and len(self._map) > self.max_entries
        ):
            lru = self._root.prev
            if lru is self._root:
                break
            self._remove(lru)
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
        if self._root.next is not e:
            self._unlink(e)
            self._push_front(e)
        return e.value

    cpdef set(self, object key, object value, Py_ssize_t size, double now, double ttl=0.0):
        """Store value under key with its size in bytes; ttl <= 0 means no expiry."""
        cdef object found
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
        else:
            e = <_Entry>found
            self._unlink(e)
            self.size_bytes -= e.size
        e.value = value
        e.size = size
        e.expires_at = now + ttl if ttl > 0.0 else INFINITY
        self._push_front(e)
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
        cdef _Entry root = self._root
        cdef _Entry e = root.next
        cdef _Entry nxt
        while e is not root:
            nxt = e.next
            e.prev = None
            e.next = None
            e = nxt
        root.prev = root
        root.next = root
        self._map.clear()
        self.size_bytes = 0
        return None
