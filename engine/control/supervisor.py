"""The supervisor: binds the listeners, forks the workers (and demo origins), restarts crashed
workers, hot-reloads the config, serves the admin API, and on SIGTERM/SIGINT stops gracefully.

The supervisor owns the listening sockets: per listener one per worker, all bound to the same
address with SO_REUSEPORT so the kernel spreads connections, and inherited by the workers
through fork; each worker accepts on its share of every listener's group.
Because the supervisor keeps them open, a worker that exits (crash, drain) never takes a
socket's queue of not-yet-accepted connections with it: its replacement accepts them. (A
SO_REUSEPORT socket that is closed resets its queue unless net.ipv4.tcp_migrate_req is on.)

Reload (engine/control/reload.py): SIGHUP, a change of the config file, or POST /reload makes
the main thread load, validate and compile the file. A bad config changes nothing: the error is
logged with its key paths and kept for GET /status and the reload metric. A good one is
published to the run directory and every worker gets SIGHUP and swaps its snapshot in place.
A change of the listeners (``server.listen`` or ``[[listeners]]``: added, removed, moved or
given another ``forwarded_proto``), ``server.workers`` or ``server.backlog`` cannot be applied
in a running worker: a new set of workers starts with the new listeners, and once they all
serve the old ones drain (SIGTERM, ``drain_timeout``) and exit. An address bound before keeps
its sockets and the new workers take them over (never fewer: after ``workers`` shrinks, a
worker accepts on several), so no connection is refused; a new address gets new sockets, bound
before anything else changes (a busy one refuses the reload), and an address no longer listed
stops accepting as soon as the old workers start draining (engine/control/listeners.py).

Threads: the admin API runs in threads of this process, and this process forks. Admin threads
never write to stderr and only take locks the forked child never touches; reloads, forks and
reaping all happen on the main thread, which admin threads reach through ``self.inbox`` (and
``self.notes`` for what they have to log).
"""

import collections
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from engine.control import VERSION, sdnotify, upgrade
from engine.control.config import parse_listen
from engine.control.listeners import (
    Bound, ListenError, bind_listeners, close_unshared, listeners_of, worker_pairs,
)
from engine.control.metrics import STATS_FILE, Totals, read_snapshots
from engine.control.reload import FileWatch, digest_of, load_candidate, publish
from engine.chain.schema import ConfigError
from engine.control.snapshot import Runtime
from engine.control.tls import tls_files
from engine.upstream.health import STATE_NAMES as CIRCUIT_STATES


# A worker that dies before it serves is restarted after BACKOFF_FIRST, doubling per failure
# in a row up to BACKOFF_MAX; if no worker ever served and each failed STARTUP_TRIES times,
# the supervisor exits 1 with the last error rather than loop (nothing would ever serve).
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
STARTUP_TRIES = 3
WORKER_ERROR_FILE = "worker-{pid}.error"  # in the run directory: why a worker died


