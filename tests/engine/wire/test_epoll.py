"""engine/wire/epoll.pyx: our own edge-triggered epoll set inside a uvloop loop, with real
loopback sockets on both ends. The e2e suite runs every plain TCP request through it; these
pin the transport contract the codecs rely on where an edge-triggered loop can go wrong: the
last bytes and the FIN in one edge, a read paused across an edge, a send buffer that fills,
a connect that fails or is given up."""

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest
import uvloop

from engine.wire.epoll import Poller

PAYLOAD = bytes(range(256)) * 65536  # 16 MiB: more than the socket buffers on the way hold


class Recorder(asyncio.Protocol):
    """Keeps what a transport did to it, in order."""

    def __init__(self, keep_open_on_eof=False):
        self.transport = None
        self.events = []
        self.data = bytearray()
        self.keep_open_on_eof = keep_open_on_eof
        self.lost = asyncio.get_running_loop().create_future()
        self.got_eof = asyncio.Event()
        self.paused = 0

    def connection_made(self, transport):
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self.events.append("made")

    def data_received(self, data):
        assert type(data) is bytes
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        self.got_eof.set()
        return self.keep_open_on_eof

    def pause_writing(self):
        self.paused += 1
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


class BufferedRecorder(Recorder):
    """A buffered protocol (get_buffer / buffer_updated), as the upstream connection is."""

    def __init__(self):
        super().__init__()
        self.buffer = bytearray(10000)  # (not a power of two: reads end mid-buffer)

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, n):
        self.data += self.buffer[:n]
        # The transport holds its view of the buffer until this returns (as uvloop does): a
        # protocol may hand its buffer to others only while nobody holds it.
        with pytest.raises(BufferError):
            self.buffer.append(0)


def run(main, timeout=20):
    async def bounded():
        return await asyncio.wait_for(main(), timeout)
    return uvloop.run(bounded())


