"""Idempotency keys at the gateway: one execution per key, the same answer for every copy.

Follows draft-ietf-httpapi-idempotency-key-header (cited as "draft §n"; section numbers of
the -07 working-group text) and the behaviour payment APIs made familiar (Stripe):

- The key is a Structured Field String (draft §2.1, RFC 8941 §3.3.3): ``Idempotency-Key:
  "8e03978e-40d5-43e8-bc93-6894a57f9324"``. Bare values (``Idempotency-Key: 8e03...``, what
  Stripe's clients send) are accepted unless ``bare_keys = false``; both forms then must match
  ``pattern`` and the length bounds, so a bare and a quoted key with the same characters are
  the same key. More than one Idempotency-Key field is malformed (draft §2.1).
- Missing on a route that requires it: 400; malformed: 400 (draft §2.7).
- First request: the key is claimed atomically, the request goes upstream with
  ``ctx.protected`` set (so the upstream layer may send it to the next server when one
  answers 502/503/504), and the final response (status, headers as relayed, body) is stored
  with the request fingerprint.
- Same key, same fingerprint, completed: the stored response is replayed with
  ``Idempotent-Replayed: true``, success or error alike (draft §2.6); upstream is not called.
- Same key while the first is in flight: 409 with Retry-After (draft §2.6, §2.7), or with
  ``concurrent = "wait"`` the duplicate waits up to ``max_wait`` for the first and replays it.
- Same key, different fingerprint: 422 (draft §2.7). The fingerprint (draft §2.4) is a digest
  of method, path, query, ``fingerprint_headers`` and the request body.
- Statuses in ``release`` (default 429 and 5xx) mean nothing happened: the claim is dropped,
  not stored, so the client's retry runs (as Stripe does for requests that never began
  executing). The proxy's own 502/503/504 release it only when the request never reached an
  upstream (connect failure or timeout, no server available); after it did (a read timeout, a
  connection lost mid-request) the outcome is unknown, and the claim is kept until its lease
  ends rather than inviting a second execution.
- Records are looked up by a digest of route, caller and key (draft §4, composite key).
  The caller is the authenticated consumer, or what ``caller`` names; without either the
  key alone, within the route: a retry from another address (a phone that changed networks,
  a second load balancer, a NAT pool) is exactly the retry the key exists for, so scoping
  by client address would execute it twice. Then a replay needs the key and an identical
  request (the fingerprint); anything else with a used key gets 422.
"""

import asyncio
import hashlib
import os
import re
import time
from dataclasses import dataclass
from functools import partial

from engine.chain.filter import IDEMPOTENCY, STREAM, Filter as FilterBase
from engine.chain.keys import check_key_spec, compile_key
from engine.chain.schema import Duration, Size, check_header_name, check_methods, check_regex, key
from engine.errors import error_response
from engine.errors import Response
from engine.stores import STORE_ERROR_ALIASES, STORE_ERROR_POLICIES
from engine.stores.idempotency import (
    CLAIMED, DONE, MISMATCH, MemoryStore, RedisStore, Stored)
from engine.stores.redis import StoreUnavailable

ERRORS = {
    "idempotency_key_missing": (400, "this route requires an Idempotency-Key header"),
    "idempotency_key_invalid": (400, "the Idempotency-Key header is malformed"),
    "idempotency_conflict": (409, "a request with this Idempotency-Key is still in progress"),
    "idempotency_mismatch": (422, "this Idempotency-Key was already used for a different "
                                  "request"),
}
METRICS = {
    "idempotency": ("edgeproxy_idempotency_requests_total", "outcome",
                    "Requests with an Idempotency-Key, by outcome (claimed, replayed, "
                    "conflict, mismatch, invalid, missing, store_error)."),
}

_SF_UNESCAPED = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_REPLAYED = (b"Idempotent-Replayed", b"true")
# Not part of the answer: the exchange adds its own X-Request-ID to each response.
_NOT_STORED = frozenset((b"x-request-id",))


