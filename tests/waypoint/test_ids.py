"""Tier 1: the ids the waypoint makes per request (x-request-id, trace and span ids)."""

from __future__ import annotations

import uuid

from waypoint.telemetry import RandomHex, Tracing


def test_request_ids_are_distinct_version_4_uuids():
    tracing = Tracing()
    ids = [tracing.request_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for r in ids:
        u = uuid.UUID(r)
        assert str(u) == r and u.version == 4 and u.variant == uuid.RFC_4122


def test_new_traces_get_w3c_ids_and_keep_a_parents_trace():
    tracing = Tracing(sample_ratio=0)
    seen = set()
    for _ in range(2000):
        headers = dict(Tracing.propagation_headers(tracing.start("GET web", {}), {}))
        _, tid, sid, flags = headers["traceparent"].split("-")
        assert len(tid) == 32 and len(sid) == 16 and flags == "00"
        assert int(tid, 16) and int(sid, 16)
        assert headers["x-b3-traceid"] == tid and headers["x-b3-spanid"] == sid
        seen.add(tid)
    assert len(seen) == 2000
    parent = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}
    span = tracing.start("GET web", parent)
    headers = dict(Tracing.propagation_headers(span, parent))
    assert span.trace_id == 0x4bf92f3577b34da6a3ce929d0e0e4736
    assert headers["x-b3-traceid"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert headers["x-b3-parentspanid"] == "00f067aa0ba902b7"
    assert headers["x-b3-spanid"] != "00f067aa0ba902b7"


def test_random_hex_never_gives_an_all_zero_id():
    ids = RandomHex()
    ids.buf, ids.pos = "0" * 16 + "abc" + "0" * 13, 0    # a block that starts with zeros
    assert ids.nonzero(16) == "abc" + "0" * 13
    assert len(ids.take(40)) == 40                     # past the block: a new one
