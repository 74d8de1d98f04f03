"""Listener TLS: certificates read and checked, picked by SNI, and the SSL contexts a worker's
listeners hand to uvloop.

A TLS listener's server is created once per worker with a *front* context whose SNI callback
switches each handshake to the certificate the serving snapshot holds (``Certificates``, one
per listener in engine/control/snapshot.Runtime). A reload that brings new certificate files
compiles a new snapshot, and the next handshake uses them: no socket is closed, no live
connection dropped. Settings OpenSSL copies into a connection before the SNI callback runs
(versions, ciphers, client verification mode, tickets) are the listener's ``TLSPolicy``:
changing one is a listener change, served by new workers while the old ones drain.

OpenSSL facts this relies on (ssl/statem, OpenSSL 3): the servername callback runs for every
ClientHello, with or without SNI; after it switches SSL_CTX the certificate, the chain's
verify store and the ALPN choice come from the new context, while session tickets stay with
the first (the front) one, so resumption survives a certificate reload.
"""

import datetime
import hashlib
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from engine.chain.schema import join

ALPN_H2 = "h2"
ALPN_HTTP11 = "http/1.1"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"off": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True, slots=True)
class TLSPolicy:
    """What every connection of a TLS listener gets whatever certificate it is served."""

    min_version: str = "1.2"
    ciphers: str = ""
    session_tickets: bool = True
    handshake_timeout: float = 10.0
    client_auth: str = "off"
    alpn: tuple[str, ...] = (ALPN_HTTP11,)

    @classmethod
    def of(cls, tls_cfg, http2: bool) -> "TLSPolicy":
        return cls(tls_cfg.min_version, tls_cfg.ciphers, tls_cfg.session_tickets,
                   tls_cfg.handshake_timeout, tls_cfg.client_auth,
                   (ALPN_H2, ALPN_HTTP11) if http2 else (ALPN_HTTP11,))


def server_context(policy: TLSPolicy) -> ssl.SSLContext:
    """A server context with ``policy``'s settings and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[policy.min_version]
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    if policy.ciphers:
        ctx.set_ciphers(policy.ciphers)
    # Client-initiated renegotiation only costs the server CPU (a known DoS lever).
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    if not policy.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0  # TLS 1.3 tickets too
    ctx.verify_mode = _CLIENT_AUTH[policy.client_auth]
    ctx.set_alpn_protocols(list(policy.alpn))
    return ctx


class CertificateError(ValueError):
    """A certificate or key file that cannot serve: ``key`` is the config key at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CertificateError(key, f'cannot read "{path}": {exc.strerror}') from None


