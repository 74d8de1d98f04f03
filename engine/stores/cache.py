"""Response cache storage: the memory tier (one worker's byte-bounded LRU).

A key is a URL (``scheme://host/path?query``); its value is the list of stored responses for
that URL (its Vary variants), newest first, opaque here. An index by key and by surrogate key
(tag) lets a purge by prefix or tag find what to drop; it may name keys the LRU evicted
since, and is pruned of them when it grows past twice the live entries.
"""

try:
    from ext.lru import LruCache
except ImportError as exc:  # no pure-Python fallback (STYLE.md rule 7)
    raise ImportError(f"edgeproxy's Cython extensions are not built ({exc}); run "
                      "`python setup.py build_ext --inplace`") from None

# Bookkeeping bytes counted per stored response on top of its body and headers, so a flood of
# tiny responses still meets the byte bound.
OVERHEAD = 256


class MemoryStore:
    __slots__ = ("lru", "keys", "tags", "prune_at")

    def __init__(self, max_bytes: int):
        self.lru = LruCache(max_bytes)
        self.keys = set()  # every key set since the last prune
        self.tags = {}  # tag -> set of keys
        self.prune_at = 1024

    @property
    def size_bytes(self) -> int:
        return self.lru.size_bytes

    def __len__(self) -> int:
        return len(self.lru)

    def get(self, key: bytes, now: float):
        return self.lru.get(key, now)

    def put(self, key: bytes, variants: list, size: int, now: float, ttl: float,
            tags=()) -> None:
        self.lru.set(key, variants, size, now, ttl)
        self.keys.add(key)
        for tag in tags:
            self.tags.setdefault(tag, set()).add(key)
        if len(self.keys) > self.prune_at:
            self._prune()

    def pop(self, key: bytes) -> bool:
        self.keys.discard(key)
        return self.lru.pop(key) is not None

    def purge_prefix(self, prefix: bytes) -> int:
        return sum([self.pop(k) for k in [k for k in self.keys if k.startswith(prefix)]])

    def purge_tag(self, tag: bytes) -> int:
        return sum([self.pop(k) for k in self.tags.pop(tag, ())])

    def clear(self) -> int:
        n = len(self.lru)
        self.lru.clear()
        self.keys.clear()
        self.tags.clear()
        return n

    def _prune(self) -> None:
        lru = self.lru
        self.keys = {k for k in self.keys if k in lru}
        for tag in list(self.tags):
            live = {k for k in self.tags[tag] if k in lru}
            if live:
                self.tags[tag] = live
            else:
                del self.tags[tag]
        self.prune_at = max(1024, 2 * len(self.keys))


class Marks:
    """Keys marked for a while: at most ``n``, the oldest forgotten first."""

    __slots__ = ("lru",)

    def __init__(self, n: int):
        self.lru = LruCache(n * 64, n)

    def mark(self, key, now: float, ttl: float) -> None:
        self.lru.set(key, True, 64, now, ttl)

    def has(self, key, now: float) -> bool:
        return self.lru.get(key, now) is not None


# -- the Redis tier, shared by every worker and instance
#
# One string per URL and route: <prefix>{cache:<route>:<url>}, holding the URL's variants as
# a 4-byte length, an orjson head (each variant's status, headers, times, secondary key,
# tags, body length) and the raw bodies after it, so bodies are stored as they are, binary
# and unencoded. A tag is a set of such keys: <prefix>{cachetag:<route>:<tag>}.

_GET = "return redis.call('GET', KEYS[1])"

_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 3, #ARGV do
  local tag = ARGV[i]
  redis.call('SADD', tag, KEYS[1])
  if redis.call('PTTL', tag) < tonumber(ARGV[2]) then redis.call('PEXPIRE', tag, ARGV[2]) end
end
return 1
"""

_DEL = "return redis.call('DEL', KEYS[1])"

_PURGE_TAG = """
local keys = redis.call('SMEMBERS', KEYS[1])
local n = 0
for _, k in ipairs(keys) do n = n + redis.call('DEL', k) end
redis.call('DEL', KEYS[1])
return n
"""

# One SCAN step: the keys of this cursor's batch that start with the prefix are dropped.
_PURGE_PREFIX = """
local r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 1000)
for _, k in ipairs(r[2]) do redis.call('DEL', k) end
return {r[1], #r[2]}
"""


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisTier:
    """A route's responses in the shared Redis (engine.stores.redis.RedisStore). Values are
    opaque bytes here (the cache filter packs them). Every call may raise
    engine.stores.redis.StoreUnavailable."""

    def __init__(self, redis, route: str):
        self.redis = redis
        self.route = route

    def key(self, url: bytes) -> str:
        return self.redis.key(f"cache:{self.route}:{url.decode('latin-1')}")

    def tag_key(self, tag: bytes) -> str:
        return self.redis.key(f"cachetag:{self.route}:{tag.decode('latin-1')}")

    async def get(self, url: bytes):
        return await self.redis.run(_GET, [self.key(url)], [])

    async def put(self, url: bytes, value: bytes, ttl: float, tags=()) -> None:
        await self.redis.run(_PUT, [self.key(url)],
                             [value, _ms(ttl), *[self.tag_key(t) for t in tags]])

    async def pop(self, url: bytes) -> int:
        return int(await self.redis.run(_DEL, [self.key(url)], []))

    async def purge_tag(self, tag: bytes) -> int:
        return int(await self.redis.run(_PURGE_TAG, [self.tag_key(tag)], []))

    async def purge_prefix(self, prefix: bytes) -> int:
        # The key without its closing "}" (see RedisStore.key), then anything.
        pattern = _glob_escape(self.key(prefix)[:-1]) + "*"
        cursor, n = b"0", 0
        while True:
            cursor, dropped = await self.redis.run(_PURGE_PREFIX, [], [cursor, pattern])
            n += int(dropped)
            if cursor in (b"0", 0):
                return n
