"""Plain TCP sockets of the data plane, served by an epoll set of our own inside the uvloop loop.

Why not uvloop's own TCP transports: per request of a small answer, measured against nginx
(README, "Where the time goes"), libuv's level-triggered epoll polls each socket it read
once more at its next wait, it reads and writes through read()/write() (the file layer)
where nginx calls recv()/writev(), and uvloop takes the GIL back for every libuv callback,
two per read of a buffered protocol. Here one epoll set, edge-triggered as nginx's is, is
one reader of the uvloop loop: a batch of ready sockets costs one callback, and each socket
is read with recv() and written with send()/writev() without letting go of the GIL (the
calls never block).

The transports keep asyncio's Transport contract, so the codecs and the upstream connection
do not know which loop serves them: connection_made, then data_received (or get_buffer /
buffer_updated for a buffered protocol), eof_received, and connection_lost exactly once, in a
callback of its own; pause_writing / resume_writing at the write buffer's limits (asyncio's
defaults: 64 KiB and a quarter of it); pause_reading / resume_reading. Timers, TLS, Redis and
everything else stay uvloop's.

Edge-triggered reading (epoll(7)): an event comes when bytes arrive, not while they wait, so
a read continues until recv() returns less than it asked for, or, when the edge says the
peer shut its side (EPOLLRDHUP) or failed, until recv() reports that; a socket whose reading
was paused, or that filled the buffer several times in a row, is read again from a callback
of its own (resume_reading, _READ_ROUNDS) instead of waiting for an edge that may not come.
Writing: send() or writev() at once; what the kernel did not take waits, in order, for the
edge that says there is room again (a full send buffer raises one when it drains).
"""

import os
import socket

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport (
    EAGAIN, EBADF, ECONNABORTED, EINPROGRESS, EINTR, EMFILE, ENFILE, ENOBUFS, ENOMEM, EPROTO, errno,
)
from libc.string cimport memset

cdef extern from "<sys/epoll.h>" nogil:
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLLET

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct sockaddr:
        unsigned short sa_family
    cdef struct sockaddr_storage:
        unsigned short ss_family
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int accept4(int fd, sockaddr *addr, socklen_t *addrlen, int flags)
    int getpeername(int fd, sockaddr *addr, socklen_t *addrlen)
    int getsockopt(int fd, int level, int name, void *value, socklen_t *length)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t length)
    int shutdown(int fd, int how)
    enum:
        AF_INET
        MSG_NOSIGNAL
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_ERROR
        SHUT_WR

cdef extern from "<netinet/in.h>" nogil:
    cdef struct in_addr:
        pass
    cdef struct sockaddr_in:
        unsigned short sin_port
        in_addr sin_addr
    unsigned short ntohs(unsigned short)
    enum:
        IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)

cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int count)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef enum:
    _READ_SIZE = 262144  # a read into bytes for data_received: as uvloop's receive buffer
    _READ_ROUNDS = 4  # full reads in a row before the socket waits for a callback of its own
    _IOV_MAX = 64  # buffers one writev sends
    _ACCEPT_MAX = 64  # connections one readiness of a listening socket accepts
    _HIGH_WATER = 65536  # asyncio's default write buffer limits
    # transport states
    _CONNECTING = 0
    _ATTACHING = 1  # connected, its protocol not made yet
    _OPEN = 2

cdef unsigned int _SOCKET_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
cdef unsigned int _READ_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP
cdef unsigned int _WRITE_EVENTS = EPOLLOUT | EPOLLERR | EPOLLHUP
cdef unsigned int _END_EVENTS = EPOLLRDHUP | EPOLLERR | EPOLLHUP

# Where reads for data_received land before their bytes object is made. One per process is
# enough: nothing between the recv() and the copy lets go of the GIL, so the loops of other
# threads cannot use it meanwhile.
cdef char _scratch[_READ_SIZE]

# When accept() runs out of descriptors or memory, the listening socket rests this long
# (as asyncio's servers do) rather than waking the loop for a connection it cannot take.
ACCEPT_RETRY_DELAY = 1.0


