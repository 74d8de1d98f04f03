"""The admin API: a small JSON-over-HTTP server in the supervisor, on its own listener.

Endpoints: ``GET /status``, ``GET /routes``, ``GET /upstreams``, ``GET /config`` (secrets
redacted), ``GET /stats`` (what the dashboard polls), ``GET /metrics`` (Prometheus text),
``POST /reload``, ``POST /cache/purge``, and the live status page ``GET /dashboard``
(engine/control/dashboard/). It is the control plane: the stdlib threaded HTTP server is
enough, and it never touches the workers' event loops. Live figures (connections, pools,
counters) come from the snapshots the workers write to the run directory about once a second,
summed here; a cache purge is published there too, and the workers are signalled
(engine/control/purge.py).

When ``admin.token`` is set every request needs ``Authorization: Bearer <token>``; the config
refuses a non-loopback ``admin.listen`` without one.
"""

import dataclasses
import hmac
import os
import re
import socket
import threading
import time
import traceback
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, urlunsplit

import orjson

from engine.control import dashboard
from engine.control.config import parse_listen
from engine.chain.schema import Duration, Size
from engine.errors import CATALOG
from engine.upstream.health import STATE_NAMES as CIRCUIT_STATES

REDACTED = "<redacted>"
_SECRET_RE = re.compile(r"(token|secret|password|passwd|credentials?|api[_-]?keys?|private[_-]?key"
                        r"|authorization|cookie)$", re.IGNORECASE)
RELOAD_WAIT = 10.0  # POST /reload waits this long for every worker to apply the new config
PURGE_WAIT = 5.0  # POST /cache/purge waits this long for every worker's answer
PURGE_KINDS = ("url", "prefix", "tag")
_NO_SUPERVISOR_REPLY = 30.0


def config_json(obj, redact: bool = True):
    """A config value as plain JSON data: durations in seconds, sizes in bytes, tables as
    objects; secret-looking keys (and header names such as Authorization) redacted."""
    if dataclasses.is_dataclass(obj):
        out = {}
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name == "sections":
                for name, section in value:
                    out[name] = config_json(section, redact)
            elif redact and value is not None and _SECRET_RE.search(f.name):
                out[f.name] = REDACTED
            elif _is_table(hints[f.name]):
                # The schema keeps a table as (key, value) pairs, hashable like the rest.
                out[f.name] = None if value is None else {
                    k: REDACTED if redact and _SECRET_RE.search(k) else config_json(v, redact)
                    for k, v in value}
            else:
                out[f.name] = config_json(value, redact)
        return out
    if isinstance(obj, tuple):
        return [config_json(v, redact) for v in obj]
    if type(obj) is str:
        return _redact_userinfo(obj) if redact and "@" in obj else obj
    # Before the subclasses: orjson refuses a float subclass (Duration) outright.
    if isinstance(obj, bool) or obj is None or type(obj) in (int, float):
        return obj
    if isinstance(obj, Duration):
        return float(obj)
    if isinstance(obj, Size):
        return int(obj)
    raise TypeError(f"config value of type {type(obj).__name__} has no JSON form")


def _is_table(tp) -> bool:
    """``dict[str, str]``, alone or in a union with None."""
    return any(typing.get_origin(t) is dict for t in (tp, *typing.get_args(tp)))


