"""Request and response transforms: the path by regular expression, query arguments,
headers whose values are templates of request data, JSON and form bodies, status mapping.

This is the one place for templated header values ("{client_ip}", "{claim.sub}"); the
``headers`` filter stays the cheap static one. Bodies are edited only when their type is
JSON (or form data turned into JSON) and they fit ``max_body_size``; anything else goes
through untouched. A request body that does not parse is the client's error (400); a
response body that does not parse is passed on as it came, with a log line, because the
client asked for the upstream's answer and a half-adapted one is worse than none.
"""

import re
import sys
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote_plus

import orjson

from engine.chain.filter import BUFFERED, TRANSFORM, Filter as FilterBase
from engine.chain.schema import REQUIRED, Json, Size, check_regex, key
from engine.errors import error_response
from engine.filters import jsonpointer
from engine.filters.headers import _names, _renames
from engine.filters.template import Template, check_template, header_safe

ERRORS = {
    "body_not_json": (400, "the request body is not valid JSON"),
    "body_not_form": (400, "the request body is not valid form data "
                           "(application/x-www-form-urlencoded, UTF-8)"),
}
METRICS = {"transform": ("edgeproxy_transform_bodies_total", "outcome",
                         "Bodies the transform filter met, by outcome: request_edited, "
                         "request_too_large, request_invalid, response_edited, "
                         "response_too_large, response_not_json.")}

JSON_TYPE = b"application/json"
FORM_TYPE = b"application/x-www-form-urlencoded"


def media_type(headers) -> bytes | None:
    """The Content-Type's type/subtype, lowercase, without parameters (RFC 9110 §8.3.1)."""
    for n, v in headers:
        if n.lower() == b"content-type":
            return v.split(b";", 1)[0].strip().lower()
    return None


def is_json(mtype: bytes | None) -> bool:
    # application/json and the structured syntax suffix "+json" (RFC 6839 §3.1).
    return mtype is not None and (mtype == JSON_TYPE or (mtype.startswith(b"application/")
                                                         and mtype.endswith(b"+json")))


def _template_pairs(values):
    for name, value in values:
        _names((name,))
        check_template(value)
    return values


def _templates(values):
    for _, value in values:
        check_template(value)
    return values


def _pointers(values):
    for v in values:
        jsonpointer.check(v)
    return values


def _pointer_keys(values):
    for name, value in values:
        jsonpointer.check(name)
        if isinstance(value, str):
            check_template(value)
    return values


def _pointer_pairs(values):
    for old, new in values:
        jsonpointer.check(old)
        jsonpointer.check(new)
    return values


def _check_status_map(values):
    for old, new in values:
        if not old.isdigit() or not 100 <= int(old) <= 599:
            raise ValueError(f'"{old}" is not an HTTP status code')
        # 1xx, 204, 205 and 304 answers carry no content (RFC 9110 §15): mapping a body
        # onto one would break the message's framing.
        if not 200 <= new <= 599 or new in (204, 205, 304):
            raise ValueError(f"{new} cannot replace a status that may carry content (use "
                             "200-599, not 204, 205 or 304)")
    return values


@dataclass(frozen=True)
class PathRewrite:
    match: str = key(REQUIRED, "regular expression searched in the request path (Python "
                               "syntax; anchor it with ^ and $)", check=check_regex)
    replace: str = key(REQUIRED, 'the path sent upstream when it matches: "$1" and "${name}" '
                                 "insert captures (nginx/APISIX style)")


@dataclass(frozen=True)
class HeaderOps:
    set: dict[str, str] = key((), "set these headers, replacing any of the same name; values "
                                  "are templates ({client_ip}, {param.id}, {claim.sub}...); "
                                  "a value that renders empty sends no header (as nginx)",
                              check=_template_pairs)
    add: dict[str, str] = key((), "append these headers (templates), keeping existing ones",
                              check=_template_pairs)
    remove: tuple[str, ...] = key((), "remove these headers", check=_names)
    rename: dict[str, str] = key((), "rename headers: old = new", check=_renames)


@dataclass(frozen=True)
class QueryOps:
    set: dict[str, str] = key((), "set these arguments, replacing any of the same name "
                                  "(values are templates)", check=_templates)
    add: dict[str, str] = key((), "append these arguments (templates)", check=_templates)
    remove: tuple[str, ...] = key((), "remove these arguments")
    rename: dict[str, str] = key((), "rename arguments: old = new")


