# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True, nonecheck=False
"""The waypoint's compiled HTTP/1.1 fast lane: the common request answered in native code.

Before: `proxy.Downstream` has read the tunnel header, ruled out HTTP/2 and moved an
HTTP/1.1 connection here (`Lane.adopt`); `plans.py` (Python) decides, once per distinct
request shape, whether the lane may answer it and how (a `Plan`: pre-built bytes, the
cluster, retry and timeout settings). After: a request inside the strict subset of the
grammar whose Plan exists is forwarded over the lane's own keep-alive upstream connections
and its answer relayed, with the same bytes, metrics, outlier and pool accounting as the
Python pipeline would produce; anything else is handed back to `Downstream` (the bytes not
consumed, in order), together with the first try when that try failed (`Resume`), and the
connection stays with Python from then on.

Nothing here runs Python bytecode per request on the steady path: the request head is
scanned with `char*` loops, the plan is a dict lookup on a bytes key, the upstream request
and the response head are written into one C buffer each, ids come from a `getrandom`
block, the metrics series is a native object (`Series`, used by the Python path too).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memmove
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef extern from "<sys/random.h>":
    ssize_t getrandom(void *buf, size_t buflen, unsigned int flags) nogil

cdef extern from "<string.h>":
    void *memmem(const void *h, size_t hl, const void *n, size_t nl) nogil

cdef extern from "<stdio.h>":
    int snprintf(char *s, size_t n, const char *fmt, ...) nogil


# --- character classes -------------------------------------------------------------------

cdef unsigned char TCHAR[256]
cdef unsigned char VCHAR[256]      # request field values: VCHAR, SP, HTAB
cdef unsigned char RVCHAR[256]     # response field values: also obs-text
cdef unsigned char TGT[256]        # origin-form target characters (RFC 3986 subset)
cdef unsigned char LOWER[256]
cdef signed char HEXV[256]
cdef const char *HEXD = b"0123456789abcdef"


cdef void _tables() noexcept:
    cdef int c
    cdef bytes tc = b"!#$%&'*+-.^_`|~"
    cdef bytes tg = b"-._~:/?#[]@!$&'()*+,;=%"
    for c in range(256):
        TCHAR[c] = 0
        VCHAR[c] = 1 if (0x20 <= c <= 0x7e or c == 9) else 0
        RVCHAR[c] = 1 if (0x20 <= c <= 0x7e or c == 9 or c >= 0x80) else 0
        TGT[c] = 0
        LOWER[c] = c + 32 if 65 <= c <= 90 else c
        HEXV[c] = -1
        if 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122:
            TCHAR[c] = 1
            TGT[c] = 1
    for c in tc:
        TCHAR[c] = 1
    for c in tg:
        TGT[c] = 1
    for c in range(10):
        HEXV[48 + c] = c
    for c in range(6):
        HEXV[97 + c] = 10 + c
        HEXV[65 + c] = 10 + c


_tables()


# --- handover reasons ------------------------------------------------------------------------

cdef enum:
    R_GRAMMAR = 0
    R_VERSION
    R_HOST
    R_LENGTH
    R_TE
    R_EXPECT
    R_UPGRADE
    R_CONNECTION
    R_BIG_HEAD
    R_BIG_BODY
    R_FIELDS
    R_B3
    R_TRACEPARENT
    R_REPEATED
    R_NO_PLAN
    R_POOL
    R_NO_HOST
    R_RETRY
    R_FAILURE
    R_ROUTE_TIMEOUT
    R_STALE
    R_METHOD
    R_COUNT

REASONS = ("grammar", "version", "host", "content_length", "transfer_encoding", "expect",
           "upgrade", "connection", "big_head", "big_body", "fields", "b3", "traceparent",
           "repeated_header", "no_plan", "pool", "no_host", "retry", "failure",
           "route_timeout", "stale_connection", "method")

cdef enum:
    MAXH = 100
    MAX_BODY = 65536
    MAX_RETRY_BODY = 65536


cdef struct Head:
    Py_ssize_t head_len
    Py_ssize_t total
    Py_ssize_t m1            # method is [0, m1)
    Py_ssize_t t0, t1        # target
    int nh
    Py_ssize_t hn0[MAXH]
    Py_ssize_t hn1[MAXH]
    Py_ssize_t hv0[MAXH]
    Py_ssize_t hv1[MAXH]
    int host, tp, ts, rid
    long long clen
    int close


cdef inline bint ieq(const unsigned char *a, Py_ssize_t n, const char *lit, Py_ssize_t ln
                     ) noexcept nogil:
    """Case-insensitive: a[:n] == lit (lit lower-case)."""
    cdef Py_ssize_t i
    if n != ln:
        return False
    for i in range(n):
        if LOWER[a[i]] != <unsigned char>lit[i]:
            return False
    return True


cdef inline bint _known_method(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    """The methods llhttp knows that the lane forwards (others: Python judges)."""
    if n == 3:
        return memcmp(p, b"GET", 3) == 0 or memcmp(p, b"PUT", 3) == 0
    if n == 4:
        return memcmp(p, b"POST", 4) == 0 or memcmp(p, b"HEAD", 4) == 0
    if n == 5:
        return memcmp(p, b"PATCH", 5) == 0
    if n == 6:
        return memcmp(p, b"DELETE", 6) == 0
    if n == 7:
        return memcmp(p, b"OPTIONS", 7) == 0
    return False


cdef inline Py_ssize_t _need(Py_ssize_t n, Py_ssize_t max_head) noexcept nogil:
    return -(R_BIG_HEAD + 1) if n > max_head else 0


cdef Py_ssize_t scan_request(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_head,
                             Head *h) noexcept nogil:
    """The request at p[:n]: its total length (head and body) when it is complete and
    inside the lane's subset; 0 when more bytes are needed; -(reason + 1) when it is
    outside the subset (the Python reader judges it)."""
    cdef Py_ssize_t j = 0, ls, vs, fields = 0
    cdef int nh = 0, hosts = 0, cls = 0, conns = 0, i
    cdef long long v
    cdef Py_ssize_t k
    h.nh = 0
    h.head_len = 0
    h.host = h.tp = h.ts = h.rid = -1
    h.clen = -1
    h.close = 0
    while j < n and TCHAR[p[j]]:
        j += 1
    if j == n:
        return _need(n, max_head)
    if j == 0 or p[j] != 32:
        return -(R_GRAMMAR + 1)
    if not _known_method(p, j):
        return -(R_METHOD + 1)
    h.m1 = j
    j += 1
    if j == n:
        return _need(n, max_head)
    if p[j] != 47:      # '/': origin-form only
        return -(R_GRAMMAR + 1)
    h.t0 = j
    while j < n and TGT[p[j]]:
        j += 1
    if j == n:
        return _need(n, max_head)
    if p[j] != 32:
        return -(R_GRAMMAR + 1)
    h.t1 = j
    j += 1
    if n - j < 10:
        if memcmp(p + j, b"HTTP/1.1\r\n", n - j) != 0:
            return -(R_VERSION + 1)
        return _need(n, max_head)
    if memcmp(p + j, b"HTTP/1.1\r\n", 10) != 0:
        return -(R_VERSION + 1)
    j += 10
    while True:
        if j > max_head:
            return -(R_BIG_HEAD + 1)
        if j >= n:
            return _need(n, max_head)
        if p[j] == 13:
            if j + 1 >= n:
                return _need(n, max_head)
            if p[j + 1] != 10:
                return -(R_GRAMMAR + 1)
            j += 2
            break
        ls = j
        while j < n and TCHAR[p[j]]:
            j += 1
        if j == n:
            return _need(n, max_head)
        if j == ls or p[j] != 58:
            return -(R_GRAMMAR + 1)
        k = j
        j += 1
        while j < n and (p[j] == 32 or p[j] == 9):
            j += 1
        vs = j
        while j < n and VCHAR[p[j]]:
            j += 1
        if j + 1 >= n:
            return _need(n, max_head)
        if p[j] != 13 or p[j + 1] != 10:
            return -(R_GRAMMAR + 1)
        if nh >= MAXH:
            return -(R_FIELDS + 1)
        h.hn0[nh] = ls
        h.hn1[nh] = k
        h.hv0[nh] = vs
        v = j
        while v > vs and (p[v - 1] == 32 or p[v - 1] == 9):
            v -= 1                          # trailing whitespace is not part of a value
        h.hv1[nh] = v
        fields += (k - ls) + (j - vs) + 4
        nh += 1
        j += 2
    if j > max_head or fields > max_head:
        return -(R_BIG_HEAD + 1)
    h.nh = nh
    h.head_len = j
    for i in range(nh):
        ls = h.hn0[i]
        k = h.hn1[i] - ls
        vs = h.hv0[i]
        v = h.hv1[i] - vs
        if k == 4 and ieq(p + ls, 4, b"host", 4):
            hosts += 1
            h.host = i
        elif k == 14 and ieq(p + ls, 14, b"content-length", 14):
            cls += 1
            if cls > 1 or v == 0 or v > 12:
                return -(R_LENGTH + 1)
            h.clen = 0
            for j in range(vs, vs + v):
                if p[j] < 48 or p[j] > 57:
                    return -(R_LENGTH + 1)
                h.clen = h.clen * 10 + (p[j] - 48)
        elif k == 17 and ieq(p + ls, 17, b"transfer-encoding", 17):
            return -(R_TE + 1)
        elif k == 6 and ieq(p + ls, 6, b"expect", 6):
            return -(R_EXPECT + 1)
        elif k == 7 and ieq(p + ls, 7, b"upgrade", 7):
            return -(R_UPGRADE + 1)
        elif k == 10 and ieq(p + ls, 10, b"connection", 10):
            conns += 1
            if conns > 1:
                return -(R_CONNECTION + 1)
            if ieq(p + vs, v, b"close", 5):
                h.close = 1
            elif not ieq(p + vs, v, b"keep-alive", 10):
                return -(R_CONNECTION + 1)
        elif k == 2 and ieq(p + ls, 2, b"b3", 2):
            return -(R_B3 + 1)
        elif k > 5 and ieq(p + ls, 5, b"x-b3-", 5):
            return -(R_B3 + 1)
        elif k == 11 and ieq(p + ls, 11, b"traceparent", 11):
            if h.tp >= 0:
                return -(R_TRACEPARENT + 1)
            h.tp = i
        elif k == 10 and ieq(p + ls, 10, b"tracestate", 10):
            if h.ts >= 0:
                return -(R_TRACEPARENT + 1)
            h.ts = i
        elif k == 12 and ieq(p + ls, 12, b"x-request-id", 12):
            h.rid = i
    if hosts != 1:
        return -(R_HOST + 1)
    if h.clen > MAX_BODY:
        return -(R_BIG_BODY + 1)
    h.total = h.head_len + (h.clen if h.clen > 0 else 0)
    if h.total > n:
        return 0
    return h.total


def scan(bytes data, Py_ssize_t max_head=65536):
    """The scanner from Python (tests): `(method, target, [(name, value)], body, keep_alive,
    consumed)` for a request the lane would take, 0 for "needs more bytes", or the reason
    (a string) it would hand over."""
    cdef Head h
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t r = scan_request(p, PyBytes_GET_SIZE(data), max_head, &h)
    if r == 0:
        return 0
    if r < 0:
        return REASONS[-r - 1]
    headers = [(data[h.hn0[i]:h.hn1[i]].decode("latin-1").lower(),
                data[h.hv0[i]:h.hv1[i]].decode("latin-1")) for i in range(h.nh)]
    return (data[:h.m1].decode("ascii"), data[h.t0:h.t1].decode("latin-1"), headers,
            data[h.head_len:h.total], not h.close, h.total)


# --- buffers ---------------------------------------------------------------------------------

cdef struct Buf:
    char *p
    Py_ssize_t len
    Py_ssize_t cap


cdef int buf_reserve(Buf *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t want = b.len + extra
    cdef Py_ssize_t cap
    cdef char *q
    if want <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < want:
        cap *= 2
    q = <char *>realloc(b.p, cap)
    if q == NULL:
        raise MemoryError()
    b.p = q
    b.cap = cap
    return 0


cdef inline int buf_add(Buf *b, const char *s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        buf_reserve(b, n)
    memcpy(b.p + b.len, s, n)
    b.len += n
    return 0


cdef inline int buf_addb(Buf *b, bytes s) except -1:
    return buf_add(b, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))


cdef inline int buf_lower(Buf *b, const unsigned char *s, Py_ssize_t n) except -1:
    cdef Py_ssize_t i
    if b.len + n > b.cap:
        buf_reserve(b, n)
    for i in range(n):
        b.p[b.len + i] = <char>LOWER[s[i]]
    b.len += n
    return 0


cdef inline int buf_int(Buf *b, long long v) except -1:
    cdef char tmp[24]
    cdef int k = snprintf(tmp, 24, b"%lld", v)
    return buf_add(b, tmp, k)


cdef inline void buf_consume(Buf *b, Py_ssize_t n) noexcept:
    """Drop the first n bytes."""
    if n >= b.len:
        b.len = 0
        return
    memmove(b.p, b.p + n, b.len - n)
    b.len -= n


cdef inline void buf_free(Buf *b) noexcept:
    if b.p != NULL:
        free(b.p)
    b.p = NULL
    b.len = b.cap = 0


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# --- random ids -----------------------------------------------------------------------------

cdef class Ids:
    """Random hex digits from one `getrandom` block at a time (as `telemetry.RandomHex`)."""
    cdef unsigned char raw[2048]
    cdef char hex[4096]
    cdef int pos
    cdef unsigned long long state

    def __cinit__(self):
        self.pos = 4096
        getrandom(&self.state, 8, 0)
        self.state |= 1

    cdef const char *take(self, int n) noexcept:
        cdef int i
        if self.pos + n > 4096:
            getrandom(self.raw, 2048, 0)
            for i in range(2048):
                self.hex[2 * i] = HEXD[self.raw[i] >> 4]
                self.hex[2 * i + 1] = HEXD[self.raw[i] & 15]
            self.pos = 0
        self.pos += n
        return self.hex + self.pos - n

    cdef const char *nonzero(self, int n) noexcept:
        cdef const char *x
        cdef int i
        while True:
            x = self.take(n)
            for i in range(n):
                if x[i] != 48:
                    return x

    cdef unsigned long long next(self) noexcept:
        """xorshift64*: the balancer's draws."""
        cdef unsigned long long x = self.state
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self.state = x
        return x * 2685821657736338717ULL


