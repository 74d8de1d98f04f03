"""edgeproxy vs nginx (and an aiohttp proxy) as a reverse proxy, measured per proxy CPU core.

    python bench/vs_nginx.py [--quick] [--rounds N] [--duration S]

An nginx origin serves static bodies (13 B, 4 KiB, 64 KiB); wrk loads each proxy in front of it.
wrk and the origin share core 0 and every proxy gets core 1, so throughput is bounded by
whichever side saturates first. That is why each proxy's own CPU time is measured: "req/s per
proxy core" (req/s divided by the share of a core the proxy used) compares the proxies' cost
per request, which is what the ratio to nginx reports.

Systems: nginx (1 worker, upstream keepalive 1024), edgeproxy (1 worker, shipped defaults, a
plain route: routing, proxy headers and the request id stay on), aiohttp (bench/aiohttp_proxy.py)
and edgeproxy-gateway (a route with the filters in GATEWAY_FILTERS, small bodies only).
Rounds interleave the systems (rotating their order); tables report medians over rounds.
Defaults: 3 rounds x 5 s per system and case, about 6 minutes (20 runs a round); --quick is 1
round x 3 s. The CPU other processes use meanwhile is reported, since a busy machine skews all.
Tables go to stdout and bench/results/vs_nginx-latest.md. Loopback only; every process it
starts is killed at exit and its temp dir removed. As root, missing wrk/nginx are apt-installed.
"""

import argparse
import atexit
import os
import platform
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
RESULTS = ROOT / "bench" / "results" / "vs_nginx-latest.md"
HOST = "127.0.0.1"
LOAD_CORE = "0"   # wrk and the origin
PROXY_CORE = "1"  # every system under test

BODIES = {
    "small": b"Hello, world\n",                                 # 13 bytes
    "4k": bytes(range(256)) * 16,                               # 4 KiB
    "64k": bytes(range(256)) * 256,                             # 64 KiB
}
BODY_LABEL = {"small": "small body (13 B)", "4k": "4 KiB body", "64k": "64 KiB body"}
CASES = (("small", 50), ("4k", 50), ("64k", 50), ("small", 200), ("4k", 200), ("64k", 200))
# Bodies whose cases also run edgeproxy-gateway: a filter's cost is per request, so it shows
# where requests are cheapest; the large bodies would mostly add run time.
GATEWAY_BODIES = ("small",)


@dataclass(frozen=True)
class GatewayFilter:
    """One filter of the full-gateway route. Adding a filter to the gateway case is one entry
    in GATEWAY_FILTERS: its route section, any top-level tables it needs (consumers, store)
    and the request headers wrk must send for requests to pass it (an API key, ...). Limits
    must sit far above the load, so a rate limiter decides every request but never says 429."""

    name: str
    route_toml: str
    top_toml: str = ""
    client_headers: tuple[str, ...] = ()


GATEWAY_FILTERS = (
    GatewayFilter(
        "headers",
        route_toml="""
[routes.headers.request]
set = { "X-Edge" = "edgeproxy" }
add = { "X-Bench" = "gateway" }
remove = ["X-Debug"]
rename = { "X-Client-Trace" = "X-Trace-Id" }

[routes.headers.response]
set = { "X-Served-By" = "edgeproxy" }
add = { "X-Frame-Options" = "DENY" }
remove = ["X-Powered-By"]
rename = { "ETag" = "X-Origin-ETag" }
""",
        client_headers=("X-Client-Trace: bench-0001",),
    ),
    GatewayFilter(
        "rate_limit",
        route_toml="""
[[routes.rate_limit.limits]]
name = "per-ip"
algorithm = "sliding_counter"
limit = 100000000
window = "1m"
key = ["ip"]
""",
    ),
)


# -- configs

def origin_nginx_conf(tmp: Path, port: int) -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/origin.pid;
error_log {tmp}/origin-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    open_file_cache max=64 inactive=600s;
    open_file_cache_valid 600s;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{_temp_paths(tmp, "origin")}
    server {{
        listen {HOST}:{port};
        root {tmp}/www;
        location / {{ }}
    }}
}}
"""


def proxy_nginx_conf(tmp: Path, port: int, origin_port: int) -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/proxy.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{_temp_paths(tmp, "proxy")}
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
            proxy_buffers 8 64k;
        }}
    }}
}}
"""


