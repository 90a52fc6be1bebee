"""The capture programs' decisions, packet by packet: build a frame, run the real program in
the kernel with BPF_PROG_TEST_RUN, check its verdict and counters. Nothing is sent anywhere.

The programs are loaded with unusual ports (45001/45006/45008) so that no listener exists on
this host for them: every SYN the programs decide to capture therefore meets "no listener"
and is dropped (fail closed), which makes the decision visible as TC_ACT_SHOT.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct

import pytest

from node_agent.bpf import layout, pins
from node_agent.bpf.settings import Settings
from node_agent.bpf.syscall import Map, obj_get, prog_test_run

pytestmark = [pytest.mark.bpf]

TC_ACT_OK, TC_ACT_SHOT = 0, 2
SYN, ACK = 0x02, 0x10
POD_A, POD_B, OTHER, NODE = "10.244.1.2", "10.244.1.3", "10.244.1.9", "10.244.1.1"


def frame(src: str, dst: str, sport: int, dport: int, flags: int = SYN, proto: int = 6) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", 0x0800)
    l4 = (struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
          if proto == 6 else struct.pack("!HHHH", sport, dport, 8, 0))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return eth + ip + l4


@pytest.fixture(scope="module")
def loaded():
    if os.geteuid() != 0:
        pytest.fail("needs root: it loads eBPF programs")
    from node_agent.bpf.load import load_and_pin

    cluster = "t" + secrets.token_hex(3)
    settings = Settings(port_outbound=45001, port_inbound=45006, port_tunnel=45008)
    fds: dict[str, int] = {}
    maps: dict[str, Map] = {}
    try:
        load_and_pin(cluster=cluster, node="node1", settings=settings)
        for name in ("pod_out", "inbound"):
            fds[name] = obj_get(pins.prog_path(cluster, "node1", name))
        for name in ("lw_pods", "lw_excl", "lw_local", "lw_stats"):
            maps[name] = Map.open(pins.map_path(cluster, "node1", name))
        maps["lw_pods"].update(layout.ip_key(POD_A), layout.POD.pack(1, 7, 0, 0))
        maps["lw_pods"].update(layout.ip_key(POD_B), layout.POD.pack(2, 8, 0, 0))
        maps["lw_local"].update(layout.ip_key(NODE), b"\x01")
        maps["lw_excl"].update(layout.EXCL_KEY.pack(1, 9090, layout.DIR_OUT, 0), b"\x01")
        maps["lw_excl"].update(layout.EXCL_KEY.pack(2, 9091, layout.DIR_IN, 0), b"\x01")
        yield fds, maps
    finally:
        for fd in fds.values():
            os.close(fd)
        for m in maps.values():
            m.close()
        pins.remove(cluster, "node1")


def stat(maps, name: str) -> int:
    raw = maps["lw_stats"].lookup_percpu(layout.U32.pack(layout.STATS.index(name)))
    return sum(layout.U64.unpack(v)[0] for v in raw)


# (program, packet, expected verdict, why)
CASES = [
    ("pod_out", frame(POD_A, OTHER, 40000, 8080), TC_ACT_SHOT, "enrolled SYN is captured"),
    ("pod_out", frame(POD_A, OTHER, 40000, 8080, ACK), TC_ACT_OK, "no SYN, no socket: as is"),
    ("pod_out", frame(POD_A, OTHER, 40000, 53, proto=17), TC_ACT_OK, "UDP is not steered"),
    ("pod_out", frame(POD_A, NODE, 40000, 8080), TC_ACT_OK, "to the node itself"),
    ("pod_out", frame(POD_A, OTHER, 40000, 9090), TC_ACT_OK, "excluded outbound port"),
    ("pod_out", frame(POD_A, POD_B, 40000, 9090), TC_ACT_SHOT,
     "excluded outbound port to an enrolled pod is inbound plaintext for it"),
    ("pod_out", frame(POD_A, POD_B, 40000, 9091), TC_ACT_SHOT,
     "A's capture wins; B's inbound exclusion is for plaintext only"),
    ("pod_out", frame(OTHER, POD_B, 40000, 8080), TC_ACT_SHOT,
     "a source not in lw_pods is treated as unenrolled: plaintext to B"),
    ("pod_out", frame(OTHER, "10.244.1.10", 40000, 8080), TC_ACT_OK,
     "a source not in lw_pods to an unenrolled pod: as is"),
    ("inbound", frame(OTHER, POD_B, 40000, 8080), TC_ACT_SHOT, "plaintext to an enrolled pod"),
    ("inbound", frame(OTHER, "10.244.1.10", 40000, 8080), TC_ACT_OK, "to an unenrolled pod"),
    ("inbound", frame(OTHER, POD_B, 40000, 9091), TC_ACT_OK, "excluded inbound port"),
    ("inbound", frame(OTHER, POD_B, 40000, 45008), TC_ACT_OK,
     "the tunnel port, with no tunnel listener: as is, never plaintext"),
    ("inbound", frame(OTHER, POD_B, 40000, 8080, ACK), TC_ACT_OK, "not a SYN"),
    ("inbound", frame(OTHER, POD_B, 40000, 8080, SYN | ACK), TC_ACT_OK, "a SYN-ACK"),
]


@pytest.mark.parametrize("prog,packet,verdict,why", CASES, ids=[c[3] for c in CASES])
def test_verdict(loaded, prog, packet, verdict, why):
    fds, maps = loaded
    drops = stat(maps, "dropped_no_listener")
    assert prog_test_run(fds[prog], packet) == verdict, why
    assert stat(maps, "dropped_no_listener") == drops + (verdict == TC_ACT_SHOT)


def test_truncated_frames_pass(loaded):
    fds, _ = loaded
    full = frame(POD_A, OTHER, 40000, 8080)
    for cut in (34, 40, 53):                # IPv4 header only; half a TCP header; one short
        assert prog_test_run(fds["pod_out"], full[:cut]) == TC_ACT_OK, cut
