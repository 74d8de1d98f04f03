"""Request router (ext.router): a radix trie over host + path segments, with a match cache.

Patterns. A path pattern starts with "/" and is split on "/" into segments:

- static   `/users/me`           the segment must equal the text.
- param    `/users/{id}`         `{name}` matches exactly one non-empty segment.
- tail     `/static/*`, `/files/{path*}`  only as the last segment: matches the prefix itself
  (`/static`, `/static/`) and anything below it (`/static/a/b.css`). The capture is the rest of
  the path after the prefix's slash (maybe ""), named "*" or the given name.

A trailing slash is significant for static and param patterns (`/a/` and `/a` differ). Captures
are raw path text: nothing is percent-decoded. Hosts: None or [] means any host; `api.example.com`
is one exact host; `*.example.com` is any host ending in `.example.com` with at least one label
before it (not `example.com` itself). Host names are lowercase without a port: the caller
normalises them. `methods` is None (any method) or a frozenset of method bytes (b"GET").

Precedence.

1. Host tiers, in order: the exact host; then wildcard hosts from the longest suffix to the
   shortest; then any-host routes. Tiers fall through: when no route of a tier accepts the
   path and method, the next tier is tried.
2. Within a tier, per segment from left to right: a static segment beats `{param}`, which beats a
   tail, with backtracking (when the static branch dead-ends, the param branch is tried, then the
   tail). A deeper tail beats a shallower one; a route ending exactly at the path beats a tail
   that matches its bare prefix. Every matching route of the tier lands in one candidate list in
   this order; routes with the same pattern keep their add order.
3. The first candidate, across tiers in order, whose methods accept the request method wins:
   `(route, params)`, params being a dict of captures or None for a pattern without any. When
   candidates exist but none accepts the method, the result is `(None, allowed)`: the sorted,
   de-duplicated methods of every candidate of every tier (a 405 and its Allow header). When
   nothing matches the host and path, `(None, None)` (a 404).

Cost. `match` is O(path segments): static children are a dict per trie node, the path is walked
by index, the exact host is one dict lookup and wildcard suffixes are looked up only at the dots
of the host. Each tier caches `path -> candidate list` in an `ext.lru.LruCache` of `cache_size`
paths (paths longer than MAX_CACHED_PATH characters are not cached), so a repeated path costs one
cache lookup and a method check. `cache_hits` / `cache_misses` count tier lookups answered from
the cache / by walking the trie. Adding a route clears the caches of the tiers it joins.
"""

import re

cimport cython

from cpython.set cimport PySet_Contains
from cpython.unicode cimport PyUnicode_Tailmatch

from ext._common cimport find_char
from ext.lru cimport LruCache

MAX_CACHED_PATH = 1024
cdef Py_ssize_t _MAX_CACHED_PATH = MAX_CACHED_PATH

cdef tuple _NO_MATCH = (None, None)

cdef object _PARAM_NAME = re.compile(r"[A-Za-z0-9_-]+\Z").match
cdef object _HOST = re.compile(r"(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])\Z").match
cdef object _WILD_HOST = re.compile(r"\*\.[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\Z").match

# Segment kinds of a parsed pattern.
cdef enum:
    STATIC = 0
    PARAM = 1
    TAIL = 2


@cython.final
cdef class _Leaf:
    pass


@cython.final
cdef class _Node:
    pass


@cython.final
cdef class _Tier:
    def __cinit__(self, Py_ssize_t cache_size):
        self.root = _Node()
        self.cache = LruCache(cache_size, cache_size) if cache_size > 0 else None


@cython.wraparound(True)  # control plane: slices below use negative indices
cdef list _parse_path(object path, list names):
    # Validate a path pattern; return [(kind, text)] and fill `names` with its capture names.
    cdef list segs = []
    cdef Py_ssize_t i, last
    if not isinstance(path, str):
        raise TypeError(f"path pattern must be a str, not {type(path).__name__}")
    if not path.startswith("/"):
        raise ValueError(f"path pattern must start with '/': {path!r}")
    parts = path[1:].split("/")
    last = len(parts) - 1
    for i, seg in enumerate(parts):
        if "{" in seg or "}" in seg:
            if not (seg.startswith("{") and seg.endswith("}") and len(seg) >= 2
                    and seg.count("{") == 1 and seg.count("}") == 1):
                raise ValueError(
                    f"unclosed or misplaced brace in segment {seg!r} of {path!r}: "
                    "a parameter is a whole segment like '{name}' or '{name*}'")
            name = seg[1:-1]
            kind = PARAM
            if name.endswith("*"):
                name = name[:-1]
                kind = TAIL
            if not name:
                raise ValueError(f"empty parameter name in segment {seg!r} of {path!r}")
            if not _PARAM_NAME(name):
                raise ValueError(
                    f"invalid parameter name {name!r} in {path!r}: "
                    "use letters, digits, '_' and '-'")
        elif seg == "*":
            name = "*"
            kind = TAIL
        else:
            segs.append((STATIC, seg))
            continue
        if kind == TAIL and i != last:
            raise ValueError(f"a tail ('*' or '{{name*}}') must be the last segment: {path!r}")
        if name in names:
            raise ValueError(f"duplicate parameter name {name!r} in {path!r}")
        names.append(name)
        segs.append((kind, name))
    return segs


