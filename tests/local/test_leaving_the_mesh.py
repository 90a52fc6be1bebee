"""Tier 3: a pod that leaves the mesh connects at full speed at once.

While a pod is enrolled, its node's tunnel holds sockets with the pod's own address (the
transparent side of every captured connection); those it closed first linger in TIME_WAIT for
60 s. When the pod connects directly again and reuses such a tuple, the kernel's TCP early demux
in the node namespace would hand the forwarded SYN to that TIME_WAIT socket instead of routing
it, and the pod would wait a 1 s SYN retransmission per hit. Node namespaces turn early demux
off (lacewing/local/cluster.py); this test keeps it that way by behaviour.
"""

from __future__ import annotations

import subprocess
import sys

from lacewing.local import netns
from lacewing.local.mesh import LocalMesh

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
    netns.sysctl(client_ns, {"net.ipv4.ip_local_port_range": "20000 20999"})
    url = f"http://{cluster.pod('leave/server')['ip']}:8080/"
    mesh = LocalMesh(cluster, namespaces={"leave"})
    mesh.start()
    try:
        through_mesh = _connections(cluster, url, 300)
        # Most, not all: a reused source port can meet the tunnel's own TIME_WAIT for that tuple
        # inside the mesh too (a known gap, NOTES.md); what matters here is what it leaves.
        assert through_mesh["status"].get("200", 0) >= 250, through_mesh["errors"]
        assert any(e["decision"] == "allow" for e in mesh.access_log("node0"))
    finally:
        mesh.stop()
    before = _syn_retransmits(client_ns)
    direct = _connections(cluster, url, 600)
    assert direct["status"] == {"200": 600}, direct["errors"]
    assert _syn_retransmits(client_ns) - before == 0
