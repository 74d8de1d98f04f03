"""Response cache: an RFC 9111 shared cache in front of a route's upstream.

What it does, per request (RFC logic lives in engine/filters/cache_policy.py):

- GET and HEAD are looked up by URL (scheme, host, path, query), then among that URL's
  stored responses by their Vary fields (§4.1) and the configured extra key parts.
- A fresh response (§4.2) is answered here, with ``Age`` (§5.1) and ``Cache-Status``
  (RFC 9211); a client's If-None-Match / If-Modified-Since gets a 304 from it.
- A stale one, or one that must be validated (no-cache, the client's max-age / min-fresh),
  is revalidated with its ETag / Last-Modified through a sub-request (``ctx.fetch``); a 304
  freshens the stored headers (§4.3.4), a new 200 replaces it. Within its
  stale-while-revalidate window (RFC 5861 §3) it is served at once and refreshed in the
  background, one refresh per URL at a time.
- When revalidation fails (a 5xx, or no server answered: connect error, timeout, open circuit,
  no server available), the stale response is served if stale-if-error allows it (RFC 5861
  §4), or, when no server answered, within ``stale_if_unreachable`` (§4.2.4 lets a
  disconnected cache serve stale), unless must-revalidate / proxy-revalidate / s-maxage forbid
  stale use (§4.2.4).
- A miss goes upstream and streams to the client while a copy (up to ``max_object_size``) is
  kept; the response is stored when complete, if §3 allows. Concurrent misses for one URL
  send one request upstream: the others wait (up to ``lock_timeout``) and are answered from
  what it stored.
- A successful unsafe request (POST, PUT, DELETE, ...) drops the stored responses for its URL
  and for same-origin Location / Content-Location (§4.4).

Time: ``clock`` below (wall seconds, as HTTP dates are); tests replace it.
"""

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import orjson

from engine.chain.filter import CACHE, STREAM, Filter as FilterBase
from engine.chain.keys import check_key_spec, compile_key, query_value
from engine.chain.schema import Duration, Size, check_header_name, key
from engine.errors import Response, error_response
from engine.filters import cache_policy as rfc
from engine.stores.cache import OVERHEAD, Marks, MemoryStore, RedisTier
from engine.stores.redis import StoreUnavailable

clock = time.time
log = logging.getLogger("edgeproxy.cache")

METRICS = {
    "cache": ("edgeproxy_cache_requests_total", "outcome",
              "Requests a route's cache saw, by outcome: hit, miss, stale (served stale), "
              "revalidated, collapsed, bypass, stored, invalidated."),
    "cache_store": ("edgeproxy_cache_stored", "measure",
                    "What a route's cache holds, summed over workers: memory_bytes, "
                    "memory_objects.", "gauge"),
}

_GET = b"GET"
_HEAD = b"HEAD"
# Request fields not forwarded on a revalidation: the client's own conditionals (ours
# replace them, §4.3.1) and hop-by-hop fields (RFC 9110 §7.6.1).
_NOT_FORWARDED = frozenset((b"if-none-match", b"if-modified-since", b"if-match",
                            b"if-unmodified-since", b"if-range", b"range", b"host",
                            b"connection", b"keep-alive", b"te", b"upgrade",
                            b"proxy-connection", b"proxy-authorization", b"content-length",
                            b"transfer-encoding", b"expect"))
_LOOKUP = frozenset((b"cache-control", b"pragma", b"authorization", b"range",
                     b"if-none-match", b"if-modified-since"))
# How long a URL whose last answer could not be stored is not collapsed: its concurrent
# requests go upstream together instead of queueing behind each other (Varnish's
# "hit-for-miss"); one that turns storable is still stored meanwhile.
UNCOLLAPSED_TTL = 30.0

HIT, MISS, BYPASS, UNSAFE, HEAD_FORWARD = 1, 2, 3, 4, 5
_NONE = {}  # no request directives (never written to)


def _query_args(values):
    for v in values:
        if not v:
            raise ValueError("a query argument name is empty")
    return values


def _cache_name(value):
    # RFC 9211 §2: the cache's name is an sf-token (or sf-string); a token keeps it plain.
    if value and not re.fullmatch(r"[A-Za-z*][A-Za-z0-9!#$%&'*+.^_`|~:/-]*", value):
        raise ValueError("must be a token (letters, digits, and !#$%&'*+-.^_`|~:/), "
                         'e.g. "edge-1", or "" for no Cache-Status')
    return value


def _key_parts(parts):
    return check_key_spec(parts) if parts else parts


def _header_names(names):
    for name in names:
        check_header_name(name)
    return names


