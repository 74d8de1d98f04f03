"""Request and response header transforms: set, add, remove, rename.

Framing and hop-by-hop fields belong to the proxy and cannot be edited here; the Host sent
upstream is set with the upstream's ``host`` key.
"""

from dataclasses import dataclass

from engine.chain.filter import TRANSFORM, Filter as FilterBase
from engine.chain.schema import check_header_name, check_header_value, key
from engine.wire.framing import HOP_BY_HOP

# Set by the proxy itself (framing, forwarding, correlation): a transform would duplicate them.
_RESERVED = HOP_BY_HOP | {
    b"content-length", b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-real-ip", b"x-request-id", b"traceparent", b"tracestate",
}


def _names(values):
    for v in values:
        check_header_name(v)
        if v.lower().encode() in _RESERVED:
            raise ValueError(f'"{v}" is managed by the proxy and cannot be transformed')
    return values


def _pairs(values):
    for name, value in values:
        _names((name,))
        check_header_value(value)
    return values


def _renames(values):
    for old, new in values:
        _names((old, new))
    return values


@dataclass(frozen=True)
class HeaderOps:
    set: dict[str, str] = key((), "set these headers, replacing any of the same name",
                              check=_pairs)
    add: dict[str, str] = key((), "append these headers, keeping existing ones", check=_pairs)
    remove: tuple[str, ...] = key((), "remove these headers", check=_names)
    rename: dict[str, str] = key((), "rename headers: old = new", check=_renames)


@dataclass(frozen=True)
class Config:
    request: HeaderOps | None = key(None, "edits to the request sent upstream")
    response: HeaderOps | None = key(None, "edits to the response sent to the client")


class _CompiledOps:
    """HeaderOps as bytes, applied to a list of (name, value) pairs in one pass."""

    __slots__ = ("drop", "rename", "append")

    def __init__(self, ops: HeaderOps):
        self.drop = frozenset(n.lower().encode() for n in ops.remove) | frozenset(
            n.lower().encode() for n, _ in ops.set)
        self.rename = {old.lower().encode(): new.encode() for old, new in ops.rename}
        self.append = [(n.encode(), v.encode()) for n, v in (*ops.set, *ops.add)]

    def apply(self, headers: list) -> list:
        drop = self.drop
        rename = self.rename
        if not drop and not rename:
            return headers + self.append
        out = []
        for header in headers:
            lname = header[0].lower()
            if lname in drop:
                continue
            new = rename.get(lname)
            out.append(header if new is None else (new, header[1]))
        out += self.append
        return out


class Filter(FilterBase):
    __slots__ = ("request", "response")
    PHASE = TRANSFORM

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.request = _CompiledOps(cfg.request) if cfg.request else None
        self.response = _CompiledOps(cfg.response) if cfg.response else None

    def on_request(self, ctx):
        if self.request is not None:
            ctx.headers = self.request.apply(ctx.headers)
        return None

    def on_response(self, ctx, resp):
        if self.response is not None:
            resp.headers = self.response.apply(resp.headers)
