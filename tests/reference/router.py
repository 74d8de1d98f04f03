"""Reference Router: a linear scan over every route, sorted by a precedence key.

Same API and documented precedence as ext/router.pyi (see ext/router.pyx's docstring), written
to be obviously correct rather than fast: no trie, paths split with str.split.
"""

import re
from collections import OrderedDict

MAX_CACHED_PATH = 1024

STATIC, PARAM, TAIL = 0, 1, 2  # also the precedence rank of each segment kind

_PARAM_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_HOST = re.compile(r"(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])\Z")
_WILD_HOST = re.compile(r"\*\.[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\Z")


def parse_path(path):
    """Return [(kind, text)] for a path pattern; text is the param/tail name for captures."""
    if not isinstance(path, str):
        raise TypeError(f"path pattern must be a str, not {type(path).__name__}")
    if not path.startswith("/"):
        raise ValueError(f"path pattern must start with '/': {path!r}")
    parts = path[1:].split("/")
    segs = []
    for i, seg in enumerate(parts):
        if "{" in seg or "}" in seg:
            well_formed = (
                seg.startswith("{") and seg.endswith("}") and len(seg) >= 2
                and seg.count("{") == 1 and seg.count("}") == 1
            )
            if not well_formed:
                raise ValueError(
                    f"unclosed or misplaced brace in segment {seg!r} of {path!r}: "
                    "a parameter is a whole segment like '{name}' or '{name*}'")
            name = seg[1:-1]
            kind = PARAM
            if name.endswith("*"):
                name, kind = name[:-1], TAIL
            if not name:
                raise ValueError(f"empty parameter name in segment {seg!r} of {path!r}")
            if not _PARAM_NAME.match(name):
                raise ValueError(
                    f"invalid parameter name {name!r} in {path!r}: use letters, digits, '_' and '-'")
        elif seg == "*":
            name, kind = "*", TAIL
        else:
            segs.append((STATIC, seg))
            continue
        if kind == TAIL and i != len(parts) - 1:
            raise ValueError(f"a tail ('*' or '{{name*}}') must be the last segment: {path!r}")
        if any(k != STATIC and n == name for k, n in segs):
            raise ValueError(f"duplicate parameter name {name!r} in {path!r}")
        segs.append((kind, name))
    return segs


def match_segments(pattern, segments):
    """Captured values (list) if the parsed pattern matches the request segments, else None."""
    values = []
    for i, (kind, text) in enumerate(pattern):
        if kind == TAIL:
            # The bare prefix (nothing left) matches too, capturing "".
            return values + ["/".join(segments[i:])]
        if i >= len(segments):
            return None
        if kind == STATIC and segments[i] != text:
            return None
        if kind == PARAM:
            if segments[i] == "":
                return None
            values.append(segments[i])
    return values if len(segments) == len(pattern) else None


class _Route:
    def __init__(self, index, route, tiers, pattern, methods):
        self.index = index
        self.route = route
        self.tiers = tiers  # set of ("exact", host) / ("wild", ".suffix") / ("any", None)
        self.pattern = pattern
        self.names = [text for kind, text in pattern if kind != STATIC]
        self.methods = methods
        # Static < param < tail per segment, compared left to right; a pattern that is a
        # proper prefix of another sorts first (a route ending here beats a tail at the end).
        self.rank = tuple(kind for kind, _ in pattern)


class Router:
    def __init__(self, cache_size=4096):
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0 = no cache), got {cache_size}")
        self._cache_size = cache_size
        self._routes = []
        # The router's cache is observable only through its counters, so the reference models
        # the recency order of cached paths per tier and recomputes every answer.
        self._cache = {}  # tier -> OrderedDict of paths
        self._hits = 0
        self._misses = 0

    cache_size = property(lambda self: self._cache_size)
    cache_hits = property(lambda self: self._hits)
    cache_misses = property(lambda self: self._misses)

    def __len__(self):
        return len(self._routes)

    def add(self, route, hosts, path, methods):
        pattern = parse_path(path)
        if isinstance(hosts, (str, bytes)):
            raise TypeError("hosts must be a list of host patterns (or None), not a single string")
        tiers = set()
        for h in hosts or ():
            if not isinstance(h, str) or not (_HOST.match(h) or _WILD_HOST.match(h)):
                raise ValueError(
                    f"bad host pattern {h!r}: expected a lowercase host name without a port "
                    "('api.example.com') or a wildcard ('*.example.com'); use None for any host")
            tiers.add(("wild", h[1:]) if h.startswith("*.") else ("exact", h))
        if not tiers:
            tiers.add(("any", None))
        if methods is not None:
            if isinstance(methods, (str, bytes)):
                raise TypeError("methods must be a set of method bytes (or None), not a single string")
            methods = frozenset(methods)
            for m in methods:
                if not isinstance(m, bytes) or not m:
                    raise TypeError(f"methods must be non-empty bytes like b'GET', got {m!r}")
            if not methods:
                raise ValueError("methods must not be empty: use None for any method")
        if route is None:
            raise TypeError("route must not be None: match() returns None as 'no route'")
        self._routes.append(_Route(len(self._routes), route, tiers, pattern, methods))
        for tier in tiers:
            self._cache[tier] = OrderedDict()

    def _tiers_for(self, host):
        known = set().union(*(r.tiers for r in self._routes))
        tiers = []
        if ("exact", host) in known:
            tiers.append(("exact", host))
        suffixes = [s for kind, s in known if kind == "wild"]
        for s in sorted(suffixes, key=len, reverse=True):
            if host.endswith(s) and len(host) > len(s):
                tiers.append(("wild", s))
        if ("any", None) in known:
            tiers.append(("any", None))
        return tiers

    def _count_cache(self, tier, path):
        cached = self._cache[tier]
        if self._cache_size and len(path) <= MAX_CACHED_PATH:
            if path in cached:
                cached.move_to_end(path)
                self._hits += 1
                return
            cached[path] = True
            if len(cached) > self._cache_size:
                cached.popitem(last=False)
        self._misses += 1

    def match(self, method, host, path):
        if not path.startswith("/"):
            return (None, None)
        segments = path[1:].split("/")
        allowed = set()
        for tier in self._tiers_for(host):
            self._count_cache(tier, path)
            candidates = []
            for r in self._routes:
                if tier in r.tiers:
                    values = match_segments(r.pattern, segments)
                    if values is not None:
                        candidates.append((r.rank, r.index, r, values))
            candidates.sort(key=lambda c: (c[0], c[1]))
            for _, _, r, values in candidates:
                if r.methods is None or method in r.methods:
                    return (r.route, dict(zip(r.names, values, strict=True)) if r.names else None)
                allowed |= r.methods
        if allowed:
            return (None, tuple(sorted(allowed)))
        return (None, None)
