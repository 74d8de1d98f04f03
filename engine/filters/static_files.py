"""A route that serves a directory (nginx ``root``, or ``alias`` with the route's
strip_prefix): GET and HEAD, validators and conditional requests (RFC 9110 §13), one byte
range (RFC 9110 §14), Cache-Control / Expires, a type from the extension, an index file, and
precompressed ``.br`` / ``.gz`` siblings for clients that accept them.

The request path is percent-decoded once more here (the codec leaves "%2F" encoded) and then
refused if any segment is "." or "..", holds NUL or "/" after decoding, or (unless
``hidden``) starts with a dot; what is left is resolved with symlinks followed and must still
lie under the root. Refusals are 404s that say nothing about the file system.

Small bodies (up to 256 KiB) are read whole and go out with the head in one write; larger ones
go out as a StreamResponse read as the client drains its socket, never held whole. Reads are
plain pread on the worker's loop, like nginx without aio: a page-cached file costs a copy.
"""

import datetime
import email.utils
import mimetypes
import os
import stat
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from engine.chain.filter import ANSWER, Filter as FilterBase
from engine.chain.schema import REQUIRED, Duration, key
from engine.errors import Response, StreamResponse, error_response
from engine.filters.fields import parse_qlist

ERRORS = {
    "file_not_found": (404, "no such file"),
    "precondition_failed": (412, "a precondition of the request did not hold"),
    "range_not_satisfiable": (416, "the requested range is not within the file"),
}

_WHOLE_MAX = 256 * 1024  # read whole and sent with the head; larger files stream
RESOLVED_VALID = 2.0  # seconds a resolved path is reused (nginx open_file_cache_valid)
RESOLVED_MAX = 4096  # resolved paths kept per route; cleared whole when full
# Precompressed siblings: (suffix, Accept-Encoding tokens, Content-Encoding), preferred first.
_SIBLINGS = ((b".br", (b"br",), b"br"), (b".gz", (b"gzip", b"x-gzip"), b"gzip"))
_TYPES = mimetypes.MimeTypes()  # the built-in table only: the same on every host
for _ext, _type in ((".js", "text/javascript"), (".mjs", "text/javascript"),  # RFC 9239
                    (".woff2", "font/woff2"), (".woff", "font/woff"), (".webp", "image/webp"),
                    (".avif", "image/avif"), (".map", "application/json"),
                    (".webmanifest", "application/manifest+json")):
    _TYPES.add_type(_type, _ext)
# Types that get "; charset=": not JSON, whose media type has no charset (RFC 8259 §11).
_CHARSET_TYPES = (b"text/", b"application/javascript", b"image/svg+xml")


def _check_root(value: str) -> str:
    if not os.path.isdir(value):
        raise ValueError(f'"{value}" is not a directory')
    return value


def _check_index(value: str) -> str:
    if "/" in value or value in (".", ".."):
        raise ValueError(f'"{value}" must be a file name')
    return value


@dataclass(frozen=True)
class Config:
    root: str = key(REQUIRED, "directory served (with the route's strip_prefix: nginx alias; "
                          "without: nginx root)", check=_check_root)
    index: str = key("index.html", 'file served for a directory path ending in "/" ("": '
                                    "none, 404)", check=_check_index)
    expires: Duration | None = key(None, 'freshness: Cache-Control max-age and Expires '
                                         '(e.g. "1y" for fingerprinted assets); unset: '
                                         '"no-cache", every use revalidates (a cheap 304)')
    cache_control: str = key("", "Cache-Control sent as is (overrides expires)")
    precompressed: bool = key(True, "serve file.br / file.gz for clients that accept them, "
                                    "when such a sibling exists")
    charset: str = key("utf-8", 'charset added to text types ("": none)')
    hidden: bool = key(False, "serve names starting with a dot (.git, .env); .well-known is "
                              "always served")
    etag: bool = key(True, "send ETag (mtime and size, as nginx)")


class _FileSource:
    """A file's bytes [offset, offset + count) read as the client takes them."""

    __slots__ = ("fd", "offset", "left")

    def __init__(self, fd: int, offset: int, count: int):
        self.fd = fd
        self.offset = offset
        self.left = count

    def read(self, n: int):
        if self.left <= 0:
            return b""
        data = os.pread(self.fd, min(n, self.left), self.offset)
        if not data:
            return None  # the file shrank under us: the answer cannot be completed
        self.offset += len(data)
        self.left -= len(data)
        return data

    def close(self):
        os.close(self.fd)


def _http_date(seconds: float) -> bytes:
    return email.utils.formatdate(seconds, usegmt=True).encode()


def _parse_date(value: bytes):
    """An HTTP-date as POSIX seconds (RFC 9110 §5.6.7: all three formats), else None."""
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)  # asctime: GMT, unstated
    return parsed.timestamp()


def _etags(value: bytes):
    """The entity-tags of an If-Match / If-None-Match list, or None for "*"."""
    value = value.strip()
    if value == b"*":
        return None
    return [t.strip() for t in value.split(b",") if t.strip()]


