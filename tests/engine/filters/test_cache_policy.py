"""RFC 9111 logic of the cache, case by case (engine/filters/cache_policy.py)."""

import calendar

import pytest

from engine.filters import cache_policy as rfc

NOW = float(calendar.timegm((2026, 6, 1, 12, 0, 0, 0, 0, 0)))
DATE = b"Mon, 01 Jun 2026 12:00:00 GMT"


@pytest.mark.parametrize("lines,expected", [
    pytest.param([b"max-age=60"], {"max-age": "60"}, id="one"),
    pytest.param([b"Max-Age=60, NO-CACHE"], {"max-age": "60", "no-cache": None},
                 id="names-any-case"),
    pytest.param([b"max-age=60", b"max-age=1"], {"max-age": "60"}, id="first-line-wins"),
    pytest.param([b"max-age=1, max-age=60"], {"max-age": "1"}, id="first-member-wins"),
    pytest.param([b'max-age="60"'], {"max-age": "60"}, id="quoted-value"),
    pytest.param([b'ext="a, max-age=5", public'], {"ext": "a, max-age=5", "public": None},
                 id="comma-inside-quotes"),
    pytest.param([b'no-cache="a\\"b"'], {"no-cache": 'a"b'}, id="quoted-pair"),
    pytest.param([b"max-age =60, public"], {"public": None}, id="space-before-equals-drops"),
    pytest.param([b"max-age= 60"], {}, id="space-after-equals-drops"),
    pytest.param([b', ,public,, '], {"public": None}, id="empty-members"),
    pytest.param([b'x="unterminated, max-age=5'], {}, id="unterminated-quote"),
])
def test_parse_directives(lines, expected):
    assert rfc.parse_directives_uncached(lines) == expected
    assert rfc.parse_directives(lines) == expected
    assert rfc.parse_directives(lines) == expected  # remembered


@pytest.mark.parametrize("value,expected", [
    ("60", 60), ("003600", 3600), ("0", 0), ("99999999999", rfc.DELTA_MAX),
    ("-1", None), ("3600.0", None), ("a1", None), ("", None), (None, None), ("١٢", None),
])
def test_delta_seconds(value, expected):
    assert rfc.delta_seconds(value) == expected


@pytest.mark.parametrize("value,ok", [
    pytest.param(b"Mon, 01 Jun 2026 12:00:00 GMT", True, id="imf-fixdate"),
    pytest.param(b"Monday, 01-Jun-26 12:00:00 GMT", True, id="rfc850"),
    pytest.param(b"Mon Jun  1 12:00:00 2026", True, id="asctime"),
    pytest.param(b"0", False, id="zero"),
    pytest.param(b"Mon, 01 Jun 2026 12:00:00 UTC", False, id="utc"),
    pytest.param(b"Mon, 32 Jun 2026 12:00:00 GMT", False, id="day-32"),
    pytest.param(b"Mon, 01 Foo 2026 12:00:00 GMT", False, id="month"),
])
def test_parse_date(value, ok):
    got = rfc.parse_date(value, NOW)
    assert (got == NOW) if ok else got is None


def test_rfc850_two_digit_year_far_in_future_is_last_century():
    assert rfc.parse_date(b"Sunday, 06-Nov-94 08:49:37 GMT", NOW) == calendar.timegm(
        (1994, 11, 6, 8, 49, 37, 0, 0, 0))


def lifetime(status, headers):
    cc = rfc.parse_directives(rfc.field_values(headers, b"cache-control"))
    return rfc.freshness_lifetime(status, cc, headers, NOW, NOW, 86400.0)


