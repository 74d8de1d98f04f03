"""DEMO ONLY: built-in echo origins, started when the config has a [demo] table.

They exist so the shipped config.toml answers `curl localhost:8080/...` with nothing else
installed. Each answers every request with JSON describing what it received.
"""

import asyncio

import httptools
import orjson


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, name: str):
        self.name = name
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.url = b""
        self.headers = {}
        self.body = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self):
        self.url, self.headers, self.body = b"", {}, 0

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_body(self, body):
        self.body += len(body)

    def on_message_complete(self):
        body = orjson.dumps({
            "origin": self.name,
            "demo": True,
            "method": self.parser.get_method().decode(),
            "url": self.url.decode("latin-1"),
            "headers": self.headers,
            "body_bytes": self.body,
        }, option=orjson.OPT_INDENT_2) + b"\n"
        keep = self.parser.should_keep_alive()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"%s\r\n%s" % (len(body), b"" if keep else b"Connection: close\r\n", body))
        if not keep:
            self.transport.close()


async def serve_origins(addresses) -> list:
    from engine.control.config import parse_listen

    loop = asyncio.get_running_loop()
    servers = []
    for address in addresses:
        host, port = parse_listen(address)
        servers.append(await loop.create_server(
            lambda a=address: _EchoProtocol(a), host, port, reuse_address=True))
    return servers


def run_origins(addresses) -> int:
    """Process entry point: serve the demo origins until SIGTERM."""
    import signal

    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    async def main():
        servers = await serve_origins(addresses)
        await stop
        for s in servers:
            s.close()

    loop.run_until_complete(main())
    loop.close()
    return 0
