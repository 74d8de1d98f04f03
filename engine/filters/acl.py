"""Access control after authentication: groups and claim rules decide, 403 when they refuse.

Reads the identity the auth filter left in ``ctx.vars["auth"]`` (engine/filters/auth.py).
In order: a caller in any ``deny_groups`` group is refused; with ``allow_groups``, a caller
in none of them is refused; then every claim rule must hold. A request without an identity
has no groups and no claims. A scope rule that fails on a bearer token adds
``WWW-Authenticate: Bearer error="insufficient_scope"`` (RFC 6750 §3.1).
"""

import re
from dataclasses import dataclass

from engine.chain.filter import ACL, Filter as FilterBase
from engine.chain.schema import REQUIRED, key
from engine.errors import error_response
from engine.filters.consumers import check_names

ERRORS = {"access_denied": (403, "the caller may not use this route")}
METRICS = {"acl": ("edgeproxy_acl_denied_total", "reason",
                   "Requests access control refused, by reason (deny_group, not_in_group, "
                   "claim).")}


@dataclass(frozen=True)
class ClaimRule:
    claim: str = key(REQUIRED, 'claim name; "a.b" reads claim b inside object claim a')
    equals: str | None = key(None, "the claim (a string, number or boolean) equals this")
    contains: str | None = key(None, "the claim, an array or a space-separated string such "
                                     "as scope (RFC 8693 §4.2), contains this")


_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 §3.3


def _check_rules(rules: tuple) -> tuple:
    for i, r in enumerate(rules):
        if r is None:
            continue
        if (r.equals is None) == (r.contains is None):
            raise ValueError(f"claims[{i}]: needs exactly one of equals, contains")
        if r.claim == "scope" and r.contains is not None and not _SCOPE_TOKEN.match(r.contains):
            raise ValueError(f"claims[{i}].contains: not a scope token (RFC 6749 §3.3)")
    return rules


@dataclass(frozen=True)
class Config:
    allow_groups: tuple[str, ...] = key((), "only callers in one of these groups; empty = any",
                                        check=check_names)
    deny_groups: tuple[str, ...] = key((), "callers in any of these groups are refused",
                                       check=check_names)
    claims: tuple[ClaimRule, ...] = key((), "rules on the token's claims, all must hold",
                                        check=_check_rules)


def claim(claims, name: str):
    if claims is None:
        return None
    if name in claims:
        return claims[name]
    value = claims
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def holds(rule: ClaimRule, value) -> bool:
    if rule.equals is not None:
        if isinstance(value, bool):
            return rule.equals == ("true" if value else "false")
        if isinstance(value, (int, float)):
            return rule.equals == str(value)
        return isinstance(value, str) and value == rule.equals
    if isinstance(value, str):
        return rule.contains in value.split(" ")
    return isinstance(value, list) and rule.contains in value


class Filter(FilterBase):
    __slots__ = ("allow", "deny", "rules", "events")
    PHASE = ACL

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.allow = frozenset(cfg.allow_groups)
        self.deny = frozenset(cfg.deny_groups)
        self.rules = cfg.claims
        self.events = build.counter("acl")

    def on_request(self, ctx):
        ident = ctx.vars.get("auth") if ctx.vars is not None else None
        groups = ident.groups if ident is not None else frozenset()
        if self.deny and not groups.isdisjoint(self.deny):
            return self._deny(ctx, "deny_group")
        if self.allow and groups.isdisjoint(self.allow):
            return self._deny(ctx, "not_in_group")
        if self.rules:
            claims = ident.claims if ident is not None else None
            for rule in self.rules:
                if not holds(rule, claim(claims, rule.claim)):
                    challenge = None
                    if rule.claim == "scope" and rule.contains and ident is not None \
                            and ident.method == "jwt":
                        challenge = [(b"WWW-Authenticate",
                                      b'Bearer error="insufficient_scope", scope="%s"'
                                      % rule.contains.encode())]
                    return self._deny(ctx, "claim", challenge)
        return None

    def _deny(self, ctx, reason: str, headers=None):
        self.events[reason] = self.events.get(reason, 0) + 1
        return error_response("access_denied", ctx.request_id.decode(), None, headers)
