"""Zero-downtime binary upgrade by socket handover, as nginx does it (SIGUSR2).

SIGUSR2 to a running supervisor starts its own command again (the binary or package now on
disk: the new version) with its listening sockets, admin socket included, inherited as open
descriptors and named in ``$EDGEPROXY_INHERIT``. The new supervisor adopts them instead of
binding: they are the same kernel sockets, with the same accept queues, so no connection
waiting to be accepted is lost and no port is ever closed. Once a new worker serves, the new
supervisor sends SIGTERM to the old one, which drains (``drain_timeout``) and exits. If the
new one fails to start, it exits and the old one goes on serving as if nothing happened.

A SO_REUSEPORT overlap (a second group of sockets on the port) would lose the connections
queued on the old sockets when they close; handing the sockets over loses none.
"""

import os
import socket
import subprocess
import sys

ENV = "EDGEPROXY_INHERIT"


def command() -> list[str]:
    """What starts this program again: the one-file executable itself, or this Python
    running the installed package (upgraded in place by pip)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *sys.argv[1:]]
    return [sys.executable, "-m", "engine", *sys.argv[1:]]


def spawn(bound, admin_socket) -> subprocess.Popen:
    """Start the new version with ``bound``'s sockets (and the admin API's) inherited."""
    parts = [f"old={os.getpid()}"]
    fds = []
    for b in bound:
        for s in b.sockets:
            parts.append(f"{b.listener.name}={s.fileno()}")
            fds.append(s.fileno())
    if admin_socket is not None:
        parts.append(f"@admin={admin_socket.fileno()}")
        fds.append(admin_socket.fileno())
    env = {**os.environ, ENV: ",".join(parts)}
    return subprocess.Popen(command(), env=env, pass_fds=fds)


class Inherited:
    """The sockets a new supervisor got from the old one, by listener name."""

    def __init__(self, value: str):
        self.old_pid = None
        self.listeners: dict[str, list[socket.socket]] = {}
        self.admin = None
        for part in value.split(","):
            name, _, fd = part.partition("=")
            if name == "old":
                self.old_pid = int(fd)
                continue
            sock = socket.socket(fileno=int(fd))
            if name == "@admin":
                self.admin = sock
            else:
                self.listeners.setdefault(name, []).append(sock)

    def take(self, listener) -> list | None:
        """The inherited sockets of ``listener``, if it is the same listener: its name, and
        its address unless it asks for any port (0)."""
        socks = self.listeners.get(listener.name)
        if not socks:
            return None
        host, port = socks[0].getsockname()[:2]
        if host != listener.host or (listener.port and port != listener.port):
            return None
        return self.listeners.pop(listener.name)

    def take_admin(self, host: str, port: int):
        sock, self.admin = self.admin, None
        if sock is not None:
            h, p = sock.getsockname()[:2]
            if h == host and (not port or p == port):
                return sock
            sock.close()
        return None

    def close_rest(self) -> None:
        """Close what the new config does not use (the old supervisor still holds its own
        descriptors of them until it exits)."""
        for socks in self.listeners.values():
            for s in socks:
                s.close()
        self.listeners.clear()
        if self.admin is not None:
            self.admin.close()
            self.admin = None


def inherited() -> Inherited | None:
    """What the old supervisor handed over, once (its variable is removed, so workers and
    a later upgrade never see it)."""
    value = os.environ.pop(ENV, None)
    return Inherited(value) if value else None
