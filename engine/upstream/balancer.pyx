"""Balancers: pick one server of an upstream per request.

Every balancer follows nginx's upstream modules (ngx_http_upstream_round_robin.c,
_least_conn_module.c, _ip_hash_module.c, _hash_module.c, _random_module.c): a server that is not
``available(now)`` (down, full at max_conns, failed health / open circuit) or that this request
already failed on (``ctx.tried``) is skipped, and ``pick`` returns None when nothing is left.
The engine, not the balancer, counts the picked server's ``active``.

- ``round_robin``: smooth weighted round robin; weights 5,1,1 give a a b a c a a.
- ``least_conn``: fewest ``active / weight``; ties go round robin among the tied servers.
- ``ip_hash``: the client's IPv4 /24 (first three octets) or whole IPv6 address, hashed as nginx
  does; a hashed server that is skipped gets a rehash, up to 20, then round robin.
- ``hash``: ``cfg.hash_key`` (compiled by engine.chain.keys). ``consistent = false``: nginx's
  ``crc32 mod total weight`` with up to 20 rehashes, then round robin. ``consistent = true``:
  the ketama ring of ext.hashring, points from ``host "\\0" port`` as nginx builds them, so a
  server's keys stay put when others come and go; a skipped server hands its key to the next
  distinct server along the ring. A request without the key goes round robin (nginx: an empty
  hash key).
- ``random_two``: two distinct servers drawn at random by weight, the one with fewer
  ``active / weight`` wins (power of two choices; nginx ``random two least_conn``).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset

from engine.upstream.upstream cimport Server
from ext.hashring cimport CRC32_INIT, HashRing, crc32_of, crc32_update

import os



cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "<sys/socket.h>" nogil:
    int AF_INET
    int AF_INET6

# nginx gives up rehashing after this many retries and goes round robin.
cdef Py_ssize_t REHASH_TRIES = 20
# The ketama ring of one balancer stays under this many points: past it, fewer than 160 points
# per weight unit (at least 1).
MAX_RING_POINTS = 1 << 20


cdef inline bint _usable(Server s, object tried, double now) except -1:
    if not s.available(now):
        return False
    return tried is None or s not in tried


cdef inline object _tried(object ctx):
    return None if ctx is None else ctx.tried


cdef Py_ssize_t* _alloc(Py_ssize_t n) except NULL:
    cdef Py_ssize_t* p = <Py_ssize_t*>PyMem_Malloc(max(n, 1) * sizeof(Py_ssize_t))
    if p is NULL:
        raise MemoryError
    memset(p, 0, max(n, 1) * sizeof(Py_ssize_t))
    return p


cdef _check_weights(list servers):
    for s in servers:
        if (<Server?>s).weight < 1:
            raise ValueError(f"server {s.url}: weight must be >= 1, got {s.weight}")


cdef class Balancer:
    """The interface: ``pick(ctx, now)`` returns one of ``servers``, or None when none is
    available."""

    def __init__(self, servers: list, cfg=None, key=None):
        self.servers = servers

    cpdef object pick(self, object ctx, double now):
        raise NotImplementedError


@cython.final
cdef class RoundRobin(Balancer):
    """Smooth weighted round robin, the interleaving nginx uses: weights 5,1,1 give
    a a b a c a a rather than five a's in a row."""

    def __init__(self, servers: list, cfg=None, key=None):
        cdef Py_ssize_t i
        _check_weights(servers)
        self.servers = servers
        self.n = len(servers)
        self.weight = _alloc(self.n)
        self.current = _alloc(self.n)
        self.total = 0
        for i in range(self.n):
            self.weight[i] = servers[i].weight
            self.total += self.weight[i]

    def __dealloc__(self):
        PyMem_Free(self.weight)
        PyMem_Free(self.current)

    cpdef object pick(self, object ctx, double now):
        cdef Py_ssize_t i, best = -1, total = 0
        cdef Py_ssize_t* current = self.current
        cdef list servers = self.servers
        cdef Server s
        tried = _tried(ctx)
        if self.n == 1:
            s = servers[0]
            return s if _usable(s, tried, now) else None
        for i in range(self.n):
            s = servers[i]
            if not _usable(s, tried, now):
                continue
            current[i] += self.weight[i]
            total += self.weight[i]
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        # Subtract the weight of the servers that took part, not of all: a skipped server
        # neither gains nor lends weight, so the others keep their ratio and interleaving
        # (ngx_http_upstream_get_peer).
        current[best] -= total
        return servers[best]


