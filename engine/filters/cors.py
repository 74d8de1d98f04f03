"""CORS at the edge, per the Fetch standard (fetch.spec.whatwg.org §3.2 "CORS protocol").

A preflight (OPTIONS with Origin and Access-Control-Request-Method, Fetch §3.2.2) is answered
here and never proxied: on a route, on a path whose route does not take OPTIONS (the runner
runs that route's chain before its 405) and, from [filters.cors], on paths no route takes.
Every other answer passing back through the filter (the upstream's, or the proxy's own 401,
404, 429, 502, 503) gets Access-Control-Allow-Origin when the origin is allowed, so browser
code can read it; ``Vary: Origin`` whenever the answer depends on the origin.

Origins are matched on the serialized origin (scheme://host[:port], RFC 6454 §6.2), never by
substring: an exact list, ``https://*.example.com`` patterns (one or more labels in front of
the suffix, same scheme and port), ``*``, and ``null`` only when listed.
"""

import re
from dataclasses import dataclass

from engine.chain.filter import CORS, Filter as FilterBase
from engine.chain.schema import REQUIRED, TOKEN_RE, check_header_name, key
from engine.errors import Response, error_response
from engine.filters.fields import add_vary

ERRORS = {
    "cors_forbidden": (403, "the CORS preflight is not allowed for this origin, method or "
                            "headers"),
}

# RFC 6454 §6.2 serialization: scheme "://" host [":" port]; no path, userinfo or query.
_ORIGIN_RE = re.compile(r"^([a-z][a-z0-9+.\-]*)://(\[[0-9a-f:.]+\]|[a-z0-9\-._~%!$&'()+,;=]+)"
                        r"(?::([0-9]{1,5}))?$")
_PATTERN_RE = re.compile(r"^([a-z][a-z0-9+.\-]*)://\*\.([a-z0-9\-]+(?:\.[a-z0-9\-]+)+)"
                         r"(?::([0-9]{1,5}))?$")
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
# Fetch §2.2.1: a CORS-safelisted method needs no Access-Control-Allow-Methods entry.
_SAFELISTED_METHODS = frozenset((b"GET", b"HEAD", b"POST"))
# Upstream CORS fields are replaced by the edge's: two Allow-Origin lines fail the check.
_CORS_FIELDS = frozenset((
    b"access-control-allow-origin", b"access-control-allow-credentials",
    b"access-control-expose-headers", b"access-control-allow-methods",
    b"access-control-allow-headers", b"access-control-max-age",
    b"access-control-allow-private-network"))
_MATCH_CACHE_MAX = 1024


def _origin_parts(text: str):
    """(scheme, host, port) of a serialized origin, the default port left out; else None."""
    m = _ORIGIN_RE.match(text)
    if m is None:
        return None
    scheme, host, port = m.groups()
    if port is not None:
        if int(port) > 65535:
            return None
        if port == _DEFAULT_PORTS.get(scheme):
            port = None
    return scheme, host, port


def _check_origins(values: tuple) -> tuple:
    if not values:
        raise ValueError('needs at least one origin ("https://app.example.com", '
                         '"https://*.example.com", "null" or "*")')
    for v in values:
        if v in ("*", "null"):
            continue
        if v != v.lower():
            raise ValueError(f'"{v}": origins are lowercase (browsers serialize them so)')
        if v.endswith("/") or v.count("/") > 2:
            raise ValueError(f'"{v}" has a path; an origin is scheme://host[:port]')
        if "*" in v:
            if _PATTERN_RE.match(v) is None:
                raise ValueError(f'"{v}": a wildcard is "scheme://*.domain.tld[:port]", the '
                                 '"*." leading a host of at least two labels')
        elif _origin_parts(v) is None:
            raise ValueError(f'"{v}" is not an origin (scheme://host[:port])')
    if "*" in values and len(values) > 1:
        raise ValueError('"*" allows every origin; list origins or "*", not both')
    return values


def _check_methods(values: tuple) -> tuple:
    for v in values:
        if v != "*" and (not TOKEN_RE.match(v) or v != v.upper()):
            raise ValueError(f'"{v}" is not an uppercase HTTP method token (or "*")')
    return values


