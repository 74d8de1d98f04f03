"""The versions filter end to end: the version read from the path, a header, the media type
or the query, in the configured order; each version's upstream and transform; Deprecation
(RFC 9745), Sunset (RFC 8594) and Link; 410 after the sunset; counts per version."""

from email.utils import parsedate_to_datetime

import orjson
import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from tests.support.client import Conn
from tests.support.e2e import assert_error
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy


def v2(req):
    body = orjson.dumps({"data": {"fullName": "Ada Lovelace", "id": 1}, "served_by": "v2",
                         "path": req.url.decode()})
    return ok(body, headers=[(b"Content-Type", b"application/json")])


def v3(req):
    return ok(orjson.dumps({"served_by": "v3", "path": req.url.decode()}),
              headers=[(b"Content-Type", b"application/json")])


def config(v2_url, v3_url, extra_versions="", sources='["path", "header", "media_type", '
                                                       '"query"]', default='default = "v2"'):
    return f"""
[server]
access_log = "off"

[[upstreams]]
name = "users_v2"
servers = ["{v2_url}"]
[[upstreams]]
name = "users_v3"
servers = ["{v3_url}"]

[[routes]]
name = "users"
paths = ["/{{version}}/users/{{id}}", "/users/{{id}}"]
upstream = "users_v2"
rewrite = "/users/{{id}}"
[routes.versions]
sources = {sources}
vendor = "acme"
{default}

[[routes.versions.supported]]
name = "v1"
deprecated = "2026-01-01T00:00:00Z"
sunset = "2099-12-31"
link = "https://docs.example.com/migrate-to-v2"
[routes.versions.supported.transform.response.body]
unwrap = "/data"
rename = {{ "/fullName" = "/name" }}

[[routes.versions.supported]]
name = "v2"

[[routes.versions.supported]]
name = "v3"
upstream = "users_v3"
{extra_versions}
"""


@pytest.fixture
def rig():
    with Origin(v2) as o2, Origin(v3) as o3, InProcessProxy(config(o2.url, o3.url)) as p:
        yield o2, o3, p


@pytest.mark.parametrize("path,headers,served_by", [
    pytest.param("/v3/users/1", [], "v3", id="path"),
    pytest.param("/users/1", [(b"Accept-Version", b"3")], "v3", id="header"),
    pytest.param("/users/1", [(b"Accept", b"text/html, application/vnd.acme.v3+json")], "v3",
                 id="media-type"),
    pytest.param("/users/1", [(b"Accept", b"application/vnd.acme+json; q=0.9; version=3")],
                 "v3", id="media-type-parameter"),
    pytest.param("/users/1", [(b"Accept", b"application/vnd.acme+json")], "v2",
                 id="media-type-without-version"),
    pytest.param("/users/1?version=V3", [], "v3", id="query"),
    pytest.param("/users/1", [], "v2", id="default"),
    pytest.param("/v2/users/1", [(b"Accept-Version", b"v3")], "v2", id="path-first"),
])
def test_the_version_is_read_from_each_source_in_order(rig, path, headers, served_by):
    _, _, p = rig
    with Conn(p.port) as c:
        r = c.request("GET", path, headers=headers)
    assert r.status == 200, r.body
    assert r.json()["served_by"] == served_by
    assert r.json()["path"].startswith("/users/1")  # the version left out upstream
    assert b"Accept-Version" in r.header(b"vary") and b"Accept" in r.header(b"vary")


def test_an_old_version_is_adapted_and_told_it_is_deprecated(rig):
    _, _, p = rig
    with Conn(p.port) as c:
        r = c.request("GET", "/v1/users/1")
        assert r.status == 200
        assert r.json() == {"name": "Ada Lovelace", "id": 1}
        assert r.header(b"deprecation") == b"@1767225600"  # RFC 9745 §2.1: sf-date
        sunset = parsedate_to_datetime(r.header(b"sunset").decode())
        assert (sunset.year, sunset.month, sunset.day) == (2099, 12, 31)
        assert r.header(b"sunset").endswith(b" GMT")
        link = r.header(b"link")
        assert b'<https://docs.example.com/migrate-to-v2>; rel="deprecation"' in link
        assert b'rel="sunset"' in link
        r = c.request("GET", "/v2/users/1")
        assert r.header(b"deprecation") is None and r.header(b"sunset") is None


@pytest.mark.parametrize("path,headers", [
    pytest.param("/v9/users/1", [], id="path"),
    pytest.param("/users/1", [(b"Accept-Version", b"beta")], id="header"),
])
def test_an_unknown_version_is_a_400_listing_the_supported_ones(rig, path, headers):
    o2, o3, p = rig
    with Conn(p.port) as c:
        r = c.request("GET", path, headers=headers)
    err = assert_error(r, 400, "version_unknown")
    assert err["supported"] == ["v1", "v2", "v3"]
    assert o2.requests == [] and o3.requests == []


def test_without_a_default_a_version_is_required():
    with Origin(v2) as o2, Origin(v3) as o3, InProcessProxy(config(
            o2.url, o3.url, default="")) as p, Conn(p.port) as c:
        r = c.request("GET", "/users/1")
        assert_error(r, 400, "version_required")


def test_after_its_sunset_a_version_can_answer_410():
    gone = ('[[routes.versions.supported]]\nname = "v0"\nsunset = "2020-01-01"\n'
            'gone_after_sunset = true\nlink = "https://docs.example.com/v0"')
    with Origin(v2) as o2, Origin(v3) as o3, InProcessProxy(config(
            o2.url, o3.url, gone)) as p, Conn(p.port) as c:
        r = c.request("GET", "/v0/users/1")
        assert_error(r, 410, "version_gone")
        assert r.header(b"sunset") == b"Wed, 01 Jan 2020 00:00:00 GMT"
        assert o2.requests == []


def test_requests_are_counted_per_version(rig):
    _, _, p = rig
    with Conn(p.port) as c:
        for path in ("/v1/users/1", "/v1/users/2", "/v3/users/1", "/v7/users/1"):
            c.request("GET", path)
    counts = p.call(lambda: dict(p.worker.runtime.shared.counter("versions", "users")))
    assert counts == {"v1": 2, "v3": 1, "unknown": 1}


BASE = ('[[upstreams]]\nname = "app"\nservers = ["http://127.0.0.1:1"]\n'
        '[[routes]]\nname = "r"\nupstream = "app"\n[routes.versions]\n')


@pytest.mark.parametrize("body,where,message", [
    pytest.param('default = "v3"\n[[routes.versions.supported]]\nname = "v1"',
                 "routes[0].versions.default", "not a supported version", id="default"),
    pytest.param('[[routes.versions.supported]]\nname = "v1"\nupstream = "nope"',
                 "routes[0].versions.supported[0].upstream", "unknown upstream", id="upstream"),
    pytest.param('[[routes.versions.supported]]\nname = "v1"\n[[routes.versions.supported]]\n'
                 'name = "1"', "routes[0].versions.supported[1].name", "same version",
                 id="duplicate"),
    pytest.param('[[routes.versions.supported]]\nname = "v1"\nsunset = "soon"',
                 "routes[0].versions.supported[0].sunset", "not a date", id="date"),
    pytest.param('sources = ["cookie"]\n[[routes.versions.supported]]\nname = "v1"',
                 "routes[0].versions.sources", "not one of", id="source"),
])
def test_bad_versions_are_config_errors(body, where, message):
    with pytest.raises(ConfigError) as exc:
        parse(BASE + body)
    assert any(p == where and message in m for p, m in exc.value.errors), exc.value.errors