@pytest.mark.parametrize("status,headers,expected", [
    pytest.param(200, [(b"Cache-Control", b"max-age=60")], 60, id="max-age"),
    pytest.param(200, [(b"Cache-Control", b"max-age=60, s-maxage=5")], 5, id="s-maxage-first"),
    pytest.param(200, [(b"Cache-Control", b"max-age=x")], 0, id="invalid-max-age-stale"),
    pytest.param(200, [(b"Cache-Control", b"max-age=60"),
                       (b"Expires", b"Mon, 01 Jun 2026 14:00:00 GMT")], 60,
                 id="max-age-over-expires"),
    pytest.param(200, [(b"Expires", b"Mon, 01 Jun 2026 13:00:00 GMT")], 3600, id="expires"),
    pytest.param(200, [(b"Expires", b"0")], 0, id="invalid-expires-is-past"),
    pytest.param(200, [(b"Expires", b"Mon, 01 Jun 2026 11:00:00 GMT")], 0, id="expires-past"),
    pytest.param(200, [(b"Last-Modified", b"Fri, 22 May 2026 12:00:00 GMT")], 86400.0,
                 id="heuristic-10pct"),
    pytest.param(201, [(b"Last-Modified", b"Fri, 22 May 2026 12:00:00 GMT")], 0,
                 id="no-heuristic-for-201"),
    pytest.param(599, [(b"Cache-Control", b"public"),
                       (b"Last-Modified", b"Sun, 31 May 2026 12:00:00 GMT")], 8640.0,
                 id="heuristic-with-public"),
    pytest.param(200, [(b"Last-Modified", b"Mon, 01 Jan 2024 00:00:00 GMT")], 86400.0,
                 id="heuristic-capped"),
])
def test_freshness_lifetime(status, headers, expected):
    assert lifetime(status, headers) == expected


@pytest.mark.parametrize("status,cc,headers,req,auth,ok", [
    pytest.param(200, "max-age=5", [], {}, False, True, id="fresh"),
    pytest.param(200, "", [], {}, False, True, id="cacheable-by-default"),
    pytest.param(201, "", [], {}, False, False, id="201-nothing-explicit"),
    pytest.param(201, "max-age=5", [], {}, False, True, id="201-explicit"),
    pytest.param(206, "max-age=5", [], {}, False, False, id="partial"),
    pytest.param(100, "max-age=5", [], {}, False, False, id="interim"),
    pytest.param(200, "no-store, max-age=5", [], {}, False, False, id="no-store"),
    pytest.param(200, "must-understand, no-store, max-age=5", [], {}, False, True,
                 id="must-understand-known-status"),
    pytest.param(299, "must-understand, no-store, max-age=5", [], {}, False, False,
                 id="must-understand-unknown-status"),
    pytest.param(200, "max-age=5", [], {"no-store": None}, False, False, id="request-no-store"),
    pytest.param(200, "private, max-age=5", [], {}, False, False, id="private"),
    pytest.param(200, 'private="x", max-age=5', [], {}, False, True, id="private-qualified"),
    pytest.param(200, "max-age=5", [], {}, True, False, id="authorization"),
    pytest.param(200, "max-age=5, public", [], {}, True, True, id="authorization-public"),
    pytest.param(200, "s-maxage=5", [], {}, True, True, id="authorization-s-maxage"),
    pytest.param(200, "must-revalidate", [], {}, True, True,
                 id="authorization-must-revalidate"),
])
def test_storable(status, cc, headers, req, auth, ok):
    directives = rfc.parse_directives([cc.encode()])
    assert rfc.storable(status, directives, headers, req, auth) is ok


def test_age_follows_section_4_2_3():
    # Date says it was made 10 s before it arrived, Age says 30 s, the round trip took 2 s:
    # corrected initial age = max(10, 30 + 2) = 32; then 5 s in the cache.
    s = rfc.describe(200, [(b"Date", b"Mon, 01 Jun 2026 11:59:50 GMT"), (b"Age", b"30"),
                           (b"Cache-Control", b"max-age=60")], NOW - 2, NOW, NOW, 86400.0)
    assert s.age_at(NOW + 5) == 37


@pytest.mark.parametrize("age,expected", [(b"abc", 0), (b"-5", 0), (b"7, 9", 7)])
def test_an_odd_age_is_its_first_member_or_ignored(age, expected):
    s = rfc.describe(200, [(b"Age", age)], NOW, NOW, NOW, 86400.0)
    assert s.age == expected


