"""Each balancer end to end: real origins on loopback behind the in-process proxy, a keep-alive
client, and the share each origin got (engine/upstream/balancer.pyx through the engine)."""

import threading
import time

import pytest

from tests.support.e2e import servers_config
from tests.support.client import Conn
from tests.support.origin import Origin, ok
from tests.support.proxy import InProcessProxy


class Fleet:
    """``n`` origins that answer with their index; ``with Fleet(3) as f: f.origins[0]``."""

    def __init__(self, n: int, handler=None):
        self.n = n
        self.handler = handler
        self.origins = []

    def __enter__(self):
        for i in range(self.n):
            name = b"%d" % i
            if self.handler is None:
                def handle(req, name=name):
                    return ok(name)
            else:
                def handle(req, name=name, i=i):
                    return self.handler(i, req)
            self.origins.append(Origin(handle).__enter__())
        return self

    def __exit__(self, *exc):
        for o in self.origins:
            o.__exit__(*exc)

    def servers(self, weights=None, extra: str = "") -> list[str]:
        weights = weights or [1] * self.n
        return [f'{{url = "{o.url}", weight = {w}{extra}}}'
                for o, w in zip(self.origins, weights, strict=True)]

    def counts(self) -> list[int]:
        return [len(o.requests) for o in self.origins]


def answers(port: int, n: int, path: str = "/", headers=()) -> list[bytes]:
    """The bodies of ``n`` GETs on keep-alive connections (each must be a 200); a new one
    every 500 requests, under server.keepalive_requests."""
    out = []
    while len(out) < n:
        with Conn(port) as c:
            for _ in range(min(500, n - len(out))):
                r = c.request("GET", path, headers=headers)
                assert r.status == 200, (r.status, r.body)
                out.append(r.body)
    return out


@pytest.mark.parametrize("balancer,n", [("round_robin", 600), ("least_conn", 600),
                                        ("random_two", 3000)])
def test_weights_3_2_1(balancer, n):
    with Fleet(3) as f, InProcessProxy(servers_config(
            f.servers([3, 2, 1]), f'balancer = "{balancer}"')) as p:
        got = answers(p.port, n)
        shares = [got.count(b"%d" % i) / n for i in range(3)]
        for share, want in zip(shares, (3 / 6, 2 / 6, 1 / 6), strict=True):
            assert abs(share - want) < 0.03, (balancer, shares)
        assert f.counts() == [got.count(b"%d" % i) for i in range(3)]


def test_round_robin_interleaves_exactly():
    # Smooth weighted round robin (nginx): weights 5,1,1 give a a b a c a a, every cycle.
    with Fleet(3) as f, InProcessProxy(servers_config(f.servers([5, 1, 1]))) as p:
        got = b"".join(answers(p.port, 21))
        assert got == b"0010200" * 3


def test_ip_hash_sends_one_client_network_to_one_server():
    with Fleet(4) as f, InProcessProxy(servers_config(
            f.servers(), 'balancer = "ip_hash"')) as p:
        got = set()
        for _ in range(20):  # new connections: stickiness is by address, not connection
            got.update(answers(p.port, 5))
        assert len(got) == 1
        assert sorted(f.counts()) == [0, 0, 0, 100]


def test_hash_on_a_header_is_sticky_per_value_and_spreads_values():
    with Fleet(4) as f, InProcessProxy(servers_config(
            f.servers(), 'balancer = "hash"\nhash_key = ["header:X-User"]')) as p:
        owner = {}
        with Conn(p.port) as c:
            for rnd in range(3):
                for u in range(100):
                    r = c.request("GET", "/", headers=[(b"X-User", b"user-%d" % u)])
                    assert r.status == 200
                    assert owner.setdefault(u, r.body) == r.body, (rnd, u)
        per_server = [list(owner.values()).count(b"%d" % i) for i in range(4)]
        assert all(n >= 10 for n in per_server), per_server
        # Without the header: round robin over all of them.
        assert set(answers(p.port, 8)) == {b"0", b"1", b"2", b"3"}


