"""The filter registry: config section name -> filter module. The only registry there is.

A filter module has a fixed shape (engine/chain/filter.py): ``Config``, ``Filter``, and
optionally ``ERRORS`` and ``METRICS``. Adding a filter is one module and one line below.
"""

from engine.errors import register as _register_errors
from engine.filters import (
    acl,
    aggregate,
    auth,
    cache,
    compression,
    cors,
    headers,
    idempotency,
    openapi,
    ratelimit,
    response_time,
    security_headers,
    static,
    static_files,
    transform,
    validate,
    versions,
)

FILTERS = {
    "acl": acl,
    "aggregate": aggregate,
    "auth": auth,
    "cache": cache,
    "compression": compression,
    "cors": cors,
    "headers": headers,
    "idempotency": idempotency,
    "openapi": openapi,
    "rate_limit": ratelimit,
    "response_time": response_time,
    "security_headers": security_headers,
    "static": static,
    "static_files": static_files,
    "transform": transform,
    "validate": validate,
    "versions": versions,
}

for _module in FILTERS.values():
    _register_errors(getattr(_module, "ERRORS", {}))
