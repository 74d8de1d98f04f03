"""JWT bearer tokens end to end (engine/filters/auth_jwt.py): every algorithm with keys made
here, the refusals RFC 7519 / RFC 8725 call for, consumers from claims, scope rules, a JWKS
file, and a JWKS served by a real origin through an upstream (rotation, rate bound, outage)."""

import base64
import hashlib
import hmac
import threading
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config, wait_until
from tests.support.origin import Origin, closed_port, ok
from tests.support.proxy import InProcessProxy

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
ED = ed25519.Ed25519PrivateKey.generate()
SECRETS = {"HS256": b"s" * 32, "HS384": b"t" * 48, "HS512": b"u" * 64}
ISSUER = "https://idp.test"


def pem(private) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# (alg, kid, signing key)
SIGNERS = [
    ("HS256", "hs256", SECRETS["HS256"]), ("HS384", "hs384", SECRETS["HS384"]),
    ("HS512", "hs512", SECRETS["HS512"]),
    ("RS256", "rsa", RSA_KEY), ("RS384", "rsa", RSA_KEY), ("RS512", "rsa", RSA_KEY),
    ("PS256", "rsa", RSA_KEY), ("ES256", "p256", P256), ("ES384", "p384", P384),
    ("EdDSA", "ed", ED),
]

KEYS = "\n".join(
    f'[[routes.auth.jwt.keys]]\nkid = "{kid}"\nsecret = "{SECRETS[kid.upper()].decode()}"\n'
    f'algorithms = ["{kid.upper()}"]' for kid in ("hs256", "hs384", "hs512")) + "\n" + "\n".join(
    f'[[routes.auth.jwt.keys]]\nkid = "{kid}"\npem = """{pem(k)}"""'
    for kid, k in (("rsa", RSA_KEY), ("p256", P256), ("p384", P384), ("ed", ED)))

CONSUMERS = """
[[consumers]]
name = "alice"
groups = ["admin"]
jwt = [{ subject = "user-1", issuer = "https://idp.test" }]
"""


def jwt_route(extra_jwt: str = "", keys: str = KEYS) -> str:
    return f"""
[routes.auth]
methods = ["jwt"]
[routes.auth.jwt]
issuers = ["{ISSUER}"]
audiences = ["orders"]
{extra_jwt}
{keys}
"""


def claims(**over) -> dict:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": "orders", "sub": "user-1", "iat": now, "exp": now + 300}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def token(alg="RS256", kid="rsa", key=RSA_KEY, headers=None, **over) -> bytes:
    return jwt.encode(claims(**over), key, algorithm=alg,
                      headers={"kid": kid, **(headers or {})}).encode()


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def forged(header: dict, payload: dict, sign) -> bytes:
    signing_input = b64(orjson.dumps(header)) + b"." + b64(orjson.dumps(payload))
    return signing_input + b"." + b64(sign(signing_input))


def bearer(t: bytes) -> list:
    return [(b"Authorization", b"Bearer " + t)]


@pytest.fixture(scope="module")
def edge():
    """One proxy with a key for every algorithm, shared by the table tests below."""
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, route=jwt_route(), extra=CONSUMERS)) as p:
        yield p, origin


@pytest.mark.parametrize("alg,kid,key", SIGNERS, ids=[s[0] for s in SIGNERS])
def test_every_algorithm_verifies_with_its_own_key(edge, alg, kid, key):
    p, origin = edge
    before = len(origin.requests)
    with Conn(p.port) as c:
        r = c.request("GET", "/x", headers=bearer(token(alg, kid, key)))
    assert r.status == 200, r.body
    seen = origin.requests[before]
    assert seen.header(b"x-consumer") == b"alice"
    assert seen.header(b"x-user-id") == b"user-1"
    assert seen.header(b"authorization") is None  # removed: the upstream gets the identity


def _none(): return forged({"alg": "none", "kid": "rsa"}, claims(), lambda s: b"")