@dataclass(frozen=True)
class BodyOps:
    unwrap: str | None = key(None, 'first, replace the body with the value at this JSON pointer '
                                   '(e.g. "/data"); absent: the body stays',
                             check=jsonpointer.check)
    rename: dict[str, str] = key((), 'move members: "/old/pointer" = "/new/pointer"',
                                 check=_pointer_pairs)
    remove: tuple[str, ...] = key((), "remove the members at these JSON pointers",
                                  check=_pointers)
    set: dict[str, Json] = key((), 'set members, creating parents: "/meta/source" = "edge"; '
                                   'a string value is a template; "-" appends to an array',
                               check=_pointer_keys)
    add: dict[str, Json] = key((), "set members only where absent (defaults)",
                               check=_pointer_keys)
    wrap: str | None = key(None, 'last, put the whole body at this JSON pointer of a new '
                                 'object (e.g. "/data")', check=jsonpointer.check)


@dataclass(frozen=True)
class RequestTransform:
    path: PathRewrite | None = key(None, "rewrite the path by regular expression (replaces the "
                                         "route's strip_prefix/rewrite)")
    query: QueryOps | None = key(None, "edit query arguments")
    headers: HeaderOps | None = key(None, "edit request headers (templated values)")
    form_to_json: bool = key(False, "turn an application/x-www-form-urlencoded body into a "
                                    "JSON object (a repeated name becomes an array)")
    body: BodyOps | None = key(None, "edit a JSON body")


@dataclass(frozen=True)
class ResponseTransform:
    status: dict[str, int] = key((), 'map statuses, the proxy\'s own answers included: '
                                     '"404" = 200', check=_check_status_map)
    headers: HeaderOps | None = key(None, "edit response headers (templated values)")
    body: BodyOps | None = key(None, "edit a JSON response body (held back until complete)")


@dataclass(frozen=True)
class Config:
    request: RequestTransform | None = key(None, "edits to the request sent upstream")
    response: ResponseTransform | None = key(None, "edits to the response sent to the client")
    max_body_size: Size = key(1 << 20, "largest body transformed; a larger one (or one of "
                                       "another type) goes through untouched", min=1)


def check_config(section: Config, route, cfg, path: str, errors: list) -> None:
    """The config loader's cross-check: one way to say the upstream path."""
    if section.request is not None and section.request.path is not None and route is not None and (
            route.strip_prefix or route.rewrite):
        errors.append((f"{path}.request.path", "cannot be used with the route's strip_prefix "
                                               "or rewrite: say the upstream path one way"))
    if section.request is not None and section.request.path is not None:
        try:
            _compile_replacement(section.request.path)
        except ValueError as exc:
            errors.append((f"{path}.request.path.replace", str(exc)))


# -- compiled pieces

def _compile_replacement(rewrite: PathRewrite) -> tuple:
    pattern = re.compile(rewrite.match)
    parts: list = []
    pos = 0
    for m in re.finditer(r"\$(\d+)|\$\{(\w+)\}", rewrite.replace):
        parts.append(rewrite.replace[pos:m.start()])
        group = int(m.group(1)) if m.group(1) is not None else m.group(2)
        if (isinstance(group, int) and group > pattern.groups) or (
                isinstance(group, str) and group not in pattern.groupindex):
            raise ValueError(f'"{m.group(0)}" is not a group of "{rewrite.match}"')
        parts.append(group)
        pos = m.end()
    parts.append(rewrite.replace[pos:])
    if not rewrite.replace.startswith("/"):
        raise ValueError(f'"{rewrite.replace}" must start with "/"')
    return pattern, tuple(p for p in parts if p != "")


class _Headers:
    """HeaderOps compiled: names as lowercase bytes, values as templates."""

    __slots__ = ("drop", "rename", "append")

    def __init__(self, ops: HeaderOps):
        self.drop = frozenset(n.lower().encode() for n in ops.remove) | frozenset(
            n.lower().encode() for n, _ in ops.set)
        self.rename = {old.lower().encode(): new.encode() for old, new in ops.rename}
        self.append = [(n.encode(), Template(v)) for n, v in (*ops.set, *ops.add)]

    def apply(self, ctx, headers: list) -> list:
        out = []
        for header in headers:
            lname = header[0].lower()
            if lname in self.drop:
                continue
            new = self.rename.get(lname)
            out.append(header if new is None else (new, header[1]))
        for name, tpl in self.append:
            value = header_safe(tpl.render(ctx))
            if value:
                out.append((name, value))
        return out


