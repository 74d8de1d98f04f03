from asyncio import Task

from engine.http.messages import Response
from engine.http.protocol import ClientProtocol
from engine.upstream.connection import UpstreamConnection
from engine.upstream.upstream import Server, Upstream

PENDING_LIMIT: int
CHUNK_END: bytes
CONTINUE: bytes
IDEMPOTENT: frozenset[bytes]
RESPONSE_KINDS: dict[bytes, int]

class Exchange:
    """One request/response exchange: the ``ctx`` filters receive."""

    proto: ClientProtocol
    rt: object
    method: bytes
    url: bytes
    version: str
    keep_alive: bool
    headers: list[tuple[bytes, bytes]]
    host: bytes | None
    host_count: int
    content_length: int | None
    te: bytes | None
    chunked: bool
    connection: list[bytes] | None
    expect: bytes | None
    upgrade: bytes | None
    xff: bytes | None
    forwarded: dict[bytes, bytes] | None
    request_id: bytes
    client_ip: str
    path: str
    query: bytes
    route: object
    params: dict[str, str] | None
    upstream: Upstream | None
    server: Server | None
    conn: UpstreamConnection | None
    pending: list[bytes] | None
    pending_size: int
    body_received: int
    body_done: bool
    body_streamed: bool
    chunked_up: bool
    status: int
    resp_chunked: bool
    upstream_close_delimited: bool
    head_sent: bool
    bytes_out: int
    close_after: bool
    error: str | None
    ran: int
    finished: bool
    t_start: float
    t_upstream: float
    connecting: Task[None] | None
    retried: bool
    tunnel_pending: list[bytes] | None
    header_size: int
    header_count: int
    out: list[bytes] | None
    def __init__(self, proto: ClientProtocol, rt: object) -> None: ...
    def respond(self, resp: Response) -> None: ...
