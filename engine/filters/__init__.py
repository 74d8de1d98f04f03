"""The filter registry: config section name -> filter module. The only registry there is.

A filter module has a fixed shape: ``Config`` (a frozen dataclass built from the route's section
of that name) and ``Filter`` (a chain.filter.Filter subclass with a PHASE rank).
"""

from engine.filters import headers, static
from engine.filters import idempotency
from engine.filters import ratelimit

FILTERS = {
    "headers": headers,
    "idempotency": idempotency,
    "rate_limit": ratelimit,
    "static": static,
}
