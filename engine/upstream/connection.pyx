"""One keep-alive connection to an upstream server, parsing its responses with httptools.

The response head is parsed to find framing and to rewrite hop-by-hop headers; body bytes are
handed to the UpstreamCall as they arrive and never re-serialised (only re-chunked when the client
side needs chunked framing).

A cdef class cannot subclass asyncio.Protocol; uvloop and httptools only duck-type protocols, so
this class implements every method they call (eof_received included).
"""

import socket
import struct

import httptools

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp

# pyx-level cimport: connection.pxd cimports nothing, so the .pxd files have no cycle.
from engine.upstream.call cimport UpstreamCall

cdef object HttpResponseParser = httptools.HttpResponseParser
cdef object HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object HttpParserCallbackError = httptools.HttpParserCallbackError
cdef object HttpParserError = httptools.HttpParserError
cdef bytes _LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset


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
        if self.line_state == 0:
            # The status line's version, for Via's received-protocol, without
            # get_http_version (a string formatted per call): a response's first read starts
            # with it (1xx interim answers share it).
            if PyBytes_GET_SIZE(data) >= 8:
                self.http10 = memcmp(PyBytes_AS_STRING(data), b"HTTP/1.0", 8) == 0
                self.line_state = 1
            else:
                self.line_state = 2  # (asked of the parser once the head is in)
        ex.read_started()  # what this read produces for the client leaves in one write
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

    def on_status(self, bytes reason):
        self.reason = reason

    def on_header(self, bytes name, bytes value):
        if not self.head_done:
            self.headers.append(name)
            self.headers.append(value)

    def on_headers_complete(self):
        cdef int status = self.parser.get_status_code()
        if self.line_state == 2:
            self.http10 = self.parser.get_http_version() == "1.0"
            self.line_state = 1
        if status < 200 and status != 101:
            # Interim responses (100, 103) are not relayed: the proxy sent no Expect
            # upstream, and nginx drops them too. The final response follows.
            self.headers = []
            self.reason = b""
            return
        self.head_done = True
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

    # -- exchange side

    cpdef bint usable(self) except -1:
        return not self.lost and not self.transport.is_closing()

    cpdef start(self, object call, bytes head, bint skip_body):
        self.call = call
        self.requests += 1
        self.headers = []
        self.reason = b""
        self.head_done = False
        self.skip_body = skip_body
        self.http10 = False
        self.line_state = 0
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