def _temp_paths(tmp: Path, name: str) -> str:
    return "\n".join(f"    {kind}_temp_path {tmp}/{name}-{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def edgeproxy_config(port: int, origin_port: int, filters=()) -> str:
    """A one-route edgeproxy config in front of the origin; ``filters`` (GatewayFilter
    entries) make it the full-gateway route."""
    top = "".join(f.top_toml for f in filters)
    route = "".join(f.route_toml for f in filters)
    return f"""
[server]
listen = "{HOST}:{port}"
workers = 1
access_log = "off"

[admin]  # on, as shipped, but on a free port: two edgeproxies run side by side here
listen = "{HOST}:0"

[[upstreams]]
name = "origin"
servers = ["http://{HOST}:{origin_port}"]
keepalive = 1024
{top}
[[routes]]
name = "{'gateway' if filters else 'bench'}"
paths = ["/*"]
upstream = "origin"
{route}"""


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
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # whatever of the group is left
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
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


def run_wrk(pid: int, port: int, path: str, conns: int, duration: float, headers=()) -> Run:
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{duration:g}s",
            "--latency", "--timeout", "5s"]
    for h in headers:
        argv += ["-H", h]
    argv.append(f"http://{HOST}:{port}{path}")
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


# -- the systems under test

@dataclass
class System:
    name: str
    port: int
    proc: subprocess.Popen
    headers: tuple = ()
    bodies: tuple = tuple(BODIES)  # which cases it runs


def start_all(procs: Processes, tmp: Path) -> tuple[list, int]:
    www = tmp / "www"
    www.mkdir()
    for name, body in BODIES.items():
        (www / name).write_bytes(body)
        (www / name).chmod(0o644)
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user when started as root
    www.chmod(0o755)
    nginx = _nginx_binary()

    origin_port = free_port()
    (tmp / "origin.conf").write_text(origin_nginx_conf(tmp, origin_port))
    origin = procs.start("origin", [nginx, "-e", str(tmp / "origin-error.log"), "-p", str(tmp),
                                    "-c", str(tmp / "origin.conf")], LOAD_CORE)
    wait_ready(procs, "origin", origin, origin_port)

    systems = []
    port = free_port()
    (tmp / "proxy.conf").write_text(proxy_nginx_conf(tmp, port, origin_port))
    proc = procs.start("nginx", [nginx, "-e", str(tmp / "nginx-error.log"), "-p", str(tmp),
                                 "-c", str(tmp / "proxy.conf")], PROXY_CORE)
    systems.append(System("nginx", port, proc))

    port = free_port()
    (tmp / "edgeproxy.toml").write_text(edgeproxy_config(port, origin_port))
    proc = procs.start("edgeproxy", [sys.executable, "-m", "engine", "run", "-c",
                                     str(tmp / "edgeproxy.toml")], PROXY_CORE, cwd=ROOT)
    systems.append(System("edgeproxy", port, proc))

    port = free_port()
    proc = procs.start("aiohttp", [sys.executable, str(ROOT / "bench" / "aiohttp_proxy.py"),
                                   "--listen", f"{HOST}:{port}", "--upstream",
                                   f"http://{HOST}:{origin_port}", "--keepalive", "1024"],
                       PROXY_CORE)
    systems.append(System("aiohttp", port, proc))

    port = free_port()
    (tmp / "gateway.toml").write_text(edgeproxy_config(port, origin_port, GATEWAY_FILTERS))
    proc = procs.start("edgeproxy-gateway", [sys.executable, "-m", "engine", "run", "-c",
                                             str(tmp / "gateway.toml")], PROXY_CORE, cwd=ROOT)
    headers = tuple(h for f in GATEWAY_FILTERS for h in f.client_headers)
    systems.append(System("edgeproxy-gateway", port, proc, headers, GATEWAY_BODIES))

    for s in systems:
        wait_ready(procs, s.name, s.proc, s.port)
    for s in systems:
        for body in s.bodies:
            try:
                status, _, got = fetch(s.port, f"/{body}", s.headers)
            except OSError as exc:
                raise SystemExit(f"{s.name}: GET /{body} failed: {exc}\n"
                                 f"{procs.log_tail(s.name)}") from None
            if status != 200 or got != BODIES[body]:
                raise SystemExit(f"{s.name}: GET /{body} answered {status} with "
                                 f"{len(got)} bytes, expected 200 with {len(BODIES[body])}")
    return systems, origin_port


