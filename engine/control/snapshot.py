"""The Runtime snapshot: an immutable compile of a Config that the data plane reads.

A request captures the snapshot current when its head is parsed and keeps it to the end; a
reload builds a new one off to the side and swaps one reference. Keep-alive pools are stores
keyed by stable names, carried over when the upstream's config is unchanged.
"""

import ipaddress
import re

from engine.chain.context import Chain, Route
from engine.chain.keys import compile_key
from engine.control.tls import Certificates, TLSPolicy
from engine.filters import FILTERS
from engine.upstream.checks import watch_upstreams
from engine.upstream.upstream import Upstream
from engine.wire.framing import TRACING_MODES

try:
    from ext.router import Router
except ImportError as exc:  # no pure-Python fallback (STYLE.md rule 7)
    raise ImportError(
        f"edgeproxy's Cython extensions are not built ({exc}); run `pip install .` "
        "or `python setup.py build_ext --inplace`") from None

_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\*?\}|\*$")


class Settings:
    """Server-wide limits and timeouts, plus trusted-proxy address checks."""

    def __init__(self, cfg):
        for name in ("max_request_line", "max_header_size", "max_header_count",
                     "client_header_timeout", "client_body_timeout", "keepalive_timeout",
                     "keepalive_requests", "send_timeout", "lingering_timeout",
                     "drain_timeout"):
            setattr(self, name, getattr(cfg, name))
        self.networks = [ipaddress.ip_network(n) for n in cfg.trusted_proxies]
        self.tracing = TRACING_MODES[cfg.tracing]
        self.via = None if cfg.via == "off" else cfg.via.encode()  # the Via pseudonym

    def is_trusted(self, ip: str) -> bool:
        if not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    def real_ip(self, xff: bytes, peer: str) -> str:
        """The client address: the rightmost X-Forwarded-For entry that is not a trusted
        proxy (nginx real_ip_recursive on)."""
        hops = [h.strip() for h in xff.decode("latin-1").split(",") if h.strip()]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a garbled chain is not evidence of anything
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else peer


class Shared:
    """State that outlives a reload, by stable key (DESIGN.md "stores"): an object kept under
    a key in the previous snapshot is handed to the new one when the new one asks for the same
    key, so an unchanged limit, upstream or store keeps its counters and connections.

    ``periodic`` holds callables ``fn(worker, now)`` the worker calls on every sweep (health
    checks, load sampling): work that runs on the worker's loop, never per request.
    """

    def __init__(self, cfg, previous=None):
        self.items = {}
        self._previous = previous.items if previous is not None else {}
        self.periodic = []
        self.periods = []  # seconds: the sweep must run at least this often (Build.periodic)
        self.redis = None
        if cfg.redis is not None:
            from engine.stores.redis import RedisStore
            self.redis = self.keep(("redis", cfg.redis), lambda: RedisStore(cfg.redis))

    def counter(self, family: str, route: str) -> dict:
        """A filter's event counts (name -> n) for the metrics, kept across reloads."""
        return self.keep(("counter", family, route), dict)

    def counters(self):
        """(family, route, counts) of every counter: what /metrics exports."""
        for key, counts in self.items.items():
            if key[0] == "counter":
                yield key[1], key[2], counts

    def keep(self, key, factory):
        obj = self.items.get(key)
        if obj is None:
            obj = self._previous.get(key)
            if obj is None:
                obj = factory()
            self.items[key] = obj
        return obj


class Build:
    """What a filter is built with (engine.chain.filter.Filter): the route it serves, the
    root config (consumers, say), and the snapshot's Shared state."""

    __slots__ = ("route", "route_cfg", "config", "shared")

    # The route name of the chain that serves requests no route takes.
    NO_ROUTE = "*"

    def __init__(self, route_cfg, config, shared):
        self.route_cfg = route_cfg  # None for the no-route chain
        self.route = route_cfg.name if route_cfg is not None else self.NO_ROUTE
        self.config = config
        self.shared = shared

    def keep(self, key, factory):
        return self.shared.keep(key, factory)

    def periodic(self, fn, period: float | None = None) -> None:
        """``fn(worker, now)`` on every sweep of the worker (never per request); ``period``:
        how often it must run at least, which shortens the sweep's interval."""
        self.shared.periodic.append(fn)
        if period is not None:
            self.shared.periods.append(period)

    def counter(self, family: str) -> dict:
        return self.shared.counter(family, self.route)


def route_sections(route_cfg, cfg) -> list:
    """(name, section) of the filters a route runs: the server-wide ones ([filters]) merged
    with its own, its own replacing a server-wide section of the same name (nginx-style
    inheritance)."""
    own = dict(route_cfg.sections)
    return [(n, c) for n, c in cfg.filters.sections if n not in own] + list(route_cfg.sections)


