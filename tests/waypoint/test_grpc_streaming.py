"""Tier 2: gRPC streaming RPCs through the waypoint — real grpcio servers and clients on
loopback, HTTP/2 on both sides of the waypoint.

Streaming is proven by interleaving, never by timing: each server (or client) waits for an
event that the other side can only set after it has *received* an earlier message through
the waypoint; a proxy that buffered whole bodies would deadlock those waits (bounded, then
reported as a failure). Also: a client's cancel reaches the server, an upstream reset reaches
the client without breaking its connection, the route timeout covers the whole stream, and
metrics count the streamed bytes with the status from the trailers."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.waypoint.conftest import eventually, make_snapshot
from waypoint.proxy import WaypointThread

SVC = "lacewing.test.Stream"
WAIT_S = 10        # how long one side waits for the other before the test fails


def start_grpc(handlers: dict) -> tuple[grpc.Server, int]:
    handler = grpc.method_handlers_generic_handler(SVC, handlers)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def services(port: int) -> list[dict]:
    return [{"name": "stream", "namespace": "demo",
             "ports": [{"port": 9090, "name": "grpc", "appProtocol": "grpc"}],
             "endpoints": [{"name": "stream-0", "ip": "127.0.0.1", "port": port,
                            "labels": {"app": "stream", "version": "v1"}}]}]


def channel(wp) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{wp.port}",
                                 options=[("grpc.default_authority", "stream.demo:9090")])


@pytest.fixture
def grpc_server():
    started: list[grpc.Server] = []

    def start(handlers: dict) -> int:
        server, port = start_grpc(handlers)
        started.append(server)
        return port

    try:
        yield start
    finally:
        for s in started:
            s.stop(None)


def samples(wp, name: str) -> list:
    text = wp.call(lambda: __import__("prometheus_client").generate_latest(
        wp.metrics.registry).decode())
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name]


def test_server_streaming_reaches_the_client_before_the_server_finishes(grpc_server):
    first_seen = threading.Event()
    waited = []

    def watch(request: bytes, context):
        yield b"m0"
        waited.append(first_seen.wait(WAIT_S))   # only the client's reading sets it
        for i in range(1, 1000):
            yield f"m{i}".encode()

    port = grpc_server({"Watch": grpc.unary_stream_rpc_method_handler(watch)})
    with WaypointThread(make_snapshot(services(port))) as wp, channel(wp) as ch:
        replies = ch.unary_stream(f"/{SVC}/Watch")(b"go", timeout=60)
        assert next(replies) == b"m0"
        first_seen.set()
        rest = list(replies)
        assert waited == [True], "the first message only arrived once the server finished"
        assert rest == [f"m{i}".encode() for i in range(1, 1000)]
        assert replies.code() == grpc.StatusCode.OK
        # Metrics: one request, grpc status from the trailers, the streamed bytes counted
        # (each message is framed with 5 bytes).
        assert eventually(lambda: any(s.labels.get("grpc_response_status") == "0"
                                      for s in samples(wp, "istio_requests_total")))
        sent = sum(5 + len(f"m{i}") for i in range(1000))
        size = [s.value for s in samples(wp, "istio_response_bytes_sum")]
        assert size and size[0] >= sent


def test_client_streaming_reaches_the_server_before_the_client_finishes(grpc_server):
    got_first = threading.Event()

    def collect(requests, context):
        n = size = 0
        for m in requests:
            n += 1
            size += len(m)
            if n == 1:
                got_first.set()
        return f"{n}/{size}".encode()

    port = grpc_server({"Collect": grpc.stream_unary_rpc_method_handler(collect)})
    waited = []

    def requests():
        yield b"r" * 100
        waited.append(got_first.wait(WAIT_S))   # only the server's reading sets it
        for _ in range(199):
            yield b"r" * 100

    with WaypointThread(make_snapshot(services(port))) as wp, channel(wp) as ch:
        reply = ch.stream_unary(f"/{SVC}/Collect")(requests(), timeout=60)
        assert waited == [True], "the first message only reached the server at the end"
        assert reply == b"200/20000"
        assert eventually(lambda: [s.value for s in samples(wp, "istio_request_bytes_sum")]
                          == [200 * 105])


def test_bidirectional_ping_pong_100_rounds(grpc_server):
    def echo(requests, context):
        for m in requests:
            yield m.replace(b"ping", b"pong")

    port = grpc_server({"Chat": grpc.stream_stream_rpc_method_handler(echo)})
    answered: queue.Queue[int] = queue.Queue()

    def pings():
        for i in range(100):
            yield f"ping{i}".encode()
            # the next ping only after this one's pong came back through the waypoint
            if answered.get(timeout=WAIT_S) != i:
                return

    with WaypointThread(make_snapshot(services(port))) as wp, channel(wp) as ch:
        call = ch.stream_stream(f"/{SVC}/Chat")(pings(), timeout=60)
        got = []
        for i, reply in enumerate(call):
            got.append(reply)
            answered.put(i)
        assert got == [f"pong{i}".encode() for i in range(100)]
        assert call.code() == grpc.StatusCode.OK


def test_client_cancel_reaches_the_server_and_the_connection_lives_on(grpc_server):
    cancelled = threading.Event()

    def endless(request: bytes, context):
        context.add_callback(cancelled.set)
        i = 0
        while context.is_active():
            yield f"tick{i}".encode()
            i += 1
            cancelled.wait(0.01)

    def say(request: bytes, context) -> bytes:
        return b"still here"

    port = grpc_server({"Endless": grpc.unary_stream_rpc_method_handler(endless),
                        "Say": grpc.unary_unary_rpc_method_handler(say)})
    with WaypointThread(make_snapshot(services(port))) as wp, channel(wp) as ch:
        call = ch.unary_stream(f"/{SVC}/Endless")(b"go", timeout=60)
        assert [next(call) for _ in range(3)] == [b"tick0", b"tick1", b"tick2"]
        call.cancel()
        assert cancelled.wait(WAIT_S), "the server never learned the client cancelled"
        assert ch.unary_unary(f"/{SVC}/Say")(b"x", timeout=10) == b"still here"
        assert eventually(lambda: any(s.labels.get("response_flags") == "DC"
                                      for s in samples(wp, "istio_requests_total")))


def test_route_timeout_covers_the_whole_stream(grpc_server):
    stopped = threading.Event()

    def endless(request: bytes, context):
        context.add_callback(stopped.set)
        while context.is_active():
            yield b"tick"
            stopped.wait(0.02)

    port = grpc_server({"Endless": grpc.unary_stream_rpc_method_handler(endless)})
    snap = make_snapshot(services(port), """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: stream, namespace: demo}
