"""The typed config: what config.toml may say, with defaults, bounds and descriptions.

Defaults follow nginx where nginx has one (see README, "Limits and timeouts").
"""

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from engine.chain.keys import check_key_spec
from engine.chain.schema import (
    REQUIRED, TOKEN_RE, ConfigError, Duration, Size, build, check_header_name, check_header_value,
    check_methods, join, key, suggest,
)
from engine.control.tls import check_tls
from engine.filters.consumers import ConsumerConfig, check_consumers


# Mozilla's "intermediate" TLS 1.2 suites (server side, 2023 guidelines v5.7): forward-secret
# AEAD only; the server's order is used.
INTERMEDIATE_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                        "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
                        "DHE-RSA-CHACHA20-POLY1305")


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'expected "host:port" with a port 0-65535, got "{value}"')
    host = host.strip("[]") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f'"{host}" is not an IP address (or localhost)') from None
    return host, int(port)


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


def _check_cidrs(values: tuple) -> tuple:
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_network(v, strict=False)))
        except ValueError:
            raise ValueError(f'"{v}" is not an IP address or CIDR block') from None
    return tuple(out)


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f'expected an http:// or https:// URL, got "{value}"')
    if not parts.hostname:
        raise ValueError(f'URL "{value}" has no host')
    try:
        _ = parts.port  # urlsplit validates the port lazily
    except ValueError:
        raise ValueError(f'URL "{value}" has an invalid port') from None
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f'URL "{value}" must not have a path (use the route\'s rewrite)')
    return value


def _check_workers(value):
    if value == "auto" or (isinstance(value, int) and 1 <= value <= 256):
        return value
    raise ValueError(f'expected a number of workers 1-256 or "auto", got {value!r}')


_HOST_PATTERN_RE = re.compile(r"^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*$|^\[[0-9a-f:.]+\]$")


def _check_hosts(values: tuple) -> tuple:
    out = []
    for v in values:
        v = v.lower().rstrip(".")
        if not _HOST_PATTERN_RE.match(v):
            raise ValueError(f'"{v}" is not a host name, "*.suffix" wildcard or [IPv6] '
                             "literal (no port; leave hosts empty to match any host)")
        out.append(v)
    return tuple(out)


def _check_via(value: str) -> str:
    if value != "off" and not TOKEN_RE.match(value):
        raise ValueError(f'"{value}" is not a token (RFC 9110 §7.6.3 pseudonym) or "off"')
    return value


@dataclass(frozen=True)
class ServerConfig:
    listen: str = key("0.0.0.0:8080", "address:port to accept client connections on: the "
                                      'shorthand for one plain-HTTP listener "default" '
                                      "(not allowed together with [[listeners]])",
                      check=_check_listen)
    workers: int | str = key(1, 'worker processes sharing the port (SO_REUSEPORT); "auto" = '
                                "one per core", check=_check_workers)
    backlog: int = key(511, "listen backlog", min=1, max=65535)
    trusted_proxies: tuple[str, ...] = key(
        (), "addresses/CIDRs whose X-Forwarded-For and X-Forwarded-Proto/-Host are trusted",
        check=_check_cidrs)
    max_request_line: Size = key(8192, "longest request line; longer gets 414", min=64)
    max_header_size: Size = key(32768, "largest header section; larger gets 431", min=256)
    max_header_count: int = key(100, "most header fields; more gets 431", min=1, max=10000)
    max_body_size: Size = key(1048576, "largest request body, default for every route; "
                                       "larger gets 413 (0 = unlimited)")
    client_header_timeout: Duration = key(60.0, "time to receive a request head; then 408")
    client_body_timeout: Duration = key(60.0, "longest gap between two reads of a request "
                                               "body; then 408")
    keepalive_timeout: Duration = key(75.0, "idle keep-alive client connections close after")
    keepalive_requests: int = key(1000, "requests served on one client connection", min=1)
    send_timeout: Duration = key(60.0, "longest a client may leave our writes unread")
    lingering_timeout: Duration = key(5.0, "how long unread request bytes are drained after "
                                           "an early answer before closing")
    drain_timeout: Duration = key(10.0, "on SIGTERM/SIGINT, time in-flight requests get to "
                                        "finish")
    access_log: str = key("stdout", 'access log: "stdout", "stderr", "off" or a file path '
                                    "(reopened on SIGUSR1, for logrotate)")
    access_log_format: str = key("json", 'access log lines: "json" (one object per request) '
                                         'or "combined" (nginx\'s, then key=value fields)',
                                 choices=("json", "combined"))
    tracing: str = key("propagate", 'W3C traceparent: "propagate" gives a valid incoming one '
                                    'a new span id per hop (tracestate kept); "always" also '
                                    'starts a trace when none came; "off" relays both as is',
                       choices=("off", "propagate", "always"))
    via: str = key("edgeproxy", 'pseudonym this proxy adds to Via on the requests and '
                                'responses it forwards ("1.1 edgeproxy", after any received '
                                'entries; RFC 9110 §7.6.3); "off" adds none',
                   check=_check_via)
    watch_config: bool = key(True, "reload when the config file changes on disk (checked every "
                                   "second; SIGHUP and POST /reload always work)")


