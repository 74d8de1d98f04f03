"""The catalog of every response the proxy itself produces, and the Response type filters
see and make.

Each answer is JSON: {"error": {"status", "code", "message", "request_id"}} (DESIGN.md). The data
plane looks an error up here by code and returns it; it never formats its own.
"""

import orjson

from engine.wire.message import Response  # the type filters make and edit: a C type

# code -> (status, default message): the proxy's own answers; filter modules add theirs
# (their ERRORS) when the registry loads them.
CATALOG: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the request is malformed"),
    "bad_framing": (400, "the request's message framing is ambiguous or invalid"),
    "bad_host": (400, "the request must carry exactly one valid Host header"),
    "bad_target": (400, "the request target is invalid"),
    "request_timeout": (408, "the client did not send the request in time"),
    "not_found": (404, "no route matches this request"),
    "method_not_allowed": (405, "the route does not accept this method"),
    "body_too_large": (413, "the request body exceeds the route's limit"),
    "uri_too_long": (414, "the request line is too long"),
    "expectation_failed": (417, "the only expectation the proxy meets is 100-continue"),
    "headers_too_large": (431, "the request header section is too large"),
    "not_implemented": (501, "the request uses a transfer coding the proxy does not implement"),
    "version_not_supported": (505, "only HTTP/1.0 and HTTP/1.1 are supported"),
    "internal_error": (500, "the proxy failed while handling the request"),
    "bad_gateway": (502, "the upstream server failed or sent an invalid response"),
    "upstream_unavailable": (503, "no upstream server is available"),
    "gateway_timeout": (504, "the upstream server did not answer in time"),
    "store_unavailable": (503, "the state store this route depends on is unavailable"),
}

JSON = b"application/json"


def register(codes: dict) -> None:
    """Add a filter module's ERRORS (engine/filters/__init__.py calls this once per module)."""
    for code, entry in codes.items():
        if CATALOG.get(code, entry) != entry:
            raise ValueError(f'error code "{code}" is registered twice, differently')
        CATALOG[code] = entry


class StreamResponse(Response):
    """A local answer whose body is read as the client takes it (static files), never held
    whole: ``source.read(n)`` gives up to n next bytes, b"" at the end (None or OSError: it
    failed, the connection is dropped); ``source.close()`` is called once, however it ended.
    ``length`` is the body's size (Content-Length, unless a response hook re-encodes it)."""

    __slots__ = ("source", "length")

    def __init__(self, status: int, headers: list, source, length: int):
        super().__init__(status, headers, None)
        self.source = source
        self.length = length


def error_response(code: str, request_id: str, message: str | None = None,
                   headers: list | None = None, details: dict | None = None) -> Response:
    """The catalog's answer for ``code``; ``details`` adds fields to the error object (the
    violations of a failed validation, the part of a composition that failed)."""
    status, default = CATALOG[code]
    error = {
        "status": status,
        "code": code,
        "message": message or default,
        "request_id": request_id,
    }
    if details:
        error.update(details)
    body = orjson.dumps({"error": error})
    hdrs = [(b"Content-Type", JSON)]
    if headers:
        hdrs.extend(headers)
    return Response(status, hdrs, body)
