"""The aggregate route kind end to end: parts fetched in parallel from real origins through
the gateway's sub-requests, merged into one JSON object; required and optional failures,
timeouts, dependencies between parts, and what every part carries."""

import time

import orjson
import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from tests.support.client import Conn
from tests.support.e2e import assert_error
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

TRACE = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _json(doc, status=200):
    return ok(orjson.dumps(doc), status, headers=[(b"Content-Type", b"application/json")])


def users(req):
    url = req.url.decode()
    if url == "/users/42":
        return _json({"id": "u-42", "name": "Ada"})
    if url.startswith("/slow"):
        return _json({"slow": True}), 0.4  # answered after 0.4 s
    return _json({"error": "no such user"}, 404)


def shop(req):
    url = req.url.decode()
    if url == "/orders?user=u-42":
        return _json([{"id": 1}, {"id": 2}])
    if url == "/prefs/42":
        return _json({"theme": "dark"})
    if url.startswith("/broken"):
        return ok(b"oops", 500)
    if url.startswith("/text"):
        return ok(b"not json")
    if url.startswith("/slow"):
        return _json({"slow": True}), 0.4
    return _json({}, 404)


def config(users_url, shop_url, parts: str) -> str:
    return f"""
[server]
access_log = "off"
tracing = "propagate"

[[upstreams]]
name = "users"
servers = ["{users_url}"]
[[upstreams]]
name = "shop"
servers = ["{shop_url}"]

[[routes]]
name = "profile"
paths = ["/profile/{{id}}"]
[routes.aggregate]
{parts}
"""


PROFILE = """
[[routes.aggregate.parts]]
name = "user"
upstream = "users"
path = "/users/{param.id}"
[[routes.aggregate.parts]]
name = "orders"
upstream = "shop"
path = "/orders?user={part.user.id}"
[[routes.aggregate.parts]]
name = "preferences"
upstream = "shop"
path = "/prefs/{param.id}"
required = false
"""


@pytest.fixture
def origins():
    with Origin(users) as u, Origin(shop) as s:
        yield u, s


def test_parts_are_merged_and_carry_the_requests_identity(origins):
    u, s = origins
    with InProcessProxy(config(u.url, s.url, PROFILE)) as p, Conn(p.port) as c:
        r = c.request("GET", "/profile/42", headers=[
            (b"Authorization", b"Bearer t"), (b"traceparent", TRACE), (b"X-Other", b"no")])
    assert r.status == 200, r.body
    assert r.json() == {"user": {"id": "u-42", "name": "Ada"},
                        "orders": [{"id": 1}, {"id": 2}], "preferences": {"theme": "dark"}}
    assert r.header(b"content-type") == b"application/json"
    seen = u.requests + s.requests
    assert len(seen) == 3
    rid = r.header(b"x-request-id")
    parents = set()
    for req in seen:
        assert req.header(b"x-request-id") == rid
        assert req.header(b"authorization") == b"Bearer t"
        assert req.header(b"x-other") is None
        assert req.header(b"x-forwarded-for") == b"127.0.0.1"
        trace = req.header(b"traceparent").split(b"-")
        assert trace[1] == TRACE.split(b"-")[1] and trace[3] == b"01"
        parents.add(trace[2])
    assert len(parents) == 3 and TRACE.split(b"-")[2] not in parents  # a new span each


@pytest.mark.parametrize("prefs_path,reason", [
    pytest.param("/broken/{param.id}", "500", id="status"),
    pytest.param("/text/{param.id}", "not JSON", id="not-json"),
])
def test_an_optional_part_failing_is_null_with_its_reason(origins, prefs_path, reason):
    u, s = origins
    parts = PROFILE.replace("/prefs/{param.id}", prefs_path)
    with InProcessProxy(config(u.url, s.url, parts)) as p, Conn(p.port) as c:
        r = c.request("GET", "/profile/42")
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["preferences"] is None and doc["user"]["name"] == "Ada"
    assert reason in doc["errors"]["preferences"]["reason"]


def test_a_required_part_failing_is_a_502_naming_it(origins):
    u, s = origins
    with InProcessProxy(config(u.url, s.url, PROFILE)) as p, Conn(p.port) as c:
        r = c.request("GET", "/profile/7")  # no user 7: 404 from users
    err = assert_error(r, 502, "part_failed")
    assert err["part"] == "user" and err["part_status"] == 404
    assert "user" in err["message"]


def test_a_part_depending_on_a_failed_optional_part_is_skipped(origins):
    u, s = origins
    parts = PROFILE.replace('path = "/users/{param.id}"',
                            'path = "/users/{param.id}"\nrequired = false').replace(
        'path = "/orders?user={part.user.id}"',
        'path = "/orders?user={part.user.id}"\nrequired = false')
    with InProcessProxy(config(u.url, s.url, parts)) as p, Conn(p.port) as c:
        r = c.request("GET", "/profile/7")
    doc = r.json()
    assert r.status == 200 and doc["user"] is None and doc["orders"] is None
    assert "depends on failed" in doc["errors"]["orders"]["reason"]
    assert not any(req.url.startswith(b"/orders") for req in s.requests)


def test_parts_run_in_parallel_and_time_out_on_their_own(origins):
    u, s = origins
    parts = """
[[routes.aggregate.parts]]
name = "a"
upstream = "users"
path = "/slow/a"
[[routes.aggregate.parts]]
name = "b"
upstream = "shop"
path = "/slow/b"
[[routes.aggregate.parts]]
name = "c"
upstream = "shop"
path = "/slow/c"
timeout = "100ms"
required = false
"""
    with InProcessProxy(config(u.url, s.url, parts)) as p, Conn(p.port) as c:
        t0 = time.monotonic()
        r = c.request("GET", "/profile/1")
        took = time.monotonic() - t0
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["a"] == doc["b"] == {"slow": True} and doc["c"] is None
    assert "within 0.1s" in doc["errors"]["c"]["reason"]
    assert took < 1.0  # two 0.4 s parts one after the other would take 0.8 s and more


BASE = ('[[upstreams]]\nname = "app"\nservers = ["http://127.0.0.1:1"]\n'
        '[[routes]]\nname = "r"\n[routes.aggregate]\n')


@pytest.mark.parametrize("parts,where,message", [
    pytest.param('[[routes.aggregate.parts]]\nname = "a"\nupstream = "nope"\npath = "/"',
                 "routes[0].aggregate.parts[0].upstream", "unknown upstream", id="upstream"),
    pytest.param('[[routes.aggregate.parts]]\nname = "a"\nupstream = "app"\n'
                 'path = "/x/{part.b.id}"\n[[routes.aggregate.parts]]\nname = "b"\n'
                 'upstream = "app"\npath = "/"', "routes[0].aggregate.parts[0].path",
                 "not an earlier part", id="later-part"),
    pytest.param('[[routes.aggregate.parts]]\nname = "errors"\nupstream = "app"\npath = "/"',
                 "routes[0].aggregate.parts[0].name", "not a part name", id="reserved-name"),
    pytest.param('[[routes.aggregate.parts]]\nname = "a"\nupstream = "app"\npath = "/"\n'
                 'method = "POST"', "routes[0].aggregate.parts[0].method", "without a body",
                 id="method"),
])
def test_bad_parts_are_config_errors(parts, where, message):
    with pytest.raises(ConfigError) as exc:
        parse(BASE + parts)
    assert any(p == where and message in m for p, m in exc.value.errors), exc.value.errors