cdef inline object _os_error(int err):
    return OSError(err, os.strerror(err))  # (the subclass of ``err``: ConnectionResetError...)


cdef class Handle:
    def __cinit__(self):
        self.fd = -1

    cdef int register(self, unsigned int events) except -1:
        cdef epoll_event ev
        memset(&ev, 0, sizeof(ev))
        ev.events = events
        ev.data.ptr = <void*>self
        if epoll_ctl(self.poller.epfd, EPOLL_CTL_ADD, self.fd, &ev) < 0:
            raise _os_error(errno)
        self.registered = True
        self.poller.handles.add(self)
        return 0

    cdef int unregister(self) except -1:
        if self.registered:
            self.registered = False
            epoll_ctl(self.poller.epfd, EPOLL_CTL_DEL, self.fd, NULL)
            self.poller.handles.discard(self)
            if self.poller.in_batch:
                # Its events may still wait in the batch being run: it must outlive them.
                self.poller.retired.append(self)
        return 0

    cdef int on_events(self, unsigned int events) except -1:
        return 0

    cdef int shut(self) except -1:
        return self.unregister()


@cython.final
cdef class Poller:
    """An epoll set of plain TCP sockets, read as one reader of ``loop``."""

    def __cinit__(self, loop):
        self.loop = loop
        self.handles = set()
        self.retired = []
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise _os_error(errno)
        loop.add_reader(self.epfd, self._ready)

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)

    def close(self):
        """Stop: listening sockets close, connections are aborted (each protocol told, as
        for an abort), a connect under way fails."""
        if self.epfd >= 0:
            for handle in list(self.handles):
                (<Handle>handle).shut()
            self.loop.remove_reader(self.epfd)
            close(self.epfd)
            self.epfd = -1

    def _ready(self):
        self.in_batch = True
        try:
            self.run_batches()
        finally:
            self.in_batch = False
            del self.retired[:]

    cdef int run_batches(self) except -1:
        cdef int n, i
        cdef Handle handle
        while True:
            n = epoll_wait(self.epfd, self.events, _EVENTS, 0)
            if n < 0:
                if errno == EINTR:
                    continue
                break
            for i in range(n):
                handle = <Handle>self.events[i].data.ptr
                if not handle.registered:
                    continue  # (closed by an earlier event of this batch)
                try:
                    handle.on_events(self.events[i].events)
                except Exception as exc:
                    # Not one lost event of the batch: with edge triggering it would not
                    # come back.
                    self.loop.call_exception_handler({
                        "message": "epoll event handler failed", "exception": exc})
            if self.retired:
                del self.retired[:]
            if n < _EVENTS:
                return 0

    def serve(self, sock, factory, int backlog):
        """Accept on the listening TCP socket ``sock``, each connection served by a protocol
        from ``factory``; returns the server (``close()`` stops it and closes ``sock``)."""
        cdef Acceptor acceptor = Acceptor.__new__(Acceptor)
        sock.setblocking(False)
        sock.listen(backlog)
        acceptor.poller = self
        acceptor.sock = sock
        acceptor.fd = sock.fileno()
        acceptor.factory = factory
        # Level-triggered: one readiness accepts at most _ACCEPT_MAX, the rest wake us again.
        acceptor.register(EPOLLIN)
        return acceptor

    async def connect(self, factory, str host, int port):
        """A TCP connection to ``host``:``port`` served by a protocol from ``factory``, as
        ``loop.create_connection`` (without TLS) returns it: (transport, protocol). Each
        address ``host`` resolves to is tried in turn; the error of the last one is raised."""
        cdef SocketTransport t
        if _dotted_quad(host):
            infos = [(socket.AF_INET, (host, port))]
        else:
            infos = [(family, addr) for family, _, _, _, addr in await self.loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM)]
        error = None
        for family, addr in infos:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = sock.connect_ex(addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            if err != 0 and err != EINPROGRESS:
                sock.close()
                error = _os_error(err)
                continue
            t = SocketTransport.__new__(SocketTransport)
            t.poller = self
            t.fd = sock.detach()
            t.state = _CONNECTING
            t.waiter = self.loop.create_future()
            try:
                t.register(_SOCKET_EVENTS)
                await t.waiter
            except OSError as exc:  # (refused, unreachable...)
                t.unregister()
                t.close_fd()
                error = exc
                continue
            except BaseException:  # (cancelled: the connect timed out)
                t.unregister()
                t.close_fd()
                raise
            finally:
                t.waiter = None
            if t.fd < 0:  # (the poller closed after the connect was done)
                error = ConnectionAbortedError("the poller closed")
                continue
            try:
                protocol = factory()
            except BaseException:
                t.unregister()
                t.close_fd()
                raise
            t.open(self, t.fd, protocol)
            return t, protocol
        raise error if error is not None else OSError(f"no address for {host!r}")


cdef inline bint _dotted_quad(str host):
    # An IPv4 literal needs no resolver (a hostname goes through the loop's getaddrinfo).
    return host.count(".") == 3 and host.replace(".", "").isdigit()


@cython.final
cdef class SocketTransport(Handle):
    """A connected TCP socket in a Poller's set, with asyncio's Transport methods."""

    cdef int open(self, Poller poller, int fd, object protocol) except -1:
        self.poller = poller
        self.fd = fd
        self.pending = []
        self.high = _HIGH_WATER
        self.low = _HIGH_WATER // 4
        self.set_protocol(protocol)
        connecting = self.state == _ATTACHING
        self.state = _OPEN
        self.reading = True
        if not connecting:
            try:
                self.register(_SOCKET_EVENTS)  # (reports bytes already waiting, as an edge)
            except BaseException:
                self.close_fd()
                raise
        try:
            protocol.connection_made(self)
        except Exception as exc:
            return self.fail(exc)
        if connecting and self.reading:
            # Bytes that came while the connect's waiter woke its task raised their edge
            # then, before there was a protocol to read for.
            try:
                self.read(True)
            except Exception as exc:
                return self.fail(exc)
        return 0

    cdef int on_events(self, unsigned int events) except -1:
        cdef int err = 0
        cdef socklen_t size = sizeof(err)
        if self.state != _OPEN:
            if self.state == _CONNECTING:
                # connect(2), EINPROGRESS: writable once it is done, SO_ERROR says how.
                if getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &size) < 0:
                    err = errno
                if self.waiter.done():
                    return 0  # (its task was cancelled: the connect timed out)
                if err:
                    self.waiter.set_exception(_os_error(err))
                else:
                    self.state = _ATTACHING
                    self.waiter.set_result(None)
            return 0
        try:
            if self.pending and events & _WRITE_EVENTS:
                self.flush()
            if self.reading and events & _READ_EVENTS:
                # The peer's FIN (or an error) raised its edge already, maybe with the last
                # bytes: read on to it, as nginx does on EPOLLRDHUP.
                self.read(events & _END_EVENTS != 0)
        except Exception as exc:
            self.fail(exc)
        return 0

    cdef int read(self, bint to_the_end) except -1:
        cdef ssize_t n
        cdef Py_ssize_t size
        cdef int err, rounds = 0
        cdef Py_buffer view
        while self.reading:  # (a callback may pause reading or close)
            if self.buffered:
                PyObject_GetBuffer(self._get_buffer(-1), &view, PyBUF_WRITABLE)
                try:
                    size = view.len
                    if size == 0:
                        raise RuntimeError("get_buffer() returned an empty buffer")
                    n = recv(self.fd, view.buf, size, 0)
                    err = errno
                    if n > 0:
                        # (the view is held until the protocol is done with the bytes, as
                        # uvloop does: a protocol may share its buffer while nobody holds it)
                        self._buffer_updated(n)
                finally:
                    PyBuffer_Release(&view)
            else:
                size = _READ_SIZE
                n = recv(self.fd, _scratch, size, 0)
                err = errno
                if n > 0:
                    self._data_received(PyBytes_FromStringAndSize(_scratch, n))
            if n > 0:
                if n < size and not to_the_end:
                    return 0  # all there was: new bytes raise a new edge
                rounds += 1
                if rounds == _READ_ROUNDS:
                    self.poller.loop.call_soon(self._read_again)  # (others' turn first)
                    return 0
            elif n == 0:
                # The peer's FIN. A protocol that wants to go on writing says so (asyncio).
                self.reading = False
                self.at_eof = True
                if not self.protocol.eof_received():
                    self.close()
                return 0
            elif err == EAGAIN:
                return 0
            elif err != EINTR:
                return self.fail(_os_error(err))
        return 0

    def _read_again(self):
        if self.reading:
            try:
                self.read(True)  # (whatever edge there was came before)
            except Exception as exc:
                self.fail(exc)

    def write(self, data):
        cdef Py_ssize_t n, size
        cdef int err
        cdef Py_buffer view
        if self.eof_wanted:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.closing:
            return  # (asyncio drops these too)
        if self.pending:
            self.queue(data, 0)
            return self.check_high()
        while True:
            if type(data) is bytes:
                size = PyBytes_GET_SIZE(data)
                n = send(self.fd, PyBytes_AS_STRING(data), size, MSG_NOSIGNAL)
                err = errno
            else:
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
                size = view.len
                n = send(self.fd, view.buf, size, MSG_NOSIGNAL)
                err = errno
                PyBuffer_Release(&view)
            if n == size:
                return
            if n >= 0:
                break
            if err == EAGAIN:
                n = 0
                break
            if err != EINTR:
                self.fail(_os_error(err))
                return
        # The send buffer is full: the rest goes when epoll says it has room (an edge comes,
        # since this send found no room).
        self.queue(data, n)
        self.check_high()

    def writelines(self, list_of_data):
        if self.eof_wanted:
            raise RuntimeError("Cannot call writelines() after write_eof()")
        if self.closing:
            return
        was_empty = not self.pending
        for data in list_of_data:
            self.queue(data, 0)
        if was_empty:
            self.flush()
        self.check_high()

    cdef int queue(self, object data, Py_ssize_t sent) except -1:
        cdef Py_ssize_t size
        if type(data) is not bytes:
            # A view holds an export of the caller's buffer until it is sent, so the caller
            # cannot resize it meanwhile (a bytearray raises BufferError, as with uvloop).
            data = memoryview(data).cast("B")
        size = len(data) - sent
        if size <= 0:
            return 0
        if not self.pending:
            self.head_sent = sent
        self.pending.append(data)
        self.pending_size += size
        return 0

    cdef int check_high(self) except -1:
        if self.pending_size > self.high and not self.writes_paused:
            self.writes_paused = True
            self.flow_control(self.protocol.pause_writing)
        return 0

    cdef int flush(self) except -1:
        cdef iovec iov[_IOV_MAX]
        cdef Py_buffer views[_IOV_MAX]
        cdef Py_ssize_t sizes[_IOV_MAX]
        cdef int count, i, err
        cdef ssize_t n, total
        cdef Py_ssize_t done
        cdef bint full
        cdef list pending = self.pending
        while pending:
            count = min(len(pending), _IOV_MAX)
            total = -self.head_sent
            for i in range(count):
                # (bytes, or a view that holds its export: neither can fail here or change)
                PyObject_GetBuffer(pending[i], &views[i], PyBUF_SIMPLE)
                iov[i].iov_base = views[i].buf
                iov[i].iov_len = sizes[i] = views[i].len
                total += sizes[i]
            iov[0].iov_base = <char*>iov[0].iov_base + self.head_sent
            iov[0].iov_len -= self.head_sent
            # (writev has no MSG_NOSIGNAL: Python ignores SIGPIPE, an EPIPE comes instead)
            n = writev(self.fd, iov, count)
            err = errno
            for i in range(count):
                PyBuffer_Release(&views[i])
            if n < 0:
                if err == EAGAIN:
                    break
                if err == EINTR:
                    continue
                return self.fail(_os_error(err))
            self.pending_size -= n
            full = n < total  # (a short write: the send buffer is full)
            n += self.head_sent
            done = 0
            while done < count and n >= sizes[done]:
                n -= sizes[done]
                done += 1
            del pending[:done]
            self.head_sent = n
            if full:
                break  # (the rest on the next edge)
        if self.writes_paused and self.pending_size <= self.low:
            self.writes_paused = False
            self.flow_control(self.protocol.resume_writing)
        if not pending:
            if self.closing:
                self.lose(None)
            elif self.eof_wanted:
                shutdown(self.fd, SHUT_WR)
        return 0

    cdef int flow_control(self, object method) except -1:
        # pause_writing / resume_writing run inside the protocol's own write(), or inside an
        # event: a failing one is reported, not raised into either (as asyncio does).
        try:
            method()
        except Exception as exc:
            self.poller.loop.call_exception_handler({
                "message": "protocol.pause_writing() or resume_writing() failed",
                "exception": exc, "transport": self, "protocol": self.protocol})
        return 0

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self.closing or self.eof_wanted:
            return
        self.eof_wanted = True
        if not self.pending:
            shutdown(self.fd, SHUT_WR)

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        if not self.reading and not self.closing and not self.at_eof and self.state == _OPEN:
            self.reading = True
            # What came while paused raised its edge then: read it from a callback of its own.
            self.poller.loop.call_soon(self._read_again)

    def is_reading(self):
        return self.reading

    def is_closing(self):
        return self.closing

    def close(self):
        if self.closing:
            return
        self.closing = True
        self.reading = False
        if not self.pending:
            self.lose(None)

    def abort(self):
        self.closing = True
        self.reading = False
        del self.pending[:]
        self.pending_size = 0
        self.lose(None)

    cdef int shut(self) except -1:
        if self.state == _OPEN:
            self.abort()
            return 0
        # A connect under way (or done, its task not resumed yet): connect() fails.
        self.unregister()
        self.close_fd()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionAbortedError("the poller closed"))
        return 0

    cdef int fail(self, object exc) except -1:
        # A socket error ends the connection, reported to its protocol; a protocol's own
        # exception is reported to the loop too (asyncio's "Fatal error on transport").
        if not isinstance(exc, OSError):
            self.poller.loop.call_exception_handler({
                "message": "Fatal error on transport", "exception": exc,
                "transport": self, "protocol": self.protocol})
        self.closing = True
        self.reading = False
        del self.pending[:]
        self.pending_size = 0
        return self.lose(exc)

    cdef int lose(self, object exc) except -1:
        if self.lost:
            return 0
        self.lost = True
        self.unregister()
        self.poller.loop.call_soon(self._connection_lost, exc)
        return 0

    def _connection_lost(self, exc):
        try:
            if self.protocol is not None:
                self.protocol.connection_lost(exc)
        finally:
            self.close_fd()
            self.protocol = self._data_received = self._get_buffer = None
            self._buffer_updated = None

    cdef int close_fd(self) except -1:
        if self.fd >= 0:
            if self.sock is not None:
                (<SocketView>self.sock).fd = -1  # (the number may be reused from now on)
            close(self.fd)
            self.fd = -1
        return 0

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)  # (dropped unclosed: its Poller went first; nothing else owns fd)

    def get_extra_info(self, name, default=None):
        if name == "peername":
            if self.peer is None and self.fd >= 0:
                self.peer = _peer(self.fd)
                if self.peer is None:
                    try:
                        self.peer = self._socket().getpeername()
                    except OSError:  # (reset before we asked: asyncio says None too)
                        return default
            return self.peer if self.peer is not None else default
        if name == "socket":
            return self._socket() if self.fd >= 0 else default
        if name == "sockname":
            try:
                return self._socket().getsockname() if self.fd >= 0 else default
            except OSError:
                return default
        return default

    def _socket(self):
        if self.sock is None:
            self.sock = SocketView(self.fd)
        return self.sock

    def set_protocol(self, protocol):
        self.protocol = protocol
        get_buffer = getattr(protocol, "get_buffer", None)
        self.buffered = get_buffer is not None
        if self.buffered:
            self._get_buffer = get_buffer
            self._buffer_updated = protocol.buffer_updated
        else:
            self._data_received = protocol.data_received

    def get_protocol(self):
        return self.protocol

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        self.high = high
        self.low = high // 4 if low is None else low
        if not 0 <= self.low <= self.high:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low}) >= 0")
        self.check_high()

    def get_write_buffer_limits(self):
        return self.low, self.high

    def get_write_buffer_size(self):
        return self.pending_size


