"""The JWT verifier and key loading (engine/filters/auth_jwt.py), without a proxy: which keys
load with which algorithms, what a JWK Set yields, the verified-token cache and the JWKS
state's fetch, rate bound and staleness (fetch functions are real coroutines returning
Responses, as ctx.fetch does)."""

import asyncio
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import RSAAlgorithm

from engine.errors import Response
from engine.filters.auth_jwt import (
    RSA, JwksConfig, JwksState, JwtConfig, KeyConfig, TokenError, Verifier, load_key, new_cache,
    parse_jwks,
)
from engine.filters.consumers import Consumers

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(private) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("cfg,algorithms", [
    pytest.param(KeyConfig(pem=pem(RSA_KEY)), set(RSA), id="rsa-family"),
    pytest.param(KeyConfig(pem=pem(RSA_KEY), algorithms=("PS256",)), {"PS256"}, id="narrowed"),
    pytest.param(KeyConfig(pem=pem(ec.generate_private_key(ec.SECP384R1()))), {"ES384"},
                 id="p384"),
    pytest.param(KeyConfig(pem=pem(ed25519.Ed25519PrivateKey.generate())), {"EdDSA"},
                 id="ed25519"),
    pytest.param(KeyConfig(secret="x" * 48), {"HS256", "HS384"}, id="secret-48-bytes"),
])
def test_a_key_verifies_only_its_types_algorithms(cfg, algorithms):
    assert load_key(cfg).algorithms == algorithms


@pytest.mark.parametrize("cfg,message", [
    pytest.param(KeyConfig(pem=pem(RSA_KEY), algorithms=("HS256",)), "cannot verify HS256",
                 id="hs-for-rsa"),
    pytest.param(KeyConfig(secret="short"), "too weak", id="short-secret"),
    pytest.param(KeyConfig(secret="x" * 32, algorithms=("HS512",)), "cannot verify HS512",
                 id="secret-too-short-for-hs512"),
    pytest.param(KeyConfig(pem=pem(rsa.generate_private_key(65537, 1024))), "too weak",
                 id="rsa-1024"),
    pytest.param(KeyConfig(pem="-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"),
                 "not a PEM public key", id="bad-pem"),
    pytest.param(KeyConfig(), "exactly one", id="nothing"),
    pytest.param(KeyConfig(secret="x" * 32, pem=pem(RSA_KEY)), "exactly one", id="two"),
])
def test_an_unusable_key_says_why(cfg, message):
    with pytest.raises(ValueError, match=message):
        load_key(cfg)


def test_a_bad_key_is_a_config_error_naming_its_path():
    from engine.chain.schema import ConfigError
    from engine.control.config import parse
    with pytest.raises(ConfigError) as exc:
        parse("""
[[upstreams]]
name = "app"
servers = ["http://127.0.0.1:1"]
[[routes]]
name = "r"
upstream = "app"
[routes.auth]
methods = ["jwt"]
[[routes.auth.jwt.keys]]
secret = "short"
[routes.auth.jwt.jwks]
upstream = "nowhere"
""")
    paths = [p for p, _ in exc.value.errors]
    assert paths == ["routes[0].auth.jwt.keys[0]", "routes[0].auth.jwt.jwks.upstream"]


def rsa_jwk(**extra) -> dict:
    jwk = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    jwk.update(extra)
    return jwk


def test_a_jwk_set_keeps_signature_keys_only():
    doc = {"keys": [
        rsa_jwk(kid="sig", alg="RS256"),
        rsa_jwk(kid="enc", use="enc"),
        rsa_jwk(kid="ops", key_ops=["encrypt"]),
        rsa_jwk(kid="bad-alg", alg="ES256"),
        {"kty": "weird", "kid": "w"},
        "not an object",
        rsa_jwk(kid="family"),
    ]}
    keys, skipped = parse_jwks(orjson.dumps(doc))
    assert [(k.kid, sorted(k.algorithms)) for k in keys] == [
        ("sig", ["RS256"]), ("family", sorted(RSA))]
    assert skipped == 5


@pytest.mark.parametrize("data", [b"nope", b"[]", b'{"keys": 1}'])
def test_a_document_that_is_not_a_jwk_set_is_refused(data):
    with pytest.raises(ValueError):
        parse_jwks(data)


def verifier(cfg=None, keys=None, jwks=None):
    cfg = cfg or JwtConfig()
    return Verifier(cfg, keys if keys is not None else [load_key(KeyConfig(
        kid="k", pem=pem(RSA_KEY)))], jwks, new_cache(cfg), Consumers(()))