cdef const char *VARIANT = b"89ab89ab89ab89ab"


cdef int add_request_id(Buf *b, Ids ids) except -1:
    """`x-request-id: <UUIDv4>` as `Tracing.request_id` writes it."""
    cdef const char *x = ids.take(32)
    cdef int vi = HEXV[<unsigned char>x[16]] & 3
    buf_add(b, b"x-request-id: ", 14)
    buf_add(b, x, 8)
    buf_add(b, b"-", 1)
    buf_add(b, x + 8, 4)
    buf_add(b, b"-4", 2)
    buf_add(b, x + 13, 3)
    buf_add(b, b"-", 1)
    buf_add(b, VARIANT + vi, 1)
    buf_add(b, x + 17, 3)
    buf_add(b, b"-", 1)
    buf_add(b, x + 20, 12)
    buf_add(b, b"\r\n", 2)
    return 0


# --- metrics ----------------------------------------------------------------------------------

cdef double DUR_B[19]
cdef double SIZE_B[9]
_DUR = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
        600000, 1800000, 3600000)
for _i in range(19):
    DUR_B[_i] = _DUR[_i]
for _i in range(9):
    SIZE_B[_i] = 10.0 ** _i


cdef class Series:
    """Counts for one label set (`telemetry`): requests and three histograms. Both the
    Python pipeline (`Metrics.observe_series`) and the lane add to the same object."""
    cdef public long long count
    cdef public double dur_sum, req_sum, resp_sum
    cdef long long _dur[20]
    cdef long long _req[10]
    cdef long long _resp[10]

    cdef void add(self, double dur_ms, double req, double resp) noexcept:
        cdef int i = 0
        self.count += 1
        self.dur_sum += dur_ms
        while i < 19 and DUR_B[i] < dur_ms:
            i += 1
        self._dur[i] += 1
        self.req_sum += req
        i = 0
        while i < 9 and SIZE_B[i] < req:
            i += 1
        self._req[i] += 1
        self.resp_sum += resp
        i = 0
        while i < 9 and SIZE_B[i] < resp:
            i += 1
        self._resp[i] += 1

    def observe(self, double duration_ms, double request_bytes, double response_bytes):
        self.add(duration_ms, request_bytes, response_bytes)

    @property
    def dur(self):
        return [self._dur[i] for i in range(20)]

    @property
    def req(self):
        return [self._req[i] for i in range(10)]

    @property
    def resp(self):
        return [self._resp[i] for i in range(10)]


# --- pool counters ---------------------------------------------------------------------------

cdef class Counters:
    """`pool.PoolCounters` as a native object: one copy per cluster that the Python pipeline
    (attributes and methods, as before) and the lane (C fields) both count in."""
    cdef public object limits
    cdef public long long connections, pending, requests, retries
    cdef public dict overflows

    def __init__(self, limits):
        self.limits = limits
        self.overflows = {"requests": 0, "pending": 0, "retries": 0, "connections": 0}

    def admit_request(self):
        if self.requests >= self.limits.max_requests:
            self.overflows["requests"] += 1
            return False
        self.requests += 1
        return True

    def may_connect(self):
        if self.connections >= self.limits.max_connections:
            self.overflows["connections"] += 1
            return False
        return True

    def may_queue(self):
        if self.pending >= self.limits.max_pending:
            self.overflows["pending"] += 1
            return False
        return True

    def admit_retry(self):
        if self.retries >= self.limits.max_retries:
            self.overflows["retries"] += 1
            return False
        self.retries += 1
        return True


# --- plans -----------------------------------------------------------------------------------