@cython.final
cdef class SocketView:
    """What ``get_extra_info("socket")`` gives: the connection's socket for its options and
    addresses, owning nothing (as asyncio's TransportSocket): the transport closes the
    descriptor, and the view refuses to act on it after that."""

    def __cinit__(self, int fd):
        self.fd = fd

    def fileno(self):
        return self.fd

    def setsockopt(self, *args):
        return self._call("setsockopt", args)

    def getsockopt(self, *args):
        return self._call("getsockopt", args)

    def getpeername(self):
        return self._call("getpeername", ())

    def getsockname(self):
        return self._call("getsockname", ())

    def _call(self, name, args):
        if self.fd < 0:
            raise _os_error(EBADF)
        sock = socket.socket(fileno=self.fd)
        try:
            return getattr(sock, name)(*args)
        finally:
            sock.detach()


cdef object _peer(int fd):
    # An IPv4 peer's (host, port) without a socket object (made for every connection else);
    # None for another family, which the socket module reads.
    cdef sockaddr_storage ss
    cdef socklen_t size = sizeof(ss)
    cdef char text[16]
    if getpeername(fd, <sockaddr*>&ss, &size) < 0 or ss.ss_family != AF_INET:
        return None
    inet_ntop(AF_INET, &(<sockaddr_in*>&ss).sin_addr, text, sizeof(text))
    return (text.decode("ascii"), ntohs((<sockaddr_in*>&ss).sin_port))


