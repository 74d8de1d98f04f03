"""Balancers (engine/upstream/balancer.pyx): distribution, stickiness, skipping, in process.

The request context is a stand-in with the attributes a balancer reads (client_ip, headers,
path, query, tried); servers are real Server objects whose state (down, active) the tests set.
"""

import ipaddress
import random
import zlib
from collections import Counter
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.upstream.balancer import (BALANCERS, Hash, IpHash, LeastConn, RandomTwo,
                                      RoundRobin)
from engine.chain.keys import compile_key
from engine.upstream.pool import Pool
from engine.upstream.upstream import Server
from ext.hashring import HashRing

NOW = 100.0


class Ctx:
    __slots__ = ("client_ip", "headers", "path", "query", "route", "tried")

    def __init__(self, ip="10.1.2.3", user=None, tried=None):
        self.client_ip = ip
        self.headers = [(b"X-User", user.encode())] if user is not None else []
        self.path = "/"
        self.query = b""
        self.route = None
        self.tried = tried


def servers(*weights, port=80):
    return [Server(f"http://10.0.0.{i}:{port}", f"10.0.0.{i}", port, w, Pool(32, 60.0, 1000))
            for i, w in enumerate(weights)]


def cfg(balancer="round_robin", key=("header:X-User",), consistent=False):
    return SimpleNamespace(balancer=balancer, hash_key=key, consistent=consistent)


def make(name, srv, **kw):
    c = cfg(name, **kw)
    b = BALANCERS[name](srv, c, compile_key(tuple(c.hash_key)))
    if isinstance(b, RandomTwo):
        b.seed(1)
    return b


def picks(balancer, n, ctx=None):
    return [balancer.pick(ctx if ctx is not None else Ctx(), NOW) for _ in range(n)]


def shares(srv, chosen):
    count = Counter(chosen)
    return [count[s] / len(chosen) for s in srv]


ALL = ["round_robin", "least_conn", "ip_hash", "hash", "hash-consistent", "random_two"]


def build(kind, srv):
    if kind == "hash-consistent":
        return make("hash", srv, consistent=True)
    return make(kind, srv)


def test_registry_matches_config_choices():
    assert set(BALANCERS) == {"round_robin", "least_conn", "ip_hash", "hash", "random_two"}
    assert BALANCERS["hash"] is Hash and BALANCERS["ip_hash"] is IpHash
    assert BALANCERS["least_conn"] is LeastConn and BALANCERS["round_robin"] is RoundRobin


# -- every balancer: skipping -------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL)
def test_down_servers_are_skipped(kind):
    srv = servers(1, 1, 1)
    srv[1].down = True
    b = build(kind, srv)
    chosen = picks(b, 300) + [b.pick(Ctx(ip=f"10.{i}.0.1", user=str(i)), NOW)
                              for i in range(300)]
    assert srv[1] not in chosen and None not in chosen


@pytest.mark.parametrize("kind", ALL)
def test_full_servers_are_skipped(kind):
    srv = servers(1, 1, 1)
    srv[0].max_conns = 2
    srv[0].active = 2
    b = build(kind, srv)
    chosen = [b.pick(Ctx(ip=f"10.{i}.0.1", user=str(i)), NOW) for i in range(300)]
    assert srv[0] not in chosen and None not in chosen


@pytest.mark.parametrize("kind", ALL)
def test_tried_servers_are_skipped(kind):
    srv = servers(1, 1, 1)
    b = build(kind, srv)
    for i in range(300):
        ctx = Ctx(ip=f"10.{i}.0.1", user=str(i))
        first = b.pick(ctx, NOW)
        ctx.tried = [first]
        second = b.pick(ctx, NOW)
        ctx.tried.append(second)
        third = b.pick(ctx, NOW)
        assert len({first, second, third}) == 3
        ctx.tried.append(third)
        assert b.pick(ctx, NOW) is None


@pytest.mark.parametrize("kind", ALL)
def test_all_unavailable_is_none(kind):
    srv = servers(1, 2, 3)
    for s in srv:
        s.down = True
    b = build(kind, srv)
    assert b.pick(Ctx(user="u"), NOW) is None and b.pick(None, NOW) is None


