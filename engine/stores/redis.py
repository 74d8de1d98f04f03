"""The shared Redis connection of one worker, with a short timeout and a breaker.

Every feature with ``store = "redis"`` goes through one RedisStore per distinct ``[redis]``
config. Redis failing is a normal event: a call that errors or times out raises
StoreUnavailable, and after ``breaker_failures`` of those in a row the breaker opens, so for
``breaker_cooldown`` seconds calls fail at once instead of each waiting out the timeout. The
first call after the cool-down is the probe (the others keep failing at once while it runs):
success closes the breaker, failure re-opens it. The breaker is the upstreams' own
engine.upstream.health.Circuit (consecutive failures only, one probe). Each feature decides
what an unavailable store means (its ``on_store_error`` policy).

Why not redis-py: a rate-limited route made one EVALSHA per request, and redis-py's asyncio
client spent most of the proxy's CPU on it (pool checkout and release, command packing in
Python, a wait_for task and timer, one send and one recv per command); see
bench/bench_redis_store.py. Here each worker keeps one pipelined connection per server
(engine.stores.redis_conn).

Where that server is depends on ``mode``: the URL's (standalone), the master the sentinels
name (engine.stores.redis_sentinel), or for each key the master of its slot
(engine.stores.redis_cluster). Discovery is written on the same connection class, a few
commands run only when a connection opens or the slot map changes: nothing per request but a
CRC16 in cluster mode.

Connections are opened on first use, inside the worker's event loop, never in the
supervisor before fork.
"""

import asyncio
import time
from hashlib import sha1

from engine.stores.breaker_log import BreakerLog
from engine.stores.redis_cluster import Cluster
from engine.stores.redis_conn import (ErrorReply, Link, Opener, RedisURL, StoreError,
                                      StoreUnavailable, pack, parse_address, parse_url,
                                      send_script, tls_context, wait_replicas)
from engine.stores.redis_sentinel import Sentinels
from engine.upstream.health import CLOSED, OPEN, Circuit

__all__ = ["RedisStore", "RedisURL", "StoreError", "StoreUnavailable", "NotReplicated",
           "parse_url"]

MAX_REDIRECTS = 16  # MOVED/ASK/TRYAGAIN hops of one call (the deadline bounds them too)
# A call carrying at least BULK bytes (an idempotent answer's body) goes on the side connection,
# so the small per-request calls pipelined on the main one never wait behind it, and it gets
# 1 s more per BULK_RATE bytes to move them: ``timeout`` is meant to catch a Redis that stopped
# answering, not one busy copying 8 MiB on a loaded host.
BULK = 64 << 10
BULK_RATE = 10 << 20  # bytes/s: far below any loopback or LAN, so only a stall trips it


class NotReplicated(StoreUnavailable):
    """The script ran on the master, but fewer replicas than asked acknowledged it within
    the replica timeout (WAIT): a failover now could lose its writes. ``reply`` is the
    script's reply, ``acked`` how many replicas acknowledged."""

    def __init__(self, reply, acked: int, wanted: int):
        super().__init__(f"redis: {acked} of {wanted} replicas acknowledged the write")
        self.reply = reply
        self.acked = acked


def _seen(fut) -> None:
    if not fut.cancelled():
        fut.exception()


