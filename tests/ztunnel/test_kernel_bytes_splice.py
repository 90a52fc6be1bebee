"""The real node tunnel, spliced, counts from the kernel: a same-node connection whose bytes
never reach user space (TunnelConfig(splice=True): sockhash + sk_skb redirect) still gets exact
istio_tcp_*_bytes and access-log figures, read from the eBPF flow record of its captured socket.

Tier 3 in small: the namespaced node of tests/bpf/topology.py with the real datapath installed
and two enrolled pods, and a `Tunnel` running in that node's network namespace (its own thread
and event loop) with the datapath's `FlowReader` injected as the node agent does
(node_agent/ztunnel/wiring.py). Certificates come from an in-process CA (certsource.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import json
import os
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from control.ca.authority import CertificateAuthority
from node_agent.datapath import Datapath, Pod
from node_agent.ztunnel.certsource import CaCertificates
from node_agent.ztunnel.proxy import Tunnel, TunnelConfig
from node_agent.ztunnel.telemetry import Telemetry
from tests.bpf.conftest import _require_root_and_bcc, teardown_datapath
from tests.bpf.netapps import Server, transfer
from tests.bpf.topology import Topology
from tests.ztunnel.helpers import snapshot, workload

pytestmark = [pytest.mark.timeout(120), pytest.mark.netns, pytest.mark.bpf]
CLONE_NEWNET = 0x40000000


class TunnelInNode:
    """A Tunnel on its own thread and loop inside a node's network namespace."""

    def __init__(self, netns: str, make_tunnel) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tunnel: Tunnel | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(netns, make_tunnel), daemon=True)
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error

    def _run(self, netns: str, make_tunnel) -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            self.loop = asyncio.new_event_loop()
            self.tunnel = make_tunnel()
            self.loop.run_until_complete(self.tunnel.start())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.tunnel.close())
        self.loop.close()

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


def metric(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for fam in registry.collect() for s in fam.samples if s.name == name)


def test_a_spliced_same_node_connection_is_counted_from_the_kernel(tmp_path):
    _require_root_and_bcc()
    topo = Topology.new()
    servers, tun, dp, reader = [], None, None, None
    try:
        topo.build(pods_per_node=(2,))
        node = topo.nodes[0]
        a, d = node.pods
        dp = Datapath(topo.cluster, "node1", netns=node.name)
        dp.install()
        dp.enroll(Pod(ip=a.ip, veth=a.veth, name="default/a"))
        dp.enroll(Pod(ip=d.ip, veth=d.veth, name="default/d"))
        servers.append(Server(d.name, 8080))
        reader = dp.flow_reader()
        log, registry = io.StringIO(), CollectorRegistry()
        ca = CertificateAuthority.load_or_generate(tmp_path / "ca")
        telemetry = Telemetry(registry=registry, access_log=log, flows=reader)
        config = TunnelConfig(readiness_addr=None, splice=True)
        tun = TunnelInNode(node.name, lambda: Tunnel(CaCertificates(ca), config=config,
                                                     telemetry=telemetry))
        assert tun.tunnel.splicer is not None, "the splice loader failed"
        wa = workload("a", a.ip, node="node1", node_ip=node.underlay)
        wd = workload("d", d.ip, node="node1", node_ip=node.underlay)
        tun.call(tun.tunnel.update(snapshot("node1", [wa, wd])))
        assert metric(registry, "lacewing_tunnel_kernel_byte_counts") == 1

        sent, reply = 3 * 1024 * 1024 + 11, 2 * 1024 * 1024 + 5
        got, mine = transfer(a.name, d.ip, 8080, send=sent, receive=reply, exact=True)
        assert got == reply
        deadline = time.monotonic() + 15
        while not log.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [json.loads(x) for x in log.getvalue().splitlines()]
        assert len(lines) == 1, lines
        e = lines[0]
        assert e["kind"] == "same_node_spliced" and e["src"] == f"{a.ip}:{mine[1]}"
        assert (e["bytes_sent"], e["bytes_received"], e["bytes_source"]) == (sent, reply,
                                                                            "kernel")
        assert metric(registry, "istio_tcp_received_bytes_total") == sent
        assert metric(registry, "istio_tcp_sent_bytes_total") == reply
        assert metric(registry, "lacewing_tunnel_userspace_byte_counts_total") == 0
        # consumed: the record left the map with the final read
        assert [f for f in dp.read_flows() if f.src == a.ip and f.sport == mine[1]] == []
    finally:
        if tun is not None:
            tun.stop()
        if reader is not None:
            reader.close()
        if dp is not None:
            dp.close()
        for s in servers:
            s.close()
        teardown_datapath(topo.cluster, "node1", topo.nodes[0].name if topo.nodes else None)
        topo.destroy()