def _release(values):
    for v in values:
        if not re.fullmatch(r"[1-5](\d\d|xx)", v):
            raise ValueError(f'"{v}" is neither a status ("429") nor a class ("5xx")')
    return values


def _headers(values):
    for v in values:
        check_header_name(v)
    return values


@dataclass(frozen=True)
class Config:
    methods: tuple[str, ...] = key(("POST", "PATCH"), "methods the key applies to; others "
                                                      "pass through untouched", check=check_methods)
    header: str = key("Idempotency-Key", "request header carrying the key",
                      check=check_header_name)
    required: bool = key(False, "answer 400 to a request of those methods without a key")
    bare_keys: bool = key(True, 'accept unquoted keys (Stripe style) besides the sf-string '
                                '"..." of the draft')
    min_length: int = key(1, "shortest key accepted", min=1, max=1024)
    max_length: int = key(255, "longest key accepted (Stripe: 255)", min=1, max=1024)
    pattern: str = key(r"[A-Za-z0-9_.:~+/=-]+", "regular expression the whole key must "
                                                "match", check=check_regex)
    ttl: Duration = key(86400.0, "how long a completed response is kept and replayed")
    lease: Duration = key(60.0, "how long a claim outlives a proxy that crashed mid-request "
                                "(a running request renews it every lease/3)")
    concurrent: str = key("reject", 'a duplicate of a request in flight: "reject" (409) or '
                                    '"wait" for its answer', choices=("reject", "wait"))
    max_wait: Duration = key(10.0, 'longest wait of a duplicate with concurrent = "wait"; '
                                   "then 409")
    retry_after: int = key(1, "Retry-After seconds on a 409", min=0, max=3600)
    max_body_size: Size = key(1 << 20, "largest request body fingerprinted; a larger one with "
                                       "a key gets 413")
    max_response_size: Size = key(1 << 20, "largest response body stored; a larger response "
                                           "keeps its key used but cannot be replayed (409)")
    release: tuple[str, ...] = key(("429", "5xx"), 'statuses that mean "nothing happened": '
                                                   "the key is freed instead of storing the "
                                                   "answer", check=_release)
    fingerprint_headers: tuple[str, ...] = key((), "request headers that are part of the "
                                                   "fingerprint", check=_headers)
    caller: tuple[str, ...] = key((), "key parts naming the caller, whose keys are kept apart "
                                      '(e.g. ["header:X-Api-Key"], or ["ip"] for the client '
                                      "address); empty = the authenticated consumer, else "
                                      "none: the key alone, per route", check=check_key_spec)
    store: str = key("memory", '"memory" (this worker only) or "redis" (all workers and '
                               "instances)", choices=("memory", "redis"))
    memory_size: Size = key(64 << 20, "bytes of responses the memory store keeps per route "
                                      "and worker (LRU)", min=1)
    on_store_error: str | None = key(None, 'Redis unreachable: "deny" (503) or "allow" '
                                           '(unprotected); default deny when required, '
                                           "else allow", choices=STORE_ERROR_POLICIES,
                                     aliases=STORE_ERROR_ALIASES)
    min_replicas: int = key(0, "Redis replicas that must acknowledge a claim (WAIT) before "
                               "the request goes upstream, so a failover keeps it; fewer in "
                               "time is a store error (on_store_error); 0: the master's word "
                               "(docs/redis.md)", min=0, max=16)
    replica_timeout: Duration = key(0.1, "longest wait for those acknowledgements")


