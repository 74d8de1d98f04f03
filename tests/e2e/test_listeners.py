"""Listeners end to end: X-Forwarded-Proto from the listener a request came in on, several
listeners at once (in-process and through the real CLI), and reloads that add, remove or
refuse a listener without dropping the others."""

import socket
import threading

import pytest

from tests.support.cli import CliProxy, check
from tests.support.client import Conn
from tests.support.e2e import wait_until
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy

PLAIN = '[[listeners]]\nname = "plain"\nlisten = "127.0.0.1:{port}"\n'
BEHIND_LB = ('[[listeners]]\nname = "behind-lb"\nlisten = "127.0.0.1:{port}"\n'
             'forwarded_proto = "https"\n')


def config(origin_url: str, listeners: str, *, workers: int = 1, server: str = "") -> str:
    return f"""
[server]
access_log = "off"
workers = {workers}
watch_config = false
drain_timeout = "5s"
{server}

{listeners}

[[upstreams]]
name = "app"
servers = ["{origin_url}"]

[[routes]]
name = "all"
upstream = "app"
"""


def proto_seen(origin: Origin, port: int, headers=()) -> bytes:
    """The X-Forwarded-Proto the origin got for one request on ``port``."""
    before = len(origin.requests)
    with Conn(port) as c:
        assert c.request("GET", "/", headers=headers).status == 200
    return origin.requests[before].header(b"x-forwarded-proto")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# -- in-process: one worker, two listeners -------------------------------------------------

@pytest.mark.parametrize("server, sent, plain, behind_lb", [
    pytest.param("", (), b"http", b"https", id="no-header"),
    pytest.param("", ((b"X-Forwarded-Proto", b"http"),), b"http", b"https",
                 id="untrusted-client-header-replaced"),
    pytest.param('trusted_proxies = ["127.0.0.1/32"]', ((b"X-Forwarded-Proto", b"wss"),),
                 b"wss", b"wss", id="trusted-proxy-header-kept"),
])
def test_each_listener_sends_its_own_x_forwarded_proto(server, sent, plain, behind_lb):
    text = config("{origin}", PLAIN.format(port=0) + BEHIND_LB.format(port=0), server=server)
    with Origin(lambda req: ok()) as origin, \
            InProcessProxy(text.replace("{origin}", origin.url)) as proxy:
        assert set(proxy.ports) == {"plain", "behind-lb"}
        assert proto_seen(origin, proxy.ports["plain"], sent) == plain
        assert proto_seen(origin, proxy.ports["behind-lb"], sent) == behind_lb


def test_server_listen_alone_still_serves_plain_http_in_process():
    with Origin(lambda req: ok()) as origin, \
            InProcessProxy(config(origin.url, "", server='listen = "127.0.0.1:8080"')) as proxy:
        assert list(proxy.ports) == ["default"]
        assert proto_seen(origin, proxy.port) == b"http"


def test_a_burst_of_new_connections_is_accepted_several_per_loop_turn():
    # libuv accepts one connection per readiness of a listening descriptor: there, a burst
    # (clients reconnecting together after keepalive_requests) would wait in the backlog one
    # loop turn per connection, requests already sent. A plain listener is our Poller's,
    # which accepts up to 64 per readiness.
    burst = 40
    seen = []  # connections made, sampled once per loop turn
    done = threading.Event()
    clients = []
    with Origin(lambda req: ok()) as origin, \
            InProcessProxy(config(origin.url, PLAIN.format(port=0))) as proxy:

        def sample():
            # (a callback scheduled from a callback runs on the next turn)
            seen.append(len(proxy.worker.conns))
            if seen[-1] >= burst or len(seen) > 4 * burst:
                done.set()
            else:
                proxy.loop.call_soon(sample)

        def connect_while_the_loop_waits():
            # The kernel completes each handshake; none is accepted before this returns.
            clients.extend(socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
                           for _ in range(burst))
            proxy.loop.call_soon(sample)

        try:
            proxy.call(connect_while_the_loop_waits)
            assert done.wait(10)
            assert seen[-1] == burst
            # All in one turn, then one turn to see them.
            assert len(seen) <= 2, seen
        finally:
            for c in clients:
                c.close()


# -- the real CLI ------------------------------------------------------------------------

def test_two_listeners_through_the_cli_each_with_its_proto_and_listed_in_status(tmp_path):
    text = PLAIN.format(port=0) + BEHIND_LB.format(port=0)
    with Origin(lambda req: ok()) as origin, \
            CliProxy(tmp_path, config(origin.url, text, workers=2)) as p:
        assert set(p.ports) == {"plain", "behind-lb"}
        for _ in range(4):  # fresh connections: both workers accept on both listeners
            assert proto_seen(origin, p.ports["plain"]) == b"http"
            assert proto_seen(origin, p.ports["behind-lb"]) == b"https"
        _, status = p.admin("GET", "/status")
        assert status["listeners"] == [
            {"name": "plain", "listen": "127.0.0.1:0",
             "address": f"127.0.0.1:{p.ports['plain']}", "forwarded_proto": "http",
             "sockets": 2},
            {"name": "behind-lb", "listen": "127.0.0.1:0",
             "address": f"127.0.0.1:{p.ports['behind-lb']}", "forwarded_proto": "https",
             "sockets": 2},
        ]
        assert status["listen"] == f"127.0.0.1:{p.ports['plain']}"
        assert p.stop() == 0


