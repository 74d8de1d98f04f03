"""RFC 9111 as a shared cache, as pure functions: directive and date parsing, storability,
freshness, age, Vary matching and conditional requests. No I/O and no clock: time is an
argument (``now``: wall-clock seconds, as HTTP dates are). engine/filters/cache.py applies
them to requests; tests/engine/filters/test_cache_policy.py checks them case by case.

Citations: "§n" is RFC 9111 (HTTP Caching), "RFC 9110 §n" HTTP Semantics, RFC 5861 the
stale-while-revalidate / stale-if-error extensions.
"""

import calendar
import re

import http_sf

# §1.2.2: a delta-seconds too large to represent is taken as 2^31.
DELTA_MAX = 2147483648

# RFC 9110 §15.1: statuses heuristically cacheable by default (§4.2.2).
HEURISTIC = frozenset((200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501))
# Statuses whose caching semantics this cache implements, for must-understand (§5.2.2.3).
# 206 is left out: this cache does not combine partial content (§3.3), nor store it.
UNDERSTOOD = frozenset((200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414,
                        451, 501))
# RFC 9110 §9.2.1: safe methods; any other method that succeeds invalidates (§4.4).
SAFE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))

# §3.1: header fields a cache does not store (hop-by-hop and proxy-only, RFC 9110 §7.6.1),
# plus Age (recomputed on every use, §5.1) and the request id the proxy sets on each answer.
NOT_STORED = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"te",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate",
                        b"proxy-authentication-info", b"proxy-authorization", b"age",
                        b"x-request-id", b"content-length"))
# §3.2: a 304 or HEAD response updates stored fields except those not stored at all, the
# Content-Length, and those the stored response depends upon: the fields that describe the
# stored bytes (their coding, the range they are, their digests) stay the stored body's, so
# a 304 that names another coding cannot make a gzip body pass for identity. The ETag stays
# too: a 304 only selects a response whose validator it matches (§4.3.4), or one without.
NOT_UPDATED = NOT_STORED | frozenset((b"content-encoding", b"content-range", b"content-md5",
                                      b"content-digest", b"digest", b"etag"))
# RFC 9110 §15.4.5: what a 304 carries of the stored response.
NOT_MODIFIED_FIELDS = frozenset((b"cache-control", b"content-location", b"date", b"etag",
                                 b"expires", b"vary", b"last-modified"))

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                   b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OWS = b" \t"


_PARSED = {}  # one Cache-Control line -> its directives; origins repeat the same few lines
_PARSED_MAX = 512


def parse_directives(values) -> dict:
    """``parse_directives_uncached``, remembered for single lines. The dict returned is
    shared: callers only read it."""
    if len(values) == 1:
        got = _PARSED.get(values[0])
        if got is None:
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            got = _PARSED[values[0]] = parse_directives_uncached(values)
        return got
    return parse_directives_uncached(values)


def parse_directives_uncached(values) -> dict:
    """Cache-Control field lines (§5.2) as {lowercase name: value or None}.

    The grammar is RFC 9110 §5.6.2/§5.6.4: ``token [ "=" ( token / quoted-string ) ]``, comma
    separated, lines combined as one list. A quoted value is unquoted (``max-age="60"`` is 60:
    §5.2 asks recipients to accept both forms). A member that does not parse (``max-age =5``,
    an unterminated quote) is dropped, up to the next comma outside quotes. A directive given
    twice keeps its first value (§4.2.1)."""
    out = {}
    for raw in values:
        n = len(raw)
        i = 0
        while i < n:
            while i < n and (raw[i] in _OWS or raw[i] == 44):  # OWS and empty list members
                i += 1
            start = i
            while i < n and raw[i] in _TCHAR:
                i += 1
            name = raw[start:i].decode("ascii").lower() if i > start else None
            value = None
            ok = name is not None
            if ok and i < n and raw[i] == 61:  # "="
                i += 1
                if i < n and raw[i] == 34:  # quoted-string
                    i += 1
                    chars = bytearray()
                    closed = False
                    while i < n:
                        c = raw[i]
                        if c == 92 and i + 1 < n:  # quoted-pair
                            chars.append(raw[i + 1])
                            i += 2
                            continue
                        i += 1
                        if c == 34:
                            closed = True
                            break
                        chars.append(c)
                    ok = closed
                    value = chars.decode("latin-1")
                else:
                    start = i
                    while i < n and raw[i] in _TCHAR:
                        i += 1
                    value = raw[start:i].decode("ascii")
            while i < n and raw[i] in _OWS:
                i += 1
            if i < n and raw[i] != 44:
                ok = False  # junk after the member: skip to the next comma outside quotes
                quoted = False
                while i < n and (quoted or raw[i] != 44):
                    if raw[i] == 34:
                        quoted = not quoted
                    elif raw[i] == 92 and quoted:
                        i += 1
                    i += 1
            if ok and name not in out:
                out[name] = value
    return out


