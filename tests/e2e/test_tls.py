"""TLS on listeners end to end: certificates by SNI, versions, bad certificates refused as
config errors naming the listener, rotation on reload without a failed request, session
resumption, client certificates (mTLS) and redirect_https."""

import ssl
import threading

import pytest

from engine.chain.schema import ConfigError
from engine.control.config import INTERMEDIATE_CIPHERS, parse
from tests.support.cli import CliProxy
from tests.support.client import Conn
from tests.support.e2e import wait_until
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy
from tests.support.tls import CA, OTHER_CA, ca_file, client_context, issue

DEFAULT = issue("default", "default.test")
EXACT = issue("exact", "api.example.test")
WILD = issue("wild", "*.example.test")


def config(origin_url: str, tls: str, *, extra: str = "", http2: bool = False) -> str:
    return f"""
[server]
access_log = "off"

[[listeners]]
name = "secure"
listen = "127.0.0.1:0"
http2 = {str(http2).lower()}
[listeners.tls]
{tls}

{extra}

[[upstreams]]
name = "app"
servers = ["{origin_url}"]

[[routes]]
name = "all"
upstream = "app"
"""


def certs(default=DEFAULT, *more, extra: str = "") -> str:
    lines = [f'cert = "{default[0]}"', f'key = "{default[1]}"', extra]
    lines += [f'[[listeners.tls.certificates]]\ncert = "{c}"\nkey = "{k}"' for c, k in more]
    return "\n".join(lines)


def served_name(port: int, sni: str | None) -> str:
    """The subjectAltName of the certificate the proxy serves for ``sni``."""
    ctx = client_context()
    ctx.check_hostname = False
    with Conn(port, tls=ctx, server_name=sni) as c:
        return c.sock.getpeercert()["subjectAltName"][0][1]


@pytest.fixture(scope="module")
def origin():
    with Origin(lambda req: ok()) as o:
        yield o


def test_certificate_is_chosen_by_sni_exact_then_wildcard_then_default(origin):
    with InProcessProxy(config(origin.url, certs(DEFAULT, WILD, EXACT))) as p:
        assert served_name(p.port, "api.example.test") == "api.example.test"
        assert served_name(p.port, "www.example.test") == "*.example.test"
        assert served_name(p.port, "API.Example.Test") == "api.example.test"
        # a wildcard covers one label only (RFC 6125 §6.4.3)
        assert served_name(p.port, "a.b.example.test") == "default.test"
        assert served_name(p.port, None) == "default.test"
        # wrong SNI: the default certificate, which a verifying client refuses
        with pytest.raises(ssl.SSLCertVerificationError):
            Conn(p.port, tls=client_context(), server_name="unknown.test")
        before = len(origin.requests)
        with Conn(p.port, tls=client_context(), server_name="www.example.test") as c:
            assert c.request(host=b"www.example.test").status == 200
        assert origin.requests[before].header(b"x-forwarded-proto") == b"https"


def test_strict_sni_refuses_a_name_no_certificate_has(origin):
    text = config(origin.url, certs(DEFAULT, EXACT, extra="strict_sni = true"))
    with InProcessProxy(text) as p:
        assert served_name(p.port, "api.example.test") == "api.example.test"
        with pytest.raises(ssl.SSLError):  # (uvloop closes before the alert is read)
            served_name(p.port, "other.test")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # (ssl.TLSVersion.TLSv1)
def test_only_tls_1_2_and_1_3_with_intermediate_ciphers(origin):
    with InProcessProxy(config(origin.url, certs())) as p:
        old = client_context()
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError):
            Conn(p.port, tls=old, server_name="default.test")
        tls12 = client_context()
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with Conn(p.port, tls=tls12, server_name="default.test") as c:
            assert c.sock.version() == "TLSv1.2"
            assert c.sock.cipher()[0] in INTERMEDIATE_CIPHERS.split(":")
        cbc = client_context()
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA")  # CBC: not in Mozilla intermediate
        with pytest.raises(ssl.SSLError):
            Conn(p.port, tls=cbc, server_name="default.test")


