"""ClientProtocol: one per client connection; httptools callbacks feed Exchanges.

Pipelined requests are parsed as they arrive but answered strictly in order: the exchange being
answered is ``active``; later ones wait in ``queue`` and reading pauses until it drains.
"""

import asyncio
import re
from collections import deque

import httptools

from engine.errors import error_response
from engine.http.exchange import Exchange
from engine.http.framing import (
    H_CONNECTION, H_CONTENT_LENGTH, H_EXPECT, H_FORWARDED, H_HOST, H_REQUEST_ID,
    H_TRANSFER_ENCODING, H_UPGRADE, H_XFF, REQUEST_KINDS, connection_tokens, host_for_routing,
    remove_dot_segments, split_target, transfer_codings, valid_host,
)

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:@/+=\-]{1,200}")


class _Rejected(Exception):
    """Raised from a parser callback after the request was answered with an error."""


class ClientProtocol(asyncio.Protocol):
    PAUSE_PIPELINE = 1
    PAUSE_PENDING = 2
    PAUSE_UPSTREAM = 4
    PAUSE_BROKEN = 8

    __slots__ = (
        "worker", "transport", "parser", "peer_ip", "peer_ip_bytes", "trusted", "ex", "active",
        "queue", "paused", "deadline", "requests", "in_head", "broken", "tunnel", "closed",
        "write_paused", "settings", "lingering", "host_key", "stalled",
    )

    def __init__(self, worker):
        self.worker = worker
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer_ip = ""
        self.peer_ip_bytes = b""
        self.trusted = False
        self.ex = None  # the exchange whose bytes are being parsed
        self.active = None  # the exchange being answered
        self.queue = None
        self.paused = 0
        self.deadline = 0.0
        self.requests = 0
        self.in_head = False
        self.broken = False
        self.tunnel = None
        self.closed = False
        self.write_paused = False
        self.settings = worker.runtime.settings
        self.lingering = False
        self.host_key = (None, "")
        self.stalled = 0  # bytes fed since the parser last delivered anything

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else "unix"
        self.peer_ip = ip
        self.peer_ip_bytes = ip.encode()
        self.trusted = self.settings.is_trusted(ip)
        self.deadline = self.worker.now + self.settings.client_header_timeout
        self.worker.conns.add(self)

    def data_received(self, data):
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.broken or self.lingering:
            return
        ex = self.ex
        if ex is not None and ex.upgrade is not None and ex.tunnel_pending is not None:
            ex.tunnel_pending.append(data)  # bytes after an upgrade request, before the 101
            return
        in_head = self.in_head
        received = ex.body_received if ex is not None else 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0]:] if exc.args else b"")
            return
        except httptools.HttpParserError as exc:
            if not self.broken and not self.closed:
                self._parse_failed(exc)
            return
        if (ex is not None and self.ex is ex and self.in_head == in_head
                and ex.body_received == received and not ex.body_done):
            # httptools holds an unfinished header field (head or trailers) in memory until
            # it ends; bound what may arrive without the parser delivering anything.
            self.stalled += len(data)
            settings = self.settings
            if self.stalled > settings.max_request_line + settings.max_header_size:
                self._bad_request("headers_too_large")
        else:
            self.stalled = 0

    def connection_lost(self, exc):
        self.closed = True
        self.worker.conns.discard(self)
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.close()
        ex = self.active
        if ex is not None and not ex.finished:
            ex.finished = True  # nobody to answer: release upstream resources
            if ex.connecting is not None:
                ex.connecting.cancel()
            if ex.conn is not None:
                ex.server.pool.active -= 1
                ex.conn.abort()
                ex.conn = None
            ex.status = ex.status or 499
            self.worker.log_exchange(ex)

    def pause_writing(self):
        self.write_paused = True
        self.deadline = self.worker.now + self.settings.send_timeout
        ex = self.active
        if ex is not None and ex.conn is not None:
            ex.conn.transport.pause_reading()
        elif self.tunnel is not None:
            self.tunnel.transport.pause_reading()

    def resume_writing(self):
        self.write_paused = False
        ex = self.active
        if ex is not None and ex.conn is not None:
            ex.conn.transport.resume_reading()
        elif self.tunnel is not None:
            self.tunnel.transport.resume_reading()

    # -- httptools callbacks

    def on_message_begin(self):
        if self.broken or self.closed:
            # An answer already decided to close (or linger): RFC 9112 §9.6, no request after
            # it is processed, even one that arrived in the same read.
            raise _Rejected("closing")
        rt = self.worker.runtime
        self.settings = rt.settings
        self.ex = Exchange(self, rt)
        self.in_head = True
        if self.active is None:
            self.deadline = self.worker.now + self.settings.client_header_timeout

    def on_url(self, url):
        ex = self.ex
        ex.url += url
        if len(ex.url) > self.settings.max_request_line:
            self._reject(ex, "uri_too_long")

    def on_header(self, name, value):
        ex = self.ex
        ex.header_size += len(name) + len(value) + 4
        ex.header_count += 1
        self.stalled = 0  # a field ended: only the one after it is unfinished
        settings = self.settings
        if (ex.header_size > settings.max_header_size
                or ex.header_count > settings.max_header_count):
            if not self.in_head:
                self._bad_request("headers_too_large")  # trailers count too
                raise _Rejected("headers_too_large")
            self._reject(ex, "headers_too_large")
        if not self.in_head:
            return  # trailer fields are not forwarded (RFC 9110 §6.5.1 allows discarding)
        kind = REQUEST_KINDS.get(name.lower())
        if kind is None:
            ex.headers.append((name, value))
        elif kind == H_HOST:
            ex.host_count += 1
            ex.host = value.strip(b" \t")
        elif kind == H_CONTENT_LENGTH:
            ex.content_length = int(value)  # llhttp allows digits only, and one field
        elif kind == H_TRANSFER_ENCODING:
            ex.te = value if ex.te is None else ex.te + b", " + value
        elif kind == H_CONNECTION:
            if ex.connection is None:
                ex.connection = [value]
            else:
                ex.connection.append(value)
        elif kind == H_XFF:
            ex.xff = value if ex.xff is None else ex.xff + b", " + value
        elif kind == H_REQUEST_ID:
            if _REQUEST_ID_RE.fullmatch(value):
                ex.request_id = value
        elif kind == H_EXPECT:
            ex.expect = value
        elif kind == H_UPGRADE:
            ex.upgrade = value
        elif kind == H_FORWARDED:
            if self.trusted:
                if ex.forwarded is None:
                    ex.forwarded = {}
                ex.forwarded[name.lower()] = value
        # else H_HOP: dropped

    def on_headers_complete(self):
        self.in_head = False
        ex = self.ex
        parser = self.parser
        ex.method = parser.get_method()
        ex.version = version = parser.get_http_version()
        ex.keep_alive = (parser.should_keep_alive()
                         and self.requests + 1 < self.settings.keepalive_requests)
        if not ex.request_id:
            ex.request_id = self.worker.next_request_id()
        if self.worker.access_log is not None:
            ex.t_start = self.worker.clock()
        if version != "1.1" and version != "1.0":
            self._reject(ex, "version_not_supported")
        # RFC 9112 §3.2: exactly one Host, valid, in every HTTP/1.1 request.
        if ex.host_count > 1 or (ex.host_count == 0 and version == "1.1"):
            self._reject(ex, "bad_host")
        if ex.host is not None and not valid_host(ex.host):
            self._reject(ex, "bad_host")
        if ex.te is not None:
            # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing; chunked must
            # be the final coding (llhttp checks) and is the only one we implement.
            if version == "1.0":
                self._reject(ex, "bad_framing")
            codings = transfer_codings(ex.te)
            if not codings or codings[-1] != b"chunked":
                self._reject(ex, "bad_framing")
            if len(codings) > 1:
                self._reject(ex, "not_implemented")
            ex.chunked = True
        else:
            ex.body_done = ex.content_length is None or ex.content_length == 0
        try:
            authority, path, ex.query = split_target(ex.url)
        except ValueError:
            self._reject(ex, "bad_target")
        if authority is not None:
            ex.host = authority  # RFC 9112 §3.2.2: absolute-form overrides Host
            if not valid_host(authority):
                self._reject(ex, "bad_host")
        path = path.decode("latin-1")
        if "/." in path:
            path = remove_dot_segments(path)
        ex.path = path
        if ex.upgrade is not None:
            if ex.connection is None or b"upgrade" not in connection_tokens(ex.connection):
                ex.upgrade = None  # Upgrade without Connection: upgrade is not a request
        if self.trusted and ex.xff is not None:
            ex.client_ip = self.worker.runtime.settings.real_ip(ex.xff, self.peer_ip)
        self._dispatch(ex)

    def on_body(self, body):
        ex = self.ex
        ex.body_received += len(body)
        if ex.route is not None and ex.body_received > ex.route.max_body_size:
            self._body_too_large(ex)
        if self.active is not ex or ex.conn is not None:
            # Waiting on the client's body: the timeout is between two reads. (While the
            # upstream connects, its connect_timeout runs instead.)
            self.deadline = self.worker.now + self.settings.client_body_timeout
        ex.client_body(body)

    def on_message_complete(self):
        ex = self.ex
        if not ex.body_done:
            ex.client_body_end()

    # -- dispatch and completion

    def _dispatch(self, ex):
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append(ex)
            self.pause_reading_for(self.PAUSE_PIPELINE)

    def exchange_finished(self, ex):
        self.worker.log_exchange(ex)
        if self.active is not ex:
            return
        self.active = None
        self.requests += 1
        if ex.close_after:
            self._close_after_response(ex)
            return
        queue = self.queue
        if queue:
            nxt = queue.popleft()
            self.active = nxt
            nxt.start()
            return
        self.resume_reading_for(self.PAUSE_PIPELINE)
        if self.worker.draining and not self.in_head:
            self.close()
        elif self.in_head:
            self.deadline = self.worker.now + self.settings.client_header_timeout
        else:
            self.deadline = self.worker.now + self.settings.keepalive_timeout

    def _close_after_response(self, ex):
        if ex.body_done and not self.broken:
            self.close()
        else:
            self.linger()

    # -- errors

    def _reject(self, ex, code):
        """Answer ``ex`` with an error (in pipeline order), then stop reading."""
        if not ex.request_id:
            ex.request_id = self.worker.next_request_id()  # rejected before the head ended
        ex.error = code
        ex.close_after = True
        self.broken = True
        self.pause_reading_for(self.PAUSE_BROKEN)
        if ex not in (self.queue or ()) and ex is not self.active:
            self._dispatch(ex)
        raise _Rejected(code)

    def _body_too_large(self, ex):
        ex.close_after = True
        if ex.finished:
            # Answered early (the upstream did not wait for the body); the rest was being
            # drained, but not past the limit.
            self.linger()
            raise _Rejected("body_too_large")
        if not ex.head_sent:
            if ex.conn is not None:
                ex.server.pool.active -= 1
                ex.conn.abort()
                ex.conn = None
            ex.error = "body_too_large"
            if self.active is ex:
                ex.respond(error_response("body_too_large", ex.request_id.decode()))
        self.broken = True
        self.pause_reading_for(self.PAUSE_BROKEN)
        raise _Rejected("body_too_large")

    def _parse_failed(self, exc):
        if isinstance(exc, httptools.HttpParserInvalidURLError):
            code = "bad_target"
        else:
            msg = str(exc)
            if "HTTP version" in msg:
                code = "version_not_supported"  # llhttp knows 0.9, 1.x and 2.0 only
            elif "Content-Length" in msg or "Transfer-Encoding" in msg or "chunk" in msg:
                code = "bad_framing"
            else:
                code = "bad_request"
        self._bad_request(code)

    def _bad_request(self, code):
        """The bytes being parsed are bad: answer ``code`` for the request they belong to
        (or the one after the last complete request), then close."""
        ex = self.ex
        self.broken = True
        self.pause_reading_for(self.PAUSE_BROKEN)
        if ex is None or ex.finished or ex.body_done:
            # The error is in bytes after ``ex``'s complete message.
            if ex is not None and not ex.keep_alive and not ex.finished:
                return  # llhttp refuses data after "close" (RFC 9112 §9.6): answer ex alone
            ex = Exchange(self, self.worker.runtime)
        if not ex.request_id:
            ex.request_id = self.worker.next_request_id()
        if ex.head_sent:
            self.abort()  # the response already started; the request was bad mid-body
            return
        ex.error = code
        ex.close_after = True
        if ex is self.active:
            if ex.conn is not None:
                ex.server.pool.active -= 1
                ex.conn.abort()
                ex.conn = None
            if ex.connecting is not None:
                ex.connecting.cancel()
            ex.respond(error_response(code, ex.request_id.decode()))
        elif ex not in (self.queue or ()):
            self._dispatch(ex)

    def route_host(self, host):
        """The router's host key; a connection usually repeats one Host, so remember it."""
        if host is None:
            return ""
        if host == self.host_key[0]:
            return self.host_key[1]
        key = host_for_routing(host)
        self.host_key = (host, key)
        return key

    # -- upgrade / tunnel

    def _upgrade_requested(self, rest):
        ex = self.ex
        if ex is None or ex.upgrade is None or ex.finished:
            self.close()
            return
        ex.tunnel_pending = [rest] if rest else []

    def start_tunnel(self, ex, conn):
        self.tunnel = conn
        conn.tunnel = True
        pending = ex.tunnel_pending
        ex.tunnel_pending = None
        if pending:
            conn.transport.write(b"".join(pending))
        self.deadline = 0.0
        self.resume_reading_for(0xFF)

    # -- flow control and closing

    def pause_reading_for(self, reason):
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading_for(self, reason):
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def timed_out(self):
        ex = self.active
        if self.lingering or self.tunnel is not None:
            self.abort()
        elif ex is not None:
            if self.write_paused:
                self.abort()
            else:
                ex.timed_out()
        elif self.in_head or (self.ex is not None and not self.ex.body_done
                              and not self.ex.finished):
            ex = self.ex if self.ex is not None else Exchange(self, self.worker.runtime)
            if not ex.request_id:
                ex.request_id = self.worker.next_request_id()
            ex.close_after = True
            self.active = ex
            ex.respond(error_response("request_timeout", ex.request_id.decode()))
        else:
            self.close()  # idle keep-alive connection

    def linger(self):
        """Half-close and drain for a moment, so the client reads our answer before the
        kernel would reset the connection on unread request bytes (nginx lingering_close)."""
        if self.closed:
            return
        self.lingering = True
        self.broken = True  # nothing more is parsed
        self.paused = 0
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.deadline = self.worker.now + self.settings.lingering_timeout

    def close(self):
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self):
        if not self.closed:
            self.closed = True
            self.transport.abort()
