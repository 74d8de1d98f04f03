"""Where the master is, asked of Redis Sentinels, as Redis's guidelines for Sentinel clients
describe (redis.io, "Sentinel client spec"): ask each sentinel in turn for the master's
address by name, put the one that answered first for next time, then check with ROLE that
the server reached really is the master (a failover may be under way).

Discovery runs when a data connection is (re)opened: after it is lost, after a
``-READONLY`` reply (the master was demoted). And while the store is in use, a sentinel is
asked again every CHECK_EVERY seconds on a kept connection: after a failover the old master
may take writes (which the failover then discards) until the sentinels reconfigure it as a
replica, up to ten seconds later; this check moves the connections within a second.
"""


from engine.stores.redis_conn import ErrorReply, Opener, StoreUnavailable

CHECK_EVERY = 1.0  # seconds between two checks of where the master is


class Sentinels:
    def __init__(self, addresses, master_name: str, sentinel_opener: Opener, opener: Opener):
        self.addresses = list(addresses)  # [(host, port)], the one that answered last first
        self.master_name = master_name
        self.sentinel_opener = sentinel_opener  # TLS and the sentinels' own credentials
        self.opener = opener  # the master's
        self._conn = None  # to the sentinel that answered last, kept for the checks
        self._next_check = 0.0
        self._checking = None

    def watch(self, loop, links) -> None:
        """Check where the master is if CHECK_EVERY passed (in the background): the
        connections of ``links`` to another server are dropped."""
        if loop.time() < self._next_check or self._checking is not None:
            return
        self._next_check = loop.time() + CHECK_EVERY
        self._checking = loop.create_task(self._check(loop, links))
        self._checking.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _check(self, loop, links) -> None:
        try:
            addr = await self.master_address(loop)
        except StoreUnavailable:
            return  # the data connection's own failures will tell
        finally:
            self._checking = None
        for link in links:
            conn = link.conn
            if conn is not None and not conn.lost and conn.address != addr:
                conn.abort(f"redis: the sentinels name {addr[0]}:{addr[1]} master now")

    async def master_address(self, loop) -> tuple[str, int]:
        conn = self._conn
        if conn is not None and not conn.lost:
            try:
                reply = await conn.call(loop.time() + self.opener.timeout, "SENTINEL",
                                        "GET-MASTER-ADDR-BY-NAME", self.master_name)
                if reply and reply.__class__ is not ErrorReply:
                    return reply[0].decode(), int(reply[1])
            except StoreUnavailable:
                pass
            conn.abort("sentinel asked again")
        self._conn = None
        errors = []
        for addr in list(self.addresses):
            try:
                conn = await self.sentinel_opener.open(loop, *addr)
            except StoreUnavailable as exc:
                errors.append(str(exc))
                self._last(addr)
                continue
            try:
                reply = await conn.call(loop.time() + self.opener.timeout, "SENTINEL",
                                        "GET-MASTER-ADDR-BY-NAME", self.master_name)
            except StoreUnavailable as exc:
                errors.append(f"sentinel {addr[0]}:{addr[1]}: {exc}")
                self._last(addr)
                conn.abort("sentinel failed")
                continue
            if reply.__class__ is ErrorReply or not reply:
                conn.abort("sentinel failed")
                why = reply.args[0] if reply.__class__ is ErrorReply else \
                    f'knows no master named "{self.master_name}"'
                errors.append(f"sentinel {addr[0]}:{addr[1]}: {why}")
                self._last(addr)
                continue
            self.addresses.remove(addr)
            self.addresses.insert(0, addr)
            if self._conn is None or self._conn.lost:
                self._conn = conn
            else:  # another discovery kept its own meanwhile
                conn.abort("sentinel asked")
            return reply[0].decode(), int(reply[1])
        raise StoreUnavailable(f'no sentinel told where master "{self.master_name}" is: '
                               + "; ".join(errors))

    async def open_master(self, loop):
        host, port = await self.master_address(loop)
        conn = await self.opener.open(loop, host, port)
        try:
            role = await conn.call(loop.time() + self.opener.timeout, "ROLE")
        except StoreUnavailable:
            conn.abort("redis ROLE failed")
            raise
        if role.__class__ is ErrorReply or role[0] != b"master":
            conn.abort("not the master")
            raise StoreUnavailable(f'{host}:{port}, named master "{self.master_name}" by the '
                                   "sentinels, is not a master (failover under way)")
        return conn

    def _last(self, addr) -> None:
        # A sentinel that failed is asked last next time, so a dead one costs one try.
        self.addresses.remove(addr)
        self.addresses.append(addr)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.abort("redis store closed")
            self._conn = None
        if self._checking is not None:
            self._checking.cancel()
