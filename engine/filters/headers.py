"""Request and response header transforms: set, add, remove, rename.

Framing and hop-by-hop fields belong to the proxy and cannot be edited here; the Host sent
upstream is set with the upstream's ``host`` key.
"""

from dataclasses import dataclass

from engine.chain.filter import TRANSFORM, Filter as FilterBase
from engine.chain.schema import check_header_name, check_header_value, key
from engine.filters.header_edit import HeaderEdit
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


def _edit(ops: HeaderOps) -> HeaderEdit:
    return HeaderEdit(
        drop=[n.encode() for n in (*ops.remove, *(n for n, _ in ops.set))],
        rename=[(old.encode(), new.encode()) for old, new in ops.rename],
        append=[(n.encode(), v.encode()) for n, v in (*ops.set, *ops.add)])


class Filter(FilterBase):
    # The hooks are HeaderEdit's own (compiled), bound only for the sides the config edits.
    __slots__ = ("on_request", "on_response")
    PHASE = TRANSFORM

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        if cfg.request:
            self.on_request = _edit(cfg.request).on_request
        if cfg.response:
            self.on_response = _edit(cfg.response).on_response