def _confused():
    # HS256 "signed" with the RSA public key's PEM as the secret (RFC 8725 §2.1).
    secret = pem(RSA_KEY).encode()
    return forged({"alg": "HS256", "kid": "rsa", "typ": "JWT"}, claims(),
                  lambda s: hmac.new(secret, s, hashlib.sha256).digest())


def _tampered():
    h, p_, s = token().split(b".")
    payload = orjson.loads(base64.urlsafe_b64decode(p_ + b"=" * (-len(p_) % 4)))
    payload["sub"] = "admin"
    return h + b"." + b64(orjson.dumps(payload)) + b"." + s


def _wrong_key(): return token(key=rsa.generate_private_key(public_exponent=65537,
                                                            key_size=2048))


CASES = {
    "expired": lambda: token(exp=int(time.time()) - 120),
    "not-yet-valid": lambda: token(nbf=int(time.time()) + 600),
    "issued-in-the-future": lambda: token(iat=int(time.time()) + 600),
    "wrong-issuer": lambda: token(iss="https://evil.test"),
    "wrong-audience": lambda: token(aud="billing"),
    "no-exp": lambda: token(exp=None),
    "tampered": _tampered,
    "wrong-key": _wrong_key,
    "alg-none": _none,
    "hs-with-rsa-public-key": _confused,
    "unknown-kid": lambda: token(kid="nobody"),
    "alg-not-allowed-for-key": lambda: token("ES256", "rsa", P256),
    "crit": lambda: forged({"alg": "HS256", "kid": "hs256", "crit": ["exp"]}, claims(),
                           lambda s: hmac.new(SECRETS["HS256"], s, hashlib.sha256).digest()),
    "garbage": lambda: b"not.a.token",
    "jwe-shape": lambda: b"a.b.c.d.e",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_tokens_get_401_invalid_token_and_never_say_why(edge, case):
    p, origin = edge
    before = len(origin.requests)
    with Conn(p.port) as c:
        r = c.request("GET", "/x", headers=bearer(CASES[case]()))
    err = assert_error(r, 401, "auth_invalid")
    # RFC 6750 §3.1: the error code, nothing about which part failed.
    assert r.header(b"www-authenticate") == b'Bearer realm="edgeproxy", error="invalid_token"'
    assert err["message"] == "the credentials are not valid"
    assert len(origin.requests) == before


def test_leeway_admits_a_token_just_expired(edge):
    p, _ = edge
    with Conn(p.port) as c:
        r = c.request("GET", "/x", headers=bearer(token(exp=int(time.time()) - 20)))
    assert r.status == 200  # within the 60 s default leeway


def test_no_token_gets_the_bearer_challenge_without_an_error_code(edge):
    p, _ = edge
    with Conn(p.port) as c:
        r = c.request("GET", "/x")
        assert_error(r, 401, "auth_required")
        # RFC 6750 §3.1: no error code when the request had no authentication.
        assert r.header(b"www-authenticate") == b'Bearer realm="edgeproxy"'
        r = c.request("GET", "/x", headers=[(b"Authorization", b"Bearer a"),
                                            (b"Authorization", b"Bearer b")])
        assert_error(r, 400, "auth_bad_request")
        assert r.header(b"www-authenticate") == b'Bearer error="invalid_request"'


def test_an_unknown_subject_is_an_identity_without_consumer_or_refused(edge):
    p, origin = edge
    before = len(origin.requests)
    with Conn(p.port) as c:
        assert c.request("GET", "/x", headers=bearer(token(sub="user-2"))).status == 200
    seen = origin.requests[before]
    assert seen.header(b"x-consumer") is None and seen.header(b"x-user-id") == b"user-2"
    with Origin() as o2, InProcessProxy(proxy_config(
            o2.url, route=jwt_route('unknown_subject = "deny"'), extra=CONSUMERS)) as p2, \
            Conn(p2.port) as c:
        assert_error(c.request("GET", "/x", headers=bearer(token(sub="user-2"))), 401)
        assert c.request("GET", "/x", headers=bearer(token())).status == 200


def test_a_binding_with_an_issuer_names_no_consumer_for_another_issuer():
    route = jwt_route().replace(f'issuers = ["{ISSUER}"]',
                                f'issuers = ["{ISSUER}", "https/other"]')
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, route=route, extra=CONSUMERS)) as p, Conn(p.port) as c:
        assert c.request("GET", "/x", headers=bearer(token(iss="https/other"))).status == 200
        assert c.request("GET", "/x", headers=bearer(token())).status == 200
    assert [r.header(b"x-consumer") for r in origin.requests] == [None, b"alice"]


