"""Reference HashRing: a sorted Python list of (hash << 32 | node). Same API as ext/hashring.pyi."""

import bisect
import struct
import zlib

POINTS_PER_WEIGHT = 160
MAX_NODE = 0x7FFFFFFF


def crc32(data):
    return zlib.crc32(data)


class HashRing:
    def __init__(self, points_per_weight=POINTS_PER_WEIGHT, max_points=1 << 22):
        if points_per_weight < 1:
            raise ValueError(f"points_per_weight must be >= 1, got {points_per_weight}")
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.points_per_weight = points_per_weight
        self.max_points = max_points
        self._nodes = {}  # node -> (weight, name)
        self._points = []  # sorted (hash << 32 | node)

    n_points = property(lambda self: len(self._points))
    nodes = property(lambda self: {n: w for n, (w, _) in self._nodes.items()})

    def __len__(self):
        return len(self._points)

    def __contains__(self, node):
        return node in self._nodes

    def add(self, node, weight, name=None):
        if not 0 <= node <= MAX_NODE:
            raise ValueError(f"node must be in 0..{MAX_NODE}, got {node}")
        if weight < 1:
            raise ValueError(f"weight must be >= 1, got {weight}")
        if name is None:
            name = str(node).encode()
        count = weight * self.points_per_weight
        old = self._nodes[node][0] * self.points_per_weight if node in self._nodes else 0
        if len(self._points) - old + count > self.max_points:
            raise ValueError("more than max_points")
        if old:
            self._points = [p for p in self._points if p & 0xFFFFFFFF != node]
        prev = 0
        for _ in range(count):
            prev = zlib.crc32(name + struct.pack("<I", prev))
            self._points.append(prev << 32 | node)
        self._points.sort()
        self._nodes[node] = (weight, name)

    def remove(self, node):
        del self._nodes[node]
        self._points = [p for p in self._points if p & 0xFFFFFFFF != node]

    def _first(self, key):
        if not self._points:
            return -1
        i = bisect.bisect_left(self._points, zlib.crc32(key) << 32)
        return 0 if i == len(self._points) else i

    def lookup(self, key):
        i = self._first(key)
        return -1 if i < 0 else self._points[i] & 0xFFFFFFFF

    def nodes_from(self, key):
        i = self._first(key)
        if i < 0:
            return []
        out = []
        for p in self._points[i:] + self._points[:i]:
            node = p & 0xFFFFFFFF
            if node not in out:
                out.append(node)
                if len(out) == len(self._nodes):
                    break
        return out