@pytest.mark.parametrize("kind", ALL)
def test_no_servers_is_none(kind):
    assert build(kind, []).pick(Ctx(user="u"), NOW) is None


@pytest.mark.parametrize("kind", ALL)
def test_single_server(kind):
    srv = servers(3)
    b = build(kind, srv)
    assert picks(b, 5, Ctx(user="u")) == [srv[0]] * 5
    srv[0].down = True
    assert b.pick(Ctx(user="u"), NOW) is None


@pytest.mark.parametrize("kind", ALL)
def test_no_request_context(kind):
    # Benchmarks pick without a request: the hash balancers go round robin.
    srv = servers(1, 1)
    b = build(kind, srv)
    assert set(b.pick(None, NOW) for _ in range(50)) <= set(srv)


def test_zero_weight_is_refused():
    with pytest.raises(ValueError, match="weight"):
        RoundRobin(servers(1, 0))


# -- round robin -----------------------------------------------------------------------------

def test_round_robin_weights_exactly():
    srv = servers(3, 2, 1)
    assert shares(srv, picks(make("round_robin", srv), 6000)) == [0.5, 2 / 6, 1 / 6]


def test_round_robin_is_smooth():
    srv = servers(5, 1, 1)
    a, b, c = srv
    chosen = picks(make("round_robin", srv), 70)
    assert chosen[:7] == [a, a, b, a, c, a, a]  # nginx's sequence
    assert chosen == chosen[:7] * 10
    run = max(len(r) for r in "".join("x" if s is a else "." for s in chosen).split("."))
    assert run < 5


def test_round_robin_skipping_keeps_the_others_ratio_and_interleaving():
    srv = servers(5, 1, 1)
    a, b, c = srv
    rr = make("round_robin", srv)
    picks(rr, 3)
    c.down = True
    chosen = picks(rr, 600)
    assert shares(srv, chosen) == pytest.approx([5 / 6, 1 / 6, 0], abs=0.01)
    runs = "".join("x" if s is a else "." for s in chosen).split(".")
    assert max(len(r) for r in runs) <= 5
    c.down = False
    assert shares(srv, picks(rr, 7000)) == pytest.approx([5 / 7, 1 / 7, 1 / 7], abs=0.01)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10), st.booleans()), min_size=1, max_size=8),
       st.integers(0, 30))
def test_round_robin_every_cycle_is_exact(spec, warmup):
    # Smooth WRR: each run of W picks (W = the available weights' sum) gives every available
    # server exactly its weight, however many picks came before.
    srv = servers(*[w for w, _ in spec])
    for s, (_, down) in zip(srv, spec, strict=True):
        s.down = down
    up = [s for s in srv if not s.down]
    rr = make("round_robin", srv)
    if not up:
        assert rr.pick(None, NOW) is None
        return
    total = sum(s.weight for s in up)
    picks(rr, warmup)
    for _ in range(2):
        count = Counter(picks(rr, total))
        assert {s: count[s] for s in up} == {s: s.weight for s in up}


# -- least connections -----------------------------------------------------------------------

def test_least_conn_prefers_fewest_in_flight():
    srv = servers(1, 1, 1)
    srv[0].active, srv[1].active, srv[2].active = 4, 1, 2
    assert set(picks(make("least_conn", srv), 20)) == {srv[1]}


def test_least_conn_compares_per_weight():
    srv = servers(3, 1)
    srv[0].active, srv[1].active = 2, 1  # 2/3 < 1/1
    assert set(picks(make("least_conn", srv), 20)) == {srv[0]}
    srv[0].active = 4  # 4/3 > 1/1
    assert set(picks(make("least_conn", srv), 20)) == {srv[1]}


def test_least_conn_ties_go_weighted_round_robin():
    srv = servers(3, 2, 1)
    assert shares(srv, picks(make("least_conn", srv), 6000)) == [0.5, 2 / 6, 1 / 6]
    srv[0].active, srv[1].active, srv[2].active = 3, 2, 1  # equal per weight
    chosen = picks(make("least_conn", srv), 60)
    assert shares(srv, chosen) == [0.5, 2 / 6, 1 / 6]
    assert chosen[:3] != [srv[0]] * 3


