"""Tier 1: the streamed body (`waypoint.streaming.Body`) and the HTTP/2 side of streaming,
sans-IO: the retry buffer keeps a body replayable only while it fits, consumption is what
acknowledges bytes to their sender (so a slow reader holds the sender back), and bytes
nobody will read are given back."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
from hypothesis import given, settings
from hypothesis import strategies as st

from waypoint.http2 import PREFACE, H2Client, H2Server
from waypoint.streaming import Body


def test_a_body_within_the_retry_buffer_replays_from_the_start():
    acked = []
    b = Body(retain=10, on_consumed=acked.append)
    b.feed(b"abc")
    b.feed(b"def")
    chunks, pos = b.read(0)
    assert chunks == [b"abc", b"def"] and pos == 2
    b.consumed(pos)
    assert acked == [6] and b.unconsumed == 0
    b.end([("grpc-status", "0")])
    # a second try reads it all again, and nothing is acknowledged twice
    assert b.read(0) == ([b"abc", b"def"], 2)
    b.consumed(2)
    assert acked == [6]
    assert b.replayable and b.whole() == b"abcdef" and b.trailers == [("grpc-status", "0")]


def test_past_the_retry_buffer_a_body_is_no_longer_replayable_and_not_held():
    b = Body(retain=4)
    b.feed(b"abc")
    _, pos = b.read(0)
    b.consumed(pos)
    b.feed(b"defgh")                     # 8 bytes > 4: overflow
    assert not b.replayable
    chunks, pos = b.read(1)
    assert chunks == [b"defgh"]
    b.consumed(pos)
    assert b.chunks == []                # consumed pieces are dropped once overflowed
    b.end()
    assert b.whole() is None             # so it cannot be mirrored either
    try:
        b.read(0)
    except ValueError:
        pass
    else:
        raise AssertionError("read from the start of an overflowed body")


def test_waiters_are_woken_once_by_the_next_change_and_done_callbacks_run_once():
    b = Body()
    woken, done = [], []
    b.waiters.append(lambda: woken.append(1))
    b.on_done.append(done.append)
    b.feed(b"x")
    b.feed(b"y")
    assert woken == [1]
    b.fail("reset")
    b.end()                              # too late: a failed body stays failed
    assert done == [False] and b.error == "reset" and not b.ended and b.finished


def test_release_gives_back_what_nobody_will_read():
    acked = []
    b = Body(on_consumed=acked.append)
    b.feed(b"12345")
    b.consumed(1)
    b.feed(b"678")
    b.release()
    assert sum(acked) == 8 and b.unconsumed == 0


def _client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                             header_encoding="utf-8"))
    c.initiate_connection()
    return c


def _window_updates(server: H2Server, client: h2.connection.H2Connection) -> int:
    return sum(ev.delta for ev in client.receive_data(server.data_to_send())
               if isinstance(ev, h2.events.WindowUpdated) and ev.stream_id)


def test_h2_request_still_arriving_is_handed_out_and_acked_only_when_consumed():
    client = _client()
    server = H2Server(stream_window=65535, connection_window=65535)   # h2 acks at half
    client.receive_data(server.data_to_send())
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(":method", "POST"), (":path", "/up"), (":scheme", "http"),
                              (":authority", "web"), ("content-length", "40000")])
    client.send_data(sid, b"a" * 10000)
    out = server.feed(client.data_to_send(), 0.0)
    assert len(out) == 1 and out[0].stream is not None and out[0].body == b""
    body = out[0].stream
    assert body.length == 40000 and body.size == 10000
    _window_updates(server, client)
    for piece in (b"b", b"c", b"d"):
        client.send_data(sid, piece * 10000)
    assert server.feed(client.data_to_send(), 0.0) == []
    assert not body.finished and body.size == 40000
    assert _window_updates(server, client) == 0     # not written anywhere yet: no credit
    chunks, pos = body.read(0)
    body.consumed(pos)
    assert _window_updates(server, client) > 0       # credit once consumed
    client.end_stream(sid)
    server.feed(client.data_to_send(), 0.0)
    assert body.ended


def test_h2_streamed_response_ends_with_trailers_after_its_pieces():
    client = _client()
    server = H2Server()
    client.receive_data(server.data_to_send())
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(":method", "POST"), (":path", "/s"), (":scheme", "http"),
                              (":authority", "web")], end_stream=True)
    (req,) = server.feed(client.data_to_send(), 0.0)
    assert req.stream is None
    assert server.respond_head(sid, 200, [("content-type", "application/grpc")], None)
    server.send(sid, b"one")
    server.send(sid, b"two")
    assert server.unsent(sid) == 0
    server.end(sid, [("grpc-status", "0")])
    events = client.receive_data(server.data_to_send())
    data = b"".join(ev.data for ev in events if isinstance(ev, h2.events.DataReceived))
    trailers = [ev.headers for ev in events if isinstance(ev, h2.events.TrailersReceived)]
    assert data == b"onetwo" and trailers == [[("grpc-status", "0")]]
    assert any(isinstance(ev, h2.events.StreamEnded) for ev in events)
    assert server.unsent(sid) is None


def test_h2_client_hands_out_a_response_at_its_headers_and_cancel_resets_the_stream():
    up = H2Client()
    srv = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                               header_encoding="utf-8"))
    srv.initiate_connection()
    srv.receive_data(up.data_to_send())
    up.feed(srv.data_to_send())
    sid = up.request([(":method", "GET"), (":path", "/w"), (":scheme", "http"),
                      (":authority", "web")], b"")
    srv.receive_data(up.data_to_send())
    srv.send_headers(sid, [(":status", "200")])
    srv.send_data(sid, b"first")
    (resp,) = up.feed(srv.data_to_send())
    assert resp.status == 200 and resp.stream is not None
    assert resp.stream.read(0)[0] == [b"first"]
    up.cancel(sid)
    events = srv.receive_data(up.data_to_send())
    assert any(isinstance(ev, h2.events.StreamReset) for ev in events)
    assert resp.stream.error == "cancelled"


def test_preface_constant_is_the_rfc_one():
    assert PREFACE == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


CL = (b"POST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 11\r\n\r\nhello world"
      b"GET /b HTTP/1.1\r\nHost: web\r\n\r\n")
CHUNKED = (b"POST /a HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"
           b"GET /b HTTP/1.1\r\nHost: web\r\n\r\n")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([CL, CHUNKED]),
       st.lists(st.integers(min_value=1, max_value=len(CHUNKED)), max_size=8))
def test_http1_body_is_the_same_however_the_bytes_are_split(raw, cuts):
    from waypoint.http1 import RequestReader

    r = RequestReader()
    got = []
    points = sorted({c for c in cuts if c < len(raw)})
    for a, b in zip([0, *points], [*points, len(raw)], strict=True):
        got += r.feed(raw[a:b])
    assert [q.target for q in got] == ["/a", "/b"]
    first = got[0]
    body = first.body if first.stream is None else first.stream.whole()
    assert body == b"hello world"
    if first.stream is not None and raw is CHUNKED:
        assert first.stream.trailers == [("x-sum", "11")]
    assert ("x-sum", "11") not in first.headers      # trailers never join the head


def test_h2_client_keeps_sending_a_request_body_while_its_response_streams():
    # Bidirectional: the response is already being handed out (a live body) when the
    # server's WINDOW_UPDATE for the same stream arrives; queued request bytes must go out.
    up = H2Client()
    srv = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                               header_encoding="utf-8"))
    srv.initiate_connection()
    srv.increment_flow_control_window(10 * 1024 * 1024)  # only the stream window limits
    srv.receive_data(up.data_to_send())
    up.feed(srv.data_to_send())
    sid = up.request([(":method", "POST"), (":path", "/chat"), (":scheme", "http"),
                      (":authority", "web")], b"", end=False)
    up.send(sid, b"q" * 100_000)
    assert up.unsent(sid) == 100_000 - 65_535          # the server's window is full
    events = srv.receive_data(up.data_to_send())
    srv.send_headers(sid, [(":status", "200")])
    srv.send_data(sid, b"reply")
    (resp,) = up.feed(srv.data_to_send())              # the response is live now
    assert resp.stream is not None and up.unsent(sid) > 0
    received = 0
    for ev in events:
        if isinstance(ev, h2.events.DataReceived):
            received += len(ev.data)
            srv.acknowledge_received_data(ev.flow_controlled_length, sid)
    assert up.feed(srv.data_to_send()) == []           # WINDOW_UPDATEs for that stream
    assert up.unsent(sid) == 0                          # ... let the rest go out
    for ev in srv.receive_data(up.data_to_send()):
        if isinstance(ev, h2.events.DataReceived):
            received += len(ev.data)
    assert received == 100_000
