"""The measurement rig every load benchmark in bench/ shares.

wrk and the origin run on core 0 (LOAD_CORE), the system under test on core 1 (PROXY_CORE),
so throughput is bounded by whichever side saturates first. That is why each proxy's own CPU
time is measured: "req/s per proxy core" (req/s divided by the share of a core the proxy used)
compares what a request costs, which a busy load generator or neighbour skews far less than
req/s. This module holds the parts: starting nginx / redis / edgeproxy pinned to a core and
killing them at exit, loopback checks, the wrk run with its CPU accounting, interleaved rounds
and the median tables. bench/ is a folder of scripts, not a package: scripts put this folder
on sys.path and import ``rig``.
"""

import argparse
import atexit
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
LOAD_CORE = "0"   # wrk and the origin
PROXY_CORE = "1"  # every system under test

BODIES = {
    "small": b"Hello, world\n",                                 # 13 bytes
    "4k": bytes(range(256)) * 16,                               # 4 KiB
    "64k": bytes(range(256)) * 256,                             # 64 KiB
}


# -- configs

def temp_paths(tmp: Path, name: str) -> str:
    return "\n".join(f"    {kind}_temp_path {tmp}/{name}-{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def nginx_conf(tmp: Path, name: str, http: str) -> str:
    """A one-worker, foreground nginx whose pid, error log and temp files live in ``tmp``
    under ``name``; ``http`` is the rest of its http block (servers, upstreams, ...)."""
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{temp_paths(tmp, name)}
{http}
}}
"""


def origin_nginx_conf(tmp: Path, port: int, default_type: str = "application/octet-stream",
                      locations: str = "location / { }") -> str:
    """The origin: static files from ``tmp``/www, kept-alive connections."""
    return nginx_conf(tmp, "origin", f"""
    default_type {default_type};
    sendfile on;
    tcp_nodelay on;
    open_file_cache max=64 inactive=600s;
    open_file_cache_valid 600s;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen {HOST}:{port};
        root {tmp}/www;
        {locations}
    }}""")


def nginx_proxy_conf(tmp: Path, name: str, port: int, origin_port: int,
                     extra: str = "", top: str = "") -> str:
    """nginx as a reverse proxy to the origin (upstream keepalive 1024); ``extra`` goes in its
    ``location /``, ``top`` in its http block."""
    return nginx_conf(tmp, name, f"""{top}
    upstream origin {{
        server {HOST}:{origin_port};
        keepalive 1024;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 8 64k;{extra}
        }}
    }}""")


def edgeproxy_config(port: int, origin_port: int, routes: str, top: str = "",
                     admin: str = f'listen = "{HOST}:0"', server: str = "") -> str:
    """One edgeproxy worker, access log off, before the origin (keepalive 1024): ``top`` holds
    top-level tables (consumers, redis, ...), ``routes`` the [[routes]], ``server`` more
    [server] keys. The admin listener is on, as shipped, but on a free port: several
    edgeproxies run side by side here."""
    return f"""
[server]
listen = "{HOST}:{port}"
workers = 1
access_log = "off"
{server}

[admin]
{admin}

