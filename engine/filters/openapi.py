"""The API's OpenAPI 3.1 document, built from the config and served by the gateway.

A route kind: ``[routes.openapi]`` on a route (its path, e.g. "/openapi.json") answers with
the document of the other routes: paths and methods, path parameters, the validate filter's
query, header and body schemas, version parameters, the auth schemes, rate-limit and
idempotency headers, and the proxy's own error answers. It is built once, when the config
loads. Upstream services' own documents can be merged in under their route prefixes; those
are fetched through the gateway (``ctx.fetch``) and kept for ``merge_ttl``.
"""

import asyncio
import re
import time
from dataclasses import dataclass

import orjson

from engine.chain.filter import ANSWER, Filter as FilterBase
from engine.chain.schema import REQUIRED, Duration, key
from engine.errors import JSON, Response
from engine.filters.transform import RateLimitedLog

OPENAPI = "3.1.0"
_ANY_METHODS = ("get", "post", "put", "patch", "delete")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\*?\}")

# Auth filter sections the document knows how to describe, by section name: other helpers'
# filters may not exist in this build, so their config is read defensively.
_AUTH_SCHEMES = {
    "jwt": lambda cfg: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "key_auth": lambda cfg: {"type": "apiKey", "in": "header",
                             "name": getattr(cfg, "header", None) or "X-API-Key"},
    "basic_auth": lambda cfg: {"type": "http", "scheme": "basic"},
}


def _check_prefix(value: str) -> str:
    if not value.startswith("/") or value.endswith("/") and value != "/":
        raise ValueError(f'"{value}" must start with "/" and not end with one')
    return value


@dataclass(frozen=True)
class Merge:
    upstream: str = key(REQUIRED, "upstream serving its own OpenAPI document")
    path: str = key("/openapi.json", "where that upstream serves it")
    prefix: str = key("/", 'prefix of its paths at the gateway, e.g. "/users"',
                      check=_check_prefix)


@dataclass(frozen=True)
class Config:
    title: str = key("API", "info.title")
    version: str = key("1.0.0", "info.version: the API's version")
    description: str = key("", "info.description")
    servers: tuple[str, ...] = key((), "base URLs clients use (servers[].url)")
    routes: tuple[str, ...] = key((), "routes documented; empty = every route but the "
                                      "document's own")
    merge: tuple[Merge, ...] = key((), "upstream documents merged in under their prefixes")
    merge_ttl: Duration = key(60.0, "how long a fetched upstream document is kept")


def check_config(section: Config, route, cfg, path: str, errors: list) -> None:
    names = {r.name for r in cfg.routes if r is not None}
    for i, name in enumerate(section.routes):
        if name not in names:
            errors.append((f"{path}.routes[{i}]", f'unknown route "{name}"'))
    upstreams = {u.name for u in cfg.upstreams if u is not None}
    for i, m in enumerate(section.merge):
        if m is not None and m.upstream not in upstreams:
            errors.append((f"{path}.merge[{i}].upstream", f'unknown upstream "{m.upstream}"'))


# -- building the document

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["status", "code", "message", "request_id"],
        "properties": {
            "status": {"type": "integer"},
            "code": {"type": "string"},
            "message": {"type": "string"},
            "request_id": {"type": "string"},
        },
        "additionalProperties": True,  # violations, supported versions, the failed part
    }},
}


def _error(description: str, headers: dict | None = None) -> dict:
    out = {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}
    if headers:
        out["headers"] = headers
    return out


def _header(description: str, schema_type: str = "string") -> dict:
    return {"description": description, "schema": {"type": schema_type}}


def _ratelimit_headers(cfg) -> dict:
    out = {}
    if getattr(cfg, "ratelimit_headers", True):
        # draft-ietf-httpapi-ratelimit-headers
        out["RateLimit-Policy"] = _header("the quota policies (draft-ietf-httpapi-ratelimit-"
                                          "headers)")
        out["RateLimit"] = _header("what is left of each policy")
    if getattr(cfg, "x_ratelimit_headers", True):
        out["X-RateLimit-Limit"] = _header("requests allowed in the window", "integer")
        out["X-RateLimit-Remaining"] = _header("requests left in the window", "integer")
        out["X-RateLimit-Reset"] = _header("seconds until the window resets", "integer")
    return out