class RedisStore:
    def __init__(self, cfg, clock=time.monotonic):
        """``clock`` (monotonic seconds) times the breaker; tests pass their own."""
        self.cfg = cfg
        self.clock = clock
        self.prefix = cfg.prefix
        self._timeout = cfg.timeout
        url = parse_url(cfg.url)
        tls = tls_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key) if url.tls else None
        opener = Opener(cfg.timeout, tls, cfg.tls_server_name, url.username, url.password,
                        url.db)
        self._cluster = None
        self._sentinels = None
        if cfg.mode == "cluster":
            seeds = [(url.host, url.port)] + [parse_address(n, 6379) for n in cfg.nodes]
            self._cluster = Cluster(seeds, opener)
            where = f"cluster {url.where}"
        elif cfg.mode == "sentinel":
            sentinels = self._sentinels = Sentinels(
                [parse_address(a, 26379) for a in cfg.sentinels], url.host,
                Opener(cfg.timeout, tls, cfg.tls_server_name, cfg.sentinel_username,
                       cfg.sentinel_password), opener)
            self._link = Link(sentinels.open_master)
            self._durable_link = Link(sentinels.open_master)
            where = f"sentinel master {url.host}/{url.db}"
        else:
            def open_server(loop):
                return opener.open(loop, url.host, url.port, url.path)
            self._link = Link(open_server)
            # Scripts whose writes replicas must acknowledge (WAIT), and bulky ones (BULK), go
            # on a connection of their own: WAIT holds its connection, and megabytes in
            # flight hold theirs; neither must hold the rate limits'.
            self._durable_link = Link(open_server)
            where = f"{url.where}/{url.db}"
        self.breaker = Circuit(consecutive=cfg.breaker_failures, rate=0.0,
                               cooldown=cfg.breaker_cooldown, probes=1)
        self._shas = {}  # Lua source -> its SHA1 hex, as EVALSHA wants it
        self.breaker_log = BreakerLog(where)

    def key(self, *parts: str) -> str:
        """A namespaced key. ``parts[0]`` goes in a hash tag, so every key of one limit or
        one idempotency record lands on the same Redis Cluster slot."""
        if len(parts) == 1:
            return self.prefix + "{" + parts[0] + "}"
        return self.prefix + "{" + parts[0] + "}:" + ":".join(parts[1:])

    @property
    def is_open(self) -> bool:
        """Calls fail at once now: cooling down, or the probe is under way."""
        return not self.breaker.admits(self.clock())

    @property
    def breaker_state(self) -> str:
        """The breaker's state for operators: "closed", "open" or "half_open" (its probe is
        under way). It stays "open" past the cool-down until a call comes to be the probe."""
        return self.breaker.state_name

    @property
    def connected(self) -> bool:
        """Whether any connection to Redis is open now."""
        links = self._cluster.links.values() if self._cluster is not None else \
            (self._link, self._durable_link)
        return any(link.conn is not None and not link.conn.lost for link in links)

    async def run(self, source: str, keys: list, args: list, replicas: int = 0,
                  replica_timeout: float = 0.0, wrote=None, bulk: int = 0):
        """Run a Lua script atomically and return its reply (bytes, int, list or None):
        one round trip, EVAL the first time on a connection, EVALSHA after; a NOSCRIPT (after
        SCRIPT FLUSH), a cluster redirect or a demoted master's READONLY cost one more. Calls
        of one worker run in the order they are made, but for those retries. Raises
        StoreUnavailable (StoreError for an error reply) within ``timeout``.

        ``replicas`` > 0: then WAIT until that many replicas acknowledged the script's writes,
        at most ``replica_timeout`` seconds more; fewer raises NotReplicated (the script ran).
        ``wrote(reply)`` tells whether the script wrote anything (None: assume it did): a
        reply that wrote nothing needs no acknowledgement.

        ``bulk``: the bytes the call carries, when that may be many (see BULK).
        """
        breaker = self.breaker
        token = 0
        if breaker.state != CLOSED:
            now = self.clock()
            if not breaker.admits(now):
                raise StoreUnavailable("redis breaker open")
            # Past the cool-down: this call probes; the rest fail at once until it answers.
            token = breaker.begin(now)
        loop = asyncio.get_running_loop()
        durable = replicas > 0
        side = durable  # on the side connection (see _durable_link)
        if bulk >= BULK:
            side = True
            deadline = loop.time() + self._timeout + bulk / BULK_RATE
        else:
            deadline = loop.time() + self._timeout
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = sha1(source.encode()).hexdigest()
        try:
            cluster = self._cluster
            if cluster is None:
                link = self._durable_link if side else self._link
                conn = link.conn
                if conn is None or conn.lost or conn.loop is not loop:
                    conn = await link.get(loop, deadline)
                if self._sentinels is not None:
                    self._sentinels.watch(loop, (self._link, self._durable_link))
            else:
                conn = cluster.ready(keys, side)
                if conn is None or conn.loop is not loop:
                    conn = await cluster.connection(loop, keys, deadline, side)
            fut = loop.create_future()
            send_script(conn, fut, deadline, sha, source, keys, args)
            reply = await fut
            if reply.__class__ is ErrorReply:
                reply, conn = await self._mend(loop, conn, reply, sha, source, keys, args,
                                               deadline, side)
            acked = replicas
            if durable and reply.__class__ is not ErrorReply and (wrote is None or wrote(reply)):
                acked = await asyncio.shield(wait_replicas(
                    conn, replicas, replica_timeout, loop.time() + replica_timeout +
                    self._timeout))  # shield: the future may be shared by other calls
        except StoreUnavailable as exc:
            self._record(False, token, str(exc))
            raise
        except BaseException:
            # No verdict (the caller went away): a probe's slot is free for the next call.
            breaker.cancel(token)
            raise
        if reply.__class__ is ErrorReply or acked.__class__ is ErrorReply:
            error = (reply if reply.__class__ is ErrorReply else acked).args[0]
            self._record(False, token, error)
            raise StoreError(f"redis: {error}")
        # Redis answered: missing replica acknowledgements are the caller's to weigh, not a
        # reason to stop every feature's calls (rate limits need no replica).
        self._record(True, token)
        if acked < replicas:
            raise NotReplicated(reply, acked, replicas)
        return reply

    async def _mend(self, loop, conn, reply, sha, source, keys, args, deadline, side):
        """Send again a script whose error reply another try can mend; (reply, connection
        that gave it). Every other error reply is returned as it came. ``side``: on the side
        connections."""
        cluster = self._cluster
        readonly = False
        for _ in range(MAX_REDIRECTS):
            text = reply.args[0]
            kind = text.partition(" ")[0]
            if kind == "ERR" and "-READONLY " in text:  # Redis 6 wraps a script's READONLY
                kind = "READONLY"
            fut = loop.create_future()
            if kind == "NOSCRIPT":  # SCRIPT FLUSH, or a node that never saw it
                conn.send(pack(("EVAL", source, len(keys), *keys, *args)), fut, deadline)
            elif kind == "MOVED" and cluster is not None:
                addr = cluster.moved(loop, text, conn)
                conn = await cluster.link(addr, side).get(loop, deadline)
                send_script(conn, fut, deadline, sha, source, keys, args)
            elif kind == "ASK" and cluster is not None:
                # The slot is migrating and this key has left: one command to the importing
                # node, announced by ASKING (EVAL: a NOSCRIPT would need a second ASKING).
                conn = await cluster.link(cluster.asked(text, conn), side).get(loop, deadline)
                asking = loop.create_future()
                asking.add_done_callback(_seen)
                conn.send(pack(("ASKING",)), asking, deadline)
                conn.scripts.add(sha)
                conn.send(pack(("EVAL", source, len(keys), *keys, *args)), fut, deadline)
            elif kind == "TRYAGAIN" and cluster is not None:
                # A multi-key script whose keys are split by a migration under way.
                if loop.time() + 0.02 >= deadline:
                    break
                await asyncio.sleep(0.01)
                conn = await cluster.connection(loop, keys, deadline, side)
                send_script(conn, fut, deadline, sha, source, keys, args)
            elif kind == "READONLY" and not readonly:
                # The master was demoted: ask again where the master is (the sentinels, or a
                # new slot map) and run there. Safe to resend: a replica refused the write.
                readonly = True
                conn.abort("redis: the server is a replica now (READONLY)")
                if cluster is not None:
                    cluster.refresh(loop)
                    conn = await cluster.connection(loop, keys, deadline, side)
                else:
                    link = self._side_link if side else self._link
                    conn = await link.get(loop, deadline)
                send_script(conn, fut, deadline, sha, source, keys, args)
            else:
                fut.cancel()
                break
            reply = await fut
            if reply.__class__ is not ErrorReply:
                break
        return reply, conn

    async def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            return
        self._link.close()
        self._durable_link.close()
        if self._sentinels is not None:
            self._sentinels.close()

    def _record(self, ok: bool, token, error: str = "") -> None:
        breaker = self.breaker
        was = breaker.state
        breaker.record(ok, self.clock(), token)
        if breaker.state != was and (breaker.state == CLOSED or was == CLOSED):
            # Opened from closed, or closed again: tell the operator, rate-bounded.
            self.breaker_log.changed(breaker.state == OPEN, self.clock(), error)
            self.breaker_log.flush_later(asyncio.get_running_loop(), self.clock)
