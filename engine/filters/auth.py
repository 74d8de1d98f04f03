"""Authentication at the edge: who is calling (``ctx.consumer``), told to the upstream in
identity headers the client cannot forge.

``methods`` are tried in order, any-of: API key, HTTP Basic (RFC 7617), JWT bearer tokens
(RFC 6750, engine/filters/auth_jwt.py) and forward auth (engine/filters/auth_forward.py).
The first method whose credential is present and valid admits the request. A credential that
is present but invalid is never downgraded to ``anonymous``: the anonymous consumer stands
only for callers that sent no credential at all (Envoy's ``allow_missing``). Otherwise:

- no credential: 401 with a challenge per method (RFC 9110 §11.6.1, §15.5.2);
- an invalid one: 401, with ``error="invalid_token"`` on the Bearer challenge (RFC 6750
  §3.1) and nothing more: the client is never told which part was wrong;
- a malformed request (two Authorization fields, RFC 9110 §5.3): 400 ``invalid_request``;
- a verification key source that cannot be reached and has no key yet: 503.

Admitted: the credential is removed (unless ``keep``), and the consumer, its groups and the
configured claims go upstream in headers that were first stripped from the client's request.
Verified credentials are cached (bounded, short), so a repeated token or password costs a
hash lookup, not a signature check or a bcrypt round.
"""

import asyncio
import binascii
import hashlib
import time
from dataclasses import dataclass
from urllib.parse import unquote_plus

from engine.chain.filter import AUTH, Filter as FilterBase
from engine.chain.keys import cookie_value
from engine.chain.schema import Duration, check_header_name, key
from engine.errors import error_response
from engine.filters import auth_forward, auth_jwt
from engine.filters.auth_forward import ForwardAuth, ForwardConfig
from engine.filters.auth_jwt import JwksState, JwtConfig, TokenError, Verifier, load_key
from engine.filters.consumers import Consumers, check_password
from engine.upstream.call import fetch

try:
    from ext.lru import LruCache
except ImportError as exc:  # no pure-Python fallback (STYLE.md rule 7)
    raise ImportError(
        f"edgeproxy's Cython extensions are not built ({exc}); run `pip install .` "
        "or `python setup.py build_ext --inplace`") from None

ERRORS = {
    "auth_required": (401, "this route needs credentials"),
    "auth_invalid": (401, "the credentials are not valid"),
    "auth_bad_request": (400, "the request carries its credentials in a malformed way"),
    "auth_unavailable": (503, "the keys to check this request's credentials are not "
                              "available yet"),
}
METRICS = {
    "auth": ("edgeproxy_auth_total", "outcome",
             "Authentication outcomes: the method that admitted (api_key, basic, jwt, "
             "forward, anonymous), or why not: missing, forward_denied, or the method and "
             "reason (api_key:invalid, basic:invalid, jwt:expired, jwt:bad_signature, "
             "jwt:unknown_kid, jwt:jwks_unavailable, ...)."),
    "consumer": ("edgeproxy_consumer_requests_total", "consumer",
                 "Requests by configured consumer (only names from [[consumers]])."),
}
METHODS = ("api_key", "basic", "jwt", "forward")


def _check_methods(values: tuple) -> tuple:
    if not values:
        raise ValueError(f"needs at least one of {', '.join(METHODS)}")
    for v in values:
        if v not in METHODS:
            raise ValueError(f'"{v}" is not a method ({", ".join(METHODS)})')
    if len(set(values)) != len(values):
        raise ValueError("a method is listed twice")
    return values


def _check_realm(value: str) -> str:
    # A quoted-string without escapes (RFC 9110 §5.6.4, §11.5).
    if not value.isprintable() or '"' in value or "\\" in value or not value.isascii():
        raise ValueError("must be printable ASCII without quotes or backslashes")
    return value


def _check_claim_headers(values: tuple) -> tuple:
    for name, _ in values:
        check_header_name(name)
    return values


@dataclass(frozen=True)
class ApiKeyConfig:
    header: str | None = key("X-API-Key", "request header carrying the key; none = not read "
                                          "from a header",
                             check=lambda v: check_header_name(v) if v else v)
    query: str | None = key(None, "query argument carrying the key (keys in URLs end up in "
                                  "logs: prefer the header)")
    keep: bool = key(False, "send the key upstream (default: removed)")


