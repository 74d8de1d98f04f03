from typing import Any
from collections.abc import Awaitable

from engine.errors import Response
from engine.upstream.connection import UpstreamConnection
from engine.upstream.upstream import Server, Upstream

RESPONSE_KINDS: dict[bytes, int]

class Sink:
    """What an UpstreamCall serves: the request and where its answer goes."""

    worker: Any
    method: bytes
    request_id: bytes
    upgrade: bytes | None
    content_length: int | None
    chunked: bool
    pending: list[bytes] | None
    pending_size: int
    body_received: int
    body_done: bool
    protected: bool
    finished: bool
    t_upstream: float
    call: UpstreamCall | None
    tried: list[Server] | None

class UpstreamCall:
    sink: Sink
    upstream: Upstream
    server: Server | None
    conn: UpstreamConnection | None
    connecting: Any
    tries: int
    retry_until: float
    head_sent: bool
    body_streamed: bool
    chunked_up: bool
    close_delimited: bool
    complete: bool
    via: bytes | None
    failure: int

class FetchSink(Sink):
    status: int
    response_headers: list[tuple[bytes, bytes]]
    def abandon(self) -> None: ...
    def wait(self) -> Awaitable[Response]: ...

def fetch(worker: Any, upstream: Upstream, method: bytes, target: bytes,
          headers: list[tuple[bytes, bytes]], body: bytes | None, request_id: bytes,
          max_body: int, host: bytes | None = ...) -> Awaitable[Response]: ...
