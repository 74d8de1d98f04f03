"""A worker: one uvloop event loop serving client connections with the current snapshot.

Timeouts are not one timer per connection: each connection keeps a ``deadline`` (coarse, on the
worker's clock ``now``) and one periodic sweep closes whatever passed it. That keeps the hot
path free of timer churn; the sweep interval bounds the timeouts' precision.
"""

import asyncio
import gc
import os
import select
import signal
import socket
import time
import traceback

from engine.control.access_log import open_access_log
from engine.control.metrics import worker_snapshot, write_json
from engine.control.tls import front_context
from engine.http.negotiate import protocol_factory
from engine.http.protocol import RequestIds
from engine.http.stats import RouteStats
from engine.upstream.call import Clock, WorkerCore
from engine.wire.epoll import Poller

# How often a worker writes its counters for the admin API (also on reload and at exit).
STATS_INTERVAL = 1.0
# While draining, how long a connection must stay idle before we close it (see drain).
DRAIN_IDLE = 1.0
# Handles per TLS listening socket, each on a duplicate of it: how many connections one
# loop turn may accept (see Worker.start). nginx's multi_accept and HAProxy's maxaccept
# answer the same need (the Poller's listeners accept up to 64 per turn).
ACCEPT_HANDLES = 8


class Worker(WorkerCore):
    def __init__(self, runtime, loop=None, stats_path: str | None = None, generation: int = 0):
        self.loop = loop or asyncio.get_event_loop()
        # Plain TCP connections, client and upstream, are served by our own epoll set
        # (engine/wire/epoll.pyx); TLS ones by uvloop.
        self.poller = Poller(self.loop)
        self.runtime = runtime
        self.conns = set()
        self.ticks = Clock(self.loop.time())  # ``now``, read by the data plane in C
        self.clock = time.perf_counter
        self.draining = False
        self.server = None  # the first of ``servers``
        self.servers = []
        self.sockets = []
        self.access_log = open_access_log(runtime.config.server.access_log,
                                          runtime.config.server.access_log_format)
        self.request_ids = RequestIds(os.urandom(6).hex().encode())
        # Counters by route name (None: requests no route matched); they outlive reloads.
        self.route_stats: dict[str | None, RouteStats] = {None: RouteStats()}
        self.unrouted_stats = self.route_stats[None]
        self._attach_stats(runtime)
        self.generation = generation  # of the config serving (the supervisor counts)
        self.stats_path = stats_path
        self._stats_due = 0.0
        self._tick_handle = None
        self.tick_interval = self._interval(runtime)
        self.background = set()  # tasks spawned for background work, held until done
        self.purge_seq = 0  # the last cache purge applied (engine/control/purge.py)

    @property
    def now(self) -> float:
        """The worker's clock: loop time as of its last sweep."""
        return self.ticks.now

    def spawn(self, coro):
        """Run ``coro`` as a background task of this worker (the loop itself keeps only a
        weak reference to a task)."""
        task = self.loop.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    @staticmethod
    def _interval(runtime) -> float:
        """The sweep's period: a quarter of the shortest timeout or period it serves (the
        worker's clock, health checks and circuit cool-downs advance with it)."""
        s = runtime.settings
        periods = [s.client_header_timeout, s.client_body_timeout, s.keepalive_timeout,
                   s.send_timeout]
        for up in runtime.config.upstreams:
            periods += [up.connect_timeout, up.read_timeout]
            periods += [srv.fail_timeout for srv in up.servers if srv.max_fails]
            for part in (up.health_check, up.outlier_detection):
                if part is not None:
                    periods.append(part.interval)
            if up.circuit_breaker is not None:
                periods.append(up.circuit_breaker.cooldown)
        periods += runtime.shared.periods  # what filters' periodic work asked for
        return max(0.02, min(1.0, min(periods) / 4))

    async def start(self, sock: socket.socket, listener=None):
        """Accept on ``sock`` for ``listener`` (an engine.control.listeners.Listener; None:
        plain HTTP). Call again for more listening sockets."""
        self.sockets.append(sock)
        tls = listener.tls if listener is not None else None
        ssl_ctx = None
        if tls is not None:
            # The handshake asks the snapshot serving at that moment for the certificate, so
            # a reload's new certificates need no new server (engine/control/tls.py).
            initial = self.runtime.tls[listener.name]
            ssl_ctx = front_context(tls, lambda: self.runtime.tls.get(listener.name, initial))
        factory = protocol_factory(self, listener)
        if ssl_ctx is None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Our own epoll set (engine/wire/epoll.pyx); a unix socket path or a TLS listener
            # is served by uvloop, below.
            servers = [self.poller.serve(sock, factory, self.runtime.config.server.backlog)]
        else:
            # libuv accepts one connection per readiness of a listening descriptor (libuv PR
            # 3696), so a burst of new connections (clients reconnecting after
            # keepalive_requests, a restart) would be taken one per loop turn while the rest
            # wait in the backlog, their requests already sent. Each handle on a duplicate of
            # the socket accepts one more per turn; with no connection waiting none of them
            # is woken.
            servers = [await self.loop.create_server(
                factory, sock=sock if i == 0 else sock.dup(),
                backlog=self.runtime.config.server.backlog, ssl=ssl_ctx,
                ssl_handshake_timeout=tls.handshake_timeout if tls is not None else None)
                for i in range(ACCEPT_HANDLES)]
        self.servers += servers
        if self.server is None:
            self.server = servers[0]
            self._tick()
        return servers[0]

    def _attach_stats(self, runtime) -> None:
        """Give each compiled route its counters, so the data plane counts a request with
        one C-level call and no lookup by name."""
        for route in runtime.routes:
            stats = self.route_stats.get(route.name)
            if stats is None:
                stats = self.route_stats[route.name] = RouteStats()
            route.stats = stats

    @property
    def requests(self) -> int:
        return sum(st.total for st in self.route_stats.values())

    @property
    def status_counts(self) -> list:
        """Requests by status class: [0] other, [1]..[5] = 1xx..5xx."""
        out = [0] * 6
        for st in self.route_stats.values():
            for i, n in enumerate(st.by_status()):
                out[i] += n
        return out

    def swap(self, runtime) -> None:
        """Serve new requests from ``runtime``; requests in flight keep theirs."""
        old = self.runtime
        new, was = runtime.config.server, old.config.server
        reopen = (new.access_log, new.access_log_format) != (was.access_log,
                                                             was.access_log_format)
        # First: a log that cannot be opened fails the swap before anything changed.
        access_log = open_access_log(new.access_log, new.access_log_format) if reopen else None
        self._attach_stats(runtime)
        self.runtime = runtime
        self.tick_interval = self._interval(runtime)
        if reopen:
            previous, self.access_log = self.access_log, access_log
            if previous is not None:
                previous.close()
        old.release_unused(runtime, self.spawn)

    def next_request_id(self) -> bytes:
        return self.request_ids.next()

    def log_exchange(self, ex, took: float, upstream_took: float) -> None:
        """The access-log line of a finished request (the data plane counted it already)."""
        self.access_log.log(ex, took, upstream_took)

    def reopen_logs(self) -> None:
        """SIGUSR1: the access log file by its name again (logrotate moved the old one)."""
        if self.access_log is not None:
            self.access_log.reopen()

    def _tick(self) -> None:
        now = self.ticks.now = self.loop.time()
        try:
            for conn in [c for c in self.conns if c.deadline and c.deadline <= now]:
                try:
                    conn.timed_out()
                except Exception:  # one broken connection must not stop the sweep
                    conn.abort()
            for pool in self.runtime.pools.values():
                pool.expire(now)
            for fn in self.runtime.shared.periodic:
                try:
                    fn(self, now)
                except Exception:  # periodic work must not stop the sweep either
                    traceback.print_exc()
            if self.access_log is not None:
                self.access_log.flush()
            if self.stats_path is not None and now >= self._stats_due:
                self.write_stats()
        finally:
            # Whatever failed above, every timeout of this worker depends on the next sweep.
            self._tick_handle = self.loop.call_later(self.tick_interval, self._tick)

    def write_stats(self) -> None:
        """Publish this worker's counters for the admin API (summed across workers there)."""
        self._stats_due = self.loop.time() + STATS_INTERVAL
        try:
            write_json(self.stats_path, worker_snapshot(self))
        except OSError:
            pass  # the run directory went away (supervisor stopping): nothing to report to

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish within ``timeout``, close the rest."""
        self.draining = True
        for server in self.servers:
            server.close()
        # A connection uvloop (a TLS listener) accepted in the loop turn that woke us is made
        # (connection_made) only by a callback queued after ours: let it run, or the drain
        # would find no connection, end at once, and the process would exit with that
        # client's request unanswered. (The Poller makes its connections as it accepts.)
        await asyncio.sleep(0)
        for conn in list(self.conns):
            shutdown = getattr(conn, "shutdown", None)
            if shutdown is not None:
                shutdown()  # HTTP/2: GOAWAY at once, streams in flight are answered
        # A busy connection closes after its next response (Connection: close, since we are
        # draining). One that looks idle closes only once it stayed idle for DRAIN_IDLE:
        # "idle" may mean its client's next request is already in our socket buffer, and
        # closing then would reset a request the client rightly sent (the keep-alive close
        # race, RFC 9112 §9.6). A fresh connection gets the same grace for its first request.
        now = self.loop.time()
        deadline = now + timeout
        grace = min(DRAIN_IDLE, timeout / 2)
        idle: dict = {}  # connection -> (its request count, when first seen idle)
        while self.conns and now < deadline:
            for conn in list(self.conns):
                if conn.active is not None or conn.in_head:
                    idle.pop(conn, None)
                    continue
                seen = idle.get(conn)
                if seen is None or seen[0] != conn.requests:
                    idle[conn] = (conn.requests, now)
                elif now - seen[1] >= grace and not _unread(conn):
                    conn.close()
            await asyncio.sleep(0.02)
            now = self.loop.time()
        for conn in list(self.conns):
            conn.abort()
        for pool in self.runtime.pools.values():
            pool.close()
        await asyncio.sleep(0)  # (their connection_lost, which closes their sockets)
        self.poller.close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self.access_log is not None:
            self.access_log.close()
        if self.stats_path is not None:
            self.write_stats()  # the final counts, which the supervisor folds in when we exit


def _unread(conn) -> bool:
    """Whether bytes (or the client's FIN) wait in the connection's socket, not read yet. A
    process the host stalled wakes to run its due timers before it reads: the drain then
    sees as idle for DRAIN_IDLE a connection whose request came in meanwhile, and closing
    it would reset that request."""
    transport = conn.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    poller = select.poll()
    try:
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile: nothing left to read
        return False


# CPython's cyclic collector runs a young collection every 700 net allocations of container
# objects: every few dozen requests here, each one walking every request in flight, only to
# find garbage that reference counting already freed (the data plane makes no cycles on its
# way). A threshold of 10,000 runs it fourteen times less often, with at most that many
# objects of cyclic garbage waiting. Measured in docs/tuning.md ("Garbage collection").
GC_YOUNG_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Once the worker serves: what start-up made (modules, the config snapshot) is frozen
    out of the collector's walks, and young collections are spaced out (see above)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run_worker(runtime, pairs, rundir: str | None = None, generation: int = 0) -> int:
    """Process entry point of one worker: accept on ``pairs`` ((listening socket, Listener)
    each) until SIGTERM/SIGINT, then drain; exit 0.

    With a ``rundir`` (the supervisor's), SIGHUP applies the config the supervisor validated
    and published there, and the worker's counters are written there for the admin API.
    """
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    stats_path = None
    if rundir is not None:
        from engine.control.metrics import STATS_FILE
        stats_path = os.path.join(rundir, STATS_FILE.format(pid=os.getpid()))
    worker = Worker(runtime, loop, stats_path, generation)
    stop = loop.create_future()

    def on_signal():
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGUSR1, worker.reopen_logs)

    async def main():
        for sock, listener in pairs:
            await worker.start(sock, listener)
        if rundir is not None:
            from engine.control.reload import apply_published

            from engine.control.purge import apply_purges

            def on_hup():
                # The supervisor published news in the run directory: a config, a cache
                # purge. Each is numbered, so whatever this worker has applied is skipped.
                if not worker.draining:
                    apply_published(worker, rundir)
                apply_purges(worker, rundir)

            loop.add_signal_handler(signal.SIGHUP, on_hup)
            # News published between our fork and the handler above found us deaf.
            apply_purges(worker, rundir)
            apply_published(worker, rundir)
            worker.write_stats()
        _tune_gc()
        await stop
        await worker.drain(worker.runtime.settings.drain_timeout)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0