cdef class Plan:
    """What the lane does with one request shape (made by `plans.make_plan`)."""
    cdef public object cluster          # ClusterLane
    cdef public bytes head              # "METHOD uri HTTP/1.1\r\nhost: authority\r\n"
    cdef public list drop               # request header names dropped (lower-case bytes)
    cdef public bytes add               # request lines added by header operations
    cdef public bytes xfp               # the x-forwarded-proto line
    cdef public list resp_drop          # response header names dropped
    cdef public bytes resp_add          # response lines added
    cdef public double timeout_s        # 0: none
    cdef public double per_try_s        # 0: none
    cdef public int attempts
    cdef public bytes retriable_status  # 600 flags
    cdef public bint retry_connect, retry_reset, retry_timeout
    cdef public object context          # what `plans` needs back (svc, labels, ...)
    cdef public dict series             # (host address, status, flags) → Series
    cdef object last_addr               # the last (address, status) with flags "-" ...
    cdef int last_status
    cdef Series last_series             # ... and its series
    cdef public bint send_length        # POST/PUT/PATCH: content-length even when 0
    cdef public list subs               # a weighted route: one plan per destination it can
    cdef public list weights            # draw and their weights (floats), drawn per request
    cdef public double total            # as `router.pick_weighted` draws; else None
    cdef public object drawn            # a destination's plan: (route, destination), which
                                        # a handed-back request carries (`Resume.drawn`)

    def __init__(self):
        self.series = {}
        self.drop = []
        self.resp_drop = []

    cdef Plan draw(self, Ids ids):
        """One destination's plan: x uniform in [0, total), then `pick_weighted`'s walk."""
        cdef double x = <double>(ids.next() >> 11) * (1.0 / 9007199254740992.0) * self.total
        cdef Py_ssize_t i, n = len(self.subs)
        for i in range(n):
            x -= <double>self.weights[i]
            if x < 0:
                return <Plan>self.subs[i]
        return <Plan>self.subs[n - 1]


cdef inline bint in_names(list names, const unsigned char *s, Py_ssize_t n) noexcept:
    cdef bytes x
    for x in names:
        if PyBytes_GET_SIZE(x) == n and ieq(s, n, PyBytes_AS_STRING(x), n):
            return True
    return False


# --- clusters -----------------------------------------------------------------------------

cdef enum:
    LB_RR = 0
    LB_LR = 1
    LB_RANDOM = 2


cdef class ClusterLane:
    """The lane's side of one `ClusterState`: hosts, balancer cursor, idle connections. The
    pool counters, in-flight counts and outlier detector are the Python state's own objects
    (one copy each)."""
    cdef public object state
    cdef public Counters counters
    cdef public list hosts          # Host objects
    cdef public list addresses
    cdef public dict index          # address → host index
    cdef public list idle           # per host index: [LaneUp]
    cdef public dict in_flight
    cdef public set dirty           # addresses whose consecutive-failure counts are not zero
    cdef public bint ask_python     # some host is ejected: pick among `usable` ...
    cdef public list usable         # ... the host indexes outlier detection allows, until
    cdef public double sweep_at     # its next interval sweep (then `state.pick` sweeps)
    cdef public int kind
    cdef public long long max_rpc
    cdef public long long max_connections
    cdef public long long max_requests
    cdef unsigned long long rr
    cdef public Lane lane

    def __init__(self, Lane lane, state):
        self.lane = lane
        self.state = state
        self.dirty = set()
        self.idle = []
        self.usable = []
        self.configure()

    def configure(self):
        """From the Python state (again after a snapshot changed the cluster)."""
        st = self.state
        old = {}
        for i, conns in enumerate(self.idle):
            old[self.addresses[i]] = conns
        self.hosts = list(st.cluster.hosts)
        self.addresses = [h.address for h in self.hosts]
        self.index = {a: i for i, a in enumerate(self.addresses)}
        self.idle = [old.pop(a, []) for a in self.addresses]
        for conns in old.values():
            for c in list(conns):
                c.close()
        self.counters = st.counters
        self.in_flight = st.in_flight
        kind = st.balancer.kind
        self.kind = LB_RR if kind == "ROUND_ROBIN" else LB_RANDOM if kind == "RANDOM" else LB_LR
        lim = st.counters.limits
        self.max_rpc = lim.max_requests_per_connection
        self.max_connections = lim.max_connections
        self.max_requests = lim.max_requests
        self.sync()

    def note(self, address):
        """One host's consecutive-failure counts changed, and nothing was ejected or returned
        (Python calls this after `record`; `sync` is for the rest)."""
        od = self.state.outlier
        s = od.hosts.get(address) if od is not None else None
        if s is not None and (s.consecutive_5xx or s.consecutive_gateway):
            self.dirty.add(address)
        else:
            self.dirty.discard(address)

    def sync(self):
        """Ejections, returns or the next sweep time changed: everything again (Python calls
        this)."""
        od = self.state.outlier
        if od is None:
            self.ask_python = False
            self.dirty.clear()
            return
        ejected = False
        dirty = set()
        for a, s in od.hosts.items():
            if s.ejected_at is not None:
                ejected = True
            if s.consecutive_5xx or s.consecutive_gateway:
                dirty.add(a)
        self.ask_python = ejected
        self.dirty = dirty
        if ejected:
            if od.panic():
                self.usable = list(range(len(self.addresses)))
            else:
                self.usable = [i for i, a in enumerate(self.addresses) if not od.ejected(a)]
            self.sweep_at = od.next_sweep

    cdef int pick(self, double now) except -2:
        cdef Py_ssize_t n = len(self.hosts)
        cdef unsigned long long r
        cdef Py_ssize_t a, b
        cdef object fa, fb
        if self.ask_python:
            if now >= self.sweep_at:       # the sweep may return hosts (and syncs this)
                host = self.state.pick(now, [])
                if host is None:
                    return -1
                return self.index.get(host.address, -1)
            return self.pick_among(self.usable)
        if n == 0:
            return -1
        if n == 1:
            return 0
        if self.kind == LB_RR:
            self.rr += 1
            return self.rr % n
        r = self.lane.ids.next()
        if self.kind == LB_RANDOM:
            return r % n
        a = r % n
        b = (r >> 32) % (n - 1)
        if b >= a:
            b += 1
        fa = self.in_flight.get(self.addresses[a], 0)
        fb = self.in_flight.get(self.addresses[b], 0)
        return a if fa <= fb else b

    cdef int pick_among(self, list candidates) except -2:
        """The balancer over some of the hosts (indexes), as over all of them."""
        cdef Py_ssize_t n = len(candidates)
        cdef unsigned long long r
        cdef Py_ssize_t a, b
        if n == 0:
            return -1
        if n == 1:
            return candidates[0]
        if self.kind == LB_RR:
            self.rr += 1
            return candidates[self.rr % n]
        r = self.lane.ids.next()
        if self.kind == LB_RANDOM:
            return candidates[r % n]
        a = r % n
        b = (r >> 32) % (n - 1)
        if b >= a:
            b += 1
        a = candidates[a]
        b = candidates[b]
        return a if self.in_flight.get(self.addresses[a], 0) <= \
            self.in_flight.get(self.addresses[b], 0) else b

    def close_idle_one(self):
        """Close one idle lane connection (a Python request waits for a connection slot)."""
        for conns in self.idle:
            while conns:
                c = conns.pop()
                if not (<LaneUp>c).closed:
                    c.close()
                    return True
        return False

    def close_all(self):
        for conns in self.idle:
            for c in list(conns):
                c.close()
            del conns[:]

    cdef LaneUp from_python(self, int host):
        """An idle keep-alive connection of the Python path to this host, moved here."""
        cdef LaneUp up
        conns = self.state.idle.get(self.addresses[host])
        while conns:
            conn = conns.pop()
            t = conn.transport
            if conn.closed or t is None or t.is_closing():
                continue
            conn.closed = True            # the Python object no longer owns it
            up = LaneUp(self, host)
            up.served = conn.served
            t.set_protocol(up)
            up.connection_made(t)
            return up
        return None

    def take_idle(self, address):
        """An idle lane connection to `address` for the Python path: (transport, served),
        or None. Its connection slot goes with it."""
        cdef LaneUp c
        i = self.index.get(address)
        if i is None:
            return None
        conns = <list>self.idle[i]
        while conns:
            c = <LaneUp>conns.pop()
            if c.closed or c.transport is None or c.transport.is_closing():
                continue
            c.closed = True
            c.counted = False
            t, c.transport, c.write = c.transport, None, None
            return t, c.served
        return None

    def idle_count(self):
        return sum(len(c) for c in self.idle)


# --- upstream connections -------------------------------------------------------------------

cdef class LaneUp:
    """An upstream keep-alive connection owned by the lane (opened by Python, then moved
    here with `set_protocol`)."""
    cdef public object transport
    cdef object write
    cdef public ClusterLane cluster
    cdef public int host
    cdef public LaneDown down          # the request it serves now, or None (idle)
    cdef public long long served
    cdef public bint closed
    cdef bint counted

    def __init__(self, ClusterLane cluster, int host):
        self.cluster = cluster
        self.host = host
        self.counted = True            # holds one of the cluster's connection slots

    def connection_made(self, transport):
        self.transport = transport
        self.write = transport.write

    def data_received(self, bytes data):
        d = self.down
        if d is None:
            self.close()               # bytes nobody asked for: out of step
            return
        (<LaneDown>d).up_data(self, data)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        cl = self.cluster
        if self.counted:
            self.counted = False
            cl.counters.connections -= 1
            if cl.state.waiters:
                cl.state._wake()
        if 0 <= self.host < len(cl.idle):
            conns = cl.idle[self.host]
            try:
                conns.remove(self)
            except ValueError:
                pass
        d = self.down
        self.down = None
        if d is not None:
            (<LaneDown>d).up_lost(self)
        self.write = None
        self.transport = None

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass

    def close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self):
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


