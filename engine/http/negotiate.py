"""Which codec serves a client connection: HTTP/1.1 (engine/http/protocol.pyx) or HTTP/2
(engine/http/h2.pyx), chosen by TLS ALPN or, on a cleartext listener with HTTP/2 on, by the
connection preface a client with prior knowledge sends first (RFC 9113 §3.3)."""

from engine.http.h2 import PREFACE, H2Connection
from engine.http.protocol import ClientProtocol


def protocol_factory(worker, listener):
    """The protocol factory of ``listener``'s server."""
    if listener is None or not listener.http2:
        return lambda: ClientProtocol(worker, listener)  # (no choice to make)
    return lambda: Negotiation(worker, listener)


class Negotiation:
    """Stands in until the codec is known, then hands the transport over to it."""

    __slots__ = ("worker", "listener", "transport", "held", "deadline", "closed")
    # What the worker's sweep and drain read of a connection (engine/control/worker.py).
    active = None
    in_head = False
    requests = 0

    def __init__(self, worker, listener):
        self.worker = worker
        self.listener = listener
        self.transport = None
        self.held = b""
        self.deadline = 0.0
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        # A client that says nothing is timed out like one that sends half a request head.
        self.deadline = self.worker.now + self.worker.runtime.settings.client_header_timeout
        self.worker.conns.add(self)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            # RFC 9113 §3.2: over TLS, "h2" by ALPN; anything else is HTTP/1.1.
            self._switch(H2Connection if sslobj.selected_alpn_protocol() == "h2"
                         else ClientProtocol, b"")

    def data_received(self, data):
        held = self.held + data
        if held[:len(PREFACE)] == PREFACE[:len(held)]:
            if len(held) < len(PREFACE):
                self.held = held  # (could still be the preface)
                return
            self._switch(H2Connection, held)
        else:
            self._switch(ClientProtocol, held)

    def _switch(self, codec, data):
        self.worker.conns.discard(self)
        protocol = codec(self.worker, self.listener)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if data:
            protocol.data_received(data)

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        self.closed = True
        self.worker.conns.discard(self)

    def timed_out(self):
        self.close()

    def close(self):
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self):
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass
