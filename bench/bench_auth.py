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
table shows medians, the ratio to /open and req/s per proxy core (as bench/vs_nginx.py, with bench/rig.py).
Keys are made here with `cryptography`. Default: 3 rounds x 3 s x 9 routes, about 90 s.
"""

import hashlib
import socket
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import BODIES  # noqa: E402

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
    return rig.edgeproxy_config(port, origin_port, rig.prefixed_routes(ROUTES), top=f"""
[[consumers]]
name = "bench"
api_keys = ["sha256:{hashlib.sha256(API_KEY.encode()).hexdigest()}"]
""")


def main() -> int:
    args = rig.route_args(__doc__, duration=3.0)
    rig.ensure_tools()
    _, procs = rig.workspace("bench-auth-")
    origin_port = procs.origin({"small": BODIES["small"]})
    port, proxy = procs.edgeproxy("edgeproxy", lambda p: edgeproxy_config(p, origin_port))
    creds = {name: credential(name) for name in ROUTES}
    for name in ROUTES:
        status, _, body = rig.fetch(port, f"/{name}/small", creds[name])
        if status != 200 or body != BODIES["small"]:
            raise SystemExit(f"/{name}/small answered {status}")

    rig.route_bench(proxy.pid, port, {name: f"/{name}/small" for name in ROUTES}, args,
                    base="open", labels={name: f"/{name}/" for name in ROUTES},
                    headers=creds, body="small body (13 B), ")
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    sys.exit(main())
