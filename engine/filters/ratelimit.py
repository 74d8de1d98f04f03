"""Rate limits, calendar quotas, adaptive limits and connection limits for a route.

Every configured check must pass: the route's limits (each with its own algorithm and key),
the quota of the caller's tier for the UTC day and month, and the caller's requests in flight.
A request one check refuses costs the others nothing (checks are evaluated first, then all
committed, as nginx limit_req does across zones). Refused: 429 (RFC 6585 §4) with Retry-After
in delay-seconds (RFC 9110 §10.2.3). Admitted responses and the 429 carry the RateLimit and
RateLimit-Policy fields of draft-ietf-httpapi-ratelimit-headers-11 and the classic
X-RateLimit-* trio, each switchable.

``store = "memory"``: ext.ratelimit tables in each worker, kept across reloads by
``shared.keep((route, limit config))``; no coroutine per request unless a request is delayed.
``store = "redis"``: engine.stores.ratelimit, one EVALSHA per request for all checks, shared
by every worker and every edgeproxy host; ``on_store_error`` decides when Redis fails.
"""

import asyncio
import math
import os
import re
import time
from dataclasses import dataclass, replace

from engine.chain.filter import RATE_LIMIT, Filter as FilterBase
from engine.chain.keys import check_key_spec, compile_key
from engine.chain.schema import REQUIRED, Duration
from engine.chain.schema import key as setting  # "key" is also a field name here
from engine.errors import error_response
from engine.filters.ratelimit_hooks import SingleLimit
from engine.stores import STORE_ERROR_ALIASES, STORE_ERROR_POLICIES
from engine.stores import ratelimit as rstore
from engine.stores.ratelimit_memory import DAY, MONTH, LoadMonitor, QuotaTable, SlotTable
from engine.stores.redis import StoreUnavailable

ERRORS = {
    "rate_limited": (429, "the request exceeds the route's rate limit"),
    "quota_exceeded": (429, "the request exceeds the caller's quota"),
    "too_many_connections": (429, "the caller has too many requests in flight"),
}
METRICS = {
    "ratelimit": ("edgeproxy_ratelimit_rejections_total", "reason",
                  "Requests a rate limit, quota or connection limit refused, by reason."),
}

try:
    from ext.ratelimit import FixedWindow, LeakyBucket, SlidingCounter, SlidingLog, TokenBucket
except ImportError as exc:  # no pure-Python fallback (STYLE.md rule 7)
    raise ImportError(
        f"edgeproxy's Cython extensions are not built ({exc}); run `pip install .` "
        "or `python setup.py build_ext --inplace`") from None

ALGORITHMS = ("fixed_window", "sliding_log", "sliding_counter", "token_bucket", "leaky_bucket")
WINDOWED = ("fixed_window", "sliding_log", "sliding_counter")
FALLBACKS = ("ip", "shared", "skip", "reject")
_TABLES = {"fixed_window": FixedWindow, "sliding_log": SlidingLog,
           "sliding_counter": SlidingCounter, "token_bucket": TokenBucket,
           "leaky_bucket": LeakyBucket}
_CODES = {"fixed_window": rstore.FIXED_WINDOW, "sliding_log": rstore.SLIDING_LOG,
          "sliding_counter": rstore.SLIDING_COUNTER, "token_bucket": rstore.TOKEN_BUCKET,
          "leaky_bucket": rstore.LEAKY_BUCKET}


def _check_name(value: str) -> str:
    # Policy names go into RateLimit-Policy as sf-tokens or sf-strings (draft-11 §3,
    # RFC 8941 §3.3.3): printable ASCII, without the two characters a string would escape.
    if not value or not all(" " <= c <= "~" and c not in '"\\' for c in value):
        raise ValueError(f'"{value}" must be printable ASCII without quotes or backslashes')
    return value