def test_a_token_in_a_cookie_and_groups_from_a_claim():
    route = jwt_route('cookie = "session"\ngroups_claim = "roles"') + \
        '[routes.acl]\nallow_groups = ["ops"]\n'
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, route=route, extra=CONSUMERS)) as p, Conn(p.port) as c:
        t = token(sub="user-9", roles=["ops", "dev"])
        r = c.request("GET", "/x", headers=[(b"Cookie", b"theme=dark; session=" + t)])
        assert r.status == 200, r.body
        assert origin.requests[0].header(b"x-consumer-groups") == b"dev,ops"
        assert origin.requests[0].header(b"cookie") is not None  # cookies are not ours to cut
        r = c.request("GET", "/x", headers=bearer(token(sub="user-9", roles="dev")))
        assert_error(r, 403, "access_denied")


@pytest.mark.parametrize("rule,extra,status", [
    pytest.param('{ claim = "scope", contains = "orders:read" }',
                 {"scope": "profile orders:read"}, 200, id="scope-has"),
    pytest.param('{ claim = "scope", contains = "orders:write" }',
                 {"scope": "profile orders:read"}, 403, id="scope-lacks"),
    pytest.param('{ claim = "tenant", equals = "acme" }', {"tenant": "acme"}, 200,
                 id="equals"),
    pytest.param('{ claim = "tenant", equals = "acme" }', {"tenant": "evil"}, 403,
                 id="not-equals"),
    pytest.param('{ claim = "realm_access.roles", contains = "admin" }',
                 {"realm_access": {"roles": ["admin"]}}, 200, id="nested"),
    pytest.param('{ claim = "email_verified", equals = "true" }',
                 {"email_verified": True}, 200, id="boolean"),
])
def test_claim_rules(rule, extra, status):
    route = jwt_route() + f"[routes.acl]\nclaims = [{rule}]\n"
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, route=route, extra=CONSUMERS)) as p, Conn(p.port) as c:
        r = c.request("GET", "/x", headers=bearer(token(**extra)))
        assert r.status == status, r.body
        if status == 403:
            assert_error(r, 403, "access_denied")
            if "scope" in rule:  # RFC 6750 §3.1
                assert r.header(b"www-authenticate") == \
                    b'Bearer error="insufficient_scope", scope="orders:write"'


def jwks(*pairs) -> bytes:
    out = []
    for kid, private, alg in pairs:
        pub = private.public_key()
        to = {rsa.RSAPublicKey: RSAAlgorithm, ec.EllipticCurvePublicKey: ECAlgorithm}
        algo = next((a for t, a in to.items() if isinstance(pub, t)), OKPAlgorithm)
        jwk = algo.to_jwk(pub, as_dict=True)
        jwk.update(kid=kid, use="sig", **({"alg": alg} if alg else {}))
        out.append(jwk)
    return orjson.dumps({"keys": out})


def test_a_jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(("k1", P256, "ES256"), ("k2", ED, None)))
    route = jwt_route(f'jwks_file = "{path}"', keys="")
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, route=route, extra=CONSUMERS)) as p, Conn(p.port) as c:
        assert c.request("GET", "/x", headers=bearer(token("ES256", "k1", P256))).status == 200
        assert c.request("GET", "/x", headers=bearer(token("EdDSA", "k2", ED))).status == 200
        assert_error(c.request("GET", "/x", headers=bearer(token("ES256", "k2", P256))), 401)