def _weak_match(a: bytes, b: bytes) -> bool:
    # RFC 9110 §8.8.3.2: equal opaque-tags, either or both may be weak.
    return a.removeprefix(b"W/") == b.removeprefix(b"W/")


def _strong_match(a: bytes, b: bytes) -> bool:
    return a == b and not a.startswith(b"W/")


def _byte_range(spec: bytes, size: int):
    """One range of ``bytes=...`` as (first, last); "ignore" when not one valid byte range
    (RFC 9110 §14.2: a server may ignore it); None when unsatisfiable (§14.1.2)."""
    unit, _, ranges = spec.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in ranges:
        return "ignore"  # other units, or several ranges: the whole file (200)
    first, dash, last = ranges.strip().partition(b"-")
    if not dash or not (first.isdigit() or first == b"") or not (last.isdigit() or last == b""):
        return "ignore"
    if first == b"":
        if last == b"":
            return "ignore"
        n = int(last)
        if n == 0 or size == 0:
            return None
        return max(size - n, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return "ignore"  # RFC 9110 §14.1.1: invalid
    if start >= size:
        return None
    return start, min(int(last), size - 1) if last else size - 1


class Filter(FilterBase):
    __slots__ = ("root", "index", "cache_fields", "expires", "precompressed", "charset",
                 "hidden", "etag", "resolved")
    PHASE = ANSWER
    SERVER_WIDE = False
    ANSWERS = True

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.root = os.path.realpath(cfg.root).encode()
        self.index = cfg.index.encode()
        self.expires = cfg.expires
        if cfg.cache_control:
            self.cache_fields = [(b"Cache-Control", cfg.cache_control.encode())]
            self.expires = None
        elif cfg.expires is not None:
            self.cache_fields = [(b"Cache-Control", b"max-age=%d" % int(cfg.expires))]
        else:
            self.cache_fields = [(b"Cache-Control", b"no-cache")]
        self.precompressed = cfg.precompressed
        self.charset = cfg.charset.encode()
        self.hidden = cfg.hidden
        self.etag = cfg.etag
        self.resolved: dict[bytes, tuple] = {}  # path -> (real path or None, valid until)

    # -- where the path leads

    def _resolve(self, ctx, now: float):
        """(real path under the root or None when refused, whether a directory was named)."""
        route = ctx.route
        rel = ctx.path[route.strip:] if route is not None and route.strip else ctx.path
        try:
            raw = unquote_to_bytes(rel)
        except (TypeError, ValueError):
            return None, False
        parts = []
        for seg in raw.split(b"/"):
            if not seg:
                continue
            if seg in (b".", b"..") or b"\0" in seg or b"\\" in seg:
                return None, False
            if seg[:1] == b"." and not self.hidden and seg != b".well-known":
                return None, False
            parts.append(seg)
        path = os.path.join(self.root, *parts)
        return self._inside(path, now), raw.endswith(b"/") or not parts

    def _inside(self, path: bytes, now: float):
        """``path``'s real path when it lies under the root, else None. Resolving follows
        every symlink (an lstat per component), so results are kept RESOLVED_VALID seconds,
        like nginx's open_file_cache: a stale entry can only name a path that was inside."""
        hit = self.resolved.get(path)
        if hit is not None and hit[1] > now:
            return hit[0]
        real = os.path.realpath(path)  # symlinks followed: the target must be ours too
        if not (real == self.root or real.startswith(self.root + b"/")):
            real = None
        if len(self.resolved) >= RESOLVED_MAX:
            self.resolved.clear()
        self.resolved[path] = (real, now + RESOLVED_VALID)
        return real

    def _stat_file(self, path: bytes):
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    # -- the answer

    def on_request(self, ctx):
        method = ctx.method
        rid = ctx.request_id.decode()
        if method != b"GET" and method != b"HEAD":
            return error_response("method_not_allowed", rid, headers=[(b"Allow", b"GET, HEAD")])
        now = ctx.clock.now
        real, is_dir = self._resolve(ctx, now)
        if real is None:
            return error_response("file_not_found", rid)
        try:
            st = os.stat(real)
        except (OSError, ValueError):
            return error_response("file_not_found", rid)
        if stat.S_ISDIR(st.st_mode):
            if not is_dir:
                # nginx: a directory named without its slash is redirected to it, so
                # relative links in its index resolve inside it.
                location = ctx.path.encode("latin-1") + b"/" + ctx.query
                return Response(301, [(b"Location", location)], b"")
            if not self.index:
                return error_response("file_not_found", rid)
            real = self._inside(os.path.join(real, self.index), now)
            st = self._stat_file(real) if real is not None else None
            if st is None:
                return error_response("file_not_found", rid)
        elif not stat.S_ISREG(st.st_mode):
            return error_response("file_not_found", rid)
        return self._serve(ctx, real, st, rid, now)

    def _request_fields(self, ctx) -> dict:
        wanted = {b"accept-encoding", b"range", b"if-range", b"if-match", b"if-none-match",
                  b"if-modified-since", b"if-unmodified-since"}
        found = {}
        for name, value in ctx.headers:
            lname = name.lower()
            if lname in wanted:
                found[lname] = found[lname] + b"," + value if lname in found else value
        return found

    def _sibling(self, real: bytes, st, accept: bytes | None, now: float):
        """The precompressed (path, stat, coding) to send, or (None, None, None); and whether
        any sibling exists (then the answer varies on Accept-Encoding). A sibling older than
        the file is stale (rebuilt file, forgotten .gz) and ignored."""
        ranked = parse_qlist(accept) if accept is not None else {}
        best, best_q, exists = (None, None, None), 0.0, False
        for ext, tokens, coding in _SIBLINGS:
            path = self._inside(real + ext, now)
            sib = self._stat_file(path) if path is not None else None
            if sib is None or sib.st_mtime_ns < st.st_mtime_ns:
                continue
            exists = True
            named = [ranked[t] for t in tokens if t in ranked]
            q = max(named) if named else ranked.get(b"*", 0.0)  # RFC 9110 §12.5.3
            if q > best_q:
                best, best_q = (path, sib, coding), q
        return best, exists

    def _serve(self, ctx, real, st, rid, now):
        fields = self._request_fields(ctx)
        is_get = ctx.method == b"GET"
        content_type = _TYPES.guess_type(real.decode("utf-8", "surrogateescape"))[0]
        ctype = (content_type or "application/octet-stream").encode()
        if self.charset and ctype.startswith(_CHARSET_TYPES):
            ctype += b"; charset=" + self.charset
        headers = [(b"Content-Type", ctype)]
        coding = None
        if self.precompressed and b"range" not in fields:
            (path, sib_st, token), exists = self._sibling(
                real, st, fields.get(b"accept-encoding"), now)
            if exists:
                headers.append((b"Vary", b"Accept-Encoding"))
            if path is not None:
                real, st, coding = path, sib_st, token
                headers.append((b"Content-Encoding", coding))
        size = st.st_size
        mtime = int(st.st_mtime)
        etag = None
        if self.etag:
            etag = b'"%x-%x' % (st.st_mtime_ns // 1_000_000, size)
            etag += (b"-" + coding + b'"') if coding else b'"'
            headers.append((b"ETag", etag))
        last_modified = _http_date(mtime)
        headers.append((b"Last-Modified", last_modified))
        headers += self.cache_fields
        if self.expires is not None:
            headers.append((b"Expires", _http_date(time.time() + self.expires)))
        # RFC 9110 §13.2.2: the order preconditions are evaluated in.
        if_match = fields.get(b"if-match")
        if if_match is not None:
            tags = _etags(if_match)
            if tags is not None and not any(etag and _strong_match(t, etag) for t in tags):
                return error_response("precondition_failed", rid)
        else:
            since = fields.get(b"if-unmodified-since")
            when = _parse_date(since) if since is not None else None
            if when is not None and mtime > when:
                return error_response("precondition_failed", rid)
        if_none = fields.get(b"if-none-match")
        if if_none is not None:
            tags = _etags(if_none)
            if tags is None or any(etag and _weak_match(t, etag) for t in tags):
                if is_get or ctx.method == b"HEAD":
                    return Response(304, headers, b"")  # §15.4.5: the 200's validators
                return error_response("precondition_failed", rid)
        else:
            since = fields.get(b"if-modified-since")
            when = _parse_date(since) if since is not None else None
            if when is not None and mtime <= when:
                return Response(304, headers, b"")
        status, offset, count = 200, 0, size
        spec = fields.get(b"range")
        if spec is not None and is_get and self._if_range(fields.get(b"if-range"), etag,
                                                          last_modified):
            rng = _byte_range(spec, size)
            if rng is None:
                return error_response("range_not_satisfiable", rid,
                                      headers=[(b"Content-Range", b"bytes */%d" % size)])
            if rng != "ignore":
                first, last = rng
                status, offset, count = 206, first, last - first + 1
                headers.append((b"Content-Range", b"bytes %d-%d/%d" % (first, last, size)))
        if coding is None:
            headers.append((b"Accept-Ranges", b"bytes"))
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return error_response("file_not_found", rid)
        if is_get and count <= _WHOLE_MAX:
            try:
                body = os.pread(fd, count, offset)
            finally:
                os.close(fd)
            if len(body) != count:
                return error_response("file_not_found", rid)  # it changed under us
            return Response(status, headers, body)
        # (HEAD too: the head states the length, and the source is closed unread)
        return StreamResponse(status, headers, _FileSource(fd, offset, count), count)

    @staticmethod
    def _if_range(value, etag, last_modified) -> bool:
        """Whether a Range applies under If-Range (RFC 9110 §13.1.5): a strong ETag match
        or exactly the Last-Modified date; without If-Range it always does."""
        if value is None:
            return True
        value = value.strip()
        if value.startswith(b'"') or value.startswith(b"W/"):
            return etag is not None and _strong_match(value, etag)
        return value == last_modified
