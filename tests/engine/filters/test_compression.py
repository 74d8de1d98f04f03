"""The compression filter's negotiation and encoders on their own."""

import zlib

import brotli
import pytest
import zstandard

from engine.chain.schema import Size
from engine.filters.compression import Config, Filter, _Brotli, _Gzip, _Zstd
from engine.filters.fields import add_vary, parse_qlist


@pytest.mark.parametrize("accept,expected", [
    pytest.param(b"gzip, br, zstd", "zstd", id="preference-on-ties"),
    pytest.param(b"br;q=0.9, gzip", "gzip", id="q-wins"),
    pytest.param(b"*", "zstd", id="star"),
    pytest.param(b"*;q=0.5, gzip;q=0.6", "gzip", id="named-over-star"),
    pytest.param(b"zstd;q=0, *;q=0.1", "br", id="star-skips-refused"),
    pytest.param(b"identity;q=1, br;q=0.5", None, id="identity-higher"),
    pytest.param(b"identity;q=0.1, br;q=0.5", "br", id="identity-lower"),
    pytest.param(b"gzip;q=1.5", None, id="q-out-of-range-is-0"),
    pytest.param(b"", None, id="empty-means-identity"),
    pytest.param(b" , ;q=1, gzip ; q=0.3 ", "gzip", id="whitespace-and-junk"),
])
def test_choose(accept, expected):
    f = Filter(Config(), None)
    assert f.choose(accept) == expected


def test_choose_with_an_operator_order():
    f = Filter(Config(algorithms=("gzip", "br")), None)
    assert f.choose(b"br, gzip, zstd") == "gzip"


@pytest.mark.parametrize("types,content_type,ok", [
    pytest.param(Config().types, b"text/html; charset=utf-8", True, id="text-star"),
    pytest.param(Config().types, b"Application/JSON", True, id="case"),
    pytest.param(Config().types, b"application/problem+json", True, id="plus-json"),
    pytest.param(Config().types, b"image/png", False, id="png"),
    pytest.param(("*",), b"image/png", True, id="any"),
    pytest.param(Config().types, None, False, id="no-type"),
])
def test_types(types, content_type, ok):
    assert Filter(Config(types=types, min_length=Size(0)), None)._type_ok(content_type) is ok


@pytest.mark.parametrize("encoder,decode", [
    pytest.param(lambda: _Gzip(5), lambda b: zlib.decompress(b, 31), id="gzip"),
    pytest.param(lambda: _Brotli(4), brotli.decompress, id="br"),
    pytest.param(lambda: _Zstd(zstandard.ZstdCompressor(level=3)),
                 lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b), id="zstd"),
])
def test_encoders_stream_and_each_chunk_is_decodable_on_arrival(encoder, decode):
    enc = encoder()
    parts = [b"chunk %d " % i * 300 for i in range(20)]
    out = b""
    for i, part in enumerate(parts):
        out += enc.feed(part)
        if i == 0 and decode is not brotli.decompress:
            # flushed: a streaming decoder already has the whole first chunk
            first = (zlib.decompressobj(31).decompress(out) if enc.NAME == b"gzip"
                     else zstandard.ZstdDecompressor().decompressobj().decompress(out))
            assert first == parts[0]
    out += enc.finish()
    assert decode(out) == b"".join(parts)


def test_parse_qlist_and_vary():
    assert parse_qlist(b"gzip;q=0.5, BR, zstd;q=x") == {b"gzip": 0.5, b"br": 1.0, b"zstd": 0.0}
    headers = [(b"Vary", b"Origin")]
    add_vary(headers, b"Accept-Encoding")
    add_vary(headers, b"accept-encoding")
    assert headers == [(b"Vary", b"Origin"), (b"Vary", b"Accept-Encoding")]
    star = [(b"Vary", b"*")]
    add_vary(star, b"Origin")
    assert star == [(b"Vary", b"*")]