@dataclass(frozen=True)
class Config:
    memory_size: Size = key(64 << 20, "bytes of responses kept per route and worker (LRU)",
                            min=1024)
    max_object_size: Size = key(1 << 20, "largest response body stored; a larger one "
                                         "streams to the client and is not kept", min=1)
    max_variants: int = key(16, "stored responses per URL (Vary variants); the oldest go",
                            min=1, max=1024)
    key_parts: tuple[str, ...] = key((), "key parts besides the URL that tell stored "
                                         'responses apart (e.g. ["consumer"], '
                                         '["header:Accept-Language"])', check=_key_parts)
    query_args: tuple[str, ...] | None = key(None, "only these query arguments are part of "
                                                   "the key (sorted); default: the whole "
                                                   "query string", check=_query_args)
    heuristic_max: Duration = key(86400.0, "longest heuristic freshness (10% of the time "
                                           "since Last-Modified, RFC 9111 §4.2.2)")
    keep_stale: Duration = key(3600.0, "how long a response is kept after it went stale, "
                                       "for revalidation and stale serving")
    stale_if_unreachable: Duration = key(600.0, "serve a stale response this long past its "
                                                "freshness when no upstream server answers "
                                                "(0: only when stale-if-error says so)")
    lock_timeout: Duration = key(5.0, "longest a request waits for an identical miss in "
                                      "flight (collapsing); then it goes upstream itself")
    store_set_cookie: bool = key(False, "store responses that carry Set-Cookie (off: one "
                                        "client's cookie is never handed to another)")
    surrogate_key_header: str | None = key("Surrogate-Key", "response header listing the "
                                                            "tags a purge by tag drops",
                                           check=lambda v: v and check_header_name(v))
    cache_status: str = key("edgeproxy", "this cache's name in the Cache-Status field "
                                         '(RFC 9211); "" sends none', check=_cache_name)
    x_cache: bool = key(False, "also send X-Cache: HIT, MISS, STALE, REVALIDATED or BYPASS")
    store: str = key("memory", '"memory" (each worker its own) or "redis": also kept in '
                               "the shared Redis, for every worker and instance (a memory "
                               "hit never asks Redis; Redis down: a miss)",
                     choices=("memory", "redis"))
    targeted_fields: tuple[str, ...] = key(("CDN-Cache-Control",), "targeted cache-control "
                                           "fields this cache obeys over Cache-Control and "
                                           "Expires, first valid one wins (RFC 9213); [] "
                                           "for none", check=_header_names)
    client_directives: bool = key(True, "honour the client's Cache-Control (no-cache, "
                                        "no-store, max-age, min-fresh, max-stale, "
                                        "only-if-cached) and Pragma; off: clients cannot "
                                        "make the cache go upstream (nginx's way)")


class _State:
    """One request's cache state, in ctx.vars["cache"]."""

    __slots__ = ("kind", "url", "extra", "fwd", "req_cc", "authorized", "request_time",
                 "flight", "pending", "stale", "checked", "conditional", "collapsed",
                 "ranged")

    def __init__(self, kind, url=None):
        self.kind = kind
        self.url = url
        self.extra = ()
        self.fwd = b"uri-miss"
        self.req_cc = None
        self.authorized = False
        self.request_time = 0.0
        self.flight = None  # this request leads a collapsed miss: the waiters' future
        self.pending = None  # the response being stored (a Stored without its body yet)
        self.stale = None  # a stale response that a failed forward may still fall back on
        self.checked = False  # the Redis tier was asked
        self.conditional = False  # If-None-Match / If-Modified-Since: maybe a 304
        self.collapsed = False  # it waited for another request's answer
        self.ranged = False  # it has a Range: a stored 200 may answer with a 206