def compile_chain(sections, build) -> Chain:
    return Chain([FILTERS[name].Filter(section, build) for name, section in sections])


def compile_route(cfg, pattern: str, upstream, max_body_size: int, chain: Chain) -> Route:
    """One route pattern as the router returns it: the route's chain plus how this pattern
    maps the request path to the upstream path."""
    strip = 0
    if cfg.strip_prefix:
        m = _PARAM_RE.search(pattern)
        prefix = pattern[: m.start()] if m else pattern
        strip = len(prefix.rstrip("/"))
    rewrite = _compile_rewrite(cfg.rewrite) if cfg.rewrite else None
    return Route(cfg.name, pattern, upstream, max_body_size or (1 << 62), chain, strip, rewrite)


def _compile_rewrite(template: str) -> list[str]:
    """Split "/v2/{id}/x" into literal parts and "\\0name" parameter parts."""
    parts = []
    pos = 0
    for m in re.finditer(r"\{([A-Za-z_*][A-Za-z0-9_]*)\}", template):
        parts.append(template[pos:m.start()])
        parts.append("\0" + m.group(1))
        pos = m.end()
    parts.append(template[pos:])
    return [p for p in parts if p]


def _param_names(pattern: str) -> set:
    names = set()
    for m in _PARAM_RE.finditer(pattern):
        names.add(m.group(1) or "*")
    return names


class Runtime:
    """Everything a worker needs to serve: settings, router, routes, upstreams."""

    def __init__(self, cfg, previous=None):
        self.config = cfg
        self.settings = Settings(cfg.server)
        self.shared = Shared(cfg, previous.shared if previous is not None else None)
        old_pools = previous.pools if previous is not None else {}
        self.pools = {}
        self.upstreams = {}
        for up_cfg in cfg.upstreams:
            key = compile_key(tuple(up_cfg.hash_key)) if up_cfg.balancer == "hash" else None
            self.upstreams[up_cfg.name] = Upstream(up_cfg, old_pools, self.pools, self.shared,
                                                   key)
        for upstream in self.upstreams.values():
            if upstream.fallback_name is not None:
                upstream.fallback_to = self.upstreams[upstream.fallback_name]
        watch_upstreams(self.shared, cfg.upstreams, self.upstreams)
        # The certificates of each TLS listener, by name: read afresh by every compile, so a
        # reload serves new files from the next handshake on (engine/control/tls.py).
        self.tls = {entry.name: Certificates(entry.tls, TLSPolicy.of(entry.tls, entry.http2))
                    for entry in cfg.listeners if entry.tls is not None}
        self.router = Router()
        self.routes = []
        # Requests no route takes (404, 405, a malformed request) run the server-wide filters.
        self.server_chain = compile_chain(cfg.filters.sections, Build(None, cfg, self.shared))
        for route_cfg in cfg.routes:
            chain = compile_chain(route_sections(route_cfg, cfg),
                                  Build(route_cfg, cfg, self.shared))
            upstream = self.upstreams.get(route_cfg.upstream) if route_cfg.upstream else None
            max_body = (route_cfg.max_body_size if route_cfg.max_body_size is not None
                        else cfg.server.max_body_size)
            methods = frozenset(m.encode() for m in route_cfg.methods) or None
            for pattern in route_cfg.paths:
                route = compile_route(route_cfg, pattern, upstream, max_body, chain)
                self.routes.append(route)
                self.router.add(route, list(route_cfg.hosts) or None, pattern, methods)

    def release_unused(self, newer, spawn) -> None:
        """Close pools and Redis connections the newer snapshot no longer uses (``spawn``
        runs a coroutine in the background: the worker's)."""
        kept = {id(p) for p in newer.pools.values()}
        for pool in self.pools.values():
            if id(pool) not in kept:
                pool.close()
        redis = self.shared.redis
        if redis is not None and redis is not newer.shared.redis:
            spawn(redis.close())


def check_routes(cfg, errors: list) -> None:
    """Route checks that need the router itself: pattern syntax, hosts, rewrite params."""
    for i, route in enumerate(cfg.routes):
        if route is None:
            continue
        router = Router(cache_size=0)
        for j, pattern in enumerate(route.paths):
            try:
                router.add(route, list(route.hosts) or None, pattern, None)
            except ValueError as exc:
                errors.append((f"routes[{i}].paths[{j}]", str(exc)))
                continue
            if route.rewrite:
                missing = {p[1:] for p in _compile_rewrite(route.rewrite) if p[:1] == "\0"}
                missing -= _param_names(pattern)
                if missing:
                    errors.append((f"routes[{i}].rewrite", "uses {" + ", ".join(sorted(missing))
                                   + f"}} which path \"{pattern}\" does not capture"))