cdef list _parse_hosts(object hosts):
    # Validate host patterns; return them de-duplicated in order, or None for any host.
    cdef list out = []
    if hosts is None:
        return None
    if isinstance(hosts, (str, bytes)):
        raise TypeError("hosts must be a list of host patterns (or None), not a single string")
    for h in hosts:
        if not isinstance(h, str) or not (_HOST(h) or _WILD_HOST(h)):
            raise ValueError(
                f"bad host pattern {h!r}: expected a lowercase host name without a port "
                "('api.example.com') or a wildcard ('*.example.com'); use None for any host")
        if h not in out:
            out.append(h)
    return out or None


cdef frozenset _parse_methods(object methods):
    if methods is None:
        return None
    if isinstance(methods, (str, bytes)):
        raise TypeError("methods must be a set of method bytes (or None), not a single string")
    mset = frozenset(methods)
    for m in mset:
        if not isinstance(m, bytes) or not m:
            raise TypeError(f"methods must be non-empty bytes like b'GET', got {m!r}")
    if not mset:
        raise ValueError("methods must not be empty: use None for any method")
    return mset


cdef tuple _result(_Leaf leaf, object vals):
    cdef dict params
    cdef tuple names
    cdef Py_ssize_t i
    if vals is None:
        return (leaf.route, None)
    names = leaf.names
    params = {}
    for i in range(len(names)):
        params[names[i]] = (<tuple>vals)[i]
    return (leaf.route, params)


cdef inline tuple _pick(tuple cands, bytes method):
    # cands is flat: (leaf, captures, leaf, captures, ...) in precedence order.
    cdef Py_ssize_t i
    cdef _Leaf leaf
    for i in range(0, len(cands), 2):
        leaf = <_Leaf>cands[i]
        if leaf.methods is None or PySet_Contains(leaf.methods, method):
            return _result(leaf, cands[i + 1])
    return None


cdef tuple _allowed(list pending):
    cdef set allowed = set()
    cdef tuple cands
    cdef Py_ssize_t i
    for cands in pending:
        for i in range(0, len(cands), 2):
            allowed.update((<_Leaf>cands[i]).methods)
    return tuple(sorted(allowed))


cdef _Node _static_child(_Node node, str text):
    # The static child of node for segment text, created if missing.
    cdef _Node child
    if node.key is None and node.static is None:
        node.key = text
        node.child = _Node()
        return node.child
    if node.key is not None:
        if node.key == text:
            return node.child
        node.static = {node.key: node.child}
        node.key = None
        node.child = None
    child = node.static.get(text)
    if child is None:
        child = node.static[text] = _Node()
    return child


