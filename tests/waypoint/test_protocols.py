"""Tier 1: the HTTP/1.1 reader and HTTP/2 server refuse bad input per the RFCs, and fuzzed
input never makes them raise anything but their own protocol error."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waypoint.http1 import ProtocolError, RequestReader, ResponseReader
from waypoint.http2 import PREFACE, H2Server, RequestReady

GOOD = b"POST /x?y=1 HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"


def test_reads_requests_and_pipelines():
    r = RequestReader()
    got = r.feed(GOOD + b"GET /b HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    assert [(q.method, q.target, q.body, q.keep_alive) for q in got] == [
        ("POST", "/x?y=1", b"hello", True), ("GET", "/b", b"", False)]
    assert got[0].headers[2] == ("x-a", "1")


def test_byte_at_a_time():
    # The head is complete before the body: the request is handed out then, its body
    # streamed into `stream` as the bytes arrive (and ended by the last one).
    r = RequestReader()
    out = []
    for i in range(len(GOOD)):
        out += r.feed(GOOD[i:i + 1])
        if i < len(GOOD) - 1:
            assert r.mid_request
    assert len(out) == 1 and out[0].body == b"" and out[0].stream is not None
    body = out[0].stream
    assert body.ended and body.whole() == b"hello" and body.length == 5


@pytest.mark.parametrize("raw,status,kind", [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400, "malformed"),                                  # CL.TE smuggling
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
     400, "malformed"),                                                # duplicate lengths
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
     400, "malformed"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", 400, "malformed"),   # obs-fold
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400, "malformed"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400, "malformed"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400, "malformed"),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400, "malformed"),                 # bare LF
    (b"GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
     "unsupported_transfer_encoding"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n", 400, "malformed"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate_host"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "missing_host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 70000 + b"\r\n\r\n", 431,
     "headers_too_large"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101))
     + b"\r\n", 431, "headers_too_large"),
])
def test_bad_requests_are_refused_with_the_right_status(raw, status, kind):
    with pytest.raises(ProtocolError) as e:
        RequestReader().feed(raw)
    assert (e.value.status, e.value.kind) == (status, kind)


def test_endless_head_without_newline_is_431():
    r = RequestReader(max_head=1024)
    r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    with pytest.raises(ProtocolError) as e:
        for _ in range(20):
            r.feed(b"a" * 1000)
    assert e.value.status == 431


def test_body_limit_is_413():
    r = RequestReader(max_body=10)
    with pytest.raises(ProtocolError) as e:
        r.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n" + b"x" * 20)
    assert e.value.status == 413


def test_upgrade_is_served_as_a_plain_request():
    r = RequestReader()
    got = r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [q.target for q in got] == ["/", "/next"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data):
    r = RequestReader(max_head=2048)
    try:
        for q in r.feed(data):
            assert isinstance(q.method, str)
    except ProtocolError as e:
        assert e.status in (0, 400, 413, 431, 501)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(GOOD) - 1), st.binary(min_size=1, max_size=4),
       st.booleans())
def test_fuzz_mutated_requests(pos, junk, insert):
    data = GOOD[:pos] + junk + GOOD[pos + (0 if insert else len(junk)):]
    try:
        RequestReader().feed(data)
    except ProtocolError as e:
        assert e.status in (0, 400, 413, 431, 501)


def test_response_reader_close_delimited_and_chunked():
    r = ResponseReader()
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert r.done and r.response().body == b"abc"
    r = ResponseReader()
    r.feed(b"HTTP/1.1 200 OK\r\n\r\npartial")
    assert not r.done and r.feed_eof() and r.response().body == b"partial"
    r = ResponseReader(head_only=True)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert r.done


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_upstream_responses(data):
    r = ResponseReader()
    try:
        r.feed(data)
        r.feed_eof()
    except ProtocolError as e:
        assert e.status == 502


# --- HTTP/2 -----------------------------------------------------------------------------------

def client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    return c


def request_headers(path="/", authority="web"):
    return [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", authority)]


def exchange(server: H2Server, c: h2.connection.H2Connection, now=0.0):
    out = server.feed(c.data_to_send(), now)
    events = c.receive_data(server.data_to_send())
    return out, events


def test_h2_requests_and_responses_on_one_connection():
    s, c = H2Server(), client()
    for sid in (1, 3, 5):
        c.send_headers(sid, request_headers(f"/r{sid}"), end_stream=True)
    got, _ = exchange(s, c)
    assert [g.pseudo(":path") for g in got if isinstance(g, RequestReady)] == ["/r1", "/r3", "/r5"]
    s.respond(3, 200, [("x-a", "b")], b"x" * 100000)        # beyond one window: flow control
    events = c.receive_data(s.data_to_send())
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    for e in events:
        if isinstance(e, h2.events.DataReceived):
            c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
    s.feed(c.data_to_send(), 0)
    for e in c.receive_data(s.data_to_send()):
        if isinstance(e, h2.events.DataReceived):
            body += e.data
    assert len(body) == 100000


def test_h2_rapid_reset_flood_gets_goaway():
    s, c = H2Server(max_resets=50), client()
    sid = 1
    goaway = None
    for _ in range(60):
        c.send_headers(sid, request_headers(), end_stream=False)
        c.reset_stream(sid)
        sid += 2
        _, events = exchange(s, c, now=0.5)
        goaway = next((e for e in events if isinstance(e, h2.events.ConnectionTerminated)), None)
        if goaway:
            break
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert s.closed and "rapid_reset" in s.errors


def test_h2_invalid_frame_gets_goaway():
    s = H2Server()
    s.feed(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"          # empty SETTINGS
           + b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"\x00" * 8, 0)  # PING on stream 1
    assert s.closed and s.errors == ["protocol_error"]
    c = client()
    events = c.receive_data(s.data_to_send())
    ended = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert len(ended) == 1 and ended[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_h2_frames(data):
    s = H2Server()
    s.feed(PREFACE + data, 0)
    s.data_to_send()


def test_informational_answers_are_skipped_for_the_final_one():
    r = ResponseReader()
    r.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
    assert not r.done
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    resp = r.response()
    assert r.done and (resp.status, resp.body) == (200, b"ok")
    assert resp.headers == [("content-length", "2")]


def test_expect_continue_is_noticed():
    r = RequestReader()
    got = r.feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 3\r\n\r\n")
    assert len(got) == 1 and got[0].stream is not None and not got[0].stream.finished
    assert r.expect_continue
