"""Balancers: pick one server of an upstream per request."""


class RoundRobin:
    """Smooth weighted round robin, the interleaving nginx uses: weights 5,1,1 give
    a a b a c a a rather than five a's in a row."""

    __slots__ = ("servers", "current", "total")

    def __init__(self, servers: list):
        self.servers = servers
        self.current = [0] * len(servers)
        self.total = sum(s.weight for s in servers)

    def pick(self, ctx):
        servers = self.servers
        if len(servers) == 1:
            return servers[0]
        current = self.current
        best = -1
        for i, server in enumerate(servers):
            current[i] += server.weight
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= self.total
        return servers[best]


BALANCERS = {"round_robin": RoundRobin}
