"""Build: the Cython extensions (ext/ and the data plane's hot path) are listed explicitly,
one module per source.

EDGEPROXY_ANNOTATE=1 writes Cython's HTML annotation next to each .pyx;
EDGEPROXY_LINETRACE=1 compiles with line tracing (for coverage/profilers).
EDGEPROXY_ONLY=ext.ratelimit,... builds just those modules (while another one is mid-edit).
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

LINETRACE = os.environ.get("EDGEPROXY_LINETRACE") == "1"

# A module's name is its path (STYLE.md rule 1): ext/router.pyx -> ext.router.
EXT_MODULES = [
    "ext.lru",
    "ext.router",
    "ext.ratelimit",
    "ext.hashring",
    # The data plane's hot path: cdef classes that call each other at the C level, listed
    # in import order (wire -> upstream -> chain -> http, DESIGN.md).
    "engine.wire.h1",
    "engine.wire.message",
    "engine.wire.epoll",
    "engine.upstream.pool",
    "engine.upstream.health",
    "engine.upstream.balancer",
    "engine.upstream.upstream",
    "engine.upstream.connection",
    "engine.upstream.call",
    "engine.chain.context",
    "engine.http.stats",
    "engine.http.protocol",
    "engine.http.h2",
    # Filters' compiled hooks (engine/filters/*.pyx), bound by their filter modules.
    "engine.filters.header_edit",
    "engine.filters.ratelimit_hooks",
]

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
    "linetrace": LINETRACE,
}

ONLY = [m for m in os.environ.get("EDGEPROXY_ONLY", "").split(",") if m]

extensions = [
    Extension(
        name,
        [name.replace(".", "/") + ".pyx"],
        # (-O3 over -O2: about 1 % fewer instructions per request on the data plane,
        # bench/bench_instructions.py, and no loss in paired wrk runs)
        extra_compile_args=["-O3"],
        define_macros=[("CYTHON_TRACE_NOGIL", "1")] if LINETRACE else [],
    )
    for name in EXT_MODULES
    if not ONLY or name in ONLY
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        annotate=os.environ.get("EDGEPROXY_ANNOTATE") == "1",
    ),
)
