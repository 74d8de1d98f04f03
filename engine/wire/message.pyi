class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes | None

    def __init__(self, status: int, headers: list, body: bytes | None = b"") -> None: ...
