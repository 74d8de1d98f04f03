# Header-only helpers shared by the ext modules (STYLE.md rule 2): inline, no .pyx.

from cpython.unicode cimport PyUnicode_FindChar


cdef inline Py_ssize_t find_char(str s, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end) except -2:
    # Index of the first `ch` in s[start:end], or -1: a C scan, no slice, no method call.
    return PyUnicode_FindChar(s, ch, start, end, 1)