def read_pair(cert_path: str, key_path: str, now: datetime.datetime) -> tuple:
    """(leaf certificate, bytes read) of a PEM certificate chain and its private key; raises
    CertificateError ("cert" or "key") when they cannot serve: unreadable, not PEM, expired
    or not yet valid, or a key that is not the certificate's."""
    cert_pem = _read(cert_path, "cert")
    key_pem = _read(key_path, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertificateError("cert", f'"{cert_path}" holds no PEM certificate') from None
    leaf = chain[0]
    if leaf.not_valid_after_utc < now:
        # Every client would refuse it: better refused here, where the old config keeps
        # serving, than at each handshake.
        raise CertificateError("cert", f'"{cert_path}" expired on '
                                       f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise CertificateError("cert", f'"{cert_path}" is not valid before '
                                       f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CertificateError("key", f'"{key_path}" holds no unencrypted PEM private '
                                      "key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise CertificateError("key", f'"{key_path}" is not the private key of the '
                                      f'certificate in "{cert_path}"')
    return leaf, cert_pem + key_pem


def dns_names(leaf) -> list[str]:
    """The DNS names a certificate is for (subjectAltName; clients ignore the CN when it has
    one, RFC 6125 §6.4.4), lowercased."""
    try:
        san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return []
    return [n.lower().rstrip(".") for n in san.value.get_values_for_type(x509.DNSName)]


class Certificates:
    """One TLS listener's certificates, by SNI name: exact names first, then wildcards
    ("*.example.com" covers one label, RFC 6125 §6.4.3), then the default."""

    def __init__(self, tls_cfg, policy: TLSPolicy):
        now = datetime.datetime.now(datetime.UTC)
        self.strict = tls_cfg.strict_sni
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}
        ca = tls_cfg.client_ca
        self.default = self._load(policy, tls_cfg.cert, tls_cfg.key, (), ca, now)
        for entry in tls_cfg.certificates:
            self._load(policy, entry.cert, entry.key, entry.names, ca, now)

    def _load(self, policy, cert_path, key_path, names, ca, now) -> ssl.SSLContext:
        leaf, _ = read_pair(cert_path, key_path, now)
        ctx = server_context(policy)
        ctx.load_cert_chain(cert_path, key_path)
        if ca is not None:
            ctx.load_verify_locations(ca)  # the verify store is this context's (see above)
        for name in names or dns_names(leaf):
            table, name = ((self.wildcard, name[2:]) if name.startswith("*.")
                           else (self.exact, name))
            table.setdefault(name, ctx)  # the first certificate that claims a name keeps it
        return ctx

    def pick(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context serving ``server_name`` (None: the client sent no SNI); None when
        strict_sni refuses it."""
        if server_name is None:
            return None if self.strict else self.default
        name = server_name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is None:
            _, dot, parent = name.partition(".")
            ctx = self.wildcard.get(parent) if dot else None
        if ctx is None and not self.strict:
            ctx = self.default
        return ctx


def front_context(policy: TLSPolicy, current) -> ssl.SSLContext:
    """The context a listener's server is created with; ``current()`` returns the
    Certificates of the snapshot serving now, asked at every handshake."""
    ctx = server_context(policy)

    def choose(sslobj, server_name, _ctx):
        chosen = current().pick(server_name)
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME  # RFC 6066 §3
        sslobj.context = chosen
        return None

    ctx.sni_callback = choose
    return ctx


def tls_files(cfg) -> tuple[str, ...]:
    """Every certificate, key and CA file the config names: the config watch reloads when
    one changes (a certificate renewed in place, by certbot say), not only the config."""
    files = []
    for entry in cfg.listeners:
        tls = entry.tls if entry is not None else None
        if tls is not None:
            files += [tls.cert, tls.key, tls.client_ca]
            files += [p for c in tls.certificates if c is not None for p in (c.cert, c.key)]
    for up in cfg.upstreams:
        if up is not None:
            files += [up.tls.ca, up.tls.cert, up.tls.key]
    return tuple(sorted({f for f in files if f}))


def check_tls(cfg, errors: list) -> None:
    """Read every certificate and key file the config names (listeners and upstreams) and
    record each one that cannot serve under its key path; a good config gets the digest of
    their contents (``files_digest``), so a reload notices new files behind the same paths."""
    now = datetime.datetime.now(datetime.UTC)
    for i, entry in enumerate(cfg.listeners):
        if entry is None:
            continue
        path = f"listeners[{i}]"
        tls = entry.tls
        if tls is None:
            continue
        if entry.redirect_https is not None:
            errors.append((join(path, "redirect_https"), "is for a plain listener; this one "
                                                         "has tls"))
        path = join(path, "tls")
        digest = hashlib.sha256()
        pairs = [(path, tls.cert, tls.key)] + [
            (f"{path}.certificates[{j}]", c.cert, c.key) for j, c in enumerate(tls.certificates)
            if c is not None]
        for where, cert_path, key_path in pairs:
            try:
                _, data = read_pair(cert_path, key_path, now)
            except CertificateError as exc:
                errors.append((join(where, exc.key), str(exc)))
                continue
            digest.update(data)
        if tls.client_auth != "off" and tls.client_ca is None:
            errors.append((join(path, "client_ca"), f'is required with client_auth = '
                                                    f'"{tls.client_auth}"'))
        if tls.client_ca is not None:
            _check_ca(tls.client_ca, join(path, "client_ca"), digest, errors)
        if tls.ciphers:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(tls.ciphers)
            except ssl.SSLError:
                errors.append((join(path, "ciphers"), "OpenSSL knows none of these ciphers"))
        object.__setattr__(tls, "files_digest", digest.hexdigest())
    for i, up in enumerate(cfg.upstreams):
        if up is None:
            continue
        _check_upstream_tls(up.tls, f"upstreams[{i}].tls", now, errors)


def _check_ca(ca_path: str, where: str, digest, errors: list) -> None:
    try:
        data = _read(ca_path, "")
    except CertificateError as exc:
        errors.append((where, str(exc)))
        return
    try:
        ssl.create_default_context(cadata=data.decode("latin-1"))
    except (ssl.SSLError, ValueError):
        errors.append((where, f'"{ca_path}" holds no PEM CA certificate'))
        return
    digest.update(data)


def _check_upstream_tls(tls, path: str, now, errors: list) -> None:
    digest = hashlib.sha256()
    if tls.ca is not None:
        _check_ca(tls.ca, join(path, "ca"), digest, errors)
    if (tls.cert is None) != (tls.key is None):
        errors.append((join(path, "cert" if tls.cert is None else "key"),
                       "is required with " + ("key" if tls.cert is None else "cert")))
    elif tls.cert is not None:
        try:
            _, data = read_pair(tls.cert, tls.key, now)
            digest.update(data)
        except CertificateError as exc:
            errors.append((join(path, exc.key), str(exc)))
    object.__setattr__(tls, "files_digest", digest.hexdigest())