def log(message: str) -> None:
    sys.stderr.write(f"edgeproxy[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def worker_count(value) -> int:
    return (os.cpu_count() or 1) if value == "auto" else int(value)


def listener_of(cfg) -> tuple:
    """What a running worker cannot change in place."""
    s = cfg.server
    return (listeners_of(cfg), worker_count(s.workers), s.backlog)


class Supervisor:
    def __init__(self, cfg, config_path: str | None = None, digest: str | None = None,
                 runtime=None):
        self.cfg = cfg
        self.config_path = os.path.abspath(config_path) if config_path else None
        self.runtime = runtime or Runtime(cfg)
        self.generation = 1
        self.workers: dict[int, int] = {}  # pid -> worker index, the current set
        self.retiring: set[int] = set()  # old workers draining after a listener change
        self.retire_after: tuple[set, float] | None = None  # (pids, deadline) to retire
        self.demo_pid = None
        self.stopping = False
        self.hup = False
        self.usr1 = False  # reopen the access logs (logrotate's postrotate sends SIGUSR1)
        self.usr2 = False  # start the new binary with our sockets (engine/control/upgrade.py)
        self.upgrading = None  # its Popen, until it stops us or fails
        self.inherited = upgrade.inherited()  # the sockets of the supervisor we upgrade
        self.bound: list = []  # engine.control.listeners.Bound per listener, config order
        self.admin = None
        self.rundir = None
        self.started = time.time()
        self.reloads = {"ok": 0, "failed": 0, "unchanged": 0}
        self.last_reload = None
        self.recent_reloads: collections.deque = collections.deque(maxlen=20)  # newest last
        self.worker_restarts = 0
        self.starting: dict[int, int] = {}  # pid -> index of workers not serving yet
        self.start_failures: dict[int, int] = {}  # index -> startup failures in a row
        self.restart_due: dict[int, float] = {}  # index -> when its back-off ends
        self.announced = False  # "listening" is logged once a worker serves
        self.last_worker_error = None
        self.retired = Totals()  # counters of workers that exited
        self.stats_lock = threading.Lock()
        self.inbox: queue.Queue = queue.Queue()
        self.notes: collections.deque = collections.deque()  # log lines from admin threads
        self.watch = None
        if self.config_path is not None and digest is None:
            try:
                with open(self.config_path, "rb") as f:
                    digest = digest_of(f.read())
            except OSError:
                pass
        self.digest = digest

    # -- listeners and processes ---------------------------------------------------------

    def _sockets(self) -> list:
        return [sock for b in self.bound for sock in b.sockets]

    def _bind(self):
        listeners = listeners_of(self.cfg)
        adopted = []
        if self.inherited is not None:  # the same kernel sockets, queued connections and all
            for lst in listeners:
                socks = self.inherited.take(lst)
                if socks:
                    adopted.append(Bound(lst, socks))
        try:
            self.bound = bind_listeners(listeners, self.cfg.server.backlog,
                                        worker_count(self.cfg.server.workers), adopted)
        except ListenError as exc:
            where = f" ({exc.path})" if self.cfg.listeners else ""
            raise SystemExit(f"edgeproxy: {exc.message}{where}") from None

    def _addresses(self) -> str:
        """Where the proxy listens, for the log: "host:port", named when [[listeners]]
        named them."""
        if not self.cfg.listeners:
            return ", ".join(b.address for b in self.bound)
        return ", ".join(f"{b.address} ({b.listener.name})" for b in self.bound)

    def _start_admin(self, cfg):
        from engine.control.admin import AdminServer

        sock = None
        if self.inherited is not None:
            sock = self.inherited.take_admin(*parse_listen(cfg.admin.listen))
        return AdminServer(self, cfg.admin.listen, sock)

    def _fork(self, target, keep=()) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                # Until the worker installs its own handler, a reload signal is ignored; the
                # worker then checks for a reload it missed (reload.apply_published).
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                # Their default action kills: `systemctl kill -s USR1` signals every process
                # of the unit (the worker then installs its own USR1 handler); USR2 is the
                # supervisor's alone (an upgrade).
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
                signal.signal(signal.SIGUSR2, signal.SIG_IGN)
                if self.admin is not None:
                    self.admin.socket.close()  # the admin port belongs to the supervisor
                for sock in self._sockets():
                    if sock not in keep:  # else a closed address would still queue SYNs
                        sock.close()
                code = target()
            except BaseException as exc:  # a worker must report, then die
                # str() of an OSError names its path; repr() does not.
                error = f"{exc.__class__.__name__}: {exc}"
                log(f"process failed: {error}")
                if self.rundir is not None:
                    try:
                        with open(self._error_path(os.getpid()), "w") as f:
                            f.write(error)
                    except OSError:
                        pass
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid

    def _start_worker(self, index: int) -> None:
        from engine.control.worker import run_worker

        count = worker_count(self.cfg.server.workers)
        pairs = worker_pairs(self.bound, index, count)
        runtime, generation = self.runtime, self.generation

        def target():
            return run_worker(runtime, pairs, self.rundir, generation)

        pid = self._fork(target, [sock for sock, _ in pairs])
        self.workers[pid] = index
        self.starting[pid] = index

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> int:
        # Before anything is forked: a SIGHUP's default action would kill the supervisor.
        def on_stop(signum, frame):
            self.stopping = True

        def on_hup(signum, frame):
            self.hup = True

        def on_usr1(signum, frame):
            self.usr1 = True

        def on_usr2(signum, frame):
            self.usr2 = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR1, on_usr1)
        signal.signal(signal.SIGUSR2, on_usr2)
        demo = self.cfg.demo
        if demo is not None:
            from engine.control.demo import run_origins
            self.demo_pid = self._fork(lambda: run_origins(demo.origins))
            _wait_listening(demo.origins, 5.0)
            log(f"DEMO origins on {', '.join(demo.origins)} (the [demo] table of the config)")
        self._bind()
        if self.cfg.admin.enabled:
            try:
                self.admin = self._start_admin(self.cfg)
            except OSError as exc:
                for sock in self._sockets():
                    sock.close()
                self._stop_demo()
                raise SystemExit(f"edgeproxy: cannot listen on {self.cfg.admin.listen} "
                                 f"(admin.listen): {exc.strerror}") from None
        self.rundir = tempfile.mkdtemp(prefix="edgeproxy-")
        try:
            return self._serve()
        finally:
            shutil.rmtree(self.rundir, ignore_errors=True)

    def _serve(self) -> int:
        count = worker_count(self.cfg.server.workers)
        for i in range(count):
            self._start_worker(i)
        if self.admin is not None:
            self.admin.start()
            log(f"admin API on {self.admin.host}:{self.admin.port}")
        self._set_watch()
        restarts: list[float] = []
        while not self.stopping:
            try:
                trigger, reply = self.inbox.get(timeout=0.1)
            except queue.Empty:
                pass
            else:
                reply(self.reload(trigger))
            while self.notes:
                log(self.notes.popleft())
            if self.hup:
                self.hup = False
                self.reload("SIGHUP")
            if self.usr1:
                # nginx's USR1: each worker opens its log file by name again; the
                # supervisor's own lines go to stderr, which it never opened.
                self.usr1 = False
                for pid in list(self.workers) + list(self.retiring):
                    _kill(pid, signal.SIGUSR1)
            if self.usr2:
                self.usr2 = False
                self._upgrade()
            if self.watch is not None and self.watch.poll(time.monotonic()):
                self.reload("file change")
            self._retire_when_ready()
            for pid, status in _reaped():
                if self.upgrading is not None and pid == self.upgrading.pid:
                    self.upgrading = None
                    log(f"upgrade FAILED: the new process {pid} exited ({_describe(status)}) "
                        f"before it served; still serving")
                    continue
                self._fold(pid)
                if pid in self.workers and not self.stopping:
                    index = self.workers.pop(pid)
                    self.worker_restarts += 1
                    error = self._worker_error(pid)
                    if self.starting.pop(pid, None) is not None:
                        if self._startup_failed(pid, index, status, error):
                            return self._shutdown(1)
                        continue
                    log(f"worker {pid} exited ({_describe(status)}"
                        + (f": {error}" if error else "") + "); restarting")
                    now = time.monotonic()
                    restarts = [t for t in restarts if now - t < 10] + [now]
                    if len(restarts) > 10 * len(self.workers) + 10:
                        time.sleep(1)  # crash loop: do not spin
                    self._start_worker(index)
                elif pid in self.retiring:
                    self.retiring.discard(pid)
                    log(f"old worker {pid} drained ({_describe(status)})")
            self._started()
        return self._shutdown()

    def _started(self) -> None:
        """Note the workers that serve now (their first snapshot is out), start those whose
        back-off ended, and log "listening" once every worker serves or has failed."""
        for pid, index in list(self.starting.items()):
            if os.path.exists(self._stats_path(pid)):
                del self.starting[pid]
                self.start_failures[index] = 0
        now = time.monotonic()
        for index, due in list(self.restart_due.items()):
            if now >= due:
                del self.restart_due[index]
                self._start_worker(index)
        # Once one worker serves and none is on its first try (a failing one is logged).
        if not self.announced and len(self.starting) < len(self.workers) and all(
                self.start_failures.get(index) for index in self.starting.values()):
            self.announced = True
            count = worker_count(self.cfg.server.workers)
            log(f"listening on {self._addresses()} with {count} worker(s)")
            sdnotify.notify("READY=1", f"STATUS=serving generation {self.generation} on "
                                       f"{self._addresses()}")
            self._upgraded()

    def _upgrade(self) -> None:
        """SIGUSR2: start the program on disk again with our sockets (engine/control/upgrade.py);
        it stops us once it serves."""
        if self.upgrading is not None:
            log(f"upgrade: pid {self.upgrading.pid} is still starting; SIGUSR2 ignored")
            return
        try:
            self.upgrading = upgrade.spawn(self.bound, self.admin.socket if self.admin else None)
        except OSError as exc:
            log(f"upgrade FAILED: cannot start {' '.join(upgrade.command())}: {exc}")
            return
        log(f"upgrade: started pid {self.upgrading.pid} ({' '.join(upgrade.command())}) with "
            f"the listening sockets; it stops this supervisor once it serves")

    def _upgraded(self) -> None:
        """We serve on the sockets an old supervisor handed over: it may drain and go."""
        inherited, self.inherited = self.inherited, None
        if inherited is None:
            return
        inherited.close_rest()
        # The bootloader of the one-file executable is the process systemd watches.
        main = os.getppid() if getattr(sys, "frozen", False) else os.getpid()
        sdnotify.notify(f"MAINPID={main}")
        log(f"upgrade: serving; stopping the old supervisor {inherited.old_pid}")
        _kill(inherited.old_pid, signal.SIGTERM)

    def _startup_failed(self, pid: int, index: int, status: int, error: str | None) -> bool:
        """A worker died before it served: restart it after an exponential back-off, so a
        fault that kills every start (a log directory gone) costs no CPU spin. True when no
        worker ever served and each failed STARTUP_TRIES times: the supervisor gives up."""
        failures = self.start_failures[index] = self.start_failures.get(index, 0) + 1
        why = error or _describe(status)
        self.last_worker_error = {"time": time.time(), "pid": pid, "index": index,
                                  "message": why}
        count = worker_count(self.cfg.server.workers)
        if not self.announced and all(self.start_failures.get(i, 0) >= STARTUP_TRIES
                                      for i in range(count)):
            log(f"every worker failed at startup ({STARTUP_TRIES} tries each); "
                f"last error: {why}")
            return True
        delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
        self.restart_due[index] = time.monotonic() + delay
        log(f"worker {pid} failed during startup ({_describe(status)}): {why}; "
            f"restarting in {delay:g} s")
        return False

    def _error_path(self, pid: int) -> str:
        return os.path.join(self.rundir, WORKER_ERROR_FILE.format(pid=pid))

    def _worker_error(self, pid: int) -> str | None:
        """The error an exited worker reported (and forget it)."""
        path = self._error_path(pid)
        try:
            with open(path) as f:
                error = f.read()
            os.unlink(path)
        except OSError:
            return None
        return error

    def _set_watch(self) -> None:
        if self.config_path is None or not self.cfg.server.watch_config:
            self.watch = None
        elif self.watch is None:
            self.watch = FileWatch(self.config_path, self.digest, tls_files(self.cfg))
        elif self.watch.files != tls_files(self.cfg):
            self.watch.files = tls_files(self.cfg)
            self.watch.tried(self.digest)

    def _retire_when_ready(self) -> None:
        """After a listener change: SIGTERM the old workers once every new one serves (has
        written its first snapshot), so the port never goes without a listener."""
        if self.retire_after is None:
            return
        old, deadline = self.retire_after
        ready = all(os.path.exists(self._stats_path(pid)) for pid in self.workers)
        if ready or time.monotonic() > deadline:
            self.retire_after = None
            for pid in old:
                _kill(pid, signal.SIGTERM)

    def _stats_path(self, pid: int) -> str:
        return os.path.join(self.rundir, STATS_FILE.format(pid=pid))

    def _fold(self, pid: int) -> None:
        """Keep an exited worker's counters (its last snapshot) in ``retired``."""
        from engine.control.metrics import read_snapshot

        path = self._stats_path(pid)
        with self.stats_lock:
            snap = read_snapshot(path)
            if snap is not None:
                self.retired.add_counters(snap)
                os.unlink(path)

    # -- reload ----------------------------------------------------------------------------

    def reload(self, trigger: str) -> dict:
        """Load, validate and compile the config file; apply it if it is good and different.
        Runs on the main thread only."""
        t0 = time.monotonic()
        if self.announced:
            sdnotify.reloading()  # _record says READY=1 again, whatever the result
        if self.config_path is None:
            return self._record(trigger, "failed", t0, [("", "started without a config file")])
        try:
            cand = load_candidate(self.config_path)
        except ConfigError as exc:
            if self.watch is not None and exc.digest is not None:
                self.watch.tried(exc.digest)
            return self._record(trigger, "failed", t0, exc.errors)
        if self.watch is not None:
            self.watch.tried(cand.digest)
        self.digest = cand.digest
        new, old = cand.cfg, self.cfg
        if new == old:
            return self._record(trigger, "unchanged", t0)
        errors = []
        relisten = listener_of(new) != listener_of(old)
        bound = self.bound  # with new sockets: for a new address, or more workers
        if relisten:
            try:
                bound = bind_listeners(listeners_of(new), new.server.backlog,
                                       worker_count(new.server.workers), self.bound)
            except ListenError as exc:
                errors.append((exc.path, exc.message))
        admin = self.admin
        if (new.admin.enabled, new.admin.listen) != (old.admin.enabled, old.admin.listen):
            admin = None
            if new.admin.enabled:
                try:
                    admin = self._start_admin(new)
                except OSError as exc:
                    errors.append(("admin.listen", f"cannot listen on {new.admin.listen}: "
                                                   f"{exc.strerror}"))
        if errors:
            close_unshared(bound, self.bound)
            if admin is not None and admin is not self.admin:
                admin.server_close()
            return self._record(trigger, "failed", t0, errors)
        if new.demo != old.demo:
            log("reload: [demo] changes need a restart; the demo origins keep running")

        self.generation += 1
        publish(self.rundir, self.generation, self.config_path, cand.text)
        self.cfg, self.runtime = new, cand.runtime
        if admin is not self.admin:
            previous, self.admin = self.admin, admin
            if admin is not None:
                admin.start()
                log(f"admin API on {admin.host}:{admin.port}")
            if previous is not None:
                # Not from this thread's view of an in-flight POST /reload: shutdown() only
                # stops the accept loop, the handler thread still answers.
                threading.Thread(target=previous.stop, daemon=True).start()
        if relisten:
            self._relisten(bound)
        else:
            for pid in self.workers:
                _kill(pid, signal.SIGHUP)
        self._set_watch()
        return self._record(trigger, "ok", t0)

    def _relisten(self, bound) -> None:
        # The old workers keep their copies of the sockets of addresses no longer listed
        # until they start to drain; the supervisor's go now so new workers do not inherit
        # them.
        close_unshared(self.bound, bound)
        self.bound = bound
        for sock in self._sockets():
            sock.listen(self.cfg.server.backlog)  # a backlog change applies to live sockets
        old = set(self.workers)
        self.workers = {}
        # The new set starts every index itself; an old worker's pending restart must not.
        self.restart_due.clear()
        for pid in old:
            self.starting.pop(pid, None)
        count = worker_count(self.cfg.server.workers)
        for i in range(count):
            self._start_worker(i)
        self.retiring |= old
        self.retire_after = (old, time.monotonic() + 10.0)
        log(f"listening on {self._addresses()} with {count} worker(s); "
            f"old workers {sorted(old)} drain once the new ones serve")

    def _record(self, trigger: str, result: str, t0: float, errors=()) -> dict:
        took = round((time.monotonic() - t0) * 1000, 3)
        self.reloads[result] += 1
        self.last_reload = {
            "result": result, "trigger": trigger, "time": time.time(), "duration_ms": took,
            "generation": self.generation,
            "errors": [{"path": p, "message": m} for p, m in errors],
        }
        self.recent_reloads.append(self.last_reload)
        if self.announced:
            sdnotify.notify("READY=1", f"STATUS=serving generation {self.generation} (last "
                                       f"reload: {result})")
        if result == "failed":
            log(f"reload ({trigger}) FAILED, still serving generation {self.generation}:")
            for path, message in errors:
                log(f"  {path}: {message}" if path else f"  {message}")
        elif result == "ok":
            log(f"reload ({trigger}): generation {self.generation} validated in {took} ms, "
                f"sent to {len(self.workers)} worker(s)")
        else:
            log(f"reload ({trigger}): config unchanged, nothing to do")
        return dict(self.last_reload)

    # -- what the admin API asks (from its threads) ----------------------------------------

    def log_soon(self, message: str) -> None:
        """Have the main thread log ``message`` (admin threads never write to stderr)."""
        self.notes.append(message)

    def request_reload(self, trigger: str, timeout: float) -> dict | None:
        """Have the main thread reload; wait for its result (None if it did not answer)."""
        done = threading.Event()
        box = {}

        def reply(result):
            box["result"] = result
            done.set()

        self.inbox.put((trigger, reply))
        done.wait(timeout)
        return box.get("result")

    def purge_cache(self, kind: str, value: str, timeout: float) -> dict:
        """Have every worker drop the cached responses ``kind`` ("url", "prefix", "tag")
        names; what they dropped, and the workers that did not answer in ``timeout``."""
        from engine.control.purge import collect, publish

        seq = publish(self.rundir, kind, value)
        pids = list(self.workers)
        for pid in pids:
            _kill(pid, signal.SIGHUP)  # run-directory news (a reload with nothing new is skipped)
        dropped, pending = collect(self.rundir, pids, seq, timeout)
        return {"purged": dropped, "workers": len(pids), "workers_pending": pending}

    def wait_applied(self, generation: int, timeout: float) -> list[int]:
        """Wait until every current worker runs ``generation``; the pids still behind."""
        deadline = time.monotonic() + timeout
        while True:
            snaps = read_snapshots(self.rundir)
            behind = [pid for pid in list(self.workers)
                      if snaps.get(pid, {}).get("generation", 0) < generation]
            if not behind or time.monotonic() > deadline:
                return behind
            time.sleep(0.01)

    def totals(self) -> tuple[Totals, dict]:
        """Counters summed over all workers, live and exited; gauges over live ones."""
        with self.stats_lock:
            snaps = read_snapshots(self.rundir)
            totals = Totals()
            totals.add(self.retired)
        for snap in snaps.values():
            totals.add_counters(snap)
            totals.add_gauges(snap)
        return totals, snaps

    def control_figures(self) -> dict:
        last = self.last_reload
        return {
            "version": VERSION, "started": self.started, "workers": len(self.workers),
            "worker_restarts": self.worker_restarts, "reloads": dict(self.reloads),
            "last_reload_ok": 0 if last is not None and last["result"] == "failed" else 1,
            "generation": self.generation,
        }

    def status(self) -> dict:
        snaps = read_snapshots(self.rundir)
        gauges = Totals()
        for snap in snaps.values():
            gauges.add_gauges(snap)
        workers = []
        current = dict(self.workers)
        for pid in sorted(set(current) | self.retiring):
            snap = snaps.get(pid)
            state = "serving" if pid in current else "draining"
            if snap is None and pid in current:
                state = "starting"
            workers.append({
                "pid": pid, "index": current.get(pid), "state": state,
                "generation": snap["generation"] if snap else None,
                "connections": snap["connections"] if snap else None,
                "requests": sum(sum(r["requests"]) for r in snap["routes"].values())
                if snap else None,
                "reported": snap["time"] if snap else None,
                "redis_breaker": _circuit_name(snap.get("redis_breaker") if snap else None),
            })
        return {
            "version": VERSION,
            "pid": os.getpid(),
            "started": self.started,
            "uptime_seconds": round(time.time() - self.started, 3),
            "config_file": self.config_path,
            "generation": self.generation,
            "listen": self.bound[0].address,  # the first listener's: older clients read it
            "listeners": [{
                "name": b.listener.name, "listen": b.listener.address, "address": b.address,
                "forwarded_proto": b.listener.scheme.decode(), "sockets": len(b.sockets),
            } for b in self.bound],
            "admin_listen": f"{self.admin.host}:{self.admin.port}" if self.admin else None,
            "watch_config": self.watch is not None,
            "last_reload": self.last_reload,
            "recent_reloads": list(self.recent_reloads)[::-1],  # newest first
            "reloads": dict(self.reloads),
            "worker_restarts": self.worker_restarts,
            "last_worker_error": self.last_worker_error,
            "redis_breaker": _circuit_name(gauges.redis_breaker),
            "workers": workers,
        }

    # -- stop ------------------------------------------------------------------------------

    def _shutdown(self, code: int = 0) -> int:
        log("stopping: draining workers")
        sdnotify.notify("STOPPING=1")
        if self.admin is not None:
            self.admin.stop()
        for pid in list(self.workers) + list(self.retiring):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.runtime.settings.drain_timeout + 5
        while (self.workers or self.retiring) and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
            else:
                self.workers.pop(pid, None)
                self.retiring.discard(pid)
        for pid in list(self.workers) + list(self.retiring):
            _kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)  # gone, so it writes nothing into the run directory now
            except ChildProcessError:
                pass
        self._stop_demo()
        for sock in self._sockets():
            sock.close()
        log("stopped" if code == 0 else f"stopped (exit status {code})")
        return code

    def _stop_demo(self) -> None:
        if self.demo_pid is not None:
            _kill(self.demo_pid, signal.SIGTERM)
            try:
                os.waitpid(self.demo_pid, 0)
            except ChildProcessError:
                pass


def _reaped():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


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


def _circuit_name(state: int | None) -> str | None:
    return None if state is None else CIRCUIT_STATES[state]


def _kill(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"status {os.WEXITSTATUS(status)}"
