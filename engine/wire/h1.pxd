# HTTP/1.1 helpers the codec and the upstream client both call at the C level
# (engine/wire/h1.pyx).

# What the proxy does with a field of an upstream's response (response_kind).
cdef enum:
    R_RELAY = 0                 # relayed as it came
    R_CONTENT_LENGTH = 1        # re-framed by the proxy
    R_TRANSFER_ENCODING = 2
    R_CONNECTION = 3            # hop-by-hop, and names more of them
    R_DROP = 4                  # hop-by-hop, or replaced by the proxy's own
    R_VIA = 5                   # combined with this hop's entry (RFC 9110 §7.6.3)

cdef bytes chunk(bytes data)
cdef tuple tokens(list values)
cdef bint only_keep_alive(list values) except -1
cdef list drop_named(list headers, tuple named, bint flat)
cdef int response_kind(const char* name, Py_ssize_t n) except -1
cdef Py_ssize_t split_fields(const char* p, const char* stop, bint head, list fields,
                             bint pairs=*) except -2
cdef list fields_of(bytes block, bint pairs=*)
