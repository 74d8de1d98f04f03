"""Upstreams and their servers, as compiled into a Runtime snapshot."""

cimport cython

from engine.upstream.balancer cimport Balancer
from engine.upstream.pool cimport Pool

from engine.upstream.balancer import BALANCERS


@cython.final
cdef class Server:
    def __init__(self, url: str, host: str, port: int, weight: int, Pool pool not None):
        self.url = url
        self.host = host
        self.port = port
        self.weight = weight
        self.pool = pool
        # Host header for HTTP/1.0 requests that sent none.
        self.authority = f"{host}:{port}".encode()


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
        self.balancer = BALANCERS[cfg.balancer](self.servers)
        self.host_header = cfg.host.encode() if cfg.host else None
        self.connect_timeout = cfg.connect_timeout
        self.send_timeout = cfg.send_timeout
        self.read_timeout = cfg.read_timeout

    cpdef object pick(self, object ctx):
        return self.balancer.pick(ctx)
