from engine.upstream.upstream import Server

class Balancer:
    """Picks one server of an upstream per request; subclasses override ``pick``."""

    servers: list[Server]
    def __init__(self, servers: list[Server]) -> None: ...
    def pick(self, ctx: object) -> Server | None: ...

class RoundRobin(Balancer):
    @property
    def total(self) -> int: ...

BALANCERS: dict[str, type[Balancer]]