def test_stored_headers_leave_out_hop_by_hop_and_listed_fields():
    s = rfc.describe(200, [(b"Cache-Control", b'no-cache="A, b", max-age=9'), (b"A", b"1"),
                           (b"b", b"2"), (b"C", b"3"), (b"Keep-Alive", b"x"), (b"Age", b"1")],
                     NOW, NOW, NOW, 86400.0)
    assert [n for n, _ in s.headers] == [b"Cache-Control", b"C"]
    assert not s.no_cache  # the qualified form only withholds its fields


def test_vary_names_and_normalised_values():
    assert rfc.vary_names([(b"Vary", b"Foo, bar"), (b"vary", b"FOO")]) == (b"bar", b"foo")
    assert rfc.vary_names([(b"Vary", b"Foo, *")]) == (b"*",)
    a = rfc.secondary_key((b"foo",), [(b"Foo", b"1"), (b"foo", b"2")])
    b = rfc.secondary_key((b"foo",), [(b"Foo", b" 1 ,2 ")])
    assert a == b == (b"1,2",)
    assert rfc.secondary_key((b"foo",), []) == (None,) != rfc.secondary_key((b"foo",),
                                                                          [(b"Foo", b"")])


def test_vary_values_defined_case_insensitive_match_in_any_case():
    # RFC 9111 §4.1: Accept-Language's language ranges are case-insensitive; other fields'
    # values keep their case.
    assert (rfc.secondary_key((b"accept-language",), [(b"Accept-Language", b"en-US, FR")])
            == rfc.secondary_key((b"accept-language",), [(b"accept-language", b"EN-us,fr")]))
    assert (rfc.secondary_key((b"foo",), [(b"Foo", b"A")])
            != rfc.secondary_key((b"foo",), [(b"Foo", b"a")]))


def test_pragma_stands_for_no_cache_only_without_cache_control():
    assert rfc.request_directives([(b"Pragma", b"no-cache")]) == {"no-cache": None}
    assert rfc.request_directives([(b"Pragma", b"no-cache"),
                                   (b"Cache-Control", b"max-age=5")]) == {"max-age": "5"}


def stored(*headers):
    return rfc.describe(200, list(headers), NOW, NOW, NOW, 86400.0)


@pytest.mark.parametrize("request_headers,expected", [
    pytest.param([(b"If-None-Match", b'"a"')], True, id="inm"),
    pytest.param([(b"If-None-Match", b'W/"a"')], True, id="inm-weak-compare"),
    pytest.param([(b"If-None-Match", b'"x", "a"')], True, id="inm-list"),
    pytest.param([(b"If-None-Match", b"*")], True, id="inm-star"),
    pytest.param([(b"If-None-Match", b'"b"')], False, id="inm-other"),
    pytest.param([(b"If-None-Match", b'"b"'),
                  (b"If-Modified-Since", b"Mon, 01 Jun 2026 12:00:00 GMT")], False,
                 id="inm-decides-over-ims"),
    pytest.param([(b"If-Modified-Since", b"Mon, 01 Jun 2026 11:00:00 GMT")], True,
                 id="ims-same"),
    pytest.param([(b"If-Modified-Since", b"Mon, 01 Jun 2026 10:00:00 GMT")], False,
                 id="ims-older"),
    pytest.param([(b"If-Modified-Since", b"Mon, 01 Jun 2027 10:00:00 GMT")], False,
                 id="ims-in-the-future-is-invalid"),
])
def test_not_modified(request_headers, expected):
    s = stored((b"ETag", b'"a"'), (b"Last-Modified", b"Mon, 01 Jun 2026 11:00:00 GMT"))
    assert rfc.not_modified(s, request_headers, NOW) is expected


@pytest.mark.parametrize("since,expected", [
    pytest.param(b"Mon, 01 Jun 2026 11:30:00 GMT", True, id="after-date"),
    pytest.param(b"Mon, 01 Jun 2026 11:00:00 GMT", False, id="before-date"),
])
def test_if_modified_since_goes_by_date_without_last_modified(since, expected):
    # RFC 9111 §4.3.2
    s = stored((b"Date", b"Mon, 01 Jun 2026 11:10:00 GMT"))
    assert rfc.not_modified(s, [(b"If-Modified-Since", since)], NOW) is expected