def delta_seconds(value) -> int | None:
    """§1.2.2 delta-seconds: digits only (leading zeros allowed), capped at 2^31; None when
    absent or invalid."""
    if not value or not value.isdigit() or not value.isascii():
        return None
    return min(int(value), DELTA_MAX)


_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
# RFC 9110 §5.6.7: IMF-fixdate, and the obsolete rfc850-date and asctime-date, which a
# recipient must accept. Names are matched without regard to case, as most caches do.
_IMF = re.compile(rb"[A-Za-z]{3}, (\d\d) ([A-Za-z]{3}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT")
_RFC850 = re.compile(rb"[A-Za-z]{6,9}, (\d\d)-([A-Za-z]{3})-(\d\d) (\d\d):(\d\d):(\d\d) GMT")
_ASCTIME = re.compile(rb"[A-Za-z]{3} ([A-Za-z]{3}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{4})")


def parse_date(value, now: float = 0.0) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7) as epoch seconds; None when it is not one."""
    if value is None:
        return None
    value = value.strip(_OWS)
    m = _IMF.fullmatch(value)
    if m is not None:
        day, mon, year, hh, mm, ss = m.groups()
    else:
        m = _RFC850.fullmatch(value)
        if m is not None:
            day, mon, yy, hh, mm, ss = m.groups()
            # RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is in the
            # past century.
            year = 2000 + int(yy)
            if now and year > _year(now) + 50:
                year -= 100
        else:
            m = _ASCTIME.fullmatch(value)
            if m is None:
                return None
            mon, day, hh, mm, ss, year = m.groups()
    month = _MONTHS.get(mon.decode("ascii").lower())
    if month is None:
        return None
    try:
        day, year, hh, mm, ss = int(day), int(year), int(hh), int(mm), int(ss)
        if not (1 <= day <= 31 and hh < 24 and mm < 60 and ss < 61):
            return None
        return float(calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def _year(now: float) -> int:
    return 1970 + int(now // 31556952)


def field_values(headers, lname: bytes) -> list:
    """Every line of a field (``lname`` lowercase), in order."""
    return [v for n, v in headers if n.lower() == lname]


def first_member(values):
    """The first list member of a field meant to be a singleton (§5.1 Age)."""
    if not values:
        return None
    return values[0].split(b",", 1)[0].strip(_OWS)


class Stored:
    """One stored response and what RFC 9111 needs to reuse it. Built by ``storable``."""

    __slots__ = ("status", "headers", "body", "size", "cc", "request_time", "response_time",
                 "date", "age", "lifetime", "etag", "last_modified", "vary", "no_cache",
                 "revalidate", "auth_ok", "swr", "sie", "tags", "secondary")

    def age_at(self, now: float) -> float:
        """current_age (§4.2.3)."""
        apparent = max(0.0, self.response_time - self.date)
        corrected_age = self.age + (self.response_time - self.request_time)
        return max(apparent, corrected_age) + (now - self.response_time)

    def freshen(self, headers, request_time: float, response_time: float, now: float,
                heuristic_max: float, targets=()) -> None:
        """§4.3.4: the header fields of a 304 (or a HEAD response, §4.3.5) replace the stored
        ones of the same name, and freshness is recomputed as of the new response."""
        update = {}
        for name, value in headers:
            lname = name.lower()
            if lname not in NOT_UPDATED:
                update.setdefault(lname, []).append((name, value))
        if not update:
            return
        merged = [h for h in self.headers if h[0].lower() not in update]
        for group in update.values():
            merged.extend(group)
        fresh = describe(self.status, merged, request_time, response_time, now, heuristic_max,
                         targets)
        for attr in ("headers", "cc", "request_time", "response_time", "date", "age",
                     "lifetime", "etag", "last_modified", "vary", "no_cache", "revalidate",
                     "auth_ok", "swr", "sie"):
            setattr(self, attr, getattr(fresh, attr))


def describe(status: int, headers: list, request_time: float, response_time: float,
             now: float, heuristic_max: float, targets=()) -> Stored:
    """A Stored for a response (no storability decision: see ``storable``). ``targets``: the
    targeted fields this cache obeys (``response_directives``)."""
    s = Stored()
    s.status = status
    s.headers = [(n, v) for n, v in headers if n.lower() not in NOT_STORED]
    s.body = b""
    s.size = 0
    cc, targeted = response_directives(headers, targets)
    s.cc = cc
    s.request_time = request_time
    s.response_time = response_time
    dates = field_values(headers, b"date")
    date = parse_date(dates[0], now) if dates else None
    s.date = response_time if date is None else date  # §4.2.3: else the receive time
    age = delta_seconds(_text(first_member(field_values(headers, b"age"))))
    s.age = float(age or 0)  # an invalid Age is ignored
    s.lifetime = freshness_lifetime(status, cc, headers, s.date, now, heuristic_max, targeted)
    etag = field_values(headers, b"etag")
    s.etag = etag[0].strip(_OWS) if etag else None
    lm = field_values(headers, b"last-modified")
    s.last_modified = lm[0].strip(_OWS) if lm else None
    s.vary = vary_names(headers)
    # §5.2.2.4 no-cache: reuse only after validation. Its qualified form (no-cache="a, b")
    # only keeps the listed fields from being reused without validation; §5.2.2.7: a shared
    # cache does not store the fields a qualified private lists. Both lists are left out of
    # what is stored, and the rest is reused as usual.
    s.no_cache = "no-cache" in cc and cc["no-cache"] is None
    omit = field_names(cc.get("no-cache")) | field_names(cc.get("private"))
    if omit:
        s.headers = [(n, v) for n, v in s.headers if n.lower() not in omit]
    # §5.2.2.2 must-revalidate, §5.2.2.8 proxy-revalidate and §5.2.2.10 s-maxage (which
    # implies proxy-revalidate for a shared cache): never served stale.
    s.revalidate = "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc
    # §3.5: what allows reuse for requests with Authorization.
    s.auth_ok = "public" in cc or "must-revalidate" in cc or "s-maxage" in cc
    s.swr = delta_seconds(cc.get("stale-while-revalidate")) or 0  # RFC 5861 §3
    s.sie = delta_seconds(cc.get("stale-if-error")) or 0  # RFC 5861 §4
    s.tags = ()
    s.secondary = ()
    return s


def field_names(value) -> frozenset:
    """The field names of a qualified directive's list (``no-cache="a, b"``), lowercase."""
    if not value:
        return frozenset()
    return frozenset(m.strip(" \t").lower().encode("latin-1") for m in value.split(",")
                     if m.strip(" \t"))


