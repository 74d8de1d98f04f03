"""The catalog of every response the proxy itself produces.

Each answer is JSON: {"error": {"status", "code", "message", "request_id"}} (DESIGN.md). The data
plane looks an error up here by code and returns it; it never formats its own.
"""

import orjson

from engine.http.messages import Response

# code -> (status, default message)
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
    "rate_limited": (429, "the request exceeds the route's rate limit"),
    "quota_exceeded": (429, "the request exceeds the caller's quota"),
    "too_many_connections": (429, "the caller has too many requests in flight"),
    "headers_too_large": (431, "the request header section is too large"),
    "not_implemented": (501, "the request uses a transfer coding the proxy does not implement"),
    "version_not_supported": (505, "only HTTP/1.0 and HTTP/1.1 are supported"),
    "internal_error": (500, "the proxy failed while handling the request"),
    "bad_gateway": (502, "the upstream server failed or sent an invalid response"),
    "upstream_unavailable": (503, "no upstream server is available"),
    "gateway_timeout": (504, "the upstream server did not answer in time"),
    "idempotency_key_missing": (400, "this route requires an Idempotency-Key header"),
    "idempotency_key_invalid": (400, "the Idempotency-Key header is malformed"),
    "idempotency_conflict": (409, "a request with this Idempotency-Key is still in progress"),
    "idempotency_mismatch": (422, "this Idempotency-Key was already used for a different request"),
    "store_unavailable": (503, "the state store this route depends on is unavailable"),
}

JSON = b"application/json"


def error_response(code: str, request_id: str, message: str | None = None,
                   headers: list | None = None) -> Response:
    status, default = CATALOG[code]
    body = orjson.dumps({"error": {
        "status": status,
        "code": code,
        "message": message or default,
        "request_id": request_id,
    }})
    hdrs = [(b"Content-Type", JSON)]
    if headers:
        hdrs.extend(headers)
    return Response(status, hdrs, body)