@dataclass(frozen=True)
class BasicConfig:
    keep: bool = key(False, "send the Authorization header upstream (default: removed)")
    cache_ttl: Duration = key(60.0, "a user and password that matched are remembered this "
                                    "long, so bcrypt runs once per interval (0 = every time)")


@dataclass(frozen=True)
class Config:
    methods: tuple[str, ...] = key(("api_key",), "methods tried in order, the first valid "
                                                 "credential admits: api_key, basic, jwt, "
                                                 "forward", check=_check_methods)
    anonymous: str | None = key(None, "consumer that callers without any credential become "
                                      "(none = they get 401); never used for a wrong one")
    realm: str = key("edgeproxy", "realm of the WWW-Authenticate challenges",
                     check=_check_realm)
    consumer_header: str | None = key("X-Consumer", "request header naming the consumer "
                                                    "upstream (stripped from the client's)",
                                      check=lambda v: check_header_name(v) if v else v)
    groups_header: str | None = key("X-Consumer-Groups", "request header listing the "
                                                         "consumer's groups, comma-separated "
                                                         "(stripped from the client's)",
                                    check=lambda v: check_header_name(v) if v else v)
    claim_headers: dict[str, str] = key((("X-User-Id", "sub"),),
                                        "request headers set from token claims, header = "
                                        "claim (stripped from the client's)",
                                        check=_check_claim_headers)
    api_key: ApiKeyConfig = key(ApiKeyConfig(), "the api_key method")
    basic: BasicConfig = key(BasicConfig(), "the basic method")
    jwt: JwtConfig | None = key(None, "the jwt method (needs keys, jwks_file or jwks)")
    forward: ForwardConfig | None = key(None, "the forward method")


def check_config(section: Config, route, cfg, path: str, errors: list) -> None:
    """Checks against the whole config (engine/control/config.py calls it)."""
    consumers = {c.name for c in cfg.consumers if c is not None}
    upstreams = {u.name for u in cfg.upstreams if u is not None}
    if section.anonymous is not None and section.anonymous not in consumers:
        errors.append((f"{path}.anonymous", f'"{section.anonymous}" is not a consumer'))
    if "jwt" in section.methods:
        j = section.jwt
        if j is None:
            errors.append((f"{path}.jwt", 'is required when methods lists "jwt"'))
        else:
            if not (j.keys or j.jwks_file or j.jwks):
                errors.append((f"{path}.jwt", "needs keys, jwks_file or jwks"))
            for i, k in enumerate(j.keys):
                if k is None:
                    continue
                try:
                    load_key(k)
                except ValueError as exc:
                    errors.append((f"{path}.jwt.keys[{i}]", str(exc)))
            if j.jwks is not None and j.jwks.upstream not in upstreams:
                errors.append((f"{path}.jwt.jwks.upstream",
                               f'unknown upstream "{j.jwks.upstream}"'))
    elif section.jwt is not None:
        errors.append((f"{path}.jwt", 'is configured but methods does not list "jwt"'))
    if "forward" in section.methods:
        f = section.forward
        if f is None:
            errors.append((f"{path}.forward", 'is required when methods lists "forward"'))
        elif f.upstream not in upstreams:
            errors.append((f"{path}.forward.upstream", f'unknown upstream "{f.upstream}"'))
    elif section.forward is not None:
        errors.append((f"{path}.forward", 'is configured but methods does not list '
                                          '"forward"'))
    if ("api_key" in section.methods and section.api_key.header is None
            and section.api_key.query is None):
        errors.append((f"{path}.api_key", "needs a header or a query argument"))


class Identity:
    """Who the caller is, for later filters (``ctx.vars["auth"]``)."""

    __slots__ = ("consumer", "method", "groups", "claims", "headers")

    def __init__(self, consumer, method, claims=None, headers=()):
        self.consumer = consumer  # consumers.Consumer, or None (a token naming nobody)
        self.method = method      # "api_key", "basic", "jwt", "forward" or "anonymous"
        self.groups = consumer.groups if consumer is not None else frozenset()
        self.claims = claims      # the token's claims (jwt), else None
        self.headers = headers    # headers to add upstream (forward auth's copies)


