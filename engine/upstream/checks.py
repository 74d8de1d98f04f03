"""Periodic upstream work on a worker's loop: active health checks and outlier ejection.

Each worker checks for itself (like Kong's per-node checks): no shared state to keep coherent,
and a worker that cannot reach a server is the one that must stop sending to it. Checks use
their own short-lived connections, never the keep-alive pools traffic uses. State changes are
logged as JSON lines on stderr.
"""

import asyncio
import statistics
import sys
import time

import orjson


def log_event(event: str, **fields) -> None:
    line = orjson.dumps({"time": time.time(), "event": event, **fields},
                        option=orjson.OPT_APPEND_NEWLINE)
    try:
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def watch_upstreams(shared, upstream_cfgs, upstreams: dict) -> None:
    """Register the checkers and evaluators the upstreams' config asks for."""
    for cfg in upstream_cfgs:
        upstream = upstreams[cfg.name]
        if cfg.health_check is None:
            # (Health outlives reloads: a verdict of checks no longer configured must go.)
            for server in upstream.servers:
                server.health.healthy = True
        else:
            key = ("checker", cfg.name, cfg.health_check, tuple(s.url for s in cfg.servers))
            checker = shared.keep(key, lambda c=cfg.health_check: HealthChecker(c))
            checker.bind(upstream)
            shared.periodic.append(checker.tick)
        if cfg.outlier_detection is not None:
            key = ("outliers", cfg.name, cfg.outlier_detection)
            ejector = shared.keep(key, lambda c=cfg.outlier_detection: OutlierEjector(c))
            ejector.bind(upstream)
            shared.periodic.append(ejector.tick)


class HealthChecker:
    """GET ``path`` on every server each ``interval``; ``unhealthy_threshold`` failures in a
    row mark a server unhealthy (balancers skip it), ``healthy_threshold`` passes bring it
    back."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.upstream = None
        self.due = {}        # server URL -> next check time
        self.streak = {}     # server URL -> +n passes / -n failures in a row
        self.running = set()

    def bind(self, upstream) -> None:
        self.upstream = upstream

    def tick(self, worker, now: float) -> None:
        for server in self.upstream.servers:
            if server.down or server.url in self.running:
                continue
            if now >= self.due.get(server.url, 0.0):
                self.due[server.url] = now + self.cfg.interval
                self.running.add(server.url)
                worker.spawn(self._check(server))

    async def _check(self, server) -> None:
        try:
            ok, detail = await self.probe(server)
        finally:
            self.running.discard(server.url)
        self.result(server, ok, detail)

    async def probe(self, server) -> tuple[bool, str]:
        host = self.upstream.host_header or server.authority
        request = (b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: edgeproxy-health-check\r\n"
                   b"Connection: close\r\n\r\n" % (self.cfg.path.encode(), host))
        writer = None
        try:
            async with asyncio.timeout(self.cfg.timeout):
                reader, writer = await asyncio.open_connection(
                    server.host, server.port, ssl=server.ssl,
                    server_hostname=server.server_hostname)
                writer.write(request)
                line = await reader.readline()
        except (OSError, TimeoutError) as exc:
            return False, f"{exc.__class__.__name__}: {exc}"
        finally:
            if writer is not None:
                writer.close()
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return False, f"not an HTTP response: {line[:40]!r}"
        status = int(parts[1])
        return status in self.cfg.statuses, f"status {status}"

    def result(self, server, ok: bool, detail: str) -> None:
        health = server.health
        streak = self.streak.get(server.url, 0)
        streak = max(streak, 0) + 1 if ok else min(streak, 0) - 1
        self.streak[server.url] = streak
        if health.healthy and streak <= -self.cfg.unhealthy_threshold:
            health.healthy = False
            log_event("server_unhealthy", upstream=self.upstream.name, server=server.url,
                      detail=detail)
        elif not health.healthy and streak >= self.cfg.healthy_threshold:
            health.healthy = True
            log_event("server_healthy", upstream=self.upstream.name, server=server.url)


class OutlierEjector:
    """Every ``interval``, a server whose error rate is above ``factor`` times the median of
    its peers' (and at least ``min_error_rate``) is ejected for ``ejection_time``, at most
    ``max_ejected`` of the servers at once (at least one)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.upstream = None
        self.due = 0.0

    def bind(self, upstream) -> None:
        self.upstream = upstream

    def tick(self, worker, now: float) -> None:
        if now < self.due:
            return
        first = not self.due
        self.due = now + self.cfg.interval
        if not first:
            self.evaluate(now)

    def evaluate(self, now: float) -> list:
        cfg = self.cfg
        servers = [s for s in self.upstream.servers if not s.down]
        rates = {}
        for s in servers:
            h = s.health
            if h.requests >= cfg.min_requests:
                rates[s.url] = h.failures / h.requests
            h.requests = h.failures = 0
        ejected_now = sum(1 for s in servers if s.health.ejected_until > now)
        cap = max(1, int(cfg.max_ejected * len(servers)))
        out = []
        if len(rates) < 2:
            return out
        for s in sorted(servers, key=lambda s: -rates.get(s.url, 0.0)):
            rate = rates.get(s.url)
            if rate is None or ejected_now >= cap or s.health.ejected_until > now:
                continue
            peers = [r for url, r in rates.items() if url != s.url]
            if rate >= cfg.min_error_rate and rate > cfg.factor * statistics.median(peers):
                s.health.ejected_until = now + cfg.ejection_time
                ejected_now += 1
                out.append(s.url)
                log_event("server_ejected", upstream=self.upstream.name, server=s.url,
                          error_rate=round(rate, 3), seconds=float(cfg.ejection_time))
        return out
