"""Run the real `edgeproxy` CLI as a subprocess (supervisor + workers)."""

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib

_LISTENING = re.compile(rb"listening on (.+?) with (\d+) worker")
_ADDRESS = re.compile(rb"(\S+):(\d+)(?: \(([^)]*)\))?")  # "host:port (name)", name optional
_ADMIN = re.compile(rb"admin API on (\S+):(\d+)")
_ADMIN_TABLE = re.compile(r"^\[admin\]", re.M)


def hermetic(text: str) -> str:
    """The config with a free loopback port wherever it would take a default one (the
    proxy's 0.0.0.0:8080, the admin API's 127.0.0.1:9901): two suites running at once on one
    machine would otherwise fight for those ports. A config TOML cannot parse is left as is
    (the test is about that error)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return text
    server = doc.get("server", {})
    if "listen" not in server and "listeners" not in doc:
        text = (text.replace("[server]", '[server]\nlisten = "127.0.0.1:0"', 1)
                if "[server]" in text else '[server]\nlisten = "127.0.0.1:0"\n' + text)
    admin = doc.get("admin")
    if admin is None:
        text += '\n[admin]\nlisten = "127.0.0.1:0"\n'
    elif "listen" not in admin:
        text = _ADMIN_TABLE.sub('[admin]\nlisten = "127.0.0.1:0"', text, count=1)
    return text


class CliProxy:
    """``with CliProxy(tmp_path, toml) as p: p.port``; SIGTERM and a bounded wait on exit.

    ``port`` is the first listener's; ``ports`` maps each listener's name to its port (as
    logged at start: "default" for ``server.listen``).

    The proxy gets a TMPDIR of its own (``tmpdir``), where its supervisor makes its run
    folder. On exit the folder goes: entirely when the proxy was killed (a crash leaves its
    run folder, as it would anywhere), else only if empty, so a run folder a stopped proxy
    failed to remove is left for the session's check (tests/conftest.py) to report.
    """

    def __init__(self, tmp_path, config_text: str, start_timeout: float = 15.0,
                 command: list[str] | None = None, env: dict | None = None):
        """``command``: what runs ``run -c <config>`` (default: this Python's ``-m engine``);
        ``env``: the whole environment (default: this one's), TMPDIR set either way."""
        self.path = tmp_path / "edgeproxy.toml"
        self.path.write_text(hermetic(config_text))
        self.start_timeout = start_timeout
        self.proc = None
        self.port = None
        self.ports: dict[str, int] = {}
        self.admin_port = None
        self.token = None  # sent as a bearer token by ``admin()``
        self.stderr = b""
        self.returncode = None
        self.tmpdir = None
        self.command = command or [sys.executable, "-m", "engine"]
        self.env = os.environ if env is None else env

    def __enter__(self):
        self.tmpdir = tempfile.mkdtemp(prefix="cli-", dir=os.environ.get("TMPDIR"))
        self.proc = subprocess.Popen(
            [*self.command, "run", "-c", str(self.path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env={**self.env, "TMPDIR": self.tmpdir})
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    break
                self.stderr += chunk
                m = _LISTENING.search(self.stderr)
                if m:
                    for item in m.group(1).split(b", "):
                        host, port, name = _ADDRESS.fullmatch(item).groups()
                        self.ports[(name or b"default").decode()] = int(port)
                    self.port = next(iter(self.ports.values()))
                    admin = _ADMIN.search(self.stderr)
                    self.admin_port = int(admin.group(2)) if admin else None
                    time.sleep(0.2)  # workers bind right after the supervisor logs
                    return self
        exited = self.proc.poll()
        self.stop()
        self._cleanup()
        why = (f"exited ({exited})" if exited is not None
               else f"did not log its listeners within {self.start_timeout:g} s")
        raise RuntimeError(f"edgeproxy {why}: {self.stderr.decode(errors='replace')}")

    def run_dir(self) -> str | None:
        """The supervisor's run folder (published config, worker snapshots), once made."""
        for name in os.listdir(self.tmpdir):
            if name.startswith("edgeproxy-"):
                return os.path.join(self.tmpdir, name)
        return None

    def read_stderr(self) -> bytes:
        while True:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0)
            if not ready:
                return self.stderr
            chunk = os.read(self.proc.stderr.fileno(), 65536)
            if not chunk:
                return self.stderr
            self.stderr += chunk

    def admin(self, method: str, path: str, token: str | None = None,
              timeout: float = 15.0) -> tuple[int, dict | str]:
        """Call the admin API: (status, parsed JSON or text)."""
        import http.client

        import orjson

        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        token = token or self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return resp.status, orjson.loads(body)
        return resp.status, body.decode()

    def write_config(self, text: str) -> None:
        """Replace the config file in one step (as config managers do: write, rename)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(hermetic(text))
        os.replace(tmp, self.path)

    def wait_stderr(self, pattern: bytes, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pattern in self.read_stderr():
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate(timeout=5)
        self.stdout = out
        self.stderr += err
        self.returncode = self.proc.returncode
        return self.returncode

    def __exit__(self, *exc):
        if self.returncode is None:
            self.stop()
        self._cleanup()

    def _cleanup(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # nothing may outlive the test
        except ProcessLookupError:
            pass
        if self.tmpdir is None:
            return
        if self.proc.returncode is not None and self.proc.returncode < 0:
            shutil.rmtree(self.tmpdir, ignore_errors=True)  # killed: nothing cleaned up
        else:
            try:
                os.rmdir(self.tmpdir)
            except OSError:
                pass  # not empty: reported at the end of the session
        self.tmpdir = None


def check(config_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "check", "-c", str(config_path)],
                          capture_output=True, timeout=30)
