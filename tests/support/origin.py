"""Real origin servers on loopback that behave on cue.

An Origin runs an asyncio server in its own thread. Its ``handler(request)`` returns what to do:
raw response bytes, or a tuple (bytes, action) where action is "close", "reset", "hang" or
"keep", or a number of seconds to wait before writing the bytes. Every request is recorded for
assertions, and so are the raw bytes received and how each connection ended (``lost``: None
for a close, ConnectionResetError for a reset).
"""

import asyncio
import re
import socket
import struct
import threading

import httptools

# A request line's method, when httptools' fixed list may not know it (RFC 9110 §9.1 allows any
# token): the origin parses such a request with GET in its place and records the real one.
_METHOD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ")
_PARSED_AS_IS = {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"}


class Request:
    def __init__(self):
        self.method = b""
        self.url = b""
        self.headers = []
        self.body = b""
        self.chunks = []
        self.version = ""
        self.conn_id = 0

    def header(self, name: bytes):
        name = name.lower()
        values = [v for n, v in self.headers if n.lower() == name]
        return values[0] if len(values) == 1 else (values or None)


def ok(body: bytes = b"hello", status: int = 200, headers=()) -> bytes:
    extra = b"".join(b"%s: %s\r\n" % h for h in headers)
    return b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


def echo(req: Request) -> bytes:
    return ok(req.body or req.url)


class _OriginProtocol(asyncio.Protocol):
    def __init__(self, origin):
        self.origin = origin
        origin.connections += 1
        self.conn_id = origin.connections
        self.parser = httptools.HttpRequestParser(self)
        self.req = None
        self.transport = None
        self.between = True  # the parser expects a new request
        self.method = None  # an extension method the parser sees as GET

    def connection_made(self, transport):
        self.transport = transport
        self.origin.open.add(self)

    def connection_lost(self, exc):
        self.origin.open.discard(self)
        self.origin.lost.append(exc)

    def data_received(self, data):
        self.origin.raw.append(data)
        m = _METHOD.match(data) if self.between else None
        if m and m.group(1) not in _PARSED_AS_IS:
            self.method = m.group(1)
            data = b"GET" + data[m.end(1):]
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.transport.write(self.origin.on_upgrade(self.req, data[exc.args[0]:]))
            self.tunnel = True
            self.data_received = self._echo_tunnel
        except httptools.HttpParserError:
            self.transport.close()

    def _late_write(self, data):
        if not self.transport.is_closing():
            self.transport.write(data)

    def _echo_tunnel(self, data):
        self.transport.write(data)

    def on_message_begin(self):
        self.req = Request()
        self.req.conn_id = self.conn_id
        self.between = False

    def on_url(self, url):
        self.req.url += url

    def on_header(self, name, value):
        self.req.headers.append((name, value))

    def on_headers_complete(self):
        self.req.method = self.method or self.parser.get_method()
        self.method = None
        self.req.version = self.parser.get_http_version()
        if self.origin.on_head is not None:
            self.origin.on_head(self.req, self.transport)

    def on_body(self, body):
        self.req.chunks.append(body)  # joined once at the end: big bodies stay linear

    def on_message_complete(self):
        req = self.req
        req.body = b"".join(req.chunks)
        req.chunks = []
        self.between = True
        self.origin.requests.append(req)
        if self.parser.should_upgrade():
            return
        answer = self.origin.handler(req)
        action = "keep"
        if isinstance(answer, tuple):
            answer, action = answer
        if isinstance(action, (int, float)):
            self.origin.loop.call_later(action, self._late_write, answer)
            return
        if answer:
            self.transport.write(answer)
        if action == "close":
            self.transport.close()
        elif action == "reset":
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        elif action == "hang":
            pass


class Origin:
    def __init__(self, handler=echo, on_head=None, tls=None):
        """``tls``: an ssl.SSLContext (server side): the origin speaks HTTPS."""
        self.tls = tls
        self.handler = handler
        self.on_head = on_head
        self.requests: list[Request] = []
        self.raw: list[bytes] = []
        self.lost: list[BaseException | None] = []  # connection_lost's exc, per connection
        self.connections = 0
        self.open = set()
        self.port = None
        self.loop = None
        self._thread = None
        self._ready = threading.Event()
        self._stop = None

    def on_upgrade(self, req, rest: bytes) -> bytes:
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\n" + rest)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("origin did not start")
        return self

    def _run(self):
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main():
            self._stop = loop.create_future()
            server = await loop.create_server(lambda: _OriginProtocol(self), "127.0.0.1", 0,
                                              ssl=self.tls)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop
            server.close()
            for proto in list(self.open):
                proto.transport.abort()

        loop.run_until_complete(main())
        loop.close()

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(10)


def closed_port() -> int:
    """A loopback port nothing listens on (connect is refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
