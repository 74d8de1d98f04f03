"""A worker: one uvloop event loop serving client connections with the current snapshot.

Timeouts are not one timer per connection: each connection keeps a ``deadline`` (coarse, on the
worker's clock ``now``) and one periodic sweep closes whatever passed it. That keeps the hot
path free of timer churn; the sweep interval bounds the timeouts' precision.
"""

import asyncio
import os
import signal
import socket
import sys
import time

import orjson

from engine.http.protocol import ClientProtocol


def listen_socket(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class AccessLog:
    """JSON lines, buffered and written once per sweep (or when the buffer fills)."""

    def __init__(self, destination: str):
        if destination == "stdout":
            self.fd, self.owned = sys.stdout.fileno(), False
        elif destination == "stderr":
            self.fd, self.owned = sys.stderr.fileno(), False
        else:
            self.fd = os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self.owned = True
        self.buffer = []
        self.size = 0

    def write(self, record: dict) -> None:
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        self.buffer.append(line)
        self.size += len(line)
        if self.size > 65536:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            data = b"".join(self.buffer)
            self.buffer.clear()
            self.size = 0
            try:
                os.write(self.fd, data)
            except OSError:
                pass  # a full disk or closed pipe must not take the data plane down

    def close(self) -> None:
        self.flush()
        if self.owned:
            os.close(self.fd)


class Worker:
    def __init__(self, runtime, loop=None):
        self.loop = loop or asyncio.get_event_loop()
        self.runtime = runtime
        self.conns = set()
        self.now = self.loop.time()
        self.clock = time.perf_counter
        self.draining = False
        self.server = None
        self.sockets = []
        dest = runtime.config.server.access_log
        self.access_log = None if dest == "off" else AccessLog(dest)
        self._rid_prefix = os.urandom(6).hex().encode()
        self._rid_n = 0
        self.requests = 0
        self.status_counts = [0] * 6  # by status class: [0]=aborted, [1]..[5] = 1xx..5xx
        self._tick_handle = None
        self.tick_interval = self._interval(runtime)

    @staticmethod
    def _interval(runtime) -> float:
        s = runtime.settings
        shortest = min(s.client_header_timeout, s.client_body_timeout, s.keepalive_timeout,
                       s.send_timeout, *(u.connect_timeout for u in runtime.upstreams.values()),
                       *(u.read_timeout for u in runtime.upstreams.values()))
        return max(0.02, min(1.0, shortest / 4))

    async def start(self, sock: socket.socket):
        self.sockets.append(sock)
        self.server = await self.loop.create_server(
            lambda: ClientProtocol(self), sock=sock,
            backlog=self.runtime.config.server.backlog)
        self._tick()
        return self.server

    def swap(self, runtime) -> None:
        """Serve new requests from ``runtime``; requests in flight keep theirs."""
        old = self.runtime
        self.runtime = runtime
        self.tick_interval = self._interval(runtime)
        old.release_unused(runtime)

    def next_request_id(self) -> bytes:
        self._rid_n += 1
        return b"%s%020x" % (self._rid_prefix, self._rid_n)

    def log_exchange(self, ex) -> None:
        self.requests += 1
        self.status_counts[ex.status // 100 if ex.status < 600 else 0] += 1
        log = self.access_log
        if log is None:
            return
        now = self.clock()
        server = ex.server
        log.write({
            "time": time.time(),
            "request_id": ex.request_id.decode(),
            "client_ip": ex.client_ip,
            "method": ex.method.decode("latin-1"),
            "path": ex.path,
            "status": ex.status,
            "route": ex.route.name if ex.route is not None else None,
            "upstream": server.url if server is not None else None,
            "bytes_in": ex.body_received,
            "bytes_out": ex.bytes_out,
            "duration_ms": round((now - ex.t_start) * 1000, 3) if ex.t_start else None,
            "upstream_ms": round((now - ex.t_upstream) * 1000, 3) if ex.t_upstream else None,
        })

    def _tick(self) -> None:
        now = self.now = self.loop.time()
        for conn in [c for c in self.conns if c.deadline and c.deadline <= now]:
            try:
                conn.timed_out()
            except Exception:  # one broken connection must not stop the sweep
                conn.abort()
        for pool in self.runtime.pools.values():
            pool.expire(now)
        if self.access_log is not None:
            self.access_log.flush()
        self._tick_handle = self.loop.call_later(self.tick_interval, self._tick)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish within ``timeout``, close the rest."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.conns):
            if conn.active is None and not conn.in_head:
                conn.close()
        deadline = self.loop.time() + timeout
        while self.conns and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.conns):
            conn.abort()
        for pool in self.runtime.pools.values():
            pool.close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self.access_log is not None:
            self.access_log.close()


def run_worker(runtime, sock: socket.socket) -> int:
    """Process entry point of one worker: serve until SIGTERM/SIGINT, then drain; exit 0."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(runtime, loop)
    stop = loop.create_future()

    def on_signal():
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    async def main():
        await worker.start(sock)
        await stop
        await worker.drain(runtime.settings.drain_timeout)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0