@dataclass(frozen=True)
class LimitConfig:
    name: str = setting(REQUIRED, "policy name, reported in RateLimit-Policy / RateLimit and the "
                              "429 message", check=_check_name)
    algorithm: str = setting("sliding_counter", "fixed_window, sliding_log (exact, up to limit "
                                            "timestamps per key), sliding_counter (weighted "
                                            "previous window), token_bucket, leaky_bucket "
                                            "(nginx limit_req)", choices=ALGORITHMS)
    limit: int = setting(0, "window algorithms: requests per window", min=0)
    window: Duration = setting(60.0, "window algorithms: the window (windows are aligned to "
                                 "multiples of it)")
    rate: float = setting(0.0, "bucket algorithms: requests per second refilled (token_bucket) "
                           "or drained (leaky_bucket)", min=0)
    burst: int = setting(0, "token_bucket: bucket size (requests at once); leaky_bucket: excess "
                        "requests queued beyond the rate (nginx burst)", min=0)
    delay: int = setting(0, "token_bucket: requests past an empty bucket that wait for their "
                        "tokens (throttling) instead of being refused", min=0)
    nodelay: bool = setting(False, "leaky_bucket: forward burst requests at once instead of "
                               "spacing them at the rate (nginx nodelay)")
    key: tuple[str, ...] = setting(("ip",), 'what is counted: key parts "ip", "route", '
                                        '"consumer", "path", "header:Name", "cookie:name", '
                                        '"query:name", combined', check=check_key_spec)
    fallback: str = setting("ip", "a request without the key parts: counted by client ip, "
                              "in one bucket shared by all such requests, not limited "
                              "(skip), or refused", choices=FALLBACKS)
    cost: int = setting(1, "units each request takes", min=1)
    max_keys: int = setting(100000, "memory store: keys tracked per worker; past it the least "
                                "recently seen key is forgotten", min=1)


def _check_limits(limits: tuple) -> tuple:
    names = set()
    for i, lim in enumerate(limits):
        if lim is None:
            continue
        where = f'limits[{i}] "{lim.name}"'
        if lim.name in names:
            raise ValueError(f"{where}: duplicate limit name")
        names.add(lim.name)
        if lim.algorithm in WINDOWED:
            if lim.limit < 1 or lim.window <= 0:
                raise ValueError(f"{where}: {lim.algorithm} needs limit >= 1 and window > 0")
        elif lim.rate <= 0:
            raise ValueError(f"{where}: {lim.algorithm} needs rate > 0")
        elif lim.algorithm == "token_bucket" and lim.burst < 1:
            raise ValueError(f"{where}: token_bucket needs burst >= 1")
    return limits


@dataclass(frozen=True)
class TierConfig:
    name: str = setting(REQUIRED, "tier name (free, pro, ...)", check=_check_name)
    daily: int = setting(0, "requests per UTC calendar day; 0 = no daily cap", min=0)
    monthly: int = setting(0, "requests per UTC calendar month; 0 = no monthly cap", min=0)
    keys: tuple[str, ...] = setting((), "quota key values that belong to this tier")
    default: bool = setting(False, "the tier of keys no tier lists (default: the first tier)")


def _check_tiers(tiers: tuple) -> tuple:
    names, owners = set(), {}
    if not tiers:
        raise ValueError("needs at least one tier")
    if sum(1 for t in tiers if t is not None and t.default) > 1:
        raise ValueError("only one tier may be the default")
    for t in tiers:
        if t is None:
            continue
        if t.name in names:
            raise ValueError(f'duplicate tier name "{t.name}"')
        names.add(t.name)
        for k in t.keys:
            if k in owners:
                raise ValueError(f'key "{k}" is in tiers "{owners[k]}" and "{t.name}"')
            owners[k] = t.name
    return tiers