def test_least_conn_follows_the_load():
    # Each pick takes a request; one in two finishes: load stays spread evenly.
    srv = servers(1, 1, 1, 1)
    lc = make("least_conn", srv)
    rng = random.Random(3)
    for _ in range(2000):
        lc.pick(None, NOW).active += 1
        busy = [s for s in srv if s.active]
        rng.choice(busy).active -= 1
        assert max(s.active for s in srv) - min(s.active for s in srv) <= 1


# -- ip_hash ---------------------------------------------------------------------------------

def nginx_ip_hash(ip, weights, tries=0):
    """ngx_http_upstream_get_ip_hash_peer, without the skipping: the server for try n."""
    addr = ipaddress.ip_address(ip).packed
    addr = addr[:3] if len(addr) == 4 else addr
    h = 89
    for _ in range(tries + 1):
        for byte in addr:
            h = (h * 113 + byte) % 6271
    w = h % sum(weights)
    for i, weight in enumerate(weights):
        if w < weight:
            return i
        w -= weight


def test_ip_hash_is_nginxs():
    weights = (3, 2, 1, 1)
    srv = servers(*weights)
    b = make("ip_hash", srv)
    rng = random.Random(5)
    for _ in range(500):
        ip = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        assert b.pick(Ctx(ip=ip), NOW) is srv[nginx_ip_hash(ip, weights)]
    for _ in range(200):
        ip = str(ipaddress.IPv6Address(rng.getrandbits(128)))
        assert b.pick(Ctx(ip=ip), NOW) is srv[nginx_ip_hash(ip, weights)]


def test_ip_hash_sticks_per_slash_24():
    srv = servers(1, 1, 1, 1, 1)
    b = make("ip_hash", srv)
    for net in range(50):
        chosen = {b.pick(Ctx(ip=f"192.168.{net}.{host}"), NOW) for host in range(0, 256, 7)}
        assert len(chosen) == 1


def test_ip_hash_ipv4_mapped_ipv6_is_ipv4():
    b = make("ip_hash", servers(1, 1, 1, 1, 1))
    for net in range(30):
        assert b.pick(Ctx(ip=f"::ffff:10.0.{net}.9"), NOW) is b.pick(Ctx(ip=f"10.0.{net}.1"), NOW)


def test_ip_hash_spreads_networks_by_weight():
    srv = servers(3, 2, 1)
    b = make("ip_hash", srv)
    chosen = [b.pick(Ctx(ip=f"{a}.{c}.{d}.1"), NOW)
              for a in range(1, 200, 7) for c in range(0, 256, 9) for d in range(0, 256, 23)]
    assert shares(srv, chosen) == pytest.approx([0.5, 2 / 6, 1 / 6], abs=0.04)


def test_ip_hash_rehashes_when_the_server_is_skipped():
    weights = (1, 1, 1, 1)
    srv = servers(*weights)
    b = make("ip_hash", srv)
    for net in range(40):
        ip = f"172.16.{net}.1"
        home = srv[nginx_ip_hash(ip, weights)]
        home.down = True
        second = next(srv[i] for t in range(1, 21)
                      if not srv[i := nginx_ip_hash(ip, weights, t)].down)
        assert b.pick(Ctx(ip=ip), NOW) is second
        assert b.pick(Ctx(ip=ip), NOW) is second  # sticky while home is down
        home.down = False
        assert b.pick(Ctx(ip=ip), NOW) is home


@pytest.mark.parametrize("ip", ["unix:", "", None, "fe80::1%eth0", "1.2.3.4\udc80"],
                         ids=["unix", "empty", "none", "zone-id", "surrogate"])
def test_ip_hash_without_an_address_goes_round_robin(ip):
    srv = servers(5, 1, 1)
    a, b_, c = srv
    b = make("ip_hash", srv)
    assert picks(b, 7, Ctx(ip=ip)) == [a, a, b_, a, c, a, a]


