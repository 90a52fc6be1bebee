"""Tier 2: bodies stream through the waypoint over HTTP/1.1 (and HTTP/2 to an HTTP/1.1
upstream) — real sockets on loopback, real sample-app servers, and small raw servers where a
test needs to control when bytes are sent.

Uploads larger than the old 16 MiB cap go through; a chunked response reaches the client
before the upstream has finished it (proven by interleaving, not timing); a request body is
retried while it fits the retry buffer and not once it has outgrown it (Envoy's "retry buffer
overflow"), and the buffer size is a setting."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h2.config
import h2.connection
import h2.events
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lacewing.sample_app import Behaviour
from tests.waypoint.conftest import eventually, service_dict

WAIT_S = 10
MiB = 1024 * 1024


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head, body


def samples(wp, name: str) -> list:
    text = wp.call(lambda: __import__("prometheus_client").generate_latest(
        wp.metrics.registry).decode())
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name]


def test_64_mib_upload_streams_through(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(backs)])
    size = 64 * MiB
    piece = b"x" * MiB
    with socket.create_connection(("127.0.0.1", wp.port), timeout=30) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: web.demo\r\nContent-Length: %d\r\n\r\n"
                  % size)
        for _ in range(size // MiB):
            s.sendall(piece)
        head, body = read_response(s)
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["body_bytes"] == size
    assert eventually(lambda: [x.value for x in samples(wp, "istio_request_bytes_sum")]
                      == [size])


def test_chunked_upload_is_forwarded_chunked(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(backs)])
    with socket.create_connection(("127.0.0.1", wp.port), timeout=30) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: web.demo\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            s.sendall(b"%x\r\n%s\r\n" % (256 * 1024, b"y" * 256 * 1024))
        s.sendall(b"0\r\n\r\n")
        head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["body_bytes"] == 20 * 256 * 1024
        # the connection is still good for the next request
        s.sendall(b"GET /next HTTP/1.1\r\nHost: web.demo\r\n\r\n")
        head, _ = read_response(s)
        assert head.startswith(b"HTTP/1.1 200")


# --- a raw upstream that streams a chunked answer in two steps ------------------------------


class TwoStepServer:
    """Answers every request with a chunked body: `first`, then — once `go` is set (the
    client has read `first`) — `rest` and the end. `waited` records whether `go` came."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.waited: list[bool] = []
        self.conn: socket.socket | None = None
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.conn = conn
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: text/plain\r\n\r\n5\r\nfirst\r\n")
            self.waited.append(self.go.wait(WAIT_S))
            conn.sendall(b"4\r\nrest\r\n0\r\n\r\n")
            with contextlib.suppress(OSError):
                conn.recv(1)

    def close(self) -> None:
        self.sock.close()
        self.go.set()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)   # wakes the thread blocked in recv
        self.thread.join(WAIT_S)


def raw_service(port: int) -> dict:
    return {"name": "web", "namespace": "demo", "ports": [{"port": 80}],
            "endpoints": [{"name": "web-v1-0", "ip": "127.0.0.1", "port": port,
                           "labels": {"app": "web", "version": "v1"}}]}


def test_chunked_response_reaches_the_client_as_it_is_sent(waypoint_for):
    upstream = TwoStepServer()
    try:
        wp = waypoint_for([raw_service(upstream.port)])
        with socket.create_connection(("127.0.0.1", wp.port), timeout=30) as s:
            s.sendall(b"GET /watch HTTP/1.1\r\nHost: web.demo\r\n\r\n")
            data = b""
            while b"first" not in data:
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            upstream.go.set()
            while not data.endswith(b"0\r\n\r\n"):
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert upstream.waited == [True], "the first piece only came once the answer ended"
        assert head.startswith(b"HTTP/1.1 200")
        assert b"transfer-encoding: chunked" in head.lower()
        assert body == b"5\r\nfirst\r\n4\r\nrest\r\n0\r\n\r\n"
    finally:
        upstream.close()


# --- retries and the retry buffer -------------------------------------------------------------


class FailOnce:
    """An HTTP/1.1 upstream that reads each request body whole, answers the first request
    503 and later ones 200; `bodies` records the sizes it received."""

    def __init__(self) -> None:
        outer = self
        self.bodies: list[int] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                n = 0
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        n += len(self.rfile.read(size))
                        self.rfile.readline()
                else:
                    left = int(self.headers.get("Content-Length", "0"))
                    while left:
                        got = len(self.rfile.read(min(left, 1 << 20)))
                        n += got
                        left -= got
                outer.bodies.append(n)
                status = 503 if len(outer.bodies) == 1 else 200
                body = str(n).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


RETRY_5XX = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web}}], retries: {attempts: 2, retryOn: 5xx}}]
"""


def post_in_two_steps(port: int, size: int) -> tuple[bytes, bytes]:
    """A POST whose head goes first and whose body follows once the head was answered by
    nothing — i.e. the waypoint has routed it with the body still to come."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: web.demo\r\nContent-Length: %d\r\n\r\n" % size)
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(1)            # nothing comes back before the body: it was not answered
        s.settimeout(30)
        s.sendall(b"z" * size)
        return read_response(s)


