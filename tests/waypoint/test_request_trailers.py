"""Trailers of a whole chunked HTTP/1.1 request (body and trailers arrived with the head) are
kept: an HTTP/1.1 upstream gets the request chunked with its trailers, an HTTP/2 upstream
gets them as a trailing HEADERS frame; a request without trailers is sent as before (with
Content-Length). The upstreams here are small recording servers on loopback, parsing with
llhttp (httptools) and the h2 library — not the waypoint's own parsers."""

from __future__ import annotations

import socket
import threading

import h2.config
import h2.connection
import h2.events
import httptools
import pytest

from tests.waypoint.conftest import eventually
from waypoint.http1 import RequestReader

CHUNKED_WITH_TRAILERS = (b"POST /t HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n"
                         b"Trailer: x-checksum\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n"
                         b"x-other: 1\r\n\r\n")


class _Recorded:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.head_done = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.trailers if self.head_done else self.headers).append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.done = True


class Http1Upstream:
    """Answers each request 200 `ok`; keeps what each request looked like on the wire."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[_Recorded] = []
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
            rec = _Recorded()
            parser = httptools.HttpRequestParser(rec)
            while not rec.done:
                data = conn.recv(65536)
                if not data:
                    return
                parser.feed_data(data)
            self.requests.append(rec)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")

    def close(self) -> None:
        self.sock.close()


class H2Upstream:
    """An h2c server (prior knowledge): records each stream's headers, data and trailers and
    answers 200 with a gRPC-style status trailer."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.streams: dict[int, dict] = {}
        self.finished: list[dict] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        with sock:
            sock.sendall(conn.data_to_send())
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        self.streams[ev.stream_id] = {"headers": list(ev.headers), "data": b"",
                                                      "trailers": None}
                    elif isinstance(ev, h2.events.DataReceived):
                        self.streams[ev.stream_id]["data"] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        self.streams[ev.stream_id]["trailers"] = list(ev.headers)
                    elif isinstance(ev, h2.events.StreamEnded):
                        self.finished.append(self.streams.pop(ev.stream_id))
                        conn.send_headers(ev.stream_id, [(":status", "200"),
                                                         ("content-type", "text/plain")])
                        conn.send_data(ev.stream_id, b"ok", end_stream=True)
                sock.sendall(conn.data_to_send())

    def close(self) -> None:
        self.sock.close()


def _service(port: int, *, app_protocol: str = "") -> dict:
    p = {"port": 80}
    if app_protocol:
        p["appProtocol"] = app_protocol
    return {"name": "web", "namespace": "demo", "ports": [p],
            "endpoints": [{"name": "web-0", "ip": "127.0.0.1", "port": port,
                           "labels": {"app": "web", "version": "v1"}}]}


def _ask(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest.fixture
def upstreams():
    made = []

    def make(kind):
        u = kind()
        made.append(u)
        return u

    yield make
    for u in made:
        u.close()


def test_reader_hands_out_a_whole_request_with_trailers_as_an_ended_body():
    r = RequestReader()
    [req] = r.feed(CHUNKED_WITH_TRAILERS)
    assert req.body == b"" and req.stream is not None and req.stream.ended
    assert b"".join(req.stream.chunks) == b"hello world"
    assert req.stream.trailers == [("x-checksum", "abc"), ("x-other", "1")]
    assert req.stream.length is None and req.stream.replayable
    [plain] = r.feed(b"POST /t HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
    assert plain.stream is None and plain.body == b"hello"    # no trailers: as before


def test_http1_upstream_gets_the_request_chunked_with_its_trailers(waypoint_for, upstreams):
    up = upstreams(Http1Upstream)
    wp = waypoint_for([_service(up.port)])
    assert _ask(wp.port, CHUNKED_WITH_TRAILERS).startswith(b"HTTP/1.1 200")
    assert eventually(lambda: len(up.requests) == 1)
    rec = up.requests[0]
    names = [n for n, _ in rec.headers]
    assert (b"transfer-encoding", b"chunked") in rec.headers and b"content-length" not in names
    assert rec.body == b"hello world"
    assert rec.trailers == [(b"x-checksum", b"abc"), (b"x-other", b"1")]


def test_http1_request_without_trailers_is_unchanged(waypoint_for, upstreams):
    up = upstreams(Http1Upstream)
    wp = waypoint_for([_service(up.port)])
    raw = (b"POST /t HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")
    assert _ask(wp.port, raw).startswith(b"HTTP/1.1 200")
    assert eventually(lambda: len(up.requests) == 1)
    rec = up.requests[0]
    assert (b"content-length", b"5") in rec.headers
    assert b"transfer-encoding" not in [n for n, _ in rec.headers]
    assert rec.body == b"hello" and rec.trailers == []


def test_http2_upstream_gets_the_trailers_as_a_trailing_headers_frame(waypoint_for, upstreams):
    up = upstreams(H2Upstream)
    wp = waypoint_for([_service(up.port, app_protocol="http2")])
    assert _ask(wp.port, CHUNKED_WITH_TRAILERS).startswith(b"HTTP/1.1 200")
    assert eventually(lambda: len(up.finished) == 1)
    st = up.finished[0]
    assert st["data"] == b"hello world"
    assert st["trailers"] == [(b"x-checksum", b"abc"), (b"x-other", b"1")]
    # and without trailers: no trailing HEADERS frame
    raw = (b"POST /t HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello")
    assert _ask(wp.port, raw).startswith(b"HTTP/1.1 200")
    assert eventually(lambda: len(up.finished) == 2)
    assert up.finished[1]["data"] == b"hello" and up.finished[1]["trailers"] is None


def _h2_request_with_trailers(port: int) -> tuple[int, bytes]:
    """An h2c client (prior knowledge) that sends HEADERS, DATA and trailing HEADERS of one
    request in a single write, so the waypoint receives the request whole; returns the answer's
    status and body."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":path", "/t"), (":scheme", "http"),
                          (":authority", "web"), ("te", "trailers")])
    conn.send_data(1, b"hello world")
    conn.send_headers(1, [("x-checksum", "abc")], end_stream=True)
    status, body = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(conn.data_to_send())
        while True:
            data = s.recv(65536)
            if not data:
                break
            done = False
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    done = True
            s.sendall(conn.data_to_send())
            if done:
                break
    return status, body


@pytest.mark.parametrize("kind", [Http1Upstream, H2Upstream], ids=["http1-upstream",
                                                                    "http2-upstream"])
def test_a_whole_http2_request_keeps_its_trailers(waypoint_for, upstreams, kind):
    up = upstreams(kind)
    wp = waypoint_for([_service(up.port, app_protocol="http2" if kind is H2Upstream else "")])
    assert _h2_request_with_trailers(wp.port) == (200, b"ok")
    if kind is H2Upstream:
        assert eventually(lambda: len(up.finished) == 1)
        assert up.finished[0]["data"] == b"hello world"
        assert up.finished[0]["trailers"] == [(b"x-checksum", b"abc")]
    else:
        assert eventually(lambda: len(up.requests) == 1)
        assert up.requests[0].body == b"hello world"
        assert up.requests[0].trailers == [(b"x-checksum", b"abc")]
