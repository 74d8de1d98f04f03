"""API composition: one client request fans out to several upstream calls, whose JSON
answers are merged into one object, ``{"user": ..., "orders": ...}``.

A route kind (it answers every request itself). Parts run in parallel through the
gateway's own sub-requests (``ctx.fetch``), so balancing, pools, retries and breakers apply;
a part whose path reads another part's field ("{part.user.id}") waits for that part. A
required part failing fails the whole answer (502 naming it); an optional one becomes null
and its reason goes in the answer's ``errors`` map, so a client can still render the rest.
"""

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import quote

import orjson

from engine.chain.filter import ANSWER, Filter as FilterBase
from engine.chain.schema import REQUIRED, Duration, Size, check_header_name, key
from engine.errors import JSON, Response, error_response
from engine.filters.template import Template
from engine.wire.framing import random_hex

ERRORS = {"part_failed": (502, "a required part of the composed answer failed")}
METRICS = {"aggregate": ("edgeproxy_aggregate_parts_total", "outcome",
                         "Parts of composed answers, by outcome: ok, failed, timeout, "
                         "skipped (a part it depends on failed).")}

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Characters a rendered value keeps as they are in a path or query: unreserved and the
# sub-delims that split nothing here (RFC 3986 §2.2, §3.3), and "%" so a route parameter,
# already percent-encoded on the wire, is not encoded twice.
_SAFE = "-._~%!$'()*+,;:@"


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value) or value == "errors":
        raise ValueError(f'"{value}" is not a part name (letters, digits, _; not "errors", '
                         "which holds the optional parts' failures)")
    return value


def _check_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f'"{value}" must start with "/"')
    Template(value, parts_allowed=True)
    return value


def _check_methods(value: str) -> str:
    if value not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        raise ValueError("parts make requests without a body: GET, HEAD, DELETE or OPTIONS")
    return value


@dataclass(frozen=True)
class Part:
    name: str = key(REQUIRED, "key of this part's answer in the merged object",
                    check=_check_name)
    upstream: str = key(REQUIRED, "upstream the part is fetched from")
    path: str = key(REQUIRED, 'path and query, a template: "/users/{param.id}", '
                              '"/orders?user={part.user.id}" (waits for part "user")',
                    check=_check_path)
    method: str = key("GET", "request method", check=_check_methods)
    timeout: Duration = key(5.0, "longest wait for this part, retries included")
    required: bool = key(True, "a failure fails the whole answer (502); else the part is "
                               "null and its reason is in errors")
    max_body_size: Size = key(1 << 20, "largest answer accepted from this part", min=1)


@dataclass(frozen=True)
class Config:
    parts: tuple[Part, ...] = key(REQUIRED, "the calls whose answers are merged")
    forward_headers: tuple[str, ...] = key(
        ("Authorization", "Cookie", "Accept-Language"),
        "client headers every part gets (the caller's identity); X-Request-ID, traceparent "
        "and X-Forwarded-For always go", check=lambda vs: tuple(check_header_name(v)
                                                               for v in vs))


def check_config(section: Config, route, cfg, path: str, errors: list) -> None:
    """Upstream names exist; part names are distinct; a part depends on earlier ones."""
    upstreams = {u.name for u in cfg.upstreams if u is not None}
    seen: set = set()
    for i, part in enumerate(section.parts):
        if part is None:
            continue
        where = f"{path}.parts[{i}]"
        if part.upstream not in upstreams:
            errors.append((f"{where}.upstream", f'unknown upstream "{part.upstream}"'))
        if part.name in seen:
            errors.append((f"{where}.name", f'duplicate part name "{part.name}"'))
        for dep in Template(part.path, parts_allowed=True).uses_parts:
            if dep not in seen:
                errors.append((f"{where}.path", f'reads part "{dep}", which is not an '
                                                "earlier part"))
        seen.add(part.name)
    if not section.parts:
        errors.append((f"{path}.parts", "needs at least one part"))


class _Failed(Exception):
    """A part that gave no usable answer: why, as the client will read it."""

    def __init__(self, outcome: str, reason: str, status: int | None = None):
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.status = status


class _CompiledPart:
    __slots__ = ("name", "upstream", "path", "method", "timeout", "required", "max_body",
                 "deps")

    def __init__(self, part: Part):
        self.name = part.name
        self.upstream = part.upstream
        self.path = Template(part.path, parts_allowed=True)
        self.method = part.method.encode()
        self.timeout = part.timeout
        self.required = part.required
        self.max_body = part.max_body_size
        self.deps = tuple(dict.fromkeys(self.path.uses_parts))


