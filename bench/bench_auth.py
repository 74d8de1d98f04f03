"""Requests/s through authenticated routes next to an open one.

    python bench/bench_auth.py [--rounds N] [--duration S] [--conns C]

One edgeproxy (1 worker, pinned to core 1) in front of an nginx origin (core 0, with wrk).
Routes to the same origin:

    /open/            no auth section
    /headers/         no auth, one request-header filter: the cost of having a filter chain
    /apikey/          api_key (SHA-256 lookup, constant-time compare, header removed)
    /hs256/ /rs256/ /es256/              jwt, verified-token cache on (default)
    /hs256-nc/ /rs256-nc/ /es256-nc/     jwt, cache_ttl = 0: a signature check per request

Every request carries a valid credential (one key, one token per algorithm, as a client with
a long-lived token sends it); a 401 in the run is an error. Rounds interleave the routes; the
table shows medians, the ratio to /open and req/s per proxy core (as bench/vs_nginx.py).
Keys are made here with `cryptography`. Default: 3 rounds x 3 s x 9 routes, about 90 s.
"""

import argparse
import atexit
import hashlib
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_nginx import (  # noqa: E402  (bench/ is not a package)
    BODIES, HOST, LOAD_CORE, PROXY_CORE, ROOT, Processes, _nginx_binary, ensure_tools, fetch,
    free_port, origin_nginx_conf, run_wrk, wait_ready,
)

API_KEY = "bench-key-7c1d9e2f4a6b8c0d"
SECRET = b"bench-hmac-secret-of-32-bytes-ok"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(private) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def jwt_section(key_lines: str, cache: bool) -> str:
    return f"""
[routes.auth]
methods = ["jwt"]
[routes.auth.jwt]
issuers = ["bench"]
{"" if cache else "cache_ttl = 0"}
[[routes.auth.jwt.keys]]
{key_lines}
"""


KEYS = {
    "hs256": (f'secret = "{SECRET.decode()}"', "HS256", SECRET),
    "rs256": (f'pem = """{pem(RSA_KEY)}"""', "RS256", RSA_KEY),
    "es256": (f'pem = """{pem(EC_KEY)}"""', "ES256", EC_KEY),
}
ROUTES = {"open": "", "headers": '\n[routes.headers.request]\nadd = { "X-Consumer" = "x" }\n',
          "apikey": '\n[routes.auth]\nmethods = ["api_key"]\n'}
for _name, (_lines, _, _) in KEYS.items():
    ROUTES[_name] = jwt_section(_lines, True)
for _name, (_lines, _, _) in KEYS.items():
    ROUTES[_name + "-nc"] = jwt_section(_lines, False)


def credential(name: str) -> tuple:
    if name in ("open", "headers"):
        return ()
    if name == "apikey":
        return (f"X-API-Key: {API_KEY}",)
    _, alg, key = KEYS[name.removesuffix("-nc")]
    token = jwt.encode({"sub": "bench-user", "iss": "bench", "exp": int(time.time()) + 7200},
                       key, algorithm=alg)
    return (f"Authorization: Bearer {token}",)


def edgeproxy_config(port: int, origin_port: int) -> str:
    routes = "".join(f"""
[[routes]]
name = "{name}"
paths = ["/{name}/*"]
upstream = "origin"
strip_prefix = true
{section}""" for name, section in ROUTES.items())
    return f"""
[server]
listen = "{HOST}:{port}"
workers = 1
access_log = "off"

[admin]
listen = "{HOST}:0"

[[consumers]]
name = "bench"
api_keys = ["sha256:{hashlib.sha256(API_KEY.encode()).hexdigest()}"]

[[upstreams]]
name = "origin"
servers = ["http://{HOST}:{origin_port}"]
keepalive = 1024
{routes}"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=50)
    args = ap.parse_args()
    ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    procs = Processes(tmp)
    atexit.register(lambda: (procs.stop(), shutil.rmtree(tmp, ignore_errors=True)))

    www = tmp / "www"
    www.mkdir()
    (www / "small").write_bytes(BODIES["small"])
    for p in (tmp, www, www / "small"):
        p.chmod(0o755)
    origin_port = free_port()
    (tmp / "origin.conf").write_text(origin_nginx_conf(tmp, origin_port))
    origin = procs.start("origin", [_nginx_binary(), "-e", str(tmp / "origin-error.log"), "-p",
                                    str(tmp), "-c", str(tmp / "origin.conf")], LOAD_CORE)
    port = free_port()
    (tmp / "edgeproxy.toml").write_text(edgeproxy_config(port, origin_port))
    proxy = procs.start("edgeproxy", [sys.executable, "-m", "engine", "run", "-c",
                                      str(tmp / "edgeproxy.toml")], PROXY_CORE, cwd=ROOT)
    for name, proc, p in (("origin", origin, origin_port), ("edgeproxy", proxy, port)):
        wait_ready(procs, name, proc, p)
    creds = {name: credential(name) for name in ROUTES}
    for name in ROUTES:
        status, _, body = fetch(port, f"/{name}/small", creds[name])
        if status != 200 or body != BODIES["small"]:
            raise SystemExit(f"/{name}/small answered {status}")

    results: dict = {name: [] for name in ROUTES}
    started = time.monotonic()
    names = list(ROUTES)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run = run_wrk(proxy.pid, port, f"/{name}/small", args.conns, args.duration,
                          creds[name])
            if run.errors:
                raise SystemExit(f"/{name}: errors in the run: {run.error_lines}")
            results[name].append(run)
            print(f"round {r + 1} {name:9} {run.rps:9.0f} req/s  cpu {run.cpu_share:.2f}",
                  file=sys.stderr)
    base = statistics.median(x.rps for x in results["open"])
    lines = [f"edgeproxy 1 worker, wrk -c{args.conns} -t1, {args.rounds} rounds x "
             f"{args.duration:g} s, small body (13 B), medians; {time.monotonic() - started:.0f}"
             " s", "",
             "| route | req/s | vs open | req/s per proxy core | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|"]
    for name, runs in results.items():
        rps = statistics.median(x.rps for x in runs)
        lines.append(f"| /{name}/ | {rps:.0f} | {rps / base:.2f} | "
                     f"{statistics.median(x.per_core for x in runs):.0f} | "
                     f"{statistics.median(x.p50 for x in runs):.2f} | "
                     f"{statistics.median(x.p99 for x in runs):.2f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    sys.exit(main())
