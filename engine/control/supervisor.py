"""The supervisor: binds the port, forks the workers (and demo origins), restarts crashed
workers, and on SIGTERM/SIGINT stops them gracefully.

Workers each listen on the same port with SO_REUSEPORT, so the kernel spreads connections.
The supervisor reserves the port first (bound, not listening) so `listen = "...:0"` gives all
workers one port.
"""

import os
import signal
import socket
import sys
import time

from engine.control.config import parse_listen
from engine.control.snapshot import Runtime


def log(message: str) -> None:
    sys.stderr.write(f"edgeproxy[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def worker_count(value) -> int:
    return (os.cpu_count() or 1) if value == "auto" else int(value)


class Supervisor:
    def __init__(self, cfg, config_path: str | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.runtime = Runtime(cfg)
        self.workers: dict[int, int] = {}  # pid -> worker index
        self.demo_pid = None
        self.stopping = False
        self.port = None
        self.reserve = None

    def _bind(self):
        host, port = parse_listen(self.cfg.server.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if port:
            # SO_REUSEPORT would let a second edgeproxy join this port's group silently;
            # a plain bind first makes a busy port an error, as nginx reports it.
            probe = socket.socket(family, socket.SOCK_STREAM)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise SystemExit(f"edgeproxy: cannot listen on {host}:{port}: "
                                 f"{exc.strerror}") from None
            finally:
                probe.close()
        reserve = socket.socket(family, socket.SOCK_STREAM)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind((host, port))
        self.reserve = reserve
        self.host, self.port = host, reserve.getsockname()[1]

    def _fork(self, target) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                code = target()
            except BaseException as exc:  # a worker must report, then die
                log(f"process failed: {exc!r}")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid

    def _start_worker(self, index: int) -> None:
        from engine.server import listen_socket, run_worker

        def target():
            sock = listen_socket(self.host, self.port, self.cfg.server.backlog, True)
            return run_worker(self.runtime, sock)

        pid = self._fork(target)
        self.workers[pid] = index

    def run(self) -> int:
        demo = self.cfg.demo
        if demo is not None:
            from engine.control.demo import run_origins
            self.demo_pid = self._fork(lambda: run_origins(demo.origins))
            _wait_listening(demo.origins, 5.0)
            log(f"DEMO origins on {', '.join(demo.origins)} (the [demo] table of the config)")
        self._bind()
        count = worker_count(self.cfg.server.workers)
        for i in range(count):
            self._start_worker(i)
        log(f"listening on {self.host}:{self.port} with {count} worker(s)")

        def on_stop(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        restarts: list[float] = []
        while not self.stopping:
            time.sleep(0.1)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid in self.workers and not self.stopping:
                    index = self.workers.pop(pid)
                    log(f"worker {pid} exited ({_describe(status)}); restarting")
                    now = time.monotonic()
                    restarts = [t for t in restarts if now - t < 10] + [now]
                    if len(restarts) > 10 * count:
                        time.sleep(1)  # crash loop: do not spin
                    self._start_worker(index)
        return self._shutdown()

    def _shutdown(self) -> int:
        log("stopping: draining workers")
        for pid in list(self.workers):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.runtime.settings.drain_timeout + 5
        while self.workers and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
            else:
                self.workers.pop(pid, None)
        for pid in self.workers:
            _kill(pid, signal.SIGKILL)
        if self.demo_pid is not None:
            _kill(self.demo_pid, signal.SIGTERM)
            try:
                os.waitpid(self.demo_pid, 0)
            except ChildProcessError:
                pass
        self.reserve.close()
        log("stopped")
        return 0


def _wait_listening(addresses, timeout: float) -> None:
    """Wait (bounded) until each address accepts, so the first proxied request finds it."""
    deadline = time.monotonic() + timeout
    for address in addresses:
        host, port = parse_listen(address)
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)


def _kill(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.WEXITSTATUS(status)}"
