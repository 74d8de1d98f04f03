"""Response compression: gzip (zlib), Brotli (``brotli``) and zstd (``zstandard``), streamed.

The coding is negotiated from Accept-Encoding with its q-values (RFC 9110 §12.5.3): the
highest q wins, ties go to ``algorithms``' order, q=0 refuses a coding, ``*`` stands for the
ones not named, and an identity the client prefers over every coding we have wins. Eligible
answers (status, type, size) get ``Vary: Accept-Encoding`` whether or not this client takes a
coding, so a cache keys on it. Each upstream chunk is compressed and flushed as it arrives
(a streaming encoder set as ``ctx.transform``), so a large or slow body is never held whole
and the answer goes out chunked; a local answer is compressed whole.

Not compressed: HEAD, 1xx/204/206/304, an answer already encoded (Content-Encoding) or
marked ``Cache-Control: no-transform`` (RFC 9111 §5.2.2.6), a request with Range (the
ranges name bytes of the identity body), types outside ``types``, and bodies known to be
shorter than ``min_length``.
"""

import zlib
from dataclasses import dataclass

import brotli
import zstandard

from engine.chain.filter import TRANSFORM, Filter as FilterBase
from engine.chain.schema import Size, key
from engine.filters.fields import add_vary, list_tokens, parse_qlist

# Tokens a client may name each coding by (RFC 9110 §8.4.1.3: x-gzip is gzip).
TOKENS = {"gzip": (b"gzip", b"x-gzip"), "br": (b"br",), "zstd": (b"zstd",)}
LEVELS = {"gzip": (1, 9), "br": (0, 11), "zstd": (1, 19)}
# Dropped from a head being compressed: its length and ranges were the identity body's, and
# an "identity" coding (the only one left by then) is replaced by ours.
_DROP = frozenset((b"content-length", b"accept-ranges", b"content-encoding"))


class _Gzip:
    __slots__ = ("z",)
    NAME = b"gzip"

    def __init__(self, level: int):
        self.z = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 16+15: gzip framing

    def feed(self, data: bytes) -> bytes:
        # Z_SYNC_FLUSH: what arrived goes out now (a slow stream is not held in the encoder).
        return self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self.z.flush(zlib.Z_FINISH)


class _Brotli:
    __slots__ = ("c",)
    NAME = b"br"

    def __init__(self, level: int):
        self.c = brotli.Compressor(quality=level)

    def feed(self, data: bytes) -> bytes:
        return self.c.process(data) + self.c.flush()

    def finish(self) -> bytes:
        return self.c.finish()


class _Zstd:
    __slots__ = ("c",)
    NAME = b"zstd"

    def __init__(self, compressor: zstandard.ZstdCompressor):
        self.c = compressor.compressobj()

    def feed(self, data: bytes) -> bytes:
        return self.c.compress(data) + self.c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self.c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def _check_algorithms(values: tuple) -> tuple:
    for v in values:
        if v not in TOKENS:
            raise ValueError(f'"{v}" is not one of {", ".join(TOKENS)}')
    if len(set(values)) != len(values):
        raise ValueError("names a coding twice")
    return values


def _check_types(values: tuple) -> tuple:
    for v in values:
        if v != "*" and (v.count("/") != 1 or ";" in v or v != v.strip().lower()):
            raise ValueError(f'"{v}" is not a lowercase media type ("text/html", "text/*", '
                             '"application/*+json" or "*")')
    return values


@dataclass(frozen=True)
class Config:
    algorithms: tuple[str, ...] = key(("zstd", "br", "gzip"), "codings offered, preferred "
                                      "first when the client rates them equally",
                                      check=_check_algorithms)
    gzip_level: int = key(5, "gzip level (1 fastest .. 9 smallest)", min=1, max=9)
    brotli_level: int = key(4, "Brotli quality (0 .. 11; above 5 is slow for live answers)",
                            min=0, max=11)
    zstd_level: int = key(3, "zstd level (1 .. 19)", min=1, max=19)
    min_length: Size = key(Size(1024), "answers known to be shorter are sent as they are "
                                       "(nginx gzip_min_length)")
    types: tuple[str, ...] = key(
        ("text/*", "application/json", "application/javascript", "application/xml",
         "application/*+json", "application/*+xml", "image/svg+xml", "application/wasm"),
        'media types compressed: exact, "type/*", "type/*+suffix", or "*" (nginx gzip_types)',
        check=_check_types)


