"""HTTP/1.1 message framing on the Python path: exactly one answer per request, refused
answers as failed tries, and a client's bad bytes after good requests.

Tier 1: `http1.ResponseReader` / `RequestReader` fed bytes. Tier 2: a real waypoint with the
fast lane off (`fast_lane=False`) between a raw client socket and a recording upstream that
writes scripted bytes (`tests/waypoint/lane_diff.py`), on loopback. What a user relies on:
an upstream that sends too much (two answers, junk, a body after HEAD or 204) never leaks
into the answer or into the next client's request on a pooled connection; an answer the
waypoint cannot relay faithfully (status outside 100..599, an unasked 101, HTTP/2.0 on an
HTTP/1.1 connection, a transfer coding besides chunked) is 503 `UC` — retried where the route
retries resets — never relayed and never a hang; a client's pipelined requests before a
malformed one are all answered, in order, before the 400; nothing after `Connection: close`
is processed.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.waypoint.conftest import make_snapshot
from tests.waypoint.lane_diff import Act, Upstream, by_header, exchange, reply, scrape, web
from waypoint import http1
from waypoint.proxy import WaypointThread

# --- tier 1: the readers ----------------------------------------------------------------------


def response(data: bytes, *, head_only: bool = False) -> http1.ResponseReader:
    r = http1.ResponseReader(head_only=head_only)
    r.feed(data)
    return r


def test_a_second_response_in_the_same_read_is_not_parsed():
    r = response(reply(200, body=b"one") + reply(200, body=b"two"))
    assert r.done and r.response().body == b"one"
    assert ("content-length", "3") in r.headers
    assert not r.keep_alive                  # out of step: never pooled


@pytest.mark.parametrize("data", [
    reply(200, body=b"hello") + b"junkjunk",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 304 Not Modified\r\n\r\n" + reply(200),
], ids=["junk", "204-with-body", "304-then-another"])
def test_bytes_after_a_complete_response_mean_out_of_step(data):
    r = response(data)
    assert r.done and not r.keep_alive


def test_bytes_after_a_streamed_response_in_its_last_read():
    r = http1.ResponseReader()
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    resp = r.start_stream()
    r.feed(b"defHTTP/1.1 200 OK\r\n")
    assert r.done and not r.keep_alive
    assert resp.stream.read(0)[0] == [b"abc", b"def"]


def test_a_clean_response_keeps_its_connection_and_the_parser_is_reused():
    r = response(b"HTTP/1.1 100 Continue\r\n\r\n" + reply(200, body=b"ok"))
    assert r.done and r.keep_alive and r.status == 200 and r.response().body == b"ok"
    r.reset()
    r.feed(reply(404, body=b"nf"))
    assert r.done and r.keep_alive and r.status == 404


@pytest.mark.parametrize("head,keep", [
    (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n", True),                 # no length: still no body
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n", True),
])
def test_a_head_answer_has_no_body(head, keep):
    r = response(head, head_only=True)
    assert r.done and r.keep_alive is keep and r.response().body == b""


def test_a_body_after_a_head_answer_is_neither_kept_nor_counted():
    r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", head_only=True)
    assert r.done and r.response().body == b"" and not r.keep_alive


@pytest.mark.parametrize("data,kind", [
    (b"HTTP/1.1 600 X\r\nContent-Length: 1\r\n\r\nx", "upstream_status"),
    (b"HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\nab", "upstream_status"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
     "upstream_status"),
    (b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nab", "upstream_version"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
     "upstream_transfer_encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
     "upstream_transfer_encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", "upstream_transfer_encoding"),
])
def test_answers_that_cannot_be_relayed_faithfully_are_refused(data, kind):
    with pytest.raises(http1.ProtocolError) as e:
        response(data)
    assert e.value.kind == kind and e.value.status == 502


@settings(max_examples=60, deadline=None)
@given(framing=st.sampled_from(["length", "chunked"]), info=st.booleans(),
       body=st.sampled_from([b"", b"x", b"hello world"]),
       extra=st.sampled_from([b"", b"junk", reply(200, body=b"two"), b"HTTP/1.1 "]),
       cuts=st.sets(st.integers(1, 200), max_size=4))
def test_one_answer_however_the_reads_fall(framing, info, body, extra, cuts):
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n" if info else b"") + reply(
        200, body=body, framing=framing)
    data = answer + extra
    points = sorted(c for c in cuts if c < len(data))
    r = http1.ResponseReader()
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        r.feed(data[a:b])
    assert r.done and r.status == 200 and r.response().body == body
    assert r.keep_alive is (extra == b"")


def test_chunked_in_any_case_with_whitespace_is_still_chunked():
    r = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked \r\n\r\n2\r\nab\r\n0\r\n\r\n")
    assert r.done and r.keep_alive and r.response().body == b"ab"


def request(line: str, *fields: str) -> bytes:
    return (line + "\r\nHost: web.demo\r\n" + "".join(f + "\r\n" for f in fields) +
            "\r\n").encode()


def test_requests_before_malformed_bytes_come_with_the_error():
    r = http1.RequestReader()
    with pytest.raises(http1.ProtocolError) as e:
        r.feed(request("GET /a HTTP/1.1") + request("GET /b HTTP/1.1") +
               b"GET / HTTP/1.1\r\n\r\n")
    assert e.value.status == 400 and e.value.kind == "missing_host"
    assert [q.target for q in e.value.ready] == ["/a", "/b"]


@pytest.mark.parametrize("first", [request("GET /a HTTP/1.1", "Connection: close"),
                                   b"GET /a HTTP/1.0\r\n\r\n"], ids=["close", "http1.0"])
def test_nothing_after_a_closing_request_is_processed(first):
    r = http1.RequestReader()
    got = r.feed(first + request("GET /b HTTP/1.1") + b"\x00garbage")
    assert [q.target for q in got] == ["/a"] and not got[0].keep_alive
    assert r.feed(request("GET /c HTTP/1.1")) == []
    assert not r.mid_request


# --- tier 2: the Python path over sockets --------------------------------------------------------

CONFIG = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /retry}}]
    retries: {attempts: 2, retryOn: "reset"}
    route: [{destination: {host: web}}]
  - retries: {attempts: 0}
    route: [{destination: {host: web}}]
"""