@cython.final
cdef class LeastConn(Balancer):
    """Fewest requests in flight per weight; ties broken by smooth weighted round robin
    among the tied servers (ngx_http_upstream_get_least_conn_peer)."""

    def __init__(self, servers: list, cfg=None, key=None):
        _check_weights(servers)
        self.servers = servers
        self.n = len(servers)
        self.current = _alloc(self.n)

    def __dealloc__(self):
        PyMem_Free(self.current)

    cpdef object pick(self, object ctx, double now):
        cdef Py_ssize_t i, best = -1, chosen, total = 0
        cdef Py_ssize_t best_active = 0, best_weight = 1
        cdef bint many = False
        cdef Py_ssize_t* current = self.current
        cdef list servers = self.servers
        cdef Server s
        tried = _tried(ctx)
        for i in range(self.n):
            s = servers[i]
            if not _usable(s, tried, now):
                continue
            # active/weight compared as cross products: no division, exact.
            if best < 0 or s.active * best_weight < best_active * s.weight:
                best = i
                best_active = s.active
                best_weight = s.weight
                many = False
            elif s.active * best_weight == best_active * s.weight:
                many = True
        if best < 0:
            return None
        if many:
            chosen = -1
            for i in range(best, self.n):
                s = servers[i]
                if s.active * best_weight != best_active * s.weight:
                    continue
                if not _usable(s, tried, now):
                    continue
                current[i] += s.weight
                total += s.weight
                if chosen < 0 or current[i] > current[chosen]:
                    chosen = i
            current[chosen] -= total
            best = chosen
        return servers[best]


@cython.final
cdef class _Spans:
    def __init__(self, list servers):
        cdef Py_ssize_t i
        self.n = len(servers)
        self.end = _alloc(self.n)
        self.total = 0
        for i in range(self.n):
            self.total += (<Server>servers[i]).weight
            self.end[i] = self.total

    def __dealloc__(self):
        PyMem_Free(self.end)

    cdef Py_ssize_t find(self, Py_ssize_t w) noexcept:
        # The first i with end[i] > w: binary search, not nginx's linear walk.
        cdef Py_ssize_t lo = 0, hi = self.n - 1, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.end[mid] > w:
                hi = mid
            else:
                lo = mid + 1
        return lo


cdef Py_ssize_t _ip_bytes(object ip, unsigned char* out) except -1:
    # The part of a client address ip_hash hashes, into out: IPv4's first three octets (one
    # /24 goes to one server), IPv6's sixteen (ngx_http_upstream_init_ip_hash_peer). An
    # IPv4-mapped IPv6 address counts as its IPv4 address. 0 when ip is not an address.
    cdef unsigned char a6[16]
    cdef const char* p
    cdef Py_ssize_t n, i
    if type(ip) is not str:
        return 0
    try:
        p = PyUnicode_AsUTF8AndSize(ip, &n)
    except UnicodeEncodeError:  # a lone surrogate: not an address
        return 0
    if inet_pton(AF_INET, p, out) == 1:
        return 3
    if inet_pton(AF_INET6, p, a6) != 1:
        return 0
    for i in range(10):
        if a6[i]:
            break
    else:
        if a6[10] == 0xFF and a6[11] == 0xFF:
            out[0] = a6[12]
            out[1] = a6[13]
            out[2] = a6[14]
            return 3
    for i in range(16):
        out[i] = a6[i]
    return 16


