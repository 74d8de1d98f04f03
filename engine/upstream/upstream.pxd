cimport cython

from engine.upstream.balancer cimport Balancer
from engine.upstream.health cimport Circuit, Health, RetryBudget
from engine.upstream.pool cimport Pool

# What went wrong with one attempt, as bits: ``fail_mask`` says which count against a server,
# ``retry_mask`` which are retried on the next one.
cdef enum:
    F_ERROR = 1
    F_TIMEOUT = 2
    F_HTTP_500 = 4
    F_HTTP_502 = 8
    F_HTTP_503 = 16
    F_HTTP_504 = 32
    F_HTTP_429 = 64

cdef int status_failure(int status) noexcept


@cython.final
cdef class Server:
    cdef public str url
    cdef public str host
    cdef public int port
    cdef public Py_ssize_t weight
    cdef public Pool pool
    cdef public bytes authority     # Host header for HTTP/1.0 requests that sent none
    cdef public bint backup         # takes traffic only when no primary is available
    cdef public bint down           # config: never picked
    cdef public Py_ssize_t max_conns  # requests in flight at once; 0 = unlimited
    cdef public Py_ssize_t active   # requests in flight to this server now (this worker)
    cdef public Health health       # passive/active/circuit/ejection state, or None
    cdef public object ssl          # ssl.SSLContext for an https:// server, else None
    cdef public str server_hostname # SNI and name verified (None: no SNI, an IP address)

    cpdef bint available(self, double now) except -1


@cython.final
cdef class Upstream:
    cdef public str name
    cdef public list servers        # [Server]
    cdef public Balancer balancer
    cdef public bytes host_header
    cdef public double connect_timeout
    cdef public double send_timeout
    cdef public double read_timeout
    cdef public object key          # frozen config: equal config -> pools carried over on reload
    cdef public Balancer backup_balancer  # over the backup servers, or None
    cdef public Circuit circuit     # the upstream's own breaker, or None
    cdef public RetryBudget budget
    cdef public int tries
    cdef public double retry_timeout
    cdef public int retry_mask
    cdef public int fail_mask
    cdef public object fallback     # the static Response when nothing is available, or None
    cdef public str fallback_name   # ... or the upstream to send to instead
    cdef public Upstream fallback_to

    cpdef object pick(self, object ctx, double now)
    cpdef double available_in(self, double now)