class Filter(FilterBase):
    __slots__ = ("store", "flights", "refreshing", "events", "gauges", "max_object",
                 "max_variants", "extra", "query_args", "heuristic_max", "keep_stale",
                 "unreachable", "lock_timeout", "set_cookie", "tag_header", "status_name",
                 "x_cache", "client_directives", "targets", "tier", "writes", "uncollapsed",
                 "per_consumer")
    PHASE = CACHE

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        shared = build.shared
        self.store = shared.keep(("cache", build.route, cfg.memory_size),
                                 lambda: MemoryStore(cfg.memory_size))
        self.flights = shared.keep(("cache-flights", build.route), dict)  # url -> Future
        self.uncollapsed = shared.keep(("cache-uncollapsed", build.route),
                                       lambda: Marks(16384))
        self.refreshing = shared.keep(("cache-refreshing", build.route), set)
        self.events = build.counter("cache")
        self.gauges = build.counter("cache_store")
        build.periodic(self._measure)
        self.max_object = cfg.max_object_size
        self.max_variants = cfg.max_variants
        self.extra = tuple(compile_key((p,)) for p in cfg.key_parts)
        self.per_consumer = "consumer" in cfg.key_parts
        self.query_args = tuple(sorted(cfg.query_args)) if cfg.query_args is not None else None
        self.heuristic_max = cfg.heuristic_max
        self.keep_stale = cfg.keep_stale
        self.unreachable = cfg.stale_if_unreachable
        self.lock_timeout = cfg.lock_timeout
        self.set_cookie = cfg.store_set_cookie
        self.tag_header = (cfg.surrogate_key_header.lower().encode()
                           if cfg.surrogate_key_header else None)
        self.status_name = cfg.cache_status.encode()
        self.x_cache = cfg.x_cache
        self.client_directives = cfg.client_directives
        self.targets = tuple(dict.fromkeys(n.lower().encode("latin-1")
                                           for n in cfg.targeted_fields))
        self.tier = None
        if cfg.store == "redis":
            self.tier = shared.keep(("cache-tier", build.route, shared.redis),
                                    lambda: RedisTier(shared.redis, build.route))
        self.writes = shared.keep(("cache-writes",), set)  # Redis writes in flight

    @property
    def RESPONSE_BODY(self):  # noqa: N802 (the contract's name, per instance here)
        # A miss streams to its client while a copy up to the object cap is kept.
        return STREAM, self.max_object

    # -- request

    def on_request(self, ctx):
        method = ctx.method
        if method != _GET and method != _HEAD:
            if method not in rfc.SAFE_METHODS:
                st = _State(UNSAFE, self.url_of(ctx))
                self._vars(ctx, st)
            return None
        req_cc = None
        authorized = ranged = conditional = False
        for name, _ in ctx.headers:
            lname = name.lower()
            if lname in _LOOKUP:
                if lname == b"authorization":
                    authorized = True
                elif lname == b"range":
                    ranged = True
                elif lname[0] == 105:  # if-...
                    conditional = True
                elif req_cc is None and self.client_directives:
                    req_cc = rfc.request_directives(ctx.headers)
        if ctx.consumer is not None and not self.per_consumer:
            # A caller the gateway authenticated, whose credential the auth filter may have
            # taken off already: its answers are treated as RFC 9111 §3.5 treats those to
            # Authorization, stored and shared only when the origin says so (public,
            # s-maxage, must-revalidate), unless the key keeps each consumer's apart.
            authorized = True
        url = self.url_of(ctx)
        if not (req_cc or authorized or self.extra):
            # The common case first: a fresh hit, answered without any per-request state
            # (the response hooks then find none and do nothing).
            now = clock()
            variants = self.store.get(url, now)
            if variants:
                entry = self._select(variants, ctx.headers, ())
                if entry is not None and not entry.no_cache:
                    age = entry.age_at(now)
                    left = entry.lifetime - age
                    if left > 0:
                        self._count("hit")
                        return self._reply(ctx, entry, now, age, b"hit; ttl=%d" % int(left),
                                           b"HIT", conditional, False, ranged)
        st = _State(MISS, url)
        st.req_cc = req_cc or _NONE
        st.authorized = authorized
        st.conditional = conditional
        st.ranged = ranged
        if self.extra:
            st.extra = tuple(part(ctx) for part in self.extra)
        self._vars(ctx, st)
        if "no-store" in st.req_cc:
            # §5.2.1.5: nothing of this exchange is stored; the client wants it from the
            # origin, and gets it so.
            st.kind = BYPASS
            self._count("bypass")
            return None
        return self._decide(ctx, st, not (authorized or ranged or method == _HEAD))

    def _vars(self, ctx, st):
        if ctx.vars is None:
            ctx.vars = {"cache": st}
        else:
            ctx.vars["cache"] = st

    def url_of(self, ctx) -> bytes:
        host = ctx.host.lower() if ctx.host else b""
        if self.query_args is None:
            return b"%s://%s%s%s" % (ctx.stream.scheme, host, ctx.path.encode("latin-1"),
                                     ctx.query)
        return self.url(ctx.stream.scheme, host, ctx.path.encode("latin-1"), ctx.query)

    def url(self, scheme: bytes, host: bytes, path: bytes, query: bytes) -> bytes:
        if self.query_args is not None:
            parts = []
            for arg in self.query_args:
                v = query_value(query, arg)
                if v is not None:
                    parts.append(f"{arg}={v}".encode("latin-1"))
            query = b"?" + b"&".join(parts) if parts else b""
        return b"%s://%s%s%s" % (scheme, host, path, query)

    def _decide(self, ctx, st, collapse: bool):
        """Answer from the store, or go on (None), or a coroutine that revalidates/waits."""
        now = clock()
        req_cc = st.req_cc
        variants = self.store.get(st.url, now)
        entry = self._select(variants, ctx.headers, st.extra) if variants else None
        if entry is not None and st.authorized and not entry.auth_ok:
            entry = None  # §3.5
            st.kind = BYPASS
        if entry is None:
            if variants:
                st.fwd = b"vary-miss"
            if "only-if-cached" in req_cc:
                return self._gateway_timeout(ctx)  # §5.2.1.7
            if collapse and not self.uncollapsed.has(st.url, now):
                flight = self.flights.get(st.url)
                if flight is not None:
                    return self._wait(ctx, st, flight)
                st.flight = self.flights[st.url] = ctx.worker.loop.create_future()
            if self.tier is not None and not st.checked and not variants:
                return self._from_redis(ctx, st)
            self._count("miss")
            st.request_time = now
            return None
        age = entry.age_at(now)
        left = entry.lifetime - age
        if not req_cc and left > 0 and not entry.no_cache:
            self._count("hit")  # the common case, without the request directives' checks
            return self.answer(ctx, entry, now, age, b"hit; ttl=%d" % int(left), b"HIT")
        validate = "no-cache" in req_cc or entry.no_cache  # §5.2.1.4, §5.2.2.4
        if not validate and "max-age" in req_cc:
            limit = rfc.delta_seconds(req_cc["max-age"])  # §5.2.1.1
            validate = limit is not None and age > limit and "max-stale" not in req_cc
        if not validate and "min-fresh" in req_cc:
            limit = rfc.delta_seconds(req_cc["min-fresh"])  # §5.2.1.3
            validate = limit is not None and left < limit
        if not validate:
            if left > 0:
                self._count("hit")
                return self.answer(ctx, entry, now, age, b"hit; ttl=%d" % int(left), b"HIT")
            if not entry.revalidate:
                staleness = -left
                if "max-stale" in req_cc:  # §5.2.1.2: no value means any staleness
                    limit = rfc.delta_seconds(req_cc["max-stale"])
                    if req_cc["max-stale"] is None or (limit is not None
                                                       and staleness <= limit):
                        self._count("stale")
                        return self.answer(ctx, entry, now, age, b"hit; ttl=%d" % int(left),
                                           b"STALE")
                if staleness <= entry.swr:  # RFC 5861 §3
                    self._refresh_soon(ctx, st.url, variants, entry)
                    self._count("stale")
                    return self.answer(ctx, entry, now, age, b"hit; ttl=%d" % int(left),
                                       b"STALE")
        if "only-if-cached" in req_cc:
            return self._gateway_timeout(ctx)
        # RFC 9211 §2.2: "request" when a fresh response was passed over for the request's
        # sake (no-cache, max-age, min-fresh), "stale" when it had to be validated anyway.
        st.fwd = b"request" if left > 0 and not entry.no_cache else b"stale"
        st.stale = entry
        if ctx.method == _HEAD:
            # §4.3.5: a HEAD goes upstream as a HEAD; its answer may freshen the stored GET.
            st.kind = HEAD_FORWARD
            st.request_time = now
            return None
        if collapse and st.url in self.flights:
            return self._wait(ctx, st, self.flights[st.url])
        return self._revalidate(ctx, st, variants, entry, collapse)

    async def _from_redis(self, ctx, st):
        # A memory miss asks the shared tier once; what it holds fills this worker's memory.
        st.checked = True
        try:
            raw = await self.tier.get(st.url)
        except StoreUnavailable:
            raw = None  # Redis down: a miss, and the upstream answers
        if raw:
            now = clock()
            try:
                variants = unpack(raw, self.heuristic_max, self.targets)
            except (ValueError, KeyError, IndexError, TypeError):
                variants = None  # not ours, or from an older layout: a miss
            if variants:
                self._put(st.url, None, now, variants, False)
        answer = self._decide(ctx, st, False)
        if answer is None or isinstance(answer, Response):
            if answer is not None:
                self._land(st)
            return answer
        return await answer

    def _select(self, variants, headers, extra):
        # §4.1: the newest stored response whose Vary fields match the request's.
        for entry in variants:
            if entry.secondary[0] == extra and entry.vary != (b"*",) and (
                    not entry.vary or entry.secondary[1] == rfc.secondary_key(entry.vary,
                                                                              headers)):
                return entry
        return None

    def answer(self, ctx, entry, now, age, status, x_cache):
        """A stored response as this request's answer (see ``_reply``)."""
        st = ctx.vars["cache"]
        st.kind = HIT  # answered here: the response hooks add nothing more
        return self._reply(ctx, entry, now, age, status, x_cache, st.conditional,
                           st.collapsed, st.ranged)

    def _reply(self, ctx, entry, now, age, status, x_cache, conditional, collapsed, ranged):
        # The stored response with Age (§5.1) and Cache-Status (RFC 9211), or a 304 when
        # the client's conditional says it has it (RFC 9110 §13.2.2).
        if collapsed and status[:3] == b"hit":
            status = b"fwd=uri-miss; collapsed" + status[3:]  # RFC 9211 §2.5
        tail = [(b"Age", b"%d" % min(int(age), rfc.DELTA_MAX))]
        if self.status_name:
            tail.append((b"Cache-Status", self.status_name + b"; " + status))
        if ctx.vars is None:
            ctx.vars = {}
        ctx.vars["cache_status"] = x_cache.decode()  # the access log's "cache" field
        if self.x_cache:
            tail.append((b"X-Cache", x_cache))
        if conditional and rfc.not_modified(entry, ctx.headers, now):
            return Response(304, [h for h in entry.headers
                                  if h[0].lower() in rfc.NOT_MODIFIED_FIELDS] + tail, b"")
        if ranged and entry.status == 200:
            span = rfc.byte_range(ctx.headers, entry)
            if span is not None:
                # RFC 9110 §15.3.7: one range of the stored whole, with its Content-Range.
                first, last = span
                tail.append((b"Content-Range", b"bytes %d-%d/%d" % (first, last,
                                                                     len(entry.body))))
                return Response(206, entry.headers + tail, entry.body[first:last + 1])
        return Response(entry.status, entry.headers + tail, entry.body)

    def _gateway_timeout(self, ctx):
        return error_response("gateway_timeout", ctx.request_id.decode(),
                              "only-if-cached: no stored response can answer this request")

    async def _wait(self, ctx, st, flight):
        # Collapsing: another request for this URL is upstream; wait (bounded) for it to
        # store its answer, then decide again without waiting twice.
        try:
            await asyncio.wait_for(asyncio.shield(flight), self.lock_timeout)
        except TimeoutError:
            pass
        st.collapsed = True
        answer = self._decide(ctx, st, False)
        if isinstance(answer, Response):
            if st.kind == HIT:
                self._count("collapsed")
            return answer
        if answer is not None:
            return await answer
        return None

    # -- revalidation (§4.3)

    def _conditional(self, ctx, variants, entry):
        headers = [(n, v) for n, v in ctx.headers if n.lower() not in _NOT_FORWARDED]
        # §4.3.1: every stored variant's ETag, so the origin may pick any of them.
        etags = [e.etag for e in variants if e.etag is not None and e.vary != (b"*",)]
        if etags:
            headers.append((b"If-None-Match", b", ".join(dict.fromkeys(etags))))
        if entry.last_modified is not None:
            headers.append((b"If-Modified-Since", entry.last_modified))
        return headers

    async def _forward(self, ctx, url, variants, entry, headers, target):
        """A revalidation round trip: (response, the stored response it freshened or None,
        the new Stored when a full response was stored, request time)."""
        request_time = clock()
        resp = await ctx.fetch(ctx.upstream, _GET, target, headers, None, self.max_object,
                               ctx.host)
        response_time = clock()
        if ctx.stream.via is not None and not _proxy_made(resp):
            # RFC 9110 §7.6.3: the origin's answer is forwarded (now, or later from the
            # store), so it gets this hop's Via entry, as on the proxied path. (A sub-request
            # is the gateway's own: ctx.fetch adds none.)
            resp.headers = _via_added(resp.headers, ctx.stream.via)
        if resp.status == 304:
            # §4.3.4: freshen the stored response the 304 selects. The conditional request
            # (``_conditional``) named ``entry`` alone when no other variant gave it an ETag.
            sole = entry if all(e.etag is None or e.etag == entry.etag
                                for e in variants if e.vary != (b"*",)) else None
            candidate = rfc.selected([entry] + [e for e in variants if e is not entry],
                                     resp.headers, sole)
            if candidate is not None:
                candidate.freshen(resp.headers, request_time, response_time, response_time,
                                  self.heuristic_max, self.targets)
                self._put(url, None, response_time)
                return resp, candidate, None, request_time
            return resp, None, None, request_time
        stored = None
        if not self._no_server(ctx, resp):
            stored = self._storable(resp.status, resp.headers, entry.secondary, ctx,
                                    request_time, response_time)
            if stored is not None:
                stored.body = resp.body
                self._put(url, stored, response_time)
        return resp, None, stored, request_time

    async def _revalidate(self, ctx, st, variants, entry, collapse):
        url = st.url
        if collapse:
            st.flight = self.flights[url] = ctx.worker.loop.create_future()
        try:
            headers = self._conditional(ctx, variants, entry)
            resp, fresh, stored, _ = await self._forward(ctx, url, variants, entry, headers,
                                                         ctx.route.target(ctx))
        finally:
            self._land(st)
        now = clock()
        if fresh is not None:
            self._count("revalidated")
            if fresh is entry or self._select([fresh], ctx.headers, st.extra) is fresh:
                return self.answer(ctx, fresh, now, fresh.age_at(now),
                                   b"fwd=%s; fwd-status=304" % st.fwd, b"REVALIDATED")
        if resp.status == 304 or _too_large(resp):
            # The 304 selects nothing we hold (§4.3.4), or the new body is over the cap (and
            # what we hold is outdated): the request goes upstream as it came, uncached.
            if resp.status != 304:
                self._drop(url)
            st.kind = BYPASS
            return None
        no_server = self._no_server(ctx, resp)
        if (resp.status >= 500 or no_server) and self._stale_allowed(st, entry, no_server,
                                                                      now):
            self._count("stale")
            return self.answer(ctx, entry, now, entry.age_at(now),
                               b"fwd=%s; fwd-status=%d" % (st.fwd, resp.status), b"STALE")
        st.kind = HIT  # answered here: on_response adds nothing more
        tail = []
        if self.status_name:
            tail.append((b"Cache-Status", self.status_name + b"; fwd=%s; fwd-status=%d%s" % (
                st.fwd, resp.status, b"; stored" if stored is not None else b"")))
        ctx.vars["cache_status"] = "MISS"
        if self.x_cache:
            tail.append((b"X-Cache", b"MISS"))
        if stored is not None:
            self._count("stored")
            if st.conditional and rfc.not_modified(stored, ctx.headers, now):
                return Response(304, [h for h in stored.headers
                                      if h[0].lower() in rfc.NOT_MODIFIED_FIELDS] + tail, b"")
        return Response(resp.status, resp.headers + tail, resp.body)

    @staticmethod
    def _no_server(ctx, resp) -> bool:
        """No upstream server answered: the proxy's own 502/503/504, or the upstream's
        static fallback (a stale response is the better fallback)."""
        if _proxy_made(resp):
            return True
        upstream = ctx.upstream
        if isinstance(upstream, str):
            upstream = ctx.rt.upstreams.get(upstream)
        fallback = getattr(upstream, "fallback", None)
        return fallback is not None and resp.body is fallback.body

    def _stale_allowed(self, st, entry, no_server, now) -> bool:
        # §4.2.4: never when the response forbids stale use, nor when the client asked for
        # a validated answer (no-cache).
        if entry.revalidate or entry.no_cache or "no-cache" in st.req_cc:
            return False
        staleness = entry.age_at(now) - entry.lifetime
        allowed = entry.sie  # RFC 5861 §4, the response's stale-if-error
        asked = rfc.delta_seconds(st.req_cc.get("stale-if-error"))  # ... or the request's
        if asked is not None:
            allowed = max(allowed, asked)
        if no_server:
            allowed = max(allowed, self.unreachable)
        return staleness <= allowed

    def _refresh_soon(self, ctx, url, variants, entry):
        # stale-while-revalidate: one background refresh per URL at a time.
        if url in self.refreshing or url in self.flights:
            return
        self.refreshing.add(url)
        headers = self._conditional(ctx, variants, entry)
        ctx.worker.spawn(self._refresh(ctx, url, variants, entry, headers,
                                       ctx.route.target(ctx)))

    async def _refresh(self, ctx, url, variants, entry, headers, target):
        try:
            resp, fresh, _, _ = await self._forward(ctx, url, variants, entry, headers, target)
            if fresh is not None:
                self._count("revalidated")
        except Exception:  # a background refresh failing leaves the stale response
            pass
        finally:
            self.refreshing.discard(url)

    def _land(self, st):
        flight = st.flight
        if flight is not None:
            st.flight = None
            if self.flights.get(st.url) is flight:
                del self.flights[st.url]
            if not flight.done():
                flight.set_result(None)

    # -- response

    def on_response(self, ctx, resp):
        vars_ = ctx.vars
        st = vars_.get("cache") if vars_ is not None else None
        if st is None or st.kind == HIT:
            return
        status = resp.status
        if st.kind == UNSAFE:
            if 200 <= status < 400:
                self._invalidate(ctx, st.url, resp.headers)
                if ctx.method == b"POST" and resp.body is None:
                    self._post_as_get(ctx, st, resp)
            return
        if st.kind == HEAD_FORWARD:
            if self._head_answer(ctx, st, resp):
                return
        stored = False
        if st.kind == MISS and resp.body is None and ctx.method == _GET:
            pending = self._storable(status, resp.headers, (st.extra, ()), ctx,
                                     st.request_time, clock())
            if pending is not None:
                st.pending = pending
                stored = True
        if not stored:
            if st.kind == MISS and ctx.method == _GET and resp.body is None:
                # (the upstream's answer: the proxy's own 502 says nothing of the URL)
                self.uncollapsed.mark(st.url, clock(), UNCOLLAPSED_TTL)
            self._land(st)  # requests waiting on this one go upstream now, not at its end
        if self.status_name:
            fwd = b"bypass" if st.kind == BYPASS else st.fwd
            resp.headers.append((b"Cache-Status", self.status_name + b"; fwd=%s; "
                                 b"fwd-status=%d%s" % (fwd, status,
                                                       b"; stored" if stored else b"")))
        x_cache = b"BYPASS" if st.kind == BYPASS else b"MISS"
        vars_["cache_status"] = x_cache.decode()
        if self.x_cache:
            resp.headers.append((b"X-Cache", x_cache))

    def _head_answer(self, ctx, st, resp) -> bool:
        """A HEAD forwarded for a stale stored GET: a 200 whose validators match freshens
        the stored fields (§4.3.5); when no server answered, the stale response may answer
        (as for a revalidation). True when the answer became the stored one."""
        entry = st.stale
        now = clock()
        if resp.body is None:
            if resp.status == 200 and rfc.validator_matches(entry, resp.headers):
                entry.freshen(resp.headers, st.request_time, now, now, self.heuristic_max,
                              self.targets)
                self._put(st.url, None, now)
                self._count("revalidated")
            return False
        no_server = self._no_server(ctx, resp)
        if (resp.status >= 500 or no_server) and self._stale_allowed(st, entry, no_server,
                                                                      now):
            # The proxy's own error (a local answer, so it may be replaced whole).
            answer = self.answer(ctx, entry, now, entry.age_at(now),
                                 b"fwd=%s; fwd-status=%d" % (st.fwd, resp.status), b"STALE")
            resp.status, resp.headers, resp.body = answer.status, answer.headers, answer.body
            self._count("stale")
            return True
        return False

    def on_response_body(self, ctx, body):
        vars_ = ctx.vars
        st = vars_.get("cache") if vars_ is not None else None
        if st is None or st.pending is None:
            return None
        pending = st.pending
        st.pending = None
        if body is None and pending.status != 204:
            return None  # over max_object_size: streamed, not kept
        pending.body = body or b""
        self._put(st.url, pending, clock())
        self._count("stored")
        self._land(st)
        return None

    def on_log(self, ctx):
        vars_ = ctx.vars
        st = vars_.get("cache") if vars_ is not None else None
        if st is not None:
            self._land(st)

    # -- storing

    def _storable(self, status, headers, secondary, ctx, request_time, response_time):
        """A Stored for a response to this request if §3 and the route's policy allow."""
        cc, targeted = rfc.response_directives(headers, self.targets)
        st = ctx.vars["cache"]
        if not rfc.storable(status, cc, headers, st.req_cc, st.authorized, targeted):
            return None
        if not self.set_cookie and rfc.field_values(headers, b"set-cookie"):
            return None
        stored = rfc.describe(status, headers, request_time, response_time, response_time,
                              self.heuristic_max, self.targets)
        if stored.vary == (b"*",):
            return None  # §4.1: it can never be selected
        if stored.lifetime <= 0 and stored.etag is None and stored.last_modified is None:
            return None  # stale at once and nothing to revalidate it with
        stored.secondary = (secondary[0], rfc.secondary_key(stored.vary, ctx.headers))
        if self.tag_header is not None:
            tags = []
            for value in rfc.field_values(headers, self.tag_header):
                tags.extend(value.split())
            stored.tags = tuple(tags)
        return stored

    def _put(self, url, stored, now, variants=None, shared=True):
        """Store ``stored`` among the URL's variants (None: re-store them as they are, after
        a freshening), newest first; also in the Redis tier unless ``shared`` is False.
        ``variants``: the URL's variants as the Redis tier had them."""
        if variants is None:
            variants = self.store.get(url, now) or []
        if stored is not None:
            stored.size = OVERHEAD + len(stored.body) + sum(
                [len(n) + len(v) for n, v in stored.headers])
            variants = [stored] + [e for e in variants if e.secondary != stored.secondary]
            del variants[self.max_variants:]
        if not variants:
            return
        keep = 0.0
        tags = set()
        for e in variants:
            left = e.lifetime - e.age_at(now)
            keep = max(keep, left + max(self.keep_stale, e.swr, e.sie, self.unreachable))
            tags.update(e.tags)
        ttl = max(keep, 1.0)
        self.store.put(url, variants, sum([e.size for e in variants]), now, ttl, tags)
        if self.tier is not None and shared:
            self._write(self.tier.put(url, pack(variants), ttl, tags), url)

    def _write(self, coro, url):
        # Redis writes go in the background: the answer never waits for the shared tier.
        _background(self.writes, coro, url)

    def _invalidate(self, ctx, url, headers):
        # §4.4: the target URI, and Location / Content-Location when same-origin.
        n = self._drop(url)
        for lname in (b"location", b"content-location"):
            for value in rfc.field_values(headers, lname):
                target = self._same_origin(url, value)
                if target is not None:
                    n += self._drop(target)
        if n:
            self._count("invalidated")

    def _same_origin(self, url, reference):
        """The cache key of a URI reference (Location, Content-Location) resolved against
        ``url``, or None when it is on another origin or malformed."""
        base = url.decode("latin-1")
        try:
            origin = urlsplit(base)
            target = urlsplit(urljoin(base, reference.decode("latin-1").strip()))
        except ValueError:
            return None
        if (target.scheme, target.netloc.lower()) != (origin.scheme, origin.netloc):
            return None
        return self.url(target.scheme.encode(), target.netloc.lower().encode("latin-1"),
                        (target.path or "/").encode("latin-1"),
                        b"?" + target.query.encode("latin-1") if target.query else b"")

    def _post_as_get(self, ctx, st, resp):
        # RFC 9110 §9.3.3: a POST response with explicit freshness and a Content-Location
        # naming the target URI is that URI's representation: stored for later GETs.
        location = rfc.field_values(resp.headers, b"content-location")
        if not location or self._same_origin(st.url, location[0]) != st.url:
            return
        cc, targeted = rfc.response_directives(resp.headers, self.targets)
        if not rfc.has_explicit_freshness(cc, resp.headers, targeted):
            return
        st.req_cc = _NONE
        st.authorized = any(n.lower() == b"authorization" for n, _ in ctx.headers) or (
            ctx.consumer is not None and not self.per_consumer)
        now = clock()
        st.pending = self._storable(resp.status, resp.headers, (st.extra, ()), ctx, now, now)

    def _drop(self, url) -> int:
        if self.tier is not None:
            self._write(self.tier.pop(url), url)
        return int(self.store.pop(url))

    def _count(self, outcome: str) -> None:
        self.events[outcome] = self.events.get(outcome, 0) + 1

    def _measure(self, worker, now: float) -> None:
        self.gauges["memory_bytes"] = self.store.size_bytes
        self.gauges["memory_objects"] = len(self.store)