class _Refused:
    """A credential was present and is not valid (``outcome`` is for the metrics only)."""

    __slots__ = ("outcome", "response")

    def __init__(self, outcome, response=None):
        self.outcome = outcome
        self.response = response  # answered as is (forward auth's, a 400 or 503)


def _scheme(headers, scheme: bytes):
    """``(credentials, error)`` from the Authorization field for ``scheme`` (lowercase):
    (None, None) when absent or of another scheme; error "double" for two fields."""
    found = None
    for name, value in headers:
        if len(name) == 13 and name.lower() == b"authorization":
            if found is not None:
                return None, "double"  # RFC 9110 §5.3: a singleton field
            found = value
    if found is None:
        return None, None
    s, _, rest = found.strip().partition(b" ")
    # RFC 9110 §11.1: the scheme is case-insensitive.
    if s.lower() != scheme:
        return None, None
    return rest.strip(b" \t"), None


class Filter(FilterBase):
    __slots__ = ("methods", "anonymous", "strip", "consumer_header", "groups_header",
                 "claim_headers", "challenges", "bearer_invalid", "api_header", "api_query",
                 "api_keep", "basic_keep", "basic_cache", "basic_ttl", "verifier", "jwt_keep",
                 "cookie", "forward", "consumers", "events", "by_consumer", "jwks_fetch")
    PHASE = AUTH

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        root = build.config
        self.consumers = build.keep(("auth-consumers", root.consumers),
                                    lambda: Consumers(root.consumers))
        self.anonymous = (self.consumers.by_name[cfg.anonymous]
                          if cfg.anonymous is not None else None)
        self.events = build.counter("auth")
        self.by_consumer = build.counter("consumer")
        self.consumer_header = cfg.consumer_header.encode() if cfg.consumer_header else None
        self.groups_header = cfg.groups_header.encode() if cfg.groups_header else None
        self.claim_headers = tuple((n.encode(), c) for n, c in cfg.claim_headers)
        strip = {n.lower() for n, _ in self.claim_headers}
        if self.consumer_header:
            strip.add(self.consumer_header.lower())
        if self.groups_header:
            strip.add(self.groups_header.lower())
        realm = cfg.realm.encode()
        challenges = []
        self.methods = []
        self.api_header = self.api_query = None
        self.verifier = self.forward = self.basic_cache = self.cookie = None
        self.bearer_invalid = None
        for m in cfg.methods:
            if m == "api_key":
                a = cfg.api_key
                self.api_header = a.header.lower().encode() if a.header else None
                self.api_query = a.query
                self.api_keep = a.keep
                self.methods.append(self._api_key)
                # No registered scheme for API keys: Kong's key-auth challenge.
                challenges.append(b'Key realm="%s"' % realm)
            elif m == "basic":
                self.basic_keep = cfg.basic.keep
                self.basic_ttl = cfg.basic.cache_ttl
                if self.basic_ttl > 0:
                    self.basic_cache = build.keep(
                        ("auth-basic", build.route, root.consumers, self.basic_ttl),
                        lambda: LruCache(1 << 20, 4096))
                self.methods.append(self._basic)
                challenges.append(b'Basic realm="%s", charset="UTF-8"' % realm)  # RFC 7617 §2.1
            elif m == "jwt":
                self._build_jwt(cfg.jwt, build)
                self.methods.append(self._jwt)
                challenges.append(b'Bearer realm="%s"' % realm)  # RFC 6750 §3
                self.bearer_invalid = b'Bearer realm="%s", error="invalid_token"' % realm
            else:
                f = cfg.forward
                cache = build.keep(("auth-forward", f, root.consumers),
                                   lambda f=f: auth_forward.new_cache(f))
                self.forward = ForwardAuth(f, self.consumers, cache)
                strip.update(n.lower().encode() for n in f.response_headers)
                self.methods.append(self._forward)
        self.strip = frozenset(strip)
        self.challenges = [(b"WWW-Authenticate", c) for c in challenges]

    def _build_jwt(self, cfg: JwtConfig, build) -> None:
        static = [load_key(k) for k in cfg.keys]
        if cfg.jwks_file:
            static += auth_jwt.parse_jwks(auth_jwt.read_file(cfg.jwks_file))[0]
        jwks = None
        if cfg.jwks is not None:
            jwks = build.keep(("auth-jwks", cfg.jwks), lambda: JwksState(cfg.jwks))
            up, path = cfg.jwks.upstream, cfg.jwks.path.encode()
            self.jwks_fetch = (up, path)

            def sweep(worker, now, jwks=jwks, up=up, path=path):
                if jwks.due(time.monotonic()):
                    upstream = worker.runtime.upstreams.get(up)
                    if upstream is not None:
                        jwks.refresh(lambda: fetch(
                            worker, upstream, b"GET", path, [(b"Accept", b"application/json")],
                            None, worker.next_request_id(), auth_jwt.JWKS_MAX_BYTES))
            build.periodic(sweep, min(cfg.jwks.refresh, 5.0))
        cache = build.keep(("auth-jwt", cfg, build.config.consumers),
                           lambda: auth_jwt.new_cache(cfg))
        self.verifier = Verifier(cfg, static, jwks, cache, self.consumers)
        self.jwt_keep = cfg.keep
        self.cookie = cfg.cookie.encode() if cfg.cookie else None

    # -- the request

    def on_request(self, ctx):
        headers = ctx.headers
        strip = self.strip
        if strip:
            # Identity headers are ours alone: a client's copy never reaches the upstream.
            for name, _ in headers:
                if name.lower() in strip:
                    ctx.headers = headers = [h for h in headers if h[0].lower() not in strip]
                    break
        refused = None
        for i, method in enumerate(self.methods):
            result = method(ctx)
            if result is None:
                continue
            if isinstance(result, Identity):
                return self._admit(ctx, result)
            if not isinstance(result, _Refused):
                return self._wait(ctx, result, i, refused)
            if result.response is not None:
                return self._refuse(ctx, result)
            if refused is None:
                refused = result
        return self._end(ctx, refused)

    async def _wait(self, ctx, pending, i, refused):
        """The rest of on_request once a method must wait (a JWKS fetch, bcrypt, the auth
        service)."""
        result = await pending
        while True:
            if isinstance(result, Identity):
                return self._admit(ctx, result)
            if isinstance(result, _Refused):
                if result.response is not None:
                    return self._refuse(ctx, result)
                if refused is None:
                    refused = result
            i += 1
            if i == len(self.methods):
                return self._end(ctx, refused)
            result = self.methods[i](ctx)
            if result is not None and not isinstance(result, (Identity, _Refused)):
                result = await result

    def _end(self, ctx, refused):
        if refused is not None:
            return self._refuse(ctx, refused)
        if self.anonymous is not None:
            return self._admit(ctx, Identity(self.anonymous, "anonymous"))
        self._count("missing")
        return error_response("auth_required", ctx.request_id.decode(), None,
                              self.challenges)

    def _refuse(self, ctx, refused: _Refused):
        self._count(refused.outcome)
        if refused.response is not None:
            return refused.response
        headers = self.challenges
        if self.bearer_invalid is not None and refused.outcome.startswith("jwt:"):
            headers = [(n, self.bearer_invalid if v.startswith(b"Bearer") else v)
                       for n, v in headers]
        return error_response("auth_invalid", ctx.request_id.decode(), None, headers)

    def _admit(self, ctx, ident: Identity):
        self._count(ident.method)
        c = ident.consumer
        if ctx.vars is None:
            ctx.vars = {}
        ctx.vars["auth"] = ident
        ctx.consumer = c.name if c is not None else None
        add = ctx.headers
        if c is not None:
            if self.consumer_header is not None:
                add.append((self.consumer_header, c.name.encode()))
        if self.groups_header is not None and ident.groups:
            add.append((self.groups_header, ",".join(sorted(ident.groups)).encode()))
        claims = ident.claims
        if claims is not None:
            for name, claim in self.claim_headers:
                value = _header_value(claims.get(claim))
                if value is not None:
                    add.append((name, value))
        if ident.headers:
            add.extend(ident.headers)
        return None

    def _count(self, outcome: str) -> None:
        events = self.events
        events[outcome] = events.get(outcome, 0) + 1

    def on_log(self, ctx):
        c = ctx.consumer
        if c is not None:
            counts = self.by_consumer
            counts[c] = counts.get(c, 0) + 1

    # -- api_key

    def _api_key(self, ctx):
        value = None
        if self.api_header is not None:
            lname = self.api_header
            for name, v in ctx.headers:
                if name.lower() == lname:
                    if value is not None:
                        return _Refused("api_key:repeated", self._bad_request(ctx))
                    value = v
        if value is None and self.api_query is not None and ctx.query:
            value = _query_arg(ctx.query, self.api_query)
        if value is None:
            return None
        consumer = self.consumers.by_api_key(value)
        if consumer is None:
            return _Refused("api_key:invalid")
        if not self.api_keep:
            if self.api_header is not None:
                ctx.headers = [h for h in ctx.headers if h[0].lower() != self.api_header]
            if self.api_query is not None and ctx.query:
                ctx.query = _drop_query_arg(ctx.query, self.api_query)
        return Identity(consumer, "api_key")

    def _bad_request(self, ctx):
        return error_response("auth_bad_request", ctx.request_id.decode(), None,
                              [(b"WWW-Authenticate", b'Bearer error="invalid_request"')]
                              if self.bearer_invalid is not None else None)

    # -- basic (RFC 7617)

    def _basic(self, ctx):
        cred, err = _scheme(ctx.headers, b"basic")
        if err is not None:
            return _Refused("basic:repeated", self._bad_request(ctx))
        if cred is None:
            return None
        digest = None
        if self.basic_cache is not None:
            digest = hashlib.sha256(cred).digest()
            consumer = self.basic_cache.get(digest, time.monotonic())
            if consumer is not None:
                return self._basic_ok(ctx, consumer)
        try:
            # RFC 7617 §2: base64 of user-id ":" password; charset UTF-8 (§2.1).
            user, sep, password = binascii.a2b_base64(cred, strict_mode=True).partition(b":")
            user = user.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return _Refused("basic:malformed")
        if not sep:
            return _Refused("basic:malformed")
        entry = self.consumers.by_user.get(user)
        if entry is None:
            decoy = self.consumers.decoy
            if decoy is not None:
                # As long as a known user's check, so timing does not tell who exists.
                return self._bcrypt(ctx, None, decoy, password, None)
            return _Refused("basic:invalid")
        consumer, kind, stored = entry
        if kind == "sha256":
            if not check_password(kind, stored, password):
                return _Refused("basic:invalid")
            return self._basic_ok(ctx, consumer, digest)
        return self._bcrypt(ctx, consumer, stored, password, digest)

    async def _bcrypt(self, ctx, consumer, stored, password, digest):
        # bcrypt costs tens of milliseconds by design: off the event loop.
        ok = await asyncio.get_running_loop().run_in_executor(
            None, check_password, "bcrypt", stored, password)
        if not ok or consumer is None:
            return _Refused("basic:invalid")
        return self._basic_ok(ctx, consumer, digest)

    def _basic_ok(self, ctx, consumer, digest=None):
        if digest is not None:
            self.basic_cache.set(digest, consumer, 64, time.monotonic(), self.basic_ttl)
        if not self.basic_keep:
            ctx.headers = [h for h in ctx.headers if h[0].lower() != b"authorization"]
        return Identity(consumer, "basic")

    # -- jwt (RFC 6750 bearer tokens)

    def _jwt(self, ctx):
        token, err = _scheme(ctx.headers, b"bearer")
        if err is not None:
            return _Refused("jwt:repeated", self._bad_request(ctx))
        from_cookie = False
        if token is None and self.cookie is not None:
            token = cookie_value(ctx.headers, self.cookie)
            from_cookie = True
        if not token:
            return None
        v = self.verifier
        hit, digest = v.cached(token, time.monotonic())
        if hit is not None:
            return self._jwt_ok(ctx, hit, from_cookie)
        try:
            header = v.header(token)
        except TokenError as exc:
            return _Refused("jwt:" + str(exc))
        jwks = v.jwks
        # A fetch is joined (or started) here, in the step that found the keys lacking, not
        # when the coroutine first runs: by then the fetch in flight may have ended, and a
        # second one would go to the provider for nothing.
        if jwks is not None and not jwks.fetched and not v.static:
            return self._jwt_fetch_first(ctx, self._jwks_refresh(ctx), token, header, digest,
                                         from_cookie)
        candidates = v.candidates(header, jwks is None)
        if candidates is None:
            if jwks is not None and jwks.may_refresh_for_kid(time.monotonic()):
                return self._jwt_kid_miss(ctx, self._jwks_refresh(ctx), token, header, digest,
                                          from_cookie)
            candidates = v.candidates(header)
            if candidates is None:
                return _Refused("jwt:unknown_kid")
        return self._jwt_check(ctx, token, header, candidates, digest, from_cookie)

    def _jwt_check(self, ctx, token, header, candidates, digest, from_cookie):
        try:
            verified = self.verifier.check(token, header, candidates, digest)
        except TokenError as exc:
            return _Refused("jwt:" + str(exc))
        return self._jwt_ok(ctx, verified, from_cookie)

    def _jwks_refresh(self, ctx):
        up, path = self.jwks_fetch
        return self.verifier.jwks.refresh(lambda: ctx.fetch(
            up, b"GET", path, [(b"Accept", b"application/json")], None,
            auth_jwt.JWKS_MAX_BYTES))

    async def _jwt_fetch_first(self, ctx, refresh, token, header, digest, from_cookie):
        if not await refresh:
            return _Refused("jwt:jwks_unavailable", error_response(
                "auth_unavailable", ctx.request_id.decode(), None,
                [(b"Retry-After", b"%d" % max(1, int(self.verifier.jwks.cfg.min_refresh)))]))
        return self._jwt_after_fetch(ctx, token, header, digest, from_cookie)

    async def _jwt_kid_miss(self, ctx, refresh, token, header, digest, from_cookie):
        await refresh
        return self._jwt_after_fetch(ctx, token, header, digest, from_cookie)

    def _jwt_after_fetch(self, ctx, token, header, digest, from_cookie):
        candidates = self.verifier.candidates(header)
        if candidates is None:
            return _Refused("jwt:unknown_kid")
        return self._jwt_check(ctx, token, header, candidates, digest, from_cookie)

    def _jwt_ok(self, ctx, verified, from_cookie):
        if not self.jwt_keep and not from_cookie:
            ctx.headers = [h for h in ctx.headers if h[0].lower() != b"authorization"]
        ident = Identity(verified.consumer, "jwt", verified.claims)
        groups_claim = self.verifier.cfg.groups_claim
        if groups_claim is not None:
            extra = _claim_groups(verified.claims.get(groups_claim))
            if extra:
                ident.groups = ident.groups | extra
        return ident

    # -- forward auth

    def _forward(self, ctx):
        fw = self.forward
        sent = fw.credential(ctx)
        hit, digest = fw.cached(sent)
        if hit is not None:
            return Identity(hit.consumer, "forward", None, hit.headers)
        return self._forward_ask(ctx, sent, digest)

    async def _forward_ask(self, ctx, sent, digest):
        answer = await self.forward.decide(ctx, sent, digest)
        if isinstance(answer, auth_forward.Admitted):
            return Identity(answer.consumer, "forward", None, answer.headers)
        return _Refused("forward_denied", answer)


def _header_value(value):
    """A claim as a header value, or None when it has none (objects, CR/LF/NUL)."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        value = str(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str) or not value.isprintable():
        return None
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")  # RFC 9110 §5.5: obs-text octets, passed through


def _claim_groups(value) -> frozenset:
    if isinstance(value, str):
        return frozenset(value.replace(",", " ").split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _query_arg(query: bytes, name: str):
    """The first value of a query argument, as the client meant it (percent-decoded)."""
    for pair in query[1:].split(b"&"):
        k, _, v = pair.partition(b"=")
        if unquote_plus(k.decode("latin-1")) == name:
            return unquote_plus(v.decode("latin-1"), encoding="utf-8").encode("utf-8")
    return None


def _drop_query_arg(query: bytes, name: str) -> bytes:
    kept = [p for p in query[1:].split(b"&")
            if unquote_plus(p.partition(b"=")[0].decode("latin-1")) != name]
    return b"?" + b"&".join(kept) if kept else b""
