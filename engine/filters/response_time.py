"""The time the gateway took for a request, as a response header (like Envoy's
``x-envoy-upstream-service-time`` and Kong's ``X-Kong-Proxy-Latency``): for every answer,
the proxy's own included, measured from the end of the request head to the response head.
"""

from dataclasses import dataclass
from time import perf_counter as monotonic  # CLOCK_MONOTONIC: ctx.t_start's clock

from engine.chain.filter import OBSERVE, Filter as FilterBase
from engine.chain.schema import check_header_name, key


@dataclass(frozen=True)
class Config:
    header: str = key("X-Response-Time", "response header carrying the time, in milliseconds "
                                         "with three decimals", check=check_header_name)
    upstream_header: str | None = key(None, "also the time since the request first went "
                                            "upstream, in this header (absent for answers "
                                            "made without an upstream)",
                                      check=lambda v: v and check_header_name(v))


class Filter(FilterBase):
    __slots__ = ("header", "upstream_header")
    # First on the request, so its response hook runs last (timing the other hooks too) and
    # for every answer, however early.
    PHASE = OBSERVE

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.header = cfg.header.encode()
        self.upstream_header = cfg.upstream_header.encode() if cfg.upstream_header else None

    def on_response(self, ctx, resp):
        now = monotonic()
        resp.headers.append((self.header, b"%.3f" % ((now - ctx.t_start) * 1000)))
        if self.upstream_header is not None and ctx.t_upstream:
            resp.headers.append((self.upstream_header,
                                 b"%.3f" % ((now - ctx.t_upstream) * 1000)))
