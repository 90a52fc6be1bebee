"""Fixtures for the datapath tests: a namespaced copy of the local cluster's network, the
datapath installed on node1, and a transparent relay standing in for the tunnel.

Everything made here is removed in finalizers even when a test fails: the sockops program is
detached from the cgroup, the pins under /sys/fs/bpf/lw-t<random>/ removed, the relay stopped,
the namespaces deleted.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.bpf.netapps import Relay, Server
from tests.bpf.topology import Topology

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


def _require_root_and_bcc() -> None:
    if os.geteuid() != 0:
        pytest.fail("the datapath tests need root: they load eBPF programs and make namespaces")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.fail("BCC does not import: run `make setup` (scripts/setup.sh)")


def teardown_datapath(cluster: str, node: str, netns: str | None) -> None:
    """Best effort, whatever state things are in."""
    from node_agent.datapath import Datapath

    dp = Datapath(cluster, node, netns=netns)
    try:
        dp.uninstall()
    except Exception:  # noqa: BLE001 - keep cleaning
        try:
            dp.close()
        except Exception:  # noqa: BLE001
            pass
    shutil.rmtree(f"/sys/fs/bpf/lw-{cluster}", ignore_errors=True)


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    _require_root_and_bcc()
    t = Topology.new()
    try:
        t.build(pods_per_node=(4, 1))
        yield t
    finally:
        for node in ("node1", "node2"):
            teardown_datapath(t.cluster, node, None)
        t.destroy()


@pytest.fixture(scope="module")
def dp(topo: Topology):
    from node_agent.datapath import Datapath

    node = topo.nodes[0]
    d = Datapath(topo.cluster, "node1", netns=node.name)
    try:
        d.install()
        for p in node.pods:
            d.observe(_pod(p))
        yield d
    finally:
        teardown_datapath(topo.cluster, "node1", node.name)


@pytest.fixture(scope="module")
def relay(topo: Topology, dp) -> Iterator[Relay]:
    # registered with the datapath, as the node tunnel registers its listeners
    r = Relay(topo.nodes[0].name, register=f"{dp.pin_dir}/lw_listeners")
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def servers(topo: Topology) -> Iterator[dict]:
    made = []
    try:
        for node in topo.nodes:
            for p in node.pods:
                for port in (8080, 9090, 9091):
                    made.append(Server(p.name, port))
        yield made
    finally:
        for s in made:
            s.close()


def _pod(p, **ann):
    from node_agent.datapath import Pod

    return Pod.from_annotations(ip=p.ip, veth=p.veth, name=p.name, annotations=ann)
