"""JWT bearer tokens for the auth filter: the ``[routes.auth.jwt]`` section, verification keys
(static PEM or secrets, a JWKS file, a JWKS document fetched through an upstream), and the
verifier with its cache of tokens already checked.

Tokens are JWS compact serialisations (RFC 7515 §7.1) verified with PyJWT. What is refused:

- ``alg: none`` and any algorithm outside HS/RS/PS/ES/EdDSA (RFC 8725 §3.1);
- a token whose ``alg`` its key does not allow. Each key has a fixed set of algorithms,
  taken from its type (or narrowed by config / the JWK's ``alg``), never from the token: an
  RSA public key can never verify an HS256 token (the confusion of RFC 8725 §2.1);
- a ``kid`` no key has, after at most one JWKS refresh per ``min_refresh``;
- any ``crit`` header: this verifier implements no extension (RFC 7515 §4.1.11);
- ``exp``, ``nbf`` and ``iat`` outside the leeway (RFC 7519 §4.1.4-6), an issuer or audience
  not configured (§4.1.1, §4.1.3), a missing required claim.
"""

import asyncio
import hashlib
import time
from dataclasses import dataclass

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from engine.chain.schema import REQUIRED, Duration, check_request_path, key

try:
    from ext.lru import LruCache
except ImportError as exc:  # no pure-Python fallback (STYLE.md rule 7)
    raise ImportError(
        f"edgeproxy's Cython extensions are not built ({exc}); run `pip install .` "
        "or `python setup.py build_ext --inplace`") from None

HMAC = ("HS256", "HS384", "HS512")
RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
ALGORITHMS = (*HMAC, *RSA, "ES256", "ES384", "ES512", "EdDSA")
_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
_HMAC_MIN = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA_MIN_BITS = 2048  # RFC 7518 §3.3
JWKS_MAX_BYTES = 1 << 20


