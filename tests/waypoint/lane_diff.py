"""Differential harness: the same client bytes through a waypoint with the fast lane and one
without, each in front of its own recording upstream, and everything observable compared.

Before: a list of Service dicts whose endpoint ports are the placeholders `UP` (the side's
recording upstream) or `DEAD` (a bound port nobody listens on: connect failure), the mesh
YAML, and a *script*: a function from the request an upstream received to what it does
(`Act`: bytes to write, after an optional delay, then keep the connection, close it, reset
it, or hang). After: `Pair.run(pieces, methods)` sends the pieces over one real socket to
each waypoint (each piece its own write) and returns both `Transcript`s; `Pair.observed()`
returns, per side, everything a user can see — the client's bytes and whether the
connection stayed open, the upstream's bytes per connection, the request metrics, the
circuit-breaker / outlier counters of `/debug/snapshot` — with only the ids that are random
by design (x-request-id, traceparent/B3 trace and span ids) replaced by placeholders in
order of first appearance (so "the same id twice" still shows). `lane_counts()` reads the
lane's `lacewing_waypoint_fast_lane_total` so a test can assert the lane really answered.

Only loopback; the upstreams are blocking-socket threads, stopped (and every socket closed)
when the pair closes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from tests.waypoint.conftest import make_snapshot
from waypoint.proxy import WaypointThread
from waypoint.telemetry import Tracing

UP = -1
DEAD = -2
UP2 = -3     # a second recording upstream of the side (its own script instance)

# --- what an upstream does ---------------------------------------------------------------------


@dataclass(frozen=True)
class Act:
    """One upstream answer: `data` written in one send after `delay` seconds, then each
    `(delay, bytes)` of `more`, then `then`: keep | close | reset | hang (never answer)."""

    data: bytes = b""
    delay: float = 0.0
    more: tuple[tuple[float, bytes], ...] = ()
    then: str = "keep"


REASON = {200: "OK", 204: "No Content", 304: "Not Modified", 404: "Not Found",
          500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def reply(status: int = 200, headers: Iterable[tuple[str, str]] = (), body: bytes = b"", *,
          framing: str = "length", trailers: Iterable[tuple[str, str]] = (),
          chunks: Iterable[bytes] | None = None, version: str = "1.1",
          reason: str | None = None) -> bytes:
    """Response bytes. framing: length (Content-Length), chunked (`chunks` or the body as
    one chunk, then `trailers`), close (no length: delimited by closing — pair with
    `then="close"`), none (no length line and no body: HEAD, 204, 304)."""
    r = REASON.get(status, "Whatever") if reason is None else reason
    out = f"HTTP/{version} {status} {r}\r\n"
    for n, v in headers:
        out += f"{n}: {v}\r\n"
    if framing == "length":
        out += f"Content-Length: {len(body)}\r\n"
    elif framing == "chunked":
        out += "Transfer-Encoding: chunked\r\n"
    out += "\r\n"
    data = out.encode("latin-1")
    if framing == "chunked":
        for c in (chunks if chunks is not None else ([body] if body else [])):
            data += b"%x\r\n%b\r\n" % (len(c), c)
        data += b"0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in trailers).encode() + b"\r\n"
    elif framing in ("length", "close"):
        data += body
    return data


OK = Act(reply(200, [("Content-Type", "text/plain"), ("X-Up", "1")], b"hello"))
OK_HEAD = Act(reply(200, [("Content-Type", "text/plain"), ("X-Up", "1"),
                          ("Content-Length", "5")], framing="none"))


def ok(rq: Received) -> Act:
    """200 `hello` (HEAD: the same head, no body)."""
    return OK_HEAD if rq.method == "HEAD" else OK


@dataclass
class Received:
    """A request as an upstream got it."""

    raw: bytes
    method: str
    target: str
    headers: list[tuple[str, str]]      # lower-case names
    body: bytes
    index: int                          # among all requests this upstream received

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


Script = Callable[[Received], Act]


def by_header(table: dict[str, list[Act]], default: Script = ok, name: str = "x-resp"
              ) -> Script:
    """Answer by the value of one request header: each key's acts in turn, the last one
    repeating (so `[503, 200]` fails the first try and answers the retry)."""
    used: dict[str, int] = {}
    lock = threading.Lock()

    def script(rq: Received) -> Act:
        key = rq.header(name)
        acts = table.get(key) if key is not None else None
        if not acts:
            return default(rq)
        with lock:
            i = used.get(key, 0)
            used[key] = i + 1
        return acts[min(i, len(acts) - 1)]
    return script


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = bytearray()
        self.requests: list[Received] = []


class Upstream:
    """A recording HTTP/1.1 server on 127.0.0.1: every byte received per connection, each
    request answered as the script says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.conns: list[_Conn] = []
        self.count = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True, name="upstream-accept")
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            c = _Conn(sock)
            with self.lock:
                self.conns.append(c)
            t = threading.Thread(target=self._serve, args=(c,), daemon=True, name="upstream")
            t.start()
            self.threads.append(t)

    def _recv(self, c: _Conn) -> bytes:
        try:
            data = c.sock.recv(65536)
        except OSError:
            return b""
        c.raw += data
        return data

    def _read_request(self, c: _Conn, buf: bytearray) -> Received | None:
        while b"\r\n\r\n" not in buf:
            data = self._recv(c)
            if not data:
                return None
            buf += data
        end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:end])
        del buf[:end]
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ")[:2]
        headers = []
        for line in lines[1:]:
            n, _, v = line.partition(":")
            headers.append((n.lower(), v.strip()))
        hd = dict(headers)
        body = bytearray()
        raw_body = bytearray()
        if hd.get("transfer-encoding", "").lower() == "chunked":
            while True:
                while b"\r\n" not in buf:
                    data = self._recv(c)
                    if not data:
                        return None
                    buf += data
                i = buf.index(b"\r\n")
                size = int(bytes(buf[:i]).split(b";")[0], 16)
                if size == 0:
                    while b"\r\n\r\n" not in b"\r\n" + buf:
                        data = self._recv(c)
                        if not data:
                            return None
                        buf += data
                    j = (b"\r\n" + buf).index(b"\r\n\r\n") + 2
                    raw_body += buf[:j]
                    del buf[:j]
                    break
                while len(buf) < i + 2 + size + 2:
                    data = self._recv(c)
                    if not data:
                        return None
                    buf += data
                body += buf[i + 2:i + 2 + size]
                raw_body += buf[:i + 2 + size + 2]
                del buf[:i + 2 + size + 2]
        else:
            n = int(hd.get("content-length", "0") or 0)
            while len(buf) < n:
                data = self._recv(c)
                if not data:
                    return None
                buf += data
            body += buf[:n]
            raw_body += buf[:n]
            del buf[:n]
        with self.lock:
            index = self.count
            self.count += 1
        rq = Received(head + bytes(raw_body), method, target, headers, bytes(body), index)
        c.requests.append(rq)
        return rq

    def _serve(self, c: _Conn) -> None:
        buf = bytearray()
        try:
            while not self.stopping.is_set():
                rq = self._read_request(c, buf)
                if rq is None:
                    return
                act = self.script(rq)
                if act.delay and self.stopping.wait(act.delay):
                    return
                if act.data:
                    c.sock.sendall(act.data)
                for delay, data in act.more:
                    if self.stopping.wait(delay):
                        return
                    c.sock.sendall(data)
                if act.then == "close":
                    c.sock.shutdown(socket.SHUT_WR)
                    while self._recv(c):    # until the waypoint closes its end
                        pass
                    return
                if act.then == "reset":
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
                    return
                if act.then == "hang":
                    while self._recv(c):
                        pass
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                c.sock.close()

    def received(self) -> list[bytes]:
        """The raw bytes of each connection, in the order they were accepted."""
        with self.lock:
            return [bytes(c.raw) for c in self.conns]

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)    # wakes the accept() below
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.sock.close()
        for t in self.threads:
            t.join(5)


