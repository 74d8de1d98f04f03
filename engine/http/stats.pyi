METHODS: tuple[str, ...]
STATUSES: tuple[str, ...]
BUCKETS: tuple[float, ...]

class RouteStats:
    duration_sum: float
    upstream_sum: float
    bytes_in: int
    bytes_out: int
    @property
    def total(self) -> int: ...
    def observe(self, method: bytes, status: int, bytes_in: int, bytes_out: int,
                took: float, upstream_took: float) -> None: ...
    def by_status(self) -> list[int]: ...
    def to_dict(self) -> dict: ...
