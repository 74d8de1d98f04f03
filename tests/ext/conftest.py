import pytest

try:
    import ext.lru  # noqa: F401
    import ext.hashring  # noqa: F401
    import ext.ratelimit  # noqa: F401
    import ext.router  # noqa: F401
except ImportError as exc:  # STYLE.md rule 7: no fallback, one line naming the build command
    raise pytest.UsageError(
        f"ext/ is not built ({exc}); run: python setup.py build_ext --inplace") from None