def signed(**claims) -> bytes:
    body = {"sub": "u", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, RSA_KEY, algorithm="RS256", headers={"kid": "k"}).encode()


def verify(v, token):
    hit, digest = v.cached(token, time.monotonic())
    if hit is not None:
        return hit
    header = v.header(token)
    return v.check(token, header, v.candidates(header), digest)


def test_a_verified_token_is_served_from_the_cache_until_it_expires():
    v = verifier(JwtConfig(leeway=0))
    t = signed(exp=int(time.time()) + 2)
    first = verify(v, t)
    assert v.cached(t, time.monotonic())[0] is first
    assert verify(v, t) is first
    # Past exp (no leeway): gone from the cache.
    first.expires = time.time() - 1
    assert v.cached(t, time.monotonic())[0] is None
    assert len(v.cache) == 0


def test_no_cache_when_cache_ttl_is_zero():
    v = verifier(JwtConfig(cache_ttl=0))
    t = signed()
    verify(v, t)
    assert v.cache is None and v.cached(t, time.monotonic()) == (None, None)


@pytest.mark.parametrize("token,reason", [
    pytest.param(b"a.b", "malformed", id="two-parts"),
    pytest.param(b"a.b.c=", "malformed", id="padding"),
    pytest.param(b".b.c", "malformed", id="empty-header"),
])
def test_header_checks(token, reason):
    with pytest.raises(TokenError, match=reason):
        verifier().header(token)


def test_a_token_without_kid_tries_keys_without_kid_first():
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = [load_key(KeyConfig(kid="k", pem=pem(RSA_KEY))), load_key(KeyConfig(pem=pem(other)))]
    v = verifier(keys=keys)
    t = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, other, algorithm="RS256").encode()
    assert verify(v, t).claims["sub"] == "u"
    t = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, RSA_KEY, algorithm="RS256").encode()
    with pytest.raises(TokenError, match="bad_signature"):
        verify(v, t)  # only the kid-less key is tried for a kid-less token


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_jwks_state_single_flight_staleness_and_backoff():
    doc = orjson.dumps({"keys": [rsa_jwk(kid="k1", alg="RS256")]})
    calls = []

    async def fetch_ok():
        calls.append("ok")
        await asyncio.sleep(0.01)
        return Response(200, [], doc)

    async def fetch_down():
        calls.append("down")
        return Response(503, [], b"")

    async def main():
        state = JwksState(JwksConfig(upstream="idp", refresh=300, min_refresh=10))
        assert state.due(time.monotonic())
        # Concurrent refreshes share one fetch.
        results = await asyncio.gather(state.refresh(fetch_ok), state.refresh(fetch_ok))
        assert results == [True, True] and calls == ["ok"]
        assert not state.due(time.monotonic())
        # Down: the keys stay (stale), the next try backs off from min_refresh.
        state.next_due = 0
        assert await state.refresh(fetch_down) is True
        assert [k.kid for k in state.keys] == ["k1"]
        assert 10 <= state.next_due - time.monotonic() <= 300
        # The kid-miss bound: one refresh per min_refresh.
        now = time.monotonic()
        assert state.may_refresh_for_kid(now) and not state.may_refresh_for_kid(now + 1)
        assert state.may_refresh_for_kid(now + 11)

    run(main())


def test_a_key_gone_from_the_set_clears_the_tokens_it_verified():
    docs = [orjson.dumps({"keys": [rsa_jwk(kid="k", alg="RS256")]}),
            orjson.dumps({"keys": [rsa_jwk(kid="k2", alg="RS256")]})]

    async def main():
        state = JwksState(JwksConfig(upstream="idp"))
        v = verifier(keys=[], jwks=state)

        async def fetch():
            return Response(200, [], docs.pop(0))
        await state.refresh(fetch)
        verify(v, signed())
        assert len(v.cache) == 1
        await state.refresh(fetch)
        assert v.cached(signed(), time.monotonic())[0] is None and len(v.cache) == 0

    run(main())


def test_a_key_without_kid_verifies_tokens_with_any_kid_when_none_has_theirs():
    v = verifier(keys=[load_key(KeyConfig(pem=pem(RSA_KEY)))])
    assert verify(v, signed()).claims["sub"] == "u"  # signed() carries kid "k"
    keyed = verifier()  # one key, kid "k": another kid is unknown
    t = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, RSA_KEY, algorithm="RS256",
                   headers={"kid": "other"}).encode()
    assert keyed.candidates(keyed.header(t)) is None
