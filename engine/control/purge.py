"""Cache purge, from the admin API (in the supervisor) to every worker's cache.

Each worker holds its own memory tier, so a purge is published to the run directory as one
more entry of ``cache-purges.json`` (the last ``KEPT``, numbered), and every worker is sent
SIGHUP, the signal for news in the run directory (a config generation it already runs is
skipped; SIGUSR1 is logrotate's). A worker applies each entry it has not applied yet
(engine.filters.cache.purge) and writes what it dropped to ``purged-<pid>.json``; the admin API waits (bounded) for every
worker's answer and sums them. A worker that starts later applies what is published then
(to an empty cache: no harm), so no signal can be missed for good.
"""

import os
import threading
import time

import orjson

from engine.control.metrics import write_json

PURGES = "cache-purges.json"
ACK = "purged-{pid}.json"
KEPT = 256  # purges kept in the file: far more than can be published between two signals

_lock = threading.Lock()  # admin threads publish one at a time


def publish(rundir: str, kind: str, value: str) -> int:
    """Add a purge to the published list; its sequence number."""
    path = os.path.join(rundir, PURGES)
    with _lock:
        entries = _read(path) or []
        seq = entries[-1]["seq"] + 1 if entries else 1
        entries.append({"seq": seq, "kind": kind, "value": value})
        write_json(path, entries[-KEPT:])
    return seq


def apply_purges(worker, rundir: str) -> None:
    """Worker side (on SIGHUP and at start): apply the purges published since the last."""
    from engine.filters.cache import purge

    entries = _read(os.path.join(rundir, PURGES))
    if not entries:
        return
    done = {}
    for entry in entries:
        if entry["seq"] > worker.purge_seq:
            done[str(entry["seq"])] = purge(worker.runtime.shared, entry["kind"], entry["value"])
            worker.purge_seq = entry["seq"]
    if done:
        try:
            write_json(os.path.join(rundir, ACK.format(pid=os.getpid())),
                       {"seq": worker.purge_seq, "dropped": done})
        except OSError:
            pass  # the run directory went away (supervisor stopping)


def collect(rundir: str, pids, seq: int, timeout: float) -> tuple[int, list]:
    """Wait until every worker in ``pids`` applied purge ``seq``: (responses dropped in all,
    pids that did not answer in time)."""
    deadline = time.monotonic() + timeout
    dropped = {}
    while True:
        for pid in pids:
            if pid not in dropped:
                ack = _read(os.path.join(rundir, ACK.format(pid=pid)))
                if ack is not None and ack["seq"] >= seq:
                    dropped[pid] = ack["dropped"].get(str(seq), 0)
        pending = [pid for pid in pids if pid not in dropped]
        if not pending or time.monotonic() > deadline:
            return sum(dropped.values()), pending
        time.sleep(0.01)


def _read(path: str):
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None
