"""Tier 2: bad input on a live waypoint is answered per the RFCs and counted; the proxy keeps
serving everyone else."""

from __future__ import annotations

import socket
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from lacewing.sample_app import Behaviour, run_load
from tests.waypoint.conftest import get, service_dict


@pytest.fixture
def wp(backends, waypoint_for):
    backs = backends(("v1", Behaviour()))
    return waypoint_for([service_dict(backs)], "", header_timeout_s=0.5)


def raw(port: int, data: bytes, *, wait_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while wait_close:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def metric(wp, name: str) -> float:
    text = get(wp.metrics_port, "/metrics", host="localhost")[2].decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("data,status", [
    (b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 1\r\nContent-Length: 30\r\n\r\nx", b"400"),
    (b"GET / HTTP/1.1\r\nHost: web\r\nX: a\r\n b\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nHost: web\r\nX: \x7f\x00\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nHost: web\r\nBig: " + b"x" * 80000 + b"\r\n\r\n", b"431"),
])
def test_smuggling_and_oversized_heads_are_refused_and_counted(wp, data, status):
    before = metric(wp, "lacewing_waypoint_protocol_errors_total")
    out = raw(wp.port, data)
    assert out.startswith(b"HTTP/1.1 " + status)
    assert out.count(b"HTTP/1.1") == 1                 # nothing smuggled through
    assert metric(wp, "lacewing_waypoint_protocol_errors_total") == before + 1
    assert get(wp.port, host="web")[0] == 200          # still serving


def test_slow_client_gets_408_and_others_are_unaffected(wp):
    with socket.create_connection(("127.0.0.1", wp.port), timeout=5) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ")
        r = run_load(f"http://127.0.0.1:{wp.port}/", requests=50, headers={"Host": "web"})
        assert r.count(200) == 50
        out = b""
        while True:
            chunk = slow.recv(4096)
            if not chunk:
                break
            out += chunk
    assert out.startswith(b"HTTP/1.1 408")
    assert metric(wp, 'lacewing_waypoint_protocol_errors_total{kind="slow_client"') == 1


def test_h2_rapid_reset_flood_is_closed_with_goaway(wp):
    sock = socket.create_connection(("127.0.0.1", wp.port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "web")]
    terminated = None
    try:
        for _ in range(400):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers)
            conn.reset_stream(sid)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 5
        while terminated is None and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    terminated = ev
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()
    assert terminated is not None
    assert terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert metric(wp, 'lacewing_waypoint_protocol_errors_total{kind="rapid_reset"') == 1
    assert get(wp.port, host="web")[0] == 200


def test_invalid_h2_frames_get_goaway(wp):
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    bad = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"\0" * 8
    out = raw(wp.port, preface + bad)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    events = conn.receive_data(out)
    ended = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended and ended[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert get(wp.port, host="web")[0] == 200


def test_bad_path_escape_is_400(wp):
    status, _, _ = get(wp.port, "/a%zz", host="web")
    assert status == 400


def test_expect_100_continue_gets_100_then_the_answer(wp):
    import json

    with socket.create_connection(("127.0.0.1", wp.port), timeout=5) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 5\r\n\r\n")
        first = s.recv(100)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    doc = json.loads(body)
    assert doc["body_bytes"] == 5 and "expect" not in doc["headers"]
