"""Hot reload under continuous load: the long version of tests/e2e/test_reload_under_load.py.

    python bench/reload_under_load.py [--duration S] [--reloads N] [--connections C]
                                      [--workers W] [--vary-workers]

Two echo origins (the demo origins, in their own process) sit behind edgeproxy. wrk (or, when
wrk is not installed, a threaded keep-alive client in this process) loads a route for
``--duration`` seconds while ``--reloads`` reloads, spread evenly, alternate between two
configs that change routes, upstream weights and body limits (POST /reload, which answers once
every worker runs the new config). Reported: requests, errors by kind (non-2xx, connect, read,
write, timeout), reload latency (validate + compile + every worker swapped), and whether the
proxy's own /metrics agree with the client's count. ``--vary-workers`` also alternates the
worker count between W and W+1, so every reload is a listener change (new workers start, the
old ones drain). Exit status 1 on any error.
Loopback only; every process it starts is killed at exit and its temp dir removed.
"""

import argparse
import atexit
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rig import parse_wrk  # noqa: E402  (bench/ is scripts, not a package)

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def config(port: int, admin: int, origins: list[int], workers: int, flavour: int) -> str:
    weights = (1, 1) if flavour == 0 else (3, 1)
    extra = "v1" if flavour == 0 else "v2"
    return f"""
[server]
listen = "{HOST}:{port}"
workers = {workers}
access_log = "off"
watch_config = false
keepalive_requests = 1000000000
max_body_size = "{'1m' if flavour == 0 else '2m'}"

[admin]
listen = "{HOST}:{admin}"

[[upstreams]]
name = "app"
servers = [{{ url = "http://{HOST}:{origins[0]}", weight = {weights[0]} }},
           {{ url = "http://{HOST}:{origins[1]}", weight = {weights[1]} }}]
keepalive = 64
keepalive_requests = 1000000000

[[routes]]
name = "api"
paths = ["/api/*"]
upstream = "app"
strip_prefix = true
max_body_size = "{'64k' if flavour == 0 else '128k'}"

[[routes]]
name = "{extra}"
paths = ["/{extra}/*"]
[routes.static]
body = "{extra}"
"""


class Processes:
    def __init__(self):
        self.procs = []
        self.tmp = tempfile.mkdtemp(prefix="edgeproxy-reload-bench-")
        atexit.register(self.stop)

    def start(self, argv, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.procs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {HOST}:{port} after {timeout} s")


def admin_call(port: int, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def python_load(port: int, connections: int, duration: float) -> dict:
    """Keep-alive GETs from threads, when wrk is missing: counts responses and errors."""
    stop = time.monotonic() + duration
    result = {"requests": 0, "non2xx": 0, "socket_errors": {}}
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        n = bad = 0
        errors: dict = {}
        while time.monotonic() < stop:
            try:
                conn.request("GET", "/api/x")
                resp = conn.getresponse()
                resp.read()
                n += 1
                bad += resp.status >= 400
            except (OSError, http.client.HTTPException) as exc:
                kind = "read" if isinstance(exc, (ConnectionResetError,
                                                  http.client.RemoteDisconnected)) else "other"
                errors[kind] = errors.get(kind, 0) + 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=5)
        conn.close()
        with lock:
            result["requests"] += n
            result["non2xx"] += bad
            for k, v in errors.items():
                result["socket_errors"][k] = result["socket_errors"].get(k, 0) + v

    threads = [threading.Thread(target=client) for _ in range(min(connections, 16))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


def metrics_2xx(admin: int) -> int:
    _, body = admin_call(admin, "GET", "/metrics")
    total = 0
    for line in body.decode().splitlines():
        if line.startswith("edgeproxy_requests_total{") and 'route="api"' in line \
                and 'status="2xx"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--reloads", type=int, default=100)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--vary-workers", action="store_true",
                    help="alternate workers between W and W+1 (listener-change reloads)")
    args = ap.parse_args()

    procs = Processes()
    origins = [free_port(), free_port()]
    procs.start([sys.executable, "-c", "import sys; from engine.control.demo import run_origins;"
                 " sys.exit(run_origins(sys.argv[1:]))", *(f"{HOST}:{p}" for p in origins)],
                cwd=ROOT)
    for p in origins:
        wait_port(p)
    port, admin = free_port(), free_port()
    path = Path(procs.tmp) / "edgeproxy.toml"
    path.write_text(config(port, admin, origins, args.workers, 0))
    proxy = procs.start([sys.executable, "-m", "engine", "run", "-c", str(path)], cwd=ROOT,
                        stderr=subprocess.DEVNULL)
    wait_port(port)
    wait_port(admin)
    time.sleep(0.5)  # every worker up

    wrk = shutil.which("wrk")
    load: dict = {}
    if wrk:
        argv = [wrk, "-t2", f"-c{args.connections}", f"-d{args.duration:g}s", "--timeout", "5s",
                f"http://{HOST}:{port}/api/x"]
        loader = threading.Thread(target=lambda: load.update(parse_wrk(subprocess.run(
            argv, capture_output=True, text=True, timeout=args.duration + 60).stdout)))
    else:
        loader = threading.Thread(target=lambda: load.update(
            python_load(port, args.connections, args.duration)))
    loader.start()

    latencies, failed = [], 0
    gap = args.duration * 0.9 / max(1, args.reloads)
    time.sleep(args.duration * 0.05)
    for i in range(args.reloads):
        workers = args.workers + (i + 1) % 2 if args.vary_workers else args.workers
        path.write_text(config(port, admin, origins, workers, (i + 1) % 2))
        start = time.monotonic()
        code, body = admin_call(admin, "POST", "/reload")
        latencies.append(time.monotonic() - start)
        if code != 200 or b'"workers_pending": []' not in body:
            failed += 1
            print(f"reload {i + 1}: {code} {body[:300]!r}", file=sys.stderr)
        time.sleep(max(0.0, gap - latencies[-1]))
    loader.join()
    time.sleep(1.5)  # workers publish their counters about once a second
    counted = metrics_2xx(admin)
    if proxy.poll() is not None:
        print("edgeproxy exited during the run", file=sys.stderr)
        failed += 1

    errors = load.get("non2xx", 0) + sum(load.get("socket_errors", {}).values())
    lat = sorted(latencies)
    client = f"wrk -t2 -c{args.connections}" if wrk else "python threads"
    print(f"client: {client}, "
          f"{args.duration:g} s, {args.workers} worker(s)"
          + (f" alternating with {args.workers + 1}" if args.vary_workers else ""))
    print(f"requests: {load.get('requests', 0)}"
          + (f" ({load['rps']:.0f}/s)" if "rps" in load else ""))
    print(f"errors: {errors} (non-2xx {load.get('non2xx', 0)}, socket "
          f"{load.get('socket_errors', {}) or 'none'})")
    print(f"reloads: {len(latencies)}, failed {failed}; latency (POST to every worker "
          f"swapped) median {statistics.median(lat) * 1000:.1f} ms, "
          f"p90 {lat[int(len(lat) * 0.9) - 1] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
    print(f"proxy /metrics: {counted} api 2xx responses (the client counted "
          f"{load.get('requests', 0)}; answers in flight when it stopped count only here)")
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())