[[upstreams]]
name = "origin"
servers = ["http://{HOST}:{origin_port}"]
keepalive = 1024
{top}{routes}"""


def prefixed_routes(sections: dict) -> str:
    """A route per name at /name/* to the origin, prefix stripped, with its own sections."""
    return "".join(f"""
[[routes]]
name = "{name}"
paths = ["/{name}/*"]
upstream = "origin"
strip_prefix = true
{section}""" for name, section in sections.items())


# -- processes

class Processes:
    """Everything this run started; stop() kills each process group it created."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list, core: str, cwd=None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(["taskset", "-c", core, *argv], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.tmp / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            signal_group(proc, signal.SIGKILL)  # whatever of the group is left
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    # Starters: each picks a free port, starts the process pinned to ``core`` and waits
    # until it listens; they return (port, process).

    def nginx(self, name: str, conf, core: str) -> tuple[int, subprocess.Popen]:
        """``conf(port)`` is the nginx.conf text (see nginx_conf)."""
        port = free_port()
        (self.tmp / f"{name}.conf").write_text(conf(port))
        proc = self.start(name, [nginx_binary(), "-e", str(self.tmp / f"{name}-error.log"),
                                 "-p", str(self.tmp), "-c", str(self.tmp / f"{name}.conf")],
                          core)
        wait_ready(self, name, proc, port)
        return port, proc

    def origin(self, files: dict, **conf) -> int:
        """An nginx origin on LOAD_CORE serving ``files`` (path under www -> bytes); ``conf``
        goes to origin_nginx_conf. Returns its port."""
        write_www(self.tmp, files)
        port, _ = self.nginx("origin", lambda p: origin_nginx_conf(self.tmp, p, **conf),
                             LOAD_CORE)
        return port

    def edgeproxy(self, name: str, config, core: str = PROXY_CORE,
                  root: Path = ROOT) -> tuple[int, subprocess.Popen]:
        """``config(port)`` is the config.toml text (see edgeproxy_config); ``root`` is the
        source tree whose edgeproxy runs (another revision's, for bench/ab.py)."""
        port = free_port()
        path = self.tmp / f"{name}.toml"
        path.write_text(config(port))
        proc = self.start(name, [sys.executable, "-m", "engine", "run", "-c", str(path)], core,
                          cwd=root)
        wait_ready(self, name, proc, port)
        return port, proc

    def redis(self, name: str = "redis", port: int | None = None, extra=()) -> int:
        port = port or free_port()
        data = self.tmp / f"{name}-data"
        data.mkdir()
        proc = self.start(name, [shutil.which("redis-server") or "redis-server", "--port",
                                 str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                                 "--dir", str(data), *extra], LOAD_CORE)
        wait_ready(self, name, proc, port)
        return port


def workspace(prefix: str) -> tuple[Path, Processes]:
    """A temp dir and the process set of this run; both go at exit, also on SIGTERM/SIGHUP."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Processes(tmp)

    def cleanup():
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    return tmp, procs


def write_www(tmp: Path, files: dict) -> Path:
    """``files`` (path under tmp/www -> bytes) readable by nginx workers, which run as an
    unprivileged user when started as root."""
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    for d in (tmp, www):
        d.chmod(0o755)
    for rel, body in files.items():
        path = www / rel
        for d in reversed(path.relative_to(tmp).parents[:-1]):
            (tmp / d).mkdir(exist_ok=True)
            (tmp / d).chmod(0o755)
        path.write_bytes(body)
        path.chmod(0o644)
    return www


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def fetch(port: int, path: str, headers=()) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"http://{HOST}:{port}{path}")
    for h in headers:
        name, _, value = h.partition(":")
        req.add_header(name.strip(), value.strip())
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, dict(resp.headers), resp.read()


def wait_ready(procs: Processes, name: str, proc, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}:\n{procs.log_tail(name)}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not listen on {HOST}:{port} in {timeout}s:\n"
                     f"{procs.log_tail(name)}")


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def ensure_tools(*more: str) -> None:
    """wrk, nginx and taskset, plus ``more`` (e.g. "redis-server"); as root, missing ones are
    apt-installed."""
    packages = {"wrk": "wrk", "nginx": "nginx", "redis-server": "redis-server",
                "redis-cli": "redis-tools", "h2load": "nghttp2-client"}
    missing = sorted({packages.get(tool, tool) for tool in ("wrk", "nginx", *more)
                      if shutil.which(tool) is None
                      and not (tool == "nginx" and os.path.exists("/usr/sbin/nginx"))})
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"missing: {' '.join(missing)}; install them "
                             f"(apt-get install -y {' '.join(missing)}) or run as root")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env)
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin processes to cores")


# -- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> dict:
    """pid -> (ppid, CPU ticks) for every process, from /proc/PID/stat (proc(5): field 4 is
    the ppid, 14-17 utime stime cutime cstime; reaped children count in their parent)."""
    snap = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(b")") + 2:].split()  # the name may hold spaces or ')'
        snap[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return snap


def _tree(snap: dict, root: int) -> set:
    out = set()
    for pid in snap:
        p = pid
        while p > 1 and p != root:
            p = snap[p][0] if p in snap else 0
        if p == root:
            out.add(pid)
    return out


def machine_busy() -> float:
    """CPU seconds all cores spent in user, nice and system mode since boot (proc(5),
    /proc/stat "cpu" line)."""
    with open("/proc/stat") as f:
        user, nice, system = f.readline().split()[1:4]
    return (int(user) + int(nice) + int(system)) / CLK_TCK


def tree_cpu(snap: dict, root: int) -> float:
    return sum(snap[p][1] for p in _tree(snap, root) if p in snap) / CLK_TCK


# -- wrk

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


@dataclass
class Run:
    rps: float
    p50: float
    p99: float
    cpu_share: float
    foreign_share: float
    requests: int
    non2xx: int = 0
    socket_errors: dict = field(default_factory=dict)
    error_lines: list = field(default_factory=list)

    @property
    def per_core(self) -> float:
        return self.rps / self.cpu_share if self.cpu_share > 0 else float("nan")

    @property
    def errors(self) -> int:
        return self.non2xx + sum(self.socket_errors.values())


def parse_wrk(out: str) -> dict:
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{out}")
    lat = dict((p, _ms(v, u)) for p, v, u in
               re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M))
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     out)
    errors = {}
    if sock:
        errors = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"),
                                            sock.groups(), strict=True) if int(v)}
    lines = [ln.strip() for ln in out.splitlines()
             if "Non-2xx" in ln or "Socket errors" in ln]
    return {"rps": float(m.group(1)), "p50": lat.get("50", float("nan")),
            "p99": lat.get("99", float("nan")), "requests": int(total.group(1)) if total else 0,
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors,
            "error_lines": lines}


def wrk_argv(port: int, path: str, conns: int, duration: float, headers=(),
             script: Path | None = None) -> list:
    """wrk pinned to LOAD_CORE, one thread, latency percentiles; ``script`` is a Lua file."""
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{duration:g}s",
            "--latency", "--timeout", "5s"]
    for h in headers:
        argv += ["-H", h]
    if script is not None:
        argv += ["-s", str(script)]
    return [*argv, f"http://{HOST}:{port}{path}"]


def run_wrk(pid: int, port: int, path: str, conns: int, duration: float, headers=(),
            script: Path | None = None) -> Run:
    """One wrk run against ``port``, with the CPU share the process tree of ``pid`` used."""
    argv = wrk_argv(port, path, conns, duration, headers, script)
    # Other load = all CPU time the machine spent minus this script's process tree (wrk,
    # once reaped, counts in our own cutime): noise from workloads we did not start.
    snap0, busy0, t0 = cpu_snapshot(), machine_busy(), time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    t1, busy1, snap1 = time.monotonic(), machine_busy(), cpu_snapshot()
    me = os.getpid()
    proxy_cpu = tree_cpu(snap1, pid) - tree_cpu(snap0, pid)
    foreign_cpu = max(0.0, (busy1 - busy0) - (tree_cpu(snap1, me) - tree_cpu(snap0, me)))
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    r = parse_wrk(done.stdout)
    return Run(cpu_share=proxy_cpu / (t1 - t0), foreign_share=foreign_cpu / (t1 - t0), **r)


# -- rounds and tables

def rotated(names, rnd: int) -> list:
    """``names`` starting at index ``rnd``: rounds interleave the systems, each taking every
    place in turn, so a slow start or a neighbour's burst does not always hit the same one."""
    names = list(names)
    shift = rnd % len(names)
    return names[shift:] + names[:shift]


def median(runs, attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def route_rounds(pid: int, port: int, paths: dict, rounds: int, conns: int, duration: float,
                 headers: dict | None = None) -> dict:
    """name -> runs: interleaved rounds over one proxy's routes (``paths``: name -> path),
    each run errorless or the bench stops."""
    results: dict = {name: [] for name in paths}
    for r in range(rounds):
        for name in rotated(paths, r):
            run = run_wrk(pid, port, paths[name], conns, duration, (headers or {}).get(name, ()))
            if run.errors:
                raise SystemExit(f"{paths[name]}: errors in the run: {run.error_lines}")
            results[name].append(run)
            print(f"round {r + 1} {name:9} {run.rps:9.0f} req/s  cpu {run.cpu_share:.2f}",
                  file=sys.stderr)
    return results


def route_table(results: dict, labels: dict, base: str, title: str) -> str:
    """The medians of route_rounds, each route's req/s as a ratio to route ``base``."""
    base_rps = median(results[base], "rps")
    lines = [title, "",
             f"| route | req/s | vs {base} | req/s per proxy core | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|"]
    for name, runs in results.items():
        rps = median(runs, "rps")
        lines.append(f"| {labels[name]} | {rps:.0f} | {rps / base_rps:.2f} | "
                     f"{median(runs, 'per_core'):.0f} | {median(runs, 'p50'):.2f} | "
                     f"{median(runs, 'p99'):.2f} |")
    return "\n".join(lines)


def route_args(doc: str, duration: float, rounds: int = 3, conns: int = 50):
    """The command line of a bench over one proxy's routes: --rounds, --duration, --conns."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--duration", type=float, default=duration)
    ap.add_argument("--conns", type=int, default=conns)
    return ap.parse_args()


def git_rev() -> str:
    """``git describe`` of the tree the bench runs from, for a results file."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return done.stdout.strip() or "?"


def route_bench(pid: int, port: int, paths: dict, args, base: str, labels: dict | None = None,
                headers: dict | None = None, body: str = "") -> None:
    """route_rounds with ``args`` (see route_args), then its table on stdout; ``body`` names
    the response body for the title."""
    started = time.monotonic()
    results = route_rounds(pid, port, paths, args.rounds, args.conns, args.duration, headers)
    print(route_table(
        results, labels or paths, base,
        f"edgeproxy 1 worker, wrk -c{args.conns} -t1, {args.rounds} rounds x "
        f"{args.duration:g} s, {body}medians; {time.monotonic() - started:.0f} s"))


def write_results(path: Path, text: str) -> None:
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
