"""Keys built from request parts: what a rate limit counts by, what a hash balancer hashes,
whose idempotency records a caller may see.

A key spec is a list of parts, each one of:
  "ip"             the client address (after trusted X-Forwarded-For)
  "route"          the route's name
  "consumer"       the authenticated consumer (``ctx.consumer``), once auth sets it
  "path"           the request path (after normalisation, before rewrite)
  "header:Name"    a request header's value (the first, if repeated)
  "cookie:name"    a cookie from the Cookie header
  "query:name"     a query argument's raw value
A request that lacks any part has no key (``None``): the feature's fallback applies.
"""

from operator import attrgetter
from urllib.parse import parse_qsl

PLAIN = ("ip", "route", "consumer", "path")
NAMED = ("header", "cookie", "query")


def check_key_spec(parts: tuple) -> tuple:
    """Config check: raise ValueError naming the bad part."""
    if not parts:
        raise ValueError("needs at least one key part")
    for part in parts:
        kind, sep, name = part.partition(":")
        if kind in PLAIN and not sep:
            continue
        if kind in NAMED and sep and name:
            continue
        raise ValueError(f'"{part}" is not a key part: use {", ".join(PLAIN)}, or '
                         'header:Name, cookie:name, query:name')
    return parts


def header_value(headers: list, lname: bytes):
    """The first value of a header (``lname`` lowercase), or None."""
    n = len(lname)
    for name, value in headers:
        if len(name) == n and name.lower() == lname:
            return value
    return None


def cookie_value(headers: list, cookie: bytes):
    for name, value in headers:
        if len(name) == 6 and name.lower() == b"cookie":
            for pair in value.split(b";"):
                k, sep, v = pair.strip().partition(b"=")
                if sep and k == cookie:
                    return v
    return None


def query_value(query: bytes, arg: str):
    if not query:
        return None
    for k, v in parse_qsl(query[1:].decode("latin-1"), keep_blank_values=True):
        if k == arg:
            return v
    return None


def _part(part: str):
    kind, _, name = part.partition(":")
    if kind == "ip":
        return lambda ctx: ctx.client_ip
    if kind == "route":
        return lambda ctx: ctx.route.name
    if kind == "consumer":
        return lambda ctx: getattr(ctx, "consumer", None)
    if kind == "path":
        return lambda ctx: ctx.path
    if kind == "header":
        lname = name.lower().encode("latin-1")

        def header(ctx):
            v = header_value(ctx.headers, lname)
            return v.decode("latin-1") if v is not None else None
        return header
    if kind == "cookie":
        bname = name.encode("latin-1")

        def cookie(ctx):
            v = cookie_value(ctx.headers, bname)
            return v.decode("latin-1") if v is not None else None
        return cookie
    if kind == "query":
        return lambda ctx: query_value(ctx.query, name)
    raise ValueError(part)


def compile_key(parts: tuple):
    """``fn(ctx) -> str | None``: the parts joined by "|" (a part's own "|" is escaped so two
    different part lists never join to the same key)."""
    if tuple(parts) == ("ip",):
        return attrgetter("client_ip")  # the common case, already a str: one C call
    getters = [_part(p) for p in parts]
    if len(getters) == 1:
        getter = getters[0]

        def one(ctx):
            v = getter(ctx)
            return None if v is None else str(v)
        return one

    def joined(ctx):
        out = []
        for g in getters:
            v = g(ctx)
            if v is None:
                return None
            out.append(str(v).replace("\\", "\\\\").replace("|", "\\|"))
        return "|".join(out)
    return joined
