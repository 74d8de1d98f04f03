"""One pipelined connection to one Redis server, and how it is opened: TCP or a unix socket,
TLS, the AUTH and SELECT that follow.

A command is queued, every command queued in one loop iteration leaves in one write, and
replies resolve the waiting futures in order (Redis answers a connection's commands in the
order it sent them). hiredis packs commands and parses replies in C.
"""

import asyncio
import ssl
from collections import deque
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

pack = hiredis.pack_command


class StoreUnavailable(Exception):
    """Redis did not answer in time, errored, or its breaker is open."""


class StoreError(StoreUnavailable):
    """Redis answered with an error reply (``-ERR ...``): the command did not do its work.
    A StoreUnavailable, so every caller's on_store_error policy covers it."""


class ErrorReply(Exception):
    """What hiredis builds for an error reply; turned into StoreError by the caller."""


class RedisURL(NamedTuple):
    tls: bool
    host: str | None
    port: int | None
    path: str | None  # a unix socket's path (host and port None)
    db: int
    username: str | None
    password: str | None

    @property
    def where(self) -> str:
        """For operators' lines: never the password."""
        return self.path or f"{self.host}:{self.port}"


def parse_url(url: str) -> RedisURL:
    """A ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL; ValueError for anything else."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    db = query.pop("db", ["0"])[-1]
    if query:
        raise ValueError(f"unsupported redis URL option(s): {', '.join(sorted(query))}; "
                         "TLS files are [redis] keys (tls_ca, tls_cert, tls_key)")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f'a unix:// redis URL needs a socket path, got "{url}"')
        return RedisURL(False, None, None, unquote(parts.path), _db(db), username, password)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f'expected a redis://, rediss:// or unix:// URL, got "{url}"')
    path = parts.path.strip("/")
    if path:
        db = path
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {url!r}: {exc}") from None
    return RedisURL(parts.scheme == "rediss", parts.hostname or "127.0.0.1", port or 6379,
                    None, _db(db), username, password)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f'the redis database must be a number, got "{text}"')
    return int(text)


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; the port may be left out) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, ""
    host = host.strip("[]")
    if not host:
        raise ValueError(f'"{text}" names no host')
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'"{text}": the port must be 1-65535')
    return host, int(port)


def tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca`` (a PEM file; None: the
    system's trust store) and presents ``cert``/``key`` when given (mutual TLS, Redis's
    ``tls-auth-clients yes``). OSError or ssl.SSLError for unreadable files."""
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


class Connection(asyncio.Protocol):
    """One pipelined connection. ``pending`` holds ``(future, deadline)`` per command sent,
    in send order; a reply always belongs to the oldest entry (a future whose caller gave up
    stays in place until its reply arrives, so later replies stay aligned)."""

    __slots__ = ("loop", "transport", "lost", "reader", "pending", "out", "timer", "scripts",
                 "address", "waiting")

    def __init__(self, loop, address=None):
        self.loop = loop
        self.transport = None
        self.lost = False
        self.reader = hiredis.Reader(replyError=ErrorReply, notEnoughData=False)
        self.pending = deque()
        self.out = []
        self.timer = None
        self.scripts = set()  # SHA1s this connection has sent with EVAL
        self.address = address  # (host, port) it was opened to; None for a unix socket
        self.waiting = None  # (future, replicas) of the WAIT sent last, see wait_replicas

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
        timer = self.timer
        if timer is None:
            self.timer = self.loop.call_at(deadline, self._expire)
        elif deadline < timer.when():  # a short call after a bulky one (see redis.BULK)
            timer.cancel()
            self.timer = self.loop.call_at(deadline, self._expire)

    async def call(self, deadline: float, *command):
        """One command's reply (an ErrorReply is returned, not raised)."""
        fut = self.loop.create_future()
        self.send(pack(command), fut, deadline)
        return await fut

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


