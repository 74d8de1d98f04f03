"""One request/response exchange: the filter chain's context and the proxying state machine.

An Exchange is created when a request line starts and lives until its response is written. It
is the ``ctx`` filters receive. Client-side callbacks come from ClientProtocol, upstream-side
callbacks from UpstreamConnection; both are plain method calls on the hot path.
"""

from functools import partial

from engine.errors import error_response
from engine.http.framing import HOP_BY_HOP, connection_tokens, transfer_codings
from engine.http.messages import Response, status_line
from engine.upstream.connection import UpstreamConnection

# Bytes of request body held while the upstream connection is being set up; past this the
# client socket stops being read (back-pressure instead of buffering a whole upload).
PENDING_LIMIT = 256 * 1024

CHUNK_END = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# RFC 9110 §9.2.2: requests a client may repeat automatically (RFC 9112 §9.3.1.1).
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
NO_BODY_STATUSES = frozenset((204, 304))

# Response headers the proxy re-frames or replaces rather than relays.
_R_CONTENT_LENGTH = 1
_R_TRANSFER_ENCODING = 2
_R_CONNECTION = 3
_R_DROP = 4
RESPONSE_KINDS = {
    b"content-length": _R_CONTENT_LENGTH,
    b"transfer-encoding": _R_TRANSFER_ENCODING,
    b"connection": _R_CONNECTION,
    b"x-request-id": _R_DROP,  # replaced by ours, so the client sees one id
}
for _name in HOP_BY_HOP:
    RESPONSE_KINDS.setdefault(_name, _R_DROP)


