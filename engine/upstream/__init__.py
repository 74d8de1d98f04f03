"""Upstream side of the data plane: servers, keep-alive pools, connections, balancers."""

from importlib.util import find_spec as _find_spec

# These are Cython modules, with no pure-Python fallback (STYLE.md rule 7).
for _name in ("pool", "balancer", "upstream", "connection"):
    if _find_spec(f"{__name__}.{_name}") is None:
        raise ImportError(
            f"edgeproxy's Cython extensions are not built ({__name__}.{_name}); run "
            "`pip install .` or `python setup.py build_ext --inplace`")