@cython.final
cdef class Router:
    """Routes (method, host, path) to an added route; see the module docstring for precedence."""

    def __cinit__(self, Py_ssize_t cache_size=4096):
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0 = no cache), got {cache_size}")
        self.cache_size = cache_size
        self.cache_hits = 0
        self.cache_misses = 0
        self._exact = {}
        self._wild = {}
        self._any = None
        self._wild_min = 0
        self._wild_max = 0
        self._count = 0

    def __len__(self):
        return self._count

    def add(self, route, hosts, path, methods):
        """Add a route for hosts (None = any) x path pattern x methods (None = any)."""
        cdef list names = []
        cdef list segs = _parse_path(path, names)
        cdef list host_list = _parse_hosts(hosts)
        cdef frozenset mset = _parse_methods(methods)
        cdef list tiers = []
        cdef _Tier tier
        cdef _Node node, child
        cdef _Leaf leaf = _Leaf()
        cdef Py_ssize_t n
        if route is None:
            raise TypeError("route must not be None: match() returns None as 'no route'")
        leaf.route = route
        leaf.methods = mset
        leaf.names = tuple(names)

        if host_list is None:
            if self._any is None:
                self._any = _Tier(self.cache_size)
            tiers.append(self._any)
        else:
            for h in host_list:
                if h.startswith("*."):
                    suffix = h[1:]
                    tier = self._wild.get(suffix)
                    if tier is None:
                        tier = self._wild[suffix] = _Tier(self.cache_size)
                        n = len(suffix)
                        if len(self._wild) == 1 or n < self._wild_min:
                            self._wild_min = n
                        if n > self._wild_max:
                            self._wild_max = n
                else:
                    tier = self._exact.get(h)
                    if tier is None:
                        tier = self._exact[h] = _Tier(self.cache_size)
                tiers.append(tier)

        for tier in tiers:
            node = tier.root
            for kind, text in segs:
                if kind == STATIC:
                    node = _static_child(node, text)
                elif kind == PARAM:
                    if node.param is None:
                        node.param = _Node()
                    node = node.param
                else:  # TAIL: always last, stored on its prefix's node
                    node.tails = (node.tails or ()) + (leaf,)
                    break
            else:
                node.leaves = (node.leaves or ()) + (leaf,)
            if tier.cache is not None:
                tier.cache.clear()
        self._count += 1

    cpdef tuple match(self, bytes method, str host, str path):
        """Return (route, params), (None, allowed_methods) for a 405, or (None, None)."""
        cdef Py_ssize_t n, i
        cdef object found
        cdef tuple cands, res
        cdef list pending = None
        if method is None or host is None or path is None:
            raise TypeError("match() takes bytes method, str host and str path, not None")
        if len(path) == 0 or path[0] != u"/":
            return _NO_MATCH

        if self._exact:
            found = self._exact.get(host)
            if found is not None:
                cands = self._candidates(<_Tier>found, path)
                if cands:
                    res = _pick(cands, method)
                    if res is not None:
                        return res
                    pending = [cands]

        if self._wild:
            n = len(host)
            # Left to right over the dots = longest suffix first.
            i = find_char(host, u".", 1, n)
            while i != -1 and n - i >= self._wild_min:
                if n - i <= self._wild_max:
                    found = self._wild.get(host[i:])
                    if found is not None:
                        cands = self._candidates(<_Tier>found, path)
                        if cands:
                            res = _pick(cands, method)
                            if res is not None:
                                return res
                            if pending is None:
                                pending = [cands]
                            else:
                                pending.append(cands)
                i = find_char(host, u".", i + 1, n)

        if self._any is not None:
            cands = self._candidates(self._any, path)
            if cands:
                res = _pick(cands, method)
                if res is not None:
                    return res
                if pending is None:
                    pending = [cands]
                else:
                    pending.append(cands)

        if pending is None:
            return _NO_MATCH
        return (None, _allowed(pending))

    cdef inline tuple _candidates(self, _Tier tier, str path):
        # The tier's candidates for path: cached, else walked (and cached by _walk_tier).
        cdef object cached
        if tier.cache is not None and len(path) <= _MAX_CACHED_PATH:
            cached = tier.cache.get(path, 0.0)
            if cached is not None:
                self.cache_hits += 1
                return <tuple>cached
        return self._walk_tier(tier, path)

    cdef tuple _walk_tier(self, _Tier tier, str path):
        # Every route of the tier matching path, in precedence order, flat:
        # (leaf, captures, leaf, captures, ...); captures is None or a tuple of str.
        cdef list out = []
        cdef tuple cands
        self.cache_misses += 1
        self._walk(tier.root, path, 1, [], out)
        cands = tuple(out)
        if tier.cache is not None and len(path) <= _MAX_CACHED_PATH:
            tier.cache.set(path, cands, 1, 0.0, 0.0)
        return cands

    cdef int _walk(self, _Node node, str path, Py_ssize_t pos, list vals, list out) except -1:
        # Depth-first in precedence order. `pos` is where the next segment starts, and
        # pos > len(path) once every segment is consumed. Recursion depth is bounded by the
        # longest pattern, not by the request path.
        cdef Py_ssize_t n = len(path)
        cdef Py_ssize_t end
        cdef object child, captured
        cdef str seg = None
        cdef _Leaf leaf
        if pos > n:
            if node.leaves is not None:
                captured = tuple(vals) if vals else None
                for leaf in node.leaves:
                    out.append(leaf)
                    out.append(captured)
            if node.tails is not None:
                captured = tuple(vals) + ("",)
                for leaf in node.tails:
                    out.append(leaf)
                    out.append(captured)
            return 0
        end = find_char(path, u"/", pos, n)
        if end == -1:
            end = n
        if node.key is not None:
            # One static child: compare in place (no substring, no hashing).
            if len(node.key) == end - pos and PyUnicode_Tailmatch(path, node.key, pos, end, -1):
                self._walk(node.child, path, end + 1, vals, out)
        elif node.static is not None:
            seg = path[pos:end]
            child = node.static.get(seg)
            if child is not None:
                self._walk(<_Node>child, path, end + 1, vals, out)
        if node.param is not None and end > pos:
            if seg is None:
                seg = path[pos:end]
            vals.append(seg)
            self._walk(node.param, path, end + 1, vals, out)
            vals.pop()
        if node.tails is not None:
            vals.append(path[pos:])
            captured = tuple(vals)
            vals.pop()
            for leaf in node.tails:
                out.append(leaf)
                out.append(captured)
        return 0
