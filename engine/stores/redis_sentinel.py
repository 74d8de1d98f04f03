"""Where the master is, asked of Redis Sentinels, as Redis's guidelines for Sentinel clients
describe (redis.io, "Sentinel client spec"): ask each sentinel in turn for the master's
address by name, put the one that answered first for next time, then check with ROLE that
the server reached really is the master (a failover may be under way).

Discovery runs only when the data connection is (re)opened: after it is lost, after a
``-READONLY`` reply (the master was demoted), never per request.
"""

from engine.stores.redis_conn import ErrorReply, Opener, StoreUnavailable


class Sentinels:
    def __init__(self, addresses, master_name: str, sentinel_opener: Opener, opener: Opener):
        self.addresses = list(addresses)  # [(host, port)], the one that answered last first
        self.master_name = master_name
        self.sentinel_opener = sentinel_opener  # TLS and the sentinels' own credentials
        self.opener = opener  # the master's

    async def master_address(self, loop) -> tuple[str, int]:
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
                continue
            finally:
                conn.abort("sentinel asked")
            if reply.__class__ is ErrorReply or not reply:
                why = reply.args[0] if reply.__class__ is ErrorReply else \
                    f'knows no master named "{self.master_name}"'
                errors.append(f"sentinel {addr[0]}:{addr[1]}: {why}")
                self._last(addr)
                continue
            self.addresses.remove(addr)
            self.addresses.insert(0, addr)
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