def send_script(conn: Connection, fut, deadline: float, sha: str, source: str, keys, args):
    """Queue a script: EVAL the first time on this connection, EVALSHA after. Redis runs a
    connection's commands in order, so the EVALSHAs queued behind a first EVAL find it, and no
    NOSCRIPT detour reorders this call after later ones (an idempotency "complete" must not
    land after the next "claim")."""
    if sha in conn.scripts:
        conn.send(pack(("EVALSHA", sha, len(keys), *keys, *args)), fut, deadline)
    else:
        conn.scripts.add(sha)
        conn.send(pack(("EVAL", source, len(keys), *keys, *args)), fut, deadline)


def wait_replicas(conn: Connection, replicas: int, timeout: float, deadline: float):
    """The future of a WAIT that covers every write this connection has had answered: the
    WAIT still unanswered, if one asks as many replicas (sent after those writes, since a
    connection's replies come in order), else a new one. One WAIT then serves every call
    whose write it follows (group commit), and a dead replica costs a burst of calls one
    ``timeout``, not one each."""
    waiting = conn.waiting
    if waiting is not None and not waiting[0].done() and waiting[1] >= replicas:
        return waiting[0]
    fut = conn.loop.create_future()
    conn.send(pack(("WAIT", replicas, max(int(timeout * 1000), 1))), fut, deadline)
    conn.waiting = (fut, replicas)
    return fut


class Opener:
    """How to open a data connection: TLS, credentials, database. ``open(host, port)``
    connects, says AUTH and SELECT, and returns the Connection; every failure is a
    StoreUnavailable."""

    def __init__(self, timeout: float, tls: ssl.SSLContext | None, server_name: str | None,
                 username: str | None, password: str | None, db: int = 0):
        self.timeout = timeout
        self.tls = tls
        self.server_name = server_name  # the name certificates must carry; None: the host
        self.hello = []
        if password is not None:
            self.hello.append(("AUTH", password) if username is None else
                              ("AUTH", username, password))
        if db:
            self.hello.append(("SELECT", db))

    async def open(self, loop, host: str | None, port: int | None,
                   path: str | None = None) -> Connection:
        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                if path is not None:
                    _, conn = await loop.create_unix_connection(lambda: Connection(loop),
                                                                path)
                elif self.tls is not None:
                    _, conn = await loop.create_connection(
                        lambda: Connection(loop, (host, port)), host, port, ssl=self.tls,
                        server_hostname=self.server_name or host)
                else:
                    _, conn = await loop.create_connection(
                        lambda: Connection(loop, (host, port)), host, port)
                deadline = loop.time() + self.timeout
                for command in self.hello:
                    reply = await conn.call(deadline, *command)
                    if reply.__class__ is ErrorReply:
                        raise StoreError(f"redis {command[0]}: {reply.args[0]}")
        except (OSError, TimeoutError, asyncio.CancelledError, StoreUnavailable) as exc:
            if conn is not None:
                conn.abort("redis connect failed")
            if not isinstance(exc, (OSError, TimeoutError)):
                raise
            # ssl.SSLError is an OSError: a certificate refused lands here, named.
            raise StoreUnavailable(f"redis connect to {path or f'{host}:{port}'}: "
                                   f"{exc.__class__.__name__}: {exc}") from None
        return conn


class Link:
    """The connection to one server: opened on first use (by ``open(loop)``, a coroutine
    function) and again after it is lost. Callers arriving while it opens share the attempt,
    each bounded by its own deadline."""

    __slots__ = ("conn", "_opening", "_open")

    def __init__(self, open):
        self.conn = None
        self._opening = None
        self._open = open

    async def get(self, loop, deadline: float) -> Connection:
        conn = self.conn
        if conn is not None and not conn.lost and conn.loop is loop:
            return conn
        task = self._opening
        if task is None or task.get_loop() is not loop:
            task = self._opening = loop.create_task(self._run(loop))
            # Its failure reaches whoever still waits; mark it seen for when nobody does.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            # shield: one caller's cancellation must not cancel the attempt for the rest.
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

    async def _run(self, loop) -> Connection:
        try:
            conn = await self._open(loop)
        finally:
            if self._opening is asyncio.current_task():
                self._opening = None
        self.conn = conn
        return conn

    def close(self, why: str = "redis store closed") -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.lost:
            conn.abort(why)
        task, self._opening = self._opening, None
        if task is not None and not task.done():
            task.cancel()
