"""ext.hashring.HashRing against its reference (tests/reference/hashring.py): one suite, two
impls, plus a hypothesis differential test."""

import bisect
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext.hashring import HashRing as CyHashRing
from ext.hashring import crc32 as cy_crc32
from tests.reference.hashring import HashRing as RefHashRing

IMPLS = [pytest.param(CyHashRing, id="cython"), pytest.param(RefHashRing, id="reference")]
KEYS = [f"user-{i}".encode() for i in range(10_000)]


@pytest.fixture(params=IMPLS)
def Ring(request):
    return request.param


def owners(ring, keys=KEYS):
    return [ring.lookup(k) for k in keys]


def test_crc32_is_zlibs():
    for data in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        assert cy_crc32(data) == zlib.crc32(data)
    assert cy_crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value


def test_empty_ring(Ring):
    ring = Ring()
    assert ring.lookup(b"k") == -1
    assert ring.nodes_from(b"k") == []
    assert len(ring) == 0


def test_points_per_weight(Ring):
    ring = Ring()
    ring.add(0, 1)
    ring.add(1, 3)
    assert len(ring) == 4 * 160
    assert ring.nodes == {0: 1, 1: 3}
    assert 1 in ring and 2 not in ring


def test_points_are_nginx_ketama_chain(Ring):
    # ngx_http_upstream_init_chash: a node's points are one CRC-32 chain over
    # host "\0" port || the previous point (4 bytes, little-endian), starting from 0; a key goes
    # to the first point >= crc32(key), wrapping around.
    names = {3: b"10.0.0.1\x00" + b"8080", 9: b"10.0.0.2\x00" + b"8080"}
    points = []
    for node, name in names.items():
        prev = 0
        for _ in range(160):
            prev = zlib.crc32(name + struct.pack("<I", prev))
            points.append((prev, node))
    points.sort()
    hashes = [h for h, _ in points]
    ring = Ring()
    for node, name in names.items():
        ring.add(node, 1, name)
    for key in KEYS[:2000]:
        i = bisect.bisect_left(hashes, zlib.crc32(key)) % len(points)
        assert ring.lookup(key) == points[i][1]


def test_add_replaces_a_node(Ring):
    ring = Ring()
    ring.add(0, 2)
    ring.add(0, 1)
    assert len(ring) == 160 and ring.nodes == {0: 1}


@pytest.mark.parametrize("args", [(-1, 1), (0, 0), (2**31, 1)], ids=["neg-node", "zero-weight",
                                                                    "node-too-big"])
def test_bad_add(Ring, args):
    with pytest.raises(ValueError):
        Ring().add(*args)


def test_max_points_bound(Ring):
    ring = Ring(points_per_weight=10, max_points=25)
    ring.add(0, 2)
    with pytest.raises(ValueError):
        ring.add(1, 1)
    assert len(ring) == 20 and 1 not in ring
    ring.add(0, 1)  # replacing counts the node's old points out first
    ring.add(1, 1)
    assert len(ring) == 20


def test_remove(Ring):
    ring = Ring()
    ring.add(0, 1)
    ring.add(1, 1)
    ring.remove(0)
    assert len(ring) == 160 and set(owners(ring, KEYS[:100])) == {1}
    with pytest.raises(KeyError):
        ring.remove(0)


def test_nodes_from_is_failover_order(Ring):
    ring = Ring()
    for node in range(8):
        ring.add(node, 1 + node % 3)
    for key in KEYS[:200]:
        order = ring.nodes_from(key)
        assert order[0] == ring.lookup(key)
        assert sorted(order) == list(range(8))


def test_collision_goes_to_smaller_node(Ring):
    ring = Ring()
    ring.add(5, 1, b"same")
    ring.add(2, 1, b"same")  # identical points
    assert set(owners(ring, KEYS[:500])) == {2}
    assert ring.nodes_from(b"k") == [2, 5]
    ring.remove(2)
    assert set(owners(ring, KEYS[:500])) == {5}


def test_insertion_order_does_not_matter(Ring):
    a, b = Ring(), Ring()
    for node in range(10):
        a.add(node, 1 + node % 2)
    for node in reversed(range(10)):
        b.add(node, 1 + node % 2)
    assert owners(a, KEYS[:2000]) == owners(b, KEYS[:2000])


def test_weights_share_keys(Ring):
    ring = Ring()
    ring.add(0, 3)
    ring.add(1, 1)
    share = owners(ring).count(0) / len(KEYS)
    assert 0.70 < share < 0.80


def test_adding_one_of_eleven_moves_its_share_only(Ring):
    ring = Ring()
    for node in range(10):
        ring.add(node, 1)
    before = owners(ring)
    ring.add(10, 1)
    after = owners(ring)
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert all(a == 10 for _, a in moved)
    assert 0.06 < len(moved) / len(KEYS) < 0.125  # 1/11 = 0.091


def test_removing_moves_only_the_removed_nodes_keys(Ring):
    ring = Ring()
    for node in range(10):
        ring.add(node, 1)
    before = owners(ring)
    second = {k: ring.nodes_from(k)[1] for k, o in zip(KEYS, before, strict=True) if o == 3}
    ring.remove(3)
    after = owners(ring)
    for key, b, a in zip(KEYS, before, after, strict=True):
        if b == 3:
            assert a == second[key]  # the failover order's next node
        else:
            assert a == b


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 12), st.integers(1, 4)),
        st.tuples(st.just("remove"), st.integers(0, 12), st.just(0)),
    ),
    max_size=20,
)


@settings(max_examples=60, deadline=None)
@given(ppw=st.integers(1, 12), ops=OPS,
       keys=st.lists(st.binary(max_size=12), min_size=1, max_size=30))
def test_matches_reference(ppw, ops, keys):
    cy, ref = CyHashRing(ppw), RefHashRing(ppw)
    for op, node, weight in ops:
        if op == "add":
            cy.add(node, weight)
            ref.add(node, weight)
        elif node in ref:
            cy.remove(node)
            ref.remove(node)
        assert len(cy) == len(ref)
        assert cy.nodes == ref.nodes
        for key in keys:
            assert cy.lookup(key) == ref.lookup(key)
            assert cy.nodes_from(key) == ref.nodes_from(key)
