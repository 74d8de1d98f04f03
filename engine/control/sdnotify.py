"""systemd's readiness protocol (sd_notify(3)): one datagram per state change to the socket
named by $NOTIFY_SOCKET, when a Type=notify unit started us; nothing otherwise.

The protocol is a single sendto() of "KEY=value" lines, which sd_notify(3) invites services
to speak directly rather than link libsystemd for.
"""

import os
import socket
import time


def notify(*lines: str) -> bool:
    """Send ``lines`` (READY=1, RELOADING=1, STOPPING=1, STATUS=...); False when not run
    by systemd or the socket is gone. Never raises: readiness reporting must not stop us."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "@/":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # an abstract socket (sd_notify(3))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError:
        return False
    return True


def reloading() -> bool:
    # systemd >= 253 pairs RELOADING=1 with the CLOCK_MONOTONIC time it was sent at.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