def _check_names(values: tuple) -> tuple:
    for v in values:
        if v != "*":
            check_header_name(v)
    return values


@dataclass(frozen=True)
class Config:
    allow_origins: tuple[str, ...] = key(
        REQUIRED, 'origins allowed: "https://app.example.com", "https://*.example.com", '
                  '"null", or "*" (any, without credentials)', check=_check_origins)
    allow_methods: tuple[str, ...] = key(
        ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"),
        'methods a preflight may ask for; "*" answers with the one asked', check=_check_methods)
    allow_headers: tuple[str, ...] = key(
        (), 'request headers a preflight may ask for; "*" answers with those asked (so it '
            "also works with credentials and Authorization)", check=_check_names)
    expose_headers: tuple[str, ...] = key(
        (), "response headers browser code may read beyond the safelisted ones",
        check=_check_names)
    allow_credentials: bool = key(False, "let requests carry cookies / HTTP auth "
                                         "(Access-Control-Allow-Credentials: true)")
    max_age: int = key(600, "seconds a browser may cache a preflight answer "
                            "(Access-Control-Max-Age)", min=0, max=86400)
    allow_private_network: bool = key(False, "answer Private Network Access preflights "
                                             "(Access-Control-Allow-Private-Network)")

    def problems(self):
        # Fetch §3.2.5: a credentialed request fails on a literal "*" (Allow-Origin, and
        # Expose-Headers reads "*" as a name), so the config says so instead of the browser.
        if self.allow_credentials and "*" in self.allow_origins:
            yield ("allow_origins", '"*" cannot be used with allow_credentials = true: list '
                                    'the origins (or "https://*.example.com" patterns)')
        if self.allow_credentials and "*" in self.expose_headers:
            yield ("expose_headers", '"*" is read as a header name on credentialed '
                                     "requests: list the headers")


class _Origins:
    """The allowed-origin set compiled for matching Origin field values (bytes)."""

    __slots__ = ("any", "null", "exact", "patterns", "cache")

    def __init__(self, values: tuple):
        self.any = "*" in values
        self.null = "null" in values
        self.exact = set()
        self.patterns = []
        for v in values:
            m = _PATTERN_RE.match(v)
            if m is not None:
                scheme, suffix, port = m.groups()
                if port == _DEFAULT_PORTS.get(scheme):
                    port = None
                self.patterns.append((scheme, "." + suffix, port))
            elif v not in ("*", "null"):
                self.exact.add(_origin_parts(v))
        self.cache: dict[bytes, bool] = {}

    def allows(self, origin: bytes) -> bool:
        hit = self.cache.get(origin)
        if hit is None:
            hit = self._match(origin)
            if len(self.cache) >= _MATCH_CACHE_MAX:
                self.cache.clear()
            self.cache[origin] = hit
        return hit

    def _match(self, origin: bytes) -> bool:
        if origin == b"null":
            return self.null  # opaque origins (sandboxes, file:) only when listed
        try:
            parts = _origin_parts(origin.decode("ascii").lower())
        except UnicodeDecodeError:
            return False
        if parts is None:
            return False
        if self.any or parts in self.exact:
            return True
        scheme, host, port = parts
        for p_scheme, suffix, p_port in self.patterns:
            if (scheme == p_scheme and port == p_port and host.endswith(suffix)
                    and len(host) > len(suffix)):
                return True
        return False


def _request_fields(ctx):
    """(Origin, Access-Control-Request-Method, -Headers, -Private-Network) of the request;
    Origin is None when absent or repeated (a request has one origin, Fetch §3.1)."""
    origin = method = headers = private = None
    origins = 0
    for name, value in ctx.headers:
        if len(name) < 6:
            continue
        lname = name.lower()
        if lname == b"origin":
            origins += 1
            origin = value.strip()
        elif lname == b"access-control-request-method":
            method = value.strip()
        elif lname == b"access-control-request-headers":
            headers = value if headers is None else headers + b"," + value
        elif lname == b"access-control-request-private-network":
            private = value.strip().lower()
    return (origin if origins == 1 else None), method, headers, private


