"""Certificates for the TLS tests: one test CA (trustme), leaf certificates written to files
the proxy's config can name, and client contexts that trust the CA."""

import datetime
import os
import ssl
import tempfile

import trustme

CA = trustme.CA()
OTHER_CA = trustme.CA()  # one the proxy does not trust
_DIR = tempfile.mkdtemp(prefix="edgeproxy-tls-")


def write(name: str, data: bytes) -> str:
    path = os.path.join(_DIR, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def issue(tag: str, *names: str, ca=CA, expired: bool = False) -> tuple[str, str]:
    """(cert file, key file) of a new certificate for ``names``."""
    kwargs = {}
    if expired:
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        kwargs = {"not_before": past - datetime.timedelta(days=30), "not_after": past}
    cert = ca.issue_cert(*names, **kwargs)
    return (write(f"{tag}.crt", cert.cert_chain_pems[0].bytes()
                  + b"".join(p.bytes() for p in cert.cert_chain_pems[1:])),
            write(f"{tag}.key", cert.private_key_pem.bytes()))


def ca_file(ca=CA) -> str:
    return write(f"ca-{id(ca)}.pem", ca.cert_pem.bytes())


def client_context(alpn=None, cert=None) -> ssl.SSLContext:
    """A client that trusts CA (and offers ``alpn``, and ``cert``: a trustme LeafCert)."""
    ctx = ssl.create_default_context()
    CA.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


def server_context(*names: str) -> ssl.SSLContext:
    """A server context (an HTTPS origin) with a certificate for ``names``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert(*names).configure_cert(ctx)
    return ctx
