"""Flow records to totals: the numpy group-by against a plain loop, and L4Totals over a real
kernel hash map shaped like lw_flows (no programs needed)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.bpf import layout, syscall
from node_agent.bpf.flows import FlowTable, L4Totals, aggregate, aggregate_python


def make_recs(rows) -> np.ndarray:
    recs = np.zeros(len(rows), dtype=layout.FLOW_DTYPE)
    for i, (s, d, k, rx, tx, closed) in enumerate(rows):
        recs[i]["saddr"], recs[i]["daddr"], recs[i]["kind"] = s, d, k
        recs[i]["rx"], recs[i]["tx"], recs[i]["closed_ns"] = rx, tx, closed
    return recs


row = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 3),
                st.integers(0, 2**40), st.integers(0, 2**40), st.sampled_from([0, 0, 5]))


@settings(max_examples=60, deadline=None)
@given(st.lists(row, max_size=40))
def test_numpy_group_by_equals_the_plain_loop(rows):
    recs = make_recs(rows)
    assert aggregate(recs) == aggregate_python(recs)


def test_aggregate_sums_per_pair_and_kind():
    recs = make_recs([(1, 2, 1, 10, 20, 0), (1, 2, 1, 5, 6, 9), (1, 2, 2, 1, 1, 0),
                      (2, 1, 1, 7, 7, 0)])
    out = aggregate(recs)
    t = out[(1, 2, 1)]
    assert (t.received_bytes, t.sent_bytes, t.opened, t.closed) == (15, 26, 2, 1)
    assert set(out) == {(1, 2, 1), (1, 2, 2), (2, 1, 1)}


def put(m: syscall.Map, cookie: int, saddr: str, daddr: str, rx: int, tx: int, closed: int) -> None:
    m.update(layout.U64.pack(cookie), layout.FLOW.pack(
        layout.ip_key(saddr), layout.ip_key(daddr), 40000, 8080, layout.KIND_OUTBOUND, 1, 2,
        rx, tx, 1, closed, 1, 0, 0, 0))


def test_totals_are_monotonic_and_closed_records_leave_the_map():
    if os.geteuid() != 0:
        pytest.fail("needs root: it creates a BPF map")
    fd = syscall.map_create(map_type=syscall.BPF_MAP_TYPE_HASH, key_size=8,
                            value_size=layout.FLOW.size, max_entries=64, name="lw_t_flows")
    with syscall.Map(fd) as m:
        totals = L4Totals(FlowTable(m))
        key = ("10.244.1.2", "10.244.1.5")
        put(m, 1, *key, rx=100, tx=10, closed=0)
        put(m, 2, *key, rx=50, tx=5, closed=7)
        k = (layout.U32.unpack(layout.ip_key(key[0]))[0], layout.U32.unpack(layout.ip_key(key[1]))[0],
             layout.KIND_OUTBOUND)
        t1 = totals.update()[k]
        assert (t1.received_bytes, t1.sent_bytes, t1.opened, t1.closed) == (150, 15, 2, 1)
        assert m.lookup(layout.U64.pack(2)) is None          # counted once, then removed
        put(m, 1, *key, rx=300, tx=30, closed=9)              # the open one grows and closes
        t2 = totals.update()[k]
        assert (t2.received_bytes, t2.sent_bytes, t2.opened, t2.closed) == (350, 35, 2, 2)
        assert m.dump()[2] == 0
        t3 = totals.update()[k]                               # nothing new: nothing changes
        assert (t3.received_bytes, t3.opened, t3.closed) == (350, 2, 2)


def test_flow_table_refuses_a_map_of_another_layout():
    if os.geteuid() != 0:
        pytest.fail("needs root: it creates a BPF map")
    fd = syscall.map_create(map_type=syscall.BPF_MAP_TYPE_HASH, key_size=8, value_size=64,
                            max_entries=4, name="lw_t_old")
    with syscall.Map(fd) as m, pytest.raises(ValueError, match="reload the programs"):
        FlowTable(m)


def test_the_aggregation_benchmark_runs_and_agrees():
    import json
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "perf.bench_flow_agg", "--records", "300",
                        "--pairs", "20", "--repeat", "1", "-o", "json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr        # it asserts numpy/numba == plain Python itself
    out = json.loads(p.stdout)
    assert out["rows"][0]["records"] == 300 and out["import_rss_kib"]["numpy"] > 0


def test_by_workload_names_addresses_and_adds_up_a_workloads_pods():
    from node_agent.bpf.flows import PairTotals, by_workload

    def u32(ip):
        return layout.U32.unpack(layout.ip_key(ip))[0]

    totals = {
        (u32("10.244.1.2"), u32("10.244.2.9"), layout.KIND_OUTBOUND): PairTotals(10, 1, 1, 1),
        (u32("10.244.1.3"), u32("10.244.2.9"), layout.KIND_OUTBOUND): PairTotals(5, 2, 2, 0),
        (u32("10.244.9.9"), u32("10.244.1.2"), layout.KIND_INBOUND): PairTotals(7, 7, 1, 1),
    }
    names = {"10.244.1.2": "default/web", "10.244.1.3": "default/web", "10.244.2.9": "db/pg"}
    out = by_workload(totals, names.get)
    assert out[("default/web", "db/pg", "source")] == PairTotals(15, 3, 3, 1)
    assert out[("unknown", "default/web", "destination")] == PairTotals(7, 7, 1, 1)
    assert len(out) == 2