def _nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx"))
               if shutil.which(tool) is None and not (tool == "nginx"
                                                      and os.path.exists("/usr/sbin/nginx"))]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"missing: {' '.join(missing)}; install them "
                             f"(apt-get install -y {' '.join(missing)}) or run as root")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env)
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin processes to cores")
    try:
        import aiohttp  # noqa: F401
        import uvloop  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is missing: pip install '.[bench]'") from None


# -- report

def _fmt(v: float, digits: int = 0) -> str:
    if v != v:  # nan
        return "-"
    return f"{v:,.{digits}f}"


def summarize(results: dict) -> dict:
    """(case, system) -> medians over rounds."""
    out = {}
    for key, runs in results.items():
        out[key] = {
            "rps": statistics.median(r.rps for r in runs),
            "p50": statistics.median(r.p50 for r in runs),
            "p99": statistics.median(r.p99 for r in runs),
            "cpu": statistics.median(r.cpu_share for r in runs),
            "per_core": statistics.median(r.per_core for r in runs),
            "per_core_min": min(r.per_core for r in runs),
            "per_core_max": max(r.per_core for r in runs),
            "errors": sum(r.errors for r in runs),
            "runs": len(runs),
        }
    return out


def report(results: dict, systems: list, header: str) -> str:
    med = summarize(results)
    names = [s.name for s in systems]
    lines = [header, ""]
    summary = []
    for body, conns in CASES:
        case = (body, conns)
        lines += [f"### {BODY_LABEL[body]}, {conns} connections", "",
                  "| system | req/s | p50 ms | p99 ms | proxy CPU share | req/s per proxy core "
                  "| (min-max over rounds) | vs nginx | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        base = med.get((case, "nginx"))
        for name in names:
            m = med.get((case, name))
            if m is None:
                continue
            ratio = m["per_core"] / base["per_core"] if base else float("nan")
            lines.append(f"| {name} | {_fmt(m['rps'])} | {_fmt(m['p50'], 2)} | "
                         f"{_fmt(m['p99'], 2)} | {_fmt(m['cpu'], 2)} | {_fmt(m['per_core'])} | "
                         f"{_fmt(m['per_core_min'])}-{_fmt(m['per_core_max'])} | "
                         f"{_fmt(ratio, 2)} | {m['errors']} |")
        ep, aio, gw = (med.get((case, n)) for n in ("edgeproxy", "aiohttp", "edgeproxy-gateway"))
        notes = []
        if ep and aio:
            notes.append(f"edgeproxy/aiohttp: {_fmt(ep['per_core'] / aio['per_core'], 2)}x per "
                         f"proxy core, {_fmt(ep['rps'] / aio['rps'], 2)}x req/s")
        if ep and gw:
            notes.append(f"edgeproxy-gateway/edgeproxy pass-through: "
                         f"{_fmt(gw['per_core'] / ep['per_core'], 2)}x per proxy core")
        lines += [""] + [f"- {n}" for n in notes] + [""]
        summary.append((case, ep, aio, gw, base))
    lines += ["### Summary: req/s per proxy core, ratios", "",
              "| case | edgeproxy / nginx | edgeproxy / aiohttp | aiohttp / nginx "
              "| gateway / edgeproxy |",
              "|---|---:|---:|---:|---:|"]
    for (body, conns), ep, aio, gw, base in summary:
        def ratio(a, b):
            return _fmt(a["per_core"] / b["per_core"], 2) if a and b else "-"
        lines.append(f"| {body} x{conns} | {ratio(ep, base)} | {ratio(ep, aio)} | "
                     f"{ratio(aio, base)} | {ratio(gw, ep)} |")
    bad = [(case, name, i, r) for (case, name), runs in results.items()
           for i, r in enumerate(runs) if r.errors]
    if bad:
        lines += ["", "### Errors reported by wrk", ""]
        for (body, conns), name, i, r in bad:
            lines.append(f"- {name}, {body} x{conns}, round {i + 1}: "
                         + "; ".join(r.error_lines))
    return "\n".join(lines) + "\n"


def machine_header(duration: float, rounds: int, elapsed: float, results: dict) -> str:
    def version(argv):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    rev = version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    foreign = [r.foreign_share for runs in results.values() for r in runs]
    busy = sum(1 for f in foreign if f > 0.1)
    return "\n".join([
        "## edgeproxy vs nginx vs aiohttp (bench/vs_nginx.py)",
        "",
        f"- command: `{' '.join(['python bench/vs_nginx.py', *sys.argv[1:]])}`",
        f"- {rounds} round(s) x {duration:g} s per system and case, medians; systems "
        f"interleaved within each round; took {elapsed / 60:.1f} min",
        f"- date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}; edgeproxy git {rev}",
        f"- machine: {cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()}",
        f"- {version([_nginx_binary(), '-v'])}; {version(['wrk', '-v'])}; "
        f"Python {platform.python_version()}; aiohttp {aiohttp.__version__}",
        f"- pinning: wrk -t1 and the origin (nginx, 1 worker) on core {LOAD_CORE}; each proxy "
        f"on core {PROXY_CORE}, 1 worker/process, upstream keepalive 1024",
        "- proxy CPU share = proxy CPU seconds (utime+stime of its process tree) / wall "
        "seconds of the run; req/s per proxy core = req/s / CPU share; \"vs nginx\" and the "
        "summary compare that",
        "- edgeproxy-gateway = edgeproxy with the route filters: "
        + ", ".join(f.name for f in GATEWAY_FILTERS),
        "- errors = wrk's non-2xx/3xx responses + socket errors, summed over rounds",
        f"- other load on the machine during the runs (CPU of processes this script did not "
        f"start, in cores): median {statistics.median(foreign):.2f}, max {max(foreign):.2f}; "
        f"{busy} of {len(foreign)} runs above 0.1 core"
        + (" -- NOISY: another workload was running" if busy > len(foreign) / 10 else ""),
    ])


# -- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round x 3 s (a smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 5; --quick 3)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown results file")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (3.0 if args.quick else 5.0)
    warmup = 1.0 if args.quick else 2.0
    if rounds < 1 or duration < 1:
        parser.error("--rounds must be >= 1 and --duration >= 1")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 cores: one for wrk + origin, one for the proxy")

    ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-"))
    procs = Processes(tmp)

    def cleanup():
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    started = time.monotonic()
    try:
        systems, _ = start_all(procs, tmp)
        runs_per_round = sum(1 for body, _ in CASES for s in systems if body in s.bodies)
        estimate = rounds * runs_per_round * (duration + 0.6) + len(systems) * (warmup + 0.5)
        print(f"{len(systems)} systems, {len(CASES)} cases, {rounds} round(s) x {duration:g} s: "
              f"about {estimate / 60:.1f} min", file=sys.stderr)
        for s in systems:  # fill the upstream pools and let the code paths warm up
            run_wrk(s.proc.pid, s.port, "/small", 200, warmup, s.headers)
        results: dict = {}
        for rnd in range(rounds):
            for body, conns in CASES:
                order = [s for s in systems if body in s.bodies]
                shift = rnd % len(order)
                for s in order[shift:] + order[:shift]:
                    if s.proc.poll() is not None:
                        raise SystemExit(f"{s.name} died (exit {s.proc.returncode}):\n"
                                         f"{procs.log_tail(s.name)}")
                    r = run_wrk(s.proc.pid, s.port, f"/{body}", conns, duration, s.headers)
                    results.setdefault(((body, conns), s.name), []).append(r)
                    err = f"; {' / '.join(r.error_lines)}" if r.errors else ""
                    print(f"[round {rnd + 1}/{rounds}] {body} x{conns} {s.name}: "
                          f"{r.rps:,.0f} req/s, p99 {r.p99:.2f} ms, cpu {r.cpu_share:.2f}, "
                          f"{r.per_core:,.0f} req/s per core, other load "
                          f"{r.foreign_share:.2f}{err}", file=sys.stderr)
                    time.sleep(0.3)
        text = report(results, systems,
                      machine_header(duration, rounds, time.monotonic() - started, results))
        print(text)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"written to {args.output}", file=sys.stderr)
        return 0
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
