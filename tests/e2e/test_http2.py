"""HTTP/2 end to end: real clients (curl, nghttp) over TLS with ALPN and over h2c, and an h2
client on a raw socket for what needs frame-level control: multiplexing, flow control,
cancel (RST_STREAM aborts the upstream request), GOAWAY on drain, rapid reset, HPACK bomb."""

import shutil
import socket
import subprocess
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from tests.support.e2e import wait_until
from tests.support.origin import Origin, echo, ok
from tests.support.proxy import InProcessProxy
from tests.support.tls import ca_file, issue

CERT = issue("h2", "h2.test")


def config(origin_url: str, tls: bool = False) -> str:
    tls_line = f'tls = {{ cert = "{CERT[0]}", key = "{CERT[1]}" }}' if tls else ""
    return f"""
[server]
access_log = "off"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
http2 = true
{tls_line}
[[upstreams]]
name = "app"
servers = ["{origin_url}"]
read_timeout = "5s"
[[routes]]
name = "all"
upstream = "app"
"""


class H2Client:
    """An h2c (prior knowledge) client on a blocking socket."""

    def __init__(self, port: int, window: int | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.events = []

    def flush(self):
        self.sock.sendall(self.conn.data_to_send())

    def request(self, path: str, method: str = "GET", body: bytes | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", method), (":path", path),
                                     (":scheme", "http"), (":authority", "h2.test")],
                               end_stream=body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        return sid

    def read(self, until, ack: bool = True, timeout: float = 5.0):
        """Read events until ``until(events)`` is true."""
        deadline = time.monotonic() + timeout
        while not until(self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(self.events)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            for ev in self.conn.receive_data(data):
                self.events.append(ev)
                if ack and isinstance(ev, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self.flush()
        return self.events

    def ended(self, sid):
        return lambda evs: any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                               and e.stream_id == sid for e in evs)

    def body(self, sid) -> bytes:
        return b"".join(e.data for e in self.events
                        if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)

    def status(self, sid) -> bytes:
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                return dict(e.headers)[b":status"]
        return None

    def close(self):
        self.sock.close()


def _curl_speaks_h2() -> bool:
    if shutil.which("curl") is None:
        return False
    version = subprocess.run(["curl", "--version"], capture_output=True, text=True, timeout=10)
    return "HTTP2" in version.stdout


@pytest.mark.skipif(not _curl_speaks_h2(), reason="curl with HTTP/2 missing (.ci/run installs it)")
def test_curl_over_tls_negotiates_h2_and_plain_http11_still_works():
    with Origin(echo) as o, InProcessProxy(config(o.url, tls=True)) as p:
        out = subprocess.run(
            ["curl", "-sS", "--http2", "--cacert", ca_file(), "-w", " %{http_version}",
             "--resolve", f"h2.test:{p.port}:127.0.0.1", f"https://h2.test:{p.port}/a?b=1",
             "-d", "posted"], capture_output=True, timeout=10)
        assert out.stdout == b"posted 2", out.stderr
        assert o.requests[-1].url == b"/a?b=1"
        assert o.requests[-1].header(b"x-forwarded-proto") == b"https"
        out = subprocess.run(
            ["curl", "-sS", "--http1.1", "--cacert", ca_file(), "-w", " %{http_version}",
             "--resolve", f"h2.test:{p.port}:127.0.0.1", f"https://h2.test:{p.port}/one"],
            capture_output=True, timeout=10)
        assert out.stdout == b"/one 1.1", out.stderr


@pytest.mark.skipif(shutil.which("nghttp") is None,
                    reason="nghttp (nghttp2-client) missing (.ci/run installs it)")
def test_nghttp_multiplexes_over_h2c():
    with Origin(echo) as o, InProcessProxy(config(o.url)) as p:
        urls = [f"http://127.0.0.1:{p.port}/n{i}" for i in range(5)]
        out = subprocess.run(["nghttp", "-n", "-s", *urls], capture_output=True, timeout=10)
        assert out.returncode == 0, out.stderr
        assert sorted(r.url for r in o.requests) == [f"/n{i}".encode() for i in range(5)]


def test_streams_are_multiplexed_on_one_connection():
    # Each request waits 0.3 s at the origin: ten of them in about 0.3 s, not 3 s, prove
    # they were served side by side on the one connection.
    with Origin(lambda req: (ok(req.url), 0.3)) as o, InProcessProxy(config(o.url)) as p:
        c = H2Client(p.port)
        t0 = time.monotonic()
        sids = [c.request(f"/s{i}") for i in range(10)]
        c.read(lambda evs: all(c.ended(s)(evs) for s in sids))
        assert time.monotonic() - t0 < 2.0
        assert [c.body(s) for s in sids] == [f"/s{i}".encode() for i in range(10)]
        assert all(c.status(s) == b"200" for s in sids)
        c.close()


def test_an_answer_the_upstream_connection_took_whole_reaches_h2_with_its_fields_and_via():
    # (its field lines are kept as they came for HTTP/1.1; the h2 codec gets them split)
    answer = ok(b"hi", headers=((b"X-A", b"1"), (b"ETag", b'"e"'),
                                (b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5")))
    with Origin(lambda req: answer) as o, InProcessProxy(config(o.url)) as p:
        c = H2Client(p.port)
        sid = c.request("/x")
        c.read(c.ended(sid))
        fields = next(dict(e.headers) for e in c.events
                      if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid)
        assert (fields[b":status"], fields[b"x-a"], fields[b"etag"]) == (b"200", b"1", b'"e"')
        assert fields[b"via"] == b"1.1 edgeproxy"
        assert b"connection" not in fields and b"keep-alive" not in fields
        assert c.body(sid) == b"hi"
        c.close()


def test_flow_control_holds_a_response_until_the_client_opens_its_window():
    big = b"x" * 300_000
    with Origin(lambda req: ok(big)) as o, InProcessProxy(config(o.url)) as p:
        c = H2Client(p.port, window=16384)
        sid = c.request("/big")
        # Without acknowledgements the proxy may send one window (16 KiB), no more.
        c.read(lambda evs: sum(len(e.data) for e in evs
                               if isinstance(e, h2.events.DataReceived)) >= 16384, ack=False)
        time.sleep(0.2)
        c.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            c.read(lambda evs: len(c.body(sid)) > 16384 + 65535, ack=False, timeout=0.5)
        c.sock.settimeout(5)
        c.conn.increment_flow_control_window(1 << 20, sid)
        c.conn.increment_flow_control_window(1 << 20)
        c.flush()
        c.read(c.ended(sid))
        assert c.body(sid) == big
        c.close()


def test_client_reset_aborts_the_upstream_request():
    with Origin(lambda req: (b"", "hang")) as o, InProcessProxy(config(o.url)) as p:
        c = H2Client(p.port)
        sid = c.request("/hang")
        assert wait_until(lambda: len(o.requests) == 1, timeout=5)
        c.conn.reset_stream(sid)
        c.flush()
        assert wait_until(lambda: len(o.lost) >= 1, timeout=5)  # upstream connection cut
        sid2 = c.request("/after")
        assert sid2 > sid
        c.close()


def test_drain_sends_goaway_and_answers_streams_in_flight():
    with Origin(lambda req: ok(b"done")) as o, \
            InProcessProxy(config(o.url)) as p:
        c = H2Client(p.port)
        sid = c.request("/first")
        c.read(c.ended(sid))
        p.loop.call_soon_threadsafe(lambda: p.loop.create_task(p.worker.drain(2.0)))
        c.read(lambda evs: any(isinstance(e, h2.events.ConnectionTerminated) for e in evs))
        goaway = [e for e in c.events if isinstance(e, h2.events.ConnectionTerminated)][0]
        assert goaway.error_code == 0 and goaway.last_stream_id == sid
        c.close()


def test_rapid_reset_is_answered_with_enhance_your_calm():
    with Origin(lambda req: (b"", "hang")) as o, InProcessProxy(config(o.url)) as p:
        c = H2Client(p.port)
        for _ in range(300):
            sid = c.request("/x")
            c.conn.reset_stream(sid)
        c.flush()
        c.read(lambda evs: any(isinstance(e, h2.events.ConnectionTerminated) for e in evs))
        goaway = [e for e in c.events if isinstance(e, h2.events.ConnectionTerminated)][0]
        assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        c.close()


def test_a_header_list_past_the_limit_closes_the_connection():
    with Origin(echo) as o, InProcessProxy(config(o.url)) as p:
        c = H2Client(p.port)
        sid = c.conn.get_next_available_stream_id()
        # 40 KiB of fields (server.max_header_size is 32 KiB); the client's own HPACK
        # encoder does not stop it.
        c.conn.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                  (":authority", "h2.test")]
                            + [(f"x-h{i}", "v" * 1000) for i in range(40)], end_stream=True)
        c.flush()
        with pytest.raises((ConnectionError, TimeoutError)):
            c.read(lambda evs: False, timeout=3)
        assert not o.requests
        c.close()