def _text(value):
    return value.decode("latin-1") if value is not None else None


def freshness_lifetime(status: int, cc: dict, headers: list, date: float, now: float,
                       heuristic_max: float, targeted: bool = False) -> float:
    """§4.2.1 for a shared cache: s-maxage, else max-age, else Expires - Date, else a
    heuristic (§4.2.2). Invalid explicit values make the response stale (lifetime 0).
    ``targeted``: ``cc`` is a targeted field's, and Expires does not count (RFC 9213 §2.1)."""
    if "s-maxage" in cc:
        return float(delta_seconds(cc["s-maxage"]) or 0)
    if "max-age" in cc:
        return float(delta_seconds(cc["max-age"]) or 0)
    expires = () if targeted else field_values(headers, b"expires")
    if expires:
        # §5.3: an invalid date (such as "0") is in the past; of several, the first counts
        # (§4.2.1).
        when = parse_date(expires[0], now)
        return 0.0 if when is None else max(0.0, when - date)
    if status in HEURISTIC or "public" in cc:
        lm = field_values(headers, b"last-modified")
        modified = parse_date(lm[0], now) if lm else None
        if modified is not None and modified < date:
            # §4.2.2: a fraction of the time since the last change; 10% is the usual one.
            return min(0.1 * (date - modified), heuristic_max)
    return 0.0


def has_explicit_freshness(cc: dict, headers: list, targeted: bool = False) -> bool:
    return ("max-age" in cc or "s-maxage" in cc or
            (not targeted and any(n.lower() == b"expires" for n, _ in headers)))


