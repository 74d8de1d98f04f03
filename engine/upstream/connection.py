"""One keep-alive connection to an upstream server, parsing its responses with httptools.

The response head is parsed to find framing and to rewrite hop-by-hop headers; body bytes are
handed to the exchange as they arrive and never re-serialised (only re-chunked when the client
side needs chunked framing).
"""

import asyncio

import httptools


class _StopParsing(Exception):
    """Raised from a parser callback to stop feeding this response (see ``stop``)."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("pool", "transport", "parser", "exchange", "requests", "idle_deadline",
                 "headers", "reason", "head_done", "body_bytes", "lost", "skip_body",
                 "tunnel", "stop")

    def __init__(self, pool):
        self.pool = pool
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange = None
        self.requests = 0
        self.idle_deadline = 0.0
        self.headers = []
        self.reason = b""
        self.head_done = False
        self.body_bytes = 0
        self.lost = False
        self.skip_body = False  # the request was HEAD: the response has no body
        self.tunnel = False
        self.stop = None  # why a callback raised _StopParsing: "head" or "abort"

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.tunnel:
            self.exchange.tunnel_to_client(data)
            return
        ex = self.exchange
        if ex is None:
            # An idle connection must not talk; whatever it says, it is not reusable.
            self.close()
            return
        ex.out = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0]:] if exc.args else b""
            self.tunnel = True
            if rest:
                ex.tunnel_to_client(rest)
        except httptools.HttpParserCallbackError as exc:
            stop = self.stop
            self.stop = None
            if stop == "head":
                # HEAD: llhttp cannot be told the body is absent (RFC 9110 §9.3.2), so start
                # a fresh parser for the next response; only the old one knows whether this
                # response let the connection persist (RFC 9112 §9.3).
                reusable = self.parser.should_keep_alive()
                self.parser = httptools.HttpResponseParser(self)
                self._complete(reusable)
            elif stop is None:
                self._fail(exc)
            # stop == "abort": the exchange already failed this connection
        except httptools.HttpParserError as exc:
            self._fail(exc)
        finally:
            ex.flush()
            ex.out = None

    def connection_lost(self, exc):
        self.lost = True
        ex = self.exchange
        if ex is None:
            self.pool.discard(self)
            return
        self.exchange = None
        if self.tunnel:
            ex.tunnel_closed()
        elif self.head_done and ex.upstream_close_delimited:
            ex.upstream_complete(self, reusable=False)  # RFC 9112 §6.3 rule 8: EOF ends it
        else:
            ex.upstream_failed(self, "bad_gateway")

    def pause_writing(self):
        if self.exchange is not None:
            self.exchange.upstream_write_paused(True)

    def resume_writing(self):
        if self.exchange is not None:
            self.exchange.upstream_write_paused(False)

    # -- httptools callbacks

    def on_status(self, reason):
        self.reason = reason

    def on_header(self, name, value):
        if not self.head_done:
            self.headers.append((name, value))

    def on_headers_complete(self):
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            # Interim responses (100, 103) are not relayed: the proxy sent no Expect
            # upstream, and nginx drops them too. The final response follows.
            self.headers = []
            self.reason = b""
            return
        self.head_done = True
        if not self.exchange.upstream_head(self, status, self.reason, self.headers):
            self.stop = "abort"
            raise _StopParsing
        if self.skip_body and status != 101:
            self.stop = "head"
            raise _StopParsing

    def on_body(self, body):
        self.body_bytes += len(body)
        self.exchange.upstream_body(body)

    def on_message_complete(self):
        if self.head_done and not self.tunnel:
            self._complete()  # (llhttp also "completes" a 101: that is where the tunnel starts)

    # -- exchange side

    def usable(self) -> bool:
        return not self.lost and not self.transport.is_closing()

    def start(self, exchange, head: bytes, skip_body: bool):
        self.exchange = exchange
        self.requests += 1
        self.headers = []
        self.reason = b""
        self.head_done = False
        self.body_bytes = 0
        self.skip_body = skip_body
        self.transport.write(head)

    def _complete(self, reusable=None):
        ex = self.exchange
        if ex is None:
            return
        self.exchange = None
        if reusable is None:
            reusable = self.parser.should_keep_alive()
        ex.upstream_complete(self, reusable)

    def _fail(self, exc):
        ex = self.exchange
        self.exchange = None
        self.close()
        if ex is not None:
            ex.upstream_failed(self, "bad_gateway", retry=False)  # it answered, badly

    def close(self):
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def abort(self):
        self.lost = True
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()
