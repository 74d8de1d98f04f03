"""The filter contract: phase ranks, the Filter base and what a filter is built with.

A filter module (engine/filters/<name>.py) has a fixed shape: ``Config`` (a frozen dataclass
whose fields are schema keys: the module's config section), ``Filter`` (a subclass of the base
below with a PHASE rank), and optionally ``ERRORS`` (catalog entries it answers with),
``METRICS`` (event-counter families it counts) and ``check_config(section, route,
cfg, path, errors)`` (checks against the whole config when it loads). engine/filters/__init__.py lists
the modules; nothing else registers anything.

Order comes from each filter's declared PHASE rank, never from config order (STYLE.md rule 11).
Response hooks run in reverse, and only for filters whose request hook ran (an early answer,
a 401 or a 429, still passes back through the filters before it); an answer made before any
request hook ran (a malformed request, a 413) passes through every response hook.
"""

# Phase ranks: lower runs first on the request.
OBSERVE = 5  # filters that only watch (timing): their response hook runs last, for every answer
CORS = 10
IP_LIMIT = 15
AUTH = 20
ACL = 30
RATE_LIMIT = 40
CACHE = 50
IDEMPOTENCY = 60
TRANSFORM = 70
ANSWER = 90  # filters that always answer (static responses) run last

# Declared response-body needs (``RESPONSE_BODY``), for filters with on_response_body.
STREAM = "stream"  # the body streams to the client; the hook gets a copy when it is complete
BUFFERED = "buffered"  # held until complete; the hook may return a replacement


class Filter:
    """Built once per route (and once for the server-wide chain) from its config section.

    Hooks, each optional; the chain compiler binds only those a class defines, so a hook
    that is absent costs nothing per request:

    - ``on_request(ctx)`` returns None to go on, a Response to answer now, or an awaitable
      (a filter that waits on a store or a sub-request): the runner awaits it, then goes on
      the same way with its result. Only filters that really wait should return one: a
      chain whose hooks all answer synchronously makes no task.
    - ``on_response(ctx, resp)`` edits the answer's head (``resp.status``, ``resp.headers``)
      before it is written, for every answer: upstream, local, error. For a local answer
      ``resp.body`` is the whole body and may be replaced.
    - ``on_response_body(ctx, body)`` gets the whole response body once it is complete (None
      when it was over the declared cap, or had none). Declare ``RESPONSE_BODY = (STREAM,
      max_bytes)`` to read it, or ``(BUFFERED, max_bytes)`` to hold it back and return a
      replacement. One copy serves every filter of the chain.
    - ``on_log(ctx)`` once when the request ends, however it ended.

    ``build`` (engine.control.snapshot.Build) gives the route's and the root config, the
    snapshot's Shared state (``build.keep``, ``build.periodic``, ``build.counter``).
    Per-request state goes in ``ctx.vars`` under the filter's name.
    """

    __slots__ = ("cfg",)
    PHASE = TRANSFORM
    RESPONSE_BODY = None
    SERVER_WIDE = True  # may be set for every route in the top-level [filters] table
    ANSWERS = False  # a route kind: it answers every request itself, so the route needs no upstream

    def __init__(self, cfg, build):
        self.cfg = cfg
