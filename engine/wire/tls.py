"""What a codec reads from a TLS connection: the client certificate the handshake verified."""

import hashlib
from dataclasses import dataclass

from cryptography import x509


@dataclass(frozen=True, slots=True)
class ClientCert:
    """A client certificate verified against the listener's client_ca (mTLS), as filters see
    it on ``ctx.stream.client_cert``."""

    subject: str  # RFC 4514, e.g. "CN=billing,O=Example"
    issuer: str
    serial: str  # hex
    sha256: str  # fingerprint of the DER certificate, hex
    dns_names: tuple[str, ...]
    not_after: float  # POSIX time


def client_cert_of(transport) -> ClientCert | None:
    """The verified client certificate of ``transport``'s TLS connection, or None (none sent,
    or not a TLS connection). OpenSSL hands over a peer certificate only once it verified it
    (the listener's verify mode is optional or required)."""
    sslobj = transport.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return ClientCert(cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                      f"{cert.serial_number:x}", hashlib.sha256(der).hexdigest(), names,
                      cert.not_valid_after_utc.timestamp())


def header_value(text: str) -> bytes:
    """``text`` as a header field value: non-ASCII and control characters become "\\XX"
    escapes (RFC 4514 §2.4 style), so a certificate can never split a header."""
    return "".join(c if " " <= c <= "~" else "".join(f"\\{b:02X}" for b in c.encode())
                   for c in text).encode("ascii")
