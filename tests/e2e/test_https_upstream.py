"""HTTPS upstreams end to end: verified against a configured CA with a settable name, kept
alive, refused when the certificate does not verify, client certificates, health checks."""

import ssl

import pytest

from engine.chain.schema import ConfigError
from engine.control.config import parse
from tests.support.client import Conn
from tests.support.e2e import wait_until
from tests.support.origin import Origin, echo
from tests.support.proxy import InProcessProxy
from tests.support.tls import CA, ca_file, issue, server_context


def config(url: str, tls: str, extra: str = "") -> str:
    return f"""
[server]
access_log = "off"
[[upstreams]]
name = "app"
servers = ["{url}"]
tls = {{ {tls} }}
{extra}
[[routes]]
name = "all"
upstream = "app"
"""


def test_verified_upstream_is_kept_alive():
    with Origin(echo, tls=server_context("origin.test")) as o, \
            InProcessProxy(config(o.url, f'ca = "{ca_file()}", server_name = "origin.test"')) \
            as p, Conn(p.port) as c:
        for i in range(3):
            r = c.request("GET", f"/{i}")
            assert (r.status, r.body) == (200, f"/{i}".encode())
        assert len({q.conn_id for q in o.requests}) == 1  # one TLS connection, reused


@pytest.mark.parametrize("names, tls, status", [
    pytest.param(("origin.test",), 'server_name = "origin.test"', 502,
                 id="system-store-does-not-know-the-test-ca"),
    pytest.param(("127.0.0.1",), f'ca = "{ca_file()}"', 200, id="ip-address-verified"),
    pytest.param(("other.test",), "verify = false", 200, id="verify-off"),
])
def test_upstream_certificate_verification(names, tls, status):
    with Origin(echo, tls=server_context(*names)) as o, \
            InProcessProxy(config(o.url, tls)) as p, Conn(p.port) as c:
        assert c.request().status == status


def test_wrong_name_is_refused_even_with_the_right_ca():
    with Origin(echo, tls=server_context("other.test")) as o, \
            InProcessProxy(config(o.url, f'ca = "{ca_file()}", server_name = "origin.test"')) \
            as p, Conn(p.port) as c:
        assert c.request().status == 502
        assert not o.requests


def test_client_certificate_to_an_origin_that_requires_one():
    ctx = server_context("origin.test")
    ctx.verify_mode = ssl.CERT_REQUIRED
    CA.configure_trust(ctx)
    cert, key = issue("upstream-client", "edge.test")
    tls = f'ca = "{ca_file()}", server_name = "origin.test", cert = "{cert}", key = "{key}"'
    with Origin(echo, tls=ctx) as o, InProcessProxy(config(o.url, tls)) as p, \
            Conn(p.port) as c:
        assert c.request().status == 200
    without = f'ca = "{ca_file()}", server_name = "origin.test"'
    with Origin(echo, tls=ctx) as o, InProcessProxy(config(o.url, without)) as p, \
            Conn(p.port) as c:
        assert c.request().status == 502


def test_health_checks_speak_tls():
    health = '[upstreams.health_check]\ninterval = "50ms"\nhealthy_threshold = 1'
    with Origin(echo, tls=server_context("origin.test")) as o, \
            InProcessProxy(config(o.url, f'ca = "{ca_file()}", server_name = "origin.test"',
                                  health)):
        assert wait_until(lambda: any(r.header(b"user-agent") == b"edgeproxy-health-check"
                               for r in o.requests), timeout=5)


def test_upstream_tls_config_errors():
    cert, key = issue("lonely", "edge.test")
    with pytest.raises(ConfigError) as err:
        parse(config("https://127.0.0.1:1", f'cert = "{cert}"'))
    assert ("upstreams[0].tls.key", "is required with cert") in err.value.errors
    with pytest.raises(ConfigError) as err:
        parse(config("https://127.0.0.1:1", f'ca = "{key}"'))
    assert err.value.errors[0][0] == "upstreams[0].tls.ca"