@cython.final
cdef class Acceptor(Handle):
    """A listening TCP socket in a Poller's set (``Poller.serve``)."""

    cdef int on_events(self, unsigned int events) except -1:
        cdef int fd, err, one = 1
        cdef SocketTransport t
        for _ in range(_ACCEPT_MAX):
            fd = accept4(self.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                err = errno
                if err == EAGAIN:
                    return 0
                if err in (EINTR, ECONNABORTED, EPROTO):
                    continue  # (that one gave up before we took it)
                # Out of descriptors or memory (or worse): the listening socket stays
                # readable, so rest rather than be woken for it again at once.
                self.poller.loop.call_exception_handler({
                    "message": "accept() out of system resource"
                    if err in (EMFILE, ENFILE, ENOBUFS, ENOMEM) else "accept() failed",
                    "exception": _os_error(err)})
                self.unregister()
                self.retry = self.poller.loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                return 0
            # As uvloop and asyncio do for TCP: a small answer goes out at once.
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            try:
                protocol = self.factory()
            except BaseException:
                close(fd)  # (nothing owns the connection)
                raise
            t = SocketTransport.__new__(SocketTransport)
            t.state = _OPEN
            t.open(self.poller, fd, protocol)
        return 0

    cdef int shut(self) except -1:
        self.close()
        return 0

    def _resume(self):
        self.retry = None
        if self.fd >= 0:
            self.register(EPOLLIN)

    def close(self):
        """Stop accepting and close the listening socket (connections stay)."""
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        if self.fd >= 0:
            self.unregister()
            self.fd = -1
            self.sock.close()

    def is_serving(self):
        return self.fd >= 0

    @property
    def sockets(self):
        return (self.sock,)

    async def wait_closed(self):
        return None
