"""Per-connection L4 records from the kernel, and their totals per (source, destination).

Before: lw_sockops.c keeps one record per captured connection in the pinned lw_flows map
(socket cookie -> addresses, kind, bytes each way, open/close times). After: `FlowTable.read()`
gives those records as a numpy array; `L4Totals.update()` folds them into monotonic totals per
(source address, destination address, kind) — bytes received (client -> server, Istio's
`istio_tcp_received_bytes_total`), bytes sent (server -> client), connections opened and closed —
and deletes the records of closed connections from the map once they are counted, so the map
holds only what is open plus what closed since the last read. Mapping addresses to workload
labels is the caller's (the metrics exporter's) job.

The group-by is plain numpy (sort + reduceat): no LLVM in the agent. `perf/bench_flow_agg.py`
compares it with a pure-Python loop and with numba.

`FlowReader` is the other way in, for the node tunnel: one record by socket cookie (one
`BPF_MAP_LOOKUP_ELEM`), `consume()` after the connection's final read, `reap()` for closed
records nobody consumed (connections the tunnel refused, or served before a restart). While a
tunnel reads this way it owns the deletion of records; `L4Totals` (which deletes what it has
counted) is for a node without a tunnel (tests, the stand-in relay) — never both on one node.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import numpy as np

from node_agent.bpf import layout
from node_agent.bpf.syscall import Map

PairKey = tuple[int, int, int]   # (saddr, daddr, kind); addresses as native u32 of network order

# lw_sockops.c: the tunnel's own connection to a pod of this node on a client's behalf (inbound
# over 15008, or 15006), counted on that actively opened socket
KIND_DELIVERY = 4
KIND_NAMES = {**layout.KIND_NAMES, KIND_DELIVERY: "delivery"}


@dataclass(frozen=True)
class FlowRecord:
    cookie: int
    src: str
    dst: str
    sport: int
    dport: int
    kind: str
    src_pod: int
    dst_pod: int
    received_bytes: int     # client -> server
    sent_bytes: int         # server -> client
    opened_ns: int
    closed_ns: int          # 0 while open

    @property
    def open(self) -> bool:
        return self.closed_ns == 0


@dataclass
class PairTotals:
    received_bytes: int = 0
    sent_bytes: int = 0
    opened: int = 0
    closed: int = 0


class FlowTable:
    """The pinned lw_flows map."""

    def __init__(self, flows_map: Map):
        if flows_map.value_size != layout.FLOW.size or flows_map.key_size != 8:
            raise ValueError(f"lw_flows has key/value sizes {flows_map.key_size}/"
                             f"{flows_map.value_size}, this agent expects 8/{layout.FLOW.size}: "
                             "reload the programs with this version (python -m node_agent.bpf.load)")
        self.map = flows_map

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(cookies as uint64, records as layout.FLOW_DTYPE), a consistent-enough snapshot."""
        keys, values, count = self.map.dump()
        cookies = np.frombuffer(keys, dtype="<u8", count=count)
        recs = np.frombuffer(values, dtype=layout.FLOW_DTYPE, count=count)
        return cookies, recs

    def delete(self, cookies: np.ndarray) -> int:
        return self.map.delete_many(np.ascontiguousarray(cookies, dtype="<u8").tobytes())

    def records(self) -> list[FlowRecord]:
        cookies, recs = self.read()
        return [to_record(int(c), r) for c, r in zip(cookies, recs, strict=True)]


def to_record(cookie: int, r) -> FlowRecord:
    return FlowRecord(
        cookie=cookie, src=layout.ip_from_u32(r["saddr"]), dst=layout.ip_from_u32(r["daddr"]),
        sport=int(r["sport"]), dport=int(r["dport"]),
        kind=KIND_NAMES.get(int(r["kind"]), str(int(r["kind"]))),
        src_pod=int(r["src_pod"]), dst_pod=int(r["dst_pod"]),
        received_bytes=int(r["rx"]), sent_bytes=int(r["tx"]),
        opened_ns=int(r["opened_ns"]), closed_ns=int(r["closed_ns"]))


# ---- aggregation ----------------------------------------------------------------------

def aggregate(recs: np.ndarray) -> dict[PairKey, PairTotals]:
    """Sum records per (saddr, daddr, kind): received, sent, opened (every record), closed."""
    if len(recs) == 0:
        return {}
    key = ((recs["saddr"].astype(np.uint64) << np.uint64(32)) | recs["daddr"].astype(np.uint64))
    kind = recs["kind"].astype(np.uint64)
    order = np.lexsort((kind, key))
    key_s, kind_s = key[order], kind[order]
    change = np.empty(len(order), dtype=bool)
    change[0] = True
    change[1:] = (key_s[1:] != key_s[:-1]) | (kind_s[1:] != kind_s[:-1])
    starts = np.flatnonzero(change)
    rx = np.add.reduceat(recs["rx"][order], starts)
    tx = np.add.reduceat(recs["tx"][order], starts)
    closed = np.add.reduceat((recs["closed_ns"][order] != 0).astype(np.int64), starts)
    opened = np.diff(np.append(starts, len(order)))
    out: dict[PairKey, PairTotals] = {}
    for i, s in enumerate(starts.tolist()):
        k = int(key_s[s])
        out[(k >> 32, k & 0xFFFFFFFF, int(kind_s[s]))] = PairTotals(
            int(rx[i]), int(tx[i]), int(opened[i]), int(closed[i]))
    return out


