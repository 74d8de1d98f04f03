"""The idempotency filter on its own: key syntax, config checks, and the claim / replay /
conflict / mismatch / release decisions against the memory store. ``Ctx`` stands in for the
exchange's filter-facing surface (engine-hooks); the real exchange is driven in tests/e2e."""

import asyncio

import orjson
import pytest

from engine.control.config import parse
from engine.chain.schema import ConfigError
from engine.filters.idempotency import parse_key

KEY = b'"8e03978e-40d5-43e8-bc93-6894a57f9324"'

BASE = """
[[upstreams]]
name = "payments"
servers = ["http://127.0.0.1:9"]

[[routes]]
name = "pay"
upstream = "payments"

[routes.idempotency]
"""


@pytest.mark.parametrize("raw, bare_ok, expected", [
    pytest.param(KEY, False, "8e03978e-40d5-43e8-bc93-6894a57f9324", id="sf-string"),
    pytest.param(b'  "abc"\t', False, "abc", id="surrounding-whitespace"),
    pytest.param(b'"a\\"b\\\\c"', False, 'a"b\\c', id="escapes"),
    pytest.param(b'"a\\nb"', False, None, id="bad-escape"),
    pytest.param(b'"a"b"', False, None, id="inner-quote"),
    pytest.param(b'"abc', False, None, id="unterminated"),
    pytest.param(b'"abc";p=1', False, None, id="parameters"),
    pytest.param(b'"\xc3\xa9"', False, None, id="non-ascii"),
    pytest.param(b'"tab\there"', False, None, id="control-char"),
    pytest.param(b'""', False, "", id="empty-string-left-to-length-check"),
    pytest.param(b"abc-123", True, "abc-123", id="bare-accepted"),
    pytest.param(b"abc-123", False, None, id="bare-refused"),
    pytest.param(b"   ", True, None, id="blank"),
])
def test_parse_key(raw, bare_ok, expected):
    assert parse_key(raw, bare_ok) == expected


@pytest.mark.parametrize("section, path, fragment", [
    pytest.param('methods = ["post"]', "methods", "uppercase", id="method-case"),
    pytest.param('release = ["5x"]', "release", "neither a status", id="release"),
    pytest.param('pattern = "["', "pattern", "regular expression", id="pattern"),
    pytest.param('concurrent = "queue"', "concurrent", "one of", id="concurrent"),
    pytest.param('store = "redis"', "store", "no [redis] table", id="redis-without-table"),
    pytest.param('caller = ["token"]', "caller", "not a key part", id="caller"),
    pytest.param('header = "Bad Header"', "header", "", id="header-name"),
])
def test_config_errors_name_the_key(section, path, fragment):
    with pytest.raises(ConfigError) as info:
        parse(BASE + section)
    errs = dict(info.value.errors)
    full = "routes[0].idempotency." + path
    assert full in errs, errs
    assert fragment in errs[full]


def test_config_defaults():
    cfg = dict(parse(BASE).routes[0].sections)["idempotency"]
    assert cfg.methods == ("POST", "PATCH") and cfg.header == "Idempotency-Key"
    assert cfg.ttl == 86400 and cfg.release == ("429", "5xx") and not cfg.required


# -- decisions, on the memory store


class Ctx:
    def __init__(self, method=b"POST", path="/pay", query=b"", headers=(), body=b"",
                 ip="10.0.0.1", key=KEY):
        self.method = method
        self.path = path
        self.query = query
        self.headers = list(headers) + ([(b"Idempotency-Key", key)] if key else [])
        self.body = body
        self.client_ip = ip
        self.consumer = None
        self.request_id = b"rid-1"
        self.vars = None
        self.protected = False
        self.status = 0
        self.response_complete = False
        self.finish_upstream = False
        self.t_upstream = 0.0  # when the request was sent upstream; 0: never

    async def read_body(self, limit):
        from engine.chain.context import BodyTooLarge
        if len(self.body) > limit:
            raise BodyTooLarge(limit)
        return self.body

    def answer(self, status, body=b"ok", headers=((b"Content-Type", b"text/plain"),),
               complete=True):
        """What the runner does after upstream answered (engine/chain/context.pyx): response
        hook, body hook (the whole body, None if cut), then the log hook."""
        from engine.errors import Response
        self.t_upstream = 1.0
        for f in self.filters:
            f.on_response(self, Response(status, list(headers), None))
        self.status = status
        self.response_complete = complete
        for f in self.filters:
            f.on_response_body(self, body if complete else None)
        for f in self.filters:
            f.on_log(self)


