# Not final: engine.errors.StreamResponse extends it.
cdef class Response:
    cdef public int status
    cdef public object headers     # [(name, value)] bytes pairs
    cdef public object body        # bytes for a local answer, None for an upstream's
