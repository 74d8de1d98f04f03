"""HTTP/1.1 message rules that httptools (llhttp) leaves to us, and the proxy header tables.

llhttp already rejects: invalid field-name tokens, CTL/NUL/DEL in field values, bare CR or LF,
obs-fold, Content-Length together with Transfer-Encoding, duplicate or non-digit Content-Length,
a Transfer-Encoding whose final coding is not chunked, and invalid chunk framing. What it
accepts and RFC 9112 does not is checked here and in the protocol.
"""

import os
import re

# Header kinds the client protocol tracks while headers arrive (keys are lowercased names).
H_HOST = 1
H_CONTENT_LENGTH = 2
H_TRANSFER_ENCODING = 3
H_CONNECTION = 4
H_EXPECT = 5
H_UPGRADE = 6
H_XFF = 7
H_REQUEST_ID = 8
H_HOP = 9  # hop-by-hop: dropped, never forwarded (RFC 9110 §7.6.1)
H_FORWARDED = 10  # X-Forwarded-Proto/-Host, X-Real-IP: rewritten by the proxy
H_TRACEPARENT = 11  # W3C Trace Context: re-emitted with this hop's span id
H_TRACESTATE = 12
H_FORWARDED_7239 = 13  # RFC 7239 Forwarded: relayed from trusted proxies only
H_VIA = 14  # combined into one field, with this proxy's entry last (RFC 9110 §7.6.3)

# RFC 9110 §7.6.1 hop-by-hop fields, plus Proxy-Connection which old clients still send.
HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
))

REQUEST_KINDS: dict[bytes, int] = {
    b"host": H_HOST,
    b"content-length": H_CONTENT_LENGTH,
    b"transfer-encoding": H_TRANSFER_ENCODING,
    b"connection": H_CONNECTION,
    b"expect": H_EXPECT,
    b"upgrade": H_UPGRADE,
    b"x-forwarded-for": H_XFF,
    b"x-request-id": H_REQUEST_ID,
    b"keep-alive": H_HOP,
    b"proxy-connection": H_HOP,
    b"te": H_HOP,
    b"trailer": H_HOP,
    # Proxy-Authorization is consumed by the proxy it is addressed to; we are that proxy.
    b"proxy-authorization": H_HOP,
    b"x-forwarded-proto": H_FORWARDED,
    b"x-forwarded-host": H_FORWARDED,
    b"x-real-ip": H_FORWARDED,
    b"traceparent": H_TRACEPARENT,
    b"tracestate": H_TRACESTATE,
    b"forwarded": H_FORWARDED_7239,
    b"via": H_VIA,
}

# RFC 9110 §7.2 / RFC 3986 §3.2.2: uri-host [ ":" port ]; reg-name, IPv4 or an IP-literal.
_HOST_RE = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?"
)


def via_entry(via: bytes | None) -> tuple[bytes | None, bytes | None]:
    """This hop's Via entry, "1.1 <via>" (RFC 9110 §7.6.3), and the field line a request that
    came without Via gets; (None, None) when the server sends no Via. One per codec, made when
    a connection takes its settings."""
    if via is None:
        return None, None
    entry = b"1.1 " + via
    return entry, b"Via: " + entry + b"\r\n"


def peer_of(transport, settings) -> tuple[str, bytes, bool]:
    """A new client connection's address ("unix" on a socket path), as bytes too, and whether
    it is a trusted proxy (its X-Forwarded-* count)."""
    peer = transport.get_extra_info("peername")
    ip = peer[0] if peer else "unix"
    return ip, ip.encode(), settings.is_trusted(ip)


def valid_host(value: bytes) -> bool:
    return _HOST_RE.fullmatch(value) is not None


def host_for_routing(value: bytes) -> str:
    """Lowercased host without port, as the router keys hosts."""
    if value.startswith(b"["):
        end = value.find(b"]")
        return value[: end + 1].decode("latin-1").lower()
    colon = value.rfind(b":")
    if colon >= 0:
        value = value[:colon]
    return value.decode("latin-1").lower().rstrip(".")


