"""The reverse proxy a Python user would write with aiohttp: the comparison point in vs_nginx.py.

    python bench/aiohttp_proxy.py --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8082

One aiohttp web server on uvloop, one shared ClientSession whose connector keeps up to
``--keepalive`` connections to the upstream, the response body streamed back chunk by chunk.
Hop-by-hop headers are dropped both ways (RFC 9110 §7.6.1); nothing else is added or checked,
so this is a floor for what a Python proxy costs, not a feature match for edgeproxy.
"""

import argparse
import asyncio
import signal
import sys

import uvloop
from aiohttp import ClientSession, TCPConnector, web

HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
))


def _forwardable(headers, drop=frozenset()):
    return [(k, v) for k, v in headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() not in drop]


async def serve(listen: str, upstream: str, keepalive: int) -> None:
    host, _, port = listen.rpartition(":")
    upstream = upstream.rstrip("/")
    connector = TCPConnector(limit=keepalive, limit_per_host=keepalive, keepalive_timeout=60)
    session = ClientSession(connector=connector, auto_decompress=False, timeout=None)

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = _forwardable(request.headers, {"host", "content-length"})
        body = request.content if request.can_read_body else None
        async with session.request(request.method, upstream + request.raw_path,
                                   headers=headers, data=body, allow_redirects=False,
                                   skip_auto_headers=("User-Agent", "Accept-Encoding",
                                                      "Accept", "Content-Type")) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason,
                                      headers=_forwardable(up.headers))
            if up.content_length is not None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            async for chunk in up.content.iter_chunked(65536):
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, int(port), backlog=1024, reuse_address=True)
    await site.start()
    sys.stderr.write(f"listening on {host}:{port}\n")
    sys.stderr.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8081")
    parser.add_argument("--upstream", required=True, help="http://host:port")
    parser.add_argument("--keepalive", type=int, default=1024,
                        help="connector limit: pooled upstream connections")
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.upstream, args.keepalive))


if __name__ == "__main__":
    main()
