"""The shared Redis connection of one worker, with a short timeout and a breaker.

Every feature with ``store = "redis"`` goes through one RedisStore per distinct ``[redis]``
config. Redis failing is a normal event: a call that errors or times out raises
StoreUnavailable, and after ``breaker_failures`` of those in a row the breaker opens, so for
``breaker_cooldown`` seconds calls fail at once instead of each waiting out the timeout. The
first call after the cool-down is the probe: success closes the breaker, failure re-opens it.
Each feature decides what an unavailable store means (its ``on_store_error`` policy).

The client is created on first use, inside the worker's event loop (redis-py's asyncio
connections belong to the loop that made them), never in the supervisor before fork.
"""

import asyncio
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class StoreUnavailable(Exception):
    """Redis did not answer in time, errored, or its breaker is open."""


class RedisStore:
    def __init__(self, cfg):
        self.cfg = cfg
        self.prefix = cfg.prefix
        self._client = None
        self._failures = 0
        self._open_until = 0.0
        self._scripts = {}

    @property
    def client(self):
        if self._client is None:
            cfg = self.cfg
            self._client = aioredis.Redis.from_url(
                cfg.url, socket_timeout=cfg.timeout, socket_connect_timeout=cfg.timeout,
                max_connections=cfg.max_connections, retry_on_timeout=False)
        return self._client

    def key(self, *parts: str) -> str:
        """A namespaced key. ``parts[0]`` goes in a hash tag, so every key of one limit or
        one idempotency record lands on the same Redis Cluster slot."""
        first, rest = parts[0], parts[1:]
        return self.prefix + "{" + first + "}" + "".join(":" + p for p in rest)

    @property
    def is_open(self) -> bool:
        return self._failures >= self.cfg.breaker_failures and \
            time.monotonic() < self._open_until

    async def call(self, fn, *args, **kwargs):
        """``await fn(*args, **kwargs)`` under the breaker and a hard deadline of ``timeout``
        (the socket timeout alone does not bound a connect that hangs in DNS or a pool
        wait)."""
        if self.is_open:
            raise StoreUnavailable("redis breaker open")
        try:
            result = await asyncio.wait_for(fn(*args, **kwargs), self.cfg.timeout * 2)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failures += 1
            if self._failures >= self.cfg.breaker_failures:
                self._open_until = time.monotonic() + self.cfg.breaker_cooldown
            raise StoreUnavailable(f"redis: {exc.__class__.__name__}: {exc}") from None
        self._failures = 0
        return result

    def script(self, source: str):
        """A registered Lua script: redis-py runs it with EVALSHA and loads it again on
        NOSCRIPT (after a Redis restart or SCRIPT FLUSH)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    async def run(self, source: str, keys: list, args: list):
        """Run a Lua script atomically: one round trip (two after a NOSCRIPT)."""
        return await self.call(self.script(source), keys=keys, args=args)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            self._scripts.clear()
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass
