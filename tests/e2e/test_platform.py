"""The filter contract end to end (engine/chain/context.pyx): server-wide filters, response
hooks for every answer, phase order, body hooks, the 405 path, sub-requests. Real proxy, real
origins, real sockets; filters are real modules from the registry or small classes set as a
route's chain (engine.chain.context.Chain), as the snapshot compiles them."""

import orjson
import pytest

from engine.chain.context import Chain
from engine.chain.filter import AUTH, BUFFERED, CORS, RATE_LIMIT, STREAM, TRANSFORM
from engine.errors import Response
from tests.support.client import Conn
from tests.support.e2e import proxy_config
from tests.support.origin import Origin, closed_port, ok
from tests.support.proxy import InProcessProxy


def set_chain(proxy, filters, route=0):
    proxy.call(setattr, proxy.worker.runtime.routes[route], "chain", Chain(filters))


# -- server-wide filters and answers made without an upstream

SERVER_WIDE = """
[filters.headers.response]
add = { "X-Edge" = "1" }
[filters.response_time]
header = "X-Took"

[[routes]]
name = "own"
paths = ["/own"]
upstream = "app"
[routes.headers.response]
add = { "X-Own" = "1" }

[[routes]]
name = "getonly"
paths = ["/g"]
methods = ["GET"]
upstream = "app"

[[routes]]
name = "small"
paths = ["/small"]
upstream = "app"
max_body_size = "4"

[[routes]]
name = "health"
paths = ["/healthz"]
[routes.static]
body = "ok"
"""


@pytest.mark.parametrize("method,path,body,status", [
    pytest.param("GET", "/g", b"", 200, id="proxied"),
    pytest.param("GET", "/healthz", b"", 200, id="static"),
    pytest.param("GET", "/nothing", b"", 404, id="no-route"),
    pytest.param("POST", "/g", b"", 405, id="wrong-method"),
    pytest.param("POST", "/small", b"too large", 413, id="too-large"),
])
def test_server_wide_filters_answer_every_request(method, path, body, status):
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/api/*"]', extra=SERVER_WIDE)) as p, Conn(p.port) as c:
        r = c.request(method, path, body=body)
        assert r.status == status, r.body
        assert r.header(b"x-edge") == b"1"
        assert float(r.header(b"x-took")) >= 0


def test_a_malformed_request_still_gets_server_wide_response_headers():
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, extra=SERVER_WIDE)) as p, Conn(p.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # two Hosts: 400
        r = c.response()
        assert r.status == 400 and r.header(b"x-edge") == b"1"


def test_a_routes_own_section_replaces_the_server_wide_one():
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, paths='["/api/*"]', extra=SERVER_WIDE)) as p, Conn(p.port) as c:
        r = c.request("GET", "/own")
        assert r.status == 200 and r.header(b"x-own") == b"1"
        assert r.header(b"x-edge") is None  # nginx inheritance: the route's own wins
        assert r.header(b"x-took") is not None  # other server-wide filters still apply


def test_response_time_reports_the_upstream_time_only_when_there_was_one():
    route = '[routes.response_time]\nupstream_header = "X-Upstream-Took"'
    with Origin() as origin, InProcessProxy(proxy_config(origin.url, route=route)) as p, \
            Conn(p.port) as c:
        r = c.request("GET", "/x")
        assert r.status == 200
        took, upstream = float(r.header(b"x-response-time")), float(
            r.header(b"x-upstream-took"))
        assert 0 <= upstream <= took < 5000


# -- phase order, and which response hooks run


class Recorder:
    """A filter that logs its hooks into ``log``; answers when ``answer`` is set."""

    def __init__(self, name, phase, log, answer=None):
        self.name, self.PHASE, self.log, self.answer = name, phase, log, answer

    def on_request(self, ctx):
        self.log.append(("request", self.name))
        if self.answer is not None:
            return Response(self.answer, [(b"Content-Type", b"text/plain")], b"local")
        return None

    def on_response(self, ctx, resp):
        self.log.append(("response", self.name, resp.status))
        resp.headers.append((b"X-Seen-" + self.name.encode(), b"1"))

    def on_log(self, ctx):
        self.log.append(("log", self.name, ctx.status))


def test_hooks_run_in_phase_order_and_response_hooks_in_reverse():
    log = []
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as p:
        # Given out of order: the chain sorts by PHASE, never by position.
        set_chain(p, [Recorder("t", TRANSFORM, log), Recorder("c", CORS, log),
                      Recorder("a", AUTH, log)])
        with Conn(p.port) as c:
            r = c.request("GET", "/")
        assert r.status == 200 and r.header(b"x-seen-t") == b"1"
    assert log == [("request", "c"), ("request", "a"), ("request", "t"),
                   ("response", "t", 200), ("response", "a", 200), ("response", "c", 200),
                   ("log", "c", 200), ("log", "a", 200), ("log", "t", 200)]


def test_a_local_answer_passes_back_through_the_filters_before_it_only():
    log = []
    with Origin() as origin, InProcessProxy(proxy_config(origin.url)) as p:
        set_chain(p, [Recorder("c", CORS, log), Recorder("a", AUTH, log, answer=401),
                      Recorder("r", RATE_LIMIT, log)])
        with Conn(p.port) as c:
            r = c.request("GET", "/")
        assert r.status == 401 and r.body == b"local"
        assert r.header(b"x-seen-c") == b"1" and r.header(b"x-seen-a") == b"1"
        assert r.header(b"x-seen-r") is None
        assert not origin.requests
    assert [e for e in log if e[0] != "log"] == [
        ("request", "c"), ("request", "a"), ("response", "a", 401), ("response", "c", 401)]


def test_an_upstream_failure_passes_through_every_response_hook():
    log = []
    with InProcessProxy(proxy_config(f"http://127.0.0.1:{closed_port()}")) as p:
        set_chain(p, [Recorder("c", CORS, log), Recorder("r", RATE_LIMIT, log)])
        with Conn(p.port) as c:
            r = c.request("GET", "/")
        assert r.status == 502 and r.json()["error"]["code"] == "bad_gateway"
        assert r.header(b"x-seen-c") == b"1" and r.header(b"x-seen-r") == b"1"


class Preflight:
    """Answers OPTIONS itself (what a CORS filter does with a preflight)."""
    PHASE = CORS

    def on_request(self, ctx):
        if ctx.method == b"OPTIONS":
            return Response(204, [(b"Access-Control-Allow-Methods", b"GET")], b"")
        return None


def test_a_wrong_method_runs_the_routes_filters_before_the_405():
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, route='methods = ["GET"]')) as p:
        set_chain(p, [Preflight()])
        with Conn(p.port) as c:
            r = c.request("OPTIONS", "/x")
            assert r.status == 204 and r.header(b"access-control-allow-methods") == b"GET"
            r = c.request("DELETE", "/x")
            assert r.status == 405 and r.header(b"allow") == b"GET"
        assert not origin.requests


# -- bodies


class BodyWatcher:
    PHASE = TRANSFORM

    def __init__(self, mode, limit, seen):
        self.RESPONSE_BODY = (mode, limit)
        self.seen = seen

    def on_response_body(self, ctx, body):
        self.seen.append(body)
        return body.upper() if body is not None else None


def big_origin(req):
    return ok(b"abc" * (1000 if req.url == b"/big" else 1))


@pytest.mark.parametrize("path,edited", [("/small", True), ("/big", False)])
def test_a_buffered_body_hook_may_replace_the_body_within_its_cap(path, edited):
    seen = []
    with Origin(big_origin) as origin, InProcessProxy(proxy_config(origin.url)) as p:
        set_chain(p, [BodyWatcher(BUFFERED, 100, seen)])
        with Conn(p.port) as c:
            r = c.request("GET", path)
            again = c.request("GET", "/small")  # the connection stays in step
    body = b"abc" * (1000 if path == "/big" else 1)
    assert r.status == 200 and r.body == (body.upper() if edited else body)
    assert int(r.header(b"content-length") or len(r.body)) == len(r.body)
    assert seen[0] == (body if edited else None)  # over the cap: told, untouched
    assert again.body == b"ABC"


def test_a_streamed_body_hook_sees_a_copy_and_cannot_edit():
    seen = []
    with Origin(big_origin) as origin, InProcessProxy(proxy_config(origin.url)) as p:
        set_chain(p, [BodyWatcher(STREAM, 10_000, seen)])
        with Conn(p.port) as c:
            r = c.request("GET", "/big")
    assert r.body == b"abc" * 1000 and seen == [b"abc" * 1000]


def test_a_filter_may_edit_a_local_answers_body():
    class Rewrite:
        PHASE = TRANSFORM

        def on_response(self, ctx, resp):
            resp.body = orjson.dumps({"wrapped": orjson.loads(resp.body)})

    with InProcessProxy(proxy_config(f"http://127.0.0.1:{closed_port()}")) as p:
        set_chain(p, [Rewrite()])
        with Conn(p.port) as c:
            r = c.request("GET", "/")
    assert r.status == 502 and r.json()["wrapped"]["error"]["code"] == "bad_gateway"
    assert int(r.header(b"content-length")) == len(r.body)


# -- sub-requests


AUX = """
[[upstreams]]
name = "aux"
servers = ["{aux}"]
"""


class Enrich:
    """Asks the aux upstream before going on (what composition or forward auth does)."""
    PHASE = AUTH

    def __init__(self, path=b"/who"):
        self.path = path

    async def _ask(self, ctx):
        resp = await ctx.fetch("aux", "GET", self.path, [(b"X-From", b"edge")])
        if resp.status != 200:
            return resp  # the proxy's own JSON error, answered as is
        ctx.headers.append((b"X-User", resp.body))
        return None

    def on_request(self, ctx):
        return self._ask(ctx)


def test_a_filter_makes_a_sub_request_through_an_upstream():
    aux = Origin(lambda req: ok(b"alice" if req.header(b"x-from") == b"edge" else b"?"))
    with aux, Origin() as origin, InProcessProxy(proxy_config(
            origin.url, extra=AUX.format(aux=aux.url))) as p:
        set_chain(p, [Enrich()])
        with Conn(p.port) as c:
            r = c.request("GET", "/order")
        assert r.status == 200
        assert origin.requests[0].header(b"x-user") == b"alice"
        assert aux.requests[0].url == b"/who"
        # The sub-request carries the request's id, for one trace across both.
        assert aux.requests[0].header(b"x-request-id") == r.header(b"x-request-id")


def test_a_sub_request_to_a_dead_upstream_is_a_json_502():
    with Origin() as origin, InProcessProxy(proxy_config(
            origin.url, extra=AUX.format(aux=f"http://127.0.0.1:{closed_port()}"))) as p:
        set_chain(p, [Enrich()])
        with Conn(p.port) as c:
            r = c.request("GET", "/order")
        assert r.status == 502 and r.json()["error"]["code"] == "bad_gateway"
        assert not origin.requests
