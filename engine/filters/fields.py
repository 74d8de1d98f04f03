"""Helpers on response header lists ([(name, value)] bytes) shared by the browser-facing
filters (cors, compression, static_files, security_headers)."""


def field_values(headers: list, lname: bytes) -> list:
    """Every value of the field named ``lname`` (lowercase), in order."""
    return [v for n, v in headers if n.lower() == lname]


def list_tokens(values) -> list:
    """The lowercase members of a comma-separated list field (RFC 9110 §5.6.1)."""
    out = []
    for value in values:
        for part in value.split(b","):
            part = part.strip().lower()
            if part:
                out.append(part)
    return out


def add_vary(headers: list, token: bytes) -> None:
    """Make the answer vary on ``token`` (a field name) once: a cache must not serve it to a
    request that differs there (RFC 9110 §12.5.5). "Vary: *" already covers everything."""
    present = list_tokens(field_values(headers, b"vary"))
    if b"*" not in present and token.lower() not in present:
        headers.append((b"Vary", token))


def parse_qlist(value: bytes) -> dict:
    """An Accept-Encoding-style list as {lowercase token: q} (RFC 9110 §12.4.2, §12.5.3); a
    bad q reads as 0 (not acceptable), so a malformed entry never widens what is accepted."""
    out = {}
    for part in value.split(b","):
        item, _, params = part.partition(b";")
        token = item.strip().lower()
        if not token:
            continue
        q = 1.0
        for param in params.split(b";"):
            name, _, val = param.partition(b"=")
            if name.strip().lower() == b"q":
                try:
                    q = float(val.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        out[token] = max(q, out.get(token, 0.0)) if token in out else q
    return out
