cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
    cdef struct epoll_event:
        unsigned int events
        epoll_data_t data

cdef enum:
    _EVENTS = 256  # events one epoll_wait may return


cdef class Handle:
    # What one registration in a Poller's epoll set belongs to.
    cdef Poller poller
    cdef readonly int fd          # -1 once closed
    cdef bint registered

    cdef int register(self, unsigned int events) except -1
    cdef int unregister(self) except -1
    cdef int on_events(self, unsigned int events) except -1
    cdef int shut(self) except -1               # (the Poller closes)


cdef class Poller:
    cdef readonly object loop
    cdef int epfd
    cdef set handles               # registered: the epoll set holds pointers to them
    cdef list retired              # unregistered during a batch: kept alive until it ends
    cdef bint in_batch
    cdef epoll_event events[_EVENTS]

    cdef int run_batches(self) except -1


cdef class SocketTransport(Handle):
    cdef object protocol
    cdef object _data_received     # the protocol's methods, bound once
    cdef object _get_buffer
    cdef object _buffer_updated
    cdef bint buffered             # the protocol reads into its own buffer
    cdef int state
    cdef bint reading              # not paused, no EOF seen, not closing
    cdef bint closing
    cdef bint lost                 # connection_lost is scheduled
    cdef bint at_eof               # the peer's FIN was read
    cdef bint eof_wanted           # write_eof: shut down once the buffer is sent
    cdef bint writes_paused        # the protocol was told pause_writing
    cdef list pending              # what write() could not send yet, in order
    cdef Py_ssize_t head_sent      # bytes of pending[0] already sent
    cdef Py_ssize_t pending_size
    cdef Py_ssize_t high, low      # write buffer limits (pause_writing / resume_writing)
    cdef object waiter             # connecting: the future connect() awaits
    cdef object sock               # a SocketView of fd, made if asked for
    cdef object peer

    cdef int open(self, Poller poller, int fd, object protocol) except -1
    cdef int read(self, bint to_the_end) except -1
    cdef int queue(self, object data, Py_ssize_t sent) except -1
    cdef int check_high(self) except -1
    cdef int flush(self) except -1
    cdef int flow_control(self, object method) except -1
    cdef int fail(self, object exc) except -1
    cdef int lose(self, object exc) except -1
    cdef int close_fd(self) except -1


cdef class Acceptor(Handle):
    cdef object sock
    cdef object factory
    cdef object retry


cdef class SocketView:
    cdef int fd
