cimport cython


@cython.final
cdef class _Entry:
    # One cached item, also a node of LruCache's circular doubly linked list.
    cdef object key
    cdef object value
    cdef Py_ssize_t size
    cdef double expires_at      # +inf when the item has no TTL
    cdef _Entry prev            # towards the most recently used end
    cdef _Entry next            # towards the least recently used end


@cython.final
cdef class LruCache:
    cdef readonly Py_ssize_t max_bytes
    cdef readonly Py_ssize_t max_entries
    cdef readonly Py_ssize_t size_bytes
    cdef readonly unsigned long long hits
    cdef readonly unsigned long long misses
    cdef readonly unsigned long long evictions
    cdef dict _map              # key -> _Entry
    cdef _Entry _root           # sentinel: _root.next is MRU, _root.prev is LRU

    cpdef object get(self, object key, double now)
    cpdef set(self, object key, object value, Py_ssize_t size, double now, double ttl=*)
    cpdef object pop(self, object key)
    cpdef clear(self)

    cdef inline void _unlink(self, _Entry e) noexcept
    cdef inline void _push_front(self, _Entry e) noexcept
    cdef int _evict(self) except -1
    cdef int _remove(self, _Entry e) except -1
