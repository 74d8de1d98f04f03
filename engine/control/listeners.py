"""Listeners: where client connections are accepted, compiled from the config, and the
listening sockets the supervisor holds for them.

A ``Listener`` is a frozen value: its name, address, what the proxy says about requests
accepted there (``scheme``, sent upstream as X-Forwarded-Proto), its TLS policy and the
protocols it speaks. ``server.listen`` is the
shorthand for one plain-HTTP listener named "default"; ``[[listeners]]`` tables declare
several. The codec takes ``listener.scheme`` once per connection (engine/http/protocol.pyx).

``Bound`` is one listener's sockets: one SO_REUSEPORT group on its address, never fewer
sockets than workers, owned by the supervisor across worker generations (see supervisor.py).
``bind_listeners`` binds what a config needs, keeping the sockets of every address bound
before, so an unchanged listener never stops accepting during a reload.
"""

import socket
from dataclasses import dataclass, field

from engine.chain.front import ListenerFront
from engine.control.config import parse_listen
from engine.control.tls import ALPN_H2, ALPN_HTTP11, TLSPolicy

DEFAULT_NAME = "default"  # the listener ``server.listen`` declares


@dataclass(frozen=True, slots=True)
class Listener:
    """Where client connections are accepted, and what requests accepted there are."""

    name: str
    host: str
    port: int  # as configured; 0 = the kernel picks one when bound
    # b"http" or b"https": X-Forwarded-Proto of requests accepted here (unless a trusted
    # proxy sent one). "https" without TLS here: a TLS-terminating L4 balancer in front.
    scheme: bytes = b"http"
    # TLS termination (engine/control/tls.py): what every connection gets; the certificates
    # are the snapshot's, reloaded in place, so they are not part of the listener.
    tls: TLSPolicy | None = None
    protocols: tuple[str, ...] = (ALPN_HTTP11,)  # + "h2": HTTP/2 by ALPN, or h2c
    redirect_https: int | None = None  # answer 308 to https on this port (docs/tls.md)
    client_cert_header: str = ""
    # What the codec hands each request's Stream (engine/chain/front.py), or None.
    front: object = field(default=None, compare=False, repr=False)
    path: str = field(default="server.listen", compare=False)  # its config key, for errors

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def http2(self) -> bool:
        return ALPN_H2 in self.protocols

    @property
    def key(self) -> tuple:
        """What owns a socket group: the address, or for port 0 (any free port) the name
        too, since two such listeners on one host are two ports."""
        return (self.host, self.port) if self.port else (self.host, 0, self.name)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listeners_of(cfg) -> tuple[Listener, ...]:
    """The listeners a validated config declares, in config order."""
    if not cfg.listeners:
        host, port = parse_listen(cfg.server.listen)
        return (Listener(DEFAULT_NAME, host, port),)
    out = []
    for i, entry in enumerate(cfg.listeners):
        host, port = parse_listen(entry.listen)
        tls = entry.tls
        proto = entry.forwarded_proto or ("https" if tls is not None else "http")
        header = tls.client_cert_header if tls is not None else ""
        front = None
        if tls is not None or entry.redirect_https is not None:
            front = ListenerFront(header, tls is not None and tls.client_auth != "off",
                                  entry.redirect_https)
        out.append(Listener(entry.name, host, port, proto.encode("ascii"),
                            TLSPolicy.of(tls, entry.http2) if tls is not None else None,
                            (ALPN_H2, ALPN_HTTP11) if entry.http2 else (ALPN_HTTP11,),
                            entry.redirect_https, header, front,
                            path=f"listeners[{i}].listen"))
    return tuple(out)


class ListenError(Exception):
    """A listener could not be bound: its key path and why."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class Bound:
    """A listener and its listening sockets (one SO_REUSEPORT group)."""

    __slots__ = ("listener", "sockets", "host", "port")

    def __init__(self, listener: Listener, sockets: list):
        self.listener = listener
        self.sockets = sockets
        self.host = listener.host
        self.port = sockets[0].getsockname()[1]  # the port the kernel gave a port 0

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


def bind_group(host: str, port: int, backlog: int, count: int, probe: bool) -> list:
    """``count`` listening sockets in one SO_REUSEPORT group on host:port (port 0: the first
    one picks the port for all)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if probe and port:
        # SO_REUSEPORT would let a second edgeproxy join this port's group silently;
        # a bind without it first makes a busy port an error, as nginx reports it.
        # SO_REUSEADDR still: it lets a port with TIME_WAIT connections (a proxy that
        # just stopped) be bound, yet not one a live listener holds (Linux refuses
        # SO_REUSEADDR against a socket in LISTEN).
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        finally:
            s.close()
    out = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            port = s.getsockname()[1]
            s.listen(backlog)
    except OSError:
        for s in out:
            s.close()
        raise
    return out


def bind_listeners(listeners, backlog: int, count: int, old=()) -> list[Bound]:
    """The sockets ``listeners`` need, ``count`` (at least) per listener.

    A listener whose address (``Listener.key``) is in ``old`` keeps those sockets, with more
    added when ``count`` grew; any other is bound afresh, probed first so a port another
    process listens on is an error. On failure every socket bound here is closed and
    ListenError names the listener's key path; ``old`` is never changed.
    """
    previous = {b.listener.key: b for b in old}
    out, fresh = [], []
    for lst in listeners:
        prev = previous.get(lst.key)
        try:
            if prev is None:
                socks = bind_group(lst.host, lst.port, backlog, count, True)
                fresh += socks
            else:
                socks = prev.sockets
                if count > len(socks):
                    more = bind_group(prev.host, prev.port, backlog, count - len(socks), False)
                    fresh += more
                    socks = socks + more
        except OSError as exc:
            for s in fresh:
                s.close()
            raise ListenError(lst.path, f"cannot listen on {lst.address}: "
                                        f"{exc.strerror}") from None
        out.append(Bound(lst, socks))
    return out


def close_unshared(bound, keep) -> None:
    """Close every socket of ``bound`` that ``keep`` does not hold too."""
    kept = {id(s) for b in keep for s in b.sockets}
    for b in bound:
        for s in b.sockets:
            if id(s) not in kept:
                s.close()


def worker_pairs(bound, index: int, count: int) -> list:
    """(socket, Listener) pairs worker ``index`` of ``count`` accepts on: its share of every
    listener's group (several sockets of one group after ``count`` shrank)."""
    return [(s, b.listener) for b in bound for k, s in enumerate(b.sockets)
            if k % count == index]