@pytest.mark.parametrize("size,buffer,retried", [
    (1000, None, True),               # a small streamed body is held and replayed
    (2 * MiB, None, False),           # past the 1 MiB default: no retry, the 503 stands
    (2 * MiB, 4 * MiB, True),         # the buffer is a setting
])
def test_retry_only_while_the_body_fits_the_retry_buffer(waypoint_for, size, buffer, retried):
    upstream = FailOnce()
    try:
        options = {} if buffer is None else {"retry_buffer_bytes": buffer}
        wp = waypoint_for([raw_service(upstream.port)], RETRY_5XX, **options)
        head, body = post_in_two_steps(wp.port, size)
        if retried:
            assert head.startswith(b"HTTP/1.1 200") and body == str(size).encode()
            assert upstream.bodies == [size, size]
        else:
            assert head.startswith(b"HTTP/1.1 503") and body == str(size).encode()
            assert upstream.bodies == [size]
    finally:
        upstream.close()


# --- HTTP/2 client, HTTP/1.1 upstream ---------------------------------------------------------


def test_h2_upload_without_length_reaches_an_http1_upstream_chunked(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(backs)])
    size = 3 * MiB
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding="utf-8"))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", wp.port), timeout=30) as s:
        s.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":path", "/up"), (":scheme", "http"),
                                (":authority", "web.demo")])
        s.sendall(conn.data_to_send())
        left = size
        status, body, done = None, b"", False
        while not done:
            # send what the flow-control windows allow; the waypoint opens them only as it
            # writes the bytes upstream
            while left and conn.local_flow_control_window(sid) > 0:
                n = min(left, conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                conn.send_data(sid, b"u" * n, end_stream=n == left)
                left -= n
            s.sendall(conn.data_to_send())
            data = s.recv(65536)
            assert data, "connection closed"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[":status"]
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded):
                    done = True
            s.sendall(conn.data_to_send())
    assert status == "200"
    assert json.loads(body)["body_bytes"] == size


def test_a_streamed_body_is_mirrored_only_while_it_fits_the_retry_buffer(backends,
                                                                          waypoint_for):
    main = backends(("v1", Behaviour()))
    shadow = FailOnce()          # records the bodies it receives
    try:
        shadow_svc = raw_service(shadow.port) | {"name": "shadow"}
        wp = waypoint_for([service_dict(main), shadow_svc], """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web}}], mirror: {host: shadow}}]
""")
        head, body = post_in_two_steps(wp.port, 1000)
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["body_bytes"] == 1000
        assert eventually(lambda: shadow.bodies == [1000], timeout=WAIT_S)
        head, body = post_in_two_steps(wp.port, 2 * MiB)
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["body_bytes"] == 2 * MiB
        # the next small one is mirrored again, the large one never was
        post_in_two_steps(wp.port, 10)
        assert eventually(lambda: shadow.bodies == [1000, 10], timeout=WAIT_S)
    finally:
        shadow.close()


class SplitAnswers:
    """Keep-alive HTTP/1.1 upstream that writes each answer's head and body separately (so
    the waypoint sees the head first and streams the body)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                _, _, data = data.partition(b"\r\n\r\n")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                threading.Event().wait(0.001)
                conn.sendall(b"hello")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


def test_streamed_answers_give_their_upstream_connection_back(waypoint_for):
    upstream = SplitAnswers()
    try:
        wp = waypoint_for([raw_service(upstream.port)], """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}
""")
        with socket.create_connection(("127.0.0.1", wp.port), timeout=10) as s:
            for _ in range(30):    # one upstream connection allowed: each must come back
                s.sendall(b"GET / HTTP/1.1\r\nHost: web.demo\r\n\r\n")
                head, body = read_response(s)
                assert head.startswith(b"HTTP/1.1 200") and body == b"hello"
        clusters = wp.call(lambda: wp.waypoint.describe()["clusters"])
        assert [c["connections"] for c in clusters.values()] == [1]
    finally:
        upstream.close()


def test_an_upload_refused_at_its_headers_gets_the_answer_not_a_reset(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    wp = waypoint_for([service_dict(backs)], """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-uploads, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {methods: [POST]}}]}]
""")
    size = 8 * MiB
    with socket.create_connection(("127.0.0.1", wp.port), timeout=30) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: web.demo\r\nContent-Length: %d\r\n\r\n" % size)
        s.sendall(b"x" * size)       # the waypoint drops it (lingering close) rather than reset
        head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 403") and body == b"RBAC: access denied"
        assert b"connection: close" in head.lower()


def test_client_reset_mid_answer_closes_the_http1_upstream_connection(waypoint_for):
    sock = socket.create_server(("127.0.0.1", 0))
    closed = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = sock.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nfirst\r\n")
                conn.settimeout(WAIT_S)
                if conn.recv(1) == b"":          # the waypoint gave up on this answer
                    closed.set()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        wp = waypoint_for([raw_service(sock.getsockname()[1])])
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding="utf-8"))
        c.initiate_connection()
        with socket.create_connection(("127.0.0.1", wp.port), timeout=30) as s:
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, [(":method", "GET"), (":path", "/watch"), (":scheme", "http"),
                                 (":authority", "web.demo")], end_stream=True)
            s.sendall(c.data_to_send())
            got = b""
            while b"first" not in got:
                data = s.recv(65536)
                assert data, "connection closed"
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        got += ev.data
                s.sendall(c.data_to_send())
            c.reset_stream(sid)
            s.sendall(c.data_to_send())
            assert closed.wait(WAIT_S), "the upstream connection outlived the client's stream"
            # the client's connection is still good: a PING is answered
            c.ping(b"12345678")
            s.sendall(c.data_to_send())
            acked = False
            while not acked:
                data = s.recv(65536)
                assert data, "client connection closed"
                acked = any(isinstance(ev, h2.events.PingAckReceived)
                            for ev in c.receive_data(data))
    finally:
        sock.close()
        t.join(WAIT_S)
