"""Listener certificates by SNI name (engine/control/tls.py) and the client-certificate header
value (engine/wire/tls.py)."""

import pytest

from engine.control.config import parse
from engine.control.tls import Certificates, TLSPolicy
from engine.wire.tls import header_value
from tests.support.tls import issue

DEFAULT = issue("unit-default", "default.test")
API = issue("unit-api", "api.example.test")
WILD = issue("unit-wild", "*.example.test", "example.test")


def tls_cfg(strict: bool = False):
    text = f"""
[[listeners]]
name = "l"
listen = "127.0.0.1:0"
[listeners.tls]
cert = "{DEFAULT[0]}"
key = "{DEFAULT[1]}"
strict_sni = {str(strict).lower()}
[[listeners.tls.certificates]]
cert = "{WILD[0]}"
key = "{WILD[1]}"
[[listeners.tls.certificates]]
cert = "{API[0]}"
key = "{API[1]}"
[[listeners.tls.certificates]]
cert = "{DEFAULT[0]}"
key = "{DEFAULT[1]}"
names = ["alias.test"]
"""
    return parse(text).listeners[0].tls


@pytest.mark.parametrize("sni, cert", [
    pytest.param("api.example.test", "api", id="exact-beats-wildcard"),
    pytest.param("API.EXAMPLE.TEST.", "api", id="case-and-trailing-dot"),
    pytest.param("www.example.test", "wild", id="wildcard"),
    pytest.param("example.test", "wild", id="exact-san-of-the-wildcard-cert"),
    pytest.param("a.b.example.test", "default", id="wildcard-is-one-label"),
    pytest.param("alias.test", "alias", id="configured-names"),
    pytest.param("nobody.test", "default", id="unknown-gets-default"),
    pytest.param(None, "default", id="no-sni"),
])
def test_pick_by_sni(sni, cert):
    certs = Certificates(tls_cfg(), TLSPolicy())
    by_name = {"api": certs.exact["api.example.test"], "wild": certs.wildcard["example.test"],
               "alias": certs.exact["alias.test"], "default": certs.default}
    assert certs.pick(sni) is by_name[cert]


def test_strict_sni_picks_nothing_for_an_unknown_name():
    certs = Certificates(tls_cfg(strict=True), TLSPolicy())
    assert certs.pick("nobody.test") is None
    assert certs.pick(None) is None
    assert certs.pick("www.example.test") is certs.wildcard["example.test"]


@pytest.mark.parametrize("text, value", [
    ("CN=billing,O=Example", b"CN=billing,O=Example"),
    ("CN=a\r\nX-Admin: 1", b"CN=a\\0D\\0AX-Admin: 1"),
    ("CN=Zoë", b"CN=Zo\\C3\\AB"),
])
def test_header_value_never_splits_a_header(text, value):
    assert header_value(text) == value