def test_a_304_selects_by_strong_etag_then_last_modified():
    s = stored((b"ETag", b'"a"'), (b"Last-Modified", DATE))
    assert rfc.validator_matches(s, [(b"ETag", b'"a"')])
    assert not rfc.validator_matches(s, [(b"ETag", b'W/"a"')])
    assert rfc.validator_matches(s, [(b"Last-Modified", DATE)])
    assert not rfc.validator_matches(s, [])
    assert rfc.validator_matches(stored(), [])


def test_freshen_replaces_fields_and_recomputes_freshness():
    s = stored((b"Cache-Control", b"max-age=1"), (b"ETag", b'"a"'), (b"X", b"old"),
               (b"Content-Type", b"text/plain"))
    s.body = b"body"
    s.freshen([(b"Cache-Control", b"max-age=100"), (b"X", b"new"), (b"Content-Length", b"0")],
              NOW + 10, NOW + 10, NOW + 10, 86400.0)
    assert dict(s.headers)[b"X"] == b"new" and dict(s.headers)[b"Content-Type"] == b"text/plain"
    assert b"Content-Length" not in dict(s.headers)
    assert s.lifetime == 100 and s.age_at(NOW + 10) == 0 and s.body == b"body"


@pytest.mark.parametrize("headers,expected", [
    pytest.param([(b"Range", b"bytes=0-1")], (0, 1), id="first-bytes"),
    pytest.param([(b"Range", b"bytes=1-")], (1, 10), id="open-end"),
    pytest.param([(b"Range", b"bytes=-1")], (10, 10), id="suffix"),
    pytest.param([(b"Range", b"bytes=-50")], (0, 10), id="suffix-longer-than-body"),
    pytest.param([(b"Range", b"bytes=5-99")], (5, 10), id="end-clipped"),
    pytest.param([(b"Range", b"bytes=11-")], None, id="unsatisfiable"),
    pytest.param([(b"Range", b"bytes=0-1,3-4")], None, id="several-ranges"),
    pytest.param([(b"Range", b"items=0-1")], None, id="other-unit"),
    pytest.param([(b"Range", b"bytes=0-1"), (b"If-Range", b'"a"')], (0, 1),
                 id="if-range-matches"),
    pytest.param([(b"Range", b"bytes=0-1"), (b"If-Range", b'"b"')], None,
                 id="if-range-differs"),
])
def test_byte_range(headers, expected):
    s = stored((b"ETag", b'"a"'))
    s.body = b"0123456789A"
    assert rfc.byte_range(headers, s) == expected


def test_unknown_request_directives_and_pragma_members_are_ignored():
    # RFC 9111 §5.2.3, §5.4
    assert rfc.request_directives([(b"Cache-Control", b"nothing-to-see-here"),
                                   (b"Pragma", b"no-cache")]) == {}
    assert rfc.request_directives([(b"Cache-Control", b"foo, max-age=5")]) == {"max-age": "5"}
    assert rfc.request_directives([(b"Pragma", b"x-no-cache")]) == {}
    assert rfc.request_directives([(b"Pragma", b"foo, No-Cache")]) == {"no-cache": None}


def test_a_304_selects_by_validator_or_the_sole_response_asked_about():
    # RFC 9111 §4.3.4
    a = stored((b"ETag", b'"a"'))
    w = stored((b"ETag", b'W/"w"'))
    lm = stored((b"Last-Modified", DATE))
    assert rfc.selected([w, a], [(b"ETag", b'"a"')]) is a
    assert rfc.selected([a, w], [(b"ETag", b'W/"w"')]) is w
    assert rfc.selected([a], [(b"ETag", b'"other"')], a) is None  # it names another
    assert rfc.selected([lm], [(b"Last-Modified", DATE)]) is lm
    assert rfc.selected([a, lm], [], a) is a  # no validator: the one asked about
    assert rfc.selected([a, lm], []) is None
    bare = stored()
    assert rfc.selected([bare], []) is bare


