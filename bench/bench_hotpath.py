"""User-space cost of one proxied request through the real protocol objects, without sockets.

The kernel's loopback TCP is most of a fast proxy's CPU and is the same for every design; this
isolates what edgeproxy's own code adds per request: ClientProtocol parsing and routing, the
request head sent upstream, UpstreamConnection parsing, the response head relayed, pool release.
Transports are in-memory sinks. Run: python bench/bench_hotpath.py [--profile]

The hot path is Cython, which cProfile does not see: --profile shows the Python it still calls
(the worker's log phase, route targets, filters, this file's sinks), everything else is inside
run(). For where the Cython time goes, count instructions with bench/bench_instructions.py (callgrind), or build
with EDGEPROXY_LINETRACE=1.
"""

import argparse
import asyncio
import cProfile
import pstats
import time

from engine.control.config import parse
from engine.control.snapshot import Runtime
from engine.http.protocol import ClientProtocol
from engine.control.worker import Worker
from engine.upstream.connection import UpstreamConnection

CONFIG = """
[server]
access_log = "off"
keepalive_requests = 1000000000
[[upstreams]]
name = "o"
servers = ["http://127.0.0.1:18081"]
keepalive_requests = 1000000000
[[routes]]
name = "r"
upstream = "o"
{extra}
"""

GATEWAY = """
[routes.headers.request]
set = { "X-Edge" = "1" }
remove = ["X-Debug"]
[routes.headers.response]
add = { "X-Served-By" = "edgeproxy" }
"""

# bench/vs_nginx.py's edgeproxy-gateway route: header edits both ways plus a rate limit.
RATE_LIMIT = """
[[routes.rate_limit.limits]]
name = "per-ip"
algorithm = "sliding_counter"
limit = 100000000
window = "1m"
key = ["ip"]
"""

REQUEST = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 28 Nov 2026 06:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n"
            b"hello, world!")


class SinkTransport:
    """Stands in for a socket: counts bytes written, never blocks."""

    def __init__(self):
        self.written = 0

    def write(self, data):
        self.written += len(data)

    def writelines(self, parts):
        self.written += sum(map(len, parts))

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def is_closing(self):
        return False

    def close(self):
        raise AssertionError("the benchmark connection must stay open")

    abort = close

    def can_write_eof(self):
        return False


def setup(extra: str):
    loop = asyncio.new_event_loop()
    runtime = Runtime(parse(CONFIG.format(extra=extra)))
    worker = Worker(runtime, loop)
    client = ClientProtocol(worker)
    client_transport = SinkTransport()
    client.connection_made(client_transport)
    server = runtime.upstreams["o"].servers[0]
    upstream = UpstreamConnection(server.pool)
    upstream.connection_made(SinkTransport())
    server.pool.release(upstream, worker.now)
    return client, upstream, client_transport, worker


def run(n: int, extra: str) -> float:
    client, upstream, sink, worker = setup(extra)
    feed_client = client.data_received
    # The upstream side is a buffered protocol: uvloop asks it for a buffer, reads into it and
    # tells it how much came. The response is copied in only when the buffer is a new one (it
    # is the same one each time while no view of it is held), so the loop adds no Python work
    # that uvloop would not do in C.
    get_buffer, buffer_updated = upstream.get_buffer, upstream.buffer_updated
    buf, size = None, len(RESPONSE)
    start = time.perf_counter_ns()
    for _ in range(n):
        feed_client(REQUEST)
        got = get_buffer(-1)
        if got is not buf:
            buf = got
            with memoryview(buf) as view:
                view[:size] = RESPONSE
        buffer_updated(size)
    elapsed = time.perf_counter_ns() - start
    assert worker.requests == n and worker.status_counts[2] == n, "requests did not complete"
    assert sink.written > n * len(b"hello, world!")
    return elapsed / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--route", default="pass-through", choices=("pass-through", "gateway"),
                    help="with --once: the plain route, or header transforms + a rate limit")
    ap.add_argument("--once", action="store_true",
                    help="one pass of -n requests, for instruction counting under callgrind")
    args = ap.parse_args()
    if args.once:
        run(args.n, GATEWAY + RATE_LIMIT if args.route == "gateway" else "")
        return
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(run, args.n // 4, "")
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return
    run(10_000, "")  # warm up
    rows = [("pass-through", ""), ("header transforms", GATEWAY), ("rate limit", RATE_LIMIT),
            ("header transforms + rate limit", GATEWAY + RATE_LIMIT)]
    print("| route | user-space ns per request |\n|---|---|")
    for name, extra in rows:
        best = min(run(args.n, extra) for _ in range(3))
        print(f"| {name} | {best:,.0f} |")


if __name__ == "__main__":
    main()