def _redact_userinfo(value: str) -> str:
    """A URL's password (``redis://user:password@host``) redacted; other strings as they are."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if not parts.scheme or password is None:
        return value
    user = parts.username or ""
    netloc = f"{user}:{REDACTED}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


class AdminServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, supervisor, listen: str, sock: socket.socket | None = None):
        """``sock``: a listening socket to serve on instead of binding one (handed over by
        the supervisor this one upgrades, engine/control/upgrade.py)."""
        host, port = parse_listen(listen)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.supervisor = supervisor
        self.thread = None
        super().__init__((host, port), AdminHandler, bind_and_activate=sock is None)
        if sock is not None:
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
        self.host, self.port = self.server_address[:2]

    def start(self) -> None:
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="edgeproxy-admin", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.shutdown()
        self.server_close()


class AdminHandler(BaseHTTPRequestHandler):
    server_version = "edgeproxy-admin"
    protocol_version = "HTTP/1.1"
    timeout = 10  # a client that stalls mid-request frees its thread

    ROUTES = {
        "/status": ("GET", "status"),
        "/routes": ("GET", "routes"),
        "/upstreams": ("GET", "upstreams"),
        "/config": ("GET", "config"),
        "/metrics": ("GET", "metrics"),
        "/stats": ("GET", "stats"),
        "/reload": ("POST", "reload"),
        "/cache/purge": ("POST", "cache_purge"),
    }

    def log_message(self, format, *args):
        pass  # no stderr writes from admin threads (the supervisor forks; see supervisor.py)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        self.request_id = os.urandom(16).hex()  # as the data plane's: 32 hex digits
        length = self.headers.get("Content-Length")
        self.body = b""
        if length and length.isdigit() and int(length) <= 65536:
            self.body = self.rfile.read(int(length))  # (only POST /cache/purge reads it)
        elif length:
            self.close_connection = True
        sup = self.server.supervisor
        path = self.path.split("?", 1)[0]
        if method in ("GET", "HEAD") and path in dashboard.ASSETS:
            # The page's own files hold no data, so they need no token: the page asks for
            # one, and every JSON request it makes carries it.
            body, content_type = dashboard.asset(path)
            self._send(200, body, content_type, dashboard.HEADERS)
            return
        token = sup.cfg.admin.token
        if token and not self._authorized(token):
            self._error(401, "unauthorized", "this admin API needs Authorization: Bearer <token>",
                        [("WWW-Authenticate", 'Bearer realm="edgeproxy-admin"')])
            return
        route = self.ROUTES.get(path)
        if route is None:
            self._error(404, "not_found", f"no admin endpoint {path}; try "
                                          + ", ".join(sorted(self.ROUTES)))
            return
        allowed, name = route
        if method != allowed:
            self._error(405, "method_not_allowed", f"{path} takes {allowed}",
                        [("Allow", allowed)])
            return
        try:
            getattr(self, "handle_" + name)(sup)
        except ConnectionError:
            self.close_connection = True  # the client left mid-answer: nobody to tell
        except Exception:  # the admin API reports; it must not kill the thread quietly
            # The client gets the catalog's words and an id to quote; the exception text,
            # which may name files and internals, goes with its traceback to the log only.
            sup.log_soon(f"admin: {method} {path} failed (request_id {self.request_id}):\n"
                         + traceback.format_exc().rstrip())
            self._error(500, "internal_error", CATALOG["internal_error"][1])

    def _authorized(self, token: str) -> bool:
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                   token.encode())

    def _send(self, status: int, body: bytes, content_type: str, headers=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Request-ID", self.request_id)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: int = 200) -> None:
        self._send(status, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n",
                   "application/json")

    def _error(self, status: int, code: str, message: str, headers=(), **extra) -> None:
        body = orjson.dumps({"error": {"status": status, "code": code, "message": message,
                                       "request_id": self.request_id, **extra}},
                            option=orjson.OPT_INDENT_2) + b"\n"
        self._send(status, body, "application/json", headers)

    # -- endpoints -----------------------------------------------------------------------

    def handle_status(self, sup) -> None:
        self._json(sup.status())

    def handle_routes(self, sup) -> None:
        totals, _ = sup.totals()
        counts = totals.requests_by_route()
        out = []
        for route in sup.cfg.routes:
            item = config_json(route)
            item["filters"] = [name for name, _ in route.sections]
            item["requests"] = counts.get(route.name, 0)
            out.append(item)
        self._json({"generation": sup.generation, "routes": out,
                    "unmatched_requests": counts.get("", 0)})

    def handle_upstreams(self, sup) -> None:
        totals, _ = sup.totals()
        out = []
        for up in sup.cfg.upstreams:
            item = config_json(up)
            servers = []
            for s in up.servers:
                active, idle, available, circuit, requests, failures, opened = \
                    totals.servers.get((up.name, s.url), (0, 0, 0, 0, 0, 0, 0))
                servers.append({"url": s.url, "weight": s.weight, "backup": s.backup,
                                "down": s.down, "active": active, "idle": idle,
                                "available_in_workers": available,
                                "circuit": CIRCUIT_STATES[circuit], "requests": requests,
                                "failures": failures, "connections_opened": opened})
            item["servers"] = servers
            retries, circuit = totals.upstreams.get(up.name, (0, 0))
            item["retries"] = retries
            item["circuit"] = CIRCUIT_STATES[circuit]
            out.append(item)
        self._json({"generation": sup.generation, "upstreams": out})

    def handle_stats(self, sup) -> None:
        totals, _ = sup.totals()
        self._json(dashboard.stats(totals, time.time()))

    def handle_config(self, sup) -> None:
        self._json({"generation": sup.generation, "config_file": sup.config_path,
                    "config": config_json(sup.cfg)})

    def handle_metrics(self, sup) -> None:
        from engine.control.metrics import render

        totals, _ = sup.totals()
        self._send(200, render(totals, sup.control_figures()).encode(),
                   "text/plain; version=0.0.4; charset=utf-8")

    def handle_reload(self, sup) -> None:
        result = sup.request_reload("admin", _NO_SUPERVISOR_REPLY)
        if result is None:
            self._error(503, "unavailable", "the supervisor did not take the reload (stopping?)")
            return
        if result["result"] == "failed":
            self._error(422, "invalid_config",
                        f"the config was not applied; still serving generation "
                        f"{result['generation']}", errors=result["errors"])
            return
        if result["result"] == "ok":
            start = time.monotonic()
            pending = sup.wait_applied(result["generation"], RELOAD_WAIT)
            result["workers_pending"] = pending
            result["applied_ms"] = round((time.monotonic() - start) * 1000 + result[
                "duration_ms"], 3)
        self._json(result)

    def handle_cache_purge(self, sup) -> None:
        # {"url": "..."}, {"prefix": "..."} or {"tag": "..."}: exactly one.
        try:
            request = orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError as exc:
            self._error(400, "bad_request", f"the body is not JSON: {exc}")
            return
        given = [k for k in PURGE_KINDS if isinstance(request, dict) and k in request]
        if len(given) != 1 or len(request) != 1:
            self._error(400, "bad_request", 'send a JSON object with exactly one of "url", '
                                            '"prefix" or "tag", e.g. {"url": '
                                            '"https://example.com/a?b=1"}')
            return
        kind = given[0]
        value = request[kind]
        if not isinstance(value, str) or not value or len(value) > 8192:
            self._error(400, "bad_request", f'"{kind}" must be a non-empty string')
            return
        result = sup.purge_cache(kind, value, PURGE_WAIT)
        self._json({kind: value, **result})
