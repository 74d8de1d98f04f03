"""Request validation against JSON Schema (draft 2020-12): the body per method and content
type, query arguments and headers. Every violation comes back in one 400, each with where
it is (``location`` and a JSON pointer, RFC 6901), so a client fixes its request in one go
rather than one error per round trip (AWS API Gateway's request validator stops at one).

Schemas are compiled once, when the config loads (jsonschema-rs); a bad schema is a config
error naming its key path. Query and header values arrive as text: a value whose schema asks
for an integer, number or boolean is read as one first, as OpenAPI's parameter style does.
"""

from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson

from engine.chain.filter import CACHE, Filter as FilterBase
from engine.chain.schema import REQUIRED, Json, Size, check_methods, key
from engine.errors import error_response
from engine.filters.transform import FORM_TYPE, is_json, media_type

ERRORS = {
    "validation_failed": (400, "the request does not match the route's schema"),
    "unsupported_media_type": (415, "the route does not accept a body of this content type"),
}
METRICS = {"validate": ("edgeproxy_validation_total", "outcome",
                        "Requests the validate filter judged, by outcome: valid, invalid, "
                        "unsupported_type, too_large.")}

MAX_VIOLATIONS = 100  # enough to fix a request; bounded so a huge bad array stays cheap


def _no_remote(uri: str):
    # A gateway must not fetch schemas over the network while loading its config.
    raise ValueError(f'"{uri}" is not in the schema; remote $ref is not fetched')


def compile_schema(schema):
    """A compiled draft 2020-12 validator; ValueError naming where the schema is wrong."""
    import jsonschema_rs

    if not isinstance(schema, (dict, bool)):
        raise ValueError("a JSON Schema is a table (or true/false)")
    try:
        return jsonschema_rs.Draft202012Validator(schema, validate_formats=True,
                                                  retriever=_no_remote)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError) as exc:
        where = "/" + "/".join(map(str, getattr(exc, "instance_path", ()) or ()))
        first = str(getattr(exc, "message", None) or exc).splitlines()[0]
        raise ValueError(f"invalid JSON Schema (draft 2020-12) at {where}: {first}") from None


def _check_schema(schema):
    compile_schema(schema)
    return schema


def _check_params_schema(schema):
    compile_schema(schema)
    if (not isinstance(schema, dict) or schema.get("type", "object") != "object"
            or not isinstance(schema.get("properties", {}), dict)):
        raise ValueError("describe the arguments as an object schema: properties = {...}, "
                         "required = [...]")
    return schema


def _check_media_types(values):
    for v in values:
        if v.count("/") != 1 or ";" in v or v != v.strip().lower():
            raise ValueError(f'"{v}" is not a lowercase media type "type/subtype" (no '
                             "parameters)")
    return values


@dataclass(frozen=True)
class BodyRule:
    schema: Json = key(REQUIRED, "JSON Schema (draft 2020-12) the body must match",
                       check=_check_schema)
    methods: tuple[str, ...] = key(("POST", "PUT", "PATCH"), "methods this rule applies to",
                                   check=check_methods)
    content_types: tuple[str, ...] = key(("application/json",),
                                         "media types it applies to; form data "
                                         '("application/x-www-form-urlencoded") is checked '
                                         "as a JSON object of strings", check=_check_media_types)
    required: bool = key(True, "a request of these methods without a body is a violation")


@dataclass(frozen=True)
class Config:
    body: tuple[BodyRule, ...] = key((), "body schemas: the first rule whose methods and "
                                         "content types match applies; a body of a type no "
                                         "rule of its method takes gets 415")
    query: Json | None = key(None, "JSON Schema of the query arguments, as an object: "
                                   "properties = {limit = {type = \"integer\"}}, required = "
                                   "[...]", check=_check_params_schema)
    headers: Json | None = key(None, "JSON Schema of the headers, as an object (names are "
                                     "matched case-insensitively)",
                               check=_check_params_schema)
    max_body_size: Size = key(1 << 20, "largest body validated; a larger one gets 413 (it "
                                       "cannot be checked)", min=1)


_READERS = {
    "integer": lambda s: int(s, 10),
    "number": float,
    "boolean": lambda s: {"true": True, "false": False}[s],
}


def _reader(prop_schema):
    """How a text value becomes what its schema asks for (None: stays text)."""
    if not isinstance(prop_schema, dict):
        return None, False
    kind = prop_schema.get("type")
    many = kind == "array"
    if many:
        items = prop_schema.get("items")
        kind = items.get("type") if isinstance(items, dict) else None
    kinds = kind if isinstance(kind, list) else [kind]
    for k in ("integer", "number", "boolean"):
        if k in kinds:
            return _READERS[k], many
    return None, many


def _read(reader, text: str):
    if reader is None:
        return text
    try:
        return reader(text)
    except (ValueError, KeyError):
        return text  # the schema reports the wrong type, with the value as sent


