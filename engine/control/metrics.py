"""Metrics: cheap counters in each worker, summed across workers by the admin API, exposed in
the Prometheus text format (version 0.0.4).

A worker counts each finished request at C level in its routes' ``RouteStats``
(engine/http/stats.pyx: fixed arrays of counters and histogram buckets).
About once a second the worker writes a snapshot of its counters to ``worker-<pid>.json`` in the
supervisor's run directory; the admin API reads those files and sums them. When a worker exits,
the supervisor folds its last snapshot into a ``retired`` total so counters never go backwards
across worker restarts and listener reloads (increments in the last second of a crashed worker
are lost).

Not here yet, left to the issues that build those features: rate-limit rejections, idempotency
replays and conflicts, retries, upstream health and circuit-breaker state.
"""

import glob
import os
import time

import orjson

from engine.http.stats import BUCKETS, METHODS, STATUSES

STATS_FILE = "worker-{pid}.json"
N_STATUS = len(STATUSES)


def worker_snapshot(worker) -> dict:
    """What one worker reports: counters by route, gauges, and its config generation."""
    servers = []
    upstreams = {}
    now = worker.now
    for up in worker.runtime.upstreams.values():
        for s in up.servers:
            h = s.health
            servers.append((up.name, s.url, s.pool.active, len(s.pool.idle),
                            int(s.available(now)), h.circuit.state if h.circuit else 0,
                            h.total_requests, h.total_failures, s.pool.opened))
        upstreams[up.name] = (up.budget.total, up.circuit.state if up.circuit else 0)
    redis = worker.runtime.shared.redis
    return {
        "pid": os.getpid(),
        "time": time.time(),
        "generation": worker.generation,
        "draining": worker.draining,
        "connections": len(worker.conns),
        "routes": {name or "": st.to_dict() for name, st in worker.route_stats.items()},
        "servers": servers,
        "upstreams": upstreams,
        "redis_breaker": redis.breaker.state if redis is not None else None,
        "events": [[family, route, counts]
                   for family, route, counts in worker.runtime.shared.counters()],
    }


def write_json(path: str, data) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(data))
    os.replace(tmp, path)


def read_snapshot(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError):
        return None  # removed while we looked: its counters are in ``retired`` now


def read_snapshots(rundir: str) -> dict[int, dict]:
    """pid -> the latest snapshot of every worker that wrote one."""
    out = {}
    for path in glob.glob(os.path.join(rundir, "worker-*.json")):
        snap = read_snapshot(path)
        if snap is not None:
            out[snap["pid"]] = snap
    return out


# Circuit states as exported (0 closed, 1 open, 2 half-open), worst first when workers differ.
_SEVERITY = {0: 0, 2: 1, 1: 2}


def _worse(a: int, b: int) -> int:
    return a if _SEVERITY[a] >= _SEVERITY[b] else b


class Totals:
    """Counters summed over snapshots (gauges are summed only over live workers)."""

    COUNTERS = ("requests", "duration", "duration_sum", "upstream", "upstream_sum",
                "bytes_in", "bytes_out")

    def __init__(self):
        self.routes: dict[str, dict] = {}
        self.connections = 0
        # (upstream, url) -> [active, idle, workers seeing it available, worst circuit
        # state, requests, failures, connections opened]
        self.servers: dict[tuple[str, str], list[int]] = {}
        self.upstreams: dict[str, list[int]] = {}  # name -> [retries, worst circuit state]
        self.events: dict[tuple[str, str, str], int] = {}  # (family, route, event) -> n
        self.redis_breaker = None  # worst state over workers; None: no worker uses Redis
        self.redis_breaker_open = 0  # workers whose Redis breaker is open

    def add_counters(self, snap: dict) -> None:
        for family, route, counts in snap.get("events", ()):
            for event, n in counts.items():
                key = (family, route, event)
                self.events[key] = self.events.get(key, 0) + n
        for name, st in snap["routes"].items():
            mine = self.routes.get(name)
            if mine is None:
                self.routes[name] = {k: list(v) if isinstance(v, list) else v
                                     for k, v in st.items()}
                continue
            for k in self.COUNTERS:
                v = st[k]
                if isinstance(v, list):
                    acc = mine[k]
                    for i, x in enumerate(v):
                        acc[i] += x
                else:
                    mine[k] += v

    def add_gauges(self, snap: dict) -> None:
        self.connections += snap["connections"]
        for upstream, url, active, idle, available, circuit, requests, failures, opened in \
                snap["servers"]:
            acc = self.servers.setdefault((upstream, url), [0, 0, 0, 0, 0, 0, 0])
            acc[0] += active
            acc[1] += idle
            acc[2] += available
            acc[3] = _worse(acc[3], circuit)
            acc[4] += requests
            acc[5] += failures
            acc[6] += opened
        breaker = snap.get("redis_breaker")
        if breaker is not None:
            self.redis_breaker = _worse(self.redis_breaker or 0, breaker)
            self.redis_breaker_open += breaker == 1
        for name, (retries, circuit) in snap.get("upstreams", {}).items():
            acc = self.upstreams.setdefault(name, [0, 0])
            acc[0] += retries
            acc[1] = _worse(acc[1], circuit)

    def add(self, totals: "Totals") -> None:
        self.add_counters({"routes": totals.routes, "events": [
            [family, route, {event: n}] for (family, route, event), n in totals.events.items()]})

    def requests_by_route(self) -> dict[str, int]:
        return {name: sum(st["requests"]) for name, st in self.routes.items()}


