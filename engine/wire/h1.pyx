"""HTTP/1.1 helpers called per message by the codec (engine/http) and the upstream client
(engine/upstream): chunk framing, Connection-named hop-by-hop fields, what becomes of a
response's fields, and field lines split into names and values."""

from cpython.bytes cimport (
    PyBytes_AS_STRING, PyBytes_FromFormat, PyBytes_FromStringAndSize, PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_GET_SIZE
from libc.string cimport memchr, memcmp

from engine.wire._common cimport is_lower, kind_at, kind_table, same_lower

from engine.wire.framing import HOP_BY_HOP, connection_tokens


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


RESPONSE_KINDS = {
    b"content-length": R_CONTENT_LENGTH,
    b"transfer-encoding": R_TRANSFER_ENCODING,
    b"connection": R_CONNECTION,
    b"x-request-id": R_DROP,  # replaced by ours, so the client sees one id
    b"via": R_VIA,  # combined, for the sink to append to (RFC 9110 §7.6.3)
}
for _name in HOP_BY_HOP:
    RESPONSE_KINDS.setdefault(_name, R_DROP)

# RESPONSE_KINDS by name length, looked up without .lower(); a bit per length that has any
# (most names a response carries have none: Date, Server, ETag, Last-Modified, ...).
cdef list _RESPONSE_KINDS = kind_table(RESPONSE_KINDS)
cdef unsigned long long _KIND_LENGTHS = 0
for _name in RESPONSE_KINDS:
    _KIND_LENGTHS |= 1ULL << len(_name)


cdef int response_kind(const char* name, Py_ssize_t n) except -1:
    if n >= 64 or not (_KIND_LENGTHS >> n) & 1:
        return R_RELAY
    return kind_at(_RESPONSE_KINDS, <const unsigned char*>name, n)


# Field names most responses carry, spelled as most servers send them: a name found here is
# this object again rather than a new one per response (exact case: names are relayed as sent).
cdef list _COMMON_NAMES = [() for _ in range(32)]
for _name in (b"Date", b"Server", b"Content-Type", b"Content-Length", b"Connection",
              b"Last-Modified", b"ETag", b"Accept-Ranges", b"Cache-Control", b"Vary",
              b"Expires", b"Keep-Alive", b"Transfer-Encoding", b"Content-Encoding",
              b"Location", b"Set-Cookie", b"date", b"server", b"content-type",
              b"content-length", b"connection", b"etag", b"vary", b"cache-control"):
    _COMMON_NAMES[len(_name)] += (_name,)


cdef inline bytes _field_name(const char* p, Py_ssize_t n):
    cdef tuple known
    cdef Py_ssize_t i
    cdef const char* k
    if n < 32:
        known = <tuple>_COMMON_NAMES[n]
        for i in range(len(known)):
            k = PyBytes_AS_STRING(<bytes>known[i])
            if k[0] == p[0] and memcmp(k, p, n) == 0:
                return <bytes>known[i]
    return PyBytes_FromStringAndSize(p, n)


cdef Py_ssize_t split_fields(const char* p, const char* stop, bint head, list fields,
                             bint pairs=False) except -2:
    # Field lines ("name:" OWS value OWS CRLF, already checked by whoever hands them here)
    # from ``p`` on, appended to ``fields`` flat: the name as sent, the value without its
    # surrounding whitespace (RFC 9110 §5.5); as (name, value) tuples with ``pairs``. With
    # ``head`` they end with an empty line and the bytes read, that line included, are
    # returned; otherwise they run to ``stop``.
    # -1: a line without CR or colon, or a head without its empty line.
    cdef const char* start = p
    cdef const char* eol
    cdef const char* colon
    cdef const char* v
    cdef const char* ve
    while p < stop:
        eol = <const char*>memchr(p, b"\r", stop - p)
        if eol is NULL:
            return -1
        if eol == p:
            return eol + 2 - start if head else -1
        colon = <const char*>memchr(p, b":", eol - p)
        if colon is NULL or colon == p:
            return -1
        v = colon + 1
        ve = eol
        while v < ve and (v[0] == b" " or v[0] == b"\t"):
            v += 1
        while ve > v and (ve[-1] == b" " or ve[-1] == b"\t"):
            ve -= 1
        if pairs:
            fields.append((_field_name(p, colon - p), PyBytes_FromStringAndSize(v, ve - v)))
        else:
            fields.append(_field_name(p, colon - p))
            fields.append(PyBytes_FromStringAndSize(v, ve - v))
        p = eol + 2
    return -1 if head else p - start


cdef list fields_of(bytes block, bint pairs=False):
    # The field lines of ``block`` (as a head holds them, each ending CRLF) as a flat list,
    # or as (name, value) tuples with ``pairs``.
    cdef list fields = []
    cdef const char* p = PyBytes_AS_STRING(block)
    if split_fields(p, p + PyBytes_GET_SIZE(block), False, fields, pairs) < 0:
        raise ValueError("not field lines")
    return fields