def purge(shared, kind: str, value: str) -> int:
    """Drop what a purge names from every route's cache of this worker (the admin API's
    POST /cache/purge, engine/control/purge.py): ``kind`` "url" (exact), "prefix" (of
    ``scheme://host/path?query``) or "tag" (a surrogate key). A URL or prefix without a
    scheme names both http and https. The number of URLs dropped."""
    stores = [store for k, store in shared.items.items() if k[0] == "cache"]
    tiers = [tier for k, tier in shared.items.items() if k[0] == "cache-tier"]
    writes = shared.keep(("cache-writes",), set)
    if kind == "tag":
        raw = value.encode("latin-1")
        for tier in tiers:
            _background(writes, tier.purge_tag(raw), value)
        return sum([store.purge_tag(raw) for store in stores])
    if "://" in value:
        scheme, _, rest = value.partition("://")
        targets = [scheme.lower() + "://" + _lower_host(rest)]
    else:
        targets = [s + "://" + _lower_host(value) for s in ("http", "https")]
    n = 0
    for target in targets:
        raw = target.encode("latin-1")
        for store in stores:
            n += store.pop(raw) if kind == "url" else store.purge_prefix(raw)
        for tier in tiers:
            _background(writes, tier.pop(raw) if kind == "url" else tier.purge_prefix(raw),
                        target)
    return n


