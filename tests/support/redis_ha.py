"""Highly available Redis for the tests, all real servers on loopback ports: a TLS server with
certificates made for the test (trustme), a master with a replica watched by three sentinels,
and a Redis Cluster of three masters made with ``redis-cli --cluster create``. Every wait is
bounded and ``close()`` kills every process it started, failed start included."""

import os
import shutil
import subprocess

import pytest

from tests.support.e2e import wait_for
from tests.support.redis import RedisServer, cluster_port


def redis_version() -> tuple:
    binary = RedisServer().binary if shutil.which("redis-server") is None else "redis-server"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
    v = out.stdout.split("v=")[1].split()[0]
    return tuple(int(x) for x in v.split("."))


def need_redis(major: int, what: str) -> None:
    if redis_version()[0] < major:
        pytest.skip(f"{what} needs redis-server {major}+")


def info(server: RedisServer, section: str = "all") -> dict:
    out = {}
    for line in server.command("INFO", section).decode(errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out[name] = value.strip()
    return out


class Certs:
    """A CA, a server certificate for 127.0.0.1 and "localhost", and a client certificate,
    as PEM files in ``dir``."""

    def __init__(self, dir):
        import trustme
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost", "redis.test")
        client = ca.issue_cert("edgeproxy-client")
        self.ca = os.path.join(dir, "ca.pem")
        self.cert = os.path.join(dir, "server.pem")
        self.key = os.path.join(dir, "server.key")
        self.client_cert = os.path.join(dir, "client.pem")
        self.client_key = os.path.join(dir, "client.key")
        ca.cert_pem.write_to_path(self.ca)
        server.cert_chain_pems[0].write_to_path(self.cert)
        server.private_key_pem.write_to_path(self.key)
        client.cert_chain_pems[0].write_to_path(self.client_cert)
        client.private_key_pem.write_to_path(self.client_key)
        other = trustme.CA()  # a CA that signed nothing of this server's
        self.other_ca = os.path.join(dir, "other-ca.pem")
        other.cert_pem.write_to_path(self.other_ca)

    def server_args(self, clients: str = "yes") -> list:
        return ["--tls-cert-file", self.cert, "--tls-key-file", self.key,
                "--tls-ca-cert-file", self.ca, "--tls-auth-clients", clients]


class _Closed:
    """``with X() as x:`` closes x at the end (the fixtures' form)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Replicated(_Closed):
    """A master and one replica of it, in sync."""

    def __init__(self):
        self.master = self.replica = None
        try:
            # No diskless-sync delay (Redis 7 waits 5 s for more replicas by default).
            self.master = RedisServer(["--repl-diskless-sync-delay", "0"],
                                      name="master").start()
            self.replica = RedisServer(["--replicaof", "127.0.0.1", str(self.master.port)],
                                       name="replica").start()
            self.wait_in_sync()
        except BaseException:
            self.close()
            raise

    def wait_in_sync(self) -> None:
        """Until the replica has every write the master took."""
        def synced():
            r = info(self.replica, "replication")
            return r.get("master_link_status") == "up" and r.get("slave_repl_offset") == \
                info(self.master, "replication").get("master_repl_offset")
        wait_for(synced, 10, "replica in sync")

    def close(self) -> None:
        for server in (self.replica, self.master):
            if server is not None:
                server.close()


class SentinelGroup(Replicated):
    """One master, one replica, three sentinels (quorum 2) watching "edgemaster", with short
    timeouts so a failover takes about a second or two."""

    NAME = "edgemaster"

    def __init__(self, down_after_ms: int = 600):
        self.sentinels = []
        super().__init__()
        try:
            conf = (f"sentinel monitor {self.NAME} 127.0.0.1 {self.master.port} 2\n"
                    f"sentinel down-after-milliseconds {self.NAME} {down_after_ms}\n"
                    f"sentinel failover-timeout {self.NAME} 4000\n"
                    f"sentinel parallel-syncs {self.NAME} 1\n")
            for _ in range(3):
                self.sentinels.append(RedisServer(["--sentinel"], name="sentinel",
                                                  conf=conf).start())
            # Each sentinel knows the replica and the two other sentinels: ready to fail over.
            wait_for(lambda: all(self._sees_all(s) for s in self.sentinels), 15,
                     "sentinels discovered each other and the replica")
        except BaseException:
            self.close()
            raise

    def _sees_all(self, sentinel) -> bool:
        reply = sentinel.command("SENTINEL", "MASTER", self.NAME).decode(errors="replace")
        fields = reply.split("\r\n")

        def field(name):
            return fields[fields.index(name) + 2] if name in fields else None
        return field("num-slaves") == "1" and field("num-other-sentinels") == "2"

    @property
    def addresses(self) -> list:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def master_port(self) -> int:
        reply = self.sentinels[0].command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.NAME)
        return int(reply.split(b"\r\n")[-2])

    def close(self) -> None:
        for server in self.sentinels:
            server.close()
        super().close()


class Cluster(_Closed):
    """A Redis Cluster of ``masters`` masters and no replicas (enough to prove slots,
    redirects and migrations; a replica per master would double the start time)."""

    def __init__(self, masters: int = 3):
        self.nodes = []
        try:
            for _ in range(masters):
                self.nodes.append(RedisServer(
                    ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000"], name="cluster",
                    port=cluster_port()).start())
            cli = shutil.which("redis-cli")
            if cli is None:
                pytest.skip("no redis-cli to create the cluster")
            subprocess.run([cli, "--cluster", "create",
                            *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-yes"],
                           check=True, capture_output=True, timeout=30)
            wait_for(lambda: all(b"cluster_state:ok" in n.command("CLUSTER", "INFO")
                                 for n in self.nodes), 15, "cluster state ok")
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def node_id(self, node) -> str:
        return node.call("CLUSTER", "MYID").decode()

    def owner(self, slot: int):
        """The node serving ``slot`` now (as the first node sees it)."""
        for start, end, master, *_ in self.nodes[0].call("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == master[1])
        raise LookupError(slot)

    def migrate(self, slot: int, src, dst, finish: bool = True) -> None:
        """Move ``slot`` from ``src`` to ``dst`` as redis-cli --cluster reshard does: mark it
        importing and migrating, MIGRATE its keys, then give it to ``dst`` everywhere."""
        dst.call("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(src))
        src.call("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(dst))
        if finish:
            self.move_keys(slot, src, dst)
            self.finish(slot, dst)

    def move_keys(self, slot: int, src, dst) -> int:
        moved = 0
        while True:
            keys = src.call("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                return moved
            reply = src.call("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *keys)
            assert reply == b"OK", reply
            moved += len(keys)

    def finish(self, slot: int, dst) -> None:
        owner = self.node_id(dst)
        for node in [dst, *(n for n in self.nodes if n is not dst)]:
            node.call("CLUSTER", "SETSLOT", slot, "NODE", owner)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