def make_filter(section="", route="pay"):
    from engine.control.snapshot import Runtime
    rt = Runtime(parse(BASE.replace('name = "pay"', f'name = "{route}"') + section))
    return rt.routes[0].chain.filters[0]


def run(f, ctx):
    ctx.filters = [f]
    answer = f.on_request(ctx)
    if asyncio.iscoroutine(answer):
        answer = asyncio.run(asyncio.wait_for(answer, 5))
    return answer


def error(resp, status, code):
    assert resp.status == status, (resp.status, resp.body)
    err = orjson.loads(resp.body)["error"]
    assert err["code"] == code and err["request_id"] == "rid-1"
    return err


def test_other_methods_and_keyless_requests_pass_untouched():
    f = make_filter()
    assert run(f, Ctx(method=b"GET")) is None
    ctx = Ctx(key=None)
    assert run(f, ctx) is None and not ctx.protected and ctx.vars is None


def test_required_key_missing_is_400_explaining_the_header():
    err = error(run(make_filter("required = true"), Ctx(key=None)), 400,
                "idempotency_key_missing")
    assert "Idempotency-Key" in err["message"] and '"' in err["message"]


@pytest.mark.parametrize("ctx", [
    pytest.param(Ctx(key=b'"' + b"a" * 256 + b'"'), id="too-long"),
    pytest.param(Ctx(key=b'""'), id="empty"),
    pytest.param(Ctx(key=b'"has space"'), id="outside-pattern"),
    pytest.param(Ctx(key=b'"abc', ), id="unterminated"),
    pytest.param(Ctx(headers=[(b"idempotency-key", b'"x"')]), id="two-fields"),
])
def test_malformed_key_is_400(ctx):
    error(run(make_filter(), ctx), 400, "idempotency_key_invalid")


def test_bare_key_refused_when_configured():
    error(run(make_filter("bare_keys = false"), Ctx(key=b"abc")), 400,
          "idempotency_key_invalid")


def test_first_request_claims_and_is_protected_then_replays_exactly():
    f = make_filter()
    first = Ctx(body=b'{"amount": 10}')
    assert run(f, first) is None
    assert first.protected and f.RESPONSE_BODY == ("stream", 1 << 20)
    first.answer(201, b'{"id": "ch_1"}', [(b"Content-Type", b"application/json"),
                                         (b"X-Request-ID", b"rid-1")])
    replay = run(f, Ctx(body=b'{"amount": 10}'))
    assert replay.status == 201 and replay.body == b'{"id": "ch_1"}'
    assert replay.headers == [(b"Content-Type", b"application/json"),
                              (b"Idempotent-Replayed", b"true")]


def test_bare_and_quoted_forms_are_the_same_key():
    f = make_filter()
    first = Ctx(key=b'"abc"')
    run(f, first)
    first.answer(200, b"one")
    assert run(f, Ctx(key=b"abc")).body == b"one"


def test_duplicate_in_flight_is_409_with_retry_after():
    f = make_filter("retry_after = 2")
    run(f, Ctx())
    resp = run(f, Ctx())
    error(resp, 409, "idempotency_conflict")
    assert (b"Retry-After", b"2") in resp.headers


@pytest.mark.parametrize("other", [
    pytest.param(Ctx(body=b"different"), id="body"),
    pytest.param(Ctx(path="/pay/other"), id="path"),
    pytest.param(Ctx(query=b"?x=1"), id="query"),
    pytest.param(Ctx(method=b"PATCH"), id="method"),
])
@pytest.mark.parametrize("done", [False, True], ids=["in-flight", "done"])
def test_same_key_different_request_is_422(other, done):
    f = make_filter()
    first = Ctx(body=b"same")
    run(f, first)
    if done:
        first.answer(200)
    error(run(f, other), 422, "idempotency_mismatch")


def test_fingerprint_headers_take_part():
    f = make_filter('fingerprint_headers = ["X-Account"]')
    assert run(f, Ctx(headers=[(b"X-Account", b"a")])) is None
    error(run(f, Ctx(headers=[(b"x-account", b"b")])), 422, "idempotency_mismatch")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_nothing_happened_statuses_release_the_key(status):
    f = make_filter()
    first = Ctx()
    run(f, first)
    first.answer(status)
    again = Ctx(body=b"even a corrected body")
    assert run(f, again) is None and again.protected