class Filter(FilterBase):
    __slots__ = ("algorithms", "levels", "zstd", "min_length", "exact", "any_type",
                 "major", "suffixes")
    # Response hooks run in reverse rank: after cache/idempotency (which keep the identity
    # body's head) come cors and rate-limit, which only add fields.
    PHASE = TRANSFORM

    def __init__(self, cfg: Config, build):
        super().__init__(cfg, build)
        self.algorithms = cfg.algorithms
        self.levels = {"gzip": cfg.gzip_level, "br": cfg.brotli_level}
        self.zstd = zstandard.ZstdCompressor(level=cfg.zstd_level)
        self.min_length = cfg.min_length
        self.exact = frozenset(t.encode() for t in cfg.types if "*" not in t)
        self.any_type = "*" in cfg.types
        self.major = frozenset(t[:-2].encode() for t in cfg.types if t.endswith("/*"))
        self.suffixes = tuple((t.split("/")[0].encode(), t.split("*")[1].encode())
                              for t in cfg.types if "/*+" in t)

    def _type_ok(self, content_type) -> bool:
        if content_type is None:
            return False
        media = content_type.split(b";")[0].strip().lower()
        if self.any_type or media in self.exact:
            return True
        major, _, minor = media.partition(b"/")
        if major in self.major:
            return True
        return any(major == m and minor.endswith(s) for m, s in self.suffixes)

    def choose(self, accept) -> bytes | None:
        """The coding for an Accept-Encoding value (None: identity)."""
        if accept is None:
            return None  # RFC 9110 §12.5.3: any is allowed; identity is what all can read
        ranked = parse_qlist(accept)
        star = ranked.get(b"*")
        best, best_q = None, 0.0
        for name in self.algorithms:
            qs = [ranked[t] for t in TOKENS[name] if t in ranked]
            q = max(qs) if qs else star
            if q is not None and q > best_q:
                best, best_q = name, q
        identity = ranked.get(b"identity", star if star is not None else 1.0)
        if best is None or (b"identity" in ranked and identity > best_q):
            return None
        return best

    def _encoder(self, name: str):
        if name == "gzip":
            return _Gzip(self.levels["gzip"])
        if name == "br":
            return _Brotli(self.levels["br"])
        return _Zstd(self.zstd)

    def on_response(self, ctx, resp):
        status = resp.status
        if status < 200 or status in (204, 206, 304) or ctx.method == b"HEAD":
            return
        content_type = None
        for name, value in resp.headers:
            lname = name.lower()
            if lname == b"content-type":
                content_type = value
            elif lname == b"content-encoding":
                if value.strip().lower() != b"identity":
                    return  # encoded already: never twice
            elif lname == b"content-range":
                return
            elif lname == b"cache-control":
                if b"no-transform" in list_tokens((value,)):
                    return  # RFC 9111 §5.2.2.6
        if not self._type_ok(content_type):
            return
        if resp.body is not None:
            length = len(resp.body)
        elif ctx.response_length is not None:
            length = int(ctx.response_length)
        else:
            length = None  # chunked upstream: compressed, as nginx does
        if length is not None and length < self.min_length:
            return
        accept = None
        for name, value in ctx.headers:
            lname = name.lower()
            if lname == b"range":
                return
            if lname == b"accept-encoding":
                accept = value if accept is None else accept + b"," + value
        headers = resp.headers
        add_vary(headers, b"Accept-Encoding")
        coding = self.choose(accept)
        if coding is None:
            return
        encoder = self._encoder(coding)
        out = []
        for name, value in headers:
            lname = name.lower()
            if lname in _DROP:
                continue
            if lname == b"etag" and value[:1] == b'"':
                value = b"W/" + value  # RFC 9110 §8.8.1: no longer these exact bytes
            out.append((name, value))
        out.append((b"Content-Encoding", encoder.NAME))
        resp.headers = out
        ctx.transform = encoder