def family(keyobj) -> tuple:
    """The algorithms a key can verify, from its type alone."""
    if isinstance(keyobj, bytes):
        return tuple(a for a in HMAC if len(keyobj) >= _HMAC_MIN[a])
    if isinstance(keyobj, rsa.RSAPublicKey):
        return RSA if keyobj.key_size >= _RSA_MIN_BITS else ()
    if isinstance(keyobj, ec.EllipticCurvePublicKey):
        alg = _CURVES.get(keyobj.curve.name)
        return (alg,) if alg else ()
    if isinstance(keyobj, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return ("EdDSA",)
    return ()


class Key:
    """A verification key with the algorithms it may verify."""

    __slots__ = ("kid", "obj", "algorithms")

    def __init__(self, kid, obj, algorithms):
        self.kid = kid
        self.obj = obj
        self.algorithms = frozenset(algorithms)


def _check_algorithms(values: tuple) -> tuple:
    for v in values:
        if v not in ALGORITHMS:
            raise ValueError(f'"{v}" is not a supported algorithm ({", ".join(ALGORITHMS)}; '
                             '"none" never is)')
    return values


@dataclass(frozen=True)
class KeyConfig:
    kid: str | None = key(None, "key id: a token with this kid is checked with this key only; "
                                "none = tried for tokens without a kid")
    algorithms: tuple[str, ...] = key((), "algorithms this key verifies; empty = every one its "
                                          "type allows (RS*/PS* for RSA, ES256/384/512 by "
                                          "curve, EdDSA, HS* a secret is long enough for)",
                                      check=_check_algorithms)
    pem: str | None = key(None, "public key, PEM (RSA, EC, Ed25519/Ed448)")
    file: str | None = key(None, "file holding the public key, PEM")
    secret: str | None = key(None, "HMAC secret (HS*), UTF-8; prefer secret_file")
    secret_file: str | None = key(None, "file holding the HMAC secret (its bytes, as they are)")


def load_key(cfg: KeyConfig) -> Key:
    """The key a KeyConfig describes; ValueError saying why it is unusable."""
    given = [n for n in ("pem", "file", "secret", "secret_file") if getattr(cfg, n) is not None]
    if len(given) != 1:
        raise ValueError("needs exactly one of pem, file, secret, secret_file")
    if cfg.secret is not None:
        obj = cfg.secret.encode()
    elif cfg.secret_file is not None:
        obj = read_file(cfg.secret_file)
    else:
        data = cfg.pem.encode() if cfg.pem is not None else read_file(cfg.file)
        try:
            obj = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise ValueError(f"not a PEM public key ({exc})") from None
    allowed = family(obj)
    if not allowed:
        raise ValueError("key too weak or of an unsupported type (RSA needs 2048 bits, an "
                         "HMAC secret 32 bytes; EC curves P-256, P-384, P-521)")
    wrong = [a for a in cfg.algorithms if a not in allowed]
    if wrong:
        raise ValueError(f"this key cannot verify {', '.join(wrong)} (it allows "
                         f"{', '.join(allowed)})")
    return Key(cfg.kid, obj, cfg.algorithms or allowed)


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def parse_jwks(data: bytes) -> tuple[list, int]:
    """(keys, skipped) of a JWK Set document (RFC 7517 §5); ValueError when it is not one.
    Keys not meant for signatures, of unknown types or too weak are skipped."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWK Set (no "keys" array)')
    keys, skipped = [], 0
    for jwk in doc["keys"]:
        k = _jwk(jwk)
        if k is None:
            skipped += 1
        else:
            keys.append(k)
    return keys, skipped


def _jwk(jwk) -> Key | None:
    if not isinstance(jwk, dict):
        return None
    # RFC 7517 §4.2, §4.3: a key for encryption, or not for verifying, is not ours to use.
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    try:
        obj = jwt.PyJWK(jwk).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if isinstance(obj, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                        ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        obj = obj.public_key()  # a published private key still verifies; never sign with it
    allowed = family(obj)
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in allowed:
            return None
        allowed = (alg,)
    if not allowed:
        return None
    kid = jwk.get("kid")
    return Key(kid if isinstance(kid, str) else None, obj, allowed)


def _check_jwks_file(path: str) -> str:
    keys, _ = parse_jwks(read_file(path))
    if not keys:
        raise ValueError(f"{path} has no usable signature key")
    return path


@dataclass(frozen=True)
class JwksConfig:
    upstream: str = key(REQUIRED, "the upstream serving the JWK Set (fetched through it: its "
                                  "balancing, retries and breakers)")
    path: str = key("/.well-known/jwks.json", "its path (and query)", check=check_request_path)
    refresh: Duration = key(300.0, "how often the set is fetched again")
    min_refresh: Duration = key(30.0, "a token with an unknown kid fetches the set again at "
                                      "most this often")


@dataclass(frozen=True)
class JwtConfig:
    keys: tuple[KeyConfig, ...] = key((), "static verification keys")
    jwks_file: str | None = key(None, "a JWK Set file (read when the config loads)",
                                check=_check_jwks_file)
    jwks: JwksConfig | None = key(None, "a JWK Set fetched through an upstream; kept across "
                                        "reloads, served stale while it cannot be fetched")
    issuers: tuple[str, ...] = key((), "accepted issuers (iss); empty = not checked")
    audiences: tuple[str, ...] = key((), "accepted audiences: the token's aud must hold one; "
                                         "empty = not checked")
    required_claims: tuple[str, ...] = key(("exp",), "claims a token must carry")
    leeway: Duration = key(60.0, "clock skew allowed for exp, nbf and iat (Envoy's default)",
                           max=600)
    consumer_claim: str = key("sub", "claim matched against consumers' jwt subjects")
    unknown_subject: str = key("allow", 'a valid token naming no consumer: "allow" it as an '
                                        'identity without consumer (its claims still go to '
                                        'later filters) or "deny" it',
                               choices=("allow", "deny"))
    groups_claim: str | None = key(None, "claim holding the caller's groups (an array, or a "
                                         "space-separated string), added to its consumer's")
    cookie: str | None = key(None, "also read the token from this cookie when no "
                                   "Authorization header carries one")
    keep: bool = key(False, "send the token upstream (default: removed; upstreams get the "
                            "identity headers)")
    cache_ttl: Duration = key(300.0, "a verified token is remembered this long at most (never "
                                     "past its exp); 0 = verify every time")
    cache_size: int = key(10000, "tokens remembered per worker", min=1)


class TokenError(Exception):
    """Why a token was refused, as a metrics outcome (never shown to the client)."""


class JwksState:
    """One JWK Set fetched through an upstream: its keys, when to fetch again, and the fetch
    in flight (one at a time per worker). Kept across reloads while its config is unchanged;
    a failed fetch keeps the keys it had (served stale)."""

    def __init__(self, cfg: JwksConfig):
        self.cfg = cfg
        self.keys: list = []
        self.fetched = False  # ever fetched successfully
        self.last_attempt = -1e18
        self.last_kid_refresh = -1e18  # the rate bound counts these only
        self.next_due = 0.0
        self.inflight = None
        self.failures = 0
        self.epoch = 0  # counts fetches that removed keys: caches of tokens older are void

    def due(self, now: float) -> bool:
        return self.inflight is None and now >= self.next_due

    def refresh(self, fetch):
        """Fetch the set (``fetch()``: a coroutine returning a Response), or join the fetch
        in flight. Returns an awaitable of whether the keys are usable now."""
        if self.inflight is None:
            self.inflight = asyncio.ensure_future(self._refresh(fetch))
        return asyncio.shield(self.inflight)

    async def _refresh(self, fetch):
        now = time.monotonic()
        self.last_attempt = now
        try:
            try:
                resp = await fetch()
                if resp.status != 200:
                    raise ValueError(f"status {resp.status}")
                keys, _ = parse_jwks(resp.body or b"")
                if not keys:
                    raise ValueError("no usable key")
            except (TimeoutError, ValueError, OSError):
                self.failures += 1
                # Try again soon, not on every request: backoff from min_refresh, capped.
                self.next_due = now + min(self.cfg.min_refresh * (1 << min(self.failures, 6)),
                                          self.cfg.refresh)
                return bool(self.keys)
            gone = {k.kid for k in self.keys} - {k.kid for k in keys}
            self.keys = keys
            self.fetched = True
            self.failures = 0
            self.next_due = now + self.cfg.refresh
            if gone:
                self.epoch += 1
            return True
        finally:
            self.inflight = None

    def may_refresh_for_kid(self, now: float) -> bool:
        """Whether a token with an unknown kid may fetch the set again: at most once per
        min_refresh, so random kids cannot make us hammer the provider."""
        if self.inflight is not None:
            return True  # joining the fetch in flight costs the provider nothing
        if now - self.last_kid_refresh < self.cfg.min_refresh:
            return False
        self.last_kid_refresh = now
        return True


class Verified:
    """A token that passed: its claims and the consumer it names (None: none)."""

    __slots__ = ("claims", "consumer", "expires")

    def __init__(self, claims, consumer, expires):
        self.claims = claims
        self.consumer = consumer
        self.expires = expires  # wall clock, exp + leeway (inf: no exp)


_OK_SEGMENT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class Verifier:
    """Checks tokens for one jwt section. ``static``: keys from config and the JWKS file;
    ``jwks``: the fetched set's JwksState, or None; ``cache``: an LruCache or None."""

    def __init__(self, cfg: JwtConfig, static: list, jwks, cache, consumers):
        self.cfg = cfg
        self.static = static
        self.jwks = jwks
        self.cache = cache
        self.consumers = consumers
        self.options = {"require": list(cfg.required_claims),
                        "verify_aud": bool(cfg.audiences), "verify_iss": bool(cfg.issuers)}
        self.audience = list(cfg.audiences) or None
        self.issuer = list(cfg.issuers) or None
        self.ttl = cfg.cache_ttl

    def keys(self) -> list:
        return self.static + self.jwks.keys if self.jwks is not None else self.static

    def cached(self, token: bytes, now: float):
        """(the Verified for a token seen before and still valid, or None; the token's
        digest, the cache key), ``now`` monotonic; (None, None) without a cache."""
        cache = self.cache
        if cache is None:
            return None, None
        if self.jwks is not None and cache.epoch != self.jwks.epoch:
            # A key left the set: tokens it verified must be checked again.
            cache.lru.clear()
            cache.epoch = self.jwks.epoch
        digest = hashlib.sha256(token).digest()
        hit = cache.lru.get(digest, now)
        if hit is not None and hit.expires <= time.time():
            cache.lru.pop(digest)
            hit = None
        return hit, digest

    def header(self, token: bytes) -> dict:
        """The token's JOSE header, checked before any key is tried."""
        parts = token.split(b".")
        # JWS compact serialisation only (RFC 7515 §7.1); a JWE has five parts.
        if len(parts) != 3 or not all(parts[:2]) or not _OK_SEGMENT.issuperset(
                b"".join(parts)):
            raise TokenError("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("malformed") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:  # "none" included (RFC 8725 §3.1)
            raise TokenError("bad_algorithm")
        if "crit" in header:  # RFC 7515 §4.1.11: we understand no extension
            raise TokenError("crit")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed")
        return header

    def candidates(self, header: dict, final: bool = True) -> list | None:
        """Keys that may verify this token; None when its kid is unknown. A token with a
        kid is checked with the keys of that kid, else with keys that have none (as Envoy
        does: a key without kid matches any); ``final`` False: a JWKS may still learn the
        kid, so keys without kid are not settled for yet."""
        alg, kid = header["alg"], header.get("kid")
        keys = self.keys()
        if kid is not None:
            found = [k for k in keys if k.kid == kid]
            if not found:
                if not final:
                    return None
                found = [k for k in keys if k.kid is None]
                if not found:
                    return None
        else:
            found = [k for k in keys if k.kid is None] or keys
        return [k for k in found if alg in k.algorithms]

    def check(self, token: bytes, header: dict, candidates: list, digest) -> Verified:
        if not candidates:
            raise TokenError("bad_algorithm")
        cfg = self.cfg
        alg = header["alg"]
        claims = None
        for k in candidates:
            try:
                claims = jwt.decode(token, k.obj, algorithms=[alg], options=self.options,
                                    audience=self.audience, issuer=self.issuer,
                                    leeway=cfg.leeway)
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise TokenError("expired") from None
            except jwt.ImmatureSignatureError:
                raise TokenError("not_yet_valid") from None
            except (jwt.InvalidIssuerError, jwt.InvalidAudienceError):
                raise TokenError("wrong_issuer_or_audience") from None
            except jwt.MissingRequiredClaimError:
                raise TokenError("missing_claim") from None
            except (jwt.InvalidTokenError, ValueError, TypeError):
                raise TokenError("malformed") from None
        if claims is None:
            raise TokenError("bad_signature")
        subject = claims.get(cfg.consumer_claim)
        consumer = None
        if isinstance(subject, str):
            iss = claims.get("iss")
            consumer = self.consumers.by_jwt(iss if isinstance(iss, str) else None, subject)
        if consumer is None and cfg.unknown_subject == "deny":
            raise TokenError("unknown_subject")
        exp = claims.get("exp")
        expires = exp + cfg.leeway if isinstance(exp, (int, float)) else float("inf")
        verified = Verified(claims, consumer, expires)
        if digest is not None:
            ttl = min(self.ttl, expires - time.time())
            if ttl > 0:
                self.cache.lru.set(digest, verified, len(token), time.monotonic(), ttl)
        return verified


class TokenCache:
    """Verified tokens by SHA-256, bounded by entries (bytes count the tokens they stand
    for, with a generous cap), and the JWKS epoch they were verified in."""

    __slots__ = ("lru", "epoch")

    def __init__(self, size: int):
        self.lru = LruCache(size * 16384, size)
        self.epoch = 0

    def __len__(self):
        return len(self.lru)


def new_cache(cfg: JwtConfig):
    return TokenCache(cfg.cache_size) if cfg.cache_ttl > 0 else None
