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