def test_server_listen_alone_still_works_through_the_cli(tmp_path):
    with Origin(lambda req: ok()) as origin, CliProxy(tmp_path, config(origin.url, "")) as p:
        assert list(p.ports) == ["default"]
        assert proto_seen(origin, p.port) == b"http"
        _, status = p.admin("GET", "/status")
        assert [(x["name"], x["address"], x["forwarded_proto"]) for x in status["listeners"]] \
            == [("default", f"127.0.0.1:{p.port}", "http")]


def test_a_reload_adding_a_listener_serves_on_it_without_dropping_the_first(tmp_path):
    first, added = free_port(), free_port()
    failures = []
    stop = threading.Event()
    with Origin(lambda req: ok()) as origin, \
            CliProxy(tmp_path, config(origin.url, PLAIN.format(port=first), workers=2)) as p:
        def client():  # fresh connections to the first listener all through the reload
            while not stop.is_set():
                try:
                    with Conn(first) as c:
                        r = c.request("GET", "/")
                        if r.status != 200:
                            failures.append(r.status)
                except OSError as exc:
                    failures.append(repr(exc))

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            p.write_config(config(origin.url, PLAIN.format(port=first)
                                  + BEHIND_LB.format(port=added), workers=2))
            code, result = p.admin("POST", "/reload")
            assert code == 200 and result["workers_pending"] == [], result
            assert wait_until(lambda: [w["state"] for w in p.admin(
                "GET", "/status")[1]["workers"]] == ["serving"] * 2)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        # The first listener's sockets outlived the old workers (the log says why not).
        assert failures == [], p.read_stderr().decode(errors="replace")[-4000:]
        assert proto_seen(origin, added) == b"https"
        assert proto_seen(origin, first) == b"http"
        _, status = p.admin("GET", "/status")
        assert [x["name"] for x in status["listeners"]] == ["plain", "behind-lb"]

        # Removing it again: its port stops accepting once the old workers drain.
        p.write_config(config(origin.url, PLAIN.format(port=first), workers=2))
        assert p.admin("POST", "/reload")[0] == 200
        assert wait_until(lambda: refused(added))
        assert proto_seen(origin, first) == b"http"
        assert p.stop() == 0


def test_a_reload_changing_forwarded_proto_keeps_the_port(tmp_path):
    port = free_port()
    with Origin(lambda req: ok()) as origin, \
            CliProxy(tmp_path, config(origin.url, PLAIN.format(port=port))) as p:
        assert proto_seen(origin, port) == b"http"
        p.write_config(config(origin.url, PLAIN.format(port=port)
                              + 'forwarded_proto = "https"\n'))
        code, result = p.admin("POST", "/reload")
        assert code == 200 and result["workers_pending"] == []
        # An old worker may still accept a connection until its drain begins (it serves
        # with the config it has): the new proto is the answer once they stopped.
        assert wait_until(lambda: proto_seen(origin, port) == b"https", 5.0)


def test_a_reload_with_a_busy_listener_address_is_refused_naming_it(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    first = free_port()
    try:
        with Origin(lambda req: ok()) as origin, \
                CliProxy(tmp_path, config(origin.url, PLAIN.format(port=first))) as p:
            p.write_config(config(origin.url, PLAIN.format(port=first)
                                  + BEHIND_LB.format(port=busy)))
            code, result = p.admin("POST", "/reload")
            assert code == 422 and result["error"]["code"] == "invalid_config"
            assert result["error"]["errors"] == [{
                "path": "listeners[1].listen",
                "message": f"cannot listen on 127.0.0.1:{busy}: Address already in use"}]
            _, status = p.admin("GET", "/status")
            assert status["generation"] == 1
            assert [x["name"] for x in status["listeners"]] == ["plain"]
            assert proto_seen(origin, first) == b"http"  # the old config still serves
            assert p.stop() == 0
    finally:
        holder.close()


def test_a_reload_with_a_bad_listener_table_is_refused_naming_the_key_path(tmp_path):
    first = free_port()
    with Origin(lambda req: ok()) as origin, \
            CliProxy(tmp_path, config(origin.url, PLAIN.format(port=first))) as p:
        p.write_config(config(origin.url, PLAIN.format(port=first)
                              + PLAIN.format(port=free_port())))
        code, result = p.admin("POST", "/reload")
        assert code == 422
        assert result["error"]["errors"] == [{
            "path": "listeners[1].name",
            "message": 'duplicate listener name "plain" (also listeners[0])'}]
        assert proto_seen(origin, first) == b"http"


def test_check_refuses_server_listen_together_with_listeners(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(config("http://127.0.0.1:1", PLAIN.format(port=0),
                           server='listen = "127.0.0.1:0"'))
    result = check(path)
    assert result.returncode == 1
    assert b"server.listen: cannot be used together with [[listeners]]" in result.stderr


def test_run_refuses_a_busy_listener_naming_it(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        proxy = CliProxy(tmp_path, config("http://127.0.0.1:1", PLAIN.format(port=0)
                                          + BEHIND_LB.format(port=busy)), start_timeout=10)
        with pytest.raises(RuntimeError) as info:
            with proxy:
                pass
        assert (f"cannot listen on 127.0.0.1:{busy}: Address already in use "
                "(listeners[1].listen)") in str(info.value)
    finally:
        holder.close()
