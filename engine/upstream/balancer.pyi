from ext.hashring import HashRing

from engine.upstream.upstream import Server

MAX_RING_POINTS: int

class Balancer:
    """Picks one server of an upstream per request; subclasses override ``pick``."""

    servers: list[Server]
    def __init__(self, servers: list[Server], cfg: object = None,
                 key: object = None) -> None: ...
    def pick(self, ctx: object, now: float) -> Server | None: ...

class RoundRobin(Balancer):
    @property
    def total(self) -> int: ...

class LeastConn(Balancer): ...
class IpHash(Balancer): ...

class Hash(Balancer):
    @property
    def consistent(self) -> bool: ...
    @property
    def ring(self) -> HashRing | None: ...

class RandomTwo(Balancer):
    def seed(self, n: int) -> None: ...

BALANCERS: dict[str, type[Balancer]]