@pytest.mark.parametrize("tls, path, message", [
    pytest.param(f'cert = "{DEFAULT[0]}"\nkey = "{EXACT[1]}"', "listeners[0].tls.key",
                 "is not the private key", id="mismatched-key"),
    pytest.param(certs(issue("expired", "old.test", expired=True)), "listeners[0].tls.cert",
                 "expired on", id="expired"),
    pytest.param(f'cert = "/nonexistent.pem"\nkey = "{DEFAULT[1]}"', "listeners[0].tls.cert",
                 "cannot read", id="missing-file"),
    pytest.param(f'cert = "{DEFAULT[1]}"\nkey = "{DEFAULT[1]}"', "listeners[0].tls.cert",
                 "no PEM certificate", id="key-as-cert"),
    pytest.param(certs(DEFAULT, (EXACT[0], WILD[1])),
                 "listeners[0].tls.certificates[0].key", "is not the private key",
                 id="mismatched-sni-key"),
    pytest.param(certs() + '\nclient_auth = "required"', "listeners[0].tls.client_ca",
                 "is required", id="client-auth-without-ca"),
])
def test_a_bad_certificate_is_a_config_error_naming_the_listener(tls, path, message):
    with pytest.raises(ConfigError) as err:
        parse(config("http://127.0.0.1:1", tls))
    assert any(p == path and message in m for p, m in err.value.errors), err.value.errors


def test_new_certificate_files_make_a_new_config():
    a = parse(config("http://127.0.0.1:1", certs()))
    b = parse(config("http://127.0.0.1:1", certs()))
    assert a == b
    path = issue("rotating", "default.test")
    c = parse(config("http://127.0.0.1:1", certs(path)))
    issue("rotating", "default.test")  # new contents, same paths
    assert parse(config("http://127.0.0.1:1", certs(path))) != c


def test_certificates_rotate_on_reload_without_a_failed_request(origin):
    first = issue("rot-a", "default.test")
    second = issue("rot-b", "default.test")
    with InProcessProxy(config(origin.url, certs(first))) as p:
        kept = Conn(p.port, tls=client_context(), server_name="default.test")
        serial = kept.sock.getpeercert()["serialNumber"]
        failures, done, seen = [], threading.Event(), set()

        def load():
            while not done.is_set():
                try:
                    with Conn(p.port, tls=client_context(), server_name="default.test") as c:
                        seen.add(c.sock.getpeercert()["serialNumber"])
                        if c.request().status != 200:
                            failures.append("status")
                except Exception as exc:  # any failed request fails the test
                    failures.append(repr(exc))

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            p.swap(config(origin.url, certs(second)))
            new = served_serial(p.port)
        finally:
            done.set()
            for t in threads:
                t.join(10)
        assert not failures
        assert new != serial and new in seen or new != serial
        # a connection made before the reload goes on, on its old certificate
        assert kept.request().status == 200
        kept.__exit__()


def test_a_certificate_renewed_in_place_is_served_without_a_reload_command(origin, tmp_path):
    # certbot's way: new files behind the same paths, no signal. The config watch sees them.
    first, second = issue("renew-a", "default.test"), issue("renew-b", "default.test")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    cert.write_bytes(open(first[0], "rb").read())
    key.write_bytes(open(first[1], "rb").read())
    with CliProxy(tmp_path, config(origin.url, certs((str(cert), str(key))))) as p:
        before = served_serial(p.port)
        key.write_bytes(open(second[1], "rb").read())
        cert.write_bytes(open(second[0], "rb").read())
        assert wait_until(lambda: served_serial(p.port) != before, timeout=10, step=0.2)
        assert p.admin("GET", "/status")[1]["recent_reloads"][-1]["trigger"] == "file change"


def served_serial(port: int) -> str:
    with Conn(port, tls=client_context(), server_name="default.test") as c:
        return c.sock.getpeercert()["serialNumber"]


