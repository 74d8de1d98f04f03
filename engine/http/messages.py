"""Messages that filters see and produce."""

from http import HTTPStatus


class Response:
    """A response head plus, for answers the proxy makes itself, the whole body.

    For a response streamed from an upstream, ``body`` is None and filters may only edit
    ``status`` and ``headers`` (a list of (name, value) bytes pairs, original case).
    """

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list, body: bytes | None = b""):
        self.status = status
        self.headers = headers
        self.body = body


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


STATUS_LINES: dict[int, bytes] = {
    s: b"HTTP/1.1 %d %s\r\n" % (s, _reason(s)) for s in range(100, 600)
}

