"""Request-target normalisation (engine/http/framing.py): RFC 3986 §6.2.2 and §5.2.4."""

from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.wire.framing import normalize_percent, remove_dot_segments


def test_unreserved_escapes_are_decoded_and_the_rest_uppercased():
    assert normalize_percent("/a%2e%2E/%7E%41%5f") == "/a../~A_"
    assert normalize_percent("/a%2fb%3a%20c") == "/a%2Fb%3A%20c"
    assert normalize_percent("/100%/%zz/%4") == "/100%/%zz/%4"  # not escapes: left alone


def test_encoded_dot_segments_cannot_climb_out_of_a_prefix():
    path = remove_dot_segments(normalize_percent("/api/%2e%2e/admin"))
    assert path == "/admin"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="/.%2eEfFaA0-~x", max_size=40))
def test_normalising_is_idempotent_and_keeps_the_meaning(path):
    once = normalize_percent(path)
    assert normalize_percent(once) == once
    assert unquote(once) == unquote(path)  # the same octets, only spelled canonically
