from engine.upstream.balancer import Balancer
from engine.upstream.pool import Pool

class Server:
    url: str
    host: str
    port: int
    weight: int
    pool: Pool
    authority: bytes
    def __init__(self, url: str, host: str, port: int, weight: int, pool: Pool) -> None: ...

class Upstream:
    name: str
    servers: list[Server]
    balancer: Balancer
    host_header: bytes | None
    connect_timeout: float
    send_timeout: float
    read_timeout: float
    key: object
    def __init__(self, cfg: object, old_pools: dict, new_pools: dict, shared: object = None,
                 key: object = None) -> None: ...
    def pick(self, ctx: object) -> Server | None: ...
