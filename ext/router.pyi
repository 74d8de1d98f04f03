from collections.abc import Iterable

MAX_CACHED_PATH: int

class Router:
    """Radix-trie router over host + path segments; see the module docstring for precedence."""

    @property
    def cache_size(self) -> int: ...
    @property
    def cache_hits(self) -> int: ...
    @property
    def cache_misses(self) -> int: ...
    def __init__(self, cache_size: int = 4096) -> None: ...
    def add(
        self,
        route: object,
        hosts: list[str] | None,
        path: str,
        methods: frozenset[bytes] | Iterable[bytes] | None,
    ) -> None: ...
    def match(
        self, method: bytes, host: str, path: str
    ) -> tuple[object, dict[str, str] | None] | tuple[None, tuple[bytes, ...] | None]: ...
    def __len__(self) -> int: ...
