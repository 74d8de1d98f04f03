"""The browser-facing edge next to nginx: response compression and static files.

    python bench/bench_browser.py [--quick] [--duration S] [--conns N]

1. A 64 KiB JSON answer from an nginx origin, through nginx (``gzip on``, level 5) and
   edgeproxy (the compression filter, gzip level 5; also zstd level 3), compressed and plain.
2. Static files of 1 KiB and 1 MiB served by nginx (``sendfile on``, open_file_cache) and by an
   edgeproxy ``static_files`` route.

wrk and the origin share core 0, the system under test gets core 1 (the rig of
bench/vs_nginx.py, bench/rig.py); "per core" is req/s divided by
the share of a core the system used. Tables go to stdout and
bench/results/bench_browser-latest.md. Every process started is killed at exit.
"""

import argparse
import json
import sys
import time
import urllib.request
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig  # noqa: E402  (bench/ is a folder of scripts, not a package)
from rig import HOST, LOAD_CORE, PROXY_CORE, ROOT  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bench_browser-latest.md"
LEVEL = 5  # gzip level on both sides


def json_body(size: int = 64 * 1024) -> bytes:
    """A JSON array of user records, just over ``size`` bytes (valid JSON, typical entropy)."""
    items = []
    out = b"[]"
    while len(out) < size:
        i = len(items)
        items.append({"id": i, "name": f"user {i}", "email": f"user{i}@example.com",
                      "active": i % 3 == 0, "score": (i * 7919) % 1000})
        out = json.dumps(items).encode()
    return out


def nginx_conf(tmp: Path, name: str, server: str) -> str:
    return rig.nginx_conf(tmp, name, f"""
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=64 inactive=600s;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
{server}
    }}""")


def edge_conf(port: int, origin_port: int, www: Path) -> str:
    return rig.edgeproxy_config(port, origin_port, f"""
[[routes]]
name = "api"
paths = ["/api/*"]
upstream = "origin"
[routes.compression]
algorithms = ["zstd", "gzip"]
gzip_level = {LEVEL}
zstd_level = 3

[[routes]]
name = "static"
paths = ["/static/*"]
strip_prefix = true
[routes.static_files]
root = "{www}"
precompressed = false
""")


def start(procs: rig.Processes, body: bytes) -> dict:
    tmp = procs.tmp
    www = rig.write_www(tmp, {"api/data.json": body, "1k.bin": bytes(range(256)) * 4,
                              "1m.bin": bytes(range(256)) * 4096})
    ports = {"origin": procs.nginx("origin", lambda p: nginx_conf(
        tmp, "origin", f"        listen {HOST}:{p};\n        root {www};\n"
                       "        default_type application/json;"), LOAD_CORE)}
    origin_port = ports["origin"][0]
    ports["nginx"] = procs.nginx("nginx", lambda p: nginx_conf(tmp, "nginx", f"""\
        listen {HOST}:{p};
        location /api/ {{
            proxy_pass http://{HOST}:{origin_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            gzip on;
            gzip_comp_level {LEVEL};
            gzip_proxied any;
            gzip_types application/json;
            gzip_min_length 1024;
        }}
        location /static/ {{ alias {www}/; }}"""), PROXY_CORE)
    ports["edgeproxy"] = procs.edgeproxy("edgeproxy", lambda p: edge_conf(p, origin_port, www))
    return ports


def check(port: int, path: str, encoding: str | None, expect: bytes) -> None:
    req = urllib.request.Request(f"http://{HOST}:{port}{path}")
    if encoding:
        req.add_header("Accept-Encoding", encoding)
    with urllib.request.urlopen(req, timeout=5) as resp:
        got = resp.read()
        coding = resp.headers.get("Content-Encoding")
    if coding == "gzip":
        got = zlib.decompress(got, 31)
    elif coding == "zstd":
        import zstandard
        got = zstandard.ZstdDecompressor().decompressobj().decompress(got)
    if coding != (encoding or None) or got != expect:
        raise SystemExit(f"{port}{path}: Content-Encoding {coding!r} (wanted {encoding!r}), "
                         f"{len(got)} bytes (wanted {len(expect)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s per case")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=50)
    args = ap.parse_args()
    duration = 2.0 if args.quick else args.duration
    rig.ensure_tools()
    body = json_body()
    files = {"/static/1k.bin": bytes(range(256)) * 4, "/static/1m.bin": bytes(range(256)) * 4096}
    _, procs = rig.workspace("bench-browser-")
    rows = []
    try:
        ports = start(procs, body)
        cases = [
            ("64 KiB JSON, plain", "/api/data.json", None),
            ("64 KiB JSON, gzip 5", "/api/data.json", "gzip"),
            ("64 KiB JSON, zstd 3", "/api/data.json", "zstd"),
            ("static 1 KiB", "/static/1k.bin", None),
            ("static 1 MiB", "/static/1m.bin", None),
        ]
        for label, path, encoding in cases:
            for system in ("nginx", "edgeproxy"):
                if encoding == "zstd" and system == "nginx":
                    continue  # stock nginx has no zstd module
                port, proc = ports[system]
                check(port, path, encoding, files.get(path, body))
                headers = (f"Accept-Encoding: {encoding}",) if encoding else ()
                run = rig.run_wrk(proc.pid, port, path, args.conns, duration, headers)
                rows.append((label, system, run))
                print(f"{label:22} {system:10} {run.rps:10.0f} req/s  {run.per_core:10.0f} "
                      f"per core  p99 {run.p99:7.2f} ms  errors {run.errors}", flush=True)
                time.sleep(0.5)
    finally:
        procs.stop()
    lines = ["# bench_browser (shared machine figures are noisy)", "",
             f"wrk -c{args.conns}, {duration:g} s per case; system under test on core "
             f"{PROXY_CORE}, wrk and origin on core {LOAD_CORE}.", "",
             "| case | system | req/s | req/s per core | p99 ms | errors |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {system} | {run.rps:.0f} | {run.per_core:.0f} | {run.p99:.2f} | "
              f"{run.errors} |" for label, system, run in rows]
    text = "\n".join(lines) + "\n"
    RESULTS.write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
