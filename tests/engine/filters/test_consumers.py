"""Consumers' config checks and lookups (engine/filters/consumers.py)."""

import hashlib

import bcrypt
import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from engine.filters.consumers import Consumers, check_password, hash_secret


def sha(secret: bytes) -> str:
    return "sha256:" + hashlib.sha256(secret).hexdigest()


@pytest.mark.parametrize("text,path,message", [
    pytest.param('[[consumers]]\nname = "a"\napi_keys = ["plain-key"]', "consumers[0].api_keys",
                 "never in clear", id="plain-key"),
    pytest.param('[[consumers]]\nname = "a"\nbasic = [{ username = "a", password = "pw" }]',
                 "consumers[0].basic[0].password", "never in clear", id="plain-password"),
    pytest.param('[[consumers]]\nname = "a b"', "consumers[0].name", "no spaces",
                 id="bad-name"),
    pytest.param('[[consumers]]\nname = "a"\n[[consumers]]\nname = "a"', "consumers[1].name",
                 "duplicate", id="duplicate"),
    pytest.param(f'[[consumers]]\nname = "a"\napi_keys = ["{sha(b"k")}"]\n[[consumers]]\n'
                 f'name = "b"\napi_keys = ["{sha(b"k")}"]', "consumers[1].api_keys[0]",
                 "also a key", id="shared-key"),
    pytest.param(f'[[consumers]]\nname = "a"\nbasic = [{{ username = "u:x", password = '
                 f'"{sha(b"p")}" }}]', "consumers[0].basic[0].username", "colon",
                 id="colon-in-user"),
])
def test_bad_consumers_are_config_errors(text, path, message):
    with pytest.raises(ConfigError) as exc:
        parse(text)
    assert [(p, m) for p, m in exc.value.errors if p == path and message in m], exc.value.errors


def test_lookups_by_key_user_and_subject():
    cfg = parse(f"""
[[consumers]]
name = "a"
api_keys = ["{sha(b"key-a")}"]
basic = [{{ username = "ua", password = "{sha(b"pw")}" }}]
jwt = [{{ subject = "s", issuer = "i" }}, {{ subject = "any" }}]
""")
    c = Consumers(cfg.consumers)
    assert c.by_api_key(b"key-a").name == "a"
    assert c.by_api_key(b"key-b") is None
    consumer, kind, stored = c.by_user["ua"]
    assert kind == "sha256" and check_password(kind, stored, b"pw")
    assert not check_password(kind, stored, b"pw2")
    assert c.by_jwt("i", "s").name == "a" and c.by_jwt("j", "s") is None
    assert c.by_jwt("j", "any").name == "a"


def test_hash_secret_makes_what_the_config_accepts():
    assert hash_secret("api-key", b"k") == sha(b"k")
    h = hash_secret("password", b"pw", 4)
    assert bcrypt.checkpw(b"pw", h.encode())
    assert check_password("bcrypt", h.encode(), b"pw") and not check_password(
        "bcrypt", h.encode(), b"no")


def test_a_tier_or_limit_override_must_name_one_that_exists():
    with pytest.raises(ConfigError) as exc:
        parse("""
[[upstreams]]
name = "app"
servers = ["http://127.0.0.1:1"]
[[routes]]
name = "r"
upstream = "app"
[routes.rate_limit]
limits = [{ name = "per-minute", limit = 10 }]
quota = { tiers = [{ name = "free", daily = 10 }] }
[[consumers]]
name = "a"
tier = "fre"
rate_limits = [{ name = "per-minute", limit = 20 }, { name = "per-hour", limit = 5 }]
""")
    assert exc.value.errors == [
        ("consumers[0].tier", 'no rate_limit quota has a tier "fre" (did you mean "free"?)'),
        ("consumers[0].rate_limits[1].name", 'no rate_limit section has a limit "per-hour"')]
