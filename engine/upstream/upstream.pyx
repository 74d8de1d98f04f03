"""Upstreams and their servers, as compiled into a Runtime snapshot."""

cimport cython

from engine.upstream.balancer cimport Balancer
from engine.upstream.pool cimport Pool


@cython.final
cdef class Server:
    def __init__(self, url: str, host: str, port: int, weight: int, Pool pool not None,
                 backup: bool = False, down: bool = False, max_conns: int = 0, health=None):
        self.url = url
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
    def __init__(self, cfg, old_pools: dict, new_pools: dict):
        self.name = cfg.name
        self.key = cfg  # frozen config: equal config -> pools carried over on reload
        self.servers = []
        for s in cfg.servers:
            pool_key = (cfg.name, s.url, cfg.keepalive, cfg.keepalive_timeout,
                        cfg.keepalive_requests)
            pool = new_pools.get(pool_key) or old_pools.get(pool_key)
            if pool is None:
                pool = Pool(cfg.keepalive, cfg.keepalive_timeout, cfg.keepalive_requests)
            new_pools[pool_key] = pool
            self.servers.append(Server(s.url, s.host, s.port, s.weight, pool))
        from engine.upstream.balancer import BALANCERS  # (balancer cimports this module)
        self.balancer = BALANCERS[cfg.balancer](self.servers, cfg)
        self.host_header = cfg.host.encode() if cfg.host else None
        self.connect_timeout = cfg.connect_timeout
        self.send_timeout = cfg.send_timeout
        self.read_timeout = cfg.read_timeout

    cpdef object pick(self, object ctx, double now):
        return self.balancer.pick(ctx, now)
