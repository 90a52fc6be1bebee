"""lacewing-l4: the client pod on node0 reaches the server pod on node1 through Lacewing's node
tunnels — the cluster's own node agents (tunnel on one uvloop thread each, like HAProxy's
`nbthread 1` in haproxy-mtls; xDS and certificates on the agent's own loop), eBPF capture on both
nodes, mutual TLS 1.3 between them (SVIDs from the cluster's CA, the destination's identity
checked), STRICT PeerAuthentication. The namespace is enrolled by its label, as an operator
would; RSS is the node agents' (the tunnel lives in them).

Also measured at start (printed, not in the harness's table): the tunnels' RSS idle and with
1,000 open connections through them. At stop it prints how many connections between the nodes
rode a new or a reused TLS connection (tunnel reuse: `LACEWING_TUNNEL_REUSE=0|1` in the
environment of `python -m perf` turns it off or on for the cluster's node agents; unset, the
tunnel's default — docs/tunnel.md).
"""

from __future__ import annotations

import sys
import time

from lacewing.local.mesh import LocalMesh
from perf.scenarios.base import Scenario, Target
from perf.topology import PerfTopology

STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "strict", "namespace": "perf"},
          "spec": {"mtls": {"mode": "STRICT"}}}

HOLD = """
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.create_connection((host, port), timeout=10)
    socks.append(s)
print("open", len(socks), flush=True)
sys.stdin.readline()
"""


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class LacewingL4(Scenario):
    name = "lacewing-l4"
    description = "Lacewing node tunnels, eBPF capture, mTLS between nodes, STRICT"
    measured_rss: dict[str, tuple[float, float]] = {}

    def __init__(self) -> None:
        self.mesh: LocalMesh | None = None

    def _server(self, topo: PerfTopology) -> tuple[str, str]:
        return topo.server_pod, topo.server_ip

    def start(self, topo: PerfTopology) -> Target:
        _, ip = self._server(topo)
        self.mesh = LocalMesh(topo.cluster, namespaces={"perf"}, resources=[STRICT])
        self.mesh.start()
        if self.name not in self.measured_rss:
            self.measured_rss[self.name] = self._rss_with_connections(topo, ip)
            idle, busy = self.measured_rss[self.name]
            print(f"  {self.name}: tunnels' RSS idle {idle:.1f} MB, with 1000 open "
                  f"connections {busy:.1f} MB", file=sys.stderr, flush=True)
        return Target(f"http://{ip}:80/", ip, 5201)

    def _rss_with_connections(self, topo: PerfTopology, ip: str) -> tuple[float, float]:
        import subprocess

        from lacewing.local import netns
        idle = _rss_mb(self.pids())
        proc = subprocess.Popen(netns.netns_exec_argv(topo.netns(topo.client_pod), [
            sys.executable, "-c", HOLD, ip, "80", "1000"]), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=netns.clean_env())
        try:
            proc.stdout.readline()
            time.sleep(0.5)
            busy = _rss_mb(self.pids())
        finally:
            proc.stdin.close()
            proc.wait(30)
        time.sleep(0.5)
        return idle, busy

    def _print_reuse(self) -> None:
        import re
        try:
            text = "".join(self.mesh.metrics(node) for node in ("node0", "node1"))
        except Exception as exc:  # noqa: BLE001 - a figure for the operator, not the run
            print(f"  {self.name}: tunnel reuse counters unavailable: {exc}", file=sys.stderr)
            return
        counts = {m.group(1): float(m.group(2)) for m in re.finditer(
            r'lacewing_tunnel_inner_connections_total\{side="client",tunnel="(\w+)"\} (\S+)',
            text)}
        print(f"  {self.name}: connections between the nodes on new TLS connections "
              f"{counts.get('new', 0):.0f}, on reused ones {counts.get('reused', 0):.0f}",
              file=sys.stderr, flush=True)

    def pids(self) -> list[int]:
        return self.mesh.pids() if self.mesh else []

    def stop(self) -> None:
        if self.mesh is not None:
            self._print_reuse()
            self.mesh.stop()
            self.mesh = None
