"""Service VIP capture, packet by packet (docs/datapath.md, "Service VIPs"): the real tc programs
run on built frames with BPF_PROG_TEST_RUN; nothing is sent anywhere.

As in test_verdicts.py, the programs are loaded with ports no listener has (45001/45006/45008),
so a SYN the programs decide to capture is dropped (fail closed) and shows as TC_ACT_SHOT. A run
sees the loopback device as its ingress device (ifindex 1): the uplink test makes that the
node's uplink in lw_cfg.
"""

from __future__ import annotations

import os
import secrets

import pytest

from node_agent.bpf import layout, pins
from node_agent.bpf.settings import Settings
from node_agent.bpf.syscall import Map, obj_get, prog_test_run
from tests.bpf.test_verdicts import ACK, TC_ACT_OK, TC_ACT_SHOT, frame

pytestmark = [pytest.mark.bpf]

POD_A = "10.244.1.2"          # enrolled, outbound port 9090 excluded
POD_B = "10.244.1.3"          # enrolled: the Service's endpoint on this node
OTHER = "10.244.1.9"          # unenrolled caller
REMOTE = "10.244.2.7"         # an endpoint on another node the tunnel may dial
VIP = "10.96.0.10"
PLAIN_VIP = "10.96.0.11"      # a Service whose endpoints are not enrolled: not in lw_vips
LO_IFINDEX = 1


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
        for name in ("lw_pods", "lw_excl", "lw_vips", "lw_cfg", "lw_stats"):
            maps[name] = Map.open(pins.map_path(cluster, "node1", name))
        maps["lw_pods"].update(layout.ip_key(POD_A), layout.POD.pack(1, 7, 0, 0))
        maps["lw_pods"].update(layout.ip_key(POD_B), layout.POD.pack(2, 8, 0, 0))
        maps["lw_excl"].update(layout.EXCL_KEY.pack(1, 9090, layout.DIR_OUT, 0), b"\x01")
        # an inbound exclusion on the endpoint does not apply to its Service's VIP
        maps["lw_excl"].update(layout.EXCL_KEY.pack(2, 8080, layout.DIR_IN, 0), b"\x01")
        for port in (80, 9090):
            maps["lw_vips"].update(layout.vip_key(VIP, port), layout.U32.pack(layout.VIP_SERVICE))
        maps["lw_vips"].update(layout.vip_key(REMOTE, 8080), layout.U32.pack(layout.VIP_BACKEND))
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


def set_uplink(maps, ifindex: int) -> None:
    maps["lw_cfg"].update(layout.U32.pack(0), layout.CFG.pack(0, 1, ifindex))


# (program, packet, expected verdict, counted as a Service capture, why)
CASES = [
    ("inbound", frame(OTHER, VIP, 40000, 80), TC_ACT_SHOT, True,
     "an unenrolled pod's SYN to a captured VIP goes to 15006"),
    ("inbound", frame(OTHER, VIP, 40000, 81), TC_ACT_OK, False, "a port the Service lacks"),
    ("inbound", frame(OTHER, PLAIN_VIP, 40000, 80), TC_ACT_OK, False,
     "a VIP not in the map (no enrolled endpoint here) is left to the DNAT"),
    ("inbound", frame(OTHER, VIP, 40000, 80, ACK), TC_ACT_OK, False,
     "a later packet with no tunnel socket passes"),
    ("inbound", frame(OTHER, REMOTE, 40000, 8080), TC_ACT_OK, False,
     "a SYN to a backend address is not captured"),
    ("inbound", frame(REMOTE, OTHER, 8080, 40000, ACK), TC_ACT_OK, False,
     "a backend's reply with no tunnel socket passes"),
    ("pod_out", frame(POD_A, VIP, 40000, 9090), TC_ACT_SHOT, True,
     "an enrolled pod's excluded port to a captured VIP is plaintext for the endpoint"),
    ("pod_out", frame(POD_A, VIP, 40000, 80), TC_ACT_SHOT, False,
     "an enrolled pod's SYN to a VIP still goes to 15001"),
]


@pytest.mark.parametrize("prog,packet,verdict,service,why", CASES, ids=[c[4] for c in CASES])
def test_vip_verdict(loaded, prog, packet, verdict, service, why):
    fds, maps = loaded
    set_uplink(maps, 0)
    drops, captured = stat(maps, "dropped_no_listener"), stat(maps, "captured_service")
    assert prog_test_run(fds[prog], packet) == verdict, why
    assert stat(maps, "dropped_no_listener") == drops + (verdict == TC_ACT_SHOT)
    assert stat(maps, "captured_service") == captured + service


def test_no_vip_capture_on_the_uplink(loaded):
    fds, maps = loaded
    syn = frame(OTHER, VIP, 40000, 80)
    try:
        set_uplink(maps, LO_IFINDEX)
        assert prog_test_run(fds["inbound"], syn) == TC_ACT_OK
        set_uplink(maps, LO_IFINDEX + 1000)      # another device is the uplink
        assert prog_test_run(fds["inbound"], syn) == TC_ACT_SHOT
    finally:
        set_uplink(maps, 0)


def test_leaving_the_map_ends_the_capture(loaded):
    fds, maps = loaded
    syn = frame(OTHER, VIP, 40001, 80)
    assert prog_test_run(fds["inbound"], syn) == TC_ACT_SHOT
    maps["lw_vips"].delete(layout.vip_key(VIP, 80))
    try:
        assert prog_test_run(fds["inbound"], syn) == TC_ACT_OK
    finally:
        maps["lw_vips"].update(layout.vip_key(VIP, 80), layout.U32.pack(layout.VIP_SERVICE))


def test_a_draining_vip_captures_no_new_connection(loaded):
    """VIP_DRAIN: the entry stays for connections already open (their packets are assigned to
    the tunnel's socket when it has one; none here, so they pass) and no SYN is captured."""
    fds, maps = loaded
    key = layout.vip_key(VIP, 80)
    syn = frame(OTHER, VIP, 40002, 80)
    maps["lw_vips"].update(key, layout.U32.pack(layout.VIP_SERVICE | layout.VIP_DRAIN))
    try:
        captured = stat(maps, "captured_service")
        assert prog_test_run(fds["inbound"], syn) == TC_ACT_OK
        assert prog_test_run(fds["inbound"], frame(OTHER, VIP, 40002, 80, ACK)) == TC_ACT_OK
        assert stat(maps, "captured_service") == captured
    finally:
        maps["lw_vips"].update(key, layout.U32.pack(layout.VIP_SERVICE))
    assert prog_test_run(fds["inbound"], syn) == TC_ACT_SHOT      # captured again