def parse_key(raw: bytes, bare_ok: bool) -> str | None:
    """The key inside an Idempotency-Key value, or None when it is not a valid one."""
    try:
        v = raw.decode("ascii").strip(" \t")  # RFC 8941 §4.2: surrounding SP is discarded
    except UnicodeDecodeError:
        return None
    if v[:1] != '"':
        return v if bare_ok and v else None
    # RFC 8941 §4.2.5: DQUOTE *( unescaped / "\" ( DQUOTE / "\" ) ) DQUOTE, nothing after
    # (parameters are not defined for this field, draft §2.1).
    if len(v) < 2 or v[-1] != '"':
        return None
    inner = v[1:-1]
    if "\\" in inner:
        out = []
        i = 0
        while i < len(inner):
            c = inner[i]
            if c == "\\":
                if i + 1 >= len(inner) or inner[i + 1] not in '"\\':
                    return None
                out.append(inner[i + 1])
                i += 2
                continue
            if c == '"':
                return None
            out.append(c)
            i += 1
        inner = "".join(out)
    elif not _SF_UNESCAPED.fullmatch(inner):
        return None
    return inner


class _Claimed:
    """One claimed request's record handle, kept in ``ctx.vars``."""

    __slots__ = ("key", "owner", "headers", "body", "proxy_made")

    def __init__(self, key, owner):
        self.key = key
        self.owner = owner
        self.headers = None
        self.body = None  # the whole answer's body, when it was within max_response_size
        self.proxy_made = False  # the answer is the proxy's own, not the upstream's


