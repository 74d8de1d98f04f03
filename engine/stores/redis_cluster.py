"""Redis Cluster: which master holds a key's slot, from the slot map that CLUSTER SHARDS
(Redis 7; CLUSTER SLOTS before) gives, kept right by the redirects of the cluster spec
(redis.io, "Redis cluster specification"): ``-MOVED`` updates the slot and asks for a new map,
``-ASK`` sends one command to the importing node after ASKING, ``-TRYAGAIN`` (a multi-key
command during a slot migration) retries shortly.

Each master gets its own pipelined connection (two when idempotency asks replicas to
acknowledge, see RedisStore.run). Picking it per request is a CRC16 of the key's hash tag and a
list index; the map is loaded on first use and again, at most every ``MIN_REFRESH`` seconds,
after a redirect or a lost connection.
"""

import asyncio
from binascii import crc_hqx

from engine.stores.redis_conn import ErrorReply, Link, Opener, StoreUnavailable

SLOTS = 16384
MIN_REFRESH = 0.25  # seconds between two slot map loads: a burst of MOVED costs one


def key_slot(key) -> int:
    """The cluster slot of ``key`` (str or bytes): CRC16 (XMODEM, binascii's crc_hqx) of
    the hash tag, the part between the first "{" and the next "}" when not empty, else of
    the whole key; modulo 16384 (cluster spec, "Hash tags")."""
    if key.__class__ is str:
        key = key.encode()
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc_hqx(key, 0) & (SLOTS - 1)


