"""Balancers: pick one server of an upstream per request."""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc

from engine.upstream.upstream cimport Server


cdef class Balancer:
    """The interface: ``pick(ctx)`` returns one of ``servers``, or None when none is
    available."""

    def __init__(self, servers: list, cfg=None):
        self.servers = servers

    cpdef object pick(self, object ctx, double now):
        raise NotImplementedError


@cython.final
cdef class RoundRobin(Balancer):
    """Smooth weighted round robin, the interleaving nginx uses: weights 5,1,1 give
    a a b a c a a rather than five a's in a row."""

    def __init__(self, servers: list, cfg=None):
        cdef Py_ssize_t i
        self.servers = servers
        self.n = len(servers)
        self.weight = <Py_ssize_t*>PyMem_Malloc(max(self.n, 1) * sizeof(Py_ssize_t))
        self.current = <Py_ssize_t*>PyMem_Malloc(max(self.n, 1) * sizeof(Py_ssize_t))
        if self.weight is NULL or self.current is NULL:
            raise MemoryError
        self.total = 0
        for i in range(self.n):
            self.weight[i] = servers[i].weight
            self.current[i] = 0
            self.total += self.weight[i]

    def __dealloc__(self):
        PyMem_Free(self.weight)
        PyMem_Free(self.current)

    cpdef object pick(self, object ctx, double now):
        cdef Py_ssize_t i, best = -1
        cdef Py_ssize_t* current = self.current
        cdef list servers = self.servers
        cdef Server s
        tried = ctx.tried if ctx is not None else None
        if self.n == 1:
            s = servers[0]
            return s if s.available(now) and (tried is None or s not in tried) else None
        for i in range(self.n):
            s = servers[i]
            if not s.available(now) or (tried is not None and s in tried):
                continue
            current[i] += self.weight[i]
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= self.total
        return self.servers[best]


BALANCERS = {"round_robin": RoundRobin}
