"""The HTTP/1.1 codec: the client protocol (parse, validate, pipeline, flow control, protocol
errors, the answer's framing) and per-route request counters."""

from importlib.util import find_spec as _find_spec

# Cython modules, with no pure-Python fallback (STYLE.md rule 7).
for _name in ("protocol", "stats"):
    if _find_spec(f"{__name__}.{_name}") is None:
        raise ImportError(
            f"edgeproxy's Cython extensions are not built ({__name__}.{_name}); run "
            "`pip install .` or `python setup.py build_ext --inplace`")