async def listening(poller, make=Recorder, family=socket.AF_INET, host="127.0.0.1"):
    """A server on a free port; the protocols it makes (``make()``) collect in ``served``."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    served = []
    server = poller.serve(sock, lambda: served.append(make()) or served[-1], 128)
    return server, sock.getsockname()[1], served


async def made(served, n=1):
    """Wait until the server made ``n`` protocols (run() bounds the wait)."""
    while len(served) < n:
        await asyncio.sleep(0.01)


async def recv_all(sock, n=None):
    """Read a blocking socket in a thread until EOF (or ``n`` bytes)."""
    def read():
        out = bytearray()
        while n is None or len(out) < n:
            part = sock.recv(1 << 20)
            if not part:
                break
            out += part
        return bytes(out)
    return await asyncio.to_thread(read)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("size", [1, 4096, 262144, 262145, 3 * 262144 + 7])
def test_the_last_bytes_and_the_fin_in_one_edge_are_both_read(size):
    # The peer's bytes and its FIN are both waiting when the edge comes: a read that stops
    # at a short recv() would never see the FIN (no new edge comes for it).
    async def main():
        poller = Poller(asyncio.get_running_loop())
        server, port, accepted = await listening(poller)
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"x" * size)
            c.shutdown(socket.SHUT_WR)
            await made(accepted)
            await asyncio.wait_for(accepted[0].got_eof.wait(), 10)
            assert accepted[0].data == b"x" * size
            assert await accepted[0].lost is None  # (eof_received said close)
            assert accepted[0].events == ["made", "eof", "lost"]
            assert c.recv(10) == b""  # the transport closed its end
        server.close()
        poller.close()
    run(main)


@pytest.mark.parametrize("protocol", [Recorder, BufferedRecorder], ids=["bytes", "buffered"])
def test_megabytes_both_ways_with_flow_control_arrive_intact(protocol):
    async def main():
        poller = Poller(asyncio.get_running_loop())
        server, port, served = await listening(poller, protocol)
        t, client = await poller.connect(protocol, "127.0.0.1", port)
        await made(served)
        # The client writes 16 MiB at once: most of it waits in the transport, which tells
        # its protocol to pause and, once it drained, to resume.
        t.write(PAYLOAD)
        assert client.paused == 1 and t.get_write_buffer_size() > 0
        # The server reads with pauses, so its side's edges come while it is not reading.
        while len(served[0].data) < len(PAYLOAD):
            served[0].transport.pause_reading()
            await asyncio.sleep(0.002)
            served[0].transport.resume_reading()
            await asyncio.sleep(0.002)
        assert served[0].data == PAYLOAD
        assert client.events[-2:] == ["pause", "resume"]
        assert t.get_write_buffer_size() == 0
        # And back, in pieces gathered into one writev (memoryviews among them).
        served[0].transport.writelines([PAYLOAD[:1000], memoryview(PAYLOAD)[1000:], b"end"])
        while len(client.data) < len(PAYLOAD) + 3:
            await asyncio.sleep(0.01)
        assert client.data == PAYLOAD + b"end"
        t.close()
        assert await served[0].lost is None and await client.lost is None
        server.close()
        poller.close()
    run(main)


def test_close_sends_what_is_buffered_first_and_abort_does_not():
    async def main():
        poller = Poller(asyncio.get_running_loop())
        server, port, served = await listening(poller)
        # close(): the client, which reads only after the close, still gets every byte.
        with socket.create_connection(("127.0.0.1", port)) as c:
            await made(served)
            served[0].transport.write(PAYLOAD)
            served[0].transport.close()
            assert served[0].transport.is_closing()
            assert await recv_all(c) == PAYLOAD
            assert await served[0].lost is None
        # abort(): what waits is dropped, the connection goes at once.
        with socket.create_connection(("127.0.0.1", port)) as c:
            await made(served, 2)
            served[1].transport.write(PAYLOAD)
            served[1].transport.abort()
            assert await served[1].lost is None
            try:
                got = await recv_all(c)
            except ConnectionResetError:
                got = b""
            assert len(got) < len(PAYLOAD)
        assert served[0].events.count("lost") == served[1].events.count("lost") == 1
        server.close()
        poller.close()
    run(main)


def test_a_half_closed_connection_is_written_to_until_write_eof():
    async def main():
        poller = Poller(asyncio.get_running_loop())
        server, port, served = await listening(
            poller, lambda: Recorder(keep_open_on_eof=True))
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"question")
            c.shutdown(socket.SHUT_WR)
            await made(served)
            await asyncio.wait_for(served[0].got_eof.wait(), 10)
            t = served[0].transport
            assert not t.is_closing() and t.can_write_eof()
            t.write(b"answer")
            t.write_eof()
            assert await recv_all(c) == b"answer"
            # Reading stays off after the FIN, even when asked to resume.
            t.resume_reading()
            await asyncio.sleep(0.05)
            assert served[0].events == ["made", "eof"]
            t.close()
            assert await served[0].lost is None
        server.close()
        poller.close()
    run(main)


def test_a_reset_reaches_the_protocol_as_its_error():
    async def main():
        poller = Poller(asyncio.get_running_loop())
        server, port, served = await listening(poller)
        c = socket.create_connection(("127.0.0.1", port))
        await made(served)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()  # (linger 0: a reset)
        assert isinstance(await served[0].lost, ConnectionResetError)
        server.close()
        poller.close()
    run(main)


def test_an_exception_in_the_protocol_ends_its_connection_and_is_reported():
    class Broken(Recorder):
        def data_received(self, data):
            raise ValueError("broken protocol")

    async def main():
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda loop, context: reported.append(context))
        poller = Poller(loop)
        server, port, served = await listening(poller, Broken)
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"hello")
            await made(served)
            exc = await served[0].lost
            assert isinstance(exc, ValueError)
            assert [type(r["exception"]) for r in reported] == [ValueError]
            assert await recv_all(c) == b""
        server.close()
        poller.close()
    run(main)


def test_connect_by_name_reports_the_peer_and_a_refused_one_leaks_nothing():
    async def main():
        poller = Poller(asyncio.get_running_loop())
        server, port, served = await listening(poller)
        t, client = await poller.connect(Recorder, "localhost", port)
        await made(served)
        assert t.get_extra_info("peername")[1] == port
        assert served[0].transport.get_extra_info("peername") == \
            t.get_extra_info("socket").getsockname()
        t.close()
        await client.lost
        await served[0].lost
        server.close()  # (the port is free now: a connect is refused)
        before = open_fds()
        for _ in range(20):
            with pytest.raises(ConnectionRefusedError):
                await poller.connect(Recorder, "127.0.0.1", port)
        assert open_fds() == before
        poller.close()
    run(main)


def test_a_connect_given_up_closes_its_socket():
    async def main():
        poller = Poller(asyncio.get_running_loop())
        server, port, _ = await listening(poller)
        before = open_fds()
        for _ in range(20):
            task = asyncio.ensure_future(poller.connect(Recorder, "127.0.0.1", port))
            await asyncio.sleep(0)  # (the connect is under way)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # What the server accepted closes when it reads its peer's FIN.
        for _ in range(500):
            if open_fds() == before:
                break
            await asyncio.sleep(0.01)
        assert open_fds() == before
        server.close()
        poller.close()
    run(main)


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_an_ipv6_listener_accepts_and_reports_its_peer():
    async def main():
        poller = Poller(asyncio.get_running_loop())
        try:
            server, port, served = await listening(poller, Recorder, socket.AF_INET6, "::1")
        except OSError:
            pytest.skip("no IPv6 loopback here")
        t, client = await poller.connect(Recorder, "::1", port)
        await made(served)
        assert served[0].transport.get_extra_info("peername")[:2] == \
            t.get_extra_info("sockname")[:2]
        t.write(b"over six")
        while served[0].data != b"over six":
            await asyncio.sleep(0.01)
        t.close()
        await client.lost
        server.close()
        poller.close()
    run(main)


SERVER_SHORT_OF_DESCRIPTORS = r"""
import asyncio, os, resource, socket, sys
import uvloop
import engine.wire.epoll as epoll

