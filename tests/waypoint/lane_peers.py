"""Raw peers for the fast-lane tests: an upstream that records the exact bytes of every
request and answers from a script chosen by the path, and a client that sends exact bytes
and reads back a counted number of responses as bytes.

Before: nothing (both are plain sockets on loopback). After: `RecordingUpstream.requests`
holds what the waypoint sent upstream, `exchange()` returns what a client received — the
two things the lane must reproduce byte for byte.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import httptools

# path prefix → the raw response(s) to write; a list is written piece by piece, 50 ms apart.
BODY = b'{"ok": true}\n'
SCRIPTS: dict[str, object] = {
    "/cl": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Up: 1\r\nContent-Length: "
           + str(len(BODY)).encode() + b"\r\n\r\n" + BODY,
    "/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Up: 1\r\n\r\n",
    "/204": b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n",
    "/304": b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    "/chunked-split": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                       b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"],
    "/length-split": [b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello",
                      b" world"],
    "/close": b"HTTP/1.1 200 OK\r\nX-Up: 1\r\n\r\nuntil the end",
    "/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/500": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
    "/503": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
    "/upgrade-offer": b"HTTP/1.1 200 OK\r\nUpgrade: h2,h2c\r\nConnection: Upgrade, Keep-Alive"
                      b"\r\nContent-Length: 2\r\n\r\nok",
    "/obs-text": b"HTTP/1.1 201\r\nX-Name: \xe9t\xe9 \r\nContent-Length: 2\r\n\r\nok",
    "/malformed": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "/keepalive-header": b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5"
                         b"\r\nContent-Length: 2\r\n\r\nok",
}
CLOSES = {"/close", "/stall"}
STALLS = {"/stall": b"", "/stall-body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf"}


def script_for(path: str):
    for prefix in sorted(STALLS, key=len, reverse=True):
        if path.startswith(prefix):
            return prefix, STALLS[prefix]
    for prefix in sorted(SCRIPTS, key=len, reverse=True):
        if path.startswith(prefix) or path.startswith("/api" + prefix) or \
                path.startswith("/v2" + prefix):
            return prefix, SCRIPTS[prefix]
    return "/cl", SCRIPTS["/cl"]


class _Req:
    def __init__(self) -> None:
        self.url = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.done = True


class RecordingUpstream:
    """A threaded HTTP/1.1 upstream on loopback recording each request's raw bytes."""

    def __init__(self, *, fail_every: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.fail_every = fail_every      # every Nth request answered 503
        self._lock = threading.Lock()
        self._stop = False
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self.open += 1
                self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        try:
            while True:
                req = _Req()
                parser = httptools.HttpRequestParser(req)
                raw = b""
                while not req.done:
                    if not buf:
                        data = c.recv(65536)
                        if not data:
                            return
                        buf = data
                    # feed byte-exact: find how much of buf belongs to this request
                    before = len(buf)
                    parser.feed_data(buf)
                    raw += buf
                    buf = b""
                    del before
                with self._lock:
                    self.requests.append(raw)
                    n = len(self.requests)
                path = req.url.decode("latin-1")
                name, answer = script_for(path)
                if self.fail_every and n % self.fail_every == 0:
                    answer = SCRIPTS["/503"]
                if name in STALLS:             # answer (part), then nothing for a while
                    c.sendall(answer)
                    for _ in range(40):
                        if self._stop:
                            break
                        time.sleep(0.05)
                    return
                if isinstance(answer, list):
                    for piece in answer:
                        c.sendall(piece)
                        time.sleep(0.05)
                else:
                    c.sendall(answer)
                if name in CLOSES:
                    return
        except (OSError, httptools.HttpParserError):
            return
        finally:
            with self._lock:
                self.open -= 1
            c.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()


class _Resp:
    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def exchange(port: int, pieces: list[bytes], responses: int, *, head: bool = False,
             pause: float = 0.0, timeout: float = 5.0) -> bytes:
    """Send `pieces` (each its own write) and read until `responses` responses are complete
    (or the waypoint closes); the raw bytes received."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = b""
    try:
        for p in pieces:
            s.sendall(p)
            if pause:
                time.sleep(pause)
        counter = _Resp()
        parser = httptools.HttpResponseParser(counter)
        deadline = time.monotonic() + timeout
        while counter.complete < responses and time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            got += data
            if not head:
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError:
                    break
            elif got.count(b"\r\n\r\n") >= responses:
                break
    finally:
        s.close()
    return got


_IDS = [
    (re.compile(rb"x-request-id: [0-9a-f-]{36}"), b"x-request-id: ID"),
    (re.compile(rb"traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-0"),
     b"traceparent: 00-TRACE-SPAN-0"),
    (re.compile(rb"x-b3-traceid: [0-9a-f]{32}"), b"x-b3-traceid: TRACE"),
    (re.compile(rb"x-b3-spanid: [0-9a-f]{16}"), b"x-b3-spanid: SPAN"),
]


def without_ids(raw: bytes, *, keep_trace: bytes | None = None) -> bytes:
    """Random ids replaced by placeholders (a kept trace id is left as it is)."""
    for pat, repl in _IDS:
        if keep_trace is not None and keep_trace in raw and b"TRACE" in repl:
            continue
        raw = pat.sub(repl, raw)
    return raw
