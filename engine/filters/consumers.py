"""Consumers (``[[consumers]]``): who may call the gateway, with their credentials, groups,
quota tier and rate-limit overrides, and the lookup tables the auth filter compiles from them.

The config holds no secret in clear: an API key is given as its SHA-256 digest
(``sha256:<hex>``), a password as a bcrypt hash (``$2b$...``) or, for generated high-entropy
passwords only, a SHA-256 digest. A leaked config (or ``GET /config``) then reveals nothing a
caller could present. API keys are random and long, so a fast digest is as strong as a slow
one against guessing; human passwords need bcrypt's cost.
"""

import hashlib
import hmac
import re
from dataclasses import dataclass

import bcrypt

from engine.chain.schema import REQUIRED, Duration, key

# Consumer and group names travel in headers (X-Consumer, X-Consumer-Groups, comma-joined)
# and label metrics: RFC 9110 §5.6.2 token characters minus the comma list separator.
_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~@-]{1,128}$")
_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_BCRYPT_RE = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


def check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f'"{value}" must be 1-128 characters of letters, digits and '
                         "!#$%&'*+.^_`|~@- (no spaces or commas)")
    return value


def check_names(values: tuple) -> tuple:
    for v in values:
        check_name(v)
    return values


def _check_key_digests(values: tuple) -> tuple:
    for v in values:
        if not _SHA256_RE.match(v):
            raise ValueError('API keys are given as "sha256:<64 lowercase hex digits>" (the '
                             "SHA-256 of the key; `edgeproxy hash api-key` prints it), never "
                             "in clear")
    if len(set(values)) != len(values):
        raise ValueError("the same key is listed twice")
    return values


def _check_password_hash(value: str) -> str:
    if not (_BCRYPT_RE.match(value) or _SHA256_RE.match(value)):
        raise ValueError('a password is given as a bcrypt hash ("$2b$12$...") or '
                         '"sha256:<64 lowercase hex digits>" (`edgeproxy hash password` '
                         "prints one), never in clear")
    return value


def _check_username(value: str) -> str:
    # RFC 7617 §2: the user-id cannot contain a colon; control characters are refused too.
    if not value or ":" in value or not value.isprintable():
        raise ValueError("a user name must be printable and must not contain a colon "
                         "(RFC 7617 §2)")
    return value


@dataclass(frozen=True)
class BasicUser:
    username: str = key(REQUIRED, "user name the client sends (RFC 7617)", check=_check_username)
    password: str = key(REQUIRED, 'bcrypt hash ("$2b$12$...") or "sha256:<hex>" of the password',
                        check=_check_password_hash)


@dataclass(frozen=True)
class JwtBinding:
    subject: str = key(REQUIRED, "the value of the route's consumer claim (sub by default) "
                                 "that names this consumer")
    issuer: str | None = key(None, "only tokens from this issuer (iss) name this consumer; "
                                   "none = any issuer the route trusts")


@dataclass(frozen=True)
class LimitOverride:
    name: str = key(REQUIRED, "the name of a limit in a rate_limit section")
    limit: int | None = key(None, "window algorithms: requests per window instead", min=1)
    window: Duration | None = key(None, "window algorithms: the window instead")
    rate: float | None = key(None, "bucket algorithms: requests per second instead", min=0)
    burst: int | None = key(None, "bucket algorithms: the burst instead", min=0)


def _check_overrides(values: tuple) -> tuple:
    names = [v.name for v in values if v is not None]
    if len(set(names)) != len(names):
        raise ValueError("a limit is overridden twice")
    return values


@dataclass(frozen=True)
class ConsumerConfig:
    name: str = key(REQUIRED, "unique name: ctx.consumer, the consumer key part, X-Consumer, "
                              "the access log and the metrics' consumer label",
                    check=check_name)
    groups: tuple[str, ...] = key((), "groups, for acl allow_groups / deny_groups",
                                  check=check_names)
    api_keys: tuple[str, ...] = key((), 'API keys, each as "sha256:<hex>" of the key',
                                    check=_check_key_digests)
    basic: tuple[BasicUser, ...] = key((), "basic-auth users (RFC 7617)")
    jwt: tuple[JwtBinding, ...] = key((), "tokens that name this consumer")
    tier: str | None = key(None, "quota tier in rate_limit sections (before their tier key "
                                 "and default tier)")
    rate_limits: tuple[LimitOverride, ...] = key((), "this consumer's values for named limits "
                                                     "of rate_limit sections",
                                                 check=_check_overrides)


