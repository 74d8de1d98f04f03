"""Filter base class, phase ranks and the chain compiler.

Order comes from each filter's declared PHASE rank, never from config order (STYLE.md rule 11).
Response hooks run in reverse, and only for filters whose request hook ran, so an early answer
(a 401, a 429) still passes back through the filters before it.
"""

# Phase ranks: lower runs first on the request.
CORS = 10
IP_LIMIT = 15
AUTH = 20
ACL = 30
RATE_LIMIT = 40
CACHE = 50
IDEMPOTENCY = 60
TRANSFORM = 70
ANSWER = 90  # filters that always answer (static responses) run last


class Filter:
    """Built once per route from its config section.

    ``on_request(ctx)`` returns None to go on, a Response to answer now, or a coroutine (a
    filter that waits on a store): the exchange awaits it, then goes on the same way with
    its result. Only filters that really wait should return one: a route whose filters all
    answer synchronously makes no task. ``on_response(ctx, resp)`` edits a Response head in
    place. ``shared`` is the snapshot's engine.control.snapshot.Shared: state that outlives
    a reload (``shared.keep(key, factory)``), the Redis store, periodic work.
    """

    __slots__ = ("cfg",)
    PHASE = TRANSFORM
    HAS_RESPONSE_HOOK = False

    def __init__(self, cfg, route_cfg, shared):
        self.cfg = cfg

    def on_request(self, ctx):
        return None

    def on_response(self, ctx, resp):
        pass


def compile_chain(route_cfg, shared) -> tuple[tuple, tuple]:
    """(request filters in phase order, response filters as (index, filter) in reverse)."""
    from engine.filters import FILTERS

    built = [FILTERS[name].Filter(cfg, route_cfg, shared) for name, cfg in route_cfg.sections]
    built.sort(key=lambda f: f.PHASE)
    response = [(i, f) for i, f in enumerate(built) if f.HAS_RESPONSE_HOOK]
    response.reverse()
    return tuple(built), tuple(response)