def test_freshen_keeps_what_describes_the_stored_bytes():
    # RFC 9111 §3.2: the fields the stored response depends upon are not updated.
    s = stored((b"ETag", b'"a"'), (b"Content-Encoding", b"gzip"), (b"Content-MD5", b"x"),
               (b"Content-Type", b"text/plain"))
    s.freshen([(b"Content-Encoding", b"br"), (b"Content-MD5", b"y"), (b"ETag", b'"b"'),
               (b"Content-Range", b"bytes 0-1/2"), (b"Content-Type", b"text/html")],
              NOW, NOW, NOW, 86400.0)
    h = dict(s.headers)
    assert h[b"Content-Encoding"] == b"gzip" and h[b"Content-MD5"] == b"x"
    assert h[b"ETag"] == b'"a"' and b"Content-Range" not in h
    assert h[b"Content-Type"] == b"text/html"


CDN = (b"cdn-cache-control",)


@pytest.mark.parametrize("headers,lifetime,ok", [
    pytest.param([(b"CDN-Cache-Control", b"max-age=60"), (b"Cache-Control", b"no-store")],
                 60, True, id="overrides-no-store"),
    pytest.param([(b"CDN-Cache-Control", b"max-age=5"), (b"Cache-Control", b"max-age=900")],
                 5, True, id="shorter-wins"),
    pytest.param([(b"CDN-Cache-Control", b"no-store"), (b"Cache-Control", b"max-age=900")],
                 0, False, id="no-store"),
    pytest.param([(b"CDN-Cache-Control", b"private"), (b"Cache-Control", b"max-age=900")],
                 0, False, id="private"),
    pytest.param([(b"CDN-Cache-Control", b"no-cache"),
                  (b"Expires", b"Thu, 01 Jan 2099 00:00:00 GMT")], 0, True,
                 id="expires-ignored"),
    pytest.param([(b"CDN-Cache-Control", b"max-age=0"),
                  (b"Expires", b"Thu, 01 Jan 2099 00:00:00 GMT")], 0, True,
                 id="max-age-0-over-expires"),
    pytest.param([(b"CDN-Cache-Control", b"foobar, max-age=99999999999")], rfc.DELTA_MAX, True,
                 id="extension-and-huge"),
    pytest.param([(b"CDN-Cache-Control", b"max-age=60, &&&"), (b"Cache-Control", b"no-store")],
                 0, False, id="invalid-sf-falls-back"),
    pytest.param([(b"CDN-Cache-Control", b'max-age="60"'), (b"Cache-Control", b"max-age=7")],
                 7, True, id="wrong-type-falls-back"),
    pytest.param([(b"CDN-Cache-Control", b"MaX-aGe=60"), (b"Cache-Control", b"max-age=7")],
                 7, True, id="uppercase-key-is-invalid"),
    pytest.param([(b"CDN-Cache-Control", b""), (b"Cache-Control", b"max-age=7")],
                 7, True, id="empty-falls-back"),
])
def test_cdn_cache_control_stands_in_for_cache_control(headers, lifetime, ok):
    # RFC 9213 §2.1, §2.2
    cc, targeted = rfc.response_directives(headers, CDN)
    assert rfc.storable(200, cc, headers, {}, False, targeted) is ok
    s = rfc.describe(200, headers, NOW, NOW, NOW, 86400.0, CDN)
    assert s.lifetime == lifetime
    # A cache without targets (or another target) goes by Cache-Control alone.
    assert rfc.response_directives(headers, (b"other-cdn-cache-control",))[1] is False


def test_the_first_valid_targeted_field_wins():
    headers = [(b"CDN-Cache-Control", b"max-age=5"), (b"Acme-CDN-Cache-Control", b"bad=&"),
               (b"Edge-Cache-Control", b"max-age=9")]
    targets = (b"acme-cdn-cache-control", b"edge-cache-control", b"cdn-cache-control")
    assert rfc.response_directives(headers, targets) == ({"max-age": "9"}, True)
