"""HeaderEdit: the headers filter's edits (remove, set, add, rename) compiled once per route
and applied to a header list in one C pass, as the filter's hooks themselves: the chain calls
them with no Python frame, and a field name is matched without .lower() or hashing.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from engine.chain.context cimport Hooks, RequestContext
from engine.wire._common cimport is_lower
from engine.wire.message cimport Response


cdef inline Py_ssize_t _find(tuple names, bytes name) noexcept:
    # The index in ``names`` (lowercase) of ``name`` in any case, or -1. A route edits a
    # handful of fields, so a scan that first compares lengths beats a hash of a new lowercase
    # copy.
    cdef Py_ssize_t i
    cdef bytes cand
    for i in range(len(names)):
        cand = <bytes>names[i]
        if is_lower(name, PyBytes_AS_STRING(cand), PyBytes_GET_SIZE(cand)):
            return i
    return -1


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
            if _find(self.drop, name) >= 0:
                continue
            i = _find(self.rename_from, name)
            out.append(field if i < 0 else (self.rename_to[i], field[1]))
        out.extend(self.append)
        return out

    cdef object request(self, RequestContext ctx):
        ctx.headers = self.apply(ctx.headers)
        return None

    cdef int response(self, RequestContext ctx, Response resp) except -1:
        resp.headers = self.apply(resp.headers)
        return 0
