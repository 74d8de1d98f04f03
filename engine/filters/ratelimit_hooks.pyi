from collections.abc import Callable

from ext.ratelimit import Limiter

class SingleLimit:
    table: Limiter
    clock: Callable[[], float] | None

    def __init__(self, table: Limiter, keyfn: Callable, cost: int, refuse: object,
                 refused: Callable, keyless: Callable, delay: Callable, limit: bytes, sf: bytes,
                 policy: bytes, classic: bool, ietf: bool) -> None: ...
    def on_request(self, ctx) -> object: ...
    def on_response(self, ctx, resp) -> None: ...
