"""Envoy's stream idle timeout (`stream_idle_timeout_s`, `--stream-idle-timeout`): a stream
with no byte either way for that long ends — 408 `stream timeout` when nothing was answered
yet (the HTTP/1.1 connection then closes), else a reset (HTTP/1.1: the connection closes
before the body is complete; HTTP/2: RST_STREAM, the connection's other streams untouched),
flag `SI` — while a stream that keeps moving bytes, either way, lives on past it. Real
sockets on loopback; a short timeout so the test is quick (timing is never asserted)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import pytest

from waypoint.proxy import Deadlines
from waypoint.stream_idle import StreamIdle
from waypoint.streaming import Body

TIMEOUT_S = 0.5


class Upstream:
    """An HTTP/1.1 server whose answer depends on the path: `/ok` answers at once,
    `/stall-head` never answers, `/stall-body` sends the head and 3 of 10 bytes then stops,
    `/trickle` sends 25 bytes one every 0.1 s, `/upload` answers once the whole body came."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            path = head.split(b" ")[1]
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            try:
                if path == b"/ok":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                                 b"connection: close\r\n\r\nok")
                elif path == b"/stall-body":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                    self.closed.wait(30)
                elif path == b"/trickle":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 25\r\n"
                                 b"connection: close\r\n\r\n")
                    for _ in range(25):
                        time.sleep(0.1)
                        conn.sendall(b"x")
                elif path == b"/upload":
                    while len(body) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        body += chunk
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%d" % (len(str(len(body))),
                                                                   len(body)))
                else:   # /stall-head
                    self.closed.wait(30)
            except OSError:
                pass

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


@pytest.fixture(params=[False, True], ids=["python", "fast-lane"])
def setup(request, waypoint_for):
    up = Upstream()
    svc = {"name": "web", "namespace": "demo", "ports": [{"port": 80}],
           "endpoints": [{"name": "web-0", "ip": "127.0.0.1", "port": up.port,
                          "labels": {"app": "web", "version": "v1"}}]}
    # The Python path, and the compiled fast lane where it is built (its own timers, the
    # same answers; HTTP/2 and uploads always take the Python path).
    wp = waypoint_for([svc], stream_idle_timeout_s=TIMEOUT_S, fast_lane=request.param)
    try:
        yield wp
    finally:
        up.close()


def read_until_closed(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def flagged(wp, flag: str) -> float:
    total = 0.0
    for metric in wp.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "istio_requests_total" and \
                    sample.labels.get("response_flags") == flag:
                total += sample.value
    return total


def test_nothing_answered_yet_is_408_and_the_connection_closes(setup):
    wp = setup
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(b"GET /stall-head HTTP/1.1\r\nHost: web\r\n\r\n")
        data = read_until_closed(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
    assert body == b"stream timeout"
    assert flagged(wp, "SI") == 1


def test_a_response_that_stops_midway_closes_the_http1_connection(setup):
    wp = setup
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(b"GET /stall-body HTTP/1.1\r\nHost: web\r\n\r\n")
        data = read_until_closed(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 10" in head.lower()
    assert body == b"abc"                 # cut short: the client sees it is incomplete
    assert flagged(wp, "SI") == 1


def test_streams_that_keep_moving_bytes_live_past_the_timeout(setup):
    wp = setup
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(b"GET /trickle HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"x" * 25)
    # the client's side moving counts too: a slow upload to an upstream that waits for it
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 25\r\n"
                  b"Connection: close\r\n\r\n")
        for _ in range(25):
            time.sleep(0.1)
            s.sendall(b"y")
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n25")
    assert flagged(wp, "SI") == 0


def test_http2_408_before_headers_and_rst_stream_after_them(setup):
    wp = setup
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
        s.sendall(conn.data_to_send())

        def send(path: str) -> int:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                    (":authority", "web")], end_stream=True)
            s.sendall(conn.data_to_send())
            return sid

        stalled_body, stalled_head = send("/stall-body"), send("/stall-head")
        status: dict[int, bytes] = {}
        data_of: dict[int, bytes] = {}
        reset: set[int] = set()
        ended: set[int] = set()
        ok = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (
                stalled_body in reset and stalled_head in ended and ok in ended):
            chunk = s.recv(65536)
            assert chunk, "the waypoint closed the HTTP/2 connection"
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    status[ev.stream_id] = dict(ev.headers)[b":status"]
                elif isinstance(ev, h2.events.DataReceived):
                    data_of[ev.stream_id] = data_of.get(ev.stream_id, b"") + ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    reset.add(ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended.add(ev.stream_id)
            if stalled_body in reset and ok is None:
                ok = send("/ok")     # the connection is still fine for new streams
            s.sendall(conn.data_to_send())
    assert status[stalled_body] == b"200" and data_of[stalled_body] == b"abc"
    assert stalled_body in reset and stalled_body not in ended
    assert status[stalled_head] == b"408" and data_of[stalled_head] == b"stream timeout"
    assert status[ok] == b"200" and data_of[ok] == b"ok"
    assert flagged(wp, "SI") == 2


def test_the_watch_reads_both_bodies_and_fires_only_after_a_whole_timeout():
    """Tier 1 with the real deadline heap: bytes fed into (or acknowledged from) either body
    keep the stream alive; once they stop, the task is cancelled with `fired` set."""
    async def go():
        deadlines = Deadlines()
        request, response = Body(), Body(retain=0)
        watch = None

        async def serving():
            nonlocal watch
            watch = StreamIdle(deadlines, 0.4, None, request).start()
            await asyncio.sleep(3600)

        task = asyncio.get_running_loop().create_task(serving())
        await asyncio.sleep(0)
        for i in range(8):                  # 0.8 s of activity, alternating sides
            await asyncio.sleep(0.1)
            if i == 4:
                watch.response = response
            (request if i % 2 else response).feed(b"z")
        assert not watch.fired and not task.done()
        with pytest.raises(asyncio.CancelledError):
            await task                      # nothing moves any more: the watch ends it
        assert watch.fired
        # a stopped watch never fires
        quiet = StreamIdle(deadlines, 0.2, task, None)
        quiet.start()
        quiet.stop()
        await asyncio.sleep(0.4)
        assert not quiet.fired
    asyncio.run(asyncio.wait_for(go(), 20))
