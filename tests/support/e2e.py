"""Shared pieces of the HTTP end-to-end suites: config builders, response assertions, bounded
waits and a process check."""

import time

from tests.support.client import Conn, Response


def wait_until(cond, timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` seconds pass; whether it came true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def wait_for(check, timeout: float, what: str):
    """Poll ``check`` until it returns something true, which it returns; after ``timeout``
    seconds, an error naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (no such process, or a zombie: proc(5) state)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def servers_config(servers: list[str], upstream: str = "", extra: str = "") -> str:
    """One upstream "app" of ``servers`` (TOML strings or inline tables) behind a catch-all
    route "all"; ``upstream`` lines go in the upstream table, ``extra`` after the route."""
    return f"""
[server]
access_log = "off"

[[upstreams]]
name = "app"
servers = [{", ".join(servers)}]
{upstream}

[[routes]]
name = "all"
upstream = "app"
{extra}
"""


def proxy_config(origin_url: str, *, server: str = "", upstream: str = "", route: str = "",
                 paths: str = '["/*"]', extra: str = "") -> str:
    """One upstream "app" (the origin) behind one catch-all route "all".

    ``server``, ``upstream`` and ``route`` are TOML lines added to those tables; ``extra``
    is appended (more routes, filter sections).
    """
    return f"""
[server]
access_log = "off"
{server}

[[upstreams]]
name = "app"
servers = ["{origin_url}"]
{upstream}

[[routes]]
name = "all"
paths = {paths}
upstream = "app"
{route}
{extra}
"""


def assert_error(r: Response, status: int, code: str | None = None) -> dict:
    """The proxy's own error: JSON body whose request_id equals the X-Request-ID header."""
    assert r.status == status, (r.status, r.body)
    assert r.header(b"content-type") == b"application/json"
    err = r.json()["error"]
    assert err["status"] == status
    if code is not None:
        assert err["code"] == code, err
    assert err["message"]
    rid = r.header(b"x-request-id")
    assert isinstance(rid, bytes) and rid, r.headers
    assert err["request_id"] == rid.decode()
    return err


def send_and_read(port: int, data: bytes, head_only: bool = False,
                  timeout: float = 5.0) -> tuple[Response, bool]:
    """Send raw bytes, read one response, then report whether the proxy closed the
    connection (within a bounded wait)."""
    with Conn(port, timeout) as c:
        c.send(data)
        r = c.response(head_only=head_only)
        return r, c.closed(2.0)


def read_response_or_reset(c: Conn) -> Response | None:
    """One response, or None when the connection died before a response head arrived."""
    try:
        return c.response()
    except ConnectionError:
        return None


def mostly(good, bad):
    """A hypothesis strategy drawing from ``good`` three times in four, else from ``bad``:
    inputs that mostly pass a check, each with a chance of one part on its wrong side."""
    return good | good | good | bad
