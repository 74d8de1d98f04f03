"""Consistent hash ring (ext.hashring): ketama, the way nginx's `hash $key consistent` builds it.

A node (a small int, the caller's server index) with weight w owns ``w * points_per_weight``
points (160 by default, nginx's ketama_points). The points of a node come from its ``name``
(nginx: ``host "\\0" port``) and nothing else, so a node keeps its points whatever else is on
the ring: adding a node takes keys only from the arcs its own points land on, and removing
one hands only its keys to their next points.

- point j of a node: ``crc32(name || le32(point j-1))`` with point -1 = 0, i.e. one CRC-32 chain
  seeded by the name (ngx_http_upstream_init_chash).
- ``lookup(key)``: the node of the first point >= ``crc32(key)``, wrapping past the last point
  to the first; -1 when the ring is empty.
- ``nodes_from(key)``: the distinct nodes in ring order from that point: the failover order
  when the first is down.

Two nodes whose points collide on one hash: the smaller node owns it (nginx keeps whichever
its qsort left first). The ring holds at most ``max_points`` points; ``add`` beyond raises.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport qsort

POINTS_PER_WEIGHT = 160  # ketama_points: nginx, libketama, Cache::Memcached::Fast
MAX_NODE = 0x7FFFFFFF

cdef uint32_t _TABLE[256]


cdef void _init_table() noexcept:
    cdef uint32_t c, i, k
    for i in range(256):
        c = i
        for k in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else (c >> 1)
        _TABLE[i] = c


_init_table()


cdef uint32_t crc32_update(uint32_t crc, const unsigned char* data, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        crc = _TABLE[(crc ^ data[i]) & 0xFF] ^ (crc >> 8)
    return crc


cdef uint32_t crc32_of(const unsigned char* data, Py_ssize_t n) noexcept nogil:
    return crc32_update(CRC32_INIT, data, n) ^ CRC32_INIT


def crc32(bytes data not None) -> int:
    """CRC-32 of ``data`` (equal to ``zlib.crc32``): the hash of keys and points."""
    return crc32_of(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef int _cmp_u64(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0]
    cdef uint64_t y = (<const uint64_t*>b)[0]
    return (x > y) - (x < y)


@cython.final
cdef class HashRing:
    """Ketama ring of weighted int nodes; see the module docstring."""

    def __cinit__(self, Py_ssize_t points_per_weight=160,
                  Py_ssize_t max_points=1 << 22):
        if points_per_weight < 1:
            raise ValueError(f"points_per_weight must be >= 1, got {points_per_weight}")
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.points_per_weight = points_per_weight
        self.max_points = max_points
        self.points = NULL
        self.n_points = 0
        self._cap = 0
        self._dirty = False
        self._nodes = {}

    def __dealloc__(self):
        PyMem_Free(self.points)

    def __len__(self):
        return self.n_points

    def __contains__(self, node):
        return node in self._nodes

    def __repr__(self):
        return f"HashRing(nodes={len(self._nodes)}, points={self.n_points})"

    @property
    def nodes(self):
        """{node: weight}."""
        return {node: w for node, (w, _) in self._nodes.items()}

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef uint64_t* p
        if n <= self._cap:
            return 0
        cap = max(n, self._cap * 2, 64)
        p = <uint64_t*>PyMem_Realloc(self.points, cap * sizeof(uint64_t))
        if p is NULL:
            raise MemoryError
        self.points = p
        self._cap = cap
        return 0

    cdef void _remove_points(self, uint32_t node) noexcept:
        # In place and order-preserving, so a sorted ring stays sorted.
        cdef Py_ssize_t i, j = 0
        cdef uint64_t* p = self.points
        for i in range(self.n_points):
            if <uint32_t>p[i] != node:
                p[j] = p[i]
                j += 1
        self.n_points = j

    def add(self, long node, long weight, bytes name=None):
        """Put ``node`` on the ring with ``weight * points_per_weight`` points derived from
        ``name`` (default: ``str(node)``); a node already there is replaced."""
        cdef Py_ssize_t j, count, old = 0
        cdef uint32_t base, h, prev = 0
        cdef unsigned char le[4]
        if not 0 <= node <= MAX_NODE:
            raise ValueError(f"node must be in 0..{MAX_NODE}, got {node}")
        if weight < 1:
            raise ValueError(f"weight must be >= 1, got {weight}")
        if name is None:
            name = str(node).encode()
        count = weight * self.points_per_weight
        if node in self._nodes:
            old = self._nodes[node][0] * self.points_per_weight
        if self.n_points - old + count > self.max_points:
            raise ValueError(f"the ring would hold {self.n_points - old + count} points, "
                             f"more than max_points={self.max_points}")
        if old:
            self._remove_points(<uint32_t>node)
        self._reserve(self.n_points + count)
        base = crc32_update(CRC32_INIT, <const unsigned char*>PyBytes_AS_STRING(name),
                            PyBytes_GET_SIZE(name))
        for j in range(count):
            # The previous point as 4 little-endian bytes, whatever the host's byte order
            # (nginx does the same on big-endian machines).
            le[0] = prev & 0xFF
            le[1] = (prev >> 8) & 0xFF
            le[2] = (prev >> 16) & 0xFF
            le[3] = prev >> 24
            h = crc32_update(base, le, 4) ^ CRC32_INIT
            self.points[self.n_points] = (<uint64_t>h << 32) | <uint32_t>node
            self.n_points += 1
            prev = h
        self._nodes[node] = (weight, name)
        self._dirty = True

    def remove(self, long node):
        """Take ``node`` off the ring; KeyError when it is not on it."""
        del self._nodes[node]
        self._remove_points(<uint32_t>node)

    cdef Py_ssize_t first(self, uint32_t h) noexcept:
        cdef Py_ssize_t lo = 0, hi = self.n_points, mid
        cdef uint64_t target = <uint64_t>h << 32
        if hi == 0:
            return -1
        if self._dirty:
            qsort(self.points, self.n_points, sizeof(uint64_t), _cmp_u64)
            self._dirty = False
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.points[mid] < target:
                lo = mid + 1
            else:
                hi = mid
        return 0 if lo == self.n_points else lo

    def lookup(self, bytes key not None) -> int:
        """The node owning ``key``, or -1 when the ring is empty."""
        cdef Py_ssize_t i = self.first(
            crc32_of(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)))
        return -1 if i < 0 else <long>(<uint32_t>self.points[i])

    def nodes_from(self, bytes key not None) -> list:
        """Every node once, in ring order from the point that owns ``key``."""
        cdef Py_ssize_t i = self.first(
            crc32_of(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)))
        cdef Py_ssize_t k, want = len(self._nodes)
        cdef list out = []
        cdef set seen = set()
        if i < 0:
            return out
        for k in range(self.n_points):
            node = <long>(<uint32_t>self.points[i])
            if node not in seen:
                seen.add(node)
                out.append(node)
                if len(out) == want:
                    break
            i += 1
            if i == self.n_points:
                i = 0
        return out
