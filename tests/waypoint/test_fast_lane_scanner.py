"""Tier 1: the fast lane's native request-head scanner against `http1.RequestReader`.

Whatever the lane takes, the Python reader (llhttp, strict) must accept with the same
method, target, fields, body and keep-alive; what it hands over is judged by Python alone.
Heads are built from a grammar with random damage, so both sides of the subset's edge are
exercised.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypoint import fastlane, http1

pytestmark = pytest.mark.skipif(fastlane.native is None, reason="fast lane not built")
scan = fastlane.native.scan if fastlane.native is not None else None

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~",
                min_size=1, max_size=12)
VALUE = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=20)
SAFE_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=20)
NAMES = st.sampled_from(["Host", "host", "Content-Length", "Connection", "Transfer-Encoding",
                         "Expect", "Upgrade", "X-Request-Id", "traceparent", "tracestate",
                         "b3", "X-B3-TraceId", "Accept", "User-Agent", "Cookie"]) | TOKEN
TARGET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-._~%?=&#:@!$'()*+,;[]",
                 max_size=30).map(lambda t: "/" + t)


@st.composite
def requests(draw) -> bytes:
    known = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
    method = draw(TOKEN if draw(st.integers(0, 9)) == 0 else known)
    target = draw(st.sampled_from(["*", "http://a/b", "/a b", "/\x7f"])
                  if draw(st.integers(0, 9)) == 0 else TARGET)
    version = draw(st.sampled_from(["HTTP/1.1"] * 12 + ["HTTP/1.0", "HTTP/2.0", "http/1.1"]))
    fields = []
    if draw(st.integers(0, 9)):
        fields.append(("Host", draw(st.sampled_from(["web.demo", "a:80", ""]) | SAFE_VALUE)))
    for _ in range(draw(st.integers(0, 5))):
        fields.append((draw(NAMES), draw(VALUE if draw(st.integers(0, 5)) == 0
                                         else SAFE_VALUE)))
    body = draw(st.binary(max_size=40))
    if body or draw(st.booleans()):
        fields.append(("Content-Length", draw(st.sampled_from([str(len(body))] * 6 +
                                                                ["x", "", " 5", "-1"]))))
    ows = draw(st.sampled_from([" ", "", "\t", "  "]))
    eol = draw(st.sampled_from(["\r\n"] * 20 + ["\n", "\r"]))
    head = f"{method} {target} {version}{eol}" + "".join(
        f"{n}:{ows}{v}{eol}" for n, v in fields) + eol
    return head.encode("latin-1") + body


def python_reads(data: bytes):
    reader = http1.RequestReader(max_head=65536)
    try:
        got = reader.feed(data)
    except http1.ProtocolError:
        return "refused"
    return got


@settings(max_examples=400, deadline=None)
@given(requests())
def test_what_the_lane_takes_python_takes_the_same_way(data):
    lane = scan(data)
    if not isinstance(lane, tuple):
        return                                   # handed over (or incomplete): Python judges
    method, target, headers, body, keep, consumed = lane
    got = python_reads(data[:consumed])
    assert got != "refused", data
    assert len(got) == 1 and got[0].stream is None, data
    r = got[0]
    assert (r.method, r.target, r.headers, r.body, r.keep_alive) == \
        (method, target, headers, body, keep), data


@settings(max_examples=200, deadline=None)
@given(requests(), st.integers(1, 60))
def test_a_prefix_never_makes_the_lane_take_a_different_request(data, cut):
    """A request split anywhere: the lane waits (0) or hands over, never takes a part."""
    whole = scan(data)
    part = scan(data[:cut])
    if cut < len(data) and isinstance(whole, tuple) and whole[5] > cut:
        assert part == 0 or isinstance(part, str)


def test_the_subset_edges():
    ok = b"GET /a?b=1 HTTP/1.1\r\nHost: web\r\nX-A: v \r\n\r\n"
    assert scan(ok)[:3] == ("GET", "/a?b=1", [("host", "web"), ("x-a", "v")])  # OWS trimmed
    assert scan(ok[:20]) == 0
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n") == \
        "transfer_encoding"
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == "host"
    assert scan(b"GET / HTTP/1.1\r\n\r\n") == "host"
    assert scan(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n") == "version"
    assert scan(b"GET / HTTP/1.1\nHost: a\n\n") == "version"
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n") == "grammar"
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n") == "grammar"
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n") == "big_body"
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n") == "expect"
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n") == "connection"
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\nX-B3-Sampled: 1\r\n\r\n") == "b3"
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000 + b"\r\n\r\n") == "big_head"
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabc") == 0
    assert scan(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 100 + b"\r\n") == "fields"
