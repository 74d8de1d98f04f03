"""The cors filter's origin matching on its own: the serialized origin, never substrings."""

import pytest

from engine.filters.cors import _check_origins, _Origins

ALLOWED = ("https://app.example.com", "https://*.example.org", "http://localhost:3000",
           "https://api.example.net:8443")


@pytest.mark.parametrize("origin,allowed", [
    pytest.param(b"https://app.example.com", True, id="exact"),
    pytest.param(b"https://app.example.com:443", True, id="default-port-same-origin"),
    pytest.param(b"HTTPS://APP.EXAMPLE.COM", True, id="case"),
    pytest.param(b"http://app.example.com", False, id="other-scheme"),
    pytest.param(b"https://app.example.com:444", False, id="other-port"),
    pytest.param(b"https://app.example.com.evil.io", False, id="suffix-appended"),
    pytest.param(b"https://evilapp.example.com", False, id="prefix-prepended"),
    pytest.param(b"https://app.example.com/", False, id="with-path"),
    pytest.param(b"https://user@app.example.com", False, id="userinfo"),
    pytest.param(b"https://a.example.org", True, id="pattern-one-label"),
    pytest.param(b"https://a.b.example.org", True, id="pattern-two-labels"),
    pytest.param(b"https://example.org", False, id="pattern-needs-a-label"),
    pytest.param(b"https://.example.org", False, id="pattern-empty-label"),
    pytest.param(b"https://xexample.org", False, id="pattern-label-boundary"),
    pytest.param(b"https://a.example.org:443", True, id="pattern-default-port"),
    pytest.param(b"https://a.example.org:8443", False, id="pattern-other-port"),
    pytest.param(b"http://localhost:3000", True, id="localhost-port"),
    pytest.param(b"http://localhost", False, id="localhost-no-port"),
    pytest.param(b"https://api.example.net:8443", True, id="explicit-port"),
    pytest.param(b"null", False, id="null-unlisted"),
    pytest.param(b"", False, id="empty"),
    pytest.param(b"https://app.example.com\xff", False, id="not-ascii"),
    pytest.param(b"https://app.example.com:99999", False, id="port-out-of-range"),
])
def test_origin_matching(origin, allowed):
    assert _Origins(ALLOWED).allows(origin) is allowed


def test_star_allows_any_origin_but_null_only_when_listed():
    star = _Origins(("*",))
    assert star.allows(b"https://anything.test") and not star.allows(b"null")
    assert _Origins(("null",)).allows(b"null")


def test_the_match_cache_is_bounded():
    origins = _Origins(ALLOWED)
    for i in range(3000):
        origins.allows(b"https://h%d.example.org" % i)
    assert len(origins.cache) <= 1024


@pytest.mark.parametrize("values,reason", [
    pytest.param(("https://App.example.com",), "lowercase", id="uppercase"),
    pytest.param(("app.example.com",), "not an origin", id="no-scheme"),
    pytest.param(("https://a.com/x",), "path", id="path"),
    pytest.param(("https://a.*.com",), "wildcard", id="inner-star"),
    pytest.param(("*://a.com",), "wildcard", id="scheme-star"),
])
def test_bad_origin_entries(values, reason):
    with pytest.raises(ValueError, match=reason):
        _check_origins(values)