@contextlib.contextmanager
def python_path(table: dict[str, list[Act]]):
    up = Upstream(by_header(table))
    wp = None
    try:
        wp = WaypointThread(make_snapshot([web(port=up.port)], CONFIG), rng=random.Random(7),
                            fast_lane=False)
        wp.start()
        yield wp, up
    finally:
        if wp is not None:
            wp.stop()
        up.stop()


def rq(line: str, *fields: str) -> bytes:
    return request(line, *fields)


def responses(data: bytes) -> list[bytes]:
    """Status lines in the order the client got them."""
    return re.findall(rb"HTTP/1\.1 \d{3}[^\r\n]*", data)


def requests_per_connection(up: Upstream) -> list[int]:
    with up.lock:
        return [len(c.requests) for c in up.conns]


def metric(wp: WaypointThread, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in scrape(wp).items()
               if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def test_two_answers_in_one_read_relay_the_first_and_the_next_client_is_served():
    with python_path({"two": [Act(reply(200, body=b"one") + reply(200, body=b"two"))]}) as (
            wp, up):
        t = exchange(wp.port, [rq("GET /a HTTP/1.1", "x-resp: two")], ["GET"])
        assert t.data.endswith(b"\r\n\r\none") and b"two" not in t.data
        assert b"content-length: 3\r\n" in t.data
        # another client: a fresh upstream connection (the out-of-step one was dropped)
        t2 = exchange(wp.port, [rq("GET /b HTTP/1.1")], ["GET"])
        assert responses(t2.data) == [b"HTTP/1.1 200 OK"] and t2.data.endswith(b"hello")
        assert requests_per_connection(up) == [1, 1]


@pytest.mark.parametrize("data", [reply(200, body=b"hello") + b"junkjunk",
                                  b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc"],
                         ids=["junk-after-body", "204-with-a-body"])
def test_bytes_after_an_answer_never_reach_the_next_request(data):
    with python_path({"k": [Act(data)]}) as (wp, up):
        t = exchange(wp.port, [rq("GET /a HTTP/1.1", "x-resp: k")], ["GET"])
        assert b"junk" not in t.data and b"abc" not in t.data
        for _ in range(3):
            t2 = exchange(wp.port, [rq("GET /b HTTP/1.1")], ["GET"])
            assert responses(t2.data) == [b"HTTP/1.1 200 OK"]
        assert requests_per_connection(up) == [1, 3]


def test_a_head_answer_without_length_keeps_its_upstream_connection():
    with python_path({"h": [Act(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n")]}) as (wp, up):
        t = exchange(wp.port, [rq("HEAD /a HTTP/1.1", "x-resp: h"), rq("GET /b HTTP/1.1")],
                     ["HEAD", "GET"])
        assert responses(t.data) == [b"HTTP/1.1 200 OK"] * 2 and t.end == "open"
        assert requests_per_connection(up) == [2]


def test_a_body_after_a_head_answer_is_not_counted_and_its_connection_dropped():
    with python_path({"h": [Act(reply(200, body=b"hello"))]}) as (wp, up):
        t = exchange(wp.port, [rq("HEAD /a HTTP/1.1", "x-resp: h")], ["HEAD"])
        assert t.data.endswith(b"content-length: 5\r\n\r\n")    # the head, no body
        assert metric(wp, "istio_response_bytes_sum") == 0
        exchange(wp.port, [rq("GET /b HTTP/1.1")], ["GET"])
        assert requests_per_connection(up) == [1, 1]


REFUSED = [
    b"HTTP/1.1 600 Whatever\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
]
REFUSED_IDS = ["600", "099", "101", "http2.0", "gzip-chunked"]


@pytest.mark.parametrize("data", REFUSED, ids=REFUSED_IDS)
def test_an_answer_that_cannot_be_relayed_is_503_uc_at_once(data):
    with python_path({"bad": [Act(data)]}) as (wp, up):
        t = exchange(wp.port, [rq("GET /a HTTP/1.1", "x-resp: bad")], ["GET"], timeout=5)
        assert responses(t.data) == [b"HTTP/1.1 503 Service Unavailable"], t
        assert t.end != "timeout"
        assert metric(wp, "istio_requests_total", response_code="503",
                      response_flags="UC") == 1
        t2 = exchange(wp.port, [rq("GET /b HTTP/1.1")], ["GET"])   # still serving
        assert responses(t2.data) == [b"HTTP/1.1 200 OK"]
        assert requests_per_connection(up) == [1, 1]   # the bad connection was not reused


@pytest.mark.parametrize("data", REFUSED, ids=REFUSED_IDS)
def test_an_answer_that_cannot_be_relayed_is_a_failed_try_that_is_retried(data):
    with python_path({"bad": [Act(data), Act(reply(200, body=b"fine"))]}) as (wp, up):
        t = exchange(wp.port, [rq("GET /retry HTTP/1.1", "x-resp: bad")], ["GET"])
        assert responses(t.data) == [b"HTTP/1.1 200 OK"] and t.data.endswith(b"fine")
        assert requests_per_connection(up) == [1, 1]


def test_good_requests_before_malformed_bytes_are_answered_in_order_then_400():
    with python_path({}) as (wp, up):
        t = exchange(wp.port, [rq("GET /a HTTP/1.1") + rq("GET /b HTTP/1.1") +
                               b"GET /bad HTTP/1.1\r\n\r\n" + rq("GET /never HTTP/1.1")],
                     ["GET", "GET", "GET"])
        assert responses(t.data) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK",
                                     b"HTTP/1.1 400 Bad Request"]
        assert t.data.endswith(b"missing_host") and t.end == "closed"
        assert [r.target for c in up.conns for r in c.requests] == ["/a", "/b"]


def test_malformed_bytes_while_a_request_is_in_flight_wait_for_its_answer():
    slow = Act(reply(200, body=b"slow"), delay=0.3)
    with python_path({"slow": [slow]}) as (wp, up):
        # the bad bytes arrive in a later write, while the first request is upstream
        t = exchange(wp.port, [rq("GET /a HTTP/1.1", "x-resp: slow"),
                               b"GET /bad HTTP/1.1\r\n\r\n"], ["GET", "GET"], gap=0.05)
        assert responses(t.data) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"]
        assert b"slow" in t.data and t.end == "closed"


def test_a_malformed_first_request_is_still_answered_400_at_once():
    with python_path({}) as (wp, up):
        t = exchange(wp.port, [b"GET / HTTP/1.1\r\n\r\n"], ["GET"])
        assert responses(t.data) == [b"HTTP/1.1 400 Bad Request"] and t.end == "closed"
        assert requests_per_connection(up) == []


def test_nothing_after_connection_close_is_processed():
    with python_path({}) as (wp, up):
        t = exchange(wp.port, [rq("GET /a HTTP/1.1", "Connection: close") +
                               rq("GET /b HTTP/1.1") + b"\x00 not even http"], ["GET"])
        assert responses(t.data) == [b"HTTP/1.1 200 OK"]
        assert b"connection: close\r\n" in t.data and t.end == "closed"
        time.sleep(0.05)
        assert [r.target for c in up.conns for r in c.requests] == ["/a"]
        # (a plain client sees the same: one answer, then the end)
        with socket.create_connection(("127.0.0.1", wp.port), timeout=5) as s:
            s.sendall(b"GET /c HTTP/1.0\r\nHost: web.demo\r\n\r\nGET /d HTTP/1.1\r\n\r\n")
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert responses(got) == [b"HTTP/1.1 200 OK"]