# -- hash (nginx, not consistent) ------------------------------------------------------------

def nginx_hash(key, weights, tries=0):
    """ngx_http_upstream_get_hash_peer, without the skipping: the server for try n."""
    acc = 0
    for rehash in range(tries + 1):
        prefix = str(rehash).encode() if rehash else b""
        acc += (zlib.crc32(prefix + key.encode()) >> 16) & 0x7FFF
    w = acc % sum(weights)
    for i, weight in enumerate(weights):
        if w < weight:
            return i
        w -= weight


def test_hash_is_nginxs():
    weights = (3, 2, 1, 1)
    srv = servers(*weights)
    b = make("hash", srv)
    for i in range(1000):
        assert b.pick(Ctx(user=f"user{i}"), NOW) is srv[nginx_hash(f"user{i}", weights)]


def test_hash_sticks_and_spreads_by_weight():
    srv = servers(3, 2, 1)
    b = make("hash", srv)
    first = [b.pick(Ctx(user=f"u{i}"), NOW) for i in range(6000)]
    assert [b.pick(Ctx(user=f"u{i}"), NOW) for i in range(6000)] == first
    assert shares(srv, first) == pytest.approx([0.5, 2 / 6, 1 / 6], abs=0.03)


def test_hash_rehashes_when_the_server_is_skipped():
    weights = (1, 1, 1)
    srv = servers(*weights)
    b = make("hash", srv)
    for i in range(40):
        key = f"k{i}"
        home = srv[nginx_hash(key, weights)]
        home.down = True
        second = next(srv[j] for t in range(1, 21)
                      if not srv[j := nginx_hash(key, weights, t)].down)
        assert b.pick(Ctx(user=key), NOW) is second
        home.down = False


@pytest.mark.parametrize("consistent", [False, True], ids=["mod", "consistent"])
def test_hash_without_the_key_goes_round_robin(consistent):
    srv = servers(5, 1, 1)
    a, b_, c = srv
    b = make("hash", srv, consistent=consistent)
    assert picks(b, 7, Ctx(user=None)) == [a, a, b_, a, c, a, a]
    assert picks(b, 7, Ctx(user="")) == [a, a, b_, a, c, a, a]  # nginx: empty key


@pytest.mark.parametrize("consistent", [False, True], ids=["mod", "consistent"])
def test_hash_on_composite_key(consistent):
    srv = servers(1, 1, 1, 1)
    b = make("hash", srv, key=("ip", "header:X-User"), consistent=consistent)
    for i in range(200):
        one = b.pick(Ctx(ip="10.0.0.1", user=f"u{i}"), NOW)
        assert b.pick(Ctx(ip="10.0.0.1", user=f"u{i}"), NOW) is one
    assert len({b.pick(Ctx(ip="10.0.0.1", user=f"u{i}"), NOW) for i in range(200)}) == 4


# -- hash consistent -------------------------------------------------------------------------

KEYS = [f"user-{i}" for i in range(10_000)]


def owners(b, keys=KEYS):
    return [b.pick(Ctx(user=k), NOW).url for k in keys]


def test_consistent_hash_is_the_ketama_ring():
    srv = servers(2, 1, 1, 3)
    b = make("hash", srv, consistent=True)
    ring = HashRing()
    for i, s in enumerate(srv):
        ring.add(i, s.weight, f"{s.host}\0{s.port}".encode())
    for key in KEYS[:2000]:
        assert b.pick(Ctx(user=key), NOW) is srv[ring.lookup(key.encode())]


def test_consistent_hash_sticks_and_spreads_by_weight():
    srv = servers(3, 1)
    b = make("hash", srv, consistent=True)
    first = owners(b)
    assert owners(b) == first
    assert first.count(srv[0].url) / len(KEYS) == pytest.approx(0.75, abs=0.05)


