"""A raw HTTP/1.1 client over a real socket, for exact bytes on the wire (every wait bounded)."""

import socket

import httptools


class Response:
    def __init__(self):
        self.status = 0
        self.reason = b""
        self.headers = []
        self.body = b""
        self.complete = False

    def header(self, name: bytes):
        name = name.lower()
        values = [v for n, v in self.headers if n.lower() == name]
        return values[0] if len(values) == 1 else (values or None)

    def json(self):
        import orjson
        return orjson.loads(self.body)


class _Parser:
    def __init__(self, head_only: bool):
        self.resp = Response()
        self.head_only = head_only
        self.done = False
        self.head_done = False
        self.parser = None
        self.body = []
        self.remaining = None  # Content-Length body bytes still to come

    def on_status(self, reason):
        if not self.head_done:
            self.resp.reason += reason

    def on_header(self, name, value):
        if not self.head_done:
            self.resp.headers.append((name, value))

    def on_headers_complete(self):
        self.head_done = True
        status = self.resp.status = self.parser.get_status_code()
        if self.head_only:
            self.done = True
            self.resp.complete = True
        elif status >= 200 and status not in (204, 304):
            cl = self.resp.header(b"content-length")
            if isinstance(cl, bytes) and self.resp.header(b"transfer-encoding") is None:
                self.remaining = int(cl)

    def on_body(self, body):
        self.body.append(body)
        if self.remaining is not None:
            self.remaining -= len(body)
        self.resp.body = b"".join(self.body) if len(self.body) > 1 else body

    def on_message_complete(self):
        self.done = True
        self.resp.complete = True


class Conn:
    """``with Conn(port) as c: c.send(b"GET / ..."); r = c.response()``"""

    def __init__(self, port: int, timeout: float = 5.0, source: str | None = None,
                 tls=None, server_name: str | None = None):
        """``source``: the client address, e.g. "127.0.0.2" (Linux loopback answers all of
        127/8), for a second client as the proxy sees it. ``tls``: an ssl.SSLContext to talk
        TLS with, sending ``server_name`` as SNI."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_name)
        self.buffer = b""
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method="GET", path="/", headers=(), body=b"", host=b"test") -> Response:
        lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), path.encode(), host)]
        lines += [b"%s: %s\r\n" % h for h in headers]
        if body:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        self.send(b"".join(lines) + b"\r\n" + body)
        return self.response(head_only=method == "HEAD")

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def response(self, head_only: bool = False) -> Response:
        """Read one response; raises TimeoutError if it does not complete in time.

        Bytes after the response (pipelined responses) stay buffered for the next call: the
        parser is fed line by line, or exactly the Content-Length body, so it never reads past
        the end of this message.
        """
        p = _Parser(head_only)
        parser = p.parser = httptools.HttpResponseParser(p)
        while True:
            if self.buffer:
                data, self.buffer = self.buffer, b""
                pos = 0
                end = len(data)
                while pos < end and not p.done:
                    if p.remaining is not None:
                        n = pos + min(p.remaining, end - pos)
                    else:
                        nl = data.find(b"\n", pos)
                        n = end if nl < 0 else nl + 1
                    try:
                        parser.feed_data(data[pos:n])
                    except httptools.HttpParserUpgrade as exc:
                        self.buffer = data[pos + exc.args[0]:]
                        p.resp.complete = True
                        return p.resp
                    pos = n
                self.buffer = data[pos:]
                if p.done:
                    return p.resp
            if not self._fill():
                # EOF: a close-delimited body ends here; anything else is truncated.
                if p.head_done and not p.done:
                    te = p.resp.header(b"transfer-encoding")
                    cl = p.resp.header(b"content-length")
                    p.resp.complete = te is None and cl is None
                    return p.resp
                raise ConnectionError("connection closed before a response")

    def read_until_close(self) -> bytes:
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def closed(self, wait: float = 2.0) -> bool:
        """True if the peer closes the connection within ``wait`` seconds (no data left)."""
        self.sock.settimeout(wait)
        try:
            while self._fill():
                pass
            return True
        except TimeoutError:
            return False


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, read until the proxy closes (or ``timeout``)."""
    with Conn(port, timeout) as c:
        c.send(data)
        try:
            return c.read_until_close()
        except TimeoutError:
            return c.buffer