def _background(tasks, coro, what) -> None:
    task = asyncio.get_running_loop().create_task(_quietly(coro, what))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _quietly(coro, what):
    try:
        await coro
    except StoreUnavailable as exc:
        # The memory tier is right; the shared copy ages out at its TTL.
        log.warning("cache: Redis tier not updated for %s: %s", what, exc)


def _lower_host(rest: str) -> str:
    # The host part of "host/path?query" in lower case, as cache keys have it.
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    return rest[:cut].lower() + rest[cut:]


_NO_SERVER = frozenset(("bad_gateway", "upstream_unavailable", "gateway_timeout"))


def _proxy_made(resp) -> bool:
    # The proxy's own 502/503/504 (engine/errors.py): no upstream server answered.
    if resp.status not in (502, 503, 504) or not resp.body or resp.body[:10] != b'{"error":{':
        return False
    try:
        return orjson.loads(resp.body)["error"]["code"] in _NO_SERVER
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False


def _via_added(headers, entry: bytes) -> list:
    received = rfc.field_values(headers, b"via")
    kept = [h for h in headers if h[0].lower() != b"via"]
    return kept + [(b"Via", b", ".join(received + [entry]))]


def _too_large(resp) -> bool:
    return (resp.status == 502 and _proxy_made(resp)
            and b"the sub-request's answer is too large" in resp.body)


