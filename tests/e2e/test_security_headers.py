"""Security headers (engine/filters/security_headers.py) on a real proxy: helmet's preset,
overrides, HSTS on https only, upstream headers kept or replaced, Server removed."""

import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from engine.filters.security_headers import HELMET, NAMES
from tests.support.client import Conn
from tests.support.e2e import proxy_config
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

UPSTREAM = [(b"Server", b"gunicorn/21"), (b"X-Powered-By", b"Express"),
            (b"X-Frame-Options", b"DENY"), (b"Content-Type", b"text/html")]


def run(section, requests, listener=""):
    with Origin(lambda req: ok(b"<p>hi</p>", headers=UPSTREAM)) as origin, InProcessProxy(
            listener + proxy_config(origin.url,
                                    extra=f"[routes.security_headers]\n{section}\n")) as p, \
            Conn(p.port) as c:
        return [c.request(*r) for r in requests]


def test_helmet_preset_on_plain_http():
    (r,) = run("", [("GET", "/")])
    for key, value in HELMET.items():
        name = NAMES[key].encode()
        if key == "strict_transport_security" or not value:
            assert r.header(name) is None, name  # HSTS only over https
        elif key == "x_frame_options":
            assert r.header(name) == b"DENY"  # the upstream's own kept
        else:
            assert r.header(name) == value.encode(), name
    assert r.header(b"server") is None and r.header(b"x-powered-by") is None


def test_hsts_on_an_https_listener():
    (r,) = run("", [("GET", "/")], listener=(
        '[[listeners]]\nname = "tls"\nlisten = "127.0.0.1:0"\nforwarded_proto = "https"\n'))
    assert r.header(b"strict-transport-security") == b"max-age=31536000; includeSubDomains"


def test_overrides_report_only_and_override_flag():
    section = """
content_security_policy = "default-src 'none'"
csp_report_only = true
referrer_policy = ""
x_frame_options = "SAMEORIGIN"
override = true
remove = ["X-Powered-By"]
"""
    (r,) = run(section, [("GET", "/")])
    assert r.header(b"content-security-policy") is None
    assert r.header(b"content-security-policy-report-only") == b"default-src 'none'"
    assert r.header(b"referrer-policy") is None  # "" turns it off
    assert r.header(b"x-frame-options") == b"SAMEORIGIN"  # override replaces the upstream's
    assert r.header(b"server") == b"gunicorn/21"  # not in this remove list
    assert r.header(b"x-powered-by") is None


def test_preset_none_sends_only_what_is_set():
    (r,) = run('preset = "none"\nx_content_type_options = "nosniff"', [("GET", "/")])
    assert r.header(b"x-content-type-options") == b"nosniff"
    assert r.header(b"content-security-policy") is None
    assert r.header(b"cross-origin-opener-policy") is None


def test_the_proxys_own_answers_get_them_too():
    config = proxy_config("http://127.0.0.1:1", paths='["/api/*"]',
                          extra='[filters.security_headers]\n')
    with InProcessProxy(config) as p, Conn(p.port) as c:
        r = c.request("GET", "/nowhere")
    assert r.status == 404
    assert r.header(b"x-content-type-options") == b"nosniff"


@pytest.mark.parametrize("section,path", [
    pytest.param('preset = "strict"', "preset", id="unknown-preset"),
    pytest.param('referrer_policy = "a\\r\\nb"', "referrer_policy", id="crlf"),
    pytest.param('remove = ["bad name"]', "remove", id="bad-name"),
])
def test_bad_config_names_the_key(section, path):
    with pytest.raises(ConfigError) as info:
        parse(proxy_config("http://127.0.0.1:1", extra=f"[routes.security_headers]\n{section}"))
    assert any(p == f"routes[0].security_headers.{path}" for p, _ in info.value.errors)