class _Query:
    """QueryOps on the raw query: arguments it does not touch keep their exact bytes."""

    __slots__ = ("drop", "rename", "append")

    def __init__(self, ops: QueryOps):
        self.drop = frozenset(ops.remove) | frozenset(n for n, _ in ops.set)
        self.rename = {old: quote(new, safe="") for old, new in ops.rename}
        self.append = [(quote(n, safe=""), Template(v)) for n, v in (*ops.set, *ops.add)]

    def apply(self, ctx) -> bytes:
        out = []
        raw = ctx.query[1:].decode("latin-1") if ctx.query else ""
        for arg in raw.split("&") if raw else ():
            name, eq, value = arg.partition("=")
            plain = unquote_plus(name)
            if plain in self.drop:
                continue
            new = self.rename.get(plain)
            out.append(arg if new is None else new + eq + value)
        for name, tpl in self.append:
            out.append(name + "=" + quote(tpl.render(ctx), safe=""))
        return ("?" + "&".join(out)).encode("latin-1") if out else b""


def _json_value(value):
    """A configured body value: a template for a string, a fresh copy for a container (a
    later edit of the same request must not change the config's object)."""
    if isinstance(value, str):
        tpl = Template(value)
        return lambda ctx: tpl.render(ctx)
    if isinstance(value, (dict, list)):
        frozen = orjson.dumps(value)
        return lambda ctx: orjson.loads(frozen)
    return lambda ctx: value


class BodyEdits:
    """BodyOps compiled to pointer tokens, applied in a fixed order: unwrap, rename,
    remove, set, add, wrap."""

    __slots__ = ("unwrap", "rename", "remove", "set", "add", "wrap")

    def __init__(self, ops: BodyOps):
        parse = jsonpointer.parse
        self.unwrap = parse(ops.unwrap) if ops.unwrap is not None else None
        self.rename = [(parse(a), parse(b)) for a, b in ops.rename]
        self.remove = [parse(p) for p in ops.remove]
        self.set = [(parse(p), _json_value(v)) for p, v in ops.set]
        self.add = [(parse(p), _json_value(v)) for p, v in ops.add]
        self.wrap = parse(ops.wrap) if ops.wrap is not None else None

    def apply(self, doc, ctx):
        if self.unwrap is not None:
            inner = jsonpointer.get(doc, self.unwrap)
            if inner is not jsonpointer.MISSING:
                doc = inner
        for src, dst in self.rename:
            value = jsonpointer.pop(doc, src)
            if value is not jsonpointer.MISSING:
                jsonpointer.put(doc, dst, value)
        for tokens in self.remove:
            jsonpointer.pop(doc, tokens)
        for tokens, value in self.set:
            jsonpointer.put(doc, tokens, value(ctx))
        for tokens, value in self.add:
            if jsonpointer.get(doc, tokens) is jsonpointer.MISSING:
                jsonpointer.put(doc, tokens, value(ctx))
        if self.wrap is not None:
            outer: dict = {}
            jsonpointer.put(outer, self.wrap, doc)
            doc = outer
        return doc


def form_to_json(body: bytes) -> dict:
    """application/x-www-form-urlencoded (WHATWG URL §5.1) as a JSON object. The parse is
    as lenient as WHATWG's ("c" alone is c = ""), but text that is not UTF-8, raw or
    percent-encoded, is a ValueError rather than U+FFFD: JSON made of it would be garbled."""
    doc: dict = {}
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    for name, value in parse_qsl(text, keep_blank_values=True, errors="strict"):
        if name in doc:
            prev = doc[name]
            doc[name] = prev + [value] if isinstance(prev, list) else [prev, value]
        else:
            doc[name] = value
    return doc


class RateLimitedLog:
    """One JSON line on stderr at most every ``period`` seconds, with how many it held back:
    a misbehaving upstream must not flood the log."""

    __slots__ = ("period", "next", "held")

    def __init__(self, period: float = 1.0):
        self.period = period
        self.next = 0.0
        self.held = 0

    def write(self, **line) -> None:
        now = time.monotonic()
        if now < self.next:
            self.held += 1
            return
        self.next = now + self.period
        if self.held:
            line["suppressed"] = self.held
            self.held = 0
        sys.stderr.buffer.write(orjson.dumps({"time": time.time(), **line},
                                             option=orjson.OPT_APPEND_NEWLINE))
        sys.stderr.flush()


# -- the filter

