"""One keep-alive connection to an upstream server, parsing its responses with httptools.

llhttp (httptools) validates every response and frames its body, but it is not asked for the
head's fields one callback at a time: once it has accepted a head, the head's bytes are split
here in C (``_scan_head``), which saves two bytes objects' worth of Python calls per field.
Body bytes are handed to the UpstreamCall as they arrive and never re-serialised (only re-chunked when the client
side needs chunked framing).

A cdef class cannot subclass asyncio.Protocol; uvloop and httptools only duck-type protocols, so
this class implements every method they call (eof_received included).
"""

import socket
import struct

import httptools

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp

# pyx-level cimport: connection.pxd cimports nothing, so the .pxd files have no cycle.
from engine.upstream.call cimport UpstreamCall

cdef object HttpResponseParser = httptools.HttpResponseParser
cdef object HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object HttpParserCallbackError = httptools.HttpParserCallbackError
cdef object HttpParserError = httptools.HttpParserError
cdef bytes _LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset


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


cdef bytes _OK = b"OK"


class _StopParsing(Exception):
    """Raised from a parser callback to stop feeding this response (see ``stop``)."""


@cython.final
cdef class UpstreamConnection:
    def __init__(self, pool):
        self.pool = pool
        self.transport = None
        self.parser = HttpResponseParser(self)
        self.call = None
        self.requests = 0
        self.idle_deadline = 0.0
        self.headers = []
        self.reason = b""
        self.head_done = False
        self.lost = False
        self.skip_body = False
        self.tunnel = False
        self.stop = None
        self.completed = False

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        self.pool.opened += 1

    def data_received(self, data):
        cdef UpstreamCall ex
        if self.tunnel:
            (<UpstreamCall?>self.call).tunnel_data(data)
            return
        if self.call is None:
            # An idle connection must not talk; whatever it says, it is not reusable.
            self.close()
            return
        ex = <UpstreamCall>self.call
        ex.read_started()  # what this read produces for the client leaves in one write
        if not self.head_done:
            # The head being parsed: its bytes are split once llhttp accepted them.
            if self.head_bytes is None:
                self.head_bytes = data
            else:
                self.head_bytes = self.head_bytes + data
        try:
            self.parser.feed_data(data)
            if self.completed:
                # The response ended in this read. It is handed over only now, after the
                # parser is done with the read: releasing the connection from inside the
                # callback would let the next request's exchange take whatever else the
                # read held as its response (RFC 9112 §9.3: responses match requests in order).
                self.completed = False
                self._complete(self.keep_alive)
        except HttpParserUpgrade as exc:
            rest = data[exc.args[0]:] if exc.args else b""
            self.tunnel = True
            if rest:
                ex.tunnel_data(rest)
        except HttpParserCallbackError as exc:
            stop = self.stop
            self.stop = None
            if stop == "head":
                # HEAD: llhttp cannot be told the body is absent (RFC 9110 §9.3.2), so start
                # a fresh parser for the next response; only the old one knows whether this
                # response let the connection persist (RFC 9112 §9.3).
                reusable = self.parser.should_keep_alive()
                self.parser = HttpResponseParser(self)
                self._complete(reusable)
            elif stop == "unsolicited":
                # Bytes after a complete response, before we asked again: never reuse.
                self.completed = False
                self._complete(False)
            elif stop is None:
                self._fail(exc)
            # stop == "abort": the exchange already failed this connection
        except HttpParserError as exc:
            self._fail(exc)
        finally:
            ex.read_done()

    def eof_received(self):
        return None  # asyncio.Protocol's default: the transport closes itself

    def connection_lost(self, exc):
        cdef UpstreamCall ex
        self.lost = True
        if self.call is None:
            self.pool.discard(self)
            return
        ex = <UpstreamCall>self.call
        self.call = None
        if self.tunnel:
            ex.tunnel_closed()
        elif self.head_done and ex.close_delimited:
            ex.upstream_complete(self, False)  # RFC 9112 §6.3 rule 8: EOF ends it
        else:
            ex.upstream_failed(self, "bad_gateway", True)

    def pause_writing(self):
        if self.call is not None:
            (<UpstreamCall>self.call).upstream_write_paused(True)

    def resume_writing(self):
        if self.call is not None:
            (<UpstreamCall>self.call).upstream_write_paused(False)

    # -- httptools callbacks

    def on_message_begin(self):
        if self.completed:
            self.stop = "unsolicited"
            raise _StopParsing

    def on_headers_complete(self):
        cdef int status
        if not self._scan_head():
            self.stop = None  # malformed as far as we are concerned: a 502, never relayed
            raise _StopParsing
        status = self.status
        if status < 200 and status != 101:
            # An interim response; the final one follows. RFC 9110 §15.2: 102 and 103 (Early
            # Hints) are relayed to the client. A 100 is not: the proxy answers the client's
            # Expect itself and sends none upstream (§10.1.1), so it answers nothing asked.
            if status != 100:
                (<UpstreamCall?>self.call).upstream_interim(self, status, self.reason,
                                                            self.headers)
            return
        self.head_done = True
        self.head_bytes = None
        if not (<UpstreamCall?>self.call).upstream_head(self, status, self.reason, self.headers):
            self.stop = "abort"
            raise _StopParsing
        if self.skip_body and status != 101:
            self.stop = "head"
            raise _StopParsing

    def on_body(self, bytes body):
        (<UpstreamCall?>self.call).upstream_body(body)

    def on_message_complete(self):
        if self.head_done and not self.tunnel:
            # (llhttp also "completes" a 101: that is where the tunnel starts)
            self.completed = True  # handed over by data_received once the read is parsed
            # (llhttp resets its keep-alive flag for the next message: read it now)
            self.keep_alive = self.parser.should_keep_alive()

    cdef bint _scan_head(self) except -1:
        # The head llhttp has just accepted, from ``head_bytes`` at ``head_from``: its reason
        # phrase and its fields, flat. llhttp checked the syntax (CRLF line ends, token
        # names with no space before the colon, no obs-fold, no CTLs), so the head is the
        # lines up to the first empty one. Field values lose their surrounding whitespace
        # (RFC 9110 §5.5). False if the bytes are not what llhttp accepted.
        cdef bytes head = self.head_bytes
        cdef const char* p
        cdef const char* stop
        cdef const char* eol
        cdef const char* colon
        cdef const char* v
        cdef const char* ve
        cdef const char* sp
        cdef list fields = []
        if head is None:
            return False
        p = PyBytes_AS_STRING(head) + self.head_from
        stop = PyBytes_AS_STRING(head) + PyBytes_GET_SIZE(head)
        # Status line: HTTP-version SP status-code [SP reason-phrase] (RFC 9112 §4).
        eol = <const char*>memchr(p, b"\r", stop - p)
        if eol is NULL:
            return False
        sp = <const char*>memchr(p, b" ", eol - p)
        if sp is NULL or eol - sp < 4:
            return False
        # The version, for Via's received-protocol (RFC 9110 §7.6.3).
        self.http10 = sp - p == 8 and memcmp(p, b"HTTP/1.0", 8) == 0
        # status-code = 3DIGIT (RFC 9112 §4), as llhttp checked: read here, not asked of it
        if not (b"0" <= sp[1] <= b"9" and b"0" <= sp[2] <= b"9" and b"0" <= sp[3] <= b"9"):
            return False
        self.status = (sp[1] - 48) * 100 + (sp[2] - 48) * 10 + (sp[3] - 48)
        if eol - sp == 7 and sp[5] == b"O" and sp[6] == b"K":
            self.reason = _OK
        else:
            self.reason = PyBytes_FromStringAndSize(sp + 5, eol - sp - 5) if eol - sp > 5 else b""
        p = eol + 2
        while True:
            eol = <const char*>memchr(p, b"\r", stop - p) if p < stop else NULL
            if eol is NULL:
                return False
            if eol == p:
                break  # the empty line that ends the head
            colon = <const char*>memchr(p, b":", eol - p)
            if colon is NULL or colon == p:
                return False
            v = colon + 1
            ve = eol
            while v < ve and (v[0] == b" " or v[0] == b"\t"):
                v += 1
            while ve > v and (ve[-1] == b" " or ve[-1] == b"\t"):
                ve -= 1
            fields.append(_field_name(p, colon - p))
            fields.append(PyBytes_FromStringAndSize(v, ve - v))
            p = eol + 2
        self.headers = fields
        self.head_from = eol + 2 - PyBytes_AS_STRING(head)
        return True

    # -- exchange side

    cpdef bint usable(self) except -1:
        return not self.lost and not self.transport.is_closing()

    cpdef start(self, object call, bytes head, bint skip_body):
        self.call = call
        self.requests += 1
        self.headers = []
        self.reason = b""
        self.head_done = False
        self.head_bytes = None
        self.head_from = 0
        self.skip_body = skip_body
        self.http10 = False
        self.transport.write(head)

    cdef int _complete(self, object reusable=None) except -1:
        cdef UpstreamCall ex
        if self.call is None:
            return 0
        ex = <UpstreamCall>self.call
        self.call = None
        if reusable is None:
            reusable = self.parser.should_keep_alive()
        ex.upstream_complete(self, reusable)
        return 0

    cdef int _fail(self, object exc) except -1:
        ex = self.call
        self.call = None
        self.close()
        if ex is not None:
            (<UpstreamCall>ex).upstream_failed(self, "bad_gateway", False)  # it answered, badly
        return 0

    cpdef close(self):
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    cpdef abort(self):
        self.lost = True
        self.call = None
        if self.transport is not None:
            self.transport.abort()

    cpdef reset(self):
        """Abort with a TCP reset: the request on it is cut off (a bad body, a client gone
        mid-body), and a reset cannot be taken for the end of a message, as a FIN after a
        close-delimited or truncated body could."""
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
                except OSError:
                    pass
        self.abort()