_FAILURE_NAMES = ("error", "timeout", "http_500", "http_502", "http_503", "http_504",
                  "http_429")


def _check_failures(values: tuple) -> tuple:
    for v in values:
        if v not in _FAILURE_NAMES:
            raise ValueError(f'"{v}" is not one of {", ".join(_FAILURE_NAMES)}'
                             + suggest(v, _FAILURE_NAMES))
    return values


def _check_statuses(values: tuple) -> tuple:
    for v in values:
        if not 100 <= v <= 599:
            raise ValueError(f"{v} is not an HTTP status code")
    return values


@dataclass(frozen=True)
class RetryConfig:
    tries: int = key(3, "attempts per request, the first included, each on a different server "
                        "(nginx proxy_next_upstream_tries); 1 = no retries", min=1, max=100)
    on: tuple[str, ...] = key(("error", "timeout", "http_502", "http_503", "http_504"),
                              'what is retried: "error" (connect failure, reset before a '
                              'response), "timeout", "http_5xx"/"http_429" statuses',
                              check=_check_failures)
    timeout: Duration = key(10.0, "total time a request may spend on retries "
                                  "(nginx proxy_next_upstream_timeout)")
    budget: float = key(0.2, "retries allowed as a share of the upstream's requests over "
                             "the last 10-20 s, so a failing fleet gets no retry storm",
                        min=0.0, max=10.0)
    min_retries: int = key(3, "retries always allowed per 10 s whatever the budget", min=0)


@dataclass(frozen=True)
class CircuitConfig:
    scope: str = key("both", 'which breakers: "server" (each server\'s, counting its attempts), '
                             '"upstream" (the upstream\'s, counting what clients got) or "both"',
                     choices=("server", "upstream", "both"))
    consecutive_failures: int = key(5, "failures in a row that open the circuit (0 = off)",
                                    min=0)
    failure_rate: float = key(0.5, "failure share over the window that opens it (0 = off)",
                              min=0.0, max=1.0)
    min_requests: int = key(20, "requests the window needs before failure_rate applies",
                            min=1)
    window: Duration = key(10.0, "rolling window failure_rate is measured over")
    cooldown: Duration = key(30.0, "how long an open circuit refuses before half-open probes")
    half_open_requests: int = key(1, "probe requests admitted half-open; all succeeding "
                                     "closes the circuit", min=1, max=1000)


@dataclass(frozen=True)
class HealthCheckConfig:
    path: str = key("/", "path requested (GET, Host = the upstream's host or the server)")
    interval: Duration = key(5.0, "time between checks of one server")
    timeout: Duration = key(1.0, "a check not answered within this failed")
    statuses: tuple[int, ...] = key((200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303,
                                     304, 307, 308),
                                    "statuses that count as healthy", check=_check_statuses)
    healthy_threshold: int = key(2, "passed checks in a row that make a server healthy", min=1)
    unhealthy_threshold: int = key(3, "failed checks in a row that make it unhealthy", min=1)


@dataclass(frozen=True)
class OutlierConfig:
    interval: Duration = key(10.0, "how often error rates are compared")
    min_requests: int = key(10, "requests a server needs in an interval to be judged", min=1)
    factor: float = key(3.0, "ejected when its error rate is above factor x the median of "
                             "its peers' (and above min_error_rate)", min=1.0)
    min_error_rate: float = key(0.2, "error rate below which nobody is ejected",
                                min=0.0, max=1.0)
    ejection_time: Duration = key(30.0, "how long an ejected server sits out")
    max_ejected: float = key(0.5, "share of servers that may be ejected at once",
                             min=0.0, max=1.0)


