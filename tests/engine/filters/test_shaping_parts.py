"""The pieces the API-shaping filters are built of: JSON pointers (RFC 6901), templates of
request data, body edits and form decoding."""

import pytest

from engine.filters import jsonpointer as jp
from engine.filters.template import Template, header_safe
from engine.filters.transform import BodyEdits, BodyOps, form_to_json


@pytest.mark.parametrize("pointer,tokens", [
    pytest.param("", (), id="whole"),
    pytest.param("/a/b", ("a", "b"), id="plain"),
    pytest.param("/a~1b/m~0n", ("a/b", "m~n"), id="escapes"),
    pytest.param("/~01", ("~1",), id="tilde-first"),  # RFC 6901 §4: ~1 decoded before ~0
    pytest.param("/", ("",), id="empty-name"),
])
def test_pointer_parse(pointer, tokens):
    assert jp.parse(pointer) == tokens


@pytest.mark.parametrize("bad", ["a/b", "/a~2", "/~"])
def test_pointer_parse_rejects(bad):
    with pytest.raises(ValueError):
        jp.parse(bad)


def test_pointer_get_put_pop():
    doc = {"a": [{"b": 1}, {"b": 2}], "c": None}
    assert jp.get(doc, ("a", "1", "b")) == 2
    assert jp.get(doc, ("c",)) is None
    assert jp.get(doc, ("a", "01")) is jp.MISSING  # leading zero is no index (§4)
    assert jp.get(doc, ("a", "5")) is jp.MISSING
    assert jp.put(doc, ("x", "y"), 3) and doc["x"] == {"y": 3}  # parents created
    assert jp.put(doc, ("a", "-"), "end") and doc["a"][-1] == "end"
    assert jp.put(doc, ("a", "0"), "first") and doc["a"][0] == "first"  # insert
    assert not jp.put(doc, ("c", "z"), 1)  # through null: skipped
    assert not jp.put(doc, ("x", "y"), 9, only_if_absent=True) and doc["x"]["y"] == 3
    assert jp.pop(doc, ("x", "y")) == 3 and doc["x"] == {}
    assert jp.pop(doc, ("nope", "y")) is jp.MISSING


class _Ctx:
    client_ip = "10.0.0.7"
    request_id = b"rid-1"
    method = b"GET"
    path = "/users/5"
    host = b"api.example.com"
    consumer = {"name": "acme"}
    route = None
    params = {"id": "5"}
    query = b"?q=a+b&n=1"
    headers = [(b"X-Token", b"t\r\nInjected: 1")]
    vars = {"auth": {"claims": {"sub": "user-9", "org": {"id": 3}}}, "version": "v2"}


@pytest.mark.parametrize("text,out", [
    pytest.param("{client_ip}|{request_id}|{method}|{host}", "10.0.0.7|rid-1|GET|api.example.com",
                 id="request"),
    pytest.param("{param.id}-{param.none}", "5-", id="params"),
    pytest.param("{query.q}/{query.n}/{query.x}", "a b/1/", id="query"),
    pytest.param("{consumer} {claim.sub} {claim.org.id} {claim.missing}", "acme user-9 3 ",
                 id="identity"),
    pytest.param("{version}", "v2", id="version"),
    pytest.param("{{literal}}", "{literal}", id="braces"),
])
def test_template_render(text, out):
    assert Template(text).render(_Ctx()) == out


def test_template_rejects_unknown_names_and_loose_braces():
    for bad in ("{nope}", "{part.a.b}", "a { b"):
        with pytest.raises(ValueError):
            Template(bad)
    assert Template("{part.user.id}", parts_allowed=True).uses_parts == ["user"]


def test_a_header_value_from_request_data_cannot_split_the_field():
    value = header_safe(Template("{header.X-Token}").render(_Ctx()))
    assert b"\r" not in value and b"\n" not in value


def test_body_edits_apply_in_order():
    edits = BodyEdits(BodyOps(unwrap="/data", rename=(("/a", "/b/c"),), remove=("/secret",),
                              set=(("/by", "{client_ip}"), ("/list", [1])),
                              add=(("/kept", 0), ("/new", {"k": 1})), wrap="/result"))
    doc = edits.apply({"data": {"a": 1, "secret": 2, "kept": 5}}, _Ctx())
    assert doc == {"result": {"b": {"c": 1}, "kept": 5, "by": "10.0.0.7", "list": [1],
                              "new": {"k": 1}}}
    again = edits.apply({"data": {}}, _Ctx())
    again["result"]["list"].append(2)  # a later edit must not change the configured value
    assert edits.apply({"data": {}}, _Ctx())["result"]["list"] == [1]


@pytest.mark.parametrize("body,doc", [
    pytest.param(b"", {}, id="empty"),
    pytest.param(b"a=1&a=2&b=%E2%9C%93&c", {"a": ["1", "2"], "b": "\u2713", "c": ""},
                 id="repeats-and-utf8"),
])
def test_form_to_json(body, doc):
    assert form_to_json(body) == doc


@pytest.mark.parametrize("body", [b"a=\xff", b"a=%FF"])
def test_form_to_json_rejects_text_that_is_not_utf8(body):
    with pytest.raises(ValueError):
        form_to_json(body)