class _Params:
    """An object schema over text arguments (query or headers)."""

    __slots__ = ("validator", "readers", "lower")

    def __init__(self, schema: dict, lower: bool):
        if lower:
            schema = dict(schema)
            schema["properties"] = {n.lower(): s
                                    for n, s in (schema.get("properties") or {}).items()}
            if "required" in schema:
                schema["required"] = [n.lower() for n in schema["required"]]
        self.lower = lower
        self.validator = compile_schema(schema)
        self.readers = {n: _reader(s) for n, s in (schema.get("properties") or {}).items()}

    def document(self, pairs) -> dict:
        doc: dict = {}
        for name, value in pairs:
            if self.lower:
                name = name.lower()
            reader, many = self.readers.get(name, (None, False))
            value = _read(reader, value)
            if many:
                doc.setdefault(name, []).append(value)
            elif name not in doc:  # a repeated single value: the first counts
                doc[name] = value
        return doc


def _violations(validator, doc, location: str, out: list) -> None:
    for error in validator.iter_errors(doc):
        if len(out) >= MAX_VIOLATIONS:
            return
        pointer = "".join("/" + str(p).replace("~", "~0").replace("/", "~1")
                          for p in error.instance_path)
        out.append({"location": location, "pointer": pointer, "message": error.message})


class _Rule:
    __slots__ = ("validator", "methods", "types", "required", "form")

    def __init__(self, rule: BodyRule):
        self.validator = compile_schema(rule.schema)
        self.methods = frozenset(m.encode() for m in rule.methods)
        self.types = frozenset(t.encode() for t in rule.content_types)
        self.required = rule.required
        self.form = _Params(rule.schema, False) if (
            FORM_TYPE.decode() in rule.content_types and isinstance(rule.schema, dict)) else None


class Filter(FilterBase):
    __slots__ = ("rules", "query", "headers", "max_body", "too_large", "events")
    # After rate limits (an invalid flood still counts against its quota), before an
    # idempotency key is claimed for a request that will be refused anyway.
    PHASE = CACHE

    def __init__(self, cfg: Config, build):
        from engine.chain.context import BodyTooLarge  # the data plane, not for the schema

        super().__init__(cfg, build)
        self.rules = [_Rule(r) for r in cfg.body]
        self.query = _Params(cfg.query, False) if cfg.query is not None else None
        self.headers = _Params(cfg.headers, True) if cfg.headers is not None else None
        self.max_body = cfg.max_body_size
        self.too_large = BodyTooLarge
        self.events = build.counter("validate")

    def _count(self, outcome: str) -> None:
        self.events[outcome] = self.events.get(outcome, 0) + 1

    def on_request(self, ctx):
        if ctx.route is None:
            return None  # (server-wide, a request no route takes): its 404 says more
        found: list = []
        if self.query is not None:
            args = parse_qsl(ctx.query[1:].decode("latin-1"), keep_blank_values=True)
            _violations(self.query.validator, self.query.document(args), "query", found)
        if self.headers is not None:
            pairs = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in ctx.headers]
            _violations(self.headers.validator, self.headers.document(pairs), "headers", found)
        rules = [r for r in self.rules if ctx.method in r.methods]
        if rules:
            if not (ctx.chunked or ctx.content_length):
                if any(r.required for r in rules):
                    found.append({"location": "body", "pointer": "",
                                  "message": "a body is required"})
                return self._verdict(ctx, found)
            mtype = media_type(ctx.headers)
            for rule in rules:
                if mtype in rule.types:
                    return self._check_body(ctx, rule, mtype, found)
            self._count("unsupported_type")
            accepted = ", ".join(sorted({t.decode() for r in rules for t in r.types}))
            # RFC 9110 §15.5.16: 415 for a content type the resource does not take.
            return error_response("unsupported_media_type", ctx.request_id.decode(),
                                  f"this route takes {accepted} bodies, not "
                                  f"{(mtype or b'none').decode('latin-1')}")
        return self._verdict(ctx, found)

    async def _check_body(self, ctx, rule: _Rule, mtype: bytes, found: list):
        try:
            body = await ctx.read_body(self.max_body)
        except self.too_large:
            self._count("too_large")
            return error_response("body_too_large", ctx.request_id.decode(),
                                  f"the body is over {self.max_body} bytes, the most this "
                                  "route validates")
        try:
            if mtype == FORM_TYPE and rule.form is not None:
                text = body.decode("utf-8")
                doc = rule.form.document(parse_qsl(text, keep_blank_values=True,
                                                   errors="strict"))
            elif is_json(mtype):
                doc = orjson.loads(body)
            else:
                doc = body.decode("utf-8")  # a non-JSON type with a schema: a string
        except ValueError as exc:
            found.append({"location": "body", "pointer": "", "message": f"not parseable as "
                                                                        f"{mtype.decode()}: "
                                                                        f"{exc}"})
            return self._verdict(ctx, found)
        _violations(rule.validator, doc, "body", found)
        return self._verdict(ctx, found)

    def _verdict(self, ctx, found: list):
        if not found:
            self._count("valid")
            return None
        self._count("invalid")
        return error_response("validation_failed", ctx.request_id.decode(),
                              f"the request does not match the route's schema "
                              f"({len(found)} violation{'s' if len(found) > 1 else ''})",
                              details={"violations": found})
