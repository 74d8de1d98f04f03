"""The access log: one line per finished request, JSON or nginx's "combined", buffered and
written once per worker sweep (or when the buffer fills), reopened on SIGUSR1 for logrotate.

Lines are built in the log phase only: the data plane hands over the finished request
context, nothing is formatted for a request while it runs (STYLE.md rule 8).
"""

import os
import sys
import time

import orjson

FORMATS = ("json", "combined")
_FLUSH_AT = 65536
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class _SecondCache:
    """A time's text up to the second, formatted once per second (as nginx caches its time
    strings): gmtime and formatting cost more than the rest of a log line."""

    __slots__ = ("second", "text", "fmt")

    def __init__(self, fmt):
        self.second, self.text, self.fmt = -1, "", fmt

    def __call__(self, t: float) -> str:
        second = int(t)
        if second != self.second:
            self.second, self.text = second, self.fmt(time.gmtime(second))
        return self.text


_iso_second = _SecondCache(lambda tm: f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
                                      f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}")
_clf_second = _SecondCache(lambda tm: f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/"
                                      f"{tm.tm_year:04d}:{tm.tm_hour:02d}:{tm.tm_min:02d}:"
                                      f"{tm.tm_sec:02d} +0000")


def iso_time(t: float) -> str:
    """RFC 3339 UTC with milliseconds (2026-12-04T15:55:57.123Z): sorts as text and reads
    the same in every time zone, which an epoch float did not."""
    return f"{_iso_second(t)}.{int(t % 1 * 1000):03d}Z"


def clf_time(t: float) -> str:
    """nginx's $time_local, in UTC: 04/Dec/2026:15:55:57 +0000."""
    return _clf_second(t)


def upstream_addresses(ex) -> list[str]:
    """host:port of every server the request was sent to, in order (nginx $upstream_addr):
    the servers it failed on, then the one that answered last."""
    out = []
    for server in (ex.tried or ()):
        _add(out, server)
    if ex.server is not None:
        _add(out, ex.server)
    return out


def _add(out: list, server) -> None:
    host = server.host
    addr = f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"
    if not out or out[-1] != addr:  # a server whose retry found no other is listed once
        out.append(addr)


def _header(ex, name: bytes):
    for n, v in ex.headers or ():
        if n.lower() == name:
            return v.decode("latin-1")
    return None


def consumer_name(ex):
    """The authenticated caller, as auth filters set it (an object with a ``name``, or a
    string), or None."""
    consumer = ex.consumer
    if consumer is None:
        return None
    return str(getattr(consumer, "name", consumer))


def cache_status(ex):
    """What a cache filter decided for this request (``ctx.vars["cache_status"]``: HIT, MISS,
    BYPASS, EXPIRED, STALE...), or None when no cache took part."""
    v = ex.vars
    return v.get("cache_status") if v else None


def json_record(ex, now: float, took: float, upstream_took: float) -> dict:
    route = ex.route
    server = ex.server
    addrs = upstream_addresses(ex)
    return {
        "time": iso_time(now),
        "request_id": ex.request_id.decode(),
        "trace_id": ex.trace_id.decode() if ex.trace_id is not None else None,
        "client_ip": ex.client_ip,
        "method": ex.method.decode("latin-1"),
        "path": ex.path,
        "query": ex.query[1:].decode("latin-1") if ex.query else None,  # without its "?"
        "status": ex.status,
        "route": route.name if route is not None else None,
        "upstream": server.url if server is not None else None,
        "upstream_addr": ", ".join(addrs) if addrs else None,
        "upstream_status": ex.upstream_status or None,
        "retries": max(0, len(addrs) - 1),
        "cache": cache_status(ex),
        "consumer": consumer_name(ex),
        "bytes_in": ex.body_received,
        "bytes_out": ex.bytes_out,
        "duration_ms": round(took * 1000, 3),
        "upstream_ms": round(upstream_took * 1000, 3) if upstream_took >= 0 else None,
        "user_agent": _header(ex, b"user-agent"),
    }


def _quoted(value) -> str:
    # nginx escapes " and \ and non-printable bytes as \xHH in log variables.
    if not value:
        return "-"
    return "".join(c if " " <= c < "\x7f" and c not in '"\\' else f"\\x{ord(c):02X}"
                   for c in value)


def combined_line(ex, now: float, took: float, upstream_took: float) -> str:
    """nginx's predefined "combined" format, then the fields operators grep for as
    key=value pairs (what people add to log_format main): the first nine columns parse with
    any combined-log tool (GoAccess, awstats, fail2ban)."""
    target = ex.path + (ex.query.decode("latin-1") if ex.query else "")  # (query: "?...")
    route = ex.route
    addrs = upstream_addresses(ex)
    urt = f"{upstream_took:.3f}" if upstream_took >= 0 else "-"
    return (
        f'{ex.client_ip} - {_quoted(consumer_name(ex))} [{clf_time(now)}] '
        f'"{ex.method.decode("latin-1")} {_quoted(target)} HTTP/{ex.version or "1.1"}" '
        f'{ex.status} {ex.bytes_out} "{_quoted(_header(ex, b"referer"))}" '
        f'"{_quoted(_header(ex, b"user-agent"))}" '
        f'rt={took:.3f} urt={urt} ua="{", ".join(addrs) or "-"}" '
        f'us={ex.upstream_status or "-"} retries={max(0, len(addrs) - 1)} '
        f'route={route.name if route is not None else "-"} cache={cache_status(ex) or "-"} '
        f'rid={ex.request_id.decode()}\n')


class AccessLog:
    """Where the lines go: stdout, stderr or a file (opened for appending)."""

    def __init__(self, destination: str, fmt: str = "json"):
        self.destination = destination
        self.format = fmt
        self.fd, self.owned = self._open(destination)
        self.buffer = []
        self.size = 0

    @staticmethod
    def _open(destination: str):
        if destination == "stdout":
            return sys.stdout.fileno(), False
        if destination == "stderr":
            return sys.stderr.fileno(), False
        return os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), True

    def log(self, ex, took: float, upstream_took: float) -> None:
        now = time.time()
        if self.format == "json":
            line = orjson.dumps(json_record(ex, now, took, upstream_took),
                                option=orjson.OPT_APPEND_NEWLINE)
        else:
            line = combined_line(ex, now, took, upstream_took).encode("utf-8", "replace")
        self.buffer.append(line)
        self.size += len(line)
        if self.size > _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            data = b"".join(self.buffer)
            self.buffer.clear()
            self.size = 0
            try:
                os.write(self.fd, data)
            except OSError:
                pass  # a full disk or closed pipe must not take the data plane down

    def reopen(self) -> None:
        """Open the file by its name again (logrotate renamed it: SIGUSR1, as nginx's USR1).
        The old descriptor is closed only once the new one is open: a reopen that fails
        (a removed directory, permissions) keeps logging to the old file, and says so."""
        self.flush()
        if not self.owned:
            return
        try:
            fd, _ = self._open(self.destination)
        except OSError as exc:
            sys.stderr.write(orjson.dumps({
                "event": "access_log_reopen_failed", "path": self.destination,
                "error": exc.strerror, "pid": os.getpid()}).decode() + "\n")
            return
        old, self.fd = self.fd, fd
        os.close(old)

    def close(self) -> None:
        self.flush()
        if self.owned:
            os.close(self.fd)


def open_access_log(destination: str, fmt: str = "json"):
    return None if destination == "off" else AccessLog(destination, fmt)
