"""API versioning on a route: which version a request asks for, where that version goes,
how its answers are adapted, and what clients of an old version are told.

The version is read from the sources in the configured order (the first that names one
wins): a route parameter of the path ("/{version}/users/{id}"), a header (Accept-Version),
the media type ("Accept: application/vnd.acme.v2+json") or a query argument. "v2", "V2"
and "2" name the same version. A request naming no version gets ``default``; naming one
the route does not serve, a 400 listing those it does.

Each version may have its own upstream and its own transform (run here, at this filter's
place in the chain), and may be deprecated (RFC 9745 ``Deprecation``) and sunset (RFC 8594
``Sunset``), with a ``Link`` to the migration docs; after its sunset it can answer 410.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from time import time as now

from engine.chain.filter import ACL, BUFFERED, Filter as FilterBase
from engine.chain.schema import REQUIRED, check_header_name, key
from engine.errors import error_response
from engine.filters import transform as transform_filter
from engine.filters.template import query_arg

ERRORS = {
    "version_unknown": (400, "the route does not serve this API version"),
    "version_required": (400, "the request must name an API version"),
    "version_gone": (410, "this API version has reached its sunset and is no longer served"),
}
METRICS = {"versions": ("edgeproxy_api_version_requests_total", "version",
                        "Requests per API version (so operators see who still calls an old "
                        "one); unknown and missing versions as \"unknown\" and \"none\".")}

SOURCES = ("path", "header", "media_type", "query")


def _check_date(value: str) -> str:
    _parse_date(value)
    return value


def _parse_date(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f'"{value}" is not a date: "2027-06-30" or '
                         '"2027-06-30T12:00:00Z"') from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _check_sources(values):
    for v in values:
        if v not in SOURCES:
            raise ValueError(f'"{v}" is not one of {", ".join(SOURCES)}')
    if len(set(values)) != len(values) or not values:
        raise ValueError("name each source once, at least one")
    return values


def _check_name(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9._-]+$", value):
        raise ValueError(f'"{value}" is not a version name (letters, digits, ".", "_", "-")')
    return value


def _check_link(value: str) -> str:
    if not re.match(r"^https?://[^\s<>\"]+$", value):
        raise ValueError(f'"{value}" is not an http(s) URL')
    return value


@dataclass(frozen=True)
class Version:
    name: str = key(REQUIRED, 'the version, e.g. "v2" (matches "v2", "V2" and "2")',
                    check=_check_name)
    upstream: str | None = key(None, "upstream serving this version (default: the route's)")
    transform: transform_filter.Config | None = key(None, "this version's transform (same keys as "
                                                   "[routes.transform]), e.g. v1 answers "
                                                   "adapted from v2's")
    deprecated: str | None = key(None, "date it is (or will be) deprecated: answers carry "
                                       "Deprecation (RFC 9745)", check=_check_date)
    sunset: str | None = key(None, "date it stops being served: answers carry Sunset "
                                   "(RFC 8594)", check=_check_date)
    link: str | None = key(None, 'migration docs, sent as Link rel="deprecation" (and '
                                 'rel="sunset" with a sunset)', check=_check_link)
    gone_after_sunset: bool = key(False, "after the sunset date answer 410 Gone instead of "
                                         "serving it")


@dataclass(frozen=True)
class Config:
    supported: tuple[Version, ...] = key(REQUIRED, "the versions this route serves")
    sources: tuple[str, ...] = key(("path", "header", "media_type", "query"),
                                   "where the version is read, in order: " + ", ".join(SOURCES),
                                   check=_check_sources)
    path_param: str = key("version", 'route parameter holding it ("/{version}/users")')
    header: str = key("Accept-Version", "header naming it", check=check_header_name)
    vendor: str | None = key(None, 'vendor of the media type "application/vnd.<vendor>.v2+json" '
                                   'or "application/vnd.<vendor>+json; version=2" (media_type '
                                   "source; off when absent)")
    query: str = key("version", "query argument naming it")
    default: str | None = key(None, "version of a request that names none; absent: such a "
                                    "request gets 400 (no silent move when a new version "
                                    "ships)")


def _norm(name: str) -> str:
    name = name.strip().lower()
    return name[1:] if name[:1] == "v" and name[1:2].isdigit() else name


def check_config(section: Config, route, cfg, path: str, errors: list) -> None:
    """Version names are distinct, the default is one of them, upstreams exist."""
    upstreams = {u.name for u in cfg.upstreams if u is not None}
    names: dict = {}
    for i, v in enumerate(section.supported):
        if v is None:
            continue
        where = f"{path}.supported[{i}]"
        if _norm(v.name) in names:
            errors.append((f"{where}.name", f'"{v.name}" is the same version as '
                                            f'"{names[_norm(v.name)]}"'))
        names[_norm(v.name)] = v.name
        if v.upstream is not None and v.upstream not in upstreams:
            errors.append((f"{where}.upstream", f'unknown upstream "{v.upstream}"'))
        if v.upstream is None and route.upstream is None:
            errors.append((f"{where}.upstream", "is needed: the route has no upstream"))
        if v.transform is not None:
            transform_filter.check_config(v.transform, route, cfg, f"{where}.transform", errors)
    if section.default is not None and _norm(section.default) not in names:
        errors.append((f"{path}.default", f'"{section.default}" is not a supported version'))
    if not section.supported:
        errors.append((f"{path}.supported", "needs at least one version"))


class _Compiled:
    __slots__ = ("name", "upstream", "transform", "headers", "sunset", "gone")

    def __init__(self, v: Version, build):
        self.name = v.name
        self.upstream = v.upstream
        self.transform = transform_filter.Filter(v.transform, build) if v.transform else None
        headers = []
        links = []
        if v.deprecated is not None:
            # RFC 9745 §2.1: an sf-date, "@" and seconds since the epoch.
            headers.append((b"Deprecation", b"@%d" % _parse_date(v.deprecated).timestamp()))
            if v.link:
                links.append(b'<%s>; rel="deprecation"; type="text/html"' % v.link.encode())
        self.sunset = None
        if v.sunset is not None:
            when = _parse_date(v.sunset)
            self.sunset = when.timestamp()
            # RFC 8594 §3: an HTTP-date (IMF-fixdate, RFC 9110 §5.6.7).
            headers.append((b"Sunset", format_datetime(when.astimezone(UTC), usegmt=True)
                            .encode()))
            if v.link:
                links.append(b'<%s>; rel="sunset"' % v.link.encode())  # RFC 8594 §6
        if links:
            headers.append((b"Link", b", ".join(links)))
        self.headers = headers
        self.gone = v.gone_after_sunset and self.sunset is not None


class Filter(FilterBase):
    __slots__ = ("versions", "by_name", "sources", "param", "header", "media_re", "query",
                 "default", "vary", "events", "supported")
    # After authentication (its metrics count real callers), before rate limits, so a
    # version's own upstream and transform apply to the rest of the chain.
    PHASE = ACL
    SERVER_WIDE = False  # the versions, their upstreams and path parameter are a route's

    def __new__(cls, cfg: Config, build):
        # Held response bodies only when a version's transform edits them (see transform).
        if cls is Filter and any(v.transform is not None and v.transform.response is not None
                                 and v.transform.response.body is not None
                                 for v in cfg.supported):
            cls = _ResponseBodyFilter
        return super().__new__(cls)

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.versions = [_Compiled(v, build) for v in cfg.supported]
        self.by_name = {_norm(v.name): v for v in self.versions}
        self.sources = cfg.sources
        self.param = cfg.path_param
        self.header = cfg.header.lower().encode()
        # "application/vnd.acme.v2+json" (GitHub's style), or a version parameter on the
        # vendor type, "application/vnd.acme+json; version=2" (RFC 6838 §4.3 parameters).
        vendor = re.escape(cfg.vendor.lower().encode()) if cfg.vendor else None
        self.media_re = re.compile(
            rb"^application/vnd\." + vendor + rb"(?:\.([a-z0-9._-]+?))?(?:\+[a-z0-9.-]+)?"
            rb"\s*(?:$|;(?:.*;)?\s*version=\"?([a-z0-9._-]+))") if vendor else None
        self.query = cfg.query
        self.default = self.by_name[_norm(cfg.default)] if cfg.default else None
        self.supported = [v.name for v in self.versions]
        vary = []
        if "header" in cfg.sources:
            vary.append(cfg.header.encode())
        if "media_type" in cfg.sources and cfg.vendor:
            vary.append(b"Accept")
        # RFC 9110 §12.5.5: a cache must know the answer depends on these fields.
        self.vary = b", ".join(vary) if vary else None
        self.events = build.counter("versions")

    def _count(self, label: str) -> None:
        self.events[label] = self.events.get(label, 0) + 1

    def _asked(self, ctx) -> str | None:
        for source in self.sources:
            if source == "path":
                value = (ctx.params or {}).get(self.param)
            elif source == "header":
                value = next((v.decode("latin-1") for n, v in ctx.headers
                              if n.lower() == self.header), None)
            elif source == "query":
                value = query_arg(ctx.query, self.query)
            elif self.media_re is not None:
                value = None
                for n, v in ctx.headers:
                    if n.lower() == b"accept":
                        for media in v.lower().split(b","):
                            m = self.media_re.match(media.strip())
                            if m and (m.group(1) or m.group(2)):
                                value = (m.group(1) or m.group(2)).decode("latin-1")
                                break
            else:
                value = None
            if value:
                return value
        return None

    def on_request(self, ctx):
        asked = self._asked(ctx)
        rid = ctx.request_id.decode()
        if asked is None:
            version = self.default
            if version is None:
                self._count("none")
                return error_response("version_required", rid, details={
                    "supported": self.supported})
        else:
            version = self.by_name.get(_norm(asked))
            if version is None:
                self._count("unknown")
                return error_response("version_unknown", rid, f'version "{asked}" is not '
                                      f"served here; supported: {', '.join(self.supported)}",
                                      details={"supported": self.supported})
        self._count(version.name)
        if ctx.vars is None:
            ctx.vars = {}
        ctx.vars["version"] = version.name  # ({version} in templates)
        ctx.vars[self] = version
        if version.gone and now() >= version.sunset:
            return error_response("version_gone", rid, f'version "{version.name}" was '
                                  "sunset", details={"supported": self.supported})
        if version.upstream is not None:
            ctx.upstream = version.upstream
        if version.transform is not None:
            return version.transform.on_request(ctx)
        return None

    def on_response(self, ctx, resp):
        version = ctx.vars.get(self) if ctx.vars else None
        if self.vary is not None:
            resp.headers.append((b"Vary", self.vary))
        if version is None:
            return
        if version.transform is not None:
            version.transform.on_response(ctx, resp)
        if version.headers:
            resp.headers.extend(version.headers)


class _ResponseBodyFilter(Filter):
    __slots__ = ("RESPONSE_BODY",)

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.RESPONSE_BODY = (BUFFERED, max(v.transform.max_body_size for v in cfg.supported
                                            if v.transform is not None))

    def on_response_body(self, ctx, body):
        version = ctx.vars.get(self) if ctx.vars else None
        hook = getattr(version.transform, "on_response_body", None) if version else None
        return hook(ctx, body) if hook is not None else None