def test_consistent_hash_add_one_server_to_ten():
    ten = servers(*[1] * 10)
    eleven = servers(*[1] * 11)
    before = owners(make("hash", ten, consistent=True))
    after = owners(make("hash", eleven, consistent=True))
    moved = [a for b, a in zip(before, after, strict=True) if b != a]
    assert set(moved) == {eleven[10].url}
    assert len(moved) / len(KEYS) == pytest.approx(1 / 11, abs=0.03)


def test_consistent_hash_remove_one_server_of_ten():
    ten = servers(*[1] * 10)
    nine = ten[:4] + ten[5:]  # a new config without 10.0.0.4: indexes shift, points do not
    before = owners(make("hash", ten, consistent=True))
    after = owners(make("hash", nine, consistent=True))
    for b, a in zip(before, after, strict=True):
        assert a == b or b == ten[4].url
    assert before.count(ten[4].url) / len(KEYS) == pytest.approx(1 / 10, abs=0.04)


def test_consistent_hash_down_server_hands_keys_along_the_ring():
    srv = servers(1, 1, 1, 1, 1)
    b = make("hash", srv, consistent=True)
    before = owners(b)
    srv[2].down = True
    after = owners(b)
    rehomed = make("hash", srv[:2] + srv[3:], consistent=True)
    expect = owners(rehomed)
    for k, (was, now, want) in enumerate(zip(before, after, expect, strict=True)):
        assert now == (want if was == srv[2].url else was), KEYS[k]
    srv[2].down = False
    assert owners(b) == before


def test_consistent_hash_retry_walks_the_ring():
    srv = servers(1, 1, 1, 1)
    b = make("hash", srv, consistent=True)
    ring = HashRing()
    for i, s in enumerate(srv):
        ring.add(i, 1, f"{s.host}\0{s.port}".encode())
    for key in KEYS[:300]:
        ctx = Ctx(user=key)
        order = []
        while (s := b.pick(ctx, NOW)) is not None:
            order.append(s)
            ctx.tried = order[:]
        assert order == [srv[i] for i in ring.nodes_from(key.encode())]


def test_consistent_hash_ring_is_bounded():
    srv = servers(*[1000] * 20)  # 20,000 weight units * 160 would be 3.2M points
    b = make("hash", srv, consistent=True)
    assert len(b.ring) <= 1 << 20
    assert len({b.pick(Ctx(user=k), NOW) for k in KEYS[:2000]}) == 20


# -- random two ------------------------------------------------------------------------------

def test_random_two_idle_servers_share_by_weight():
    srv = servers(3, 2, 1)
    assert shares(srv, picks(make("random_two", srv), 12000)) == pytest.approx(
        [0.5, 2 / 6, 1 / 6], abs=0.02)


def test_random_two_never_picks_the_most_loaded():
    srv = servers(1, 1, 1, 1)
    srv[2].active = 5
    chosen = picks(make("random_two", srv), 2000)
    assert srv[2] not in chosen
    assert shares(srv, chosen)[:2] == pytest.approx([1 / 3, 1 / 3], abs=0.05)


def test_random_two_compares_per_weight():
    srv = servers(4, 1)
    srv[0].active, srv[1].active = 3, 1  # 3/4 < 1/1
    assert set(picks(make("random_two", srv), 200)) == {srv[0]}


def test_random_two_keeps_load_even():
    srv = servers(*[1] * 8)
    r2 = make("random_two", srv)
    rng = random.Random(9)
    for _ in range(5000):
        r2.pick(None, NOW).active += 1
        if rng.random() < 0.5:
            rng.choice([s for s in srv if s.active]).active -= 1
    loads = [s.active for s in srv]
    assert max(loads) - min(loads) <= 4


def test_random_two_with_most_servers_down():
    srv = servers(*[1] * 50)
    for s in srv[2:]:
        s.down = True
    chosen = picks(make("random_two", srv), 400)
    assert set(chosen) == set(srv[:2])
    srv[1].down = True
    assert set(picks(make("random_two", srv), 50)) == {srv[0]}


def test_random_two_seed_repeats():
    srv = servers(1, 1, 1, 1)
    a, b = make("random_two", srv), make("random_two", srv)
    assert picks(a, 100) == picks(b, 100)