class Cluster:
    def __init__(self, seeds, opener: Opener):
        self.seeds = list(seeds)  # [(host, port)] asked for the map when no master answers
        self.opener = opener
        self.slots = None  # (host, port) of each slot's master, or None; loaded on first use
        self.links = {}  # (host, port, durable) -> Link
        self._loading = None
        self._loaded = float("-inf")
        self._due = None  # the timer of a load put off by MIN_REFRESH

    def ready(self, keys, durable: bool = False):
        """The live connection for ``keys`` if there is one (the hot path), else None."""
        slots = self.slots
        if slots is None:
            return None
        addr = slots[key_slot(keys[0]) if keys else 0]
        if addr is None:
            return None
        link = self.links.get((*addr, durable))
        if link is None:
            return None
        conn = link.conn
        if conn is None or conn.lost:
            return None
        return conn

    async def connection(self, loop, keys, deadline: float, durable: bool = False):
        if self.slots is None:
            await self.load(loop, deadline)
        slot = key_slot(keys[0]) if keys else 0
        addr = self.slots[slot]
        if addr is None:
            self.refresh(loop)
            raise StoreUnavailable(f"redis cluster: no master serves slot {slot}")
        link = self.link(addr, durable)
        if link.conn is not None and link.conn.lost:
            self.refresh(loop)  # a master went away: a failover may have moved its slots
        try:
            return await link.get(loop, deadline)
        except StoreUnavailable:
            self.refresh(loop)
            raise

    def link(self, addr, durable: bool = False) -> Link:
        link = self.links.get((*addr, durable))
        if link is None:
            link = self.links[(*addr, durable)] = Link(
                lambda loop: self.opener.open(loop, *addr))
        return link

    def moved(self, loop, text: str, conn) -> tuple[str, int]:
        """``MOVED <slot> <host>:<port>``: the slot's new master, remembered now; a new map
        is asked for since a MOVED usually means more slots moved."""
        _, slot, addr = text.split(" ", 2)
        addr = self._address(addr, conn)
        if self.slots is not None:
            self.slots[int(slot)] = addr
        self.refresh(loop)
        return addr

    def asked(self, text: str, conn) -> tuple[str, int]:
        """``ASK <slot> <host>:<port>``: where to send this one command (the map stays)."""
        return self._address(text.split(" ", 2)[2], conn)

    @staticmethod
    def _address(text: str, conn) -> tuple[str, int]:
        host, _, port = text.rpartition(":")
        if not host and conn.address is not None:  # "" = the host of the node that said it
            host = conn.address[0]
        return host.strip("[]"), int(port)

    def refresh(self, loop) -> None:
        """Load a new map in the background: now, or when MIN_REFRESH has passed since the
        last load (a burst of MOVED costs one load, and the last one is never dropped)."""
        if self._loading is not None or self._due is not None:
            return
        wait = self._loaded + MIN_REFRESH - loop.time()
        if wait > 0:
            self._due = loop.call_later(wait, self._refresh_due, loop)
            return
        task = self._loading = loop.create_task(self._load(loop))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _refresh_due(self, loop) -> None:
        self._due = None
        self.refresh(loop)

    async def load(self, loop, deadline: float) -> None:
        task = self._loading
        if task is None or task.get_loop() is not loop:
            task = self._loading = loop.create_task(self._load(loop))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(task)
        except TimeoutError:
            raise StoreUnavailable("redis cluster: slot map not loaded in time") from None
        except StoreUnavailable as exc:
            raise exc.__class__(*exc.args) from None

    async def _load(self, loop) -> None:
        try:
            # Masters known now first, then the seeds: a seed may be long gone.
            known = [] if self.slots is None else list(dict.fromkeys(
                a for a in self.slots if a is not None))
            errors = []
            for addr in dict.fromkeys(known + self.seeds):
                try:
                    slots = await self._ask(loop, addr)
                except StoreUnavailable as exc:
                    errors.append(f"{addr[0]}:{addr[1]}: {exc}")
                    continue
                self._apply(slots)
                return
            raise StoreUnavailable("redis cluster: no node gave the slot map: "
                                   + "; ".join(errors))
        finally:
            self._loaded = loop.time()
            if self._loading is asyncio.current_task():
                self._loading = None

    async def _ask(self, loop, addr) -> list:
        conn = await self.link(addr).get(loop, loop.time() + self.opener.timeout)
        deadline = loop.time() + self.opener.timeout
        reply = await conn.call(deadline, "CLUSTER", "SHARDS")
        if reply.__class__ is ErrorReply:
            if "unknown" not in reply.args[0].lower():
                raise StoreUnavailable(f"CLUSTER SHARDS: {reply.args[0]}")
            reply = await conn.call(deadline, "CLUSTER", "SLOTS")  # Redis before 7
            if reply.__class__ is ErrorReply:
                raise StoreUnavailable(f"CLUSTER SLOTS: {reply.args[0]}")
            return slots_from_slots(reply, addr)
        return slots_from_shards(reply, addr, self.opener.tls is not None)

    def close(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if self._loading is not None:
            self._loading.cancel()
        for link in self.links.values():
            link.close()

    def _apply(self, slots: list) -> None:
        self.slots = slots
        masters = set(a for a in slots if a is not None)
        for key in [k for k in self.links if k[:2] not in masters]:
            # A node that serves no slot now (failed, or a replica): its connections go.
            self.links.pop(key).close("redis cluster: node no longer a master")


def _endpoint(value: bytes | None, fallback: bytes | None, asked) -> str:
    # "" means "the host you asked", "?" an endpoint the node does not know (cluster spec).
    if value is None or value == b"?":
        value = fallback
    if not value:
        return asked[0]
    return value.decode()


def slots_from_shards(reply: list, asked, tls: bool) -> list:
    """The slot table of a CLUSTER SHARDS reply: each slot's master, or None."""
    slots = [None] * SLOTS
    for shard in reply:
        shard = dict(zip(shard[::2], shard[1::2], strict=True))
        master = None
        for node in shard[b"nodes"]:
            node = dict(zip(node[::2], node[1::2], strict=True))
            if node.get(b"role") == b"master" and node.get(b"health") != b"fail":
                master = node
        if master is None:
            continue
        port = master.get(b"tls-port") if tls else master.get(b"port")
        port = port or master.get(b"port") or master.get(b"tls-port")
        addr = (_endpoint(master.get(b"endpoint"), master.get(b"ip"), asked), int(port))
        ranges = shard[b"slots"]
        for i in range(0, len(ranges), 2):
            for slot in range(int(ranges[i]), int(ranges[i + 1]) + 1):
                slots[slot] = addr
    return slots


def slots_from_slots(reply: list, asked) -> list:
    """The slot table of a CLUSTER SLOTS reply (Redis 6)."""
    slots = [None] * SLOTS
    for start, end, master, *_ in reply:
        addr = (_endpoint(master[0], None, asked), int(master[1]))
        for slot in range(int(start), int(end) + 1):
            slots[slot] = addr
    return slots