def _check_header_pairs(values):
    for name, value in values:
        check_header_name(name)
        check_header_value(value)
    return values


@dataclass(frozen=True)
class FallbackConfig:
    upstream: str | None = key(None, "another upstream to send the request to")
    status: int = key(503, "status of the static answer (when no fallback upstream)",
                      min=200, max=599)
    body: str = key("", "body of the static answer")
    content_type: str = key("application/json", "Content-Type of the body")
    headers: dict[str, str] = key((), "extra headers of the static answer",
                                  check=_check_header_pairs)


@dataclass(frozen=True)
class ServerEntry:
    SHORTHAND = "url"
    url: str = key(REQUIRED, 'the server, "http://host:port" or "https://host:port" (TLS, '
                             "verified: see the upstream's tls)", check=_check_url)
    weight: int = key(1, "share of requests relative to the other servers", min=1, max=1000)
    backup: bool = key(False, "takes traffic only when every primary server is unavailable")
    down: bool = key(False, "marked down by the operator: never picked")
    max_conns: int = key(0, "requests in flight to this server at once, per worker "
                            "(0 = unlimited); a full server is skipped", min=0)
    max_fails: int = key(1, "failures within fail_timeout that make the server unavailable "
                            "for fail_timeout (nginx); 0 = never", min=0)
    fail_timeout: Duration = key(10.0, "the window max_fails are counted in, and how long the "
                                       "server then stays unavailable")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (443 if self.tls else 80)

    @property
    def tls(self) -> bool:
        return self.url.startswith("https:")


@dataclass(frozen=True)
class UpstreamTLSConfig:
    verify: bool = key(True, "verify the server's certificate chain and name (off only for a "
                             "test bed: anyone on the path could answer)")
    ca: str | None = key(None, "PEM file of the CAs the servers' certificates are verified "
                               "against; default: the system's trust store")
    server_name: str | None = key(None, "name sent as SNI and verified in the certificate "
                                        "(nginx proxy_ssl_name); default: each server URL's "
                                        "host (an IP address: no SNI, verified as an IP)")
    cert: str | None = key(None, "PEM file of a client certificate (mTLS to the servers)")
    key: str | None = key(None, "PEM file of that certificate's private key")
    # Digest of the files' contents (set when parsed), so new files make a new config.
    files_digest: str = field(default="", init=False)


@dataclass(frozen=True)
class UpstreamConfig:
    name: str = key(REQUIRED, "name routes refer to")
    servers: tuple[ServerEntry, ...] = key(REQUIRED, 'servers: "http://host:port" strings or '
                                                     "tables with url and weight")
    balancer: str = key("round_robin", 'how a server is picked: "round_robin" (smooth, '
                                        'weighted), "least_conn" (fewest in flight per '
                                        'weight), "ip_hash" (client /24 or IPv6), "hash" '
                                        '(on hash_key), "random_two" (power of two choices)',
                        choices=("round_robin", "least_conn", "ip_hash", "hash", "random_two"))
    hash_key: tuple[str, ...] = key(("ip",), 'what balancer = "hash" hashes: key parts "ip", '
                                             '"path", "consumer", "header:Name", '
                                             '"cookie:name", "query:name"',
                                    check=check_key_spec)
    consistent: bool = key(False, "hash with a consistent (ketama) ring: adding or removing a "
                                  "server moves only its share of keys")
    host: str | None = key(None, "Host header sent upstream; default: the client's Host")
    # 512 (Kong's default; Traefik keeps 200, Envoy and HAProxy do not cap idle connections):
    # nginx's example of 32 churns a connection per request over 32 in flight (docs/tuning.md).
    keepalive: int = key(512, "idle keep-alive connections kept per server, per worker; a "
                              "connection released when this many are idle is closed, so set "
                              "it to at least the requests in flight to one server at peak "
                              "(idle ones close after keepalive_timeout; 0 = a new connection "
                              "per request)", min=0, max=100000)
    keepalive_timeout: Duration = key(60.0, "idle upstream connections close after")
    keepalive_requests: int = key(1000, "requests sent on one upstream connection", min=1)
    connect_timeout: Duration = key(60.0, "time to connect; then 504")
    send_timeout: Duration = key(60.0, "longest stall writing the request upstream; then 504")
    read_timeout: Duration = key(60.0, "longest gap between two reads of the response; "
                                       "then 504 (or the connection is cut mid-body)")
    fail_on: tuple[str, ...] = key(("error", "timeout"),
                                   "what counts as a server failure for max_fails, circuit "
                                   "breakers and outlier ejection (nginx counts error and "
                                   'timeout; add e.g. "http_503")', check=_check_failures)
    retry: RetryConfig = key(RetryConfig(), "next-upstream retries (a POST/PATCH that reached "
                                            "a server: only with a claimed idempotency key, "
                                            "after a 502/503/504)")
    circuit_breaker: CircuitConfig | None = key(None, "per server and per upstream circuit "
                                                      "breakers (scope picks; off when absent)")
    health_check: HealthCheckConfig | None = key(None, "active HTTP health checks (off when "
                                                       "absent)")
    outlier_detection: OutlierConfig | None = key(None, "eject servers whose error rate is far "
                                                        "above their peers' (off when absent)")
    tls: UpstreamTLSConfig = key(UpstreamTLSConfig(), "how https:// servers are connected "
                                                      "to: verification, SNI, client "
                                                      "certificate (docs/tls.md)")
    fallback: FallbackConfig | None = key(None, "the answer when no server is available: "
                                                "another upstream or a static response "
                                                "(default 503 with Retry-After)")