def aggregate_python(recs: np.ndarray) -> dict[PairKey, PairTotals]:
    """The same as `aggregate`, as a plain loop (the baseline in perf/bench_flow_agg.py)."""
    out: dict[PairKey, PairTotals] = {}
    for saddr, daddr, kind, rx, tx, closed in zip(
            recs["saddr"].tolist(), recs["daddr"].tolist(), recs["kind"].tolist(),
            recs["rx"].tolist(), recs["tx"].tolist(), recs["closed_ns"].tolist(), strict=True):
        t = out.get((saddr, daddr, kind))
        if t is None:
            t = out[(saddr, daddr, kind)] = PairTotals()
        t.received_bytes += rx
        t.sent_bytes += tx
        t.opened += 1
        t.closed += closed != 0
    return out


REPORTER = {layout.KIND_OUTBOUND: "source", layout.KIND_INBOUND: "destination",
            layout.KIND_TUNNEL: "destination", KIND_DELIVERY: "destination"}
UNKNOWN = "unknown"     # Istio's value for a peer it cannot name


def by_workload(totals: dict[PairKey, PairTotals], workload_of) -> dict[tuple[str, str, str], PairTotals]:
    """Fold (saddr, daddr, kind) totals into (source, destination, reporter) totals, naming each
    address with `workload_of(ip) -> str | None` (None: "unknown"). Several addresses of one
    workload add up. The input is what `L4Totals.update()` returns."""
    out: dict[tuple[str, str, str], PairTotals] = {}
    for (s, d, kind), t in totals.items():
        key = (workload_of(layout.ip_from_u32(s)) or UNKNOWN,
               workload_of(layout.ip_from_u32(d)) or UNKNOWN, REPORTER.get(kind, UNKNOWN))
        acc = out.setdefault(key, PairTotals())
        acc.received_bytes += t.received_bytes
        acc.sent_bytes += t.sent_bytes
        acc.opened += t.opened
        acc.closed += t.closed
    return out


class L4Totals:
    """Monotonic totals per (saddr, daddr, kind), fed from a FlowTable.

    total = (all closed connections ever read, remembered here) + (connections open now).
    A connection's counters only grow and its final values replace its last open ones when it
    closes, so every total is non-decreasing — what Prometheus counters need.
    """

    def __init__(self, table: FlowTable):
        self.table = table
        self._closed: dict[PairKey, PairTotals] = {}

    def update(self) -> dict[PairKey, PairTotals]:
        cookies, recs = self.table.read()
        is_closed = recs["closed_ns"] != 0
        for k, t in aggregate(recs[is_closed]).items():
            acc = self._closed.setdefault(k, PairTotals())
            acc.received_bytes += t.received_bytes
            acc.sent_bytes += t.sent_bytes
            acc.opened += t.opened
            acc.closed += t.closed
        self.table.delete(cookies[is_closed])
        totals = {k: PairTotals(v.received_bytes, v.sent_bytes, v.opened, v.closed)
                  for k, v in self._closed.items()}
        for k, t in aggregate(recs[~is_closed]).items():
            acc = totals.setdefault(k, PairTotals())
            acc.received_bytes += t.received_bytes
            acc.sent_bytes += t.sent_bytes
            acc.opened += t.opened
        return totals


# ---- one connection at a time (the node tunnel) -------------------------------------------

_BYTES = struct.Struct("=QQQQ")         # rx, tx, opened_ns, closed_ns: at offset 24 of lw_flow
_BYTES_AT = 24
_COOKIE = struct.Struct("=Q")             # lw_flows key: the socket cookie, native u64


@dataclass(frozen=True)
class FlowBytes:
    """One connection's counts, oriented as Istio's metrics are: `received` came from the
    client (the request side: istio_tcp_received_bytes_total), `sent` went back to it
    (istio_tcp_sent_bytes_total). Exact payload bytes; `sent` counts what the client
    acknowledged. `closed`: the kernel socket reached TCP_CLOSE, the counts are final."""

    received: int
    sent: int
    closed: bool


class FlowReader:
    """Single records of the pinned lw_flows map by socket cookie, for the node tunnel.

    It has its own file descriptor of the map (closing the `Datapath` it came from leaves it
    working). Every method is safe from any thread (each is one or a few bpf(2) calls)."""

    def __init__(self, flows_map: Map):
        self.table = FlowTable(flows_map)       # checks the layout
        self.map = flows_map

    def read(self, cookie: int) -> FlowBytes | None:
        """The record of the socket with this cookie now, or None (not a counted socket, or
        its record is gone). One BPF_MAP_LOOKUP_ELEM."""
        raw = self.map.lookup(_COOKIE.pack(cookie))
        if raw is None:
            return None
        rx, tx, _opened, closed = _BYTES.unpack_from(raw, _BYTES_AT)
        return FlowBytes(received=rx, sent=tx, closed=closed != 0)

    def consume(self, *cookies: int) -> None:
        """Delete these records (after a connection's final read). Missing ones are fine."""
        for c in cookies:
            if c:
                self.map.delete(_COOKIE.pack(c))

    def reap(self, *, older_than: float = 60.0, now_ns: int | None = None) -> int:
        """Delete the records of connections that closed more than `older_than` seconds ago
        and were never consumed. One batch read of the map. Returns how many went."""
        cookies, recs = self.table.read()
        if len(recs) == 0:
            return 0
        now = time.monotonic_ns() if now_ns is None else now_ns   # bpf_ktime_get_ns' clock
        limit = np.uint64(max(0, now - int(older_than * 1e9)))
        stale = (recs["closed_ns"] != 0) & (recs["closed_ns"] <= limit)
        if not stale.any():
            return 0
        return self.table.delete(cookies[stale])

    def close(self) -> None:
        self.map.close()
