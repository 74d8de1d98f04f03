"""The transform filter end to end: a real proxy in front of a real origin, over sockets.
What the origin received is read from ``origin.requests``; what the client got, from the
response."""

import orjson
import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from tests.support.client import Conn, raw
from tests.support.e2e import assert_error, proxy_config
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

REQUEST = """
[[routes]]
name = "users"
paths = ["/api/users/{id}"]
upstream = "app"
[routes.transform.request.path]
match = '^/api/users/(\\d+)$'
replace = "/v2/people/$1"
[routes.transform.request.query]
remove = ["debug"]
rename = { "q" = "search" }
add = { "via" = "edge", "user" = "{param.id}" }
[routes.transform.request.headers]
set = { "X-Client-IP" = "{client_ip}", "X-User" = "user-{param.id}", "X-Rid" = "{request_id}" }
add = { "X-Empty" = "{header.X-Nothing}" }
remove = ["X-Secret"]
rename = { "X-Old" = "X-New" }
[routes.transform.request.body]
rename = { "/name" = "/profile/full_name" }
remove = ["/password"]
set = { "/meta/source" = "gateway", "/meta/user" = "{param.id}", "/tags/-" = "edge" }
add = { "/lang" = "en", "/kept" = "default" }

[[routes]]
name = "forms"
paths = ["/form"]
upstream = "app"
[routes.transform.request]
form_to_json = true
[routes.transform.request.body]
wrap = "/data"

[[routes]]
name = "small"
paths = ["/small"]
upstream = "app"
[routes.transform]
max_body_size = 16
[routes.transform.request.body]
set = { "/x" = 1 }
"""


def _echo_json(req):
    return ok(orjson.dumps({"target": req.url.decode(), "body": req.body.decode()}),
              headers=[(b"Content-Type", b"application/json")])


@pytest.fixture
def rig():
    with Origin(_echo_json) as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/other"]', extra=REQUEST)) as p:
        yield origin, p


def test_request_path_query_headers_and_json_body(rig):
    origin, p = rig
    body = orjson.dumps({"name": "Ada", "password": "x", "tags": ["a"], "kept": "mine"})
    with Conn(p.port) as c:
        r = c.request("POST", "/api/users/42?q=abc&debug=1&x=%20y", body=body, headers=[
            (b"Content-Type", b"application/json; charset=utf-8"), (b"X-Secret", b"s"),
            (b"X-Old", b"o")])
    assert r.status == 200, r.body
    seen = origin.requests[-1]
    assert seen.url == b"/v2/people/42?search=abc&x=%20y&via=edge&user=42"
    assert seen.header(b"x-client-ip") == b"127.0.0.1"
    assert seen.header(b"x-user") == b"user-42"
    assert seen.header(b"x-rid") == r.header(b"x-request-id")
    assert seen.header(b"x-secret") is None and seen.header(b"x-new") == b"o"
    assert seen.header(b"x-empty") is None  # rendered empty: not sent (as nginx)
    assert orjson.loads(seen.body) == {
        "profile": {"full_name": "Ada"}, "tags": ["a", "edge"], "kept": "mine",
        "meta": {"source": "gateway", "user": "42"}, "lang": "en"}
    assert int(seen.header(b"content-length")) == len(seen.body)


def test_a_chunked_json_body_is_sent_with_its_new_length(rig):
    origin, p = rig
    with Conn(p.port) as c:
        c.send(b"POST /api/users/7 HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n")
        r = c.response()
    assert r.status == 200, r.body
    seen = origin.requests[-1]
    assert seen.header(b"transfer-encoding") is None
    assert int(seen.header(b"content-length")) == len(seen.body)
    assert orjson.loads(seen.body)["a"] == 1


