"""HTTP/1.1 helpers called per message by the codec (engine/http) and the upstream client
(engine/upstream): chunk framing and Connection-named hop-by-hop fields."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromFormat, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE

from engine.wire._common cimport is_lower, same_lower

from engine.wire.framing import connection_tokens


cdef bytes chunk(bytes data):
    # One chunk of a chunked body (RFC 9112 §7.1).
    return b"".join((PyBytes_FromFormat("%x\r\n", <int>PyBytes_GET_SIZE(data)), data, b"\r\n"))


# Connection field value -> its tokens (connection_tokens), as most connections repeat one
# value ("keep-alive", "close"). Bounded: cleared when full; long values are not remembered.
cdef dict _tokens_cache = {}
cdef Py_ssize_t _TOKENS_MAX = 256
cdef Py_ssize_t _TOKENS_VALUE_MAX = 128


cdef tuple tokens(list values):
    cdef tuple found
    if len(values) != 1:
        return tuple(connection_tokens(values))
    value = values[0]
    found = _tokens_cache.get(value)
    if found is None:
        found = tuple(connection_tokens(values))
        if len(value) <= _TOKENS_VALUE_MAX:
            if len(_tokens_cache) >= _TOKENS_MAX:
                _tokens_cache.clear()
            _tokens_cache[value] = found
    return found


cdef bint only_keep_alive(list values) except -1:
    # The usual ``Connection: keep-alive`` of a message.
    cdef bytes value
    if PyList_GET_SIZE(values) != 1:
        return False
    value = values[0]
    return is_lower(value, "keep-alive", 10)


cdef list drop_named(list headers, tuple named, bint flat):
    # ``headers`` without the fields whose (lowercased) name is in ``named``; the same list
    # when there are none. ``headers`` holds (name, value) pairs, or is flat when ``flat``.
    cdef list out = None
    cdef Py_ssize_t i, n
    cdef Py_ssize_t step = 2 if flat else 1
    cdef bytes token
    for i in range(0, len(headers), step):
        name = headers[i] if flat else headers[i][0]
        n = len(name)
        for token in named:
            if PyBytes_GET_SIZE(token) != n:
                continue
            if isinstance(name, bytes):
                if same_lower(<const unsigned char*>PyBytes_AS_STRING(name),
                              <const unsigned char*>PyBytes_AS_STRING(token), n):
                    break
            elif name.lower() == token:
                break
        else:
            if out is not None:
                out += headers[i:i + step]
            continue
        if out is None:
            out = headers[:i]
    return headers if out is None else out