def storable(status: int, cc: dict, headers: list, request_cc: dict,
             authorized: bool, targeted: bool = False) -> bool:
    """§3: may a shared cache store this response to a GET? (The caller checks the method,
    Vary: * and its own policy, e.g. Set-Cookie.) ``cc`` and ``targeted``: as
    ``response_directives`` gives them."""
    if status < 200 or status in (206, 304):
        return False  # final, and not a partial or a validation answer (§3, §3.3)
    if "must-understand" in cc:
        # §5.2.2.3: only when the status is understood; then no-store is overridden.
        if status not in UNDERSTOOD:
            return False
    elif "no-store" in cc:
        return False  # §5.2.2.5
    if "no-store" in request_cc:
        return False  # §5.2.1.5
    if "private" in cc and cc["private"] is None:
        return False  # §5.2.2.7 (the qualified form only withholds the fields it lists)
    if authorized and not ("public" in cc or "must-revalidate" in cc or "s-maxage" in cc):
        return False  # §3.5
    # §3: something that says it may be reused, or a status cacheable by default.
    return (has_explicit_freshness(cc, headers, targeted) or "public" in cc
            or status in HEURISTIC)


# -- targeted cache control (RFC 9213)

# RFC 9213 §2.2: directives whose value is delta-seconds take an sf-integer.
_DELTA_DIRECTIVES = frozenset(("max-age", "s-maxage", "stale-while-revalidate",
                               "stale-if-error"))


def response_directives(headers, targets=()) -> tuple[dict, bool]:
    """A response's cache directives for this cache, and whether they came from a targeted
    field. RFC 9213 §2.1: the first field of ``targets`` (lowercase names, in the operator's
    order) with a valid, non-empty value is used, and Cache-Control and Expires are then
    ignored; with none such, Cache-Control as usual."""
    for lname in targets:
        values = field_values(headers, lname)
        if values:
            cc = targeted_directives(values)
            if cc:
                return cc, True
    return parse_directives(field_values(headers, b"cache-control")), False


def targeted_directives(values) -> dict | None:
    """A targeted field (RFC 9213 §2.2: a Structured Fields Dictionary, RFC 8941 §3.2) as
    {directive: value or None}, like ``parse_directives``; None when it does not parse or a
    delta-seconds directive is not a non-negative Integer: such a field is ignored, as if
    absent (§2.2). Parameters are ignored; a directive of another type (a Decimal, an inner
    list) is an extension this cache does not know, and is dropped."""
    try:
        members = http_sf.parse(b", ".join(values), tltype="dictionary")
    except http_sf.StructuredFieldError:
        return None
    out = {}
    for name, (value, _params) in members.items():
        if name in _DELTA_DIRECTIVES:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return None
            out[name] = str(value)
        elif value is True:
            out[name] = None
        elif isinstance(value, (str, http_sf.Token)):  # no-cache="a, b", ...
            out[name] = str(value)
    return out


def vary_names(headers) -> tuple | None:
    """The request fields a response varies on (§4.1), lowercase and sorted; ("*",) for
    ``Vary: *``."""
    names = set()
    for value in field_values(headers, b"vary"):
        for member in value.split(b","):
            member = member.strip(_OWS).lower()
            if member:
                names.add(member)
    if b"*" in names:
        return (b"*",)
    return tuple(sorted(names))


# §4.1 allows case-normalising values defined as case-insensitive: language ranges (RFC
# 4647 §2) and content codings (RFC 9110 §8.4.1), with their q parameters.
_CASELESS = frozenset((b"accept-language", b"accept-encoding"))


def normalised(headers, lname: bytes):
    """A request field's value for Vary matching (§4.1): all its lines as one list, OWS
    around members removed, lowercase where its values are case-insensitive; None when
    absent (which differs from empty)."""
    values = field_values(headers, lname)
    if not values:
        return None
    members = []
    for v in values:
        members.extend(m.strip(_OWS) for m in v.split(b","))
    joined = b",".join(members)
    return joined.lower() if lname in _CASELESS else joined


def secondary_key(names: tuple, headers) -> tuple:
    return tuple(normalised(headers, n) for n in names)


# §5.2.1 request directives, and RFC 5861 §4's stale-if-error: the ones this cache acts on.
REQUEST_DIRECTIVES = frozenset(("max-age", "max-stale", "min-fresh", "no-cache", "no-store",
                                "only-if-cached", "stale-if-error"))


def request_directives(headers) -> dict:
    """The request directives this cache acts on (§5.2.1); the others are ignored (§5.2.3),
    so a request carrying only unknown ones is served like one without any. With no
    Cache-Control, a Pragma whose members include ``no-cache`` stands for
    ``Cache-Control: no-cache`` (§5.4); any other Pragma means nothing."""
    cc = field_values(headers, b"cache-control")
    if cc:
        parsed = parse_directives(cc)
        if parsed.keys() <= REQUEST_DIRECTIVES:
            return parsed
        return {k: v for k, v in parsed.items() if k in REQUEST_DIRECTIVES}
    for value in field_values(headers, b"pragma"):
        for member in value.split(b","):
            if member.strip(_OWS).lower() == b"no-cache":
                return {"no-cache": None}
    return {}


