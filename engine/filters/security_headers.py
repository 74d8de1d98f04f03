"""Security response headers for browsers, helmet's defaults as a preset, each overridable.

Every key left unset takes the preset's value ("helmet": helmet 7's defaults; "none":
nothing); "" turns a header off. A header the upstream already set is kept as it is, unless
``override``: the application knows its pages better than the edge. Strict-Transport-Security
goes only on answers to https requests (RFC 6797 §7.2: a UA ignores it over plain http, and
sending it there tells an attacker nothing useful); the scheme is the listener's
(``forwarded_proto``, or TLS).
"""

from dataclasses import dataclass, fields

from engine.chain.filter import OBSERVE, Filter as FilterBase
from engine.chain.schema import check_header_name, check_header_value, key

# helmet 7 (helmetjs/helmet, index.ts defaults).
HELMET = {
    "content_security_policy": (
        "default-src 'self';base-uri 'self';font-src 'self' https: data:;"
        "form-action 'self';frame-ancestors 'self';img-src 'self' data:;object-src 'none';"
        "script-src 'self';script-src-attr 'none';style-src 'self' https: 'unsafe-inline';"
        "upgrade-insecure-requests"),
    "cross_origin_opener_policy": "same-origin",
    "cross_origin_resource_policy": "same-origin",
    "cross_origin_embedder_policy": "",
    "origin_agent_cluster": "?1",
    "referrer_policy": "no-referrer",
    "strict_transport_security": "max-age=31536000; includeSubDomains",
    "x_content_type_options": "nosniff",
    "x_dns_prefetch_control": "off",
    "x_download_options": "noopen",
    "x_frame_options": "SAMEORIGIN",
    "x_permitted_cross_domain_policies": "none",
    "x_xss_protection": "0",  # the old XSS auditor caused leaks; helmet turns it off
}
PRESETS = {"helmet": HELMET, "none": {name: "" for name in HELMET}}

# config key -> header name
NAMES = {
    "content_security_policy": "Content-Security-Policy",
    "cross_origin_opener_policy": "Cross-Origin-Opener-Policy",
    "cross_origin_resource_policy": "Cross-Origin-Resource-Policy",
    "cross_origin_embedder_policy": "Cross-Origin-Embedder-Policy",
    "origin_agent_cluster": "Origin-Agent-Cluster",
    "referrer_policy": "Referrer-Policy",
    "strict_transport_security": "Strict-Transport-Security",
    "x_content_type_options": "X-Content-Type-Options",
    "x_dns_prefetch_control": "X-DNS-Prefetch-Control",
    "x_download_options": "X-Download-Options",
    "x_frame_options": "X-Frame-Options",
    "x_permitted_cross_domain_policies": "X-Permitted-Cross-Domain-Policies",
    "x_xss_protection": "X-XSS-Protection",
}


def _names(values: tuple) -> tuple:
    for v in values:
        check_header_name(v)
    return values


def _value(doc):
    return key(None, doc + ' (unset: the preset\'s; "": not sent)', check=check_header_value)


@dataclass(frozen=True)
class Config:
    preset: str = key("helmet", "values for keys left unset", choices=tuple(PRESETS))
    override: bool = key(False, "replace a header the upstream set (default: keep it)")
    csp_report_only: bool = key(False, "send the policy as Content-Security-Policy-Report-"
                                       "Only (reports violations, blocks nothing)")
    remove: tuple[str, ...] = key(("Server", "X-Powered-By"),
                                  "headers removed from upstream answers", check=_names)
    content_security_policy: str | None = _value("Content-Security-Policy")
    cross_origin_opener_policy: str | None = _value("Cross-Origin-Opener-Policy")
    cross_origin_resource_policy: str | None = _value("Cross-Origin-Resource-Policy")
    cross_origin_embedder_policy: str | None = _value("Cross-Origin-Embedder-Policy")
    origin_agent_cluster: str | None = _value("Origin-Agent-Cluster")
    referrer_policy: str | None = _value("Referrer-Policy")
    strict_transport_security: str | None = _value("Strict-Transport-Security, on https only")
    x_content_type_options: str | None = _value("X-Content-Type-Options")
    x_dns_prefetch_control: str | None = _value("X-DNS-Prefetch-Control")
    x_download_options: str | None = _value("X-Download-Options")
    x_frame_options: str | None = _value("X-Frame-Options")
    x_permitted_cross_domain_policies: str | None = _value("X-Permitted-Cross-Domain-Policies")
    x_xss_protection: str | None = _value("X-XSS-Protection")


class Filter(FilterBase):
    __slots__ = ("plain", "tls", "plain_drop", "tls_drop", "override")
    # Its response hook runs last, for every answer (the proxy's 401/404/429 too), and sees
    # the headers every other filter set.
    PHASE = OBSERVE

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        preset = PRESETS[cfg.preset]
        chosen = []
        for f in fields(Config):
            if f.name not in NAMES:
                continue
            value = getattr(cfg, f.name)
            value = preset[f.name] if value is None else value
            if not value:
                continue
            name = NAMES[f.name]
            if f.name == "content_security_policy" and cfg.csp_report_only:
                name = "Content-Security-Policy-Report-Only"
            chosen.append((name.encode(), value.encode()))
        self.tls = chosen
        self.plain = [h for h in chosen if h[0] != b"Strict-Transport-Security"]
        remove = frozenset(n.lower().encode() for n in cfg.remove)
        self.override = cfg.override
        # What leaves the upstream's head: the remove list, and ours when we override.
        self.tls_drop = remove | {n.lower() for n, _ in self.tls} if self.override else remove
        self.plain_drop = (remove | {n.lower() for n, _ in self.plain} if self.override
                           else remove)

    def on_response(self, ctx, resp):
        if ctx.stream.scheme == b"https":
            ours, drop = self.tls, self.tls_drop
        else:
            ours, drop = self.plain, self.plain_drop
        kept = [h for h in resp.headers if h[0].lower() not in drop]
        if self.override:
            kept += ours
        else:
            present = {h[0].lower() for h in kept}
            kept += [h for h in ours if h[0].lower() not in present]
        resp.headers = kept
