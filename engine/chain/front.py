"""What a listener does to every request before it is routed (engine/control/listeners.py
builds one per listener that needs it; the codec hands it to each Stream as ``front``)."""

from engine.errors import Response, error_response
from engine.wire.tls import client_cert_of, header_value


class ListenerFront:
    """``cert_header``: the name the verified client certificate's subject travels under (a
    client's own copy is always dropped: only the handshake may say who the client is);
    ``peer_certs``: the listener verifies client certificates; ``redirect_port``: answer
    every request with a 308 to https on that port instead."""

    __slots__ = ("cert_header", "cert_header_lower", "peer_certs", "redirect_port")

    def __init__(self, cert_header: str = "", peer_certs: bool = False,
                 redirect_port: int | None = None):
        self.cert_header = cert_header.encode("ascii") if cert_header else None
        self.cert_header_lower = cert_header.lower().encode("ascii") if cert_header else None
        self.peer_certs = peer_certs
        self.redirect_port = redirect_port

    def connection_made(self, stream, transport) -> None:
        if self.peer_certs:
            stream.client_cert = client_cert_of(transport)

    def before_routing(self, ctx):
        """A Response that answers ``ctx`` at once, or None (its headers may be changed)."""
        if self.redirect_port is not None:
            return self._redirect(ctx)
        lower = self.cert_header_lower
        if lower is not None:
            headers = [h for h in ctx.headers if h[0].lower() != lower]
            cert = ctx.stream.client_cert
            if cert is not None:
                headers.append((self.cert_header, header_value(cert.subject)))
            ctx.headers = headers
        return None

    def _redirect(self, ctx):
        # The same URI over https (RFC 9110 §15.4.9: 308 keeps the method and body).
        host = ctx.host
        if not host:
            return error_response("bad_host", ctx.request_id.decode())
        host = host.decode("latin-1")
        if host.startswith("["):
            host = host[:host.index("]") + 1]
        else:
            host = host.partition(":")[0]
        port = self.redirect_port
        authority = host if port == 443 else f"{host}:{port}"
        path = ctx.path if ctx.path.startswith("/") else "/"
        location = f"https://{authority}{path}".encode("latin-1") + ctx.query
        return Response(308, [(b"Location", location)], b"")
