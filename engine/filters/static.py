"""A route that answers by itself: fixed status, headers and body (health endpoints, stubs)."""

from dataclasses import dataclass

from engine.chain.filter import ANSWER, Filter as FilterBase
from engine.chain.schema import key
from engine.filters.headers import _pairs
from engine.errors import Response


@dataclass(frozen=True)
class Config:
    status: int = key(200, "status code", min=200, max=599)
    body: str = key("", "response body (UTF-8)")
    content_type: str = key("text/plain; charset=utf-8", "Content-Type of the body")
    headers: dict[str, str] = key((), "extra response headers", check=_pairs)


class Filter(FilterBase):
    __slots__ = ("status", "headers", "body")
    PHASE = ANSWER
    SERVER_WIDE = False  # it answers everything: server-wide, no route would be reached
    ANSWERS = True

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.status = cfg.status
        self.body = cfg.body.encode()
        self.headers = [(b"Content-Type", cfg.content_type.encode())] + [
            (n.encode(), v.encode()) for n, v in cfg.headers]

    def on_request(self, ctx):
        return Response(self.status, list(self.headers), self.body)
