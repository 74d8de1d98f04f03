cimport cython
from libc.stdint cimport uint32_t, uint64_t


# CRC-32 (IEEE 802.3, zlib's). ``crc`` is the running state: start from CRC32_INIT, feed bytes
# with crc32_update, finish with ``^ CRC32_INIT`` (ngx_crc32_init/update/final).
cdef extern from *:
    """
    #define EDGEPROXY_CRC32_INIT 0xFFFFFFFFu
    """
    const uint32_t CRC32_INIT "EDGEPROXY_CRC32_INIT"

cdef uint32_t crc32_update(uint32_t crc, const unsigned char* data, Py_ssize_t n) noexcept nogil
cdef uint32_t crc32_of(const unsigned char* data, Py_ssize_t n) noexcept nogil


@cython.final
cdef class HashRing:
    # Points are packed as (hash << 32 | node) in one array, so sorting by the packed value
    # orders by hash and breaks hash collisions by the smaller node (deterministic, unlike
    # nginx's qsort). Sorting is deferred to the first lookup after add().
    cdef readonly Py_ssize_t points_per_weight
    cdef readonly Py_ssize_t max_points
    cdef uint64_t* points
    cdef readonly Py_ssize_t n_points
    cdef Py_ssize_t _cap
    cdef bint _dirty
    cdef dict _nodes            # node -> (weight, name)

    # Index of the first point whose hash is >= h, wrapping to 0 past the last; -1 when
    # the ring is empty. Walk on with (i + 1) % n_points; node of point i: <uint32_t>points[i].
    cdef Py_ssize_t first(self, uint32_t h) noexcept
    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef void _remove_points(self, uint32_t node) noexcept
