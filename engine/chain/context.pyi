from typing import Any
from collections.abc import Awaitable

from engine.errors import Response
from engine.upstream.call import Sink
from engine.upstream.upstream import Server, Upstream

PENDING_LIMIT: int

class BodyTooLarge(Exception): ...

class Stream:
    """The codec seam: the client connection a RequestContext answers on."""

    worker: Any
    listener: Any
    peer_ip: str
    peer_ip_bytes: bytes
    trusted: bool
    scheme: bytes
    closed: bool
    write_paused: bool
    paused: int
    deadline: float
    client_body_timeout: float
    via: bytes | None
    via_field: bytes | None
    front: Any  # engine.chain.front.ListenerFront, or None
    client_cert: Any  # engine.wire.tls.ClientCert (verified by the TLS handshake), or None
    def close(self) -> None: ...
    def abort(self) -> None: ...

class Hooks:
    """Base of a filter's hooks compiled to C (docs/filters.md, "Compiled hooks")."""

    edits_raw: bool
    def on_request(self, ctx: RequestContext) -> Any: ...
    def on_response(self, ctx: RequestContext, resp: Response) -> None: ...
    def on_response_raw(self, ctx: RequestContext, block: bytes) -> bytes: ...

class Chain:
    """A route's compiled filters: each hook's bound methods in the order they run."""

    request: tuple[tuple[int, Any], ...]
    response: tuple[tuple[int, Any], ...]
    response_body: tuple[tuple[int, Any], ...]
    log: tuple[Any, ...]
    filters: tuple[Any, ...]
    response_raw: bool  # every response hook edits field lines as they came (Hooks)
    body_limit: int
    body_buffered: bool
    def __init__(self, filters: list) -> None: ...
    def __len__(self) -> int: ...

class Route:
    """One route pattern: its chain, its upstream, how its path becomes the upstream target."""

    name: str
    pattern: str
    upstream: Upstream | None
    chain: Chain
    def target(self, ctx: RequestContext) -> bytes: ...

class RequestContext(Sink):
    """One request: the whole filter API (``ctx``)."""

    stream: Stream
    rt: Any
    version: str
    keep_alive: bool
    headers: list[tuple[bytes, bytes]]
    host: bytes | None
    connection: list[bytes] | None
    expect_continue: bool
    xff: bytes | None
    via: bytes | None
    forwarded: dict[bytes, bytes] | None
    traceparent: bytes | None
    tracestate: bytes | None
    trace_id: bytes | None
    trace_flags: bytes | None
    client_ip: str
    path: str
    query: bytes
    route: Route | None
    params: dict[str, str] | None
    miss: str | None  # "not_found", "method_not_allowed", "server_options" (OPTIONS *)
    allow: tuple[bytes, ...] | None
    chain: Chain | None
    upstream: Upstream | str | None
    consumer: Any
    vars: dict | None
    finish_upstream: bool
    status: int
    head_sent: bool
    response_complete: bool
    bytes_out: int
    close_after: bool
    error: str | None
    ran: int
    t_start: float
    task: Any
    body_waiter: Any
    body_limit: int
    server: Server | None
    # Set by a response hook (compression): ``feed(chunk) -> bytes`` per body chunk and
    # ``finish() -> bytes`` once at the end; the answer then goes out chunked.
    transform: Any
    response_length: bytes | None  # an upstream answer's Content-Length, seen by hooks
    upstream_status: int  # the status the upstream answered (0: none)
    def read_body(self, limit: int) -> Awaitable[bytes]: ...
    def replace_body(self, body: bytes) -> None: ...
    def fetch(self, upstream: Upstream | str, method: bytes | str, path: bytes | str,
              headers: Any = ..., body: bytes | None = ...,
              max_body: int = ..., host: bytes | None = ...) -> Awaitable[Response]: ...
    def respond(self, resp: Response) -> None: ...