def connection_tokens(values: list) -> set:
    """Lowercased tokens of every Connection header line (RFC 9110 §7.6.1)."""
    tokens = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def transfer_codings(value: bytes) -> list:
    return [c.strip().lower() for c in value.split(b",") if c.strip()]


# server.tracing, as the data plane reads it.
TRACING_MODES = {"off": 0, "propagate": 1, "always": 2}

# W3C Trace Context §3.2.2: version-format "00": 2, 32 and 16 lowercase hex digits and 2 more.
_TRACEPARENT_RE = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parse_traceparent(value: bytes):
    """(trace-id, trace-flags) of a valid traceparent, else None (§3.2.2: version ff, an
    all-zero id, a wrong length for version 00, or anything not lowercase hex is invalid;
    a later version may append "-..." fields, which are ignored)."""
    value = value.strip(b" \t")
    m = _TRACEPARENT_RE.match(value)
    if m is None:
        return None
    version, trace_id, parent_id, flags = m.groups()
    if version == b"ff" or trace_id == b"0" * 32 or parent_id == b"0" * 16:
        return None
    if len(value) != 55 and (version == b"00" or value[55:56] != b"-"):
        return None
    return trace_id, flags


_random = bytearray()


def random_hex(nbytes: int) -> bytes:
    """Random ids for spans and traces, drawn from a pool refilled 4 KiB at a time."""
    global _random
    if len(_random) < nbytes:
        _random = bytearray(os.urandom(4096))
    chunk = bytes(_random[-nbytes:])
    del _random[-nbytes:]
    return chunk.hex().encode()


_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _pct(m: re.Match) -> str:
    octet = int(m.group(1), 16)
    return chr(octet) if octet in _UNRESERVED else "%" + m.group(1).upper()


def normalize_percent(path: str) -> str:
    """RFC 3986 §6.2.2.1-2: percent-encoded unreserved characters decoded, other hex digits
    uppercased. So "/api/%2e%2e/admin" is "/api/../admin" before dot-segment removal, and
    routes as "/admin" (as nginx does), not as a path under "/api/"; "%2F" stays encoded."""
    return _PCT.sub(_pct, path)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, so "/public/../admin" routes (and is forwarded) as "/admin"."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments[1:], 1):
        last = i == len(segments) - 1
        if seg == "..":
            if len(out) > 0:
                out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def split_target(url: bytes) -> tuple[bytes | None, bytes, bytes]:
    """(authority or None, path, query-with-'?' or b"") of a request target.

    Origin-form is the common case; absolute-form must be accepted by servers (RFC 9112
    §3.2.2), and then its authority replaces the Host header. Raises ValueError otherwise.
    """
    if url[:1] == b"/":
        q = url.find(b"?")
        if q < 0:
            return None, url, b""
        return None, url[:q], url[q:]
    lowered = url[:8].lower()
    if lowered.startswith(b"http://") or lowered.startswith(b"https://"):
        rest = url[url.find(b"//") + 2:]
        slash = rest.find(b"/")
        q = rest.find(b"?")
        cut = min(x for x in (slash, q, len(rest)) if x >= 0)
        authority = rest[:cut]
        if b"@" in authority or not authority:
            raise ValueError("userinfo or empty authority in absolute-form target")
        rest = rest[cut:]
        if rest[:1] != b"/":
            rest = b"/" + rest
        q = rest.find(b"?")
        if q < 0:
            return authority, rest, b""
        return authority, rest[:q], rest[q:]
    raise ValueError("request target is neither origin-form nor absolute-form")


def _reason(status: int) -> bytes:
    from http import HTTPStatus
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


# The HTTP/1.1 status line of every status code, with its registered reason phrase.
STATUS_LINES: dict[int, bytes] = {
    s: b"HTTP/1.1 %d %s\r\n" % (s, _reason(s)) for s in range(100, 600)
}


CHUNK_END = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# RFC 9110 §9.2.2: requests a client may repeat automatically (RFC 9112 §9.3.1.1).
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