def test_release_list_is_configurable():
    f = make_filter('release = ["503"]')
    first = Ctx()
    run(f, first)
    first.answer(500, b"boom")
    assert run(f, Ctx()).body == b"boom"  # 500 stored and replayed (Stripe v1 style)


def test_response_cut_keeps_the_claim_until_the_lease():
    f = make_filter()
    first = Ctx()
    run(f, first)
    assert first.finish_upstream  # the engine reads the answer even if the client leaves
    first.answer(200, complete=False)
    error(run(f, Ctx()), 409, "idempotency_conflict")


def test_client_gone_before_the_request_was_sent_releases_the_key():
    f = make_filter()
    first = Ctx()
    run(f, first)
    first.status = 499  # what the engine records for a client that left
    f.on_log(first)
    assert run(f, Ctx()) is None  # claimed again: goes upstream


def test_response_too_large_to_store_is_not_replayed_but_not_rerun():
    f = make_filter('max_response_size = "4"')
    first = Ctx()
    run(f, first)
    first.status, first.response_complete = 200, True
    first.t_upstream = 1.0  # it reached the upstream
    f.on_response_body(first, None)  # over max_response_size: the runner passes None
    f.on_log(first)
    err = error(run(f, Ctx()), 409, "idempotency_conflict")
    assert "cannot be replayed" in err["message"]


def test_body_over_the_fingerprint_limit_is_413():
    error(run(make_filter('max_body_size = "8"'), Ctx(body=b"x" * 9)), 413, "body_too_large")


def test_keys_are_per_route_by_default_per_address_or_header_when_configured():
    f = make_filter()
    first = Ctx(ip="10.0.0.1")
    run(f, first)
    first.answer(200, b"charged")
    assert run(f, Ctx(ip="10.0.0.2")).body == b"charged"  # a retry from a new address

    f = make_filter('caller = ["ip"]')
    first = Ctx(ip="10.0.0.1")
    run(f, first)
    first.answer(200, b"secret")
    other = Ctx(ip="10.0.0.2")
    assert run(f, other) is None and other.protected  # its own, fresh record

    f = make_filter('caller = ["header:X-Api-Key"]')
    first = Ctx(headers=[(b"X-Api-Key", b"alice")], ip="10.0.0.1")
    run(f, first)
    first.answer(200, b"alice's")
    assert run(f, Ctx(headers=[(b"X-Api-Key", b"alice")], ip="10.9.9.9")).body == b"alice's"
    assert run(f, Ctx(headers=[(b"X-Api-Key", b"mallory")])) is None


def test_wait_mode_duplicate_gets_the_first_answer():
    f = make_filter('concurrent = "wait"\nmax_wait = "2s"')

    async def main():
        first = Ctx()
        first.filters = [f]
        assert await f.on_request(first) is None
        dup = Ctx()
        waiting = asyncio.ensure_future(f.on_request(dup))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        first.answer(200, b"first")
        resp = await asyncio.wait_for(waiting, 2)
        assert resp.body == b"first" and (b"Idempotent-Replayed", b"true") in resp.headers
    asyncio.run(main())


def test_wait_mode_is_bounded_by_max_wait():
    f = make_filter('concurrent = "wait"\nmax_wait = "50ms"')

    async def main():
        first = Ctx()
        await f.on_request(first)
        resp = await asyncio.wait_for(f.on_request(Ctx()), 2)
        error(resp, 409, "idempotency_conflict")
    asyncio.run(main())


def test_record_keys_differ_by_route_caller_and_key():
    f = make_filter()
    base = f.record_key(Ctx(), "k")
    assert base == f.record_key(Ctx(), "k")
    assert base == f.record_key(Ctx(ip="10.0.0.2"), "k")  # no caller: the address is no part
    assert base != f.record_key(Ctx(), "k2")
    assert base != make_filter(route="refund").record_key(Ctx(), "k")
    alice, bob = Ctx(), Ctx()
    alice.consumer, bob.consumer = "alice", "bob"
    assert len({base, f.record_key(alice, "k"), f.record_key(bob, "k")}) == 3
    by_ip = make_filter('caller = ["ip"]')
    assert by_ip.record_key(Ctx(), "k") != by_ip.record_key(Ctx(ip="10.0.0.2"), "k")
