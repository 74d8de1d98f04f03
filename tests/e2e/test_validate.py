"""The validate filter end to end: JSON Schema (draft 2020-12) for bodies, query arguments
and headers; every violation in one 400 with its JSON pointer; bad schemas are config
errors naming their key path."""

import orjson
import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from tests.support.client import Conn
from tests.support.e2e import assert_error, proxy_config
from tests.support.origin import Origin
from tests.support.proxy import InProcessProxy

ROUTE = """
[[routes]]
name = "orders"
paths = ["/orders"]
upstream = "app"
[routes.validate.query]
properties = { limit = { type = "integer", minimum = 1, maximum = 100 }, tag = { type = "array", items = { type = "string", maxLength = 3 } } }
required = ["limit"]
[routes.validate.headers]
properties = { "X-Tenant" = { type = "string", pattern = "^[a-z]+$" } }
required = ["X-Tenant"]
[[routes.validate.body]]
methods = ["POST"]
content_types = ["application/json", "application/x-www-form-urlencoded"]
[routes.validate.body.schema]
type = "object"
required = ["item", "qty"]
additionalProperties = false
properties = { item = { type = "string" }, qty = { type = "integer", minimum = 1 }, email = { type = "string", format = "email" }, lines = { type = "array", items = { type = "object", required = ["sku"] } } }
"""

GOOD_HEADERS = [(b"X-Tenant", b"acme"), (b"Content-Type", b"application/json")]


@pytest.fixture
def rig():
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/other"]', extra=ROUTE)) as p:
        yield origin, p


def test_a_valid_request_goes_upstream_unchanged(rig):
    origin, p = rig
    body = orjson.dumps({"item": "pen", "qty": 2, "lines": [{"sku": "a"}]})
    with Conn(p.port) as c:
        r = c.request("POST", "/orders?limit=10&tag=ab&tag=cd", body=body, headers=GOOD_HEADERS)
        assert r.status == 200, r.body
        assert origin.requests[-1].body == body
        r = c.request("GET", "/orders?limit=5", headers=[(b"x-tenant", b"acme")])
        assert r.status == 200, r.body  # no body rule for GET


def test_every_violation_comes_back_with_its_pointer(rig):
    origin, p = rig
    body = orjson.dumps({"qty": 0, "email": "nope", "extra": 1, "lines": [{"sku": "a"}, {}]})
    with Conn(p.port) as c:
        r = c.request("POST", "/orders?limit=abc&tag=long", body=body,
                      headers=[(b"X-Tenant", b"ACME"), (b"Content-Type", b"application/json")])
    err = assert_error(r, 400, "validation_failed")
    got = {(v["location"], v["pointer"]) for v in err["violations"]}
    assert got >= {("query", "/limit"), ("query", "/tag/0"), ("headers", "/x-tenant"),
                   ("body", ""), ("body", "/qty"), ("body", "/email"), ("body", "/lines/1")}
    assert all(v["message"] for v in err["violations"])
    assert origin.requests == []


def test_missing_required_parameters_and_body(rig):
    _, p = rig
    with Conn(p.port) as c:
        r = c.request("POST", "/orders", headers=[(b"Content-Length", b"0")])
    err = assert_error(r, 400, "validation_failed")
    messages = {v["location"]: v["message"] for v in err["violations"]}
    assert "limit" in messages["query"] and "tenant" in messages["headers"].lower()
    assert messages["body"] == "a body is required"


def test_form_bodies_are_checked_with_typed_values(rig):
    origin, p = rig
    with Conn(p.port) as c:
        r = c.request("POST", "/orders?limit=1", body=b"item=pen&qty=3", headers=[
            (b"X-Tenant", b"acme"), (b"Content-Type", b"application/x-www-form-urlencoded")])
        assert r.status == 200, r.body
        r = c.request("POST", "/orders?limit=1", body=b"item=pen&qty=none", headers=[
            (b"X-Tenant", b"acme"), (b"Content-Type", b"application/x-www-form-urlencoded")])
        err = assert_error(r, 400, "validation_failed")
        assert [v["pointer"] for v in err["violations"]] == ["/qty"]


@pytest.mark.parametrize("ctype,body,status,code", [
    pytest.param(b"text/plain", b"hi", 415, "unsupported_media_type", id="other-type"),
    pytest.param(b"application/json", b"{broken", 400, "validation_failed", id="not-json"),
])
def test_bodies_that_cannot_be_checked(rig, ctype, body, status, code):
    _, p = rig
    with Conn(p.port) as c:
        r = c.request("POST", "/orders?limit=1", body=body,
                      headers=[(b"X-Tenant", b"acme"), (b"Content-Type", ctype)])
    assert_error(r, status, code)


def test_a_body_over_the_cap_is_413():
    extra = ROUTE.replace("[routes.validate.query]", "[routes.validate]\nmax_body_size = 10\n"
                          "[routes.validate.query]")
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/other"]', extra=extra)) as p, Conn(p.port) as c:
        r = c.request("POST", "/orders?limit=1", body=b'{"item": "a long one", "qty": 1}',
                      headers=GOOD_HEADERS)
        assert_error(r, 413, "body_too_large")


def test_each_content_type_may_have_its_own_rule():
    extra = """
[[routes]]
name = "two"
paths = ["/two"]
upstream = "app"
[[routes.validate.body]]
methods = ["POST"]
schema = { type = "object", required = ["json"] }
[[routes.validate.body]]
methods = ["POST"]
content_types = ["application/x-www-form-urlencoded"]
schema = { type = "object", required = ["form"] }
"""
    form = [(b"Content-Type", b"application/x-www-form-urlencoded")]
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/other"]', extra=extra)) as p, Conn(p.port) as c:
        assert c.request("POST", "/two", body=b'{"json": 1}', headers=GOOD_HEADERS).status == 200
        assert c.request("POST", "/two", body=b"form=1", headers=form).status == 200
        err = assert_error(c.request("POST", "/two", body=b"json=1", headers=form), 400)
        assert "form" in err["violations"][0]["message"]
        err = assert_error(c.request("POST", "/two", body=b"x", headers=[
            (b"Content-Type", b"text/csv")]), 415, "unsupported_media_type")
        assert "application/json" in err["message"] and "x-www-form" in err["message"]


BASE = ('[[upstreams]]\nname = "app"\nservers = ["http://127.0.0.1:1"]\n'
        '[[routes]]\nname = "r"\nupstream = "app"\n')


@pytest.mark.parametrize("section,where,message", [
    pytest.param('[[routes.validate.body]]\nschema = { type = "objec" }',
                 "routes[0].validate.body[0].schema", "invalid JSON Schema", id="bad-type"),
    pytest.param('[[routes.validate.body]]\nschema = { minLength = "x" }',
                 "routes[0].validate.body[0].schema", "/minLength", id="bad-keyword"),
    pytest.param('[[routes.validate.body]]\nschema = { "$ref" = "http://example.com/s.json" }',
                 "routes[0].validate.body[0].schema", "remote $ref", id="remote-ref"),
    pytest.param('[routes.validate]\nquery = { type = "string" }\n',
                 "routes[0].validate.query", None, id="query-not-object"),
    pytest.param('[[routes.validate.body]]\nschema = {}\ncontent_types = ["JSON"]',
                 "routes[0].validate.body[0].content_types", "media type", id="bad-type-name"),
])
def test_a_bad_schema_is_a_config_error_naming_its_key_path(section, where, message):
    with pytest.raises(ConfigError) as exc:
        parse(BASE + section)
    assert any(p == where and (message is None or message in m)
               for p, m in exc.value.errors), exc.value.errors