# --- the client ----------------------------------------------------------------------------------


@dataclass
class Transcript:
    data: bytes                    # every byte the client received
    responses: int                 # complete responses among them
    end: str                       # open | closed | reset | timeout | aborted | unchecked
    methods: list[str] = field(default_factory=list)


def _frame(buf: bytes, head_only: bool) -> int | None:
    """The length of the complete response at the front of `buf`, or None."""
    pos = 0
    while True:
        e = buf.find(b"\r\n\r\n", pos)
        if e < 0:
            return None
        head = buf[pos:e].decode("latin-1")
        lines = head.split("\r\n")
        try:
            status = int(lines[0].split(" ")[1])
        except (IndexError, ValueError):
            return e + 4
        fields = {}
        for line in lines[1:]:
            n, _, v = line.partition(":")
            fields[n.strip().lower()] = v.strip()
        body0 = e + 4
        if 100 <= status < 200 and status != 101:
            pos = body0
            continue
        if head_only or status in (204, 304):
            return body0
        if fields.get("transfer-encoding", "").lower() == "chunked":
            p = body0
            while True:
                i = buf.find(b"\r\n", p)
                if i < 0:
                    return None
                size = int(buf[p:i].split(b";")[0], 16)
                if size == 0:
                    j = buf.find(b"\r\n\r\n", i)
                    if buf[i:i + 4] == b"\r\n\r\n":
                        return i + 4
                    return None if j < 0 else j + 4
                p = i + 2 + size + 2
                if p > len(buf):
                    return None
        if "content-length" in fields:
            n = body0 + int(fields["content-length"])
            return n if n <= len(buf) else None
        return None                     # delimited by closing