class Filter(FilterBase):
    __slots__ = ("methods", "lheader", "required", "bare_ok", "min_length", "max_length",
                 "pattern", "ttl", "lease", "wait", "max_wait", "retry_after", "max_body",
                 "max_response", "release", "settle_for", "fp_headers", "caller", "route", "store",
                 "reject_on_error", "too_large", "live", "renew_due", "events")
    PHASE = IDEMPOTENCY

    def __init__(self, cfg: Config, build):
        # Imported here, not at module level: the config schema imports this module, and the
        # data plane need not load for `edgeproxy check`.
        from engine.chain.context import BodyTooLarge

        super().__init__(cfg, build)
        shared = build.shared
        self.too_large = BodyTooLarge
        self.methods = frozenset(m.encode() for m in cfg.methods)
        self.lheader = cfg.header.lower().encode()
        self.required = cfg.required
        self.bare_ok = cfg.bare_keys
        self.min_length = cfg.min_length
        self.max_length = cfg.max_length
        self.pattern = re.compile(cfg.pattern)
        self.ttl = cfg.ttl
        self.lease = cfg.lease
        # A failed settle is tried again while the claim surely lives: renewed every lease/3,
        # it has at least 2/3 of a lease left when its request ends.
        self.settle_for = cfg.lease / 2
        self.wait = cfg.concurrent == "wait"
        self.max_wait = cfg.max_wait
        self.retry_after = [(b"Retry-After", b"%d" % cfg.retry_after)]
        self.max_body = cfg.max_body_size
        self.max_response = cfg.max_response_size
        self.release = frozenset(_statuses(cfg.release))
        self.fp_headers = tuple(h.lower().encode() for h in cfg.fingerprint_headers)
        self.caller = compile_key(cfg.caller) if cfg.caller else None
        self.route = build.route.encode()
        self.reject_on_error = (cfg.on_store_error or
                                ("deny" if cfg.required else "allow")) == "deny"
        if cfg.store == "redis":
            self.store = shared.keep(
                ("idempotency", "redis", shared.redis, cfg.min_replicas, cfg.replica_timeout),
                lambda: RedisStore(shared.redis, cfg.min_replicas, cfg.replica_timeout))
        else:
            # One store per route and worker, kept across reloads while its size is unchanged.
            self.store = shared.keep(("idempotency", build.route, cfg.memory_size),
                                     lambda: MemoryStore(cfg.memory_size))
            shared.periodic.append(self.store.sweep)
        # Claims this worker holds, renewed while their requests run: a lease bounds a
        # crashed proxy's claim, not a slow upstream's (a long request must not lose its key
        # to a duplicate mid-flight).
        self.live = shared.keep(("idempotency-live", build.route), dict)
        self.events = shared.counter("idempotency", build.route)
        self.renew_due = 0.0
        build.periodic(self._renew, self.lease)  # claims renewed every lease/3

    # -- request

    def on_request(self, ctx):
        if ctx.method not in self.methods:
            return None
        values = [v for n, v in ctx.headers if n.lower() == self.lheader]
        if not values:
            if self.required:
                self._count("missing")
                return error_response(
                    "idempotency_key_missing", ctx.request_id.decode(),
                    f"this route requires an {self.cfg.header} header: a unique string per "
                    f'operation, e.g. {self.cfg.header}: "8e03978e-40d5-43e8-bc93-6894a57f9324"'
                    f", sent again unchanged on every retry")
            return None
        if len(values) > 1:
            return self._invalid(ctx, f"send exactly one {self.cfg.header} field")
        k = parse_key(values[0], self.bare_ok)
        if k is None:
            return self._invalid(ctx, f'{self.cfg.header} must be a quoted string, e.g. '
                                      f'"8e03978e-40d5-43e8-bc93-6894a57f9324"')
        if not self.min_length <= len(k) <= self.max_length or not self.pattern.fullmatch(k):
            return self._invalid(ctx, f"{self.cfg.header} must be {self.min_length}-"
                                      f"{self.max_length} characters matching "
                                      f"{self.cfg.pattern}")
        return self._claim(ctx, k)

    def _invalid(self, ctx, message):
        self._count("invalid")
        return error_response("idempotency_key_invalid", ctx.request_id.decode(), message)

    def record_key(self, ctx, idem_key: str) -> str:
        """The store key: route, caller and key digested together (draft §4)."""
        if self.caller is not None:
            who = self.caller(ctx)
            who = "ip:" + ctx.client_ip if who is None else "k:" + who
        elif ctx.consumer is not None:
            who = "c:" + str(ctx.consumer)
        else:
            who = ""  # the route's key space (see the module docstring)
        h = hashlib.blake2b(digest_size=16)
        for part in (self.route, who.encode(), idem_key.encode()):
            h.update(b"%d:" % len(part))  # length-prefixed: no two splits digest alike
            h.update(part)
        return h.hexdigest()

    def fingerprint(self, ctx, body: bytes) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(ctx.method + b" " + ctx.path.encode() + b" " + ctx.query + b"\n")
        for lname in self.fp_headers:
            for n, v in ctx.headers:
                if n.lower() == lname:
                    h.update(lname + b":" + v + b"\n")
        h.update(b"%d\n" % len(body))
        h.update(body)
        return h.digest()

    async def _claim(self, ctx, idem_key):
        rid = ctx.request_id.decode()
        try:
            body = await ctx.read_body(self.max_body)
        except self.too_large:
            return error_response("body_too_large", rid, f"a request with {self.cfg.header} "
                                  f"may carry at most {self.max_body} body bytes")
        fp = self.fingerprint(ctx, body)
        rkey = self.record_key(ctx, idem_key)
        owner = os.urandom(12)
        store = self.store
        deadline = None
        attempt = 0
        while True:
            claim = asyncio.ensure_future(store.claim(rkey, fp, owner, self.lease))
            try:
                # Shielded: if this request is cancelled (its client left) while Redis runs
                # the claim, the claim still lands, and _abandon gives the key back.
                kind, detail = await asyncio.shield(claim)
            except asyncio.CancelledError:
                claim.add_done_callback(partial(self._abandon, rkey, owner))
                raise
            except StoreUnavailable:
                self._count("store_error")
                if self.reject_on_error:
                    return error_response("store_unavailable", rid,
                                          "the idempotency store is unreachable; retry later",
                                          self.retry_after)
                return None  # on_store_error = "allow": served unprotected
            if kind == CLAIMED:
                self._count("claimed")
                claimed = _Claimed(rkey, owner)
                self.live[claimed] = None
                if ctx.vars is None:
                    ctx.vars = {}
                ctx.vars["idempotency"] = claimed
                ctx.protected = True
                # A client that gives up mid-request will retry: the answer it left behind
                # must be there for the retry, so the engine reads it to the end anyway.
                ctx.finish_upstream = True
                return None
            if kind == DONE:
                return self._replay(ctx, detail)
            if kind == MISMATCH:
                self._count("mismatch")
                return error_response("idempotency_mismatch", rid,
                                      f"this {self.cfg.header} was already used for a "
                                      "request with a different method, path, query or body")
            # IN_FLIGHT
            if self.wait:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.max_wait
                if now < deadline:
                    await store.wait(rkey, deadline - now, attempt)
                    attempt += 1
                    continue
            self._count("conflict")
            return error_response("idempotency_conflict", rid, None, self.retry_after)

    def _abandon(self, rkey, owner, claim) -> None:
        if not claim.cancelled() and claim.exception() is None and claim.result()[0] == CLAIMED:
            self.store.settle(rkey, owner, None, 0.0)

    def _count(self, outcome: str) -> None:
        self.events[outcome] = self.events.get(outcome, 0) + 1

    def _replay(self, ctx, stored: Stored):
        if stored.body is None:
            self._count("conflict")
            return error_response(
                "idempotency_conflict", ctx.request_id.decode(),
                f"the request with this {self.cfg.header} was executed (status "
                f"{stored.status}) but its response exceeded {self.max_response} bytes and "
                "was not kept, so it cannot be replayed")
        self._count("replayed")
        return Response(stored.status, stored.headers + [_REPLAYED], stored.body)

    # -- response

    @property
    def RESPONSE_BODY(self):  # noqa: N802 (the contract's name, per instance here)
        # The answer is stored whole: a copy of the body streamed to the client.
        return STREAM, self.max_response

    def on_response(self, ctx, resp):
        vars_ = ctx.vars
        if vars_ is not None:
            claimed = vars_.get("idempotency")
            if claimed is not None:
                claimed.headers = [h for h in resp.headers if h[0].lower() not in _NOT_STORED]
                claimed.proxy_made = resp.body is not None

    def on_response_body(self, ctx, body):
        vars_ = ctx.vars
        if vars_ is not None:
            claimed = vars_.get("idempotency")
            if claimed is not None:
                claimed.body = body

    def _renew(self, worker, now: float) -> None:
        if now < self.renew_due:
            return
        self.renew_due = now + self.lease / 3
        for claimed in self.live:
            self.store.renew(claimed.key, claimed.owner, self.lease)

    def on_log(self, ctx):
        vars_ = ctx.vars
        claimed = vars_.get("idempotency") if vars_ is not None else None
        if claimed is None:
            return
        self.live.pop(claimed, None)
        status = ctx.status
        reached = ctx.t_upstream != 0  # the request was sent to an upstream
        if not reached or (status in self.release and ctx.response_complete
                           and not claimed.proxy_made):
            # "Nothing happened": the request never reached an upstream (no server, connect
            # failure, the client left first), or the upstream said so itself (a 5xx, 429).
            self.store.settle(claimed.key, claimed.owner, None, 0.0, self.settle_for)
        elif not ctx.response_complete or claimed.proxy_made:
            # The upstream got the request but we hold no answer of its: the response was
            # cut, or the proxy answered for it (read timeout, connection lost). It may have
            # executed the request, so the claim stays until its lease ends: a quick retry
            # gets 409 rather than a second execution it cannot tell from the first; after
            # the lease the key runs again. (A client that merely left does not land here:
            # finish_upstream reads the answer anyway.)
            return
        else:
            stored = Stored(status, claimed.headers or [], claimed.body)
            self.store.settle(claimed.key, claimed.owner, stored, self.ttl, self.settle_for)


def _statuses(specs):
    for s in specs:
        if s.endswith("xx"):
            base = int(s[0]) * 100
            yield from range(base, base + 100)
        else:
            yield int(s)