spec:
  hosts: [stream]
  http: [{route: [{destination: {host: stream}}], timeout: 0.5s}]
""")
    with WaypointThread(snap) as wp, channel(wp) as ch:
        call = ch.unary_stream(f"/{SVC}/Endless")(b"go", timeout=60)
        got = 0
        with pytest.raises(grpc.RpcError):
            for _ in call:
                got += 1
        assert got > 0                      # it streamed, then the route timeout ended it
        assert stopped.wait(WAIT_S), "the upstream stream was not cancelled"
        assert eventually(lambda: any(s.labels.get("response_flags") == "UT"
                                      for s in samples(wp, "istio_requests_total")))


# --- an upstream that resets its stream mid-response (a raw HTTP/2 server) ------------------


class ResettingServer:
    """HTTP/2 on loopback: `/…/Reset` sends headers and one gRPC message, waits for `go`
    (the client has that message), then RST_STREAM; anything else gets one message and
    `grpc-status: 0` trailers."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self.stop = False
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        paths: dict[int, str] = {}
        try:
            while not self.stop:
                data = sock.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        paths[ev.stream_id] = dict(ev.headers)[":path"]
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        sid = ev.stream_id
                        msg = b"\x00\x00\x00\x00\x07partial"
                        conn.send_headers(sid, [(":status", "200"),
                                                ("content-type", "application/grpc")])
                        conn.send_data(sid, msg)
                        if paths[sid].endswith("/Reset"):
                            sock.sendall(conn.data_to_send())
                            self.go.wait(WAIT_S)
                            conn.reset_stream(sid)
                        else:
                            conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                sock.sendall(conn.data_to_send())
        except OSError:
            return

    def close(self) -> None:
        self.stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)       # wakes the thread blocked in accept
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)   # wakes the thread blocked in recv
            c.close()
        for t in self.threads:
            t.join(5)


def test_upstream_reset_reaches_the_client_stream_not_its_connection():
    backend = ResettingServer()
    try:
        with WaypointThread(make_snapshot(services(backend.port))) as wp, channel(wp) as ch:
            call = ch.unary_stream(f"/{SVC}/Reset")(b"go", timeout=30)
            assert next(call) == b"partial"
            backend.go.set()
            with pytest.raises(grpc.RpcError) as e:
                list(call)
            assert e.value.code() != grpc.StatusCode.OK
            # same client connection, same upstream connection: the next call works
            assert list(ch.unary_stream(f"/{SVC}/Fine")(b"go", timeout=30)) == [b"partial"]
            assert eventually(lambda: any(s.labels.get("response_flags") == "UR"
                                          for s in samples(wp, "istio_requests_total")))
    finally:
        backend.close()


def test_large_messages_both_ways_arrive_intact_through_the_flow_control_windows(grpc_server):
    # 32 MiB each way in 256 KiB messages: many times the waypoint's HTTP/2 windows, so
    # every byte has to wait for the other side to consume what came before.
    def echo(requests, context):
        for m in requests:
            yield m[::-1]

    port = grpc_server({"Chat": grpc.stream_stream_rpc_method_handler(echo)})
    messages = [bytes([i]) * (128 * 1024) + bytes([255 - i]) * (128 * 1024) for i in range(128)]
    opts = [("grpc.default_authority", "stream.demo:9090"),
            ("grpc.max_receive_message_length", 1 << 20)]
    with WaypointThread(make_snapshot(services(port))) as wp, \
            grpc.insecure_channel(f"127.0.0.1:{wp.port}", options=opts) as ch:
        replies = list(ch.stream_stream(f"/{SVC}/Chat")(iter(messages), timeout=60))
        assert replies == [m[::-1] for m in messages]