def _filter_sections():
    from engine.filters import FILTERS
    return {name: module.Config for name, module in FILTERS.items()}


def _server_wide_sections():
    from engine.filters import FILTERS
    return {name: module.Config for name, module in FILTERS.items()
            if module.Filter.SERVER_WIDE}


@dataclass(frozen=True)
class FiltersConfig:
    """Filter sections every route runs (and requests no route takes): [filters.<name>]."""
    EXTRA_SECTIONS = staticmethod(_server_wide_sections)
    sections: tuple = ()


@dataclass(frozen=True)
class RouteConfig:
    EXTRA_SECTIONS = staticmethod(_filter_sections)
    name: str = key(REQUIRED, "unique name (logs, metrics)")
    hosts: tuple[str, ...] = key((), 'hosts matched: "api.example.com" or "*.example.com"; '
                                     "empty = any host", check=_check_hosts)
    paths: tuple[str, ...] = key(("/*",), 'path patterns: "/exact", "/users/{id}", '
                                          '"/static/*", "/files/{rest*}"')
    methods: tuple[str, ...] = key((), "methods accepted; empty = any", check=check_methods)
    upstream: str | None = key(None, "upstream to proxy to (or a static section answers)")
    strip_prefix: bool = key(False, "remove the matched pattern's static prefix before the "
                                    "tail from the path sent upstream")
    rewrite: str | None = key(None, 'path sent upstream, with {param} substitutions, e.g. '
                                    '"/v2/users/{id}"')
    max_body_size: Size | None = key(None, "overrides server.max_body_size (0 = unlimited)")
    sections: tuple = ()


@dataclass(frozen=True)
class CertificateConfig:
    cert: str = key(REQUIRED, "PEM file: the certificate, then its intermediates")
    names: tuple[str, ...] = key((), 'SNI names it serves, exact or "*.example.com"; empty = '
                                     "the DNS names in the certificate (subjectAltName)",
                                 check=_check_hosts)
    # (last: past this line ``key`` names the field, not the schema function)
    key: str = key(REQUIRED, "PEM file: its private key (unencrypted)")


