"""`Datapath.set_services` keeps a Service VIP that stops qualifying while an open connection
still uses it (VIP_DRAIN), and `retire_drained_services` removes it once that connection has
closed (docs/datapath.md, "Service VIPs"). Real lw_vips map, real sockets on loopback standing
in for the tunnel's: an accepted socket whose local address is the VIP, a dialled one whose
remote address is the backend. Nothing leaves loopback."""

from __future__ import annotations

import os
import secrets
import socket

import pytest

from node_agent.bpf import layout, pins
from node_agent.bpf.settings import Settings
from node_agent.datapath import Datapath

pytestmark = [pytest.mark.bpf]

VIP = "127.0.0.77"         # a loopback address stands in for the cluster IP
BACKEND = "127.0.0.78"
UNUSED = "127.0.0.79"


@pytest.fixture
def datapath():
    if os.geteuid() != 0:
        pytest.fail("needs root: it loads eBPF programs")
    from node_agent.bpf.load import load_and_pin

    cluster = "t" + secrets.token_hex(3)
    load_and_pin(cluster=cluster, node="node1",
                 settings=Settings(port_outbound=45001, port_inbound=45006, port_tunnel=45008))
    dp = Datapath(cluster, "node1")
    try:
        yield dp
    finally:
        dp.close()
        pins.remove(cluster, "node1")


def connection(ip: str) -> tuple[socket.socket, socket.socket, socket.socket, int]:
    """A listener on ip:port and a connection to it: (listener, client, accepted, port)."""
    lst = socket.socket()
    lst.bind((ip, 0))
    lst.listen()
    port = lst.getsockname()[1]
    cli = socket.create_connection((ip, port), timeout=5)
    acc, _ = lst.accept()
    return lst, cli, acc, port


def test_a_vip_in_use_drains_then_retires(datapath):
    vip_socks = connection(VIP)       # the tunnel's accepted socket: local address = the VIP
    be_socks = connection(BACKEND)    # the tunnel's dialled socket: remote address = backend
    vip_port, be_port = vip_socks[3], be_socks[3]
    try:
        vip_socks[0].close()          # listeners do not count, only connections
        be_socks[0].close()
        datapath.set_services(vips=[(VIP, vip_port), (UNUSED, 80)],
                              backends=[(BACKEND, be_port), (UNUSED, 8080)])
        assert datapath.services() == {
            (VIP, vip_port): layout.VIP_SERVICE, (UNUSED, 80): layout.VIP_SERVICE,
            (BACKEND, be_port): layout.VIP_BACKEND, (UNUSED, 8080): layout.VIP_BACKEND}

        # none qualifies any more: the unused ones go at once, the used ones drain
        datapath.set_services(vips=[], backends=[])
        assert datapath.services() == {
            (VIP, vip_port): layout.VIP_SERVICE | layout.VIP_DRAIN,
            (BACKEND, be_port): layout.VIP_BACKEND | layout.VIP_DRAIN}
        assert datapath.retire_drained_services() == 0          # still open

        # the VIP qualifies again: no longer draining
        datapath.set_services(vips=[(VIP, vip_port)], backends=[])
        assert datapath.services()[(VIP, vip_port)] == layout.VIP_SERVICE
        datapath.set_services(vips=[], backends=[])

        for s in vip_socks[1:3]:
            s.close()
        assert datapath.retire_drained_services() == 1
        assert datapath.services() == {(BACKEND, be_port): layout.VIP_BACKEND | layout.VIP_DRAIN}
        for s in be_socks[1:3]:
            s.close()
        assert datapath.retire_drained_services() == 1
        assert datapath.services() == {}
    finally:
        for s in (*vip_socks[:3], *be_socks[:3]):
            s.close()