class Filter(FilterBase):
    __slots__ = ("parts", "forward", "events")
    PHASE = ANSWER
    SERVER_WIDE = False
    ANSWERS = True

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.parts = [_CompiledPart(p) for p in cfg.parts]
        self.forward = frozenset(h.lower().encode() for h in cfg.forward_headers)
        self.events = build.counter("aggregate")

    def _count(self, outcome: str) -> None:
        self.events[outcome] = self.events.get(outcome, 0) + 1

    def on_request(self, ctx):
        return self._compose(ctx)

    def _headers(self, ctx) -> list:
        headers = [(n, v) for n, v in ctx.headers if n.lower() in self.forward]
        headers.append((b"Accept", JSON))
        headers.append((b"X-Forwarded-For", ctx.client_ip.encode()))
        return headers

    def _trace(self, ctx, headers: list) -> list:
        if ctx.trace_id is None:
            return headers
        # W3C Trace Context §3.2: the same trace, a new parent-id for each call made.
        out = headers + [(b"traceparent", b"00-%s-%s-%s" % (
            ctx.trace_id, random_hex(8), ctx.trace_flags))]
        if ctx.tracestate:
            out.append((b"tracestate", ctx.tracestate))
        return out

    async def _compose(self, ctx):
        headers = self._headers(ctx)
        values: dict = {}
        tasks: dict = {}
        for part in self.parts:
            tasks[part.name] = asyncio.ensure_future(
                self._run(ctx, part, headers, values, tasks))
        try:
            await asyncio.wait(list(tasks.values()))
        except asyncio.CancelledError:
            for task in tasks.values():
                task.cancel()
            raise
        failures: dict = {}
        for part in self.parts:
            exc = tasks[part.name].exception()
            if exc is None:
                self._count("ok")
                continue
            if not isinstance(exc, _Failed):
                raise exc
            self._count(exc.outcome)
            failures[part.name] = exc
        rid = ctx.request_id.decode()
        for part in self.parts:
            exc = failures.get(part.name)
            if exc is not None and part.required:
                details = {"part": part.name, "reason": exc.reason}
                if exc.status is not None:
                    details["part_status"] = exc.status
                return error_response("part_failed", rid, f'required part "{part.name}" '
                                                          f"failed: {exc.reason}",
                                      details=details)
        merged = {part.name: values.get(part.name) for part in self.parts}
        if failures:
            merged["errors"] = {
                name: {"reason": exc.reason, **({"status": exc.status}
                                                if exc.status is not None else {})}
                for name, exc in failures.items()}
        return Response(200, [(b"Content-Type", JSON), (b"Cache-Control", b"no-store")],
                        orjson.dumps(merged))

    async def _run(self, ctx, part: _CompiledPart, headers: list, values: dict, tasks: dict):
        for dep in part.deps:
            try:
                await asyncio.shield(tasks[dep])
            except _Failed:
                raise _Failed("skipped", f'part "{dep}" it depends on failed') from None
        target = _render_target(part.path, ctx, values)
        try:
            resp = await asyncio.wait_for(
                ctx.fetch(part.upstream, part.method, target, self._trace(ctx, headers),
                          None, part.max_body), part.timeout)
        except TimeoutError:
            raise _Failed("timeout", f"no answer within {part.timeout:g}s") from None
        if not 200 <= resp.status < 300:
            reason = f"the upstream answered {resp.status}"
            if resp.body and resp.body.startswith(b'{"error"'):
                try:  # the proxy's own answer (no server, a breaker): say which
                    reason = orjson.loads(resp.body)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    pass
            raise _Failed("failed", reason, resp.status)
        if not resp.body:
            values[part.name] = None
            return
        try:
            values[part.name] = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            raise _Failed("failed", "the answer is not JSON", resp.status) from None


def _render_target(template: Template, ctx, values: dict) -> bytes:
    if template.static is not None:
        return template.static.encode()
    out = []
    for p in template.parts:
        if isinstance(p, str):
            out.append(p)
        else:
            value = p(ctx, values) if hasattr(p, "part") else p(ctx)
            out.append(quote(value, safe=_SAFE))
    return "".join(out).encode("latin-1", "replace")
