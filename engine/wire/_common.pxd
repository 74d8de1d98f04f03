# Header-only helpers shared by the data plane's Cython modules (STYLE.md rule 2): inline, no
# .pyx. cimport them as `from engine.wire._common cimport ...`.

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t
from libc.string cimport memcpy
from libc.time cimport timespec

cdef extern from "<time.h>" nogil:
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC


cdef inline double monotonic() noexcept nogil:
    """Seconds on CLOCK_MONOTONIC (time.perf_counter's clock on Linux), without a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9

cdef extern from "Python.h":
    # Borrowed-reference views, so walking a list of bytes costs no reference counting.
    PyObject* _list_item "PyList_GET_ITEM" (list items, Py_ssize_t i)
    Py_ssize_t _list_size "PyList_GET_SIZE" (list items)
    bint _is_bytes "PyBytes_CheckExact" (PyObject* o)
    Py_ssize_t _bytes_size "PyBytes_GET_SIZE" (PyObject* o)
    char* _bytes_data "PyBytes_AS_STRING" (PyObject* o)


cdef inline bytes join_bytes(list parts):
    # b"".join(parts) for a list of bytes (a message head): one size pass, one copy pass.
    # Anything else in the list (a filter's bytearray, ...) goes to b"".join.
    cdef Py_ssize_t i, size, total = 0
    cdef Py_ssize_t n = _list_size(parts)
    cdef PyObject* item
    cdef char* out
    for i in range(n):
        item = _list_item(parts, i)
        if not _is_bytes(item):
            return b"".join(parts)
        total += _bytes_size(item)
    result = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(result)
    for i in range(n):
        item = _list_item(parts, i)
        size = _bytes_size(item)
        memcpy(out, _bytes_data(item), size)
        out += size
    return result


# -- Writer: a message head assembled in one buffer (stack space first), then one bytes object.
#
#     cdef Writer w
#     cdef char stack[WRITER_STACK]
#     w_init(&w, stack, WRITER_STACK)
#     try:
#         w_put(&w, ...)
#         return w_bytes(&w)
#     finally:
#         w_free(&w)

cdef enum:
    WRITER_STACK = 2048     # bytes of stack a head starts in (most heads fit)


cdef struct Writer:
    char* buf               # the caller's stack space until the first grow, then heap
    Py_ssize_t len
    Py_ssize_t cap
    bint heap


cdef inline void w_init(Writer* w, char* stack, Py_ssize_t size) noexcept:
    w.buf = stack
    w.len = 0
    w.cap = size
    w.heap = False


cdef inline int w_grow(Writer* w, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = max(w.cap * 2, w.len + need)
    cdef char* buf
    if w.heap:
        buf = <char*>PyMem_Realloc(w.buf, cap)
    else:
        buf = <char*>PyMem_Malloc(cap)
        if buf is not NULL:
            memcpy(buf, w.buf, w.len)
    if buf is NULL:
        raise MemoryError()
    w.buf = buf
    w.cap = cap
    w.heap = True
    return 0


cdef inline int w_raw(Writer* w, const char* data, Py_ssize_t n) except -1:
    if w.len + n > w.cap:
        w_grow(w, n)
    memcpy(w.buf + w.len, data, n)
    w.len += n
    return 0


cdef inline int w_put(Writer* w, object data) except -1:
    # bytes, or any bytes-like object (what b"".join takes); TypeError for anything else.
    if PyBytes_CheckExact(data):
        return w_raw(w, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    return w_put_buffer(w, data)


cdef inline int w_put_buffer(Writer* w, object data) except -1:
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        w_raw(w, <const char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef inline int w_field(Writer* w, object name, object value) except -1:
    # One header field line: "name: value" CRLF.
    cdef Py_ssize_t n, m
    cdef char* p
    if PyBytes_CheckExact(name) and PyBytes_CheckExact(value):
        # (the usual case, in one capacity check)
        n = PyBytes_GET_SIZE(name)
        m = PyBytes_GET_SIZE(value)
        if w.len + n + m + 4 > w.cap:
            w_grow(w, n + m + 4)
        p = w.buf + w.len
        memcpy(p, PyBytes_AS_STRING(name), n)
        p[n] = b":"
        p[n + 1] = b" "
        memcpy(p + n + 2, PyBytes_AS_STRING(value), m)
        p[n + 2 + m] = b"\r"
        p[n + 3 + m] = b"\n"
        w.len += n + m + 4
        return 0
    w_put(w, name)
    w_raw(w, ": ", 2)
    w_put(w, value)
    w_raw(w, "\r\n", 2)
    return 0


cdef inline bytes w_bytes(Writer* w):
    return PyBytes_FromStringAndSize(w.buf, w.len)


cdef inline void w_free(Writer* w) noexcept:
    if w.heap:
        PyMem_Free(w.buf)
        w.heap = False


cdef inline list kind_table(dict kinds):
    # A lowercase name -> kind table as a list indexed by name length, each slot a flat tuple
    # (name, kind, name, kind, ...), for header_kind.
    cdef Py_ssize_t longest = 0
    for name in kinds:
        longest = max(longest, len(name))
    cdef list table = [()] * (longest + 1)
    for name, kind in kinds.items():
        table[len(name)] += (name, kind)
    return table


cdef inline bint is_tchar(unsigned char c) noexcept:
    # RFC 9110 §5.6.2 tchar: DIGIT, ALPHA and "!#$%&'*+-.^_`|~", as one bit per ASCII byte.
    if c < 64:
        return (<unsigned long long>0x03ff6cfa00000000 >> c) & 1
    if c < 128:
        return (<unsigned long long>0x57ffffffc7fffffe >> (c - 64)) & 1
    return False


cdef inline bint is_field_byte(unsigned char c) noexcept:
    # A field value's byte short of obs-text: VCHAR, SP or HTAB (RFC 9110 §5.5). What a head
    # taken without llhttp may hold (obs-text and control bytes are left to llhttp).
    return c == 9 or 32 <= c <= 126


cdef inline bint field_bytes(const char* p, const char* end) noexcept:
    # Whether every byte from ``p`` to ``end`` is_field_byte, looked at eight at a time: only
    # a word with a byte under 0x20 (HTAB is one) or over 0x7E is looked at byte by byte.
    # (x - 0x20 per byte) & ~x has a byte's top bit set exactly when some byte is under
    # 0x20; (x + 1 per byte) | x, when some byte is 0x7F or more (a carry comes only from
    # 0xFF, itself one).
    cdef uint64_t x
    cdef int i
    while end - p >= 8:
        memcpy(&x, p, 8)
        if (((x - <uint64_t>0x2020202020202020) & ~x)
                | ((x + <uint64_t>0x0101010101010101) | x)) & <uint64_t>0x8080808080808080:
            for i in range(8):
                if not is_field_byte(<unsigned char>p[i]):
                    return False
        p += 8
    while p < end:
        if not is_field_byte(<unsigned char>p[0]):
            return False
        p += 1
    return True


cdef inline bint same_lower(const unsigned char* s, const unsigned char* lower,
                            Py_ssize_t n) noexcept:
    # s[:n].lower() == lower[:n], ASCII case only, as bytes.lower() does (field names are
    # tokens, RFC 9110 §5.1).
    cdef Py_ssize_t j
    cdef unsigned char c
    for j in range(n):
        c = s[j]
        if 65 <= c <= 90:  # A-Z
            c += 32
        if c != lower[j]:
            return False
    return True


cdef inline bint is_lower(bytes value, const char* lower, Py_ssize_t n) noexcept:
    # value.lower() == lower (n bytes): "Chunked" is "chunked", say.
    return (value is not None and PyBytes_GET_SIZE(value) == n
            and same_lower(<const unsigned char*>PyBytes_AS_STRING(value),
                           <const unsigned char*>lower, n))


cdef inline int header_kind(list table, bytes name) except -1:
    # The kind of a header field name in a kind_table, 0 when it has none: with no .lower()
    # and no hashing.
    return kind_at(table, <const unsigned char*>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))


cdef inline int kind_at(list table, const unsigned char* s, Py_ssize_t n) except -1:
    # header_kind of the name at ``s`` (``n`` bytes), before any bytes object is made of it.
    cdef Py_ssize_t i
    cdef tuple cands
    if n >= len(table):
        return 0
    cands = <tuple>_list_item(table, n)
    for i in range(0, len(cands), 2):
        if same_lower(s, <const unsigned char*>PyBytes_AS_STRING(<bytes>cands[i]), n):
            return cands[i + 1]
    return 0