def _openapi_path(pattern: str) -> str | None:
    # "/users/{id}" is already OpenAPI's template; "{rest*}" is one parameter spanning
    # segments; a bare "*" has no name to describe, so such a pattern is left out.
    if re.search(r"(^|/)\*", pattern):
        return None
    return _PARAM_RE.sub(lambda m: "{" + m.group(1) + "}", pattern)


def _params_from(schema, where: str) -> list:
    if not isinstance(schema, dict):
        return []
    required = set(schema.get("required", ()))
    return [{"name": name, "in": where, "required": name in required, "schema": sub}
            for name, sub in (schema.get("properties") or {}).items()]


def build_document(section: Config, cfg, own_route: str) -> dict:
    """The OpenAPI 3.1 document of ``cfg``'s routes (all but ``own_route``, or those listed)."""
    doc: dict = {"openapi": OPENAPI, "info": {"title": section.title,
                                              "version": section.version}}
    if section.description:
        doc["info"]["description"] = section.description
    if section.servers:
        doc["servers"] = [{"url": u} for u in section.servers]
    paths: dict = {}
    schemes: dict = {}
    wanted = set(section.routes)
    for route in cfg.routes:
        if route is None or (wanted and route.name not in wanted) or (
                not wanted and route.name == own_route):
            continue
        # The sections the route runs: server-wide ones, its own replacing those of its name.
        sections = {**dict(cfg.filters.sections), **dict(route.sections)}
        if "openapi" in sections:
            continue
        methods = [m.lower() for m in route.methods] or list(_ANY_METHODS)
        for pattern in route.paths:
            path = _openapi_path(pattern)
            if path is None:
                continue
            item = paths.setdefault(path, {})
            for method in methods:
                if method in item:
                    continue  # two routes, one path and method: the first is the one matched
                item[method] = _operation(route, sections, method, path, schemes)
    doc["paths"] = paths
    doc["components"] = {"schemas": {"Error": _ERROR_SCHEMA}}
    if schemes:
        doc["components"]["securitySchemes"] = schemes
    return doc


def _operation(route, sections: dict, method: str, path: str, schemes: dict) -> dict:
    op: dict = {"operationId": f"{route.name}_{method}_{_slug(path)}", "tags": [route.name]}
    params: list = []
    versions = sections.get("versions")
    for name in _PARAM_RE.findall(path):
        schema: dict = {"type": "string"}
        if versions is not None and name == versions.path_param:
            schema["enum"] = [v.name for v in versions.supported]
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    responses: dict = {}
    validate = sections.get("validate")
    if validate is not None:
        params += _params_from(validate.query, "query")
        params += [p for p in _params_from(validate.headers, "header")
                   if p["name"].lower() not in ("accept", "content-type", "authorization")]
        rules = [r for r in validate.body if method.upper() in r.methods]
        if rules:
            content: dict = {}
            for r in rules:  # the first rule for a type is the one applied
                for t in r.content_types:
                    content.setdefault(t, {"schema": r.schema})
            op["requestBody"] = {"required": any(r.required for r in rules),
                                 "content": content}
            responses["415"] = _error("the body's content type is not accepted")
        responses["400"] = _error("the request does not match its schema (every violation "
                                  "listed, each with its JSON pointer)")
    if versions is not None:
        if "header" in versions.sources:
            params.append({"name": versions.header, "in": "header", "required": False,
                           "schema": {"type": "string"},
                           "description": "the API version asked for"})
        if "query" in versions.sources:
            params.append({"name": versions.query, "in": "query", "required": False,
                           "schema": {"type": "string"},
                           "description": "the API version asked for"})
        responses["400"] = _error("unknown or missing API version (the supported ones are "
                                  "listed), or a request that does not match its schema")
    idem = sections.get("idempotency")
    if idem is not None and method.upper() in idem.methods:
        params.append({"name": idem.header, "in": "header", "required": idem.required,
                       "schema": {"type": "string", "maxLength": idem.max_length},
                       "description": "makes the request safe to retry: a repeat gets the "
                                      "first answer"})
        responses["409"] = _error("a request with this key is still in progress")
        responses["422"] = _error("this key was used with a different request")
    ok_headers: dict = {}
    limits = sections.get("rate_limit")
    if limits is not None:
        ok_headers = _ratelimit_headers(limits)
        responses["429"] = _error("too many requests", {
            **ok_headers, "Retry-After": _header("seconds to wait", "integer")})
    security = []
    for name, make in _AUTH_SCHEMES.items():
        if name in sections:
            schemes[name] = make(sections[name])
            security.append({name: []})
    if security:
        op["security"] = security
        responses["401"] = _error("missing or invalid credentials")
    if params:
        op["parameters"] = params
    success: dict = {"description": "the upstream's answer"}
    aggregate = sections.get("aggregate")
    if aggregate is not None:
        success = {"description": "the parts' answers merged", "content": {
            "application/json": {"schema": {"type": "object", "properties": {
                **{p.name: {} for p in aggregate.parts},
                "errors": {"type": "object", "description": "why optional parts are null"},
            }}}}}
        responses["502"] = _error("a required part failed (the error names it)")
    if ok_headers:
        success["headers"] = ok_headers
    op["responses"] = {"200": success, **dict(sorted(responses.items())),
                       "default": _error("an error answered by the gateway")}
    return op


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"


