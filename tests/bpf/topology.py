"""A small copy of the local cluster's network shape, for the datapath tests.

Before: root, iproute2. After: `Topology.build()` made, under names `lw-t<random>-...`, a fabric
namespace with a bridge, node namespaces (eth0 = 172.18.0.(10+i)/16, 10.244.<i>.1/32 on lo,
ip_forward=1, rp_filter=0, routes to the other nodes' pod CIDRs) and pod namespaces (eth0 =
10.244.<i>.<k>/32, default via 10.244.<i>.1 onlink; node side `lwv<8 hex>` with a /32 route);
`destroy()` removes every namespace it made (their links and routes go with them).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess
import threading
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*args: str) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def in_netns(ns: str, fn, *args, **kwargs):
    """Run fn in a fresh thread that first enters /run/netns/<ns>; return its result."""
    box: dict = {}

    def run():
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {ns}")
        finally:
            os.close(fd)
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


@dataclass
class PodNet:
    name: str       # namespace
    ip: str
    veth: str       # node side
    node: str       # node namespace


@dataclass
class NodeNet:
    index: int
    name: str       # namespace
    underlay: str
    pods: list[PodNet] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"10.244.{self.index}.1"


@dataclass
class Topology:
    prefix: str                                  # lw-t<random>
    nodes: list[NodeNet] = field(default_factory=list)
    made: list[str] = field(default_factory=list)

    @classmethod
    def new(cls) -> Topology:
        return cls(prefix=f"lw-t{secrets.token_hex(3)}")

    @property
    def cluster(self) -> str:
        return self.prefix[len("lw-"):]

    @property
    def fabric(self) -> str:
        return f"{self.prefix}-fabric"

    def _ns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def build(self, *, pods_per_node: tuple[int, ...] = (3, 1)) -> Topology:
        fab = self._ns(self.fabric)
        sh("ip", "-n", fab, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", fab, "link", "set", "br0", "up")
        for i, npods in enumerate(pods_per_node, start=1):
            node = NodeNet(i, self._ns(f"{self.prefix}-node{i}"), f"172.18.0.{10 + i}")
            n = node.name
            for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                        "net.ipv4.conf.default.rp_filter=0"):
                sh("ip", "netns", "exec", n, "sysctl", "-qw", key)
            sh("ip", "link", "add", "eth0", "netns", n, "type", "veth", "peer", "name",
               f"n{i}", "netns", fab)
            sh("ip", "-n", fab, "link", "set", f"n{i}", "master", "br0", "up")
            sh("ip", "-n", n, "addr", "add", f"{node.underlay}/16", "dev", "eth0")
            sh("ip", "-n", n, "link", "set", "eth0", "up")
            sh("ip", "-n", n, "addr", "add", f"{node.gateway}/32", "dev", "lo")
            for k in range(2, 2 + npods):
                self.add_pod(node, k)
            self.nodes.append(node)
        for a in self.nodes:
            for b in self.nodes:
                if a is not b:
                    sh("ip", "-n", a.name, "route", "add", f"10.244.{b.index}.0/24", "via",
                       b.underlay)
        return self

    def add_pod(self, node: NodeNet, k: int) -> PodNet:
        ns = self._ns(f"{self.prefix}-n{node.index}p{k}")
        veth = "lwv" + secrets.token_hex(4)
        ip = f"10.244.{node.index}.{k}"
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", veth,
           "netns", node.name)
        sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", node.gateway, "dev", "eth0", "onlink")
        sh("ip", "-n", node.name, "link", "set", veth, "up")
        sh("ip", "-n", node.name, "route", "add", f"{ip}/32", "dev", veth)
        pod = PodNet(ns, ip, veth, node.name)
        node.pods.append(pod)
        return pod

    def destroy(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made.clear()
