"""Upstreams and their servers, as compiled into a Runtime snapshot.

A server's Health and an upstream's Circuit outlive reloads (kept in the snapshot's Shared
under the upstream name, server URL and their config), like the keep-alive pools.
"""

cimport cython

from engine.upstream.balancer cimport Balancer
from engine.upstream.health cimport Circuit, Health, RetryBudget
from engine.upstream.pool cimport Pool

FAILURE_BITS = {"error": F_ERROR, "timeout": F_TIMEOUT, "http_500": F_HTTP_500,
                "http_502": F_HTTP_502, "http_503": F_HTTP_503, "http_504": F_HTTP_504,
                "http_429": F_HTTP_429}


cdef int status_failure(int status) noexcept:
    """The failure bit a response status stands for (0 for most)."""
    if status < 429:
        return 0
    if status == 429:
        return F_HTTP_429
    if status == 500:
        return F_HTTP_500
    if status == 502:
        return F_HTTP_502
    if status == 503:
        return F_HTTP_503
    if status == 504:
        return F_HTTP_504
    return 0


def failure_mask(names) -> int:
    cdef int mask = 0
    for name in names:
        mask |= FAILURE_BITS[name]
    return mask


def make_circuit(cfg):
    return Circuit(cfg.consecutive_failures, cfg.failure_rate, cfg.min_requests, cfg.window,
                   cfg.cooldown, cfg.half_open_requests)


def _server_name(tls_cfg, host: str):
    # What is sent as SNI and verified: the configured name, else the URL's host. Python
    # sends no SNI for an IP address and verifies it against the certificate's IP entries.
    return tls_cfg.server_name or host


@cython.final
cdef class Server:
    def __init__(self, url: str, host: str, port: int, weight: int, Pool pool not None,
                 backup: bool = False, down: bool = False, max_conns: int = 0,
                 Health health=None, ssl=None, server_hostname=None):
        self.url = url
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.host = host
        self.port = port
        self.weight = weight
        self.pool = pool
        # Host header for HTTP/1.0 requests that sent none.
        self.authority = f"{host}:{port}".encode()
        self.backup = backup
        self.down = down
        self.max_conns = max_conns
        self.active = 0
        self.health = health

    cpdef bint available(self, double now) except -1:
        """May a request go to this server now? Balancers skip it when not."""
        if self.down or (self.max_conns and self.active >= self.max_conns):
            return False
        return self.health is None or self.health.available(now)


@cython.final
cdef class Upstream:
    def __init__(self, cfg, old_pools: dict, new_pools: dict, shared=None, key=None):
        from engine.errors import Response
        from engine.upstream.balancer import BALANCERS  # (balancer cimports this module)
        from engine.upstream.tls import client_context

        self.name = cfg.name
        self.key = cfg  # frozen config: equal config -> pools carried over on reload
        self.servers = []
        breaker = cfg.circuit_breaker
        server_breaker = breaker if breaker is not None and breaker.scope != "upstream" else None
        tls_ctx = None
        if any(s.tls for s in cfg.servers):
            tls_ctx = shared.keep(("tls", cfg.name, cfg.tls), lambda: client_context(cfg.tls)) \
                if shared is not None else client_context(cfg.tls)
        for s in cfg.servers:
            # (cfg.tls in the key: a pool of TLS connections made under other settings is
            # not reused)
            pool_key = (cfg.name, s.url, cfg.keepalive, cfg.keepalive_timeout,
                        cfg.keepalive_requests, cfg.tls if s.tls else None)
            pool = new_pools.get(pool_key) or old_pools.get(pool_key)
            if pool is None:
                pool = Pool(cfg.keepalive, cfg.keepalive_timeout, cfg.keepalive_requests)
            new_pools[pool_key] = pool

            # nginx: with a single server, max_fails is ignored; it is never unavailable.
            max_fails = s.max_fails if len(cfg.servers) > 1 else 0

            def health(s=s, max_fails=max_fails):
                circuit = make_circuit(server_breaker) if server_breaker else None
                return Health(max_fails, s.fail_timeout, circuit)
            health_key = ("health", cfg.name, s.url, max_fails, s.fail_timeout,
                          server_breaker)
            self.servers.append(Server(
                s.url, s.host, s.port, s.weight, pool, s.backup, s.down, s.max_conns,
                shared.keep(health_key, health) if shared is not None else health(),
                tls_ctx if s.tls else None, _server_name(cfg.tls, s.host) if s.tls else None))
        primaries = [s for s in self.servers if not s.backup]
        backups = [s for s in self.servers if s.backup]
        self.balancer = BALANCERS[cfg.balancer](primaries, cfg, key)
        self.backup_balancer = BALANCERS[cfg.balancer](backups, cfg, key) if backups else None
        self.host_header = cfg.host.encode() if cfg.host else None
        self.connect_timeout = cfg.connect_timeout
        self.send_timeout = cfg.send_timeout
        self.read_timeout = cfg.read_timeout
        if breaker is not None and breaker.scope != "server":
            circuit_key = ("circuit", cfg.name, breaker)
            self.circuit = (shared.keep(circuit_key, lambda: make_circuit(breaker))
                            if shared is not None else make_circuit(breaker))
        retry = cfg.retry
        self.budget = (shared.keep(("budget", cfg.name, retry), lambda: _budget(retry))
                       if shared is not None else _budget(retry))
        self.tries = retry.tries
        self.retry_timeout = retry.timeout
        self.retry_mask = failure_mask(retry.on)
        self.fail_mask = failure_mask(cfg.fail_on)
        fb = cfg.fallback
        if fb is not None:
            self.fallback_name = fb.upstream
            if fb.upstream is None:
                headers = [(b"Content-Type", fb.content_type.encode())]
                headers += [(n.encode(), v.encode()) for n, v in fb.headers]
                self.fallback = Response(fb.status, headers, fb.body.encode())

    cpdef object pick(self, object ctx, double now):
        """A primary server, or a backup when no primary is available (nginx ``backup``)."""
        server = self.balancer.pick(ctx, now)
        if server is None and self.backup_balancer is not None:
            server = self.backup_balancer.pick(ctx, now)
        return server

    cpdef double available_in(self, double now):
        """Seconds until some server may take requests again (Retry-After of a 503)."""
        cdef double best = -1.0
        cdef double t
        cdef Server s
        for s in self.servers:
            if s.down:
                continue
            t = s.health.available_in(now) if s.health is not None else 0.0
            if best < 0 or t < best:
                best = t
        if self.circuit is not None:
            best = max(best, self.circuit.retry_after(now))
        return best if best >= 0 else 1.0


def _budget(retry):
    return RetryBudget(retry.budget, retry.min_retries, 10.0)