# -- the Redis tier's value: a URL's variants (engine/stores/cache.py describes the layout)

def pack(variants) -> bytes:
    head = orjson.dumps([
        [e.status, [[n.decode("latin-1"), v.decode("latin-1")] for n, v in e.headers],
         e.request_time, e.response_time, list(e.secondary[0]),
         [None if v is None else v.decode("latin-1") for v in e.secondary[1]],
         [t.decode("latin-1") for t in e.tags], len(e.body)]
        for e in variants])
    return len(head).to_bytes(4, "big") + head + b"".join([e.body for e in variants])


def unpack(raw: bytes, heuristic_max: float, targets=()) -> list:
    n = int.from_bytes(raw[:4], "big")
    pos = 4 + n
    out = []
    for status, headers, request_time, response_time, extra, vary, tags, size in \
            orjson.loads(raw[4:pos]):
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        e = rfc.describe(status, headers, request_time, response_time, response_time,
                         heuristic_max, targets)
        e.body = raw[pos:pos + size]
        if len(e.body) != size:
            raise ValueError("truncated")
        pos += size
        e.secondary = (tuple(extra), tuple(None if v is None else v.encode("latin-1")
                                           for v in vary))
        e.tags = tuple(t.encode("latin-1") for t in tags)
        e.size = OVERHEAD + size + sum([len(k) + len(v) for k, v in headers])
        out.append(e)
    return out