# -- conditional requests answered from the cache (RFC 9110 §13)

def _etags(value: bytes):
    # entity-tag list (RFC 9110 §8.8.3), tolerant of commas inside quotes
    out = []
    for m in re.finditer(rb'\s*((?:W/)?"[^"]*"|\*)\s*(?:,|$)', value):
        out.append(m.group(1))
    return out


def _weak_match(a: bytes, b: bytes) -> bool:
    # RFC 9110 §8.8.3.2: weak comparison ignores the W/ prefix.
    return a.removeprefix(b"W/") == b.removeprefix(b"W/")


def not_modified(stored: Stored, request_headers, now: float) -> bool:
    """RFC 9110 §13.2.2 steps 3-4 for a GET/HEAD: does the client's If-None-Match (or, without
    it, If-Modified-Since) make the stored response a 304?"""
    inm = field_values(request_headers, b"if-none-match")
    if inm:
        if stored.etag is None:
            return False
        for value in inm:
            for tag in _etags(value):
                if tag == b"*" or _weak_match(tag, stored.etag):
                    return True
        return False
    ims = field_values(request_headers, b"if-modified-since")
    if ims:
        since = parse_date(ims[0], now)
        # §4.3.2: without a Last-Modified, the stored Date stands for it (``date`` is the
        # receive time when the response had none).
        modified = (stored.date if stored.last_modified is None
                    else parse_date(stored.last_modified, now))
        # RFC 9110 §13.1.3: a date later than our own clock is invalid.
        if since is not None and modified is not None and since <= now:
            return modified <= since
    return False


def validator_matches(stored: Stored, headers) -> bool:
    """§4.3.4: does a 304 (or HEAD response) select this stored response? By ETag (a strong
    one, or a weak one identical to the stored one), else by Last-Modified, else when
    neither side has a validator."""
    etag = field_values(headers, b"etag")
    if etag:
        return stored.etag is not None and etag[0].strip(_OWS) == stored.etag
    lm = field_values(headers, b"last-modified")
    if lm:
        return stored.last_modified is not None and lm[0].strip(_OWS) == stored.last_modified
    return stored.etag is None and stored.last_modified is None


def selected(stored: list, headers, sole=None):
    """The stored response a 304 to our conditional request selects for update (§4.3.4), or
    None. ``stored``: the URL's responses, newest first; ``sole``: the one response whose
    validators alone made up the conditional request, if it was so.

    A 304 with a validator selects the newest response with that validator. A 304 without
    any (RFC 9110 §15.4.5 asks the origin for its ETag, but not all send it) selects
    ``sole``: a request that named one response's validators only can have been answered
    "not modified" for that response only. §4.3.4 itself selects on a validator-less 304
    only a validator-less response; when the conditional named several responses (Vary
    variants), it stays so and nothing is selected."""
    if field_values(headers, b"etag") or field_values(headers, b"last-modified"):
        return next((e for e in stored if validator_matches(e, headers)), None)
    if sole is not None:
        return sole
    bare = [e for e in stored if e.etag is None and e.last_modified is None]
    return bare[0] if len(stored) == 1 and bare else None


# -- ranges served from a stored complete response (RFC 9110 §14)

_RANGE = re.compile(rb"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


def byte_range(request_headers, stored: Stored):
    """(first, last) of a single satisfiable byte range the request asks of ``stored`` (a
    200), or None: serve the whole response, which §14.2 always allows (several ranges, an
    unsatisfiable or malformed one, or an If-Range that does not match, §13.1.5)."""
    values = field_values(request_headers, b"range")
    if len(values) != 1:
        return None
    m = _RANGE.fullmatch(values[0])
    if m is None:
        return None
    if_range = field_values(request_headers, b"if-range")
    if if_range:
        v = if_range[0].strip(_OWS)
        # A strong ETag equal to ours, or exactly our Last-Modified date.
        if not ((stored.etag is not None and v == stored.etag and not v.startswith(b"W/"))
                or (stored.last_modified is not None and v == stored.last_modified)):
            return None
    size = len(stored.body)
    first, last = m.groups()
    if first:
        first = int(first)
        last = min(int(last), size - 1) if last else size - 1
        if first >= size or last < first:
            return None
    elif last:  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            return None
        first, last = max(0, size - n), size - 1
    else:
        return None
    return first, last
