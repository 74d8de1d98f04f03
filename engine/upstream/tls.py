"""TLS to upstream servers (``https://`` URLs): the client context an upstream's servers are
connected with."""

import ssl


def client_context(tls_cfg) -> ssl.SSLContext:
    """Verification against ``tls_cfg.ca`` (else the system's trust store) unless ``verify``
    is off, TLS 1.2 at least, and the client certificate when one is set. ALPN offers
    http/1.1 only: upstreams are spoken to in HTTP/1.1."""
    ctx = ssl.create_default_context(cafile=tls_cfg.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls_cfg.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls_cfg.cert is not None:
        ctx.load_cert_chain(tls_cfg.cert, tls_cfg.key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
