"""Hot reload: validate a new config off to the side, then swap it into every worker.

The supervisor reads the config file, parses, validates and compiles it (``load_candidate``).
Only a config that passed all three is published to the run directory (``publish``: the exact
text, with a generation number) before the workers get SIGHUP, so a worker never sees a bad
config nor one edited again after validation. Each worker then compiles that text against its
current snapshot (``apply_published``: keep-alive pools carry over by name) and swaps one
reference; requests in flight finish on the snapshot they started with.

Triggers: SIGHUP to the supervisor, ``POST /reload`` on the admin API, and ``FileWatch``, which
polls the file's mtime, size and content hash once a second and waits for it to hold still.
"""

import hashlib
import os
import sys

import orjson

from engine.control.config import parse
from engine.chain.schema import ConfigError

PUBLISHED = "config.json"  # in the run directory: {"generation", "source", "text"}


class Candidate:
    """A config that parsed, validated and compiled: ready to apply."""

    __slots__ = ("text", "digest", "cfg", "runtime")

    def __init__(self, text: str, digest: str, cfg, runtime):
        self.text = text
        self.digest = digest
        self.cfg = cfg
        self.runtime = runtime


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_candidate(path: str) -> Candidate:
    """Read, parse, validate and compile ``path``; raise ConfigError naming every problem.

    The ConfigError's ``digest`` is the content's hash (None when unreadable), so a watch
    does not retry the same broken bytes every second.
    """
    from engine.control.snapshot import Runtime

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise _with_digest(ConfigError([("", f"cannot read {path}: {exc.strerror}")]),
                           None) from None
    digest = digest_of(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _with_digest(ConfigError([("", f"{path} is not UTF-8: {exc}")]), digest) from None
    try:
        cfg = parse(text, path)
        problems = probe_files(cfg)
        if problems:
            raise ConfigError(problems)
        runtime = Runtime(cfg)  # compile too: what a worker would do must not fail there
    except ConfigError as exc:
        raise _with_digest(exc, digest) from None
    except Exception as exc:  # a compile bug must not take the supervisor down
        raise _with_digest(ConfigError([("", f"cannot compile: {exc!r}")]), digest) from None
    return Candidate(text, digest, cfg, runtime)


def probe_files(cfg) -> list:
    """(key_path, message) for each file the config names that cannot be opened now.

    Opened as the workers will open them, creating a missing file as ``nginx -t`` does: a
    path checked any other way could pass here and then kill every worker at start.
    """
    dest = cfg.server.access_log
    if dest in ("stdout", "stderr", "off"):
        return []
    try:
        # O_NONBLOCK: a FIFO nobody reads fails (ENXIO) instead of hanging `check`.
        os.close(os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644))
    except OSError as exc:
        return [("server.access_log", f'cannot open "{dest}" for appending: {exc.strerror} '
                                      f"(errno {exc.errno})")]
    return []


def _with_digest(exc: ConfigError, digest):
    exc.digest = digest
    return exc


def publish(rundir: str, generation: int, source: str, text: str) -> None:
    from engine.control.metrics import write_json

    write_json(os.path.join(rundir, PUBLISHED),
               {"generation": generation, "source": source, "text": text})


def apply_published(worker, rundir: str) -> bool:
    """Worker side of a reload: swap in the published config if it is newer than ours.

    Returns True when the worker now runs the published generation. The supervisor validated
    this exact text, so a failure here is a bug; it is logged and the old snapshot stays.
    """
    from engine.control.snapshot import Runtime

    try:
        with open(os.path.join(rundir, PUBLISHED), "rb") as f:
            published = orjson.loads(f.read())
    except FileNotFoundError:
        return False  # nothing published yet: we run what we were forked with
    except (OSError, orjson.JSONDecodeError) as exc:
        _log(f"reload: cannot read the published config: {exc}")
        return False
    generation = published["generation"]
    if generation <= worker.generation:
        return generation == worker.generation
    try:
        cfg = parse(published["text"], published["source"])
        if cfg != worker.runtime.config:
            worker.swap(Runtime(cfg, worker.runtime))
    except Exception as exc:  # keep serving the old snapshot
        _log(f"reload: generation {generation} failed in the worker: {exc!r}")
        return False
    worker.generation = generation
    if worker.stats_path is not None:
        worker.write_stats()  # tells the admin API (and POST /reload) we have it
    return True


class FileWatch:
    """Polls a file's mtime, size and content hash every ``interval`` seconds and reports a
    change once the file has held still for one more ``settle`` period (editors and config
    managers write in steps: truncate, write, rename). ``files`` are watched with it by
    mtime and size (the certificates the config names). Time is an argument (``now``)."""

    def __init__(self, path: str, digest: str | None, files: tuple = (),
                 interval: float = 1.0, settle: float = 0.3):
        self.path = path
        self.files = files
        self.interval = interval
        self.settle = settle
        self.seen = self._look()
        self.tried(digest)
        self.moving = False
        self.due = 0.0

    def tried(self, digest: str | None) -> None:
        """The config whose content hashes to ``digest`` was loaded (good or bad), with the
        watched files as they are now: that state is not retried."""
        self.attempted = digest
        self.attempted_files = self._stats()

    def _stats(self) -> tuple:
        stats = []
        for path in self.files:
            try:
                st = os.stat(path)
                stats.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stats.append(None)
        return tuple(stats)

    def _look(self):
        try:
            st = os.stat(self.path)
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return None  # gone or unreadable for now (a rename in progress): keep serving
        return (st.st_mtime_ns, st.st_size, digest_of(data), self._stats())

    def poll(self, now: float) -> bool:
        """True when the file changed, settled, and differs from the last attempt."""
        if now < self.due:
            return False
        look = self._look()
        if look != self.seen:
            self.seen = look
            self.moving = True
            self.due = now + self.settle
            return False
        self.due = now + self.interval
        if not self.moving:
            return False
        self.moving = False
        return look is not None and (look[2] != self.attempted
                                     or look[3] != self.attempted_files)


def _log(message: str) -> None:
    sys.stderr.write(f"edgeproxy[{os.getpid()}]: {message}\n")
    sys.stderr.flush()
