cimport cython

from ext.lru cimport LruCache


@cython.final
cdef class _Leaf:
    # One added route as stored at the end of its pattern in a trie.
    cdef object route           # opaque to the router: the engine's compiled route
    cdef frozenset methods      # frozenset[bytes], or None for any method
    cdef tuple names            # capture names in path order (tail last); () when none


@cython.final
cdef class _Node:
    # Static children: one child is kept inline (`key`/`child`, compared in place, no dict and
    # no substring); from the second one on they live in the `static` dict.
    cdef str key                # the only static child's segment, or None
    cdef _Node child            # ... and that child
    cdef dict static            # segment str -> _Node, when there are two or more
    cdef _Node param            # child for `{name}` segments, or None
    cdef tuple leaves           # _Leafs whose pattern ends here (add order), or None
    cdef tuple tails            # _Leafs with a tail segment below this node (add order), or None


@cython.final
cdef class _Tier:
    # The routes of one host tier (one exact host, one wildcard suffix, or any host).
    cdef _Node root
    cdef LruCache cache         # path -> candidates (leaf, captures, leaf, ...); None: no cache


@cython.final
cdef class Router:
    cdef readonly Py_ssize_t cache_size
    cdef readonly unsigned long long cache_hits
    cdef readonly unsigned long long cache_misses
    cdef dict _exact            # host -> _Tier
    cdef dict _wild             # ".example.com" -> _Tier (for "*.example.com")
    cdef _Tier _any             # routes with hosts None / [], or None
    cdef Py_ssize_t _wild_min   # shortest / longest wildcard suffix, to skip hopeless probes
    cdef Py_ssize_t _wild_max
    cdef Py_ssize_t _count
    cpdef tuple match(self, bytes method, str host, str path)
    cdef tuple _candidates(self, _Tier tier, str path)
    cdef tuple _walk_tier(self, _Tier tier, str path)
    cdef int _walk(self, _Node node, str path, Py_ssize_t pos, list vals, list out) except -1
