"""`Datapath.set_services` against the pinned `lw_vips` map the loader made: the map ends up
holding exactly what the agent asked for — entries that no longer qualify are removed, a
VIP that is also a backend carries both flags — and reads back as written."""

from __future__ import annotations

import os
import secrets

import pytest

from node_agent.bpf import layout, pins
from node_agent.datapath import Datapath

pytestmark = [pytest.mark.bpf]


@pytest.fixture
def datapath():
    if os.geteuid() != 0:
        pytest.fail("needs root: it loads eBPF programs")
    from node_agent.bpf.load import load_and_pin

    cluster = "t" + secrets.token_hex(3)
    dp = Datapath(cluster, "node1", uplink=None)
    try:
        load_and_pin(cluster=cluster, node="node1")
        yield dp
    finally:
        dp.close()
        pins.remove(cluster, "node1")


def test_set_services_replaces_the_whole_map(datapath):
    datapath.set_services(vips=[("10.96.0.10", 80), ("10.96.0.10", 443), ("10.96.0.11", 80)],
                          backends=[("10.244.2.7", 8080)])
    assert datapath.services() == {("10.96.0.10", 80): layout.VIP_SERVICE,
                                   ("10.96.0.10", 443): layout.VIP_SERVICE,
                                   ("10.96.0.11", 80): layout.VIP_SERVICE,
                                   ("10.244.2.7", 8080): layout.VIP_BACKEND}
    # the next snapshot: one Service lost its enrolled endpoint here, a port went away
    datapath.set_services(vips=[("10.96.0.10", 80)],
                          backends=[("10.244.2.7", 8080), ("10.96.0.10", 80)])
    assert datapath.services() == {
        ("10.96.0.10", 80): layout.VIP_SERVICE | layout.VIP_BACKEND,
        ("10.244.2.7", 8080): layout.VIP_BACKEND}
    datapath.set_services(vips=[])
    assert datapath.services() == {}


def test_keys_are_network_order(datapath):
    datapath.set_services(vips=[("10.96.0.10", 0x1F90)])
    keys = list(datapath._map("lw_vips").keys())
    assert keys == [bytes([10, 96, 0, 10, 0x1F, 0x90, 0, 0])]
