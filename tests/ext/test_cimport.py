"""ext.router cimports ext.lru.LruCache: the two extension modules link at the C level."""

import pathlib
import subprocess
import sys

from ext.router import Router

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_router_declares_the_cimport():
    pxd = (ROOT / "ext" / "router.pxd").read_text()
    assert "from ext.lru cimport LruCache" in pxd
    assert "cdef LruCache cache" in pxd


def test_lru_pxd_exposes_the_c_api():
    pxd = (ROOT / "ext" / "lru.pxd").read_text()
    assert "cdef class LruCache" in pxd
    for decl in ("cpdef object get(", "cpdef set(", "cpdef object pop(", "cpdef clear("):
        assert decl in pxd


def test_importing_router_loads_lru_type():
    # A cimported extension type is imported when the cimporting module initialises, even
    # though nothing in Python code imports ext.lru.
    code = "import sys, ext.router; print('ext.lru' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True"


def test_router_cache_counters_move():
    router = Router(cache_size=16)
    router.add("r", None, "/a/{id}", None)
    for _ in range(5):
        assert router.match(b"GET", "h", "/a/1") == ("r", {"id": "1"})
    assert (router.cache_hits, router.cache_misses) == (4, 1)