def test_sessions_resume_with_tickets(origin):
    with InProcessProxy(config(origin.url, certs())) as p:
        ctx = client_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # (a 1.2 ticket is there at once)
        with Conn(p.port, tls=ctx, server_name="default.test") as c:
            assert c.request().status == 200
            session = c.sock.session
        sock = ctx.wrap_socket(__import__("socket").create_connection(("127.0.0.1", p.port)),
                               server_hostname="default.test", session=session)
        try:
            assert sock.session_reused
        finally:
            sock.close()


MTLS = certs() + f'\nclient_ca = "{ca_file()}"\nclient_auth = "%s"'


def test_required_client_certificate_is_verified_and_forwarded(origin):
    with InProcessProxy(config(origin.url, MTLS % "required")) as p:
        leaf = CA.issue_cert("billing.test", common_name="billing")
        before = len(origin.requests)
        with Conn(p.port, tls=client_context(cert=leaf), server_name="default.test") as c:
            forged = ((b"X-Client-Cert-Subject", b"CN=admin"),)
            assert c.request(headers=forged).status == 200
        assert origin.requests[before].header(b"x-client-cert-subject").startswith(b"CN=billing,")
        for bad in (None, OTHER_CA.issue_cert("intruder.test")):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                with Conn(p.port, tls=client_context(cert=bad),
                          server_name="default.test") as c:
                    c.request()  # (TLS 1.3: the refusal arrives after the handshake)


def test_a_client_certificate_on_http2_is_forwarded_too(origin):
    # The HTTP/2 codec takes the certificate the same way as HTTP/1.1 (the listener's front).
    import socket

    import h2.connection
    import h2.events

    with InProcessProxy(config(origin.url, MTLS % "required", http2=True)) as p:
        leaf = CA.issue_cert("billing.test", common_name="billing")
        before = len(origin.requests)
        ctx = client_context(alpn=["h2"], cert=leaf)
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.port), timeout=5),
                             server_hostname="default.test") as sock:
            assert sock.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection()
            conn.initiate_connection()
            conn.send_headers(1, [(":method", "GET"), (":path", "/mtls"), (":scheme", "https"),
                                  (":authority", "default.test"),
                                  ("x-client-cert-subject", "CN=admin")], end_stream=True)
            sock.sendall(conn.data_to_send())
            ended = False
            while not ended:
                data = sock.recv(65536)
                assert data, "the proxy closed the connection"
                ended = any(isinstance(e, h2.events.StreamEnded)
                            for e in conn.receive_data(data))
                sock.sendall(conn.data_to_send())
        assert origin.requests[before].header(b"x-client-cert-subject").startswith(b"CN=billing,")


def test_optional_client_certificate_strips_a_forged_subject(origin):
    with InProcessProxy(config(origin.url, MTLS % "optional")) as p:
        before = len(origin.requests)
        with Conn(p.port, tls=client_context(), server_name="default.test") as c:
            assert c.request(headers=((b"X-Client-Cert-Subject", b"CN=admin"),)).status == 200
        assert origin.requests[before].header(b"x-client-cert-subject") is None


def test_redirect_https_answers_308_to_the_same_uri(origin):
    text = f"""
[server]
access_log = "off"
[[listeners]]
name = "plain"
listen = "127.0.0.1:0"
redirect_https = 8443
[[upstreams]]
name = "app"
servers = ["{origin.url}"]
[[routes]]
name = "all"
upstream = "app"
"""
    with InProcessProxy(text) as p, Conn(p.port) as c:
        r = c.request("POST", "/a/b?x=1", host=b"shop.test:80", body=b"{}")
        assert r.status == 308
        assert r.header(b"location") == b"https://shop.test:8443/a/b?x=1"


def test_redirect_https_is_for_plain_listeners_only():
    text = config("http://127.0.0.1:1", certs()).replace("http2 = false",
                                                        "http2 = false\nredirect_https = 443")
    with pytest.raises(ConfigError, match="listeners.0..redirect_https"):
        parse(text)
