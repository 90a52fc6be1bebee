"""The tunnel's telemetry with kernel byte counts: what it does with a connection's flow record.

A real `FlowReader` over a real (unpinned) BPF hash map of lw_flows' layout; the test writes
the records the sockops program would (tests/bpf and tests/local show the program itself).
Covered: counts taken from the record at each flush and at close; the final count waits for
the kernel socket to close and then deletes the record (and the spare one); a connection
without a record falls back to user-space counts and says so; counters never go back; a
record that never closes is finished at the deadline.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct

import pytest
from prometheus_client import CollectorRegistry

from node_agent.bpf import layout
from node_agent.bpf.flows import FlowReader
from node_agent.bpf.syscall import BPF_MAP_TYPE_HASH, Map, map_create
from node_agent.ztunnel import telemetry as tm
from node_agent.ztunnel.telemetry import ConnRecord, Telemetry


@pytest.fixture
def reader():
    m = Map(map_create(map_type=BPF_MAP_TYPE_HASH, key_size=8, value_size=layout.FLOW.size,
                       max_entries=64, name="lw_flows_t"))
    r = FlowReader(m)
    try:
        yield r
    finally:
        r.close()


def put(reader: FlowReader, cookie: int, *, rx: int, tx: int, closed: bool = False) -> None:
    value = layout.FLOW.pack(socket.inet_aton("10.244.1.2"), socket.inet_aton("10.244.2.2"),
                             40000, 8080, layout.KIND_OUTBOUND, 1, 0, rx, tx, 1, 2 if closed else 0,
                             7 if closed else 1, 0, 0, 0)
    reader.map.update(struct.pack("=Q", cookie), value)


def has(reader: FlowReader, cookie: int) -> bool:
    return reader.map.lookup(struct.pack("=Q", cookie)) is not None


def value(reg: CollectorRegistry, name: str) -> float:
    return sum(s.value for fam in reg.collect() for s in fam.samples if s.name == name)


def make(reader=None):
    log, reg = io.StringIO(), CollectorRegistry()
    return Telemetry(registry=reg, access_log=log, flows=reader), log, reg


def opened_rec(t: Telemetry, cookie: int, spare: int = 0) -> ConnRecord:
    rec = ConnRecord(listener="outbound", src="10.244.1.2:40000", dst="10.244.2.2:8080",
                     src_workload="default/a", dst_workload="default/b")
    t.opened(rec)
    rec.flow_cookie, rec.spare_cookie = cookie, spare
    return rec


def lines(log: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in log.getvalue().splitlines()]


def test_counts_come_from_the_record_and_the_final_read_consumes_it(reader):
    t, log, reg = make(reader)
    assert value(reg, "lacewing_tunnel_kernel_byte_counts") == 1
    rec = opened_rec(t, 11, spare=12)
    put(reader, 11, rx=1000, tx=50)
    put(reader, 12, rx=999, tx=49)                   # the other socket's record, to be dropped
    rec.sent, rec.received = 900, 10                 # user space saw less: the kernel wins
    t.flush_bytes(rec)
    assert value(reg, "istio_tcp_received_bytes_total") == 1000
    assert value(reg, "istio_tcp_sent_bytes_total") == 50
    put(reader, 11, rx=5000, tx=70, closed=True)
    t.closed(rec)
    assert value(reg, "istio_tcp_received_bytes_total") == 5000
    assert value(reg, "istio_tcp_sent_bytes_total") == 70
    assert value(reg, "istio_tcp_connections_closed_total") == 1
    [e] = lines(log)
    assert (e["bytes_sent"], e["bytes_received"], e["bytes_source"]) == (5000, 70, "kernel")
    assert not has(reader, 11) and not has(reader, 12)


def test_the_final_count_waits_until_the_kernel_socket_is_closed(reader):
    async def go():
        t, log, reg = make(reader)
        rec = opened_rec(t, 21)
        put(reader, 21, rx=300, tx=100)              # our FIN and last bytes not yet acked
        t.closed(rec)
        assert log.getvalue() == ""                  # not logged yet
        assert value(reg, "istio_tcp_sent_bytes_total") == 100      # what is known counts
        assert value(reg, "lacewing_tunnel_active_connections") == 0
        await asyncio.sleep(0.01)
        put(reader, 21, rx=300, tx=4096, closed=True)
        for _ in range(200):
            if log.getvalue():
                break
            await asyncio.sleep(0.01)
        [e] = lines(log)
        assert (e["bytes_sent"], e["bytes_received"], e["bytes_source"]) == (300, 4096, "kernel")
        assert value(reg, "istio_tcp_sent_bytes_total") == 4096
        assert not has(reader, 21)
    asyncio.run(go())


def test_a_record_that_never_closes_is_finished_at_the_deadline(reader, monkeypatch):
    monkeypatch.setattr(tm, "FINAL_WAIT", 0.05)

    async def go():
        t, log, reg = make(reader)
        rec = opened_rec(t, 31)
        put(reader, 31, rx=10, tx=20)
        t.closed(rec)
        for _ in range(200):
            if log.getvalue():
                break
            await asyncio.sleep(0.01)
        [e] = lines(log)
        assert (e["bytes_sent"], e["bytes_received"], e["bytes_source"]) == (10, 20, "kernel")
        assert not has(reader, 31)
    asyncio.run(go())


def test_finish_logs_what_is_still_waiting(reader):
    async def go():
        t, log, _reg = make(reader)
        rec = opened_rec(t, 41)
        put(reader, 41, rx=5, tx=6)
        t.closed(rec)
        t.finish()                                   # the tunnel stops
        [e] = lines(log)
        assert (e["bytes_sent"], e["bytes_received"]) == (5, 6)
    asyncio.run(go())


def test_without_a_record_user_space_counts_are_used_and_said(reader):
    t, log, reg = make(reader)
    rec = opened_rec(t, 51)                          # the kernel has no record of it
    rec.sent, rec.received = 123, 45
    t.closed(rec)
    [e] = lines(log)
    assert (e["bytes_sent"], e["bytes_received"], e["bytes_source"]) == (123, 45, "userspace")
    assert value(reg, "istio_tcp_received_bytes_total") == 123
    assert value(reg, "lacewing_tunnel_userspace_byte_counts_total") == 1


def test_a_standalone_tunnel_counts_in_user_space():
    t, log, reg = make(None)
    assert value(reg, "lacewing_tunnel_kernel_byte_counts") == 0
    rec = opened_rec(t, 0)
    rec.sent, rec.received = 7, 8
    t.closed(rec)
    [e] = lines(log)
    assert (e["bytes_sent"], e["bytes_received"], e["bytes_source"]) == (7, 8, "userspace")
    assert value(reg, "istio_tcp_received_bytes_total") == 7
    assert value(reg, "istio_tcp_sent_bytes_total") == 8
    assert value(reg, "lacewing_tunnel_userspace_byte_counts_total") == 0


def test_counters_never_go_back_when_a_record_vanishes(reader):
    t, log, reg = make(reader)
    rec = opened_rec(t, 61)
    put(reader, 61, rx=1000, tx=1000)
    t.flush_bytes(rec)
    reader.consume(61)                               # gone (e.g. an operator's reload)
    rec.sent, rec.received = 400, 400                # user space counted less
    t.flush_bytes(rec)
    t.closed(rec)
    assert value(reg, "istio_tcp_received_bytes_total") == 1000
    assert value(reg, "istio_tcp_sent_bytes_total") == 1000
    [e] = lines(log)
    assert (e["bytes_sent"], e["bytes_received"]) == (1000, 1000)
