"""HeaderEdit, the headers filter's compiled hooks, against its pure-Python twin
(tests/reference/header_edit.py): the same edits for any header list, names in any case."""

from hypothesis import given, settings, strategies as st

from engine.chain.context import RequestContext
from engine.errors import Response
from engine.filters.header_edit import HeaderEdit
from tests.reference.header_edit import HeaderEdit as ReferenceEdit

NAMES = [b"x-a", b"X-B", b"content-type", b"X-Long-Header-Name", b"x-aa", b"a"]


def _cased(name: bytes, flips: int) -> bytes:
    return bytes(c ^ 0x20 if chr(c).isalpha() and flips >> (i % 16) & 1 else c
                 for i, c in enumerate(name))


fields = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 0xFFFF),
                            st.binary(max_size=5)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(headers=fields, drop=st.lists(st.sampled_from(NAMES), max_size=3),
       rename=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES)), max_size=3),
       append=st.lists(st.tuples(st.sampled_from(NAMES), st.binary(max_size=3)), max_size=3))
def test_compiled_edit_matches_the_reference(headers, drop, rename, append):
    rename = list(dict(rename).items())  # one new name per old one, as the config's table
    pairs = [(_cased(n, flips), v) for n, flips, v in headers]
    ours, ref = HeaderEdit(drop, rename, append), ReferenceEdit(drop, rename, append)
    assert ours.apply(list(pairs)) == ref.apply(list(pairs))
    # The same edit of an upstream head's field lines as they came: values kept as sent,
    # with or without whitespace after the colon (no CR or LF: the head was checked).
    pairs = [(n, v.translate(None, b"\r\n")) for n, v in pairs]
    lines = b"".join(n + b":" + b" " * (len(v) % 2) + v + b"\r\n" for n, v in pairs)
    assert _pairs_of(ours.on_response_raw(_ctx(), lines)) == [
        (n, v.strip(b" ")) for n, v in ref.apply(pairs)]


def _ctx():
    return RequestContext.__new__(RequestContext)


def _pairs_of(lines: bytes) -> list:
    assert lines == b"" or lines.endswith(b"\r\n")
    return [(n, v.strip(b" ")) for n, _, v in
            (line.partition(b":") for line in lines.split(b"\r\n")[:-1])]


def test_an_edit_that_names_via_keeps_to_pairs():
    # The codec adds this hop's Via after the lines are edited, so an edit that removes, sets,
    # adds or renames Via must see the pairs, Via among them.
    assert HeaderEdit([b"X-Debug"], [(b"ETag", b"X-ETag")], [(b"X-Edge", b"1")]).edits_raw
    assert not HeaderEdit([b"via"], [], []).edits_raw
    assert not HeaderEdit([], [(b"VIA", b"X-Via")], []).edits_raw
    assert not HeaderEdit([], [(b"X-Via", b"Via")], []).edits_raw
    assert not HeaderEdit([], [], [(b"Via", b"1.1 other")]).edits_raw


def test_hooks_replace_the_lists_they_edit():
    edit = HeaderEdit([b"X-Debug"], [(b"ETag", b"X-Origin-ETag")], [(b"X-Edge", b"1")])

    ctx = RequestContext.__new__(RequestContext)
    ctx.headers = [(b"x-debug", b"1"), (b"Accept", b"*/*")]
    edit.on_request(ctx)
    assert ctx.headers == [(b"Accept", b"*/*"), (b"X-Edge", b"1")]
    resp = Response(200, [(b"etag", b'"v1"'), (b"X-DEBUG", b"2")], None)
    edit.on_response(ctx, resp)
    assert resp.headers == [(b"X-Origin-ETag", b'"v1"'), (b"X-Edge", b"1")]