def _event_families() -> dict:
    """Filter event counters (Shared.counter), as each filter module declares them in its
    METRICS: family -> (metric, label of the event, help[, "gauge"])."""
    from engine.filters import FILTERS
    out = {}
    for module in FILTERS.values():
        out.update(getattr(module, "METRICS", {}))
    return out


# -- Prometheus text exposition format 0.0.4 --------------------------------------------------

def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels) + "}"


def _value(v) -> str:
    if isinstance(v, int):
        return str(v)
    if v == float("inf"):
        return "+Inf"
    return repr(float(v))


class Exposition:
    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, kind: str, doc: str) -> None:
        self.lines.append(f"# HELP {name} {doc}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value, labels=()) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_value(value)}")

    def histogram(self, name: str, labels, counts: list[int], total: float) -> None:
        running = 0
        for bound, n in zip(BUCKETS, counts, strict=False):
            running += n
            self.sample(f"{name}_bucket", running, (*labels, ("le", _value(bound))))
        running += counts[-1]
        self.sample(f"{name}_bucket", running, (*labels, ("le", "+Inf")))
        self.sample(f"{name}_sum", total, labels)
        self.sample(f"{name}_count", running, labels)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(totals: Totals, control: dict) -> str:
    """The /metrics page: ``totals`` from the workers, ``control`` from the supervisor."""
    out = Exposition()
    out.family("edgeproxy_build_info", "gauge", "Always 1; the version is a label.")
    out.sample("edgeproxy_build_info", 1, (("version", control["version"]),))
    out.family("edgeproxy_start_time_seconds", "gauge", "When the supervisor started (Unix).")
    out.sample("edgeproxy_start_time_seconds", control["started"])

    routes = sorted(totals.routes.items())
    out.family("edgeproxy_requests_total", "counter",
               'Finished requests by route (route="" when none matched), method and status '
               "class.")
    for name, st in routes:
        counts = st["requests"]
        for mi, method in enumerate(METHODS):
            for si, status in enumerate(STATUSES):
                n = counts[mi * N_STATUS + si]
                if n:
                    out.sample("edgeproxy_requests_total", n,
                               (("route", name), ("method", method), ("status", status)))
    out.family("edgeproxy_request_duration_seconds", "histogram",
               "Time from the end of the request head to the end of the response.")
    for name, st in routes:
        out.histogram("edgeproxy_request_duration_seconds", (("route", name),),
                      st["duration"], st["duration_sum"])
    out.family("edgeproxy_upstream_duration_seconds", "histogram",
               "Time from sending the request upstream to the end of the response.")
    for name, st in routes:
        if sum(st["upstream"]):
            out.histogram("edgeproxy_upstream_duration_seconds", (("route", name),),
                          st["upstream"], st["upstream_sum"])
    out.family("edgeproxy_request_body_bytes_total", "counter",
               "Request body bytes received from clients.")
    for name, st in routes:
        out.sample("edgeproxy_request_body_bytes_total", st["bytes_in"], (("route", name),))
    out.family("edgeproxy_response_body_bytes_total", "counter",
               "Response body bytes sent to clients.")
    for name, st in routes:
        out.sample("edgeproxy_response_body_bytes_total", st["bytes_out"], (("route", name),))

    out.family("edgeproxy_active_connections", "gauge", "Open client connections.")
    out.sample("edgeproxy_active_connections", totals.connections)
    out.family("edgeproxy_upstream_server_active_connections", "gauge",
               "Upstream connections carrying a request now.")
    servers = sorted(totals.servers.items())
    for (upstream, url), (active, *_) in servers:
        out.sample("edgeproxy_upstream_server_active_connections", active,
                   (("upstream", upstream), ("server", url)))
    out.family("edgeproxy_upstream_server_idle_connections", "gauge",
               "Idle keep-alive connections pooled for the server.")
    for (upstream, url), (_, idle, *_) in servers:
        out.sample("edgeproxy_upstream_server_idle_connections", idle,
                   (("upstream", upstream), ("server", url)))
    out.family("edgeproxy_upstream_server_available", "gauge",
               "Workers that would send to the server now (not failed, unhealthy, ejected "
               "or circuit-open).")
    for (upstream, url), acc in servers:
        out.sample("edgeproxy_upstream_server_available", acc[2],
                   (("upstream", upstream), ("server", url)))
    out.family("edgeproxy_upstream_server_circuit_state", "gauge",
               "Worst circuit state over workers: 0 closed, 1 open, 2 half-open.")
    for (upstream, url), acc in servers:
        out.sample("edgeproxy_upstream_server_circuit_state", acc[3],
                   (("upstream", upstream), ("server", url)))
    out.family("edgeproxy_upstream_server_requests_total", "counter",
               "Attempts sent to the server by live workers (resets when a worker restarts).")
    for (upstream, url), acc in servers:
        out.sample("edgeproxy_upstream_server_requests_total", acc[4],
                   (("upstream", upstream), ("server", url)))
    out.family("edgeproxy_upstream_server_failures_total", "counter",
               "Attempts that failed (what fail_on counts), by live workers.")
    for (upstream, url), acc in servers:
        out.sample("edgeproxy_upstream_server_failures_total", acc[5],
                   (("upstream", upstream), ("server", url)))
    out.family("edgeproxy_upstream_server_connections_opened_total", "counter",
               "Upstream connections made to the server, by live workers. Far fewer than "
               "requests_total when the keep-alive pool is large enough (docs/tuning.md).")
    for (upstream, url), acc in servers:
        out.sample("edgeproxy_upstream_server_connections_opened_total", acc[6],
                   (("upstream", upstream), ("server", url)))
    upstreams = sorted(totals.upstreams.items())
    out.family("edgeproxy_upstream_retries_total", "counter",
               "Requests sent to a next server after a failure, by live workers.")
    for name, (retries, _) in upstreams:
        out.sample("edgeproxy_upstream_retries_total", retries, (("upstream", name),))
    out.family("edgeproxy_upstream_circuit_state", "gauge",
               "Worst state of the upstream's own circuit: 0 closed, 1 open, 2 half-open.")
    for name, (_, circuit) in upstreams:
        out.sample("edgeproxy_upstream_circuit_state", circuit, (("upstream", name),))

    for family, (metric, label, help_text, *kind) in _event_families().items():
        # A family is a counter unless its METRICS entry says "gauge" (a level each worker
        # sets, summed over workers like the counters).
        out.family(metric, kind[0] if kind else "counter", help_text)
        for (fam, route, event), n in sorted(totals.events.items()):
            if fam == family:
                out.sample(metric, n, (("route", route), (label, event)))

    if totals.redis_breaker is not None:
        out.family("edgeproxy_redis_breaker_state", "gauge",
                   "Worst state of the workers' Redis breakers: 0 closed, 1 open (features "
                   "apply on_store_error), 2 half-open.")
        out.sample("edgeproxy_redis_breaker_state", totals.redis_breaker)
        out.family("edgeproxy_redis_breaker_open_workers", "gauge",
                   "Workers whose Redis breaker is open.")
        out.sample("edgeproxy_redis_breaker_open_workers", totals.redis_breaker_open)

    out.family("edgeproxy_workers", "gauge", "Worker processes serving (draining not counted).")
    out.sample("edgeproxy_workers", control["workers"])
    out.family("edgeproxy_worker_restarts_total", "counter",
               "Workers restarted after exiting unexpectedly.")
    out.sample("edgeproxy_worker_restarts_total", control["worker_restarts"])
    out.family("edgeproxy_config_reloads_total", "counter",
               "Config reloads by result (unchanged: valid but nothing to apply).")
    for result in ("ok", "failed", "unchanged"):
        out.sample("edgeproxy_config_reloads_total", control["reloads"][result],
                   (("result", result),))
    out.family("edgeproxy_config_last_reload_successful", "gauge",
               "1 if the last reload attempt applied or found nothing to apply, else 0.")
    out.sample("edgeproxy_config_last_reload_successful", control["last_reload_ok"])
    out.family("edgeproxy_config_generation", "gauge",
               "Generation of the running config (1 at start, +1 per applied reload).")
    out.sample("edgeproxy_config_generation", control["generation"])
    return out.text()