def owners(port: int, keys: int) -> dict:
    out = {}
    with Conn(port) as c:
        for k in range(keys):
            r = c.request("GET", "/", headers=[(b"X-Key", b"key-%d" % k)])
            assert r.status == 200
            out[k] = r.body
    return out


@pytest.mark.parametrize("consistent", [True, False])
def test_adding_a_server_remaps_keys(consistent):
    """Adding a 5th server to 4: a consistent ring moves about 1/5 of the keys, all of them
    to the new server; nginx's plain hash (crc32 mod total weight) moves most of them."""
    keys = 1000
    with Fleet(5) as f:
        def config(n):
            return servers_config(
                f.servers()[:n], f'balancer = "hash"\nhash_key = ["header:X-Key"]\n'
                                 f'consistent = {str(consistent).lower()}')

        with InProcessProxy(config(4)) as p:
            before = owners(p.port, keys)
            p.swap(config(5))  # a reload: same upstream, one server more
            after = owners(p.port, keys)
    moved = [k for k in range(keys) if before[k] != after[k]]
    share = len(moved) / keys
    assert b"4" not in before.values()
    if consistent:
        assert 0.10 < share < 0.32, share
        assert {after[k] for k in moved} == {b"4"}
    else:
        assert share > 0.6, share


def test_least_conn_prefers_the_idle_server():
    """While one request is held by a slow server, least_conn sends everything else to the
    one with nothing in flight (round robin would alternate)."""
    release = threading.Event()

    def handler(i, req):
        if req.url == b"/slow":
            release.wait(5)
        return ok(b"%d" % i)

    with Fleet(2, handler) as f, InProcessProxy(servers_config(
            f.servers(), 'balancer = "least_conn"')) as p:
        with Conn(p.port) as slow:
            slow.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            deadline = time.monotonic() + 5
            while sum(f.counts()) < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            busy = 0 if f.origins[0].requests else 1
            got = answers(p.port, 30, "/fast")
            release.set()
            assert slow.response().body == b"%d" % busy
        assert set(got) == {b"%d" % (1 - busy)}
        # Both idle again: they share.
        assert set(answers(p.port, 4, "/fast")) == {b"0", b"1"}


@pytest.mark.parametrize("balancer", ["round_robin", "least_conn", "ip_hash", "hash",
                                      "random_two"])
def test_every_balancer_skips_a_server_marked_down(balancer):
    with Fleet(3) as f:
        servers = f.servers()
        servers[1] = servers[1].replace("}", ", down = true}")
        with InProcessProxy(servers_config(servers, f'balancer = "{balancer}"\n'
                                                      'hash_key = ["header:X-K"]')) as p:
            with Conn(p.port) as c:
                for k in range(60):
                    r = c.request("GET", "/", headers=[(b"X-K", b"%d" % k)])
                    assert r.status == 200 and r.body != b"1"
            assert f.counts()[1] == 0


def test_a_full_server_is_skipped_max_conns():
    release = threading.Event()

    def handler(i, req):
        if req.url == b"/slow":
            release.wait(5)
        return ok(b"%d" % i)

    with Fleet(2, handler) as f, InProcessProxy(servers_config(
            f.servers(extra=", max_conns = 1"))) as p:
        with Conn(p.port) as s0, Conn(p.port) as s1:
            s0.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            s1.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            deadline = time.monotonic() + 5
            while sum(f.counts()) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert f.counts() == [1, 1]
            # Both full: nothing may take the request.
            with Conn(p.port) as c:
                r = c.request("GET", "/fast")
                assert r.status == 503, (r.status, r.body)
            release.set()
            assert {s0.response().status, s1.response().status} == {200}
        assert set(answers(p.port, 4, "/fast")) == {b"0", b"1"}
