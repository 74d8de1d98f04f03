"""Idempotency records: who holds a key, and the response to replay once it is done.

One interface, two stores. A record is looked up by an opaque ``key`` (the filter builds it
from route, caller and Idempotency-Key, so callers never share records) and carries the request
``fingerprint``. Its life:

  claim    no record (or an expired lease): the caller now owns the key for ``lease`` seconds
           under a fresh ``owner`` token and sends the request upstream.
  settle   the owner finishes: ``complete`` stores the response for ``ttl`` seconds, or
           ``release`` drops the claim so the client's retry runs again. Both act only while
           the record still carries the same owner token, so a request that outlived its lease
           can never overwrite a newer claim's record.

``claim`` answers one of (CLAIMED, None), (IN_FLIGHT, seconds left on the lease),
(MISMATCH, None) when the key is held or done for a different fingerprint, (DONE, Stored).

MemoryStore is one worker's: exactly-once holds only among requests that reach the same
worker process. RedisStore is shared by every worker and every edgeproxy instance: claim,
complete and release are each one Lua script, so two proxies racing for a key see one winner.
"""

import asyncio
import logging
import time
from functools import partial

import orjson

try:
    from ext.lru import LruCache
except ImportError as exc:  # no pure-Python fallback (STYLE.md rule 7)
    raise ImportError(f"edgeproxy's Cython extensions are not built ({exc}); run "
                      "`python setup.py build_ext --inplace`") from None

log = logging.getLogger("edgeproxy.idempotency")

CLAIMED = "claimed"
IN_FLIGHT = "in_flight"
MISMATCH = "mismatch"
DONE = "done"

# Per-record bookkeeping counted against the memory store's byte budget, on top of the body
# and header bytes, so a flood of tiny records still hits the bound.
_OVERHEAD = 160


