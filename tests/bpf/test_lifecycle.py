"""Install, agent restart (adopt) and uninstall, with the agent as a separate process.

Its own small topology: node1 with pods A (enrolled) and D (not enrolled), node2 with E.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from node_agent.bpf import syscall
from node_agent.bpf.attach import cgroup2_root
from node_agent.datapath import Datapath, DatapathError
from tests.bpf.conftest import _require_root_and_bcc, teardown_datapath
from tests.bpf.netapps import Relay, Server, ask_who, connect
from tests.bpf.topology import Topology, sh

pytestmark = [pytest.mark.netns, pytest.mark.bpf]
AGENT = Path(__file__).with_name("agent.py")
ROOT = Path(__file__).resolve().parents[2]


def sk_lookup_programs(netns: str) -> list[int]:
    """Ids of the sk_lookup programs attached to a network namespace."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        return syscall.prog_query(target_fd=fd, attach_type=syscall.BPF_SK_LOOKUP)
    finally:
        os.close(fd)


def run_agent(topo: Topology, action: str, pods: list[dict]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run(["nsenter", f"--net=/run/netns/{topo.nodes[0].name}", sys.executable,
                        str(AGENT), topo.cluster, "node1", action, json.dumps(pods)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture
def small():
    _require_root_and_bcc()
    t = Topology.new()
    servers = []
    try:
        t.build(pods_per_node=(2, 1))
        for node in t.nodes:
            for p in node.pods:
                servers.append(Server(p.name, 8080))
        yield t
    finally:
        for s in servers:
            s.close()
        teardown_datapath(t.cluster, "node1", None)
        t.destroy()


def test_adopt_without_anything_installed_says_what_to_do(small):
    dp = Datapath(small.cluster, "node1", netns=small.nodes[0].name)
    with pytest.raises(DatapathError, match="run install"):
        dp.adopt()
    dp.close()


def test_capture_survives_agent_restart_and_uninstall_leaves_nothing(small):
    a, d = small.nodes[0].pods
    node_ns = small.nodes[0].name
    pods = [{"ip": a.ip, "veth": a.veth, "enrolled": True},
            {"ip": d.ip, "veth": d.veth, "enrolled": False}]

    first = run_agent(small, "install", pods)
    assert first["enrolled"] == [a.ip]
    assert first["status"]["tc"] == {"eth0": "lw_inbound", a.veth: "lw_pod_out",
                                     d.veth: "lw_inbound"}
    assert first["status"]["routing"] and first["status"]["sockops_attached"]
    # the node namespace's TCP early demux is off (a forwarded SYN must not meet the tunnel's
    # TIME_WAIT sockets), as the agent sets it, read by the kernel's own sysctl tool too
    assert first["status"]["sysctls"] == {"net.ipv4.tcp_early_demux": "0"}
    assert sh("ip", "netns", "exec", node_ns, "sysctl", "-n",
              "net.ipv4.tcp_early_demux").strip() == "0"
    outside = Datapath(small.cluster, "node1", netns=node_ns)
    assert outside.node_sysctls() == {"net.ipv4.tcp_early_demux": "0"}
    outside.close()
    # the sk_lookup program is attached to the node namespace through a pinned link, so it
    # outlives the agent process that attached it
    assert first["status"]["sk_lookup_attached"]
    assert sk_lookup_programs(node_ns) == [first["status"]["programs"]["sk_lookup"]]
    # the agent process holds no compiler (the loader ran in its own short-lived process)
    assert first["compiler_mapped"] is False

    # no agent runs now. Fail closed: with no tunnel listening, an enrolled pod's new
    # connection is dropped, never sent around the mesh
    with pytest.raises(OSError):
        connect(a.name, d.ip, 8080, timeout=1)

    relay = Relay(node_ns)
    try:
        ask_who(a.name, d.ip, 8080)
        assert relay.next()["listener"] == 15001       # captured with no agent running

        second = run_agent(small, "adopt", pods)
        # the same programs (no reload), the same enrolled pods, the same attachments
        assert second["status"]["programs"] == first["status"]["programs"]
        assert second["enrolled"] == [a.ip]
        assert second["status"]["tc"] == first["status"]["tc"]
        assert sk_lookup_programs(node_ns) == [first["status"]["programs"]["sk_lookup"]]
        ask_who(a.name, d.ip, 8080)
        assert relay.next()["listener"] == 15001

        sockops_id = first["status"]["programs"]["sockops"]
        assert run_agent(small, "uninstall", []) == {"ok": True}
    finally:
        relay.close()

    # nothing attached or pinned is left
    assert not os.path.exists(f"/sys/fs/bpf/lw-{small.cluster}")
    for dev in ("eth0", a.veth, d.veth):
        assert sh("tc", "-n", node_ns, "filter", "show", "dev", dev, "ingress") == ""
        assert "clsact" not in sh("tc", "-n", node_ns, "qdisc", "show", "dev", dev)
    assert f"lookup {0x4C57}" not in sh("ip", "-n", node_ns, "rule", "show")
    assert sk_lookup_programs(node_ns) == []
    fd = os.open(cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sockops_id not in syscall.prog_query(target_fd=fd,
                                                    attach_type=syscall.BPF_CGROUP_SOCK_OPS)
    finally:
        os.close(fd)
    # and the pod talks plainly again
    seen, mine = ask_who(a.name, d.ip, 8080)
    assert seen == f"{a.ip}:{mine[1]}"


def test_uninstall_after_the_node_namespace_is_gone_still_cleans_the_host(small):
    node_ns = small.nodes[0].name
    dp = Datapath(small.cluster, "node1", netns=node_ns)
    dp.install()
    sockops_id = dp.status()["programs"]["sockops"]
    dp.close()
    sh("ip", "netns", "del", node_ns)          # `local down` may remove namespaces first
    small.made.remove(node_ns)
    Datapath(small.cluster, "node1", netns=node_ns).uninstall()
    assert not os.path.exists(f"/sys/fs/bpf/lw-{small.cluster}")
    fd = os.open(cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sockops_id not in syscall.prog_query(target_fd=fd,
                                                    attach_type=syscall.BPF_CGROUP_SOCK_OPS)
    finally:
        os.close(fd)


def test_install_names_a_missing_uplink(small):
    dp = Datapath(small.cluster, "node1", netns=small.nodes[0].name, uplink="ens9")
    try:
        with pytest.raises(DatapathError, match="no device ens9"):
            dp.install()
    finally:
        dp.uninstall()


def test_settings_reach_the_kernel_programs_and_the_routing(small):
    from node_agent.bpf.settings import Settings
    from node_agent.datapath import Pod

    a, d = small.nodes[0].pods
    node_ns = small.nodes[0].name
    custom = Settings(port_outbound=16001, port_inbound=16006, mark=0x4C58, route_table=0x4C58,
                      tc_priority=0x4C58)
    dp = Datapath(small.cluster, "node1", netns=node_ns, settings=custom)
    relay = None
    try:
        dp.install()
        dp.enroll(Pod(ip=a.ip, veth=a.veth))
        assert "fwmark 0x4c58 lookup 19544" in sh("ip", "-n", node_ns, "rule", "show")
        relay = Relay(node_ns, (16001,))
        ask_who(a.name, d.ip, 8080)
        assert relay.next()["listener"] == 16001
    finally:
        if relay is not None:
            relay.close()
        dp.uninstall()