def _dechunk(buf: bytes) -> tuple[bytes, bytes, int] | None:
    """(data, trailer section, length consumed) of the chunked body at the front of buf."""
    p = 0
    data = b""
    while True:
        i = buf.find(b"\r\n", p)
        if i < 0:
            return None
        size = int(buf[p:i].split(b";")[0], 16)
        if size == 0:
            j = buf.find(b"\r\n\r\n", i)
            if buf[i:i + 4] == b"\r\n\r\n":
                return data, b"", i + 4
            return None if j < 0 else (data, buf[i + 2:j + 2], j + 4)
        data += buf[i + 2:i + 2 + size]
        p = i + 2 + size + 2


def one_chunk(data: bytes, methods: list[str]) -> bytes:
    """The client's bytes with every chunked body written as one chunk (chunk boundaries
    carry no meaning, RFC 9112 §7.1; test_chunks_arriving_together_while_streaming keeps
    the byte-exact comparison)."""
    out = b""
    pos = 0
    for m in methods:
        n = _frame(data[pos:], m == "HEAD")
        if n is None:
            break
        msg = data[pos:pos + n]
        e = msg.find(b"\r\n\r\n") + 4
        while msg[9:10] == b"1" and msg[9:12] != b"101":   # informational heads first
            out += msg[:e]
            msg = msg[e:]
            e = msg.find(b"\r\n\r\n") + 4
        head = msg[:e]
        if b"\r\ntransfer-encoding: chunked\r\n" in head.lower() and m != "HEAD":
            body, trailers, _ = _dechunk(msg[e:])
            msg = head + (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n" + \
                trailers + b"\r\n"
        out += msg
        pos += n
    return out + data[pos:]


def exchange(port: int, pieces: list[bytes], methods: list[str], *, gap: float = 0.0,
             timeout: float = 10.0, settle: float = 0.1, context=None,
             abort_after: int | None = None, half_close: bool = False) -> Transcript:
    """Send each piece as its own write (waiting `gap` between them), then read responses —
    one per method, HEAD ones without a body — until they are all in, the connection ends,
    or `timeout`; then wait `settle` seconds to see whether the connection stays open
    (for an answer that said `connection: close`, until it closes or `timeout`)
    (`settle=0`: not looked at, the end is "unchecked").
    With `context` (a client `ssl.SSLContext`) the connection is TLS: a principal.
    `abort_after`: the client closes its socket (a reset if bytes are unread) once it has
    received that many bytes (end "aborted"); `half_close`: it shuts its sending side down
    after the last piece."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if context is not None:
        sock = context.wrap_socket(sock)
    data = b""
    got = 0
    pos = 0
    end = "timeout"
    try:
        try:
            for i, p in enumerate(pieces):
                if i and gap:
                    time.sleep(gap)
                sock.sendall(p)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass            # the waypoint ended the connection early: read what it wrote
        deadline = time.monotonic() + timeout
        while got < len(methods):
            if abort_after is not None and len(data) >= abort_after:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return Transcript(data[:abort_after], got, "aborted")
            n = _frame(data[pos:], methods[got] == "HEAD")
            if n is not None:
                pos += n
                got += 1
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return Transcript(data, got, "timeout")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return Transcript(data, got, "timeout")
            except (ConnectionResetError, ssl.SSLEOFError):
                return Transcript(data, got, "reset")
            if not chunk:
                if data[pos:]:
                    got += 1               # a close-delimited last response
                return Transcript(data, got, "closed")
            data += chunk
        if not settle:
            return Transcript(data, got, "unchecked")
        last = data[:pos]
        last = last[last.rfind(b"HTTP/1."):]
        announced = b"\r\nconnection: close\r\n" in last[:last.find(b"\r\n\r\n") + 2].lower()
        # (a close the answer announced is waited for; otherwise `settle` shows one that
        # was not announced, which follows the answer at once)
        sock.settimeout(max(deadline - time.monotonic(), settle) if announced else settle)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                end = "open"
                break
            except (ConnectionResetError, ssl.SSLEOFError):
                end = "reset"
                break
            if not chunk:
                end = "closed"
                break
            data += chunk               # bytes nobody asked for: kept, compared
        return Transcript(data, got, end)
    finally:
        with contextlib.suppress(OSError):
            sock.close()


# --- normalizing what is random by design ---------------------------------------------------------

_ID_LINE = re.compile(rb"(?im)^(x-request-id|traceparent|x-b3-traceid|x-b3-spanid|"
                      rb"x-b3-parentspanid): ([^\r\n]*)")
_TOKEN = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                    rb"|[0-9a-f]{32}|[0-9a-f]{16}")


_UUID4 = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _shape(t: bytes) -> bytes:
    """What kind of id it is, so a malformed one still shows: uuid4 | uuid-bad | hex32 |
    hex16 (| -zero when all zero, which W3C forbids)."""
    if b"-" in t:
        return b"uuid4" if _UUID4.fullmatch(t) else b"uuid-bad"
    return b"hex%d%s" % (len(t), b"-zero" if not t.strip(b"0") else b"")


class Ids:
    """Replaces generated ids with <idN> in order of first appearance; ids the client sent
    (`known`) stay as they are."""

    def __init__(self, known: bytes) -> None:
        self.known = set(_TOKEN.findall(known.lower()))
        self.names: dict[bytes, bytes] = {}

    def _token(self, m: re.Match) -> bytes:
        t = m.group(0)
        if t in self.known:
            return t
        if t not in self.names:
            self.names[t] = b"<%s%d>" % (_shape(t), len(self.names) + 1)
        return self.names[t]

    def __call__(self, data: bytes) -> bytes:
        return _ID_LINE.sub(lambda m: m.group(1) + b": " + _TOKEN.sub(self._token, m.group(2)),
                            data)


# --- metrics and the admin view -------------------------------------------------------------------

_COMPARED = ("istio_requests_total", "istio_request_bytes", "istio_response_bytes",
             "lacewing_waypoint_upstream_overflow_total",
             "lacewing_waypoint_outlier_ejections_total",
             "lacewing_waypoint_protocol_errors_total", "lacewing_waypoint_ratelimited_total")


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def scrape(wp: WaypointThread) -> dict[tuple, float]:
    """The compared samples: request counts, the byte histograms whole, the duration
    histogram by count only, and the waypoint's overflow/outlier/protocol counters."""
    out: dict[tuple, float] = {}
    text = _get(wp.metrics_port, "/metrics").decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            keep = s.name.startswith(_COMPARED) or \
                s.name == "istio_request_duration_milliseconds_count"
            if keep:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def lane_counts(wp: WaypointThread) -> dict[str, float]:
    """`lacewing_waypoint_fast_lane_total` as {"answered": n, "<reason>": n, ...}."""
    out: dict[str, float] = {}
    text = _get(wp.metrics_port, "/metrics").decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == "lacewing_waypoint_fast_lane":
            for s in fam.samples:
                if s.name.endswith("_total") and s.value:
                    key = "answered" if s.labels["outcome"] == "answered" else \
                        s.labels["reason"]
                    out[key] = s.value
    return out


def pools(wp: WaypointThread, names: dict[str, str]) -> dict:
    """Per cluster: hosts, ejected hosts, connection and request counts, overflows
    (`/debug/snapshot`), with the side's own ports replaced by their role."""
    snap = json.loads(_get(wp.metrics_port, "/debug/snapshot"))
    text = json.dumps(snap["clusters"], sort_keys=True)
    for addr, role in names.items():
        text = text.replace(addr, role)
    return json.loads(text)


def _span(span, ids: Ids) -> tuple:
    """A finished SDK span as compared: name, kind, attributes, and its trace, span and
    parent ids in the placeholders the upstream's traceparent got (same id, same name)."""
    def hexid(v: int, n: int) -> str:
        return ids(b"traceparent: %s" % f"{v:0{n}x}".encode())[13:].decode()
    ctx = span.get_span_context()
    parent = span.parent.span_id if span.parent is not None else None
    return (span.name, str(span.kind), tuple(sorted(span.attributes.items())),
            hexid(ctx.trace_id, 32), hexid(ctx.span_id, 16),
            hexid(parent, 16) if parent else None, span.end_time is not None)


# --- a pair of waypoints ----------------------------------------------------------------------


def _services(services: list[dict], up: int, dead: int, up2: int = 0) -> list[dict]:
    out = json.loads(json.dumps(services))
    ports = {UP: up, DEAD: dead, UP2: up2}
    for s in out:
        for e in s.get("endpoints", ()):
            e["port"] = ports.get(e["port"], e["port"])
    return out


def web(name: str = "web", *, port: int = UP, version: str = "v1",
        namespace: str = "demo") -> dict:
    """A Service with one endpoint (the side's upstream, or the dead port)."""
    return {"name": name, "namespace": namespace, "ports": [{"port": 80}],
            "endpoints": [{"name": f"{name}-{version}-0", "ip": "127.0.0.1", "port": port,
                           "serviceAccount": name,
                           "labels": {"app": name, "version": version}}]}


@dataclass
class Side:
    lane: bool
    upstream: Upstream
    upstream2: Upstream
    wp: WaypointThread
    dead: socket.socket
    spans: InMemorySpanExporter
    roles: dict[str, str] = field(default_factory=dict)
    sent: bytearray = field(default_factory=bytearray)
    transcripts: list[Transcript] = field(default_factory=list)


class Pair:
    """Two waypoints with the same snapshot — one with the fast lane, one without — each
    in front of its own recording upstream running the same script (made fresh per side
    by `script_factory`, so per-key sequences start over for each; `script_factory2` for
    the `UP2` upstreams, default the same)."""

    def __init__(self, services: list[dict], config: str = "",
                 script_factory: Callable[[], Script] = lambda: ok,
                 script_factory2: Callable[[], Script] | None = None,
                 **server_options) -> None:
        self.sides: list[Side] = []
        self.services = services
        try:
            for lane in (True, False):
                up = Upstream(script_factory())
                up2 = Upstream((script_factory2 or script_factory)())
                dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                dead.bind(("127.0.0.1", 0))         # bound, never listening: refused
                dport = dead.getsockname()[1]
                snap = make_snapshot(_services(services, up.port, dport, up2.port), config)
                spans = InMemorySpanExporter()
                wp = WaypointThread(snap, tracing=Tracing(sample_ratio=0.0, exporter=spans),
                                    rng=random.Random(7), fast_lane=lane, **server_options)
                side = Side(lane, up, up2, wp, dead, spans, {
                    f"127.0.0.1:{up.port}": "UP", f"127.0.0.1:{up2.port}": "UP2",
                    f"127.0.0.1:{dport}": "DEAD"})
                self.sides.append(side)
                wp.start()
        except BaseException:
            self.close()
            raise

    def update(self, config: str, *, version: str) -> None:
        """A new snapshot (same Services and upstreams, `config` instead) for both sides."""
        for side in self.sides:
            ports = {role: int(addr.split(":")[1]) for addr, role in side.roles.items()}
            side.wp.update(make_snapshot(
                _services(self.services, ports["UP"], ports["DEAD"], ports["UP2"]), config,
                version=version))

    @property
    def lane(self) -> Side:
        return self.sides[0]

    @property
    def python(self) -> Side:
        return self.sides[1]

    def run(self, pieces: list[bytes], methods: list[str], **options
            ) -> tuple[Transcript, Transcript]:
        """The same pieces to both sides, at the same time (each side is independent)."""
        out: list[Transcript | BaseException | None] = [None, None]

        def one(i: int) -> None:
            try:
                out[i] = exchange(self.sides[i].wp.port, pieces, methods, **options)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                out[i] = e
        threads = [threading.Thread(target=one, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for side, t in zip(self.sides, out, strict=True):
            if isinstance(t, BaseException):
                raise t
            t.methods = methods
            side.sent += b"".join(pieces)
            side.transcripts.append(t)
        return out[0], out[1]

    def run_staggered(self, runs: list[tuple[float, list[bytes], list[str]]], **options
                      ) -> None:
        """Several client connections at once per side: each `(start_after_s, pieces,
        methods)` on its own connection, started that long after the first (both sides at
        the same time); transcripts kept in the order of `runs`."""
        def side_runs(side: Side, out: list) -> None:
            def one(i: int, delay: float, pieces: list[bytes], methods: list[str]) -> None:
                time.sleep(delay)
                try:
                    out[i] = exchange(side.wp.port, pieces, methods, **options)
                except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                    out[i] = e
            ts = [threading.Thread(target=one, args=(i, *r)) for i, r in enumerate(runs)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        results: list[list] = [[None] * len(runs) for _ in self.sides]
        threads = [threading.Thread(target=side_runs, args=(side, results[i]))
                   for i, side in enumerate(self.sides)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for side, out in zip(self.sides, results, strict=True):
            for (_, pieces, _), t in zip(runs, out, strict=True):
                if isinstance(t, BaseException):
                    raise t
                side.sent += b"".join(pieces)
                side.transcripts.append(t)

    def observed(self, side: Side, *, rechunk: bool = False) -> dict:
        ids = Ids(bytes(side.sent))
        upstream = [ids(b).decode("latin-1") for b in side.upstream.received()]
        return {
            "client": [(ids(one_chunk(t.data, t.methods) if rechunk else t.data
                            ).decode("latin-1"), t.responses, t.end)
                       for t in side.transcripts],
            "upstream": upstream,
            "upstream2": [ids(b).decode("latin-1") for b in side.upstream2.received()],
            "spans": [_span(s, ids) for s in side.spans.get_finished_spans()],
            "metrics": scrape(side.wp),
            "pools": pools(side.wp, side.roles),
        }

    def compare(self, *, timeout: float = 1.5, rechunk: bool = False) -> tuple[dict, dict]:
        """Both sides' observations once they agree (metrics and pools settle just after
        an answer is written), or as they are when `timeout` ran out — at once when the
        bytes already differ (those do not change any more). `rechunk`: chunked bodies
        the client got are compared as one chunk each (`one_chunk`)."""
        deadline = time.monotonic() + timeout
        while True:
            a = self.observed(self.lane, rechunk=rechunk)
            b = self.observed(self.python, rechunk=rechunk)
            if a == b or time.monotonic() > deadline or \
                    (a["client"], a["upstream"]) != (b["client"], b["upstream"]):
                return a, b
            time.sleep(0.05)

    def lane_counts(self) -> dict[str, float]:
        return lane_counts(self.lane.wp)

    def close(self) -> None:
        for side in self.sides:
            with contextlib.suppress(Exception):
                side.wp.stop()
            with contextlib.suppress(Exception):
                side.upstream.stop()
            with contextlib.suppress(Exception):
                side.upstream2.stop()
            with contextlib.suppress(OSError):
                side.dead.close()

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SHOWN = ("response_code", "response_flags", "le", "kind", "limit", "cluster",
          "source_principal")


def diff(a: dict, b: dict) -> str:
    """A readable account of where two observations differ (for assertion messages)."""
    lines = []
    for key in a:
        if a[key] == b[key]:
            continue
        if key == "metrics":
            for k in sorted(set(a[key]) | set(b[key]), key=repr):
                if a[key].get(k) != b[key].get(k):
                    short = {n: v for n, v in k[1] if n in _SHOWN}
                    lines.append(f"metrics {k[0]}{short}: lane={a[key].get(k)} "
                                 f"python={b[key].get(k)}")
        elif isinstance(a[key], list):
            for i in range(max(len(a[key]), len(b[key]))):
                x = a[key][i] if i < len(a[key]) else None
                y = b[key][i] if i < len(b[key]) else None
                if x != y:
                    lines.append(f"{key}[{i}]:\n  lane  ={x!r}\n  python={y!r}")
        else:
            lines.append(f"{key}:\n  lane  ={a[key]!r}\n  python={b[key]!r}")
    return "\n".join(lines)