# -- merging upstream documents

def _prefixed_refs(node, renames: dict):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v in renames:
                out[k] = renames[v]
            else:
                out[k] = _prefixed_refs(v, renames)
        return out
    if isinstance(node, list):
        return [_prefixed_refs(v, renames) for v in node]
    return node


def merge_document(doc: dict, other: dict, merge: Merge) -> None:
    """Add ``other``'s paths under ``merge.prefix`` and its components, renamed
    "<upstream>.<name>" (with every $ref to them) so two services' "User" stay apart. A
    path the gateway already documents keeps the gateway's description."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", merge.upstream)
    renames = {}
    components = other.get("components") or {}
    for kind, items in components.items():
        if isinstance(items, dict):
            for name in items:
                renames[f"#/components/{kind}/{name}"] = f"#/components/{kind}/{tag}.{name}"
    other = _prefixed_refs(other, renames)
    prefix = "" if merge.prefix == "/" else merge.prefix
    for path, item in (other.get("paths") or {}).items():
        doc["paths"].setdefault(prefix + path, item)
    for kind, items in (other.get("components") or {}).items():
        if isinstance(items, dict):
            target = doc["components"].setdefault(kind, {})
            for name, value in items.items():
                target[f"{tag}.{name}"] = value


class Filter(FilterBase):
    __slots__ = ("doc", "body", "merges", "ttl", "cached", "until", "log")
    PHASE = ANSWER
    SERVER_WIDE = False
    ANSWERS = True

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.doc = build_document(cfg, build.config, build.route)
        self.body = orjson.dumps(self.doc)
        self.merges = cfg.merge
        self.ttl = cfg.merge_ttl
        self.cached = None
        self.until = 0.0
        self.log = RateLimitedLog()

    def on_request(self, ctx):
        if not self.merges or (self.cached is not None and time.monotonic() < self.until):
            return self._answer(self.cached or self.body)
        return self._merged(ctx)

    def _answer(self, body: bytes) -> Response:
        return Response(200, [(b"Content-Type", JSON), (b"Cache-Control", b"no-cache")], body)

    async def _merged(self, ctx):
        answers = await asyncio.gather(*[
            ctx.fetch(m.upstream, "GET", m.path, [(b"Accept", JSON)]) for m in self.merges])
        doc = orjson.loads(self.body)  # a fresh copy to merge into
        complete = True
        for m, resp in zip(self.merges, answers, strict=True):
            try:
                if resp.status != 200:
                    raise ValueError(f"answered {resp.status}")
                other = orjson.loads(resp.body)
                if not isinstance(other, dict) or not str(other.get("openapi", "")).startswith(
                        "3."):
                    raise ValueError("not an OpenAPI 3 document")
            except ValueError as exc:
                # Served without it (and fetched again next time): the gateway's own routes
                # are still worth documenting.
                complete = False
                self.log.write(event="openapi_merge_failed", upstream=m.upstream,
                               reason=str(exc))
                continue
            merge_document(doc, other, m)
        body = orjson.dumps(doc)
        if complete:
            self.cached = body
            self.until = time.monotonic() + self.ttl
        return self._answer(body)