class JwksOrigin(Origin):
    """An identity provider's JWKS endpoint: serves ``self.document`` (or ``self.down``: 503)."""

    def __init__(self, document: bytes):
        self.document = document
        self.down = False
        self.lock = threading.Lock()
        super().__init__(self.answer)

    def answer(self, req):
        if self.down:
            return ok(b"down", 503)
        return ok(self.document, headers=[(b"Content-Type", b"application/json")])


def remote_route(upstream: str = "idp", min_refresh: str = "30", refresh: str = "300"):
    return jwt_route(f"""[routes.auth.jwt.jwks]
upstream = "{upstream}"
path = "/keys"
min_refresh = {min_refresh}
refresh = {refresh}
""", keys="")


def idp_upstream(url: str) -> str:
    return f'\n[[upstreams]]\nname = "idp"\nservers = ["{url}"]\n'


def test_jwks_through_an_upstream_rotation_rate_bound_and_outage():
    idp = JwksOrigin(jwks(("k1", RSA_KEY, "RS256")))
    new_key = ec.generate_private_key(ec.SECP256R1())
    with idp, Origin() as origin, InProcessProxy(proxy_config(
            origin.url, route=remote_route(), extra=CONSUMERS + idp_upstream(idp.url))) as p, \
            Conn(p.port) as c:
        r = c.request("GET", "/x", headers=bearer(token(kid="k1")))
        assert r.status == 200, r.body
        assert idp.requests[0].url == b"/keys"
        fetches = len(idp.requests)  # the first request's or the sweep's, once
        assert fetches == 1
        # The provider rotates: a token with the new kid refreshes the set once.
        idp.document = jwks(("k1", RSA_KEY, "RS256"), ("k2", new_key, "ES256"))
        assert c.request("GET", "/x", headers=bearer(token("ES256", "k2", new_key))).status == 200
        assert len(idp.requests) == 2
        # Unknown kids within min_refresh do not hammer the provider.
        for _ in range(3):
            assert_error(c.request("GET", "/x", headers=bearer(token(kid="k9"))), 401)
        assert len(idp.requests) == 2
        # The provider goes down: keys already fetched keep verifying (served stale).
        idp.down = True
        p.call(lambda: setattr(p.worker.runtime.shared.items[
            ("auth-jwks", p.cfg.routes[0].sections[0][1].jwt.jwks)], "next_due", 0.0))
        assert wait_until(lambda: len(idp.requests) == 3, 5)
        assert c.request("GET", "/x", headers=bearer(token("ES256", "k2", new_key))).status == 200
        assert c.request("GET", "/x", headers=bearer(token(kid="k1", sub="user-3"))).status == 200


def test_jwks_never_fetched_is_a_503_not_a_401():
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, route=remote_route(),
            extra=CONSUMERS + idp_upstream(f"http://127.0.0.1:{closed_port()}"))) as p, \
            Conn(p.port) as c:
        r = c.request("GET", "/x", headers=bearer(token(kid="k1")))
        assert_error(r, 503, "auth_unavailable")
        assert int(r.header(b"retry-after")) >= 1
        assert not origin.requests


def test_jwks_state_outlives_a_reload():
    idp = JwksOrigin(jwks(("k1", RSA_KEY, "RS256")))
    with idp, Origin() as origin:
        text = proxy_config(origin.url, route=remote_route(), extra=CONSUMERS + idp_upstream(
            idp.url))
        with InProcessProxy(text) as p, Conn(p.port) as c:
            assert c.request("GET", "/x", headers=bearer(token(kid="k1"))).status == 200
            p.swap(text.replace('name = "all"', 'name = "all"\nmethods = ["GET"]'))
            assert c.request("GET", "/x", headers=bearer(token(kid="k1", sub="u4"))).status \
                == 200
        assert len(idp.requests) == 1