def check_consumers(consumers: tuple, errors: list) -> None:
    """Cross-checks over every consumer: unique names and credentials."""
    names: dict = {}
    keys: dict = {}
    users: dict = {}
    bindings: dict = {}
    for i, c in enumerate(consumers):
        if c is None:
            continue
        path = f"consumers[{i}]"
        if c.name in names:
            errors.append((f"{path}.name", f'duplicate consumer name "{c.name}" '
                                           f"(also consumers[{names[c.name]}])"))
        names.setdefault(c.name, i)
        for j, k in enumerate(c.api_keys):
            if k in keys and keys[k] != i:
                errors.append((f"{path}.api_keys[{j}]", f"also a key of consumers[{keys[k]}]"))
            keys.setdefault(k, i)
        for j, u in enumerate(c.basic):
            if u is None:
                continue
            if u.username in users:
                errors.append((f"{path}.basic[{j}].username",
                               f'"{u.username}" is also a user of consumers[{users[u.username]}]'))
            users.setdefault(u.username, i)
        for j, b in enumerate(c.jwt):
            if b is None:
                continue
            ident = (b.issuer, b.subject)
            if ident in bindings:
                errors.append((f"{path}.jwt[{j}]", f"also names consumers[{bindings[ident]}]"))
            bindings.setdefault(ident, i)


def sha256_digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class Consumer:
    """A configured consumer as the data plane reads it."""

    __slots__ = ("name", "groups", "tier", "header_groups")

    def __init__(self, cfg: ConsumerConfig):
        self.name = cfg.name
        self.groups = frozenset(cfg.groups)
        self.tier = cfg.tier
        self.header_groups = ",".join(cfg.groups).encode()


class Consumers:
    """Lookup tables over every consumer: by name, by API-key digest, by basic user, by JWT
    (issuer, subject). Built once per snapshot."""

    __slots__ = ("by_name", "by_key", "by_user", "by_subject", "decoy")

    def __init__(self, configs: tuple):
        self.by_name = {}
        self.by_key = {}   # first 16 bytes of the key's SHA-256 -> (Consumer, digest)
        self.by_user = {}  # username -> (Consumer, "bcrypt" | "sha256", stored hash bytes)
        self.by_subject = {}  # (issuer or None, subject) -> Consumer
        self.decoy = None  # a stored bcrypt hash, checked for unknown users (same timing)
        for cfg in configs:
            c = Consumer(cfg)
            self.by_name[c.name] = c
            for k in cfg.api_keys:
                digest = bytes.fromhex(k[7:])
                self.by_key[digest[:16]] = (c, digest)
            for u in cfg.basic:
                if u.password.startswith("sha256:"):
                    self.by_user[u.username] = (c, "sha256", bytes.fromhex(u.password[7:]))
                else:
                    self.by_user[u.username] = (c, "bcrypt", u.password.encode())
                    self.decoy = self.decoy or u.password.encode()
            for b in cfg.jwt:
                self.by_subject[(b.issuer, b.subject)] = c

    def by_api_key(self, presented: bytes):
        """The consumer whose key this is, or None. The table is indexed by the first half
        of each key's SHA-256, so how long the lookup takes says nothing about a stored key;
        the whole digest is then compared in constant time."""
        digest = sha256_digest(presented)
        entry = self.by_key.get(digest[:16])
        if entry is None or not hmac.compare_digest(entry[1], digest):
            return None
        return entry[0]

    def by_jwt(self, issuer, subject):
        c = self.by_subject.get((issuer, subject))
        if c is None:
            c = self.by_subject.get((None, subject))
        return c


def check_password(kind: str, stored: bytes, password: bytes) -> bool:
    """Whether ``password`` matches a stored hash (constant-time either way). bcrypt takes
    tens of milliseconds by design: call it off the event loop."""
    if kind == "sha256":
        return hmac.compare_digest(stored, sha256_digest(password))
    try:
        return bcrypt.checkpw(password, stored)
    except ValueError:
        return False


def hash_secret(kind: str, secret: bytes, rounds: int = 12) -> str:
    """The config form of an API key ("sha256:<hex>") or a password (bcrypt)."""
    if kind == "api-key":
        return "sha256:" + hashlib.sha256(secret).hexdigest()
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds)).decode()