def test_a_chunked_body_over_the_cap_streams_on_untouched(rig):
    origin, p = rig
    body = b'{"long": "' + b"x" * 40 + b'"}'
    with Conn(p.port) as c:
        c.send(b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(
                   b"%x\r\n%s\r\n" % (len(body[i:i + 8]), body[i:i + 8])
                   for i in range(0, len(body), 8)) + b"0\r\n\r\n")
        r = c.response()
    assert r.status == 200, r.body
    assert origin.requests[-1].body == body


def test_form_body_becomes_json(rig):
    origin, p = rig
    with Conn(p.port) as c:
        r = c.request("POST", "/form", body=b"a=1&b=x+y&a=2&c=",
                      headers=[(b"Content-Type", b"application/x-www-form-urlencoded")])
    assert r.status == 200
    seen = origin.requests[-1]
    assert seen.header(b"content-type") == b"application/json"
    assert orjson.loads(seen.body) == {"data": {"a": ["1", "2"], "b": "x y", "c": ""}}


@pytest.mark.parametrize("path,ctype,body,code", [
    pytest.param("/api/users/1", b"application/json", b"{nope", "body_not_json", id="json"),
    pytest.param("/form", b"application/x-www-form-urlencoded", b"\xff\xfe=1", "body_not_form",
                 id="form"),
])
def test_a_request_body_that_does_not_parse_is_a_400(rig, path, ctype, body, code):
    origin, p = rig
    before = len(origin.requests)
    with Conn(p.port) as c:
        r = c.request("POST", path, body=body, headers=[(b"Content-Type", ctype)])
    assert_error(r, 400, code)
    assert len(origin.requests) == before  # nothing went upstream


@pytest.mark.parametrize("path,ctype,body", [
    pytest.param("/small", b"application/json", b'{"long": "' + b"x" * 40 + b'"}',
                 id="over-the-cap"),
    pytest.param("/api/users/1", b"text/plain", b"{not json, not touched", id="not-json"),
    pytest.param("/api/users/1", b"application/json+zip", b"{", id="not-json-type"),
])
def test_bodies_out_of_scope_go_through_untouched(rig, path, ctype, body):
    origin, p = rig
    with Conn(p.port) as c:
        r = c.request("POST", path, body=body, headers=[(b"Content-Type", ctype)])
    assert r.status == 200, r.body
    assert origin.requests[-1].body == body


RESPONSE = """
[[routes]]
name = "adapt"
paths = ["/adapt/*"]
upstream = "app"
[routes.transform.response]
status = { "404" = 200, "502" = 503 }
[routes.transform.response.headers]
set = { "X-Served-For" = "{client_ip}" }
remove = ["X-Internal"]
[routes.transform.response.body]
unwrap = "/data"
rename = { "/fullName" = "/name" }
remove = ["/secret"]
set = { "/version" = 1 }

[[routes]]
name = "broken"
paths = ["/broken"]
upstream = "nowhere"

[[upstreams]]
name = "nowhere"
servers = ["http://127.0.0.1:9"]
retry = { tries = 1 }
"""


def _answers(req):
    url = req.url.decode()
    if url == "/adapt/json":
        body = orjson.dumps({"data": {"fullName": "Ada", "secret": "s"}, "paging": {}})
        return ok(body, headers=[(b"Content-Type", b"application/json"), (b"X-Internal", b"1")])
    if url == "/adapt/missing":
        return ok(b'{"data": {}}', 404, headers=[(b"Content-Type", b"application/json")])
    if url == "/adapt/bad":
        return ok(b"{truncated", headers=[(b"Content-Type", b"application/json")])
    if url == "/adapt/gzip":
        return ok(b"\x1f\x8b binary", headers=[(b"Content-Type", b"application/json"),
                                               (b"Content-Encoding", b"gzip")])
    return ok(b"plain text", headers=[(b"Content-Type", b"text/plain")])