@dataclass(frozen=True)
class ListenerTLSConfig:
    cert: str = key(REQUIRED, "PEM file: the default certificate and its intermediates, served "
                              "when the client's SNI matches no other (or it sent none)")
    certificates: tuple[CertificateConfig, ...] = key(
        (), "more certificates, picked by the client's SNI: an exact name first, then a "
            "wildcard, else the default")
    strict_sni: bool = key(False, "refuse a handshake whose SNI matches no certificate "
                                  "(unrecognized_name alert) instead of serving the default")
    min_version: str = key("1.2", 'oldest TLS version accepted: "1.2" or "1.3" (1.0 and 1.1 '
                                  "are never offered, RFC 8996)", choices=("1.2", "1.3"))
    ciphers: str = key(INTERMEDIATE_CIPHERS, "OpenSSL cipher list for TLS 1.2 (Mozilla "
                                             '"intermediate"); TLS 1.3 suites are all AEAD')
    session_tickets: bool = key(True, "resume sessions with tickets (keys made per worker "
                                      "process; see docs/tls.md)")
    handshake_timeout: Duration = key(10.0, "a TLS handshake not done within this is dropped")
    client_auth: str = key("off", 'client certificates (mTLS): "off", "optional" (verified '
                                  'when sent) or "required" (handshake refused without one)',
                           choices=("off", "optional", "required"))
    client_ca: str | None = key(None, "PEM file of the CAs client certificates are verified "
                                      "against (required unless client_auth is off)")
    client_cert_header: str = key("X-Client-Cert-Subject",
                                  "request header that carries the verified client "
                                  "certificate's subject (RFC 4514) to filters and upstream; "
                                  'copies the client sent are always removed; "" = not sent',
                                  check=lambda v: check_header_name(v) if v else v)
    key: str = key(REQUIRED, "PEM file: the default certificate's private key (unencrypted)")
    # Digest of the certificate and key files' contents, set when the config is parsed: new
    # files behind the same paths make a different config, so a reload picks them up.
    files_digest: str = field(default="", init=False)


@dataclass(frozen=True)
class ListenerConfig:
    name: str = key(REQUIRED, "unique name (admin API, logs)")
    listen: str = key(REQUIRED, "address:port to accept client connections on",
                      check=_check_listen)
    forwarded_proto: str | None = key(None, "what X-Forwarded-Proto says upstream for requests "
                                            'accepted here (unless a trusted proxy sent one): '
                                            '"https" behind a TLS-terminating L4 balancer; '
                                            'default "https" with tls, else "http"',
                                      choices=("http", "https"))
    tls: ListenerTLSConfig | None = key(None, "terminate TLS here: certificates, versions, "
                                              "client certificates (docs/tls.md)")
    http2: bool = key(False, "also speak HTTP/2: offered by ALPN with tls, else accepted "
                             "with prior knowledge (h2c) next to HTTP/1.1 (docs/http2.md)")
    redirect_https: int | None = key(None, "answer every request here with a 308 to the same "
                                           "URI over https on this port (443 is left out of "
                                           "the URL); only on a listener without tls",
                                     min=1, max=65535)


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


@dataclass(frozen=True)
class AdminConfig:
    enabled: bool = key(True, "serve the admin API (status, routes, upstreams, config, reload, "
                              "metrics)")
    listen: str = key("127.0.0.1:9901", "address:port of the admin API; keep it private",
                      check=_check_listen)
    token: str | None = key(None, "bearer token every admin request must carry; required when "
                                  "listen is not a loopback address")


def _check_redis_url(value: str) -> str:
    from engine.stores.redis import parse_url
    parse_url(value)  # ValueError: a non-numeric db, unknown ?options, another scheme
    return value


def _check_addresses(values: tuple) -> tuple:
    from engine.stores.redis_conn import parse_address
    for v in values:
        parse_address(v, 1)
    return values


def _check_file(path: str) -> str:
    if not os.path.isfile(path):
        raise ValueError(f'no file "{path}"')
    return path


@dataclass(frozen=True)
class RedisConfig:
    mode: str = key("standalone", '"standalone": url is the server; "sentinel": url names '
                                  "the master, whose address the sentinels give; "
                                  '"cluster": url is a node of a Redis Cluster (nodes: more)',
                    choices=("standalone", "sentinel", "cluster"))
    url: str = key("redis://127.0.0.1:6379/0", "redis[s]://[user:password@]host[:port][/db] "
                                               "or unix:///path[?db=N] (rediss: TLS; user: "
                                               "an ACL user); in sentinel mode "
                                               "redis[s]://[user:password@]<master-name>[/db]",
                   check=_check_redis_url)
    sentinels: tuple[str, ...] = key((), '"host[:port]" of the sentinels asked where the '
                                         'master is (mode = "sentinel"; port 26379)',
                                     check=_check_addresses)
    sentinel_username: str | None = key(None, "ACL user the sentinels want, if any")
    sentinel_password: str | None = key(None, "password the sentinels want, if any")
    nodes: tuple[str, ...] = key((), '"host[:port]" of more cluster nodes asked for the slot '
                                     "map when url's node does not answer (mode = "
                                     '"cluster")', check=_check_addresses)
    tls_ca: str | None = key(None, "PEM file of the CA(s) that signed the Redis servers' "
                                   "certificates (rediss://); default: the system's",
                             check=_check_file)
    tls_cert: str | None = key(None, "PEM client certificate, for servers that ask for one "
                                     "(tls-auth-clients)", check=_check_file)
    tls_key: str | None = key(None, "PEM private key of tls_cert", check=_check_file)
    tls_server_name: str | None = key(None, "name the servers' certificates must carry, "
                                            "instead of the host connected to (cluster nodes "
                                            "and sentinel masters are reached by address)")
    prefix: str = key("edgeproxy:", "prefix of every key edgeproxy writes")
    timeout: Duration = key(0.25, "longest wait for one Redis command (connect included; "
                                  "0.1 s more per MiB a command carries, such as a stored "
                                  "answer); then the feature's on_store_error policy applies")
    breaker_failures: int = key(3, "consecutive Redis failures that open the breaker "
                                   "(calls then fail at once, without waiting)", min=1)
    breaker_cooldown: Duration = key(2.0, "how long the breaker stays open before one call "
                                          "probes Redis again")