class Stored:
    """A completed request's response. ``body`` None: the response was too large to keep,
    so it cannot be replayed (the request still executed: the key stays used)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list, body: bytes | None):
        self.status = status
        self.headers = headers
        self.body = body

    def size(self) -> int:
        n = _OVERHEAD + (len(self.body) if self.body is not None else 0)
        for name, value in self.headers:
            n += len(name) + len(value) + 4
        return n


def dump_headers(headers: list) -> bytes:
    return orjson.dumps([(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers])


def load_headers(raw: bytes) -> list:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in orjson.loads(raw)]


# -- memory


class _Claim:
    __slots__ = ("fingerprint", "owner", "until", "done")

    def __init__(self, fingerprint, owner, until):
        self.fingerprint = fingerprint
        self.owner = owner
        self.until = until
        self.done = None  # a Future the waiters of this claim share, made on first wait


class MemoryStore:
    """One worker's records. Completed responses live in ext.lru's byte-bounded LRU with the
    record TTL; claims in flight live apart in a dict (bounded by the requests this worker
    holds open), so memory pressure can evict old answers but never a live claim."""

    def __init__(self, max_bytes: int, clock=time.monotonic):
        self.clock = clock
        self._done = LruCache(max_bytes)
        self._claims: dict = {}

    def _get_claim(self, key, now):
        c = self._claims.get(key)
        if c is not None and c.until <= now:
            del self._claims[key]
            self._wake(c)
            return None
        return c

    def claim_now(self, key, fingerprint: bytes, owner: bytes, lease: float):
        now = self.clock()
        c = self._get_claim(key, now)
        if c is not None:
            if c.fingerprint != fingerprint:
                return MISMATCH, None
            return IN_FLIGHT, c.until - now
        rec = self._done.get(key, now)
        if rec is not None:
            if rec[0] != fingerprint:
                return MISMATCH, None
            return DONE, Stored(rec[1], list(rec[2]), rec[3])
        self._claims[key] = _Claim(fingerprint, owner, now + lease)
        return CLAIMED, None

    def settle(self, key, owner: bytes, stored: Stored | None, ttl: float,
               retry_for: float = 0.0) -> bool:
        """Complete (``stored``) or release (None) the claim ``owner`` holds, now (memory
        cannot fail, so ``retry_for`` has nothing to do)."""
        c = self._get_claim(key, self.clock())
        if c is None or c.owner != owner:
            return False
        del self._claims[key]
        if stored is not None:
            # A tuple of bytes and ints: the cycle collector stops tracking it, so a large
            # store does not lengthen every full collection (a Stored object would stay
            # tracked).
            rec = (c.fingerprint, stored.status, tuple(stored.headers), stored.body)
            self._done.set(key, rec, stored.size(), self.clock(), ttl)
        self._wake(c)
        return True

    def renew(self, key, owner: bytes, lease: float) -> None:
        """Extend the claim ``owner`` holds to ``lease`` seconds from now."""
        c = self._claims.get(key)
        if c is not None and c.owner == owner:
            c.until = self.clock() + lease

    @staticmethod
    def _wake(c: _Claim) -> None:
        if c.done is not None and not c.done.done():
            c.done.set_result(None)

    async def claim(self, key, fingerprint, owner, lease):
        return self.claim_now(key, fingerprint, owner, lease)

    async def complete(self, key, owner, stored: Stored, ttl: float) -> bool:
        return self.settle(key, owner, stored, ttl)

    async def release(self, key, owner) -> bool:
        return self.settle(key, owner, None, 0.0)

    async def lookup(self, key):
        """(state, fingerprint, Stored or None) or None: what the record holds, without
        claiming it (inspection; the tests read records through it)."""
        now = self.clock()
        c = self._get_claim(key, now)
        if c is not None:
            return IN_FLIGHT, c.fingerprint, None
        rec = self._done.get(key, now)
        return None if rec is None else (DONE, rec[0], Stored(rec[1], list(rec[2]), rec[3]))

    async def wait(self, key, timeout: float, attempt: int) -> None:
        """Return when the claim on ``key`` ends (settled or lease expired) or after
        ``timeout`` seconds, whichever is first; the caller claims again."""
        c = self._get_claim(key, self.clock())
        if c is None:
            return
        if c.done is None:
            c.done = asyncio.get_running_loop().create_future()
        timeout = min(timeout, max(c.until - self.clock(), 0.0))
        try:
            await asyncio.wait_for(asyncio.shield(c.done), timeout)
        except TimeoutError:
            pass

    def sweep(self, worker=None, now=None) -> None:
        """Drop claims whose lease ran out (a request whose finish never came)."""
        now = self.clock()
        for key in [k for k, c in self._claims.items() if c.until <= now]:
            self._wake(self._claims.pop(key))

    def __len__(self):
        return len(self._claims) + len(self._done)


# -- redis
#
# Record layout, both keys under one hash tag (one Redis Cluster slot):
#   <prefix>{idem:<key>}:m  hash  state ("p" in flight / "d" done), fp, owner, status,
#                                  headers (orjson), blen (body length; -1 = not kept)
#   <prefix>{idem:<key>}:b  string: the raw response body (binary-safe, no encoding)
# A claim's lease is the hash's PEXPIRE; complete replaces it with the ttl on both keys.

_CLAIM = """
local m = redis.call('HMGET', KEYS[1], 'state', 'fp', 'status', 'headers', 'blen')
if m[1] then
  if m[2] ~= ARGV[1] then return {'mismatch'} end
  if m[1] == 'p' then return {'in_flight', redis.call('PTTL', KEYS[1])} end
  local blen = tonumber(m[5])
  if blen < 0 then return {'done', m[3], m[4], false} end
  local body = redis.call('GET', KEYS[2])
  if body then return {'done', m[3], m[4], body} end
  -- The body key is gone (evicted under maxmemory): the record cannot be replayed, so it
  -- is dropped and this request claims the key afresh.
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'state', 'p', 'fp', ARGV[1], 'owner', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'claimed'}
"""

_COMPLETE = """
local m = redis.call('HMGET', KEYS[1], 'state', 'owner')
if m[1] ~= 'p' or m[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'd', 'status', ARGV[2], 'headers', ARGV[3], 'blen', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if tonumber(ARGV[5]) >= 0 then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[6]) end
return 1
"""

_RELEASE = """
local m = redis.call('HMGET', KEYS[1], 'state', 'owner')
if m[1] ~= 'p' or m[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

_RENEW = """
local m = redis.call('HMGET', KEYS[1], 'state', 'owner')
if m[1] ~= 'p' or m[2] ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_LOOKUP = """
local m = redis.call('HMGET', KEYS[1], 'state', 'fp', 'status', 'headers', 'blen')
if not m[1] then return false end
return {m[1], m[2], m[3], m[4], m[5], redis.call('GET', KEYS[2])}
"""


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _claimed(reply) -> bool:
    return reply[0] == b"claimed"


def _completed(reply) -> bool:
    return reply == 1


class RedisStore:
    """Records in the shared Redis (engine.stores.redis.RedisStore, ``shared.redis``).
    Every call may raise engine.stores.redis.StoreUnavailable; the filter applies its
    ``on_store_error`` policy.

    ``replicas`` > 0: a claim counts only once that many replicas acknowledged it (Redis
    WAIT, at most ``replica_timeout`` seconds); else it is given back and the call raises, so
    the filter's policy applies as if Redis were down. A completed answer is waited for the
    same way (in the background: a shortfall is logged). Without it a failover can lose the
    writes the old master acknowledged last (docs/redis.md)."""

    def __init__(self, redis, replicas: int = 0, replica_timeout: float = 0.1):
        self.redis = redis
        self.replicas = replicas
        self.replica_timeout = replica_timeout
        self.tasks = set()  # settle tasks in flight, held so they are not collected

    def _keys(self, key: str) -> list:
        return [self.redis.key("idem:" + key, "m"), self.redis.key("idem:" + key, "b")]

    async def claim(self, key, fingerprint, owner, lease):
        from engine.stores.redis import NotReplicated
        keys = self._keys(key)
        try:
            r = await self.redis.run(_CLAIM, keys, [fingerprint, owner, _ms(lease)],
                                     self.replicas, self.replica_timeout, _claimed)
        except NotReplicated:
            # Held by the master alone: a failover now could forget it and let a retry run
            # again. Given back, so the client's retry is not kept waiting for the lease.
            self._background(self.redis.run(_RELEASE, keys, [owner]), key)
            raise
        kind = r[0].decode()
        if kind == CLAIMED:
            return CLAIMED, None
        if kind == IN_FLIGHT:
            return IN_FLIGHT, max(int(r[1]), 0) / 1000
        if kind == MISMATCH:
            return MISMATCH, None
        return DONE, Stored(int(r[1]), load_headers(r[2]), r[3])

    async def complete(self, key, owner, stored: Stored, ttl: float) -> bool:
        body = stored.body
        args = [owner, stored.status, dump_headers(stored.headers),
                body if body is not None else b"", -1 if body is None else len(body), _ms(ttl)]
        return bool(await self.redis.run(_COMPLETE, self._keys(key), args, self.replicas,
                                         self.replica_timeout, _completed,
                                         len(body) if body is not None else 0))

    async def release(self, key, owner) -> bool:
        return bool(await self.redis.run(_RELEASE, self._keys(key), [owner]))

    async def lookup(self, key):
        r = await self.redis.run(_LOOKUP, self._keys(key), [])
        if r is None:
            return None
        if r[0] == b"p":
            return IN_FLIGHT, r[1], None
        body = r[5] if int(r[4]) >= 0 else None
        return DONE, r[1], Stored(int(r[2]), load_headers(r[3]), body)

    async def wait(self, key, timeout: float, attempt: int) -> None:
        # Polling with a short, growing step keeps this simple and bounded: no pub/sub
        # connection per waiter, and a claim whose owner died still ends at its lease.
        await asyncio.sleep(min(0.005 * (1 << min(attempt, 5)), 0.1, max(timeout, 0.0)))

    def settle(self, key, owner: bytes, stored: Stored | None, ttl: float,
               retry_for: float = 0.0) -> None:
        """Complete or release in the background (called from an exchange's finish).

        A failed attempt is made again, backing off, for ``retry_for`` seconds: Redis slow for
        a moment must not leave an answered request's claim to run out its lease, after which
        the client's retry would execute it a second time. Repeating is safe: a timeout says
        nothing of whether the command ran, and both scripts act only on a claim ``owner``
        still holds."""
        if stored is not None:
            attempt = partial(self.complete, key, owner, stored, ttl)
        else:
            attempt = partial(self.release, key, owner)
        self._background(self._retrying(attempt, key, retry_for), key)

    def renew(self, key, owner: bytes, lease: float) -> None:
        """Extend the claim ``owner`` holds (in the background; a failure leaves the old
        lease, which is what a crashed proxy leaves too)."""
        self._background(self.redis.run(_RENEW, self._keys(key), [owner, _ms(lease)]), key)

    def _background(self, coro, key) -> None:
        task = asyncio.get_running_loop().create_task(self._logged(coro, key))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _retrying(attempt, key, retry_for: float):
        from engine.stores.redis import StoreUnavailable
        loop = asyncio.get_running_loop()
        give_up = loop.time() + retry_for
        pause = 0.05
        while True:
            try:
                return await attempt()
            except StoreUnavailable as exc:
                if loop.time() + pause > give_up:
                    raise
                log.info("idempotency record %s: settling again in %.2f s (%s)", key, pause, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    @staticmethod
    async def _logged(coro, key):
        from engine.stores.redis import StoreUnavailable
        try:
            await coro
        except StoreUnavailable as exc:
            # The claim stays until its lease ends: the client's retry gets 409 meanwhile,
            # then runs again (at-least-once while Redis is unreachable).
            log.warning("idempotency record %s not settled: %s", key, exc)
