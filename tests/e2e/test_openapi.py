"""The OpenAPI 3.1 document the gateway serves, built from its config: fetched over a real
socket, checked with openapi-spec-validator, and merged with an upstream's own document."""

import orjson
import pytest
from openapi_spec_validator import validate

from engine.chain.schema import ConfigError
from engine.control.config import parse
from tests.support.client import Conn
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

ROUTES = """
[[routes]]
name = "orders"
paths = ["/orders", "/orders/{id}", "/files/{rest*}", "/static/*"]
methods = ["GET", "POST"]
upstream = "app"
[routes.validate.query]
properties = { limit = { type = "integer", maximum = 100 } }
[[routes.validate.body]]
methods = ["POST"]
[routes.validate.body.schema]
type = "object"
required = ["item"]
properties = { item = { type = "string" } }
[routes.idempotency]
[routes.rate_limit]
[[routes.rate_limit.limits]]
name = "per_ip"
limit = 100
window = "1m"

[[routes]]
name = "users"
paths = ["/{version}/users/{id}"]
methods = ["GET"]
upstream = "app"
rewrite = "/users/{id}"
[routes.versions]
default = "v2"
[[routes.versions.supported]]
name = "v1"
[[routes.versions.supported]]
name = "v2"

[[routes]]
name = "profile"
paths = ["/profile/{id}"]
[routes.aggregate]
[[routes.aggregate.parts]]
name = "user"
upstream = "app"
path = "/users/{param.id}"

[[routes]]
name = "docs"
paths = ["/openapi.json"]
[routes.openapi]
title = "Acme"
version = "2.1.0"
servers = ["https://api.example.com"]
"""


def _config(origin_url: str, routes: str) -> str:
    return f"""
[server]
access_log = "off"
[[upstreams]]
name = "app"
servers = ["{origin_url}"]
{routes}
"""


def test_the_document_describes_the_routes_and_is_valid_openapi_3_1():
    with Origin() as origin, InProcessProxy(_config(origin.url, ROUTES)) as p, \
            Conn(p.port) as c:
        r = c.request("GET", "/openapi.json")
    assert r.status == 200 and r.header(b"content-type") == b"application/json"
    doc = r.json()
    validate(doc)  # raises on an invalid OpenAPI document
    assert doc["openapi"] == "3.1.0" and doc["info"] == {"title": "Acme", "version": "2.1.0"}
    paths = doc["paths"]
    assert set(paths) == {"/orders", "/orders/{id}", "/files/{rest}", "/{version}/users/{id}",
                          "/profile/{id}"}  # "/static/*" names nothing; docs itself left out
    post = paths["/orders"]["post"]
    assert set(paths["/orders"]) == {"get", "post"}
    assert post["requestBody"]["content"]["application/json"]["schema"]["required"] == ["item"]
    names = {(q["in"], q["name"]): q for q in post["parameters"]}
    assert names[("query", "limit")]["schema"] == {"type": "integer", "maximum": 100}
    assert names[("header", "Idempotency-Key")]["required"] is False
    assert {"400", "409", "415", "422", "429", "200"} <= set(post["responses"])
    assert "RateLimit-Policy" in post["responses"]["200"]["headers"]
    assert "Retry-After" in post["responses"]["429"]["headers"]
    get = paths["/orders/{id}"]["get"]
    assert {"name": "id", "in": "path", "required": True,
            "schema": {"type": "string"}} in get["parameters"]
    assert "requestBody" not in get
    users = paths["/{version}/users/{id}"]["get"]
    version = next(q for q in users["parameters"] if q["name"] == "version")
    assert version["schema"]["enum"] == ["v1", "v2"]
    assert any(q["name"] == "Accept-Version" for q in users["parameters"])
    profile = paths["/profile/{id}"]["get"]
    assert "user" in profile["responses"]["200"]["content"]["application/json"]["schema"][
        "properties"]


UPSTREAM_DOC = {
    "openapi": "3.1.0",
    "info": {"title": "users service", "version": "7"},
    "paths": {"/users/{id}": {"get": {
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "a user", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/User"}}}}}}}},
    "components": {"schemas": {"User": {"type": "object"}}},
}


def _service(req):
    if req.url == b"/openapi.json":
        return ok(orjson.dumps(UPSTREAM_DOC), headers=[(b"Content-Type", b"application/json")])
    return ok(b"", 404)


@pytest.mark.parametrize("doc_path,merged", [
    pytest.param("/openapi.json", True, id="merged"),
    pytest.param("/missing.json", False, id="upstream-fails"),
])
def test_an_upstream_document_is_merged_under_its_prefix(doc_path, merged):
    routes = f"""
[[routes]]
name = "docs"
paths = ["/openapi.json"]
[routes.openapi]
[[routes.openapi.merge]]
upstream = "app"
path = "{doc_path}"
prefix = "/svc"
"""
    with Origin(_service) as origin, InProcessProxy(_config(origin.url, routes)) as p, \
            Conn(p.port) as c:
        r = c.request("GET", "/openapi.json")
        again = c.request("GET", "/openapi.json")
    assert r.status == 200
    doc = r.json()
    validate(doc)
    if merged:
        op = doc["paths"]["/svc/users/{id}"]["get"]
        ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/app.User"
        assert "app.User" in doc["components"]["schemas"]
        assert len(origin.requests) == 1 and again.body == r.body  # kept for merge_ttl
    else:
        assert "/svc/users/{id}" not in doc["paths"]
        assert len(origin.requests) == 2  # not kept: fetched again next time


def test_unknown_routes_and_upstreams_are_config_errors():
    text = ('[[upstreams]]\nname = "app"\nservers = ["http://127.0.0.1:1"]\n[[routes]]\n'
            'name = "docs"\n[routes.openapi]\nroutes = ["nope"]\n[[routes.openapi.merge]]\n'
            'upstream = "gone"\n')
    with pytest.raises(ConfigError) as exc:
        parse(text)
    where = {p for p, _ in exc.value.errors}
    assert where == {"routes[0].openapi.routes[0]", "routes[0].openapi.merge[0].upstream"}
