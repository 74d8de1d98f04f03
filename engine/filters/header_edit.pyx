"""HeaderEdit: the headers filter's edits (remove, set, add, rename) compiled once per route
and applied to a header list, or to a response head's field lines as they came, in one C pass,
as the filter's hooks themselves: the chain calls them with no Python frame, and a field name
is matched without .lower() or hashing.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memchr

from engine.chain.context cimport Hooks, RequestContext
from engine.wire._common cimport (WRITER_STACK, Writer, same_lower, w_bytes, w_free, w_init,
                                  w_put, w_raw)
from engine.wire.message cimport Response


cdef inline Py_ssize_t _find(tuple names, const char* name, Py_ssize_t n) noexcept:
    # The index in ``names`` (lowercase) of ``name`` (n bytes) in any case, or -1. A route
    # edits a handful of fields, so a scan that first compares lengths beats a hash of a new
    # lowercase copy.
    cdef Py_ssize_t i
    cdef bytes cand
    for i in range(len(names)):
        cand = <bytes>names[i]
        if PyBytes_GET_SIZE(cand) == n and same_lower(
                <const unsigned char*>name, <const unsigned char*>PyBytes_AS_STRING(cand), n):
            return i
    return -1


cdef inline Py_ssize_t _find_name(tuple names, bytes name) noexcept:
    return _find(names, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))


@cython.final
cdef class HeaderEdit(Hooks):
    """Drop the fields named in ``drop``, rename those in ``rename`` ((old, new) pairs, old
    matched in any case), then append ``append`` ((name, value) pairs): a field being set is
    dropped and appended."""

    def __init__(self, drop, rename, append):
        self.drop = tuple([n.lower() for n in drop])
        self.rename_from = tuple([old.lower() for old, _ in rename])
        self.rename_to = tuple([new for _, new in rename])
        self.append = [(n, v) for n, v in append]
        self.append_lines = b"".join([n + b": " + v + b"\r\n" for n, v in self.append])
        # The codec adds this hop's Via after the lines are edited (Stream.write_raw_head),
        # so an edit that names Via must see it: the (name, value) path.
        touched = {*self.drop, *self.rename_from, *[n.lower() for n in self.rename_to],
                   *[n.lower() for n, _ in self.append]}
        self.raw = b"via" not in touched

    cpdef list apply(self, list headers):
        """A new list: ``headers`` edited."""
        cdef list out
        cdef tuple field
        cdef Py_ssize_t i
        if not self.drop and not self.rename_from:
            return headers + self.append
        out = []
        for item in headers:
            field = <tuple?>item
            name = <bytes?>field[0]
            if _find_name(self.drop, name) >= 0:
                continue
            i = _find_name(self.rename_from, name)
            out.append(field if i < 0 else (self.rename_to[i], field[1]))
        out.extend(self.append)
        return out

    cdef object request(self, RequestContext ctx):
        ctx.headers = self.apply(ctx.headers)
        return None

    cdef int response(self, RequestContext ctx, Response resp) except -1:
        resp.headers = self.apply(resp.headers)
        return 0

    cdef bytes response_raw(self, RequestContext ctx, bytes block):
        # The lines kept (renamed ones with the new name and the value as it came), then the
        # appended ones: what apply does to the same fields as pairs.
        cdef const char* p = PyBytes_AS_STRING(block)
        cdef const char* stop = p + PyBytes_GET_SIZE(block)
        cdef const char* eol
        cdef const char* colon
        cdef Py_ssize_t i
        cdef Writer w
        cdef char stack[WRITER_STACK]
        if not self.drop and not self.rename_from:
            return block + self.append_lines
        w_init(&w, stack, WRITER_STACK)
        try:
            while p < stop:
                eol = <const char*>memchr(p, b"\n", stop - p)
                colon = <const char*>memchr(p, b":", eol - p)
                if _find(self.drop, p, colon - p) < 0:
                    i = _find(self.rename_from, p, colon - p)
                    if i < 0:
                        w_raw(&w, p, eol + 1 - p)
                    else:
                        w_put(&w, self.rename_to[i])
                        w_raw(&w, colon, eol + 1 - colon)
                p = eol + 1
            w_put(&w, self.append_lines)
            return w_bytes(&w)
        finally:
            w_free(&w)
