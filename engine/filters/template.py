"""Values made from request data, for transforms and sub-request paths: "{client_ip}",
"{param.id}", "Bearer {header.X-Token}".

A template is compiled once at load into literal parts and getters; rendering it is a join.
A name with no value (an absent header, a route without that parameter) renders as "",
as an unset nginx variable does. ``{{`` and ``}}`` are literal braces.
"""

import re
import time
from urllib.parse import parse_qsl

_FIELD_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _consumer_name(consumer) -> str:
    # Auth filters set an object, a dict or a plain name: read what is there.
    if consumer is None:
        return ""
    if isinstance(consumer, dict):
        return str(consumer.get("name") or consumer.get("id") or "")
    name = getattr(consumer, "name", None)
    return str(name) if name is not None else str(consumer)


def _claims(ctx) -> dict:
    # The JWT filter keeps verified claims in ctx.vars["auth"]["claims"]; absent otherwise.
    state = ctx.vars.get("auth") if ctx.vars else None
    claims = state.get("claims") if isinstance(state, dict) else None
    return claims if isinstance(claims, dict) else {}


def _rfc3339(_ctx) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # RFC 3339 §5.6, UTC


def _header(name: bytes):
    def get(ctx):
        for n, v in ctx.headers:
            if n.lower() == name:
                return v.decode("latin-1")
        return ""
    return get


def query_arg(query: bytes, name: str) -> str | None:
    """The first value of argument ``name`` in a raw query ("?a=1&b=2"), decoded."""
    for n, v in parse_qsl(query[1:].decode("latin-1"), keep_blank_values=True):
        if n == name:
            return v
    return None


def _query(name: str):
    return lambda ctx: query_arg(ctx.query, name) or ""


def _scalar(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        import orjson
        return orjson.dumps(value).decode()
    return str(value)


def _field(doc, dotted: list[str]):
    for part in dotted:
        if isinstance(doc, dict):
            doc = doc.get(part)
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return None
    return doc


_SIMPLE = {
    "client_ip": lambda ctx: ctx.client_ip,
    "request_id": lambda ctx: ctx.request_id.decode(),
    "method": lambda ctx: ctx.method.decode(),
    "path": lambda ctx: ctx.path,
    "host": lambda ctx: (ctx.host or b"").decode("latin-1"),
    "consumer": lambda ctx: _consumer_name(ctx.consumer),
    "route": lambda ctx: ctx.route.name if ctx.route is not None else "",
    "time": _rfc3339,
    "time_unix": lambda ctx: str(int(time.time())),
    "version": lambda ctx: (ctx.vars or {}).get("version") or "",
}
NAMES = (*_SIMPLE, "param.<name>", "query.<name>", "header.<name>", "claim.<name>")


def _getter(name: str, parts_allowed: bool):
    if name in _SIMPLE:
        return _SIMPLE[name]
    kind, _, rest = name.partition(".")
    if rest:
        if kind == "param":
            return lambda ctx: (ctx.params or {}).get(rest, "")
        if kind == "header":
            return _header(rest.lower().encode("latin-1"))
        if kind == "query":
            return _query(rest)
        if kind == "claim":
            dotted = rest.split(".")
            return lambda ctx: _scalar(_field(_claims(ctx), dotted))
        if kind == "part" and parts_allowed:
            part, _, field = rest.partition(".")
            dotted = field.split(".") if field else []
            def getter(ctx, parts):
                return _scalar(_field(parts.get(part), dotted))
            getter.part = part  # what the aggregate's dependency order reads
            return getter
    allowed = list(NAMES) + (["part.<name>.<field>"] if parts_allowed else [])
    raise ValueError(f'unknown template name "{{{name}}}" (one of: '
                     + ", ".join("{" + n + "}" for n in allowed) + ")")


class Template:
    """A compiled template: ``render(ctx)`` gives the text."""

    __slots__ = ("parts", "static", "uses_parts")

    def __init__(self, text: str, parts_allowed: bool = False):
        parts = []
        self.uses_parts = []  # names of aggregate parts this template reads
        pos = 0
        for m in _FIELD_RE.finditer(text):
            if m.start() > pos:
                parts.append(text[pos:m.start()])
            token = m.group(0)
            if token in ("{{", "}}"):
                parts.append(token[0])
            elif m.group(1) is None:
                raise ValueError(f'unbalanced "{token}" in template "{text}" (write '
                                 f'"{token}{token}" for a literal brace)')
            else:
                getter = _getter(m.group(1).strip(), parts_allowed)
                if hasattr(getter, "part"):
                    self.uses_parts.append(getter.part)
                parts.append(getter)
            pos = m.end()
        if pos < len(text):
            parts.append(text[pos:])
        merged = []
        for p in parts:  # adjacent literals as one
            if merged and isinstance(p, str) and isinstance(merged[-1], str):
                merged[-1] += p
            else:
                merged.append(p)
        self.parts = tuple(merged)
        self.static = "".join(merged) if all(isinstance(p, str) for p in merged) else None

    def render(self, ctx, parts: dict | None = None) -> str:
        if self.static is not None:
            return self.static
        out = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
            elif hasattr(p, "part"):
                out.append(p(ctx, parts or {}))
            else:
                out.append(p(ctx))
        return "".join(out)


def check_template(text: str) -> str:
    """A schema ``check``: the template compiles (ValueError names the problem)."""
    Template(text)
    return text


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_safe(value: str) -> bytes:
    # Request data rendered into a field value must not split it (RFC 9110 §5.5: no CR, LF
    # or NUL in a field value); other controls go too.
    return _CONTROL.sub("", value).encode("latin-1", "replace")
