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
bench/bench_redis_store.py. Here each worker keeps one connection and pipelines
automatically: a command is queued, every command queued in one loop iteration leaves in one
write, and replies resolve the waiting futures in order (Redis answers a connection's
commands in the order it sent them). hiredis packs commands and parses replies in C.

The connection is opened on first use, inside the worker's event loop, never in the
supervisor before fork.
"""

import asyncio
import time
from collections import deque
from hashlib import sha1
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from engine.stores.breaker_log import BreakerLog
from engine.upstream.health import CLOSED, OPEN, Circuit


class StoreUnavailable(Exception):
    """Redis did not answer in time, errored, or its breaker is open."""


class StoreError(StoreUnavailable):
    """Redis answered with an error reply (``-ERR ...``): the command did not do its work.
    A StoreUnavailable, so every caller's on_store_error policy covers it."""


class _ErrorReply(Exception):
    """What hiredis builds for an error reply; turned into StoreError by the caller."""


def parse_url(url: str) -> tuple:
    """``(host, port, unix_path, db, username, password)`` of a ``redis://`` or ``unix://``
    URL; ValueError for anything else (``rediss://`` included: TLS is not supported)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    db = query.pop("db", ["0"])[-1]
    if query:
        raise ValueError(f"unsupported redis URL option(s): {', '.join(sorted(query))}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f'a unix:// redis URL needs a socket path, got "{url}"')
        return None, None, unquote(parts.path), _db(db), username, password
    if parts.scheme == "rediss":
        raise ValueError("rediss:// (TLS) is not supported; use redis:// on a trusted network "
                         "or a local TLS tunnel")
    if parts.scheme != "redis":
        raise ValueError(f'expected a redis:// or unix:// URL, got "{url}"')
    path = parts.path.strip("/")
    if path:
        db = path
    return parts.hostname or "127.0.0.1", parts.port or 6379, None, _db(db), username, password


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f'the redis database must be a number, got "{text}"')
    return int(text)


class _Connection(asyncio.Protocol):
    """One pipelined connection. ``pending`` holds ``(future, deadline)`` per command sent,
    in send order; a reply always belongs to the oldest entry (a future whose caller gave up
    stays in place until its reply arrives, so later replies stay aligned)."""

    __slots__ = ("loop", "transport", "lost", "reader", "pending", "out", "timer", "scripts")

    def __init__(self, loop):
        self.loop = loop
        self.transport = None
        self.lost = False
        self.reader = hiredis.Reader(replyError=_ErrorReply, notEnoughData=False)
        self.pending = deque()
        self.out = []
        self.timer = None
        self.scripts = set()  # SHA1s this connection has sent with EVAL

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self._fail(f"redis connection lost: {exc or 'closed by the server'}")

    def data_received(self, data):
        reader = self.reader
        reader.feed(data)
        pending = self.pending
        try:
            reply = reader.gets()
            while reply is not False:
                fut = pending.popleft()[0]
                if not fut.done():
                    fut.set_result(reply)
                reply = reader.gets()
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody sent
            self.abort(f"redis protocol error: {exc!r}")

    def send(self, command: bytes, fut, deadline: float) -> None:
        if self.lost:
            fut.set_exception(StoreUnavailable("redis connection lost"))
            return
        out = self.out
        if not out:
            self.loop.call_soon(self._flush)
        out.append(command)
        self.pending.append((fut, deadline))
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._expire)

    def _flush(self):
        out = self.out
        if out and not self.lost:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _expire(self):
        # One timer per connection, re-armed at the earliest live deadline: far cheaper than
        # a timer (or a wait_for task) per command. A stuck oldest command means Redis hangs
        # or the link is dead, so the connection goes; a later one that ran out of time only
        # fails its own caller (its reply is still awaited to keep the order).
        self.timer = None
        now = self.loop.time()
        pending = self.pending
        if pending and pending[0][1] <= now:
            self.abort("redis timeout")
            return
        soonest = None
        for fut, deadline in pending:
            if fut.done():
                continue
            if deadline <= now:
                fut.set_exception(StoreUnavailable("redis timeout"))
            elif soonest is None or deadline < soonest:
                soonest = deadline
        if soonest is not None:
            self.timer = self.loop.call_at(soonest, self._expire)

    def abort(self, why: str) -> None:
        self._fail(why)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, why: str) -> None:
        # An exception each: one shared by many tasks would gather every task's traceback.
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.out.clear()
        pending, self.pending = self.pending, deque()
        for fut, _ in pending:
            if not fut.done():
                fut.set_exception(StoreUnavailable(why))


class RedisStore:
    def __init__(self, cfg, clock=time.monotonic):
        """``clock`` (monotonic seconds) times the breaker; tests pass their own."""
        self.cfg = cfg
        self.clock = clock
        self.prefix = cfg.prefix
        self._address = parse_url(cfg.url)
        self._timeout = cfg.timeout
        self._conn = None
        self._connecting = None
        self.breaker = Circuit(consecutive=cfg.breaker_failures, rate=0.0,
                               cooldown=cfg.breaker_cooldown, probes=1)
        self._shas = {}  # Lua source -> its SHA1 hex, as EVALSHA wants it
        host, port, path, db = self._address[:4]
        self.breaker_log = BreakerLog(f"{path or f'{host}:{port}'}/{db}")

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

    async def run(self, source: str, keys: list, args: list):
        """Run a Lua script atomically and return its reply (bytes, int, list or None):
        one round trip, EVAL the first time on a connection, EVALSHA after; a NOSCRIPT (after
        SCRIPT FLUSH) costs one more EVAL. Calls of one worker run in the order they are
        made, but for that NOSCRIPT retry. Raises StoreUnavailable (StoreError for an error
        reply) within ``timeout``."""
        breaker = self.breaker
        token = 0
        if breaker.state != CLOSED:
            now = self.clock()
            if not breaker.admits(now):
                raise StoreUnavailable("redis breaker open")
            # Past the cool-down: this call probes; the rest fail at once until it answers.
            token = breaker.begin(now)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = sha1(source.encode()).hexdigest()
        try:
            conn = self._conn
            if conn is None or conn.lost or conn.loop is not loop:
                conn = await self._connect(loop, deadline)
            fut = loop.create_future()
            if sha in conn.scripts:
                conn.send(hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args)),
                          fut, deadline)
            else:
                # First use on this connection: EVAL, which also caches the script. Redis
                # runs a connection's commands in order, so the EVALSHAs queued behind it
                # find it, and no NOSCRIPT detour reorders this call after later ones (an
                # idempotency "complete" must not land after the next "claim").
                conn.scripts.add(sha)
                conn.send(hiredis.pack_command(("EVAL", source, len(keys), *keys, *args)),
                          fut, deadline)
            reply = await fut
            if reply.__class__ is _ErrorReply and reply.args[0].startswith("NOSCRIPT"):
                fut = loop.create_future()
                conn.send(hiredis.pack_command(("EVAL", source, len(keys), *keys, *args)),
                          fut, deadline)
                reply = await fut
        except StoreUnavailable as exc:
            self._record(False, token, str(exc))
            raise
        except BaseException:
            # No verdict (the caller went away): a probe's slot is free for the next call.
            breaker.cancel(token)
            raise
        if reply.__class__ is _ErrorReply:
            self._record(False, token, reply.args[0])
            raise StoreError(f"redis: {reply.args[0]}")
        self._record(True, token)
        return reply

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.lost:
            conn.abort("redis store closed")
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            task.cancel()

    def _record(self, ok: bool, token, error: str = "") -> None:
        breaker = self.breaker
        was = breaker.state
        breaker.record(ok, self.clock(), token)
        if breaker.state != was and (breaker.state == CLOSED or was == CLOSED):
            # Opened from closed, or closed again: tell the operator, rate-bounded.
            self.breaker_log.changed(breaker.state == OPEN, self.clock(), error)
            self.breaker_log.flush_later(asyncio.get_running_loop(), self.clock)

    async def _connect(self, loop, deadline: float) -> _Connection:
        # Callers arriving while a connect is under way share it, each bounded by its own
        # deadline; shield keeps one caller's cancellation from cancelling it for the rest.
        task = self._connecting
        if task is None or task.get_loop() is not loop:
            task = self._connecting = loop.create_task(self._open(loop))
            # Its failure reaches whoever still waits; mark it seen for when nobody does.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(task)
        except TimeoutError:
            raise StoreUnavailable("redis connect timeout") from None
        except StoreUnavailable as exc:  # the shared task's: a copy per caller
            raise exc.__class__(*exc.args) from None
        except asyncio.CancelledError:
            if task.cancelled() and not asyncio.current_task().cancelling():
                raise StoreUnavailable("redis store closed") from None  # close() meanwhile
            raise

    async def _open(self, loop) -> _Connection:
        host, port, path, db, username, password = self._address
        conn = None
        try:
            async with asyncio.timeout(self._timeout):
                if path is not None:
                    _, conn = await loop.create_unix_connection(lambda: _Connection(loop), path)
                else:
                    _, conn = await loop.create_connection(lambda: _Connection(loop),
                                                           host, port)
                hello = []
                if password is not None:
                    hello.append(("AUTH", password) if username is None else
                                 ("AUTH", username, password))
                if db:
                    hello.append(("SELECT", db))
                deadline = loop.time() + self._timeout
                for command in hello:
                    fut = loop.create_future()
                    conn.send(hiredis.pack_command(command), fut, deadline)
                    reply = await fut
                    if reply.__class__ is _ErrorReply:
                        raise StoreError(f"redis {command[0]}: {reply.args[0]}")
        except (OSError, TimeoutError, asyncio.CancelledError, StoreUnavailable) as exc:
            if conn is not None:
                conn.abort("redis connect failed")
            if not isinstance(exc, (OSError, TimeoutError)):
                raise
            raise StoreUnavailable(f"redis connect: {exc.__class__.__name__}: {exc}") from None
        finally:
            if self._connecting is asyncio.current_task():
                self._connecting = None
        self._conn = conn
        return conn
