"""Forward auth for the auth filter (Traefik ForwardAuth, nginx auth_request, Envoy
ext_authz over HTTP): the ``[routes.auth.forward]`` section and the sub-request it makes.

The gateway asks the auth service, through an upstream (its balancing, pools, retries and
breakers), with GET, the selected request headers and X-Forwarded-Method/-Proto/-Host/-Uri/
-For describing the original request. A 2xx admits the request and copies the configured
response headers onto it; any other answer (a 401 with its challenge, a 302 to a login
page, the proxy's own 502 when the service is down) goes back to the client as it is.
"""

import hashlib
import time
from dataclasses import dataclass

from engine.chain.schema import REQUIRED, Duration, check_header_name, check_request_path, key
from engine.errors import Response
from engine.wire.framing import HOP_BY_HOP

try:
    from ext.lru import LruCache
except ImportError as exc:  # no pure-Python fallback (STYLE.md rule 7)
    raise ImportError(
        f"edgeproxy's Cython extensions are not built ({exc}); run `pip install .` "
        "or `python setup.py build_ext --inplace`") from None

MAX_BODY = 65536  # an auth service's denial page, relayed to the client
# Recomputed or owned by the proxy when the denial is relayed.
_NOT_RELAYED = HOP_BY_HOP | {b"content-length", b"x-request-id", b"via"}


def _check_names(values: tuple) -> tuple:
    for v in values:
        check_header_name(v)
    return values


@dataclass(frozen=True)
class ForwardConfig:
    upstream: str = key(REQUIRED, "the upstream of the auth service")
    path: str = key("/", "path asked (the original one goes in X-Forwarded-Uri)",
                    check=check_request_path)
    request_headers: tuple[str, ...] = key(("Authorization", "Cookie"),
                                           "request headers sent to the auth service: the "
                                           "credential (and the cache key)",
                                           check=_check_names)
    response_headers: tuple[str, ...] = key((), "headers of a 2xx answer copied onto the "
                                                "request sent upstream (any the client sent "
                                                "are removed first)", check=_check_names)
    consumer_header: str | None = key(None, "header of a 2xx answer naming a configured "
                                            "consumer (unknown names: no consumer)",
                                      check=lambda v: check_header_name(v) if v else v)
    cache_ttl: Duration = key(0.0, "remember a 2xx per credential this long (0 = ask every "
                                   "time); only where the service's answer does not depend "
                                   "on the method or path")
    cache_size: int = key(10000, "credentials remembered per worker", min=1)


class Admitted:
    """A 2xx from the auth service: the headers to copy and the consumer it named."""

    __slots__ = ("headers", "consumer")

    def __init__(self, headers, consumer):
        self.headers = headers
        self.consumer = consumer


class ForwardAuth:
    def __init__(self, cfg: ForwardConfig, consumers, cache):
        self.cfg = cfg
        self.consumers = consumers
        self.cache = cache
        self.path = cfg.path.encode()
        self.ask = tuple(n.lower().encode() for n in cfg.request_headers)
        self.copy = tuple(n.lower().encode() for n in cfg.response_headers)
        self.consumer_header = (cfg.consumer_header.lower().encode()
                                if cfg.consumer_header else None)

    def credential(self, ctx) -> list:
        ask = self.ask
        return [(n, v) for n, v in ctx.headers if n.lower() in ask]

    def cached(self, sent: list):
        if self.cache is None:
            return None, None
        digest = hashlib.sha256(b"\0".join(n.lower() + b"\0" + v for n, v in sent)).digest()
        return self.cache.get(digest, time.monotonic()), digest

    async def decide(self, ctx, sent: list, digest):
        """An Admitted, or the Response to give the client."""
        stream = ctx.stream
        headers = sent + [
            (b"X-Forwarded-Method", ctx.method),
            (b"X-Forwarded-Proto", stream.scheme),
            (b"X-Forwarded-Uri", ctx.path.encode("latin-1") + ctx.query),
            (b"X-Forwarded-For", ctx.client_ip.encode()),
        ]
        if ctx.host is not None:
            headers.append((b"X-Forwarded-Host", ctx.host))
        resp = await ctx.fetch(self.cfg.upstream, b"GET", self.path, headers, None, MAX_BODY)
        if not 200 <= resp.status < 300:
            return Response(resp.status, [(n, v) for n, v in resp.headers
                                          if n.lower() not in _NOT_RELAYED], resp.body or b"")
        copy = self.copy
        got = [(n, v) for n, v in resp.headers if n.lower() in copy]
        consumer = None
        if self.consumer_header is not None:
            for n, v in resp.headers:
                if n.lower() == self.consumer_header:
                    consumer = self.consumers.by_name.get(v.decode("latin-1"))
                    break
        admitted = Admitted(got, consumer)
        if digest is not None:
            self.cache.set(digest, admitted, 64 + sum(len(n) + len(v) for n, v in got),
                           time.monotonic(), self.cfg.cache_ttl)
        return admitted


def new_cache(cfg: ForwardConfig):
    if cfg.cache_ttl <= 0:
        return None
    return LruCache(cfg.cache_size * 4096, cfg.cache_size)