# --- the lane ---------------------------------------------------------------------------------

cdef class Lane:
    """Per waypoint: the plan cache, the ids, the timer, counters; `adopt` takes a
    connection from `Downstream`."""
    cdef public object glue             # plans.Glue: the Python side
    cdef public dict plans
    cdef public tuple route_headers     # lower-case bytes names any route reads
    cdef public Ids ids
    cdef public object loop
    cdef public object server
    cdef public Py_ssize_t max_head
    cdef public double sample_ratio
    cdef public double idle_s           # the stream idle timeout (0: none)
    cdef public object random
    cdef public object clock            # None: CLOCK_MONOTONIC (time.monotonic)
    cdef long long answered
    cdef long long handed[R_COUNT]
    cdef public set active              # LaneDowns with a deadline
    cdef public object timer
    cdef public double armed_at
    cdef public set downs

    def __init__(self, glue, server, *, double sample_ratio, random, clock):
        self.glue = glue
        self.server = server
        self.plans = {}
        self.route_headers = ()
        self.ids = Ids()
        self.max_head = server.max_head
        self.sample_ratio = sample_ratio
        self.random = random
        self.clock = clock
        self.active = set()
        self.downs = set()
        self.armed_at = 1e300

    def clear(self, route_headers=()):
        """A new snapshot: every cached plan goes."""
        self.plans = {}
        self.route_headers = tuple(route_headers)

    def counts(self):
        out = {("answered", ""): self.answered}
        for i in range(R_COUNT):
            if self.handed[i]:
                out[("handed_over", REASONS[i])] = self.handed[i]
        return out

    def describe(self):
        return {"plans": len(self.plans), "connections": len(self.downs),
                "answered": self.answered,
                "handedOver": {REASONS[i]: self.handed[i] for i in range(R_COUNT)
                               if self.handed[i]}}

    cdef inline double now(self) except? -1:
        if self.clock is None:
            return monotonic()
        return self.clock()

    def adopt(self, down, bytes data):
        """Move a `Downstream` HTTP/1.1 connection into the lane, with the bytes read."""
        if self.loop is None:
            self.loop = down.loop
        ld = LaneDown(self, down)
        down.laned = ld
        down.lane_ok = False
        self.downs.add(ld)
        down.transport.set_protocol(ld)
        ld.feed(data)

    cdef void arm(self, double when) except *:
        if when >= self.armed_at:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.armed_at = when
        # loop.call_at takes the loop's clock; ours is CLOCK_MONOTONIC as is uvloop's/asyncio's
        self.timer = self.loop.call_at(when, self._fire)

    def _fire(self):
        cdef double now = monotonic()
        cdef double nxt = 1e300
        cdef LaneDown d
        self.timer = None
        self.armed_at = 1e300
        for d in list(self.active):
            if d.deadline <= now:
                d.expire(now)
        for d in self.active:
            if d.deadline < nxt:
                nxt = d.deadline
        if nxt < 1e300:
            self.arm(max(nxt, now + 0.001))



cdef enum:
    ST_IDLE = 0       # no request in flight
    ST_CONNECT        # waiting for Python to open an upstream connection
    ST_HEAD           # request sent, waiting for the response head
    ST_BODY           # head written downstream, relaying the body
    ST_BUFFER         # retriable answer: buffering it before deciding

cdef enum:
    B_NONE = 0
    B_LENGTH
    B_CHUNKED
    B_CLOSE

cdef enum:
    C_SIZE = 0
    C_DATA
    C_DATA_END
    C_TRAILER
    C_DONE