class Filter(FilterBase):
    __slots__ = ("path", "query", "req_headers", "form", "req_body", "status", "resp_headers",
                 "resp_body", "max_body", "too_large", "events", "route", "log")
    PHASE = TRANSFORM

    def __new__(cls, cfg: Config, build):
        # A response body is held back only for a transform that edits it: the chain sees
        # on_response_body (and so buffers) on that subclass alone.
        if cls is Filter and cfg.response is not None and cfg.response.body is not None:
            cls = _ResponseBodyFilter
        return super().__new__(cls)

    def __init__(self, cfg: Config, build):
        from engine.chain.context import BodyTooLarge  # the data plane, not for the schema

        super().__init__(cfg, build)
        req = cfg.request or RequestTransform()
        resp = cfg.response or ResponseTransform()
        self.path = _compile_replacement(req.path) if req.path is not None else None
        self.query = _Query(req.query) if req.query is not None else None
        self.req_headers = _Headers(req.headers) if req.headers is not None else None
        self.form = req.form_to_json
        self.req_body = BodyEdits(req.body) if req.body is not None else None
        self.status = {int(old): new for old, new in resp.status} or None
        self.resp_headers = _Headers(resp.headers) if resp.headers is not None else None
        self.resp_body = BodyEdits(resp.body) if resp.body is not None else None
        self.max_body = cfg.max_body_size
        self.too_large = BodyTooLarge
        self.events = build.counter("transform")
        self.route = build.route
        self.log = RateLimitedLog()

    def _count(self, outcome: str) -> None:
        self.events[outcome] = self.events.get(outcome, 0) + 1

    def on_request(self, ctx):
        if self.path is not None:
            pattern, parts = self.path
            m = pattern.search(ctx.path)
            if m is not None:
                ctx.path = "".join([p if isinstance(p, str) else (m.group(p) or "")
                                    for p in parts])
        if self.query is not None:
            ctx.query = self.query.apply(ctx)
        kind = None
        if (self.req_body is not None or self.form) and (
                ctx.chunked or (ctx.content_length is not None and ctx.content_length > 0)):
            mtype = media_type(ctx.headers)
            if self.form and mtype == FORM_TYPE:
                kind = FORM_TYPE
            elif self.req_body is not None and is_json(mtype):
                kind = JSON_TYPE
        if self.req_headers is not None:
            ctx.headers = self.req_headers.apply(ctx, ctx.headers)
        if kind is not None:
            return self._edit_request_body(ctx, kind)
        return None

    async def _edit_request_body(self, ctx, kind: bytes):
        try:
            body = await ctx.read_body(self.max_body)
        except self.too_large:
            self._count("request_too_large")
            return None  # streams on untouched (what has arrived goes first)
        rid = ctx.request_id.decode()
        if kind == FORM_TYPE:
            try:
                doc = form_to_json(body)
            except ValueError:
                self._count("request_invalid")
                return error_response("body_not_form", rid)
            ctx.headers = [h for h in ctx.headers if h[0].lower() != b"content-type"]
            ctx.headers.append((b"Content-Type", JSON_TYPE))
        else:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                self._count("request_invalid")
                return error_response("body_not_json", rid, f"the request body is not valid "
                                                            f"JSON: {exc}")
        if self.req_body is not None:
            doc = self.req_body.apply(doc, ctx)
        ctx.replace_body(orjson.dumps(doc))
        self._count("request_edited")
        return None

    def on_response(self, ctx, resp):
        if self.status is not None:
            resp.status = self.status.get(resp.status, resp.status)
        if self.resp_headers is not None:
            resp.headers = self.resp_headers.apply(ctx, resp.headers)
        if self.resp_body is not None and is_json(media_type(resp.headers)) and all(
                n.lower() != b"content-encoding" or v.strip().lower() == b"identity"
                for n, v in resp.headers):
            # A compressed body is not JSON text: it goes through untouched.
            if ctx.vars is None:
                ctx.vars = {}
            ctx.vars[self] = True  # (keyed by the filter: a version's transform has its own)


class _ResponseBodyFilter(Filter):
    __slots__ = ("RESPONSE_BODY",)

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.RESPONSE_BODY = (BUFFERED, cfg.max_body_size)

    def on_response_body(self, ctx, body):
        if ctx.vars is None or not ctx.vars.get(self):
            return None
        if body is None:
            return None  # over max_body_size (or none): it went through untouched
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self._count("response_not_json")
            self.log.write(event="transform_response_not_json", route=self.route,
                           request_id=ctx.request_id.decode(), reason=str(exc))
            return None
        self._count("response_edited")
        return orjson.dumps(self.resp_body.apply(doc, ctx))