@cython.final
cdef class IpHash(Balancer):
    """Sticky by client network: nginx ``ip_hash``."""

    def __init__(self, servers: list, cfg=None, key=None):
        _check_weights(servers)
        self.servers = servers
        self.n = len(servers)
        self.spans = _Spans(servers)
        self.rr = RoundRobin(servers, cfg)

    cpdef object pick(self, object ctx, double now):
        cdef unsigned char addr[16]
        cdef Py_ssize_t n, i, tries
        cdef Py_ssize_t h = 89
        cdef Server s
        if ctx is None or self.n <= 1:
            return self.rr.pick(ctx, now)
        n = _ip_bytes(ctx.client_ip, addr)
        if n == 0:
            return self.rr.pick(ctx, now)
        tried = ctx.tried
        for tries in range(REHASH_TRIES + 1):
            # Each retry hashes the address again on top of the last hash
            # (ngx_http_upstream_get_ip_hash_peer).
            for i in range(n):
                h = (h * 113 + addr[i]) % 6271
            s = self.servers[self.spans.find(h % self.spans.total)]
            if _usable(s, tried, now):
                return s
        return self.rr.pick(ctx, now)


@cython.final
cdef class Hash(Balancer):
    """Sticky by a request key: nginx ``hash $key`` and ``hash $key consistent``."""

    def __init__(self, servers: list, cfg, key):
        # ``key``: fn(ctx) -> str | None, compiled from cfg.hash_key by the control plane
        # (engine.chain.keys.compile_key; this package does not import the chain).
        cdef Py_ssize_t i, total
        _check_weights(servers)
        self.servers = servers
        self.n = len(servers)
        self.key = key
        self.consistent = bool(cfg.consistent)
        self.rr = RoundRobin(servers, cfg)
        self.seen = NULL
        if self.consistent:
            total = sum(s.weight for s in servers)
            per = max(1, min(160, MAX_RING_POINTS // max(total, 1)))
            self.ring = HashRing(per, max(MAX_RING_POINTS, total))
            for i in range(self.n):
                s = servers[i]
                # nginx hashes the server's "host:port" as host, a NUL, then port.
                self.ring.add(i, s.weight, f"{s.host}\0{s.port}".encode())
            self.seen = <uint32_t*>PyMem_Malloc(max(self.n, 1) * sizeof(uint32_t))
            if self.seen is NULL:
                raise MemoryError
            memset(self.seen, 0, max(self.n, 1) * sizeof(uint32_t))
            self.walk = 0
        else:
            self.spans = _Spans(servers)

    def __dealloc__(self):
        PyMem_Free(self.seen)

    cpdef object pick(self, object ctx, double now):
        cdef Py_ssize_t n
        cdef const char* p
        if ctx is None or self.n <= 1:
            return self.rr.pick(ctx, now)
        key = self.key(ctx)
        if not key:
            return self.rr.pick(ctx, now)
        try:
            p = PyUnicode_AsUTF8AndSize(key, &n)
            raw = None
        except UnicodeEncodeError:  # a lone surrogate (surrogateescape'd input)
            raw = (<str>key).encode("utf-8", "surrogatepass")
            p = PyBytes_AS_STRING(raw)
            n = PyBytes_GET_SIZE(raw)
        if self.consistent:
            return self._ring_pick(<const unsigned char*>p, n, ctx.tried, now)
        s = self._rehash_pick(<const unsigned char*>p, n, ctx.tried, now)
        return s if s is not None else self.rr.pick(ctx, now)

    cdef object _ring_pick(self, const unsigned char* key, Py_ssize_t n, object tried,
                           double now):
        cdef HashRing ring = self.ring
        cdef Py_ssize_t i = ring.first(crc32_of(key, n))
        cdef Py_ssize_t k, distinct = 0
        cdef uint32_t node, walk
        cdef Server s
        self.walk += 1
        if self.walk == 0:  # wrapped: forget every mark of the last 2**32 walks
            memset(self.seen, 0, self.n * sizeof(uint32_t))
            self.walk = 1
        walk = self.walk
        for k in range(ring.n_points):
            node = <uint32_t>ring.points[i]
            if self.seen[node] != walk:
                self.seen[node] = walk
                s = self.servers[node]
                if _usable(s, tried, now):
                    return s
                distinct += 1
                if distinct == self.n:
                    break
            i += 1
            if i == ring.n_points:
                i = 0
        return None

    cdef object _rehash_pick(self, const unsigned char* key, Py_ssize_t n, object tried,
                             double now):
        # Cache::Memcached's hash, as nginx computes it: ((crc32([REHASH] KEY) >> 16) & 0x7fff)
        # summed over the tries, REHASH being the try number in decimal from the second try on
        # (ngx_http_upstream_get_hash_peer).
        cdef uint32_t crc, acc = 0
        cdef unsigned char digits[4]
        cdef Py_ssize_t rehash, nd
        cdef Server s
        for rehash in range(REHASH_TRIES + 1):
            crc = CRC32_INIT
            if rehash:
                nd = 0
                if rehash >= 10:
                    digits[nd] = <unsigned char>(48 + rehash // 10)
                    nd += 1
                digits[nd] = <unsigned char>(48 + rehash % 10)
                nd += 1
                crc = crc32_update(crc, digits, nd)
            crc = crc32_update(crc, key, n) ^ CRC32_INIT
            acc += (crc >> 16) & 0x7FFF
            s = self.servers[self.spans.find(acc % <uint32_t>self.spans.total)]
            if _usable(s, tried, now):
                return s
        return None


@cython.final
cdef class RandomTwo(Balancer):
    """Power of two choices: two distinct servers drawn by weight, the less loaded per weight
    wins (ties: the first drawn, so idle servers share by weight)."""

    def __init__(self, servers: list, cfg=None, key=None):
        _check_weights(servers)
        self.servers = servers
        self.n = len(servers)
        self.spans = _Spans(servers)
        self.scratch = _alloc(self.n)
        self.seed(int.from_bytes(os.urandom(8), "little"))

    def __dealloc__(self):
        PyMem_Free(self.scratch)

    def seed(self, n: int) -> None:
        """Restart the random sequence (tests, benchmarks)."""
        self.state = <uint64_t>(n & 0xFFFFFFFFFFFFFFFF)

    cdef Py_ssize_t _draw(self, Py_ssize_t total) noexcept:
        # splitmix64: a fast, well mixed 64-bit sequence; this is load spreading, not secrets.
        cdef uint64_t z
        self.state += <uint64_t>0x9E3779B97F4A7C15
        z = self.state
        z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
        z ^= z >> 31
        return <Py_ssize_t>(z % <uint64_t>total)

    cpdef object pick(self, object ctx, double now):
        cdef Py_ssize_t i, k, a = -1, b = -1, m = 0, total = 0
        cdef list servers = self.servers
        cdef Server s, sa, sb
        tried = _tried(ctx)
        if self.n <= 1:
            if self.n == 0:
                return None
            s = servers[0]
            return s if _usable(s, tried, now) else None
        # Rejection sampling: a skipped or repeated draw is drawn again, which keeps the
        # weighted odds among the usable servers (ngx_http_upstream_get_random2_peer).
        for k in range(REHASH_TRIES):
            i = self.spans.find(self._draw(self.spans.total))
            if i == a or not _usable(<Server>servers[i], tried, now):
                continue
            if a < 0:
                a = i
            else:
                b = i
                break
        if b < 0:
            # Most servers are skipped: draw from the usable ones only.
            for i in range(self.n):
                s = servers[i]
                if _usable(s, tried, now):
                    self.scratch[m] = i
                    m += 1
                    total += s.weight
            if m == 0:
                return None
            if m == 1:
                return servers[self.scratch[0]]
            a = self._pick_among(m, total, -1)
            b = self._pick_among(m, total - (<Server>servers[a]).weight, a)
        sa = servers[a]
        sb = servers[b]
        if sb.active * sa.weight < sa.active * sb.weight:
            return sb
        return sa

    cdef Py_ssize_t _pick_among(self, Py_ssize_t m, Py_ssize_t total, Py_ssize_t skip):
        cdef Py_ssize_t k, i = -1, r = self._draw(total)
        cdef Server s
        for k in range(m):
            i = self.scratch[k]
            if i == skip:
                continue
            s = self.servers[i]
            if r < s.weight:
                return i
            r -= s.weight
        return i  # r < total: reached only by the last usable server


BALANCERS = {
    "round_robin": RoundRobin,
    "least_conn": LeastConn,
    "ip_hash": IpHash,
    "hash": Hash,
    "random_two": RandomTwo,
}