@dataclass(frozen=True)
class QuotaConfig:
    key: tuple[str, ...] = setting(("header:X-API-Key",), "what a quota belongs to (key parts, "
                                                      "as for limits)", check=check_key_spec)
    fallback: str = setting("reject", "a request without the key parts: as for limits",
                        choices=FALLBACKS)
    tiers: tuple[TierConfig, ...] = setting(REQUIRED, "the tiers, each a daily and a monthly cap",
                                        check=_check_tiers)
    tier: str | None = setting(None, 'a key part naming the caller\'s tier, e.g. "header:X-Plan" '
                                 "set by an auth layer in front; unknown names get the "
                                 "default tier", check=lambda v: check_key_spec((v,))[0])
    cost: int = setting(1, "units each request takes", min=1)
    max_keys: int = setting(100000, "memory store: keys tracked per worker (least recently seen "
                                "forgotten past it)", min=1)


def _check_steps(steps: tuple) -> tuple:
    if not steps or any(s < 2 for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError("needs increasing divisors >= 2, e.g. [2, 4]")
    return steps


@dataclass(frozen=True)
class AdaptiveConfig:
    lag: Duration = setting(0.1, "event-loop lag over which the worker is overloaded")
    in_flight: int = setting(0, "requests in flight in the worker over which it is overloaded; "
                            "0 = judge by lag only", min=0)
    steps: tuple[int, ...] = setting((2, 4), "divisors of every limit of the route: each "
                                         "overloaded sample moves one step further",
                                 check=_check_steps)
    recover_ratio: float = setting(0.5, "calm = lag and in-flight at or under this share of "
                                    "their thresholds", min=0, max=1)
    recover_after: Duration = setting(10.0, "calm for this long moves one step back")


@dataclass(frozen=True)
class ConnectionsConfig:
    max: int = setting(REQUIRED, "requests in flight per key (nginx limit_conn); per worker with "
                             'store = "memory", across all with "redis"', min=1)
    key: tuple[str, ...] = setting(("ip",), "what is counted (key parts, as for limits)",
                               check=check_key_spec)
    fallback: str = setting("ip", "a request without the key parts: as for limits",
                        choices=FALLBACKS)
    slot_ttl: Duration = setting(300.0, "redis store: a slot its worker never released (a crash) "
                                    "lapses after this")


@dataclass(frozen=True)
class Config:
    store: str = setting("memory", 'where counts live: "memory" (per worker) or "redis" (every '
                               "worker and host; needs [redis])", choices=("memory", "redis"))
    on_store_error: str = setting("allow", 'Redis down or slow: "allow" the request unlimited or '
                                       '"deny" it with 503', choices=STORE_ERROR_POLICIES,
                                  aliases=STORE_ERROR_ALIASES)
    limits: tuple[LimitConfig, ...] = setting((), "the limits; all must pass",
                                          check=_check_limits)
    quota: QuotaConfig | None = setting(None, "daily and monthly quotas per key, by tier")
    adaptive: AdaptiveConfig | None = setting(None, "shrink the limits while the worker is "
                                                "overloaded")
    connections: ConnectionsConfig | None = setting(None, "requests in flight per key")
    ratelimit_headers: bool = setting(True, "send RateLimit-Policy and RateLimit "
                                        "(draft-ietf-httpapi-ratelimit-headers)")
    x_ratelimit_headers: bool = setting(True, "send X-RateLimit-Limit, -Remaining, -Reset (seconds)")
    quota_headers: bool = setting(True, "send X-Quota-Limit-Day/-Month, X-Quota-Remaining-Day/"
                                    "-Month, X-Quota-Reset-Day/-Month")


def _key_getter(parts: tuple, fallback: str):
    """fn(ctx) -> str key, None (skip this check) or _REFUSE."""
    get = compile_key(parts)
    if tuple(parts) == ("ip",):
        return get  # every request has an address: no fallback needed
    if fallback == "ip":
        return lambda ctx: get(ctx) or "ip:" + ctx.client_ip
    if fallback == "shared":
        return lambda ctx: get(ctx) or ""
    if fallback == "skip":
        return get
    return lambda ctx: get(ctx) or _REFUSE


_REFUSE = "\0refuse"  # no key part yields it: parts are joined text from the request


_SF_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*")


def _sf_item(name: str) -> bytes:
    """A policy name as a Structured Field bare item (RFC 8941 §3.3): a Token, as the
    draft's examples write them (``default;q=100;w=60``), or a String when the name is not
    a valid Token (names are checked to need no escaping)."""
    if _SF_TOKEN.fullmatch(name):
        return name.encode()
    return b'"' + name.encode() + b'"'


class _Limit:
    __slots__ = ("name", "sf", "keyfn", "cost", "table", "check", "limit", "window",
                 "limit_bytes", "item", "variants")

    def __init__(self, route: str, cfg: LimitConfig, shared, memory: bool, overrides=()):
        self.name = cfg.name
        self.sf = _sf_item(cfg.name)
        self.keyfn = _key_getter(cfg.key, cfg.fallback)
        self.cost = cfg.cost
        algo = cfg.algorithm
        if algo in WINDOWED:
            self.limit, self.window = cfg.limit, cfg.window
            params = (cfg.limit, cfg.window, 0)
            args = (cfg.limit, cfg.window, cfg.max_keys)
        elif algo == "token_bucket":
            self.limit = cfg.burst + cfg.delay
            params = args = (cfg.rate, cfg.burst, cfg.delay)
        else:
            self.limit = cfg.burst + 1
            params = (cfg.rate, cfg.burst, int(cfg.nodelay))
            args = (cfg.rate, cfg.burst, cfg.nodelay)
        table_cls = _TABLES[algo]
        if algo not in WINDOWED:
            self.window = self.limit / cfg.rate
        self.limit_bytes = b"%d" % self.limit
        self.table = None
        if memory:
            if table_cls in (TokenBucket, LeakyBucket):
                args = (*args, cfg.max_keys)
            self.table = shared.keep(("ratelimit", route, cfg), lambda: table_cls(*args))
        self.check = rstore.Check(_CODES[algo], *params, f"{route}:{cfg.name}", cfg.name)
        self.item = self.sf + b";q=%d;w=%d" % (self.limit, math.ceil(self.window))
        # consumer name -> this limit with the consumer's own values ([[consumers]]
        # rate_limits), counted in tables of its own; None when no consumer overrides it.
        self.variants = None
        if overrides:
            self.variants = {
                name: _Limit(f"{route}@{name}", replace(cfg, **{
                    f: v for f in ("limit", "window", "rate", "burst")
                    if (v := getattr(o, f)) is not None}), shared, memory)
                for name, o in overrides}


class _Tier:
    __slots__ = ("name", "caps", "checks", "policy")

    def __init__(self, route: str, cfg: TierConfig):
        self.name = cfg.name
        # (period, cap, sf name, header suffix); a 0 cap is no cap
        self.caps = tuple((p, cap, sf, suffix) for p, cap, sf, suffix in (
            (DAY, cfg.daily, b"daily", b"Day"), (MONTH, cfg.monthly, b"monthly", b"Month"))
            if cap)
        self.checks = tuple(rstore.Check(rstore.CALENDAR, cap, p, 0, f"{route}:quota:{p}",
                                         "quota") for p, cap, _, _ in self.caps)
        # draft-11 §3.1: w is optional; a calendar month has no fixed length, so only the
        # day gives one.
        self.policy = b", ".join(sf + b";q=%d" % cap + (b";w=86400" if p == DAY else b"")
                                 for p, cap, sf, _ in self.caps)


class Filter(FilterBase):
    """The route's rate-limit section. ``clock``: None in production (ext tables use the
    monotonic clock, quotas the wall clock, Redis its own TIME); tests set a function
    returning seconds and it is used for all of them.

    The hooks are bound per route: a route with one limit in memory and nothing else gets
    SingleLimit's compiled ones (engine/filters/ratelimit_hooks.pyx), any other the general
    ``_check`` / ``_headers`` below, and ``on_log`` only when a connection limit holds
    slots."""

    __slots__ = ("on_request", "on_response", "on_log", "single", "_clock", "limits",
                 "redis", "deny", "quota", "tiers", "default_tier", "tier_of", "tier_key",
                 "quota_key", "quota_table", "quota_cost", "monitor", "conn_key", "conn_max",
                 "conn_ttl", "slots", "conn_check", "policy", "ietf", "classic",
                 "quota_headers", "route", "events", "overridden", "consumer_tier")
    PHASE = RATE_LIMIT

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        shared = build.shared
        route = build.route
        self.route = route
        memory = cfg.store == "memory"
        self.redis = None if memory else shared.redis
        self.deny = cfg.on_store_error == "deny"
        self._clock = None
        consumers = build.config.consumers
        self.limits = tuple(_Limit(route, lc, shared, memory, [
            (c.name, o) for c in consumers for o in c.rate_limits if o.name == lc.name])
            for lc in cfg.limits)
        self.overridden = any(lim.variants for lim in self.limits)
        self.policy = b", ".join(lim.item for lim in self.limits)
        q = cfg.quota
        self.quota = q is not None
        self.quota_table = self.tier_key = self.quota_key = None
        self.tiers, self.tier_of, self.default_tier, self.quota_cost = {}, {}, None, 1
        self.consumer_tier = {}
        if q is not None:
            self.quota_key = _key_getter(q.key, q.fallback)
            self.quota_cost = q.cost
            self.tiers = {t.name: _Tier(route, t) for t in q.tiers}
            self.default_tier = self.tiers[next((t.name for t in q.tiers if t.default),
                                                q.tiers[0].name)]
            self.tier_of = {k: self.tiers[t.name] for t in q.tiers for k in t.keys}
            self.tier_key = compile_key((q.tier,)) if q.tier else None
            self.consumer_tier = {c.name: self.tiers[c.tier] for c in consumers
                                  if c.tier in self.tiers}
            if memory:
                self.quota_table = shared.keep(("ratelimit-quota", route, q),
                                               lambda: QuotaTable(q.max_keys))
        self.monitor = None
        if cfg.adaptive is not None:
            self.monitor = shared.keep(("ratelimit-load", route, cfg.adaptive),
                                       lambda: LoadMonitor(cfg.adaptive))
            shared.periodic.append(self.monitor.sample)
        c = cfg.connections
        self.conn_key = self.slots = self.conn_check = None
        self.conn_max, self.conn_ttl = 0, 0.0
        if c is not None:
            self.conn_key = _key_getter(c.key, c.fallback)
            self.conn_max, self.conn_ttl = c.max, c.slot_ttl
            self.conn_check = rstore.Check(rstore.SLOT, c.max, c.slot_ttl, 0,
                                           f"{route}:conn", "connections")
            if memory:
                self.slots = shared.keep(("ratelimit-conn", route, c), SlotTable)
        self.events = shared.counter("ratelimit", route)
        self.ietf = cfg.ratelimit_headers
        self.classic = cfg.x_ratelimit_headers
        self.quota_headers = cfg.quota_headers
        self.single = None
        if (memory and len(self.limits) == 1 and q is None and c is None
                and self.monitor is None and not self.overridden):
            lim = self.limits[0]
            self.single = SingleLimit(lim.table, lim.keyfn, lim.cost, _REFUSE, self._refused,
                                      self._refuse_keyless, _sleep, lim.limit_bytes, lim.sf,
                                      self.policy, self.classic, self.ietf)
            self.on_request, self.on_response = self.single.on_request, self.single.on_response
        else:
            self.on_request, self.on_response = self._check, self._headers
        if c is not None:
            self.on_log = self._release_slot

    @property
    def clock(self):
        return self._clock

    @clock.setter
    def clock(self, fn):
        self._clock = fn
        if self.single is not None:
            self.single.clock = fn

    # -- request

    def _check(self, ctx):
        if self.redis is not None:
            return self._redis(ctx)
        return self._memory(ctx)

    def _keys(self, ctx):
        """The plan: [(limit, key)], the quota (key, tier) or None, the connection key or
        None; or a Response when a check with fallback "reject" finds no key."""
        pairs = []
        for lim in self.limits:
            if lim.variants is not None:
                lim = lim.variants.get(ctx.consumer, lim)
            k = lim.keyfn(ctx)
            if k is _REFUSE:
                return self._refuse_keyless(ctx)
            if k is not None:
                pairs.append((lim, k))
        quota = None
        if self.quota:
            k = self.quota_key(ctx)
            if k is _REFUSE:
                return self._refuse_keyless(ctx)
            if k is not None:
                # The tier a key is listed in, else the consumer's, else the tier key's,
                # else the default.
                tier = self.tier_of.get(k) or self.consumer_tier.get(ctx.consumer)
                if tier is None:
                    tier = self.default_tier
                    if self.tier_key is not None:
                        tier = self.tiers.get(self.tier_key(ctx), tier)
                quota = (k, tier)
        conn = None
        if self.conn_key is not None:
            conn = self.conn_key(ctx)
            if conn is _REFUSE:
                return self._refuse_keyless(ctx)
        return pairs, quota, conn

    def _memory(self, ctx):
        plan = self._keys(ctx)
        if not isinstance(plan, tuple):
            return plan
        pairs, quota, conn = plan
        div = self.monitor.divisor if self.monitor is not None else 1
        if conn is not None and self.slots.count(conn) >= self.conn_max:
            return self._refused(ctx, "too_many_connections", 1.0)
        clock = self.clock
        quota_view = None
        if quota is not None:
            wall = clock() if clock is not None else time.time()
            k, tier = quota
            quota_view = []
            refused = None
            for period, cap, _, _ in tier.caps:
                used, reset = self.quota_table.peek(k, period, wall)
                quota_view.append((cap, cap - used - self.quota_cost, reset))
                if used + self.quota_cost > cap and (refused is None or reset > refused):
                    refused = reset
            if refused is not None:
                self._stash(ctx, (), (tier, [(cap, max(r + self.quota_cost, 0), reset)
                                             for cap, r, reset in quota_view]), div)
                return self._refused(ctx, "quota_exceeded", refused)
        now = clock() if clock is not None else time.monotonic()
        # Peek every limit but the last, whose check then decides for itself: so a request
        # one limit refuses is counted by none (nginx limit_req across zones).
        last = len(pairs) - 1
        for i in range(last):
            lim, k = pairs[i]
            remaining, reset = lim.table.peek(k, now)
            if remaining < lim.cost * div:
                verdict, remaining, reset, wait = lim.table.check(k, now, lim.cost * div)
                # check agrees with peek (same now, nothing between): a REJECT, committed
                # nowhere
                self._stash(ctx, ((lim, remaining, reset, wait, verdict),), None, div)
                return self._refused(ctx, "rate_limited", wait)
        results = []
        wait_max = 0.0
        for i in range(last, -1, -1):
            lim, k = pairs[i]
            verdict, remaining, reset, wait = lim.table.check(k, now, lim.cost * div)
            results.append((lim, remaining, reset, wait, verdict))
            if verdict == 0:
                self._stash(ctx, results, None, div)
                return self._refused(ctx, "rate_limited", wait)
            if wait > wait_max:
                wait_max = wait
        if quota is not None:
            self.quota_table.add(quota[0], self.quota_cost, wall)
        if conn is not None:
            self.slots.acquire(conn)
            _slot(ctx, conn)  # given back by on_log
        self._stash(ctx, results, (quota[1], quota_view) if quota else None, div)
        if wait_max > 0:
            return _sleep(wait_max)
        return None

    async def _redis(self, ctx):
        plan = self._keys(ctx)
        if not isinstance(plan, tuple):
            return plan
        pairs, quota, conn = plan
        div = self.monitor.divisor if self.monitor is not None else 1
        checks, keys, costs = [], [], []
        for lim, k in pairs:
            checks.append(lim.check)
            keys.append(k)
            costs.append(lim.cost * div)
        if quota is not None:
            for check in quota[1].checks:
                checks.append(check)
                keys.append(quota[0])
                costs.append(self.quota_cost)
        slot_id = None
        if conn is not None:
            checks.append(self.conn_check)
            keys.append(conn)
            costs.append(1)
            # Our own id, never the client's X-Request-ID: copies of one id would share a
            # slot and pass the limit.
            slot_id = os.urandom(8).hex()
        if not checks:
            return None
        store = self.redis
        if slot_id is not None:
            # Noted before the call: a client that leaves while Redis decides still gives
            # its slot back in on_log (the release follows the decision on the one pipelined
            # connection; for a refused request it removes nothing).
            _slot(ctx, (rstore.redis_key(store, checks[-1], conn, len(checks) == 1), slot_id))
        try:
            out = await rstore.decide(store, checks, keys, costs,
                                      self.clock() if self.clock is not None else None,
                                      slot_id or "")
        except StoreUnavailable:
            if not self.deny:
                return None
            # 503, not 429: the client did nothing wrong, and a 429 would read as "over your
            # quota" to it and as limiting to the operator's dashboards.
            return self._refused(ctx, "store_unavailable", store.cfg.breaker_cooldown,
                                 "the rate-limit store is unavailable and this route denies "
                                 "what it cannot count")
        n = len(pairs)
        results = [(lim, *out[i][1:], out[i][0]) for i, (lim, _) in enumerate(pairs)]
        quota_view = None
        if quota is not None:
            quota_view = [(cap, rem, reset) for (_, cap, _, _), (_, rem, reset, _) in
                          zip(quota[1].caps, out[n:n + len(quota[1].caps)], strict=True)]
        self._stash(ctx, results, (quota[1], quota_view) if quota else None, div)
        refused = [(r[3], i) for i, r in enumerate(out) if r[0] == 0]
        if refused:
            wait, i = max(refused)
            code = ("rate_limited" if i < n else "too_many_connections"
                    if checks[i] is self.conn_check else "quota_exceeded")
            return self._refused(ctx, code, wait)
        wait = max(r[3] for r in out)
        if wait > 0:
            await asyncio.sleep(wait)
        return None

    def _release_slot(self, ctx):
        """The request ended, however: its connection-limit slot is given back."""
        v = ctx.vars
        slot = v.get("ratelimit-slot") if v is not None else None
        if slot is None:
            return
        if self.redis is None:
            self.slots.release(slot)
        else:
            ctx.worker.spawn(self._release(*slot))

    async def _release(self, redis_key, slot_id):
        try:
            await rstore.release(self.redis, redis_key, slot_id)
        except StoreUnavailable:
            pass  # the slot lapses after slot_ttl

    # -- answers and headers

    @staticmethod
    def _stash(ctx, results, quota, div):
        if ctx.vars is None:
            ctx.vars = {}
        ctx.vars["ratelimit"] = (results, quota, div)

    def _refused(self, ctx, code: str, wait: float, message: str | None = None):
        self.events[code] = self.events.get(code, 0) + 1
        headers = None
        if wait != math.inf:
            # RFC 9110 §10.2.3: delay-seconds, a whole number; rounded up so a client that
            # obeys it is not refused again for being early.
            headers = [(b"Retry-After", b"%d" % max(1, math.ceil(wait)))]
        return error_response(code, ctx.request_id.decode(), message, headers)

    def _refuse_keyless(self, ctx):
        self.events["no_key"] = self.events.get("no_key", 0) + 1
        return error_response("rate_limited", ctx.request_id.decode(),
                              "the request lacks the fields this route's limits count by")

    def _headers(self, ctx, resp):
        v = ctx.vars
        state = v.get("ratelimit") if v is not None else None
        if state is None:
            return
        results, quota, div = state
        h = resp.headers
        base, limits = self.policy, self.limits
        if self.overridden:
            # The consumer's own values, where it has some.
            used = {r[0].name: r[0] for r in results}
            limits = [used.get(lim.name, lim) for lim in limits]
            base = b", ".join(lim.item for lim in limits)
        if quota is None and div == 1 and len(results) == 1:
            # One limit (the usual route): its own figures, without the search below.
            lim, remaining, reset, wait, verdict = results[0]
            t = _seconds(wait if verdict == 0 else reset)
            if self.classic:
                h.append((b"X-RateLimit-Limit", lim.limit_bytes))
                h.append((b"X-RateLimit-Remaining", b"%d" % remaining))
                h.append((b"X-RateLimit-Reset", t))
            if self.ietf:
                h.append((b"RateLimit-Policy", base))
                h.append((b"RateLimit", lim.sf + b";r=%d;t=" % remaining + t))
            return
        best = None  # the limit closest to exhaustion: lowest remaining, then longest reset
        for lim, remaining, reset, wait, verdict in results:
            r = remaining // div
            t = wait if verdict == 0 else reset
            if best is None or r < best[1] or (r == best[1] and t > best[2]):
                best = (lim, r, t)
        ietf_best = None
        if best is not None:
            ietf_best = (best[0].sf, best[1], best[2])
            if self.classic:
                h.append((b"X-RateLimit-Limit", b"%d" % (best[0].limit // div)))
                h.append((b"X-RateLimit-Remaining", b"%d" % best[1]))
                h.append((b"X-RateLimit-Reset", _seconds(best[2])))
        policy = base
        if quota is not None:
            tier, view = quota
            if tier.policy:
                policy = policy + b", " + tier.policy if policy else tier.policy
            for (_, cap, sf, suffix), (_, remaining, reset) in zip(tier.caps, view, strict=True):
                remaining = max(remaining, 0)
                if ietf_best is None or remaining < ietf_best[1]:
                    ietf_best = (sf, remaining, reset)
                if self.quota_headers:
                    h.append((b"X-Quota-Limit-" + suffix, b"%d" % cap))
                    h.append((b"X-Quota-Remaining-" + suffix, b"%d" % remaining))
                    h.append((b"X-Quota-Reset-" + suffix, _seconds(reset)))
        if self.ietf and ietf_best is not None:
            if div > 1 and limits:
                # draft-11 §5.2: a server with temporarily reduced capacity may say so with
                # the lowered quota.
                policy = b", ".join(
                    lim.sf + b";q=%d;w=%d" % (lim.limit // div, math.ceil(lim.window))
                    for lim in limits) + policy[len(base):]
            h.append((b"RateLimit-Policy", policy))
            # draft-11 §4: one item for the policy closest to exhaustion; on a 429 its t is
            # the Retry-After delay (§6: Retry-After not earlier than the window's end).
            sf, r, t = ietf_best
            h.append((b"RateLimit", sf + b";r=%d;t=" % r + _seconds(t)))


def _seconds(t: float) -> bytes:
    if t == math.inf:
        return b"0"
    return b"%d" % math.ceil(t) if t > 0 else b"0"


async def _sleep(wait: float):
    """A DELAY verdict: hold the request (throttling), then let it through."""
    await asyncio.sleep(wait)
    return None


def _slot(ctx, slot) -> None:
    # The connection-limit slot this request holds: a key (memory) or (redis key, slot id).
    if ctx.vars is None:
        ctx.vars = {}
    ctx.vars["ratelimit-slot"] = slot
