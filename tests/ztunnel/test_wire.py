"""Tier 1: the tunnel header and reply codecs, with hypothesis fuzzing of both parsers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.ztunnel import wire

H = wire.TunnelHeader(wire.Address("10.244.1.5", 8080), wire.Address("fd00::7", 40000))


def test_round_trip_and_leftover_bytes():
    r = wire.HeaderReader()
    raw = wire.encode_header(H) + b"GET / HTTP/1.1\r\n"
    assert r.feed(raw[:5]) is None
    header, rest = r.feed(raw[5:])
    assert header == H and rest == b"GET / HTTP/1.1\r\n"


def test_garbage_and_plaintext_are_refused_early():
    with pytest.raises(wire.ProtocolError):
        wire.HeaderReader().feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(wire.ProtocolError):
        wire.HeaderReader().feed(b"LWT1\x02\x00\x00\x00")  # version 2
    with pytest.raises(wire.ProtocolError):
        wire.HeaderReader().feed(b"LWT1\x01\x00\xff\xff")  # absurd length


def test_reply():
    r = wire.ReplyReader()
    raw = wire.encode_reply(wire.DENIED, "policy x") + b"data"
    assert r.feed(raw[:3]) is None
    assert r.feed(raw[3:]) == (wire.DENIED, "policy x", b"data")
    with pytest.raises(wire.ProtocolError):
        wire.ReplyReader().feed(b"HTTP/1.1 200 OK")


def test_sni_is_a_dns_label_per_identity():
    a, b = wire.sni_for("spiffe://cluster.local/ns/a/sa/x"), wire.sni_for("spiffe://t/ns/b/sa/y")
    assert a != b and len(a.split(".")[0]) <= 63
    assert wire.sni_index(["spiffe://t/ns/b/sa/y"])[b] == "spiffe://t/ns/b/sa/y"


ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
addrs = st.builds(wire.Address, ips, st.integers(1, 65535))


@settings(max_examples=150, deadline=None)
@given(st.builds(wire.TunnelHeader, addrs, addrs), st.binary(max_size=64), st.integers(1, 60))
def test_fuzz_round_trip_any_split(header, tail, cut):
    raw = wire.encode_header(header) + tail
    r = wire.HeaderReader()
    first = r.feed(raw[:cut])
    got = first if first is not None else r.feed(raw[cut:])
    if first is not None:
        got = (got[0], got[1] + raw[cut:])
    assert got == (header, tail)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_header_parser_never_crashes(data):
    try:
        res = wire.HeaderReader().feed(data)
    except wire.ProtocolError:
        return
    if res is not None:
        assert isinstance(res[0], wire.TunnelHeader)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=8).map(lambda b: b"LWT1\x01" + b), st.binary(max_size=60))
def test_fuzz_header_parser_near_valid(prefix, rest):
    try:
        wire.HeaderReader().feed(prefix + rest)
    except wire.ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_reply_parser(data):
    try:
        wire.ReplyReader().feed(data)
    except wire.ProtocolError:
        pass


# ---------------------------------------------------------------- framed mode (tunnel reuse)

def test_the_framed_flag_round_trips_and_plain_headers_stay_unframed():
    framed = wire.TunnelHeader(H.target, H.source, flags=wire.FLAG_FRAMED)
    header, rest = wire.HeaderReader().feed(wire.encode_header(framed))
    assert header.framed and rest == b""
    assert not wire.HeaderReader().feed(wire.encode_header(H))[0].framed


def test_frames_decode_across_any_split_and_leave_the_next_header():
    payload = bytes(range(256)) * 2000                    # 512000 bytes: two DATA frames
    raw = wire.frame_data(payload) + wire.frame_data(b"tail") + wire.FIN_FRAME + b"LWT1next"
    for cut in (1, 3, 5, 6, 4096, 262144 + 5, 262144 + 7, len(raw) - 9):
        d = wire.FrameDecoder()
        a = d.feed(raw[:cut])
        b = d.feed(raw[cut:])
        assert a[0] + b[0] == payload + b"tail"
        assert b[1] and b[2] == b"LWT1next" and not a[1]


@pytest.mark.parametrize("raw, message", [
    (b"\x07\x00\x00\x00\x01x", "unknown frame type"),
    (b"\x00\x00\x00\x00\x00", "DATA frame of 0"),
    (b"\x00\x00\x04\x00\x01", "DATA frame of"),
    (b"\x01\x00\x00\x00\x01", "FIN frame with a length"),
])
def test_bad_frames_are_protocol_errors(raw, message):
    with pytest.raises(wire.ProtocolError, match=message):
        wire.FrameDecoder().feed(raw)


def test_bytes_after_fin_are_refused_once_fin_was_seen():
    d = wire.FrameDecoder()
    assert d.feed(wire.FIN_FRAME) == (b"", True, b"")
    with pytest.raises(wire.ProtocolError, match="after FIN"):
        d.feed(b"x")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=6),
       st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=8))
def test_frame_decoding_is_exact_for_any_chunking(payloads, cuts):
    raw = b"".join(wire.frame_data(p) for p in payloads) + wire.FIN_FRAME
    d = wire.FrameDecoder()
    got, fin, pos, i = [], False, 0, 0
    while pos < len(raw):
        step = cuts[i % len(cuts)]
        data, fin, rest = d.feed(raw[pos:pos + step])
        got.append(data)
        assert rest == b""
        pos += step
        i += 1
    assert fin and b"".join(got) == b"".join(payloads)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_frame_decoder_fuzz_never_crashes(raw):
    d = wire.FrameDecoder()
    try:
        data, fin, rest = d.feed(raw)
    except wire.ProtocolError:
        return
    assert len(data) + len(rest) <= len(raw)
