"""The live status page on the admin listener: static assets shipped in this package (no build
step, no CDN) and the one JSON document they poll, ``GET /stats``.

The page asks the admin API for ``/status`` (workers, recent reloads), ``/upstreams`` (servers,
health, circuits, in-flight), ``/stats`` (per-route counters and latency histograms, filter
counters) and ``/config`` (secrets redacted); rates and latency percentiles over the last
seconds are computed in the browser from the difference of two polls, so the workers count
nothing more than they do for /metrics.
"""

from importlib import resources

from engine.http.stats import BUCKETS, METHODS, STATUSES

# path -> (file in this package, Content-Type)
ASSETS = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/style.css": ("style.css", "text/css; charset=utf-8"),
}
# The page loads only its own files and talks only to this listener; nothing may frame it.
HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


def asset(path: str) -> tuple[bytes, str] | None:
    """(body, content type) of a dashboard file, or None."""
    entry = ASSETS.get(path)
    if entry is None:
        return None
    name, content_type = entry
    return resources.files(__name__).joinpath(name).read_bytes(), content_type


def stats(totals, now: float) -> dict:
    """Per-route counters by status class and latency histograms, and filter event counters
    (rate limits, idempotency, any filter's METRICS), summed over workers."""
    n_status = len(STATUSES)
    routes = {}
    for name, st in sorted(totals.routes.items()):
        by_status = [0] * n_status
        counts = st["requests"]
        for mi in range(len(METHODS)):
            for si in range(n_status):
                by_status[si] += counts[mi * n_status + si]
        routes[name] = {
            "requests": sum(by_status),
            "status": dict(zip(STATUSES, by_status, strict=True)),
            "duration": st["duration"],  # counts per bucket of ``buckets``, then +Inf
            "duration_sum": st["duration_sum"],
            "bytes_in": st["bytes_in"],
            "bytes_out": st["bytes_out"],
        }
    events = [{"family": family, "route": route, "event": event, "count": n}
              for (family, route, event), n in sorted(totals.events.items())]
    return {"time": now, "buckets": list(BUCKETS), "routes": routes, "events": events,
            "connections": totals.connections}