class Exchange:
    __slots__ = (
        "proto", "rt", "method", "url", "version", "keep_alive", "headers", "host",
        "host_count", "content_length", "te", "chunked", "connection", "expect", "upgrade",
        "xff", "forwarded", "request_id", "client_ip", "path", "query", "route", "params",
        "server", "conn", "pending", "pending_size", "body_received", "body_done",
        "body_streamed", "chunked_up", "status", "resp_chunked", "upstream_close_delimited",
        "head_sent", "bytes_out", "close_after", "error", "ran", "finished", "t_start",
        "t_upstream", "connecting", "retried", "tunnel_pending", "header_size",
        "header_count", "out",
    )

    def __init__(self, proto, rt):
        self.proto = proto
        self.rt = rt  # the snapshot this request keeps to the end (DESIGN.md)
        self.method = b""
        self.url = b""
        self.version = "1.1"
        self.keep_alive = True
        self.headers = []
        self.host = None
        self.host_count = 0
        self.content_length = None
        self.te = None
        self.chunked = False
        self.connection = None
        self.expect = None
        self.upgrade = None
        self.xff = None
        self.forwarded = None
        self.request_id = b""
        self.client_ip = proto.peer_ip
        self.path = "/"
        self.query = b""
        self.route = None
        self.params = None
        self.server = None
        self.conn = None
        self.pending = None
        self.pending_size = 0
        self.body_received = 0
        self.body_done = False
        self.body_streamed = False
        self.chunked_up = False
        self.status = 0
        self.resp_chunked = False
        self.upstream_close_delimited = False
        self.head_sent = False
        self.bytes_out = 0
        self.close_after = False
        self.error = None
        self.ran = 0
        self.finished = False
        self.t_start = 0.0
        self.t_upstream = 0.0
        self.connecting = None
        self.retried = False
        self.tunnel_pending = None
        self.header_size = 0
        self.header_count = 0
        self.out = None  # while an upstream read is being parsed: writes to coalesce

    # -- request phase

    def start(self):
        """Route, run the request filters, then answer or go upstream."""
        if self.error is not None:
            self.respond(error_response(self.error, self.request_id.decode()))
            return
        route, extra = self.rt.router.match(self.method, self.proto.route_host(self.host),
                                            self.path)
        if route is None:
            if extra is None:
                self.respond(error_response("not_found", self.request_id.decode()))
            else:
                self.respond(error_response("method_not_allowed", self.request_id.decode(),
                                            headers=[(b"Allow", b", ".join(extra))]))
            return
        self.route = route
        self.params = extra
        if self.content_length is not None and self.content_length > route.max_body_size:
            self.close_after = True
            self.respond(error_response("body_too_large", self.request_id.decode()))
            return
        for f in route.request_filters:
            self.ran += 1
            answer = f.on_request(self)
            if answer is not None:
                self.respond(answer)
                return
        self.proxy()

    def proxy(self):
        upstream = self.route.upstream
        server = upstream.pick(self)
        if server is None:
            self.respond(error_response("upstream_unavailable", self.request_id.decode()))
            return
        self.server = server
        if self.expect is not None and not self.body_done and self.version == "1.1":
            # RFC 9110 §10.1.1: the proxy has accepted the request, so it asks for the body
            # itself; Expect is not forwarded.
            self.proto.transport.write(CONTINUE)
        conn = server.pool.acquire()
        if conn is not None:
            self.attach(conn)
        else:
            self.connect()

    def connect(self):
        proto = self.proto
        upstream = self.route.upstream
        proto.deadline = proto.worker.now + upstream.connect_timeout
        self.connecting = proto.worker.loop.create_task(self._connect(self.server))

    async def _connect(self, server):
        loop = self.proto.worker.loop
        try:
            _, conn = await loop.create_connection(
                partial(UpstreamConnection, server.pool), server.host, server.port)
        except OSError:
            self.connecting = None
            if not self.finished:
                self.upstream_failed(None, "bad_gateway")
            return
        self.connecting = None
        if self.finished:
            server.pool.release(conn, self.proto.worker.now)
            return
        self.attach(conn)

    def attach(self, conn):
        self.conn = conn
        self.server.pool.active += 1
        parts = [self.request_head()]
        pending = self.pending
        if pending:
            if self.chunked_up:
                parts += [b"%x\r\n%s\r\n" % (len(c), c) for c in pending]
            else:
                parts += pending
            if not self.body_done:
                # From now on the body streams straight through. A complete body stays
                # in ``pending`` so a stale keep-alive connection can be retried.
                self.pending = None
                self.pending_size = 0
                self.proto.resume_reading_for(self.proto.PAUSE_PENDING)
        if self.chunked_up and self.body_done:
            parts.append(CHUNK_END)
        proto = self.proto
        # Until the body is in, the wait is on the client (client_body_timeout, 408).
        proto.deadline = proto.worker.now + (self.route.upstream.read_timeout if self.body_done
                                             else proto.settings.client_body_timeout)
        if self.t_start:
            self.t_upstream = proto.worker.clock()
        conn.start(self, b"".join(parts), self.method == b"HEAD")
        if proto.write_paused:
            # The client is not reading (an earlier pipelined answer filled its buffer):
            # this response waits upstream until resume_writing, it is not buffered here.
            conn.transport.pause_reading()

    def request_head(self) -> bytes:
        """The request head sent upstream: hop-by-hop fields removed (RFC 9110 §7.6.1),
        framing re-stated, X-Forwarded-*, X-Real-IP and X-Request-ID set."""
        route = self.route
        upstream = route.upstream
        host = upstream.host_header or self.host or self.server.authority
        target = route.target(self)
        parts = [self.method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
        headers = self.headers
        if self.connection is not None:
            # Fields named by Connection are hop-by-hop too (RFC 9110 §7.6.1).
            named = connection_tokens(self.connection)
            headers = [h for h in headers if h[0].lower() not in named]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if self.upgrade is not None:
            parts += (b"Upgrade: ", self.upgrade, b"\r\nConnection: upgrade\r\n")
        if self.body_done and (self.chunked or self.content_length is not None):
            # Whole body already here: state its length, as nginx does with buffered bodies.
            parts += (b"Content-Length: %d\r\n" % self.pending_size,)
        elif self.content_length is not None:
            parts += (b"Content-Length: %d\r\n" % self.content_length,)
        elif self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
            self.chunked_up = True
        proto = self.proto
        peer = proto.peer_ip_bytes
        if proto.trusted and self.xff:  # (an empty X-Forwarded-For adds no hop)
            parts += (b"X-Forwarded-For: ", self.xff, b", ", peer, b"\r\n")
        else:
            parts += (b"X-Forwarded-For: ", peer, b"\r\n")
        forwarded = self.forwarded
        if forwarded is None:
            parts += (b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: ", self.host or host,
                      b"\r\nX-Real-IP: ", self.client_ip.encode(), b"\r\n")
        else:
            parts += (b"X-Forwarded-Proto: ", forwarded.get(b"x-forwarded-proto", b"http"),
                      b"\r\nX-Forwarded-Host: ",
                      forwarded.get(b"x-forwarded-host", self.host or host),
                      b"\r\nX-Real-IP: ", self.client_ip.encode(), b"\r\n")
        parts += (b"X-Request-ID: ", self.request_id, b"\r\n\r\n")
        return b"".join(parts)

    # -- request body (called by ClientProtocol for the exchange being parsed)

    def client_body(self, chunk):
        if self.finished:
            return  # answered already: the rest of the body is read and dropped
        conn = self.conn
        if conn is not None:
            if self.chunked_up:
                conn.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                conn.transport.write(chunk)
            self.body_streamed = True
            return
        if self.pending is None:
            self.pending = []
        self.pending.append(chunk)
        self.pending_size += len(chunk)
        if self.pending_size >= PENDING_LIMIT:
            self.proto.pause_reading_for(self.proto.PAUSE_PENDING)

    def client_body_end(self):
        self.body_done = True
        conn = self.conn
        if conn is not None and not self.finished:
            if self.chunked_up:
                conn.transport.write(CHUNK_END)
            proto = self.proto
            proto.deadline = proto.worker.now + self.route.upstream.read_timeout

    # -- upstream response (called by UpstreamConnection)

    def upstream_head(self, conn, status, reason, headers) -> bool:
        """Relay the response head. False when the response must not be relayed."""
        if self.finished:
            conn.abort()
            return False
        cl = None
        te = None
        named = None
        out = []
        kinds = RESPONSE_KINDS
        for header in headers:
            kind = kinds.get(header[0].lower())
            if kind is None:
                out.append(header)
            elif kind == _R_CONTENT_LENGTH:
                cl = header[1]
            elif kind == _R_TRANSFER_ENCODING:
                te = header[1] if te is None else te + b", " + header[1]
            elif kind == _R_CONNECTION:
                named = connection_tokens([header[1]]) if named is None else \
                    named | connection_tokens([header[1]])
            elif status == 101 and header[0].lower() == b"upgrade":
                out.append(header)
        if te is not None and transfer_codings(te) != [b"chunked"]:
            # A coding we would have to relay undecoded: ambiguous for the client (RFC 9112
            # §6.1); refuse rather than guess.
            self.upstream_failed(conn, "bad_gateway", retry=False)
            conn.abort()
            return False
        if named:
            if status == 101:
                named.discard(b"upgrade")  # the protocol switched to (RFC 9110 §7.8)
            out = [h for h in out if h[0].lower() not in named]
        if status == 101:
            if self.upgrade is None:
                self.upstream_failed(conn, "bad_gateway", retry=False)
                conn.abort()
                return False
            out.append((b"Connection", b"upgrade"))
            self._write_head(Response(101, out, None), reason, None, tunnel=True)
            return True
        no_body = status in NO_BODY_STATUSES or self.method == b"HEAD"
        self.upstream_close_delimited = not no_body and cl is None and te is None
        self._write_head(Response(status, out, None), reason, cl, no_body=no_body)
        return True

    def upstream_body(self, chunk):
        if self.resp_chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        out = self.out
        if out is not None:
            out.append(chunk)
        else:
            self.proto.transport.write(chunk)
        self.bytes_out += len(chunk)
        proto = self.proto
        proto.deadline = proto.worker.now + self.route.upstream.read_timeout

    def upstream_complete(self, conn, reusable):
        if self.resp_chunked:
            if self.out is not None:
                self.out.append(CHUNK_END)
            else:
                self.proto.transport.write(CHUNK_END)
        self.conn = None
        pool = self.server.pool
        pool.active -= 1
        if reusable and self.body_done and self.upgrade is None:
            # A refused upgrade's connection is not reused: the upstream's parser may
            # already treat it as switched (llhttp pauses on every Upgrade request).
            pool.release(conn, self.proto.worker.now)
        else:
            conn.close()
            # Answered before the whole body was sent: the client may be paused on this
            # upstream's full buffer; the rest of its body is read and dropped now.
            self.proto.resume_reading_for(self.proto.PAUSE_UPSTREAM)
        self.finish()

    def upstream_failed(self, conn, code, retry=True):
        """``retry`` is False when the upstream answered something (a malformed response):
        that is its answer, not a connection lost in a keep-alive race."""
        if conn is not None and self.conn is conn:
            self.conn = None
            self.server.pool.active -= 1
            if (retry and conn.requests > 1 and not self.head_sent and not self.body_streamed
                    and not self.retried and not self.finished and self.method in IDEMPOTENT
                    and (self.body_done or not self.body_received)):
                # The keep-alive connection was closed by the server as we reused it
                # (RFC 9112 §9.3.1): resend once on a fresh one, but only an idempotent
                # request, which may be repeated automatically (RFC 9112 §9.3.1.1).
                self.retried = True
                self.connect()
                return
        if self.finished:
            return
        if not self.head_sent:
            self.respond(error_response(code, self.request_id.decode()))
        else:
            # Never let a truncated response look complete: drop the client connection.
            self.close_after = True
            self.proto.abort()
            self.finish()

    def upstream_write_paused(self, paused):
        proto = self.proto
        if paused:
            proto.pause_reading_for(proto.PAUSE_UPSTREAM)
            # The upstream is not taking the body: its send_timeout runs, not the client's.
            proto.deadline = proto.worker.now + self.route.upstream.send_timeout
        else:
            proto.resume_reading_for(proto.PAUSE_UPSTREAM)
            if not self.body_done:
                proto.deadline = proto.worker.now + proto.settings.client_body_timeout

    def timed_out(self):
        """The connection's deadline passed while this exchange was active."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
            self.respond(error_response("gateway_timeout", self.request_id.decode()))
        elif self.conn is not None:
            conn = self.conn
            self.conn = None
            self.server.pool.active -= 1
            conn.abort()
            if self.head_sent:
                self.close_after = True
                self.proto.abort()
                self.finish()
            elif not self.body_done and not self.proto.paused & self.proto.PAUSE_UPSTREAM:
                # The client stopped sending the body it announced (nginx
                # client_body_timeout); the upstream never got a whole request.
                self.respond(error_response("request_timeout", self.request_id.decode()))
            else:
                self.respond(error_response("gateway_timeout", self.request_id.decode()))
        else:
            self.close_after = True
            self.respond(error_response("request_timeout", self.request_id.decode()))

    # -- tunnel (after a relayed 101)

    def tunnel_to_client(self, data):
        if self.out is not None:
            self.out.append(data)  # behind the 101 head still waiting in ``out``
        else:
            self.proto.transport.write(data)
        self.bytes_out += len(data)

    def tunnel_closed(self):
        if self.conn is not None:
            self.conn = None
            self.server.pool.active -= 1
        self.close_after = True
        self.proto.close()
        self.finish()

    # -- answering

    def respond(self, resp: Response):
        """Answer with a response the proxy made (a filter's, or an error)."""
        if self.finished or self.head_sent:
            return
        body = resp.body or b""
        if not self.body_done:
            # The rest of the request body is not read: close after answering.
            self.close_after = True
        self._write_head(resp, None, b"%d" % len(body), no_body=self.method == b"HEAD",
                         body=body)
        self.finish()

    def _write_head(self, resp, reason, content_length, no_body=False, body=None, tunnel=False):
        route = self.route
        if route is not None and route.response_filters and self.ran:
            for index, f in route.response_filters:
                if index < self.ran:
                    f.on_response(self, resp)
        status = resp.status
        parts = [status_line(status, reason)]
        for name, value in resp.headers:
            parts += (name, b": ", value, b"\r\n")
        if tunnel:
            pass
        elif content_length is not None:
            if status not in NO_BODY_STATUSES or no_body and self.method == b"HEAD":
                parts += (b"Content-Length: ", content_length, b"\r\n")
        elif not no_body:
            if self.version == "1.1":
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self.resp_chunked = True
            else:
                self.close_after = True  # close-delimited body for an HTTP/1.0 client
        proto = self.proto
        if not tunnel:
            if self.upgrade is not None:
                # Answered without switching protocols: the client may already be sending
                # the new protocol, and llhttp parses nothing after an Upgrade request.
                self.close_after = True
            if self.close_after or not self.keep_alive or proto.worker.draining:
                self.close_after = True
                parts.append(b"Connection: close\r\n")
            elif self.version == "1.0":
                parts.append(b"Connection: keep-alive\r\n")
        parts += (b"X-Request-ID: ", self.request_id, b"\r\n\r\n")
        if body and not no_body:
            parts.append(body)
            self.bytes_out += len(body)
        self.status = status
        self.head_sent = True
        if self.out is not None:
            self.out.append(b"".join(parts))
        else:
            proto.transport.write(b"".join(parts))
        if tunnel:
            proto.start_tunnel(self, self.conn)

    def flush(self):
        """Write what the current upstream read produced in one send (head and body of a
        small response then cost one syscall, not two)."""
        out = self.out
        if out and not self.proto.closed:
            self.proto.transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    def finish(self):
        if self.finished:
            return
        self.flush()
        self.finished = True
        self.proto.exchange_finished(self)
