"""The static_files filter's range and validator rules on their own (RFC 9110 §13, §14)."""

import pytest

from engine.filters.static_files import Filter, _byte_range, _parse_date, _strong_match, _weak_match


@pytest.mark.parametrize("spec,size,expected", [
    pytest.param(b"bytes=0-0", 10, (0, 0), id="first-byte"),
    pytest.param(b"bytes=9-", 10, (9, 9), id="last-byte-open"),
    pytest.param(b"bytes=-1", 10, (9, 9), id="suffix-one"),
    pytest.param(b"bytes=-20", 10, (0, 9), id="suffix-longer-than-file"),
    pytest.param(b"bytes=3-100", 10, (3, 9), id="clamped"),
    pytest.param(b"bytes = 2-4", 10, (2, 4), id="spaces"),
    pytest.param(b"BYTES=2-4", 10, (2, 4), id="unit-case"),
    pytest.param(b"bytes=10-", 10, None, id="start-at-size"),
    pytest.param(b"bytes=-0", 10, None, id="empty-suffix"),
    pytest.param(b"bytes=0-", 0, None, id="empty-file"),
    pytest.param(b"bytes=4-2", 10, "ignore", id="reversed"),
    pytest.param(b"bytes=-", 10, "ignore", id="no-numbers"),
    pytest.param(b"bytes=a-b", 10, "ignore", id="not-numbers"),
    pytest.param(b"bytes=0-1,3-4", 10, "ignore", id="several"),
    pytest.param(b"lines=0-1", 10, "ignore", id="other-unit"),
    pytest.param(b"bytes=+1-2", 10, "ignore", id="sign"),
])
def test_byte_range(spec, size, expected):
    assert _byte_range(spec, size) == expected


def test_entity_tag_comparison():
    assert _weak_match(b'W/"a"', b'"a"') and _weak_match(b'"a"', b'"a"')
    assert _strong_match(b'"a"', b'"a"')
    assert not _strong_match(b'W/"a"', b'W/"a"') and not _strong_match(b'"a"', b'"b"')


@pytest.mark.parametrize("value,ok", [
    pytest.param(b"Sun, 06 Nov 1994 08:49:37 GMT", True, id="imf-fixdate"),
    pytest.param(b"Sunday, 06-Nov-94 08:49:37 GMT", True, id="rfc850"),
    pytest.param(b"Sun Nov  6 08:49:37 1994", True, id="asctime"),
    pytest.param(b"yesterday", False, id="junk"),
])
def test_http_dates(value, ok):
    # RFC 9110 §5.6.7: a recipient accepts all three formats, all of them GMT
    assert (_parse_date(value) == 784111777.0) is ok


def test_if_range():
    assert Filter._if_range(None, b'"e"', b"d")
    assert Filter._if_range(b'"e"', b'"e"', b"d")
    assert not Filter._if_range(b'W/"e"', b'"e"', b"d")  # weak never matches If-Range
    assert Filter._if_range(b"d", b'"e"', b"d")
    assert not Filter._if_range(b"other", b'"e"', b"d")