class Filter(FilterBase):
    __slots__ = ("origins", "methods", "methods_value", "reflect_methods", "headers",
                 "headers_value", "reflect_headers", "expose", "credentials", "max_age",
                 "private_network", "vary", "literal_star")
    PHASE = CORS

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.origins = _Origins(cfg.allow_origins)
        self.reflect_methods = "*" in cfg.allow_methods
        self.methods = frozenset(m.encode() for m in cfg.allow_methods)
        self.methods_value = ", ".join(cfg.allow_methods).encode()
        self.reflect_headers = "*" in cfg.allow_headers
        self.headers = frozenset(h.lower().encode() for h in cfg.allow_headers)
        self.headers_value = ", ".join(cfg.allow_headers).encode()
        self.expose = ", ".join(cfg.expose_headers).encode()
        self.credentials = cfg.allow_credentials
        self.max_age = str(cfg.max_age).encode()
        self.private_network = cfg.allow_private_network
        # "*" without credentials answers every origin alike; otherwise the answer names
        # the origin, so caches must key on it (Fetch §3.2.5 "CORS protocol and HTTP caches").
        self.literal_star = self.origins.any and not self.credentials
        self.vary = not self.literal_star

    def on_request(self, ctx):
        if ctx.method != b"OPTIONS":
            return None
        origin, method, asked, private = _request_fields(ctx)
        if origin is None or method is None:
            return None  # not a preflight: an OPTIONS request like any other
        if ctx.vars is None:
            ctx.vars = {}
        ctx.vars["cors"] = True  # answered here: on_response leaves it alone
        rid = ctx.request_id.decode()
        if not self.origins.allows(origin):
            return error_response("cors_forbidden", rid,
                                  f"origin {origin.decode('latin-1')} is not allowed")
        if not (self.reflect_methods or method in self.methods
                or method in _SAFELISTED_METHODS):
            return error_response("cors_forbidden", rid,
                                  f"method {method.decode('latin-1')} is not allowed")
        if asked is not None and not self.reflect_headers:
            for name in asked.split(b","):
                name = name.strip().lower()
                if name and name not in self.headers:
                    return error_response("cors_forbidden", rid,
                                          f"header {name.decode('latin-1')} is not allowed")
        if private == b"true" and not self.private_network:
            return error_response("cors_forbidden", rid, "private network access is not "
                                                         "allowed")
        # Fetch §3.2.3: an ok status with the allow fields; 204 as no content is sent.
        headers = [(b"Access-Control-Allow-Origin",
                    b"*" if self.literal_star else origin)]
        if self.credentials:
            headers.append((b"Access-Control-Allow-Credentials", b"true"))
        headers.append((b"Access-Control-Allow-Methods",
                        method if self.reflect_methods else self.methods_value))
        if self.reflect_headers:
            if asked:
                headers.append((b"Access-Control-Allow-Headers", asked))
        elif self.headers_value:
            headers.append((b"Access-Control-Allow-Headers", self.headers_value))
        headers.append((b"Access-Control-Max-Age", self.max_age))
        if private == b"true":
            headers.append((b"Access-Control-Allow-Private-Network", b"true"))
        if self.vary:
            headers.append((b"Vary", b"Origin"))
        if self.reflect_methods:
            add_vary(headers, b"Access-Control-Request-Method")
        if self.reflect_headers:
            add_vary(headers, b"Access-Control-Request-Headers")
        return Response(204, headers, b"")

    def on_response(self, ctx, resp):
        vars_ = ctx.vars
        if vars_ is not None and vars_.get("cors"):
            return
        headers = [h for h in resp.headers if h[0].lower() not in _CORS_FIELDS]
        if self.vary:
            add_vary(headers, b"Origin")
        origin = _request_fields(ctx)[0]
        if origin is not None and self.origins.allows(origin):
            headers.append((b"Access-Control-Allow-Origin",
                            b"*" if self.literal_star else origin))
            if self.credentials:
                headers.append((b"Access-Control-Allow-Credentials", b"true"))
            if self.expose:
                headers.append((b"Access-Control-Expose-Headers", self.expose))
        resp.headers = headers