def test_response_status_headers_and_body():
    with Origin(_answers) as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/other"]', extra=RESPONSE)) as p, Conn(p.port) as c:
        r = c.request("GET", "/adapt/json")
        assert r.status == 200
        assert r.json() == {"name": "Ada", "version": 1}
        assert int(r.header(b"content-length")) == len(r.body)
        assert r.header(b"x-internal") is None
        assert r.header(b"x-served-for") == b"127.0.0.1"
        r = c.request("GET", "/adapt/missing")
        assert r.status == 200 and r.json() == {"version": 1}
        r = c.request("GET", "/adapt/text")
        assert r.body == b"plain text"
        r = c.request("GET", "/adapt/gzip")
        assert r.body == b"\x1f\x8b binary"


def test_a_mapped_status_does_not_keep_the_upstreams_reason_phrase():
    def not_found(req):
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"

    with Origin(not_found) as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/other"]', extra=RESPONSE)) as p:
        head = raw(p.port, b"GET /adapt/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head[:40]


def test_a_response_that_does_not_parse_passes_unchanged_with_a_log_line(capfd):
    with Origin(_answers) as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/other"]', extra=RESPONSE)) as p, Conn(p.port) as c:
        r = c.request("GET", "/adapt/bad")
        assert r.status == 200 and r.body == b"{truncated"
    err = capfd.readouterr().err
    assert "transform_response_not_json" in err and r.header(b"x-request-id").decode() in err


def test_the_proxys_own_answers_are_transformed_too():
    with Origin(_answers) as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/other"]', extra=RESPONSE.replace(
                'upstream = "nowhere"', 'upstream = "nowhere"\n[routes.transform.response]\n'
                'status = { "502" = 503 }\n[routes.transform.response.body]\n'
                'set = { "/error/hint" = "try later" }'))) as p, Conn(p.port) as c:
        r = c.request("GET", "/broken")
        assert r.status == 503
        assert r.json()["error"]["hint"] == "try later"
        assert r.json()["error"]["code"] == "bad_gateway"


@pytest.mark.parametrize("section,where,message", [
    pytest.param('[routes.transform.request.path]\nmatch = "(unclosed"\nreplace = "/x"',
                 "routes[0].transform.request.path.match", "not a regular expression",
                 id="bad-regex"),
    pytest.param('[routes.transform.request.path]\nmatch = "^/a$"\nreplace = "/x/$2"',
                 "routes[0].transform.request.path.replace", "not a group", id="bad-group"),
    pytest.param('[routes.transform.request.headers]\nset = { "X-A" = "{nope}" }',
                 "routes[0].transform.request.headers.set", "unknown template name",
                 id="bad-template"),
    pytest.param('[routes.transform.request.body]\nremove = ["a/b"]',
                 "routes[0].transform.request.body.remove", "not a JSON pointer",
                 id="bad-pointer"),
    pytest.param('[routes.transform.response]\nstatus = { "200" = 204 }',
                 "routes[0].transform.response.status", "cannot replace", id="bad-status"),
    pytest.param('[routes.transform.request.headers]\nset = { "Content-Length" = "1" }',
                 "routes[0].transform.request.headers.set", "managed by the proxy",
                 id="reserved-header"),
])
def test_bad_config_names_its_key_path(section, where, message):
    text = ('[[upstreams]]\nname = "app"\nservers = ["http://127.0.0.1:1"]\n'
            '[[routes]]\nname = "r"\nupstream = "app"\nstrip_prefix = false\n' + section)
    with pytest.raises(ConfigError) as exc:
        parse(text)
    assert any(p == where and message in m for p, m in exc.value.errors), exc.value.errors


def test_path_rewrite_and_strip_prefix_together_is_a_config_error():
    text = ('[[upstreams]]\nname = "app"\nservers = ["http://127.0.0.1:1"]\n'
            '[[routes]]\nname = "r"\nupstream = "app"\npaths = ["/a/*"]\nstrip_prefix = true\n'
            '[routes.transform.request.path]\nmatch = "^/a"\nreplace = "/b"')
    with pytest.raises(ConfigError) as exc:
        parse(text)
    assert exc.value.errors[0][0] == "routes[0].transform.request.path"