epoll.ACCEPT_RETRY_DELAY = 0.05

class Hello(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"hi")
    def data_received(self, data):
        pass

async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(
        lambda loop, context: print("reported:", context["message"], flush=True))
    poller = epoll.Poller(loop)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    poller.serve(sock, Hello, 128)
    room = int(sys.argv[1])
    used = len(os.listdir("/proc/self/fd")) - 1  # (the listing's own descriptor)
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + room, resource.getrlimit(
        resource.RLIMIT_NOFILE)[1]))
    print("port", sock.getsockname()[1], flush=True)
    await asyncio.sleep(30)  # (the test kills us long before)

uvloop.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_out_of_descriptors_accepting_rests_and_resumes():
    # accept() failing with EMFILE (the connection stays in the backlog, the listening
    # socket stays readable): the server reports it, rests instead of spinning on it, and
    # takes the waiting connections once descriptors are free again.
    room = 3
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SHORT_OF_DESCRIPTORS, str(room)],
                            stdout=subprocess.PIPE, text=True)
    clients = []
    try:
        port = int(proc.stdout.readline().split()[1])
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5)
                   for _ in range(2 * room)]

        def greeted(c, wait):
            c.settimeout(wait)
            try:
                return c.recv(2) == b"hi"
            except TimeoutError:
                return False
        first = [c for c in clients if greeted(c, 0.5)]
        assert len(first) == room
        assert proc.stdout.readline().strip() == "reported: accept() out of system resource"
        # Resting, not spinning on a listening socket that stays readable.
        spent = cpu_seconds(proc.pid)
        time.sleep(0.5)
        assert cpu_seconds(proc.pid) - spent < 0.2
        for c in first:
            c.close()
        rest = [c for c in clients if c not in first]
        assert all(greeted(c, 5) for c in rest)
        assert proc.poll() is None
    finally:
        for c in clients:
            c.close()
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_closing_the_poller_ends_its_connections_and_a_connect_under_way():
    async def main():
        before = open_fds()
        poller = Poller(asyncio.get_running_loop())
        server, port, served = await listening(poller)
        t, client = await poller.connect(Recorder, "127.0.0.1", port)
        t.write(PAYLOAD)  # (most of it waits in the transport)
        under_way = asyncio.ensure_future(poller.connect(Recorder, "127.0.0.1", port))
        await asyncio.sleep(0)
        poller.close()
        with pytest.raises(ConnectionAbortedError):
            await under_way
        assert await client.lost is None
        assert [await p.lost for p in served] == [None] * len(served)
        await asyncio.sleep(0)  # (the last connection_lost callbacks close their sockets)
        assert open_fds() == before
    run(main)


def test_a_peer_reset_before_the_accept_has_no_address_and_no_error():
    async def main():
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda loop, context: reported.append(context))
        poller = Poller(loop)
        server, port, served = await listening(poller)
        # Connected and reset while the loop, which accepts, does not run.
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
        await made(served)
        assert served[0].peer is None
        assert isinstance(await served[0].lost, ConnectionResetError)
        assert reported == []
        server.close()
        poller.close()
    run(main)


def test_what_waits_in_the_transport_cannot_change_and_nothing_follows_write_eof():
    async def main():
        poller = Poller(asyncio.get_running_loop())
        server, port, served = await listening(poller)
        with socket.create_connection(("127.0.0.1", port)) as c:
            await made(served)
            t = served[0].transport
            data = bytearray(PAYLOAD)
            t.write(data)
            assert t.get_write_buffer_size() > 0
            with pytest.raises(BufferError):  # (it would change what is still to be sent)
                del data[1000:]
            t.write_eof()
            with pytest.raises(RuntimeError):
                t.write(b"more")
            assert await recv_all(c) == PAYLOAD
            c.close()
        t.close()
        await served[0].lost
        server.close()
        poller.close()
    run(main)
