"""packaging/edgeproxy.service passes `systemd-analyze verify`, keeps its hardening, and the
supervisor speaks sd_notify to a Type=notify unit: READY once it serves, RELOADING/READY around
a reload, STOPPING when it drains."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support.cli import CliProxy

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "edgeproxy.service"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs systemd)")
    # verify checks that ExecStart's program exists: point it at this install's edgeproxy.
    exe = shutil.which("edgeproxy", path=str(pathlib.Path(sys.executable).parent))
    assert exe, "the edgeproxy script of this environment"
    unit = tmp_path / "edgeproxy.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/edgeproxy", exe))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          timeout=60)
    # Unknown keys and bad values are only warnings to systemd: any output is a failure here.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), \
        (done.stdout + done.stderr).decode()


def test_unit_is_hardened_and_reloads_with_sighup():
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["all"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"][0].endswith(" run -c /etc/edgeproxy/config.toml")
    for key, value in (("DynamicUser", "yes"), ("NoNewPrivileges", "yes"),
                       ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
                       ("AmbientCapabilities", "CAP_NET_BIND_SERVICE")):
        assert d[key] == [value], key
    assert int(d["LimitNOFILE"][0]) >= 65536


def test_supervisor_notifies_ready_reloading_and_stopping(tmp_path, monkeypatch):
    name = f"edgeproxy-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)  # an abstract socket, as systemd's is named "@..."
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    config = """
[[routes]]
name = "ok"
[routes.static]
body = "ok"
"""
    try:
        with CliProxy(tmp_path, config) as proxy:
            ready = sock.recv(4096).decode().splitlines()
            assert ready[0] == "READY=1" and ready[1].startswith("STATUS=serving generation 1")
            os.kill(proxy.proc.pid, signal.SIGHUP)
            reloading = sock.recv(4096).decode().splitlines()
            assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
            again = sock.recv(4096).decode().splitlines()
            assert again[0] == "READY=1" and "last reload: unchanged" in again[1]
            proxy.stop()
            assert sock.recv(4096) == b"STOPPING=1"
            assert proxy.returncode == 0
    finally:
        sock.close()
