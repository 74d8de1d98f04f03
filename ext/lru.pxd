cimport cython

from ext._lrulist cimport LruLink


@cython.final
cdef class _Entry:
    # One cached item, linked into LruCache's recency list.
    cdef object key
    cdef object value
    cdef Py_ssize_t size
    cdef double expires_at      # +inf when the item has no TTL
    cdef LruLink link


@cython.final
cdef class LruCache:
    cdef readonly Py_ssize_t max_bytes
    cdef readonly Py_ssize_t max_entries
    cdef readonly Py_ssize_t size_bytes
    cdef readonly unsigned long long hits
    cdef readonly unsigned long long misses
    cdef readonly unsigned long long evictions
    cdef dict _map              # key -> _Entry, the entries' only owner
    cdef LruLink _root          # the same entries, most recently used first (ext/_lrulist.pxd)

    cpdef object get(self, object key, double now)
    cpdef set(self, object key, object value, Py_ssize_t size, double now, double ttl=*)
    cpdef object pop(self, object key)
    cpdef clear(self)

    cdef int _evict(self) except -1
    cdef int _remove(self, _Entry e) except -1
