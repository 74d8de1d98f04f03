"""TLS and HTTP/2 next to nginx, with the same certificate and cipher: TLS handshakes/s (one
request per connection), keep-alive HTTPS req/s, and HTTP/2 req/s, all measured with h2load
(Debian nghttp2-client) against edgeproxy and nginx proxying to one nginx origin.

    python bench/bench_tls.py [--requests 20000] [--clients 50]

Figures from a shared machine are noise-prone: compare the two columns, not runs.
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import HOST, LOAD_CORE, PROXY_CORE  # noqa: E402

CIPHER = "ECDHE-ECDSA-AES128-GCM-SHA256"  # TLS 1.2 runs; TLS 1.3 uses TLS_AES_128_GCM_SHA256


def nginx_conf(tmp: Path, port: int, origin_port: int, cert: str, key: str) -> str:
    return rig.nginx_conf(tmp, "nginx", f"""
    upstream origin {{ server {HOST}:{origin_port}; keepalive 1024; }}
    server {{
        listen {HOST}:{port} ssl http2;  # (nginx < 1.25 syntax, Debian 12)
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {CIPHER};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""")


def edgeproxy_conf(port: int, origin_port: int, cert: str, key: str) -> str:
    return f"""
[server]
workers = 1
access_log = "off"
keepalive_requests = 1000000
[admin]
listen = "{HOST}:0"
[[listeners]]
name = "tls"
listen = "{HOST}:{port}"
http2 = true
[listeners.tls]
cert = "{cert}"
key = "{key}"
ciphers = "{CIPHER}"
[[upstreams]]
name = "origin"
servers = ["http://{HOST}:{origin_port}"]
keepalive = 1024
[[routes]]
name = "all"
upstream = "origin"
"""


def h2load(args: list) -> float:
    out = subprocess.run(["taskset", "-c", LOAD_CORE, "h2load", *args], capture_output=True,
                         text=True, timeout=600).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    failed = re.search(r"(\d+) failed", out)
    if failed and int(failed.group(1)):
        print(f"  ({failed.group(1)} failed)", file=sys.stderr)
    return float(m.group(1)) if m else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=50)
    a = ap.parse_args()
    if shutil.which("h2load") is None:
        print("needs h2load: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    tmp, procs = rig.workspace("bench-tls-")
    ca = trustme.CA()
    leaf = ca.issue_cert("bench.test")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    try:
        origin_port = procs.origin({"ok": b"ok"})
        systems = {
            "nginx": procs.nginx("nginx", lambda p: nginx_conf(tmp, p, origin_port, cert, key),
                                 PROXY_CORE)[0],
            "edgeproxy": procs.edgeproxy("edgeproxy", lambda p: edgeproxy_conf(
                p, origin_port, cert, key))[0],
        }
        n, c = a.requests, a.clients
        print(f"{'case':<34}{'nginx':>12}{'edgeproxy':>12}")
        cases = [
            ("TLS handshakes/s (1 req/conn)",
             lambda u: ["--h1", "-n", str(n // 10), "-c", str(n // 10), u]),
            ("HTTPS keep-alive req/s (HTTP/1.1)", lambda u: ["--h1", "-n", str(n), "-c", str(c), u]),
            ("HTTP/2 req/s (10 streams/conn)",
             lambda u: ["-n", str(n), "-c", str(max(1, c // 5)), "-m", "10", u]),
        ]
        for name, argv in cases:
            row = [h2load(argv(f"https://{HOST}:{p}/ok")) for p in systems.values()]
            print(f"{name:<34}{row[0]:>12.0f}{row[1]:>12.0f}")
    finally:
        procs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
