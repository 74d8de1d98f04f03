"""Two edgeproxy processes on a real 3-master Redis Cluster: rate limits exact and idempotency
exactly-once with keys over all slots, and slots migrated between masters mid-load lose no
admitted claim (redirects followed: MOVED, ASK, TRYAGAIN)."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.stores.redis_cluster import key_slot
from tests.e2e.test_idempotency import Ledger, post
from tests.support.cli import CliProxy
from tests.support.e2e import proxy_config
from tests.support.origin import Origin
from tests.support.redis_ha import Cluster

LIMIT = """
[routes.rate_limit]
store = "redis"
[[routes.rate_limit.limits]]
name = "l"
algorithm = "fixed_window"
limit = 3
window = "1h"
key = ["header:X-Client"]
"""


@pytest.fixture(scope="module")
def cluster():
    with Cluster() as c:
        yield c


def redis_table(cluster) -> str:
    others = [f"127.0.0.1:{n.port}" for n in cluster.nodes[1:]]
    return (f'\n[redis]\nmode = "cluster"\nurl = "{cluster.url}"\n'
            f"nodes = {others!r}\n".replace("'", '"') + 'timeout = "2s"\n')


def proxies(tmp_path, text):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return CliProxy(tmp_path / "a", text), CliProxy(tmp_path / "b", text)


async def _requests(port: int, client: bytes, n: int, statuses: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(n):
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Client: %s\r\n\r\n" % client)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            statuses.append((client, int(head.split(b" ", 2)[1])))
    finally:
        writer.close()


def test_limits_are_exact_over_two_proxies_with_keys_on_every_master(tmp_path, cluster):
    clients = [b"client-%d" % i for i in range(120)]
    with Origin() as origin:
        text = proxy_config(origin.url, server="workers = 2", extra=LIMIT) + \
            redis_table(cluster)
        a, b = proxies(tmp_path, text)
        with a, b:
            statuses: list = []

            async def load():
                # Each client: 3 requests through each proxy, all clients at once.
                await asyncio.gather(*(_requests(port, c, 3, statuses)
                                       for c in clients for port in (a.port, b.port)))
            asyncio.run(asyncio.wait_for(load(), 60))
    assert len(statuses) == 720
    for client in clients:
        got = sorted(s for c, s in statuses if c == client)
        assert got == [200, 200, 200, 429, 429, 429], (client, got)
    assert len(origin.requests) == 360
    # The limits' keys landed on every master.
    owners = {cluster.owner(key_slot(f"edgeproxy:{{rl:all:l:{c.decode()}}}")).port
              for c in clients}
    assert owners == {n.port for n in cluster.nodes}


def test_exactly_once_over_two_proxies_while_slots_migrate(tmp_path, cluster):
    ledger = Ledger(delay=0.03)
    keys = [b"order-%d" % k for k in range(150)]
    moved = []
    done = threading.Event()

    def migrate():
        # While requests run: move every slot that holds a record on the first master
        # (claims in flight included) to another master, one slot at a time.
        src, dst = cluster.nodes[0], cluster.nodes[1]
        seen = set()
        while not done.is_set():
            found = src.call("SCAN", 0, "MATCH", "edgeproxy:{idem:*", "COUNT", 10000)[1]
            for slot in {key_slot(k) for k in found} - seen:
                seen.add(slot)
                if cluster.owner(slot) is src:
                    cluster.migrate(slot, src, dst)
                    moved.append(slot)
            time.sleep(0.01)

    with Origin(ledger) as origin:
        text = proxy_config(origin.url, extra='[routes.idempotency]\nstore = "redis"\n'
                                              'concurrent = "wait"\nmax_wait = "20s"\n') + \
            redis_table(cluster)
        a, b = proxies(tmp_path, text)
        with a, b:
            ports = (a.port, b.port)

            def send(job):
                key, copy = job
                r = post(ports[copy % 2], key=key, body=b"amount=" + key, timeout=25)
                return key, r.status, r.body, r.header(b"idempotent-replayed")

            mover = threading.Thread(target=migrate, daemon=True)
            mover.start()
            try:
                jobs = [(k, copy) for k in keys for copy in range(2)]
                with ThreadPoolExecutor(24) as pool:
                    first = list(pool.map(send, jobs, timeout=60))
            finally:
                done.set()
                mover.join(30)
            # After the migrations every record is found where its slot went.
            with ThreadPoolExecutor(24) as pool:
                again = list(pool.map(send, [(k, 0) for k in keys], timeout=60))
    assert moved, "no slot was migrated during the load"
    assert ledger.executed == len(keys)
    answers = {}
    for key, status, body, _ in first + again:
        answers.setdefault(key, set()).add((status, body))
    for key, seen in answers.items():
        assert len(seen) == 1, (key, seen)
        status, body = next(iter(seen))
        assert status == 201 and b"amount=" + key in body
    assert all(replayed == b"true" for *_, replayed in again)