def _check_redis(r: RedisConfig, errors: list) -> None:
    """What no single [redis] key can check alone: the mode's needs, the TLS files."""
    from engine.stores.redis_conn import parse_url, tls_context
    try:
        url = parse_url(r.url)
    except ValueError:
        return  # reported by the url key itself
    mode = r.mode
    if mode != "standalone" and url.path is not None:
        errors.append(("redis.url", f'a unix:// socket cannot be used with mode = "{mode}"'))
    if mode == "sentinel":
        if not r.sentinels:
            errors.append(("redis.sentinels", 'mode = "sentinel" needs the addresses of '
                                              'the sentinels, e.g. ["10.0.0.1:26379"]'))
        if url.path is None and urlsplit(r.url).port is not None:
            errors.append(("redis.url", 'in sentinel mode the URL names the master, not an '
                                        "address (redis[s]://[user:password@]<master-name>"
                                        "[/db]): the sentinels give its address"))
    elif r.sentinels or r.sentinel_username or r.sentinel_password:
        errors.append(("redis.sentinels", f'sentinel keys need mode = "sentinel" (mode is '
                                          f'"{mode}")'))
    if mode == "cluster" and url.db:
        errors.append(("redis.url", f"a Redis Cluster has database 0 only, not {url.db}"))
    if r.nodes and mode != "cluster":
        errors.append(("redis.nodes", f'need mode = "cluster" (mode is "{mode}")'))
    tls_keys = [n for n in ("tls_ca", "tls_cert", "tls_key", "tls_server_name")
                if getattr(r, n) is not None]
    if tls_keys and not url.tls:
        errors.append((f"redis.{tls_keys[0]}", "needs a rediss:// url (TLS)"))
    if (r.tls_cert is None) != (r.tls_key is None):
        errors.append(("redis.tls_key" if r.tls_key is None else "redis.tls_cert",
                       "tls_cert and tls_key go together"))
    elif url.tls:
        try:
            tls_context(r.tls_ca, r.tls_cert, r.tls_key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            errors.append(("redis.tls_ca" if r.tls_cert is None else "redis.tls_cert",
                           f"unusable TLS files: {exc}"))


@dataclass(frozen=True)
class DemoConfig:
    origins: tuple[str, ...] = key(
        ("127.0.0.1:9001",), "DEMO ONLY: built-in echo origins the proxy starts itself",
        check=lambda vs: tuple(_check_listen(v) for v in vs))


@dataclass(frozen=True)
class Config:
    server: ServerConfig = key(ServerConfig(), "the listener, limits and timeouts")
    listeners: tuple[ListenerConfig, ...] = key((), "several listeners, each with its own "
                                                    "address and X-Forwarded-Proto; replaces "
                                                    "server.listen (which must then be left "
                                                    "out)")
    upstreams: tuple[UpstreamConfig, ...] = key((), "upstream server groups")
    routes: tuple[RouteConfig, ...] = key((), "routes, matched by host, path and method")
    consumers: tuple[ConsumerConfig, ...] = key((), "who may call: credentials, groups, quota "
                                                    "tier and limits (docs/auth.md)")
    filters: FiltersConfig = key(FiltersConfig(), "filters for every route and for requests no "
                                                  "route takes, e.g. [filters.headers]; a "
                                                  "route's own section of the same name "
                                                  "replaces it")
    admin: AdminConfig = key(AdminConfig(), "the admin API listener (separate from the "
                                            "proxy's listeners)")
    redis: RedisConfig | None = key(None, 'the Redis store, for features with store = "redis"')
    demo: DemoConfig | None = key(None, "DEMO ONLY: start built-in origins (shipped config.toml)")


def parse(text: str, source: str = "config.toml") -> Config:
    """Validate TOML text into a Config, or raise ConfigError naming every bad key path."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"{source}: invalid TOML: {exc}")]) from None
    errors: list = []
    cfg = build(Config, raw, "", errors)
    if cfg is not None:
        _cross_check(cfg, errors)
        _check_listeners(cfg, raw, errors)
        check_tls(cfg, errors)
    if errors:
        raise ConfigError(errors)
    return cfg


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
    return parse(text, path)


def _cross_check(cfg: Config, errors: list) -> None:
    from engine.control.snapshot import check_routes, route_sections
    from engine.filters import FILTERS

    if cfg.redis is not None:
        _check_redis(cfg.redis, errors)
    admin = cfg.admin
    if admin.enabled and not admin.token:
        # The admin API reloads config and shows it: never open to the world by accident.
        host, _ = parse_listen(admin.listen)
        if not is_loopback(host):
            errors.append(("admin.token", f'is required when admin.listen ("{admin.listen}") '
                                          "is not a loopback address"))
    if admin.token is not None and (len(admin.token) < 16 or not admin.token.isprintable()
                                    or " " in admin.token):
        errors.append(("admin.token", "must be at least 16 printable characters without "
                                      "spaces"))

    names = set()
    for i, up in enumerate(cfg.upstreams):
        if up is None:
            continue
        if up.name in names:
            errors.append((f"upstreams[{i}].name", f'duplicate upstream name "{up.name}"'))
        names.add(up.name)
        if not [s for s in up.servers if s is not None]:
            errors.append((f"upstreams[{i}].servers", "needs at least one server"))
    for i, up in enumerate(cfg.upstreams):
        if up is not None and up.fallback is not None and up.fallback.upstream is not None:
            if up.fallback.upstream not in names:
                errors.append((f"upstreams[{i}].fallback.upstream",
                               f'unknown upstream "{up.fallback.upstream}"'
                               + suggest(up.fallback.upstream, names)))
            elif up.fallback.upstream == up.name:
                errors.append((f"upstreams[{i}].fallback.upstream", "is the upstream itself"))
    route_names = set()
    for i, route in enumerate(cfg.routes):
        if route is None:
            continue
        path = f"routes[{i}]"
        if route.name in route_names:
            errors.append((join(path, "name"), f'duplicate route name "{route.name}"'))
        route_names.add(route.name)
        sections = route_sections(route, cfg)
        answers = any(FILTERS[name].Filter.ANSWERS for name, _ in route.sections)
        if route.upstream is None and not answers:
            kinds = ", ".join(f"[routes.{n}]" for n, m in FILTERS.items() if m.Filter.ANSWERS)
            errors.append((path, f"needs an upstream or a section that answers ({kinds})"))
        elif route.upstream is not None and route.upstream not in names:
            errors.append((join(path, "upstream"), f'unknown upstream "{route.upstream}"'
                           + suggest(route.upstream, names)))
        if not route.paths:
            errors.append((join(path, "paths"), "needs at least one path pattern"))
        for name, section in sections:
            if getattr(section, "store", None) == "redis" and cfg.redis is None:
                errors.append((join(join(path, name), "store"),
                               'is "redis" but the config has no [redis] table'))
            if name == "idempotency" and section.store == "memory" and section.min_replicas:
                errors.append((join(join(path, name), "min_replicas"),
                               'needs store = "redis" (replicas are Redis\'s)'))
            if (name == "idempotency" and section.store == "memory"
                    and cfg.server.workers != 1):
                # Exactly-once is the point: a retry landing on another worker would run.
                errors.append((join(join(path, name), "store"),
                               '"memory" holds keys per worker process, so with workers = '
                               f'{cfg.server.workers!r} a retry on another worker runs again; '
                               'use store = "redis" (and a [redis] table)'))
    for name, section in cfg.filters.sections:
        _check_section(name, section, None, cfg, f"filters.{name}", errors)
    for i, route in enumerate(cfg.routes):
        for name, section in route.sections if route is not None else ():
            _check_section(name, section, route, cfg, f"routes[{i}].{name}", errors)
    check_consumers(cfg.consumers, errors)
    _check_consumer_limits(cfg, errors)
    check_routes(cfg, errors)


def _check_consumer_limits(cfg: Config, errors: list) -> None:
    """A consumer's tier and limit overrides name a quota tier and a limit that exist."""
    sections = [s for n, s in cfg.filters.sections if n == "rate_limit"] + [
        s for r in cfg.routes if r is not None for n, s in r.sections if n == "rate_limit"]
    limits = {lim.name for s in sections for lim in s.limits if lim is not None}
    tiers = {t.name for s in sections if s.quota is not None for t in s.quota.tiers
             if t is not None}
    for i, c in enumerate(cfg.consumers):
        if c is None:
            continue
        if c.tier is not None and c.tier not in tiers:
            errors.append((f"consumers[{i}].tier", f'no rate_limit quota has a tier "{c.tier}"'
                           + suggest(c.tier, tiers)))
        for j, o in enumerate(c.rate_limits):
            if o is not None and o.name not in limits:
                errors.append((f"consumers[{i}].rate_limits[{j}].name",
                               f'no rate_limit section has a limit "{o.name}"'
                               + suggest(o.name, limits)))


def _check_section(name: str, section, route, cfg: Config, path: str, errors: list) -> None:
    """What a section alone cannot know (an upstream or consumer it names, its route's other
    keys): its module's check_config, once per section as written, so each problem is
    reported once, at its key path. ``route`` is None for a server-wide [filters] section."""
    from engine.filters import FILTERS
    check = getattr(FILTERS[name], "check_config", None)
    if check is not None:
        check(section, route, cfg, path, errors)


def _check_listeners(cfg: Config, raw: dict, errors: list) -> None:
    """One way to say where to listen, distinct names, addresses that can all be bound."""
    if "listeners" in raw:
        server = raw.get("server")
        if isinstance(server, dict) and "listen" in server:
            # Silently ignoring one of the two would leave a port unserved by surprise.
            errors.append(("server.listen", "cannot be used together with [[listeners]]; "
                                            "declare this address as a listener too"))
        if not cfg.listeners and isinstance(raw["listeners"], list) and not raw["listeners"]:
            errors.append(("listeners", "needs at least one listener (or leave it out and "
                                        "use server.listen)"))
    names: dict = {}
    taken: list = []  # (path, listen, (host, port)) of the listeners so far
    for i, entry in enumerate(cfg.listeners):
        if entry is None:
            continue
        path = f"listeners[{i}]"
        if entry.name in names:
            errors.append((join(path, "name"), f'duplicate listener name "{entry.name}" '
                                               f"(also listeners[{names[entry.name]}])"))
        else:
            names[entry.name] = i
        address = parse_listen(entry.listen)
        for other_path, other_listen, other in taken:
            if _overlap(address, other):
                errors.append((join(path, "listen"), f'"{entry.listen}" overlaps '
                                                     f'{other_path} ("{other_listen}")'))
                break
        taken.append((join(path, "listen"), entry.listen, address))
    admin = cfg.admin
    if admin.enabled:
        if not cfg.listeners:
            taken = [("server.listen", cfg.server.listen, parse_listen(cfg.server.listen))]
        for other_path, other_listen, other in taken:
            if _overlap(parse_listen(admin.listen), other):
                errors.append(("admin.listen", f'"{admin.listen}" overlaps {other_path} '
                                               f'("{other_listen}")'))


def _overlap(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two "host:port" addresses cannot both be bound (port 0 never clashes: each
    bind gets a free port of its own)."""
    (host_a, port_a), (host_b, port_b) = a, b
    if port_a != port_b or not port_a:
        return False
    ip_a, ip_b = (ipaddress.ip_address("127.0.0.1" if h == "localhost" else h)
                  for h in (host_a, host_b))
    if ip_a == ip_b:
        return True
    # A wildcard address takes the port on every address of its family; "::" takes IPv4
    # too while net.ipv6.bindv6only is 0 (Linux's default; ipv6(7)).
    return any(x.is_unspecified and (x.version == y.version or x.version == 6)
               for x, y in ((ip_a, ip_b), (ip_b, ip_a)))
