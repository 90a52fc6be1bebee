"""Tier 3: a pod reusing its source ports connects at once, in the mesh and after leaving it.

While a pod is enrolled, its node's tunnel holds sockets with the pod's own address (the
transparent side of every captured connection); those it closed first linger in TIME_WAIT for
60 s. A narrow port range makes the pod reuse those tuples:
- in the mesh, the captured SYN meets the tunnel's TIME_WAIT socket of its own tuple; the
  capture hands it to the kernel's TIME_WAIT handling and the sk_lookup program gives it the
  tunnel's registered listener (docs/datapath.md) — before that fix it was dropped and the pod
  waited a 1 s SYN retransmission;
- after leaving, the kernel's TCP early demux in the node namespace would hand the forwarded
  SYN to that TIME_WAIT socket instead of routing it. Node namespaces turn early demux off
  (lacewing/local/cluster.py).
Both are checked by behaviour: every request answered, no SYN retransmitted.
"""

from __future__ import annotations

import subprocess
import sys

from lacewing.local import netns
from lacewing.local.mesh import LocalMesh
from node_agent.datapath import Datapath

PY = sys.executable
WORKLOADS = f"""apiVersion: v1
kind: Namespace
metadata: {{name: leave}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: leave, labels: {{app: server}}}}
spec:
  nodeName: node1
  containers:
  - name: s
    command: [{PY}, -m, lacewing.sample_app, serve, --port, "8080", -q]
    ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: leave}}
spec:
  nodeName: node0
  containers: [{{name: c, command: [sleep, infinity]}}]
"""


def _syn_retransmits(pod_netns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", pod_netns, "nstat", "-az", "TcpExtTCPSynRetrans"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[1]) for line in out.splitlines()[1:] if line.strip())


def _connections(cluster, url: str, n: int) -> dict:
    import json

    out = cluster.exec("leave/client", [PY, "-m", "lacewing.sample_app", "load", url, "-n",
                                        str(n), "-c", "4", "--no-keepalive", "--timeout", "2s",
                                        "-o", "json"],
                       capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    return json.loads(out.stdout)


def test_a_pod_that_left_the_mesh_reuses_its_ports_without_stalls(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    (tmp_path / "w.yaml").write_text(WORKLOADS)
    cluster.apply([tmp_path / "w.yaml"])
    cluster.wait_ready(namespace="leave", min_pods=2)
    client_ns = cluster.pod("leave/client")["netns"]
    # A narrow port range makes the direct run below reuse the tuples the tunnel left behind.
    # The client may close first too (it has the whole response before the FIN arrives), and
    # its own TIME_WAIT sockets would exhaust the range: let it re-use those (timestamps).
    netns.sysctl(client_ns, {"net.ipv4.ip_local_port_range": "20000 20999",
                             "net.ipv4.tcp_tw_reuse": "1"})
    url = f"http://{cluster.pod('leave/server')['ip']}:8080/"
    mesh = LocalMesh(cluster, namespaces={"leave"})
    mesh.start()
    try:
        before = _syn_retransmits(client_ns)
        # 1,500 connections over 1,000 ports: at least 500 reuse a tuple the tunnel left in
        # TIME_WAIT moments ago
        through_mesh = _connections(cluster, url, 1500)
        assert through_mesh["status"] == {"200": 1500}, through_mesh["errors"]
        assert _syn_retransmits(client_ns) - before == 0
        assert any(e["decision"] == "allow" for e in mesh.access_log("node0"))
        # and it was the hand-over that served the reused tuples, not luck
        with Datapath(cluster.name, "node0", netns=cluster.names.node_ns("node0")) as dp:
            stats = dp.stats()
        assert stats["time_wait_listener_assigned"] > 0, stats
        assert stats["time_wait_unregistered"] == stats["dropped_no_listener"] == 0, stats
    finally:
        mesh.stop()
    before = _syn_retransmits(client_ns)
    direct = _connections(cluster, url, 600)
    assert direct["status"] == {"200": 600}, direct["errors"]
    assert _syn_retransmits(client_ns) - before == 0
