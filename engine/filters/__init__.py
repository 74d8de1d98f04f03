"""The filter registry: config section name -> filter module. The only registry there is.

A filter module has a fixed shape (engine/chain/filter.py): ``Config``, ``Filter``, and
optionally ``ERRORS`` and ``METRICS``. Adding a filter is one module and one line below.
"""

from engine.errors import register as _register_errors
from engine.filters import cache, headers, idempotency, ratelimit, response_time, static

FILTERS = {
    "cache": cache,
    "headers": headers,
    "idempotency": idempotency,
    "rate_limit": ratelimit,
    "response_time": response_time,
    "static": static,
}

for _module in FILTERS.values():
    _register_errors(getattr(_module, "ERRORS", {}))