cdef class LaneDown:
    """One client connection while the lane serves it."""
    cdef public Lane lane
    cdef public object down            # proxy.Downstream
    cdef public object transport
    cdef object write
    cdef Buf inb
    cdef public bint closed
    cdef public int state
    cdef public double last_active
    cdef public double deadline        # earliest of the route and per-try deadlines
    cdef double route_deadline, try_deadline
    cdef double active_at              # the last byte of this request's stream (idle timeout)
    cdef bytes prefix                  # the plan key's per-connection part
    cdef bint principal
    # the request in flight
    cdef Head h
    cdef Plan plan
    cdef object draw                   # a weighted route's drawn (route, destination)
    cdef ClusterLane cl
    cdef LaneUp up
    cdef int host
    cdef object addr                   # its address, and the Host (indexes may change with
    cdef object hostobj                # a snapshot while a request is in flight)
    cdef double start
    cdef bint keep, is_head, partial, counted_request
    cdef bytes payload
    cdef object span
    cdef bytes span_lines
    cdef char tid[32]                  # the unsampled span's trace and span ids, and its
    cdef char sid[16]                  # parent's (from traceparent): a retry in Python
    cdef char psid[16]                 # sends them again
    cdef bint has_ids, has_parent
    cdef int no_plan_why
    cdef bytes rid
    # the response
    cdef Buf rb                        # raw upstream bytes not yet parsed
    cdef Buf body                      # response body (whole answers, retriable buffering)
    cdef int status, bmode, cstate, up_keep
    cdef long long remaining, sent
    cdef bint streaming, up_started, has_cl
    cdef list rheaders                 # retriable buffering: [(name, value)] for Python
    cdef Buf trailers
    cdef bint write_paused
    cdef public bytes resp_head
    cdef long long resp_len
    cdef list segs                     # lengths of the body's pieces as they came

    def __init__(self, Lane lane, down):
        self.lane = lane
        self.down = down
        self.transport = down.transport
        self.write = self.transport.write
        self.principal = down.principal is not None
        target = down.target
        # (the principal itself: it is in the request's metric labels)
        self.prefix = ((f"{target[0]}:{target[1]}" if target is not None else "")
                       + f"|{down.principal or ''}|").encode("latin-1")
        self.last_active = monotonic()
        self.deadline = 1e300
        self.segs = []

    def __dealloc__(self):
        buf_free(&self.inb)
        buf_free(&self.rb)
        buf_free(&self.body)
        buf_free(&self.trailers)

    # --- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport):
        pass

    def data_received(self, bytes data):
        self.feed(data)

    def eof_received(self):
        return False

    def pause_writing(self):
        self.write_paused = True
        if self.state == ST_BODY and self.up is not None and not self.up.closed:
            self.up.transport.pause_reading()

    def resume_writing(self):
        self.write_paused = False
        if self.state == ST_BODY and self.up is not None and not self.up.closed:
            self.up.transport.resume_reading()

    def connection_lost(self, exc):
        self.closed = True
        self.lane.downs.discard(self)
        self.lane.active.discard(self)
        if self.state != ST_IDLE:
            self.client_gone()
        self.write = None
        down = self.down
        down.laned = None
        down.connection_lost(exc)

    # --- requests ---------------------------------------------------------------------------
    cpdef feed(self, bytes data):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if self.closed:
            return
        buf_add(&self.inb, PyBytes_AS_STRING(data), n)
        if self.state != ST_IDLE:
            if self.inb.len > 262144:
                self.transport.pause_reading()
            return
        self.last_active = monotonic()
        self.process()

    cdef process(self):
        cdef Py_ssize_t r
        cdef int why
        while self.state == ST_IDLE and not self.closed:
            if self.inb.len == 0:
                if self.partial:
                    self.partial = False
                    self.down._arm(self.down.server.idle_timeout_s, "idle")
                return
            r = scan_request(<const unsigned char *>self.inb.p, self.inb.len, self.lane.max_head,
                             &self.h)
            if r == 0:
                if not self.partial and self.h.head_len == 0:
                    # a head still arriving: the slow-client timer, as Python's reader
                    # arms it (a body still arriving keeps the idle timer)
                    self.partial = True
                    self.down._arm(self.down.server.header_timeout_s, "slow")
                elif self.h.head_len > 0 and self.plan_for() is None:
                    # the head is in, its body is not: a request the lane will not take
                    # goes to Python now, which decides at the head (a 404 before the body)
                    self.handover(self.no_plan_why, None)
                return
            if r < 0:
                self.handover(-r - 1, None)
                return
            why = self.take()
            if why >= 0:
                # (after a weighted route's draw, e.g. its pool is full: Python answers for
                # the drawn destination, it does not draw again)
                self.handover(why, None if self.draw is None else self.lane.glue.drawn(self.draw))
                return

    cdef bytes key(self):
        """What the route decision reads: (tunnel target, principal), method, target,
        authority, and the values of the header names any route reads."""
        cdef Buf k
        cdef const unsigned char *p = <const unsigned char *>self.inb.p
        cdef Head *h = &self.h
        cdef bytes name
        cdef int i, found
        cdef Py_ssize_t ln
        k.p = NULL
        k.len = k.cap = 0
        try:
            buf_addb(&k, self.prefix)
            buf_add(&k, self.inb.p, h.t1)          # "METHOD target"
            buf_add(&k, b"\0", 1)
            buf_add(&k, self.inb.p + h.hv0[h.host], h.hv1[h.host] - h.hv0[h.host])
            for name in self.lane.route_headers:
                ln = PyBytes_GET_SIZE(name)
                found = -1
                for i in range(h.nh):
                    if h.hn1[i] - h.hn0[i] == ln and ieq(p + h.hn0[i], ln,
                                                         PyBytes_AS_STRING(name), ln):
                        if found >= 0:
                            return None
                        found = i
                if found < 0:
                    buf_add(&k, b"\1", 1)
                else:
                    buf_add(&k, b"\0", 1)
                    buf_add(&k, self.inb.p + h.hv0[found], h.hv1[found] - h.hv0[found])
            return PyBytes_FromStringAndSize(k.p, k.len)
        finally:
            buf_free(&k)

    cdef Plan plan_for(self):
        """The plan for the request at the front of the buffer (its head is in), or None
        (`no_plan_why` says why)."""
        cdef bytes key = self.key()
        cdef PyObject *hit
        if key is None:
            self.no_plan_why = R_REPEATED
            return None
        hit = PyDict_GetItem(self.lane.plans, key)
        if hit == NULL:
            obj = self.lane.glue.decide(self.down, self.request_fields())
            if len(self.lane.plans) >= 10000:
                self.lane.plans.clear()
            self.lane.plans[key] = obj
        else:
            obj = <object>hit
        if obj is None:
            self.no_plan_why = R_NO_PLAN
            return None
        return <Plan>obj

    cdef int take(self) except -2:
        """Start the request at the front of the buffer; -1 when it is under way, else the
        reason to hand it over."""
        cdef Head *h = &self.h
        cdef const unsigned char *p = <const unsigned char *>self.inb.p
        cdef Lane lane = self.lane
        cdef Plan plan
        cdef ClusterLane cl
        cdef LaneUp up = None, c
        cdef int host
        cdef bint sampled = False
        cdef const unsigned char *tp
        cdef int i
        self.draw = None
        plan = self.plan_for()
        if plan is None:
            return self.no_plan_why
        if plan.subs is not None:          # a weighted route: this request's destination
            plan = plan.draw(lane.ids)
            self.draw = plan.drawn
        # trace context: strict W3C traceparent, or none
        self.span = None
        self.span_lines = None
        if h.tp >= 0:
            tp = p + h.hv0[h.tp]
            if h.hv1[h.tp] - h.hv0[h.tp] != 55 or tp[0] != 48 or tp[1] != 48 or tp[2] != 45 \
                    or tp[35] != 45 or tp[52] != 45:
                return R_TRACEPARENT
            for i in range(55):
                if i in (2, 35, 52):
                    continue
                if HEXV[tp[i]] < 0 or (65 <= tp[i] <= 90):
                    return R_TRACEPARENT
            if _zeros(tp + 3, 32) or _zeros(tp + 36, 16):
                return R_TRACEPARENT
            sampled = (HEXV[tp[54]] & 1) != 0
        elif lane.sample_ratio > 0:
            sampled = lane.random() < lane.sample_ratio
        cl = <ClusterLane>plan.cluster
        cdef Counters counters = cl.counters
        if counters.requests >= cl.max_requests:
            return R_POOL
        self.start = lane.now()
        host = cl.pick(self.start)
        if host < 0:
            return R_NO_HOST
        conns = <list>cl.idle[host]
        up = None
        while conns:
            c = <LaneUp>conns.pop()
            if not c.closed and not c.transport.is_closing():
                up = c
                break
        if up is None:
            up = cl.from_python(host)     # an idle one the Python path left (one pool)
        if up is None and counters.connections >= cl.max_connections:
            return R_POOL
        # From here on the request is the lane's.
        counters.requests += 1
        self.counted_request = True
        self.plan = plan
        self.cl = cl
        self.host = host
        a = self.addr = cl.addresses[host]
        self.hostobj = cl.hosts[host]
        cl.in_flight[a] = cl.in_flight.get(a, 0) + 1
        self.is_head = h.m1 == 4 and memcmp(p, b"HEAD", 4) == 0
        self.keep = not h.close
        if sampled:
            self.span, self.span_lines = lane.glue.span_start(self.down, self.request_fields())
        self.payload = self.build_request()
        self.route_deadline = self.start + plan.timeout_s if plan.timeout_s > 0 else 1e300
        self.try_deadline = self.start + plan.per_try_s if plan.per_try_s > 0 else 1e300
        self.active_at = self.start
        self.set_deadline(self.next_deadline())
        if up is None:
            counters.connections += 1
            self.state = ST_CONNECT
            lane.glue.connect(cl, host, self)
            return -1
        self.send(up)
        return -1

    cdef void set_deadline(self, double when) except *:
        self.deadline = when
        if when < 1e300:
            self.lane.active.add(self)
            self.lane.arm(when)
        else:
            self.lane.active.discard(self)

    def request_fields(self):
        """The request at the front of the buffer as Python values (decisions, spans)."""
        cdef Head *h = &self.h
        data = PyBytes_FromStringAndSize(self.inb.p, h.head_len)
        headers = [(data[h.hn0[i]:h.hn1[i]].decode("latin-1").lower(),
                    data[h.hv0[i]:h.hv1[i]].decode("latin-1")) for i in range(h.nh)]
        return (data[:h.m1].decode("ascii"), data[h.t0:h.t1].decode("latin-1"),
                data[h.hv0[h.host]:h.hv1[h.host]].decode("latin-1"), headers)

    cdef bytes build_request(self):
        cdef Head *h = &self.h
        cdef const unsigned char *p = <const unsigned char *>self.inb.p
        cdef Plan plan = self.plan
        cdef Buf b
        cdef int i
        cdef const char *x
        cdef const unsigned char *tp
        b.p = NULL
        b.len = b.cap = 0
        try:
            buf_reserve(&b, h.head_len + 512 + (h.clen if h.clen > 0 else 0))
            buf_addb(&b, plan.head)
            for i in range(h.nh):
                if in_names(plan.drop, p + h.hn0[i], h.hn1[i] - h.hn0[i]):
                    continue
                buf_lower(&b, p + h.hn0[i], h.hn1[i] - h.hn0[i])
                buf_add(&b, b": ", 2)
                buf_add(&b, self.inb.p + h.hv0[i], h.hv1[i] - h.hv0[i])
                buf_add(&b, b"\r\n", 2)
            buf_addb(&b, plan.add)
            if h.rid < 0:
                i = b.len + 14
                add_request_id(&b, self.lane.ids)
                self.rid = PyBytes_FromStringAndSize(b.p + i, 36)
            else:
                self.rid = None
            buf_addb(&b, plan.xfp)         # (the plan key holds whether there is a principal)
            if self.span_lines is not None:
                buf_addb(&b, self.span_lines)
                self.has_ids = False
            else:
                # an unsampled span: its ids as `Tracing.start` cuts them (kept for a retry)
                if h.tp >= 0:
                    tp = p + h.hv0[h.tp]
                    memcpy(self.tid, tp + 3, 32)
                    memcpy(self.sid, self.lane.ids.nonzero(16), 16)
                    memcpy(self.psid, tp + 36, 16)
                    self.has_parent = True
                else:
                    x = self.lane.ids.take(48)
                    memcpy(self.tid, x, 32)
                    memcpy(self.sid, x + 32, 16)
                    if _zeros(<const unsigned char *>self.tid, 32) or \
                            _zeros(<const unsigned char *>self.sid, 16):
                        memcpy(self.tid, self.lane.ids.nonzero(32), 32)
                        memcpy(self.sid, self.lane.ids.nonzero(16), 16)
                    self.has_parent = False
                self.has_ids = True
                buf_add(&b, b"traceparent: 00-", 16)
                buf_add(&b, self.tid, 32)
                buf_add(&b, b"-", 1)
                buf_add(&b, self.sid, 16)
                buf_add(&b, b"-00\r\nx-b3-traceid: ", 19)
                buf_add(&b, self.tid, 32)
                buf_add(&b, b"\r\nx-b3-spanid: ", 15)
                buf_add(&b, self.sid, 16)
                if self.has_parent:
                    buf_add(&b, b"\r\nx-b3-sampled: 0\r\nx-b3-parentspanid: ", 38)
                    buf_add(&b, self.psid, 16)
                    buf_add(&b, b"\r\n", 2)
                else:
                    buf_add(&b, b"\r\nx-b3-sampled: 0\r\n", 19)
            self.finish_request(&b)
            return PyBytes_FromStringAndSize(b.p, b.len)
        finally:
            buf_free(&b)

    cdef int finish_request(self, Buf *b) except -1:
        cdef Head *h = &self.h
        cdef const unsigned char *p = <const unsigned char *>self.inb.p
        if h.ts >= 0 and h.hv1[h.ts] > h.hv0[h.ts]:
            buf_add(b, b"tracestate: ", 12)
            buf_add(b, self.inb.p + h.hv0[h.ts], h.hv1[h.ts] - h.hv0[h.ts])
            buf_add(b, b"\r\n", 2)
        if h.clen > 0 or self.plan.send_length:
            buf_add(b, b"content-length: ", 16)
            buf_int(b, h.clen if h.clen > 0 else 0)
            buf_add(b, b"\r\n", 2)
        buf_add(b, b"\r\n", 2)
        if h.clen > 0:
            buf_add(b, self.inb.p + h.head_len, h.clen)
        return 0

    cdef void send(self, LaneUp up) except *:
        self.up = up
        up.down = self
        self.state = ST_HEAD
        self.rb.len = 0
        self.body.len = 0
        self.trailers.len = 0
        self.status = 0
        self.up_started = False
        self.streaming = False
        self.sent = 0
        self.rheaders = None
        del self.segs[:]
        up.served += 1
        up.write(self.payload)

    def connected(self, LaneUp up):
        """Python opened the upstream connection (`plans.Glue.connect`)."""
        if self.state != ST_CONNECT or self.closed:
            self.cl.idle[up.host].append(up)
            return
        self.send(up)

    def connect_failed(self):
        if self.state != ST_CONNECT or self.closed:
            return
        self.fail_try("connect-failure")

    # --- the response -----------------------------------------------------------------------
    cdef up_data(self, LaneUp up, bytes data):
        if up is not self.up:
            up.close()
            return
        if self.lane.idle_s > 0:
            self.active_at = monotonic()
        buf_add(&self.rb, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        self.up_started = True
        if self.state == ST_HEAD:
            self.parse_head()
        elif self.state == ST_BODY or self.state == ST_BUFFER:
            self.parse_body()

    cdef parse_head(self):
        cdef const unsigned char *p
        cdef Py_ssize_t n, j, ls, k, vs, i, v, hl
        cdef int status, nh, conn_close, conn_keep, te, cls, version1
        cdef long long clen
        cdef Plan plan = self.plan
        cdef const unsigned char *e
        while True:
            p = <const unsigned char *>self.rb.p
            n = self.rb.len
            e = <const unsigned char *>memmem(p, n, b"\r\n\r\n", 4)
            if _bare_lf(p, (e - p + 4) if e != NULL else n):
                self.fail_try("reset")       # llhttp (strict) refuses it: so does the lane
                return
            if e == NULL:
                if n > 65536:
                    self.fail_try("reset")
                return
            hl = e - p + 4
            if hl < 16 or memcmp(p, b"HTTP/1.", 7) != 0 or (p[7] != 49 and p[7] != 48) \
                    or p[8] != 32:
                self.fail_try("reset")
                return
            version1 = p[7] == 49
            if not (48 <= p[9] <= 57 and 48 <= p[10] <= 57 and 48 <= p[11] <= 57):
                self.fail_try("reset")
                return
            status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
            j = 12
            if p[j] == 32:
                while j < hl and p[j] != 13:
                    if not RVCHAR[p[j]]:
                        self.fail_try("reset")
                        return
                    j += 1
            if p[j] != 13 or p[j + 1] != 10:
                self.fail_try("reset")
                return
            j += 2
            if 100 <= status < 200 and status != 101:
                buf_consume(&self.rb, hl)    # informational: the real answer follows
                continue
            if status < 200 or status > 599:
                self.fail_try("reset")
                return
            break
        # fields
        nh = 0
        conn_close = conn_keep = te = cls = 0
        clen = -1
        starts = []
        while j < hl - 2:
            ls = j
            while TCHAR[p[j]]:
                j += 1
            if j == ls or p[j] != 58:
                self.fail_try("reset")
                return
            k = j
            j += 1
            while p[j] == 32 or p[j] == 9:
                j += 1
            vs = j
            while RVCHAR[p[j]]:
                j += 1
            if p[j] != 13 or p[j + 1] != 10:
                self.fail_try("reset")
                return
            v = j - vs
            while v > 0 and (p[vs + v - 1] == 32 or p[vs + v - 1] == 9):
                v -= 1                    # (trailing whitespace is not part of a value)
            if k - ls == 14 and ieq(p + ls, 14, b"content-length", 14):
                cls += 1
                if cls > 1 or v == 0 or v > 15:
                    self.fail_try("reset")
                    return
                clen = 0
                for i in range(vs, vs + v):
                    if p[i] < 48 or p[i] > 57:
                        self.fail_try("reset")
                        return
                    clen = clen * 10 + (p[i] - 48)
            elif k - ls == 17 and ieq(p + ls, 17, b"transfer-encoding", 17):
                if te or not ieq(p + vs, v, b"chunked", 7):
                    self.fail_try("reset")
                    return
                te = 1
            elif k - ls == 10 and ieq(p + ls, 10, b"connection", 10):
                _conn_tokens(p + vs, v, &conn_close, &conn_keep)
            starts.append((ls, k, vs, j))
            j += 2
        if te and cls:
            self.fail_try("reset")
            return
        self.status = status
        self.has_cl = cls > 0
        if self.is_head or status == 204 or status == 304:
            self.bmode = B_NONE
            self.remaining = 0
        elif te:
            self.bmode = B_CHUNKED
            self.cstate = C_SIZE
        elif cls:
            self.bmode = B_LENGTH
            self.remaining = clen
            self.resp_len = clen
        else:
            self.bmode = B_CLOSE
        self.up_keep = (not conn_close) if version1 else conn_keep
        if self.bmode == B_CLOSE:
            self.up_keep = 0
        # the per-try timeout ends at the response head
        self.try_deadline = 1e300
        self.set_deadline(self.next_deadline())
        head = PyBytes_FromStringAndSize(self.rb.p, hl)
        buf_consume(&self.rb, hl)
        retriable = plan.attempts > 0 and plan.retriable_status[status] == 49
        if retriable:
            self.state = ST_BUFFER
            self.rheaders = [(head[a:b].decode("latin-1").lower(), head[c:d].decode("latin-1"))
                             for a, b, c, d in starts]
            self.resp_head = None
            self.parse_body()
            if self.state == ST_BUFFER:
                # not whole in the read that completed the head: Python streams such an
                # answer and, retrying, discards it — closing the connection; so does the lane
                self.up_keep = 0
            return
        self.resp_head = self.response_head(head, starts, status)
        self.state = ST_BODY
        self.parse_body()

    cdef bytes response_head(self, bytes head, list starts, int status):
        """The downstream head as `http1.serialize_response(_head)` writes it, without the
        length and close lines (added when the body's framing is known)."""
        cdef Buf out
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(head)
        cdef Py_ssize_t a, b, c, d
        cdef Plan plan = self.plan
        out.p = NULL
        out.len = out.cap = 0
        try:
            buf_reserve(&out, PyBytes_GET_SIZE(head) + 256)
            buf_addb(&out, STATUS_LINES[status])
            for a, b, c, d in starts:
                if in_names(HOP, p + a, b - a):
                    if not (self.is_head and b - a == 14 and ieq(p + a, 14, b"content-length", 14)
                            and not in_names(plan.resp_drop, p + a, b - a)):
                        continue
                elif in_names(plan.resp_drop, p + a, b - a):
                    continue
                buf_lower(&out, p + a, b - a)
                buf_add(&out, b": ", 2)
                buf_add(&out, <const char *>p + c, d - c)
                buf_add(&out, b"\r\n", 2)
            buf_addb(&out, plan.resp_add)
            return PyBytes_FromStringAndSize(out.p, out.len)
        finally:
            buf_free(&out)

    cdef bint keep_down(self):
        return self.keep and not self.lane.server.draining

    cdef parse_body(self):
        """Consume what `rb` holds of the body; answer when it is complete."""
        cdef int r
        cdef Py_ssize_t n
        if self.bmode == B_NONE:
            self.complete()
            return
        if self.bmode == B_LENGTH:
            if self.state == ST_BODY and (self.streaming or self.rb.len < self.remaining):
                # not all here: stream it (the same bytes Python writes either way)
                if not self.streaming:
                    self.start_stream()
                if self.rb.len:
                    n = min(self.rb.len, self.remaining)
                    self.write(PyBytes_FromStringAndSize(self.rb.p, n))
                    self.sent += n
                    self.remaining -= n
                    buf_consume(&self.rb, n)
                if self.remaining == 0:
                    self.complete()
                return
            n = min(self.rb.len, self.remaining)
            buf_add(&self.body, self.rb.p, n)
            self.remaining -= n
            buf_consume(&self.rb, n)
            if self.remaining == 0:
                self.complete()
            elif self.body.len > MAX_RETRY_BODY:
                self.buffer_overflow()
            return
        if self.bmode == B_CHUNKED:
            r = self.dechunk()
            if r < 0:
                if self.streaming:
                    self.up_failed("reset")
                else:
                    self.fail_try("reset")   # nothing went downstream: as a failed try
                return
            if self.streaming:
                self.flush_chunks()
            if self.cstate == C_DONE:
                self.complete()
                return
            if self.state == ST_BODY and not self.streaming:
                self.start_stream()
                self.flush_chunks()
            elif self.state == ST_BUFFER and self.body.len > MAX_RETRY_BODY:
                self.buffer_overflow()
            return
        # close-delimited: all of it until the upstream closes
        if self.rb.len:
            self.segs.append(self.rb.len)
        buf_add(&self.body, self.rb.p, self.rb.len)
        self.rb.len = 0
        if self.state == ST_BODY:
            if not self.streaming:
                self.start_stream()
            self.flush_chunks()
        elif self.body.len > MAX_RETRY_BODY:
            self.buffer_overflow()

    cdef int dechunk(self) except -2:
        """Chunked framing from `rb` into `body` (data) and `trailers` (lines)."""
        cdef const unsigned char *p
        cdef Py_ssize_t n, pos = 0, j, k
        cdef const unsigned char *e
        cdef long long size
        cdef int digits
        p = <const unsigned char *>self.rb.p
        n = self.rb.len
        while pos < n and self.cstate != C_DONE:
            if self.cstate == C_SIZE:
                e = <const unsigned char *>memchr(p + pos, 10, n - pos)
                if e == NULL:
                    if n - pos > 4096:
                        return -1
                    break
                j = pos
                size = 0
                digits = 0
                while HEXV[p[j]] >= 0:
                    size = size * 16 + HEXV[p[j]]
                    j += 1
                    digits += 1
                    if digits > 15:
                        return -1
                if digits == 0 or (p[j] != 13 and p[j] != 59):
                    return -1
                if (e - p) < 1 or p[(e - p) - 1] != 13:
                    return -1
                pos = (e - p) + 1
                if size == 0:
                    self.cstate = C_TRAILER
                else:
                    self.remaining = size
                    self.cstate = C_DATA
            elif self.cstate == C_DATA:
                j = min(n - pos, self.remaining)
                buf_add(&self.body, self.rb.p + pos, j)
                self.segs.append(j)
                pos += j
                self.remaining -= j
                if self.remaining == 0:
                    self.cstate = C_DATA_END
            elif self.cstate == C_DATA_END:
                if n - pos < 2:
                    break
                if p[pos] != 13 or p[pos + 1] != 10:
                    return -1
                pos += 2
                self.cstate = C_SIZE
            elif self.cstate == C_TRAILER:
                e = <const unsigned char *>memchr(p + pos, 10, n - pos)
                if e == NULL:
                    if n - pos > 8192:
                        return -1
                    break
                j = (e - p) + 1
                if j - pos == 2 and p[pos] == 13:
                    pos = j
                    self.cstate = C_DONE
                    break
                if j - pos < 3 or p[j - 2] != 13:
                    return -1
                # a trailer field: lower-case name, value as sent
                k = pos
                while TCHAR[p[k]]:
                    k += 1
                if k == pos or p[k] != 58:
                    return -1
                buf_lower(&self.trailers, p + pos, k - pos)
                buf_add(&self.trailers, b": ", 2)
                k += 1
                while p[k] == 32 or p[k] == 9:
                    k += 1
                buf_add(&self.trailers, self.rb.p + k, (j - 2) - k)
                buf_add(&self.trailers, b"\r\n", 2)
                pos = j
        buf_consume(&self.rb, pos)
        return 0

    cdef start_stream(self):
        """Write the head of an answer whose body follows as it arrives (Python's
        `serialize_response_head`: the upstream's length, else chunked)."""
        cdef Buf out
        out.p = NULL
        out.len = out.cap = 0
        self.record_outcome(self.status)    # as `_forward` does, before it goes downstream
        try:
            buf_addb(&out, self.resp_head)
            if self.bmode == B_LENGTH:
                buf_add(&out, b"content-length: ", 16)
                buf_int(&out, self.resp_len)
                buf_add(&out, b"\r\n", 2)
            else:
                buf_add(&out, b"transfer-encoding: chunked\r\n", 28)
            if not self.keep_down():
                buf_add(&out, b"connection: close\r\n", 19)
            buf_add(&out, b"\r\n", 2)
            if self.bmode == B_LENGTH and self.body.len:
                buf_add(&out, self.body.p, self.body.len)
                self.sent += self.body.len
                self.body.len = 0
            self.streaming = True
            self.write(PyBytes_FromStringAndSize(out.p, out.len))
        finally:
            buf_free(&out)

    cdef flush_chunks(self):
        """Streamed chunked answer: what `body` holds, one chunk per piece as it came (the
        pieces llhttp hands the Python path: a chunk's data within one read)."""
        cdef char tmp[24]
        cdef int k
        cdef Py_ssize_t pos = 0, n
        cdef Buf out
        if self.body.len == 0:
            return
        out.p = NULL
        out.len = out.cap = 0
        try:
            for seg in self.segs:
                n = seg
                k = snprintf(tmp, 24, b"%llx\r\n", <long long>n)
                buf_add(&out, tmp, k)
                buf_add(&out, self.body.p + pos, n)
                buf_add(&out, b"\r\n", 2)
                pos += n
            if pos < self.body.len:       # (not split into pieces: one chunk)
                k = snprintf(tmp, 24, b"%llx\r\n", <long long>(self.body.len - pos))
                buf_add(&out, tmp, k)
                buf_add(&out, self.body.p + pos, self.body.len - pos)
                buf_add(&out, b"\r\n", 2)
            self.sent += self.body.len
            self.body.len = 0
            del self.segs[:]
            self.write(PyBytes_FromStringAndSize(out.p, out.len))
        finally:
            buf_free(&out)

    cdef buffer_overflow(self):
        """A retriable answer too big to hold for a retry: it is the final answer."""
        self.resp_head = self.response_head_from_list()
        self.state = ST_BODY
        self.start_stream()
        if self.bmode != B_LENGTH:
            self.flush_chunks()

    cdef bytes response_head_from_list(self):
        # (rebuild the kept head from the Python list made for a retry)
        cdef Buf out
        out.p = NULL
        out.len = out.cap = 0
        try:
            buf_addb(&out, STATUS_LINES[self.status])
            for n, v in self.rheaders:
                bn = n.encode("latin-1")
                if bn in HOP_SET:
                    if not (self.is_head and bn == b"content-length"
                            and bn not in self.plan.resp_drop):
                        continue
                elif bn in self.plan.resp_drop:
                    continue
                buf_addb(&out, bn)
                buf_add(&out, b": ", 2)
                buf_addb(&out, v.encode("latin-1"))
                buf_add(&out, b"\r\n", 2)
            buf_addb(&out, self.plan.resp_add)
            return PyBytes_FromStringAndSize(out.p, out.len)
        finally:
            buf_free(&out)

    cdef complete(self):
        """The whole answer is in (or, streamed, all of it went out)."""
        cdef Buf out
        cdef LaneUp up = self.up
        cdef long long resp_bytes
        if self.state == ST_BUFFER:
            self.retry_handover()
            return
        if self.streaming:
            if self.bmode != B_LENGTH:
                self.flush_chunks()
                out.p = NULL
                out.len = out.cap = 0
                try:
                    buf_add(&out, b"0\r\n", 3)
                    if self.trailers.len:
                        buf_add(&out, self.trailers.p, self.trailers.len)
                    buf_add(&out, b"\r\n", 2)
                    self.write(PyBytes_FromStringAndSize(out.p, out.len))
                finally:
                    buf_free(&out)
            resp_bytes = self.sent
        else:
            self.record_outcome(self.status)
            out.p = NULL
            out.len = out.cap = 0
            try:
                buf_addb(&out, self.resp_head)
                if self.status >= 200 and self.status != 204 and self.status != 304 and not (
                        self.is_head and self.has_cl and not _dropped_cl(self.plan)):
                    buf_add(&out, b"content-length: ", 16)
                    buf_int(&out, self.body.len)
                    buf_add(&out, b"\r\n", 2)
                if not self.keep_down():
                    buf_add(&out, b"connection: close\r\n", 19)
                buf_add(&out, b"\r\n", 2)
                if self.body.len and not self.is_head:
                    buf_add(&out, self.body.p, self.body.len)
                self.write(PyBytes_FromStringAndSize(out.p, out.len))
            finally:
                buf_free(&out)
            resp_bytes = self.body.len
        self.release_up(self.up_keep and not self.rb.len)
        self.finish(self.status, b"-", resp_bytes)

    cdef void release_up(self, bint reuse) except *:
        cdef LaneUp up = self.up
        cdef ClusterLane cl = self.cl
        self.up = None
        if up is None:
            return
        up.down = None
        a = self.addr
        cl.in_flight[a] = cl.in_flight.get(a, 1) - 1
        i = cl.index.get(a)
        if reuse and not up.closed and not (cl.max_rpc and up.served >= cl.max_rpc) \
                and i is not None:
            up.host = i
            (<list>cl.idle[i]).append(up)
            if cl.state.waiters:
                cl.state._wake()
        else:
            up.close()

    cdef void record_outcome(self, object outcome) except *:
        # (the buffer-overflow path records too: the retriable answer became the final one)
        cdef ClusterLane cl = self.cl
        if cl.state.outlier is None:
            return
        if (isinstance(outcome, int) and outcome < 500) and self.addr not in cl.dirty:
            return
        self.lane.glue.record(cl, self.hostobj, outcome)

    cdef void finish(self, int status, bytes flags, long long resp_bytes) except *:
        """Metrics, the span, the pool; then the next request."""
        cdef Plan plan = self.plan
        cdef double end = self.lane.now()
        cdef Series s = None
        if plan.last_series is not None and plan.last_addr is self.addr and \
                plan.last_status == status and flags == b"-":
            s = plan.last_series
        else:
            key = (self.addr, status, flags)
            hit = plan.series.get(key)
            if hit is None:
                hit = self.lane.glue.series(plan, self.hostobj, status, flags.decode())
                plan.series[key] = hit
            if hit is not False:
                s = <Series>hit
                if flags == b"-":
                    plan.last_addr, plan.last_status, plan.last_series = self.addr, status, s
        if s is not None:
            s.add((end - self.start) * 1000.0, self.h.clen if self.h.clen > 0 else 0,
                  resp_bytes)
        if self.span is not None:
            self.lane.glue.span_end(self.span, status)
            self.span = None
        self.end_request()
        self.lane.answered += 1
        if self.closed:
            return
        buf_consume(&self.inb, self.h.total)
        if flags != b"-":
            return
        if not self.keep_down():
            self.closed = True
            self.transport.close()
            return
        if self.inb.len <= 65536:
            try:
                self.transport.resume_reading()
            except Exception:
                pass
        self.process()

    cdef void end_request(self) except *:
        self.state = ST_IDLE
        self.set_deadline(1e300)
        if self.counted_request:
            self.counted_request = False
            self.cl.counters.requests -= 1
        self.plan = None
        self.payload = None
        self.last_active = monotonic()

    # --- failures ---------------------------------------------------------------------------
    cdef fail_try(self, str outcome):
        """The try failed before anything went downstream: Python takes the request over
        with this first try (it records it and retries, or answers, as `_forward` does)."""
        cdef LaneUp up = self.up
        if up is not None:
            self.release_up(False)
            up.abort()
        elif self.state == ST_CONNECT:
            a = self.addr
            self.cl.in_flight[a] = self.cl.in_flight.get(a, 1) - 1
        stale = outcome == "reset" and up is not None and not self.up_started and up.served > 1
        self.resume(R_STALE if stale else R_FAILURE, None if stale else outcome, None)

    cdef up_failed(self, str outcome):
        """The upstream broke (closed early, bad framing) after the head."""
        cdef LaneUp up = self.up
        if self.state == ST_BUFFER:
            self.fail_try(outcome)
            return
        self.release_up(False)
        if up is not None:
            up.abort()
        self.lane.glue.record(self.cl, self.hostobj, "reset")
        self.finish(self.status, b"UR", self.sent)
        self.closed = True
        self.transport.abort()        # a truncated body must not look complete

    cdef up_lost(self, LaneUp up):
        """The upstream connection closed while it served this request."""
        if self.state == ST_HEAD:
            self.up = None
            a = self.addr
            self.cl.in_flight[a] = self.cl.in_flight.get(a, 1) - 1
            stale = not self.up_started and up.served > 1
            self.resume(R_STALE if stale else R_FAILURE, None if stale else "reset", None)
        elif self.bmode == B_CLOSE:
            self.up_keep = 0
            if self.state == ST_BODY and self.streaming:
                self.up = None
                a = self.addr
                self.cl.in_flight[a] = self.cl.in_flight.get(a, 1) - 1
                self.complete()
            else:
                up.down = self     # complete() releases it (closed: not reused)
                self.complete()
        elif self.state == ST_BODY or self.state == ST_BUFFER:
            self.up_failed("reset")

    cdef retry_handover(self):
        cdef LaneUp up = self.up
        body = PyBytes_FromStringAndSize(self.body.p, self.body.len)
        self.release_up(self.up_keep and not self.rb.len)
        self.resume(R_RETRY, self.status, (self.rheaders, body))

    cdef resume(self, int why, object outcome, object response):
        """Hand the request (not answered yet) and the rest of the connection to Python."""
        ids = None
        if self.span is None and self.has_ids:
            ids = (PyBytes_FromStringAndSize(self.tid, 32), PyBytes_FromStringAndSize(self.sid, 16),
                   PyBytes_FromStringAndSize(self.psid, 16) if self.has_parent else None)
        r = self.lane.glue.resume(self.cl, self.hostobj, outcome, response, self.start,
                                  self.span, self.rid, why == R_STALE, why == R_ROUTE_TIMEOUT,
                                  ids, self.plan.drawn if self.plan is not None else None)
        self.span = None
        self.end_request()
        self.handover(why, r)

    cdef expire(self, double now):
        """The route or per-try deadline passed."""
        if self.state == ST_IDLE:
            self.set_deadline(1e300)
            return
        if now >= self.route_deadline:
            if self.state == ST_BODY and self.streaming:
                self.cut_stream(b"UT")
                return
            self.drop_try()
            self.resume(R_ROUTE_TIMEOUT, None, None)
            return
        if now >= self.try_deadline and self.state in (ST_HEAD, ST_CONNECT):
            self.drop_try()
            self.resume(R_FAILURE, "timeout", None)
            return
        if self.lane.idle_s > 0 and now >= self.active_at + self.lane.idle_s:
            self.stream_idle()
            return
        self.set_deadline(self.next_deadline())

    cdef drop_try(self):
        """Give up the try in progress: its upstream connection is not reused (aborted), or
        the connect under way no longer counts in its host's in-flight requests."""
        cdef LaneUp up = self.up
        self.release_up(False)
        if up is not None:
            up.abort()
        elif self.state == ST_CONNECT:
            a = self.addr
            self.cl.in_flight[a] = self.cl.in_flight.get(a, 1) - 1

    cdef cut_stream(self, bytes flag):
        """An answer already streaming downstream ends early (`flag`: UT, SI): the upstream
        connection and the client's are aborted, so the client sees it was cut short."""
        cdef LaneUp up = self.up
        self.release_up(False)
        if up is not None:
            up.abort()
        self.finish(self.status, flag, self.sent)
        self.closed = True
        self.transport.abort()

    cdef double next_deadline(self):
        cdef double d = min(self.route_deadline, self.try_deadline)
        if self.lane.idle_s > 0:
            d = min(d, self.active_at + self.lane.idle_s)
        return d

    cdef stream_idle(self):
        """No byte either way for the stream idle timeout (`waypoint/stream_idle.py`): a 408
        when nothing was answered yet, else the connection is reset; flag SI."""
        cdef Series s
        if self.state == ST_BODY and self.streaming:
            self.cut_stream(b"SI")
            return
        self.drop_try()
        payload, series = self.lane.glue.stream_idle_answer(self.plan)
        if series is not False:
            s = <Series>series
            s.add((self.lane.now() - self.start) * 1000.0,
                  self.h.clen if self.h.clen > 0 else 0, 14)
        if self.span is not None:
            self.lane.glue.span_end(self.span, 408)
            self.span = None
        self.end_request()
        self.lane.answered += 1
        self.write(payload)
        self.closed = True
        self.transport.close()

    cdef client_gone(self):
        """The client closed while its request was in flight (Python: the task is
        cancelled, the upstream connection aborted; a streamed answer counts as DC)."""
        cdef LaneUp up = self.up
        streamed = self.state == ST_BODY and self.streaming
        if self.state == ST_CONNECT:
            a = self.addr
            self.cl.in_flight[a] = self.cl.in_flight.get(a, 1) - 1
        self.release_up(False)
        if up is not None:
            up.abort()
        if streamed:
            self.finish(self.status, b"DC", self.sent)
        else:
            self.span = None             # (Python's cancelled request ends no span either)
            self.end_request()

    # --- back to Python ---------------------------------------------------------------------
    cdef handover(self, int why, object resume):
        """From here on `Downstream` serves this connection: the bytes not consumed (the
        request not taken first), in order."""
        self.lane.handed[why] += 1
        self.lane.downs.discard(self)
        self.lane.active.discard(self)
        self.closed = True            # to the lane; the transport lives on
        down = self.down
        rest = PyBytes_FromStringAndSize(self.inb.p, self.inb.len)
        self.inb.len = 0
        down.laned = None
        down.resume = resume
        # after Python answered it, the connection comes back to the lane
        # (`Downstream._serve`): one request outside the lane's subset (a fault route,
        # a b3 header) does not keep the connection's next ones from it
        down.lane_back = True
        self.transport.set_protocol(down)
        self.partial = False
        try:
            self.transport.resume_reading()
        except Exception:
            pass
        if rest:
            down.data_received(rest)


cdef bint _bare_lf(const unsigned char *p, Py_ssize_t n) noexcept:
    """A LF not preceded by CR in p[:n]."""
    cdef const unsigned char *q = p
    cdef const unsigned char *end = p + n
    while q < end:
        q = <const unsigned char *>memchr(q, 10, end - q)
        if q == NULL:
            return False
        if q == p or (q - 1)[0] != 13:
            return True
        q += 1
    return False


cdef inline bint _zeros(const unsigned char *x, int n) noexcept:
    cdef int i
    for i in range(n):
        if x[i] != 48:
            return False
    return True


cdef void _conn_tokens(const unsigned char *v, Py_ssize_t n, int *close, int *keep) noexcept:
    cdef Py_ssize_t i = 0, s
    while i < n:
        while i < n and (v[i] == 32 or v[i] == 9 or v[i] == 44):
            i += 1
        s = i
        while i < n and v[i] != 44 and v[i] != 32 and v[i] != 9:
            i += 1
        if ieq(v + s, i - s, b"close", 5):
            close[0] = 1
        elif ieq(v + s, i - s, b"keep-alive", 10):
            keep[0] = 1


cdef bint _dropped_cl(Plan plan):
    return b"content-length" in plan.resp_drop


HOP_NAMES = (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
             b"trailer", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
             b"content-length", b"host", b"http2-settings", b"expect")
cdef list HOP = list(HOP_NAMES)
cdef frozenset HOP_SET = frozenset(HOP_NAMES)
cdef list STATUS_LINES = []


def set_reasons(dict reasons):
    """Status lines as `http1.REASONS` names them (called once by `plans`)."""
    global STATUS_LINES
    STATUS_LINES = [f"HTTP/1.1 {s} {reasons.get(s, '')}\r\n".encode("latin-1")
                    for s in range(600)]
