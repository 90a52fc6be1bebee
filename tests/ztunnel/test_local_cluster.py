"""Tier 3: the mesh on a 2-node local cluster — the cluster's own control plane and node agents
(the tunnel and the eBPF capture wired in by node_agent/ztunnel/wiring.py), enrollment by
namespace label, policies applied like any resource; real mTLS between nodes, source addresses
preserved."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from lacewing.local.mesh import LocalMesh, uninstall_capture

pytestmark = pytest.mark.timeout(240)

PEER_ECHO = ("import socket\n"
             "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
             "s.bind(('0.0.0.0',8080));s.listen(64)\n"
             "while True:\n"
             "  c,a=s.accept();c.sendall((a[0]+'\\n').encode());c.close()\n")

CALL = ("import socket,sys\n"
        "try:\n"
        "  c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n"
        "  d=c.recv(100)\n"
        "  print(d.decode().strip() or 'EOF')\n"
        "except Exception as e:\n"
        "  print(type(e).__name__)\n")


GARBAGE = ("import socket,sys\n"
           "try:\n"
           "  c=socket.create_connection((sys.argv[1],15008),timeout=5)\n"
           "  c.sendall(b'GET / HTTP/1.1\\r\\n\\r\\n'+bytes(range(256)))\n"
           "  print(c.recv(100).decode(errors='replace') or 'EOF')\n"
           "except Exception as e:\n"
           "  print(type(e).__name__)\n")


def workloads(py: str) -> str:
    def pod(ns, name, node, sa, cmd, labels="{}"):
        return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {labels}}}
spec:
  nodeName: {node}
  serviceAccountName: {sa}
  containers:
  - name: main
    command: {json.dumps(cmd)}
"""
    serve = [py, "-c", PEER_ECHO]
    idle = ["sleep", "infinity"]
    return "".join([
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh}\n",
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n",
        *[f"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n"
          for ns, sa in (("mesh", "client"), ("mesh", "intruder"), ("mesh", "server"),
                         ("legacy", "outsider"))],
        pod("mesh", "client", "node0", "client", idle),
        pod("mesh", "intruder", "node0", "intruder", idle),
        pod("mesh", "server", "node1", "server", serve, "{app: server}"),
        pod("mesh", "near", "node0", "server", serve, "{app: server}"),
        pod("legacy", "outsider", "node0", "outsider", idle),
        """---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: mesh}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
"""])


POLICIES = yaml.safe_load_all("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: mesh}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: mesh}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/mesh/sa/client"]}}]}]
""")


def call(cluster, pod: str, host: str, port: int, py: str) -> str:
    out = cluster.exec(pod, [py, "-c", CALL, host, str(port)], capture_output=True, text=True,
                       timeout=30)
    return out.stdout.strip()


def test_mesh_on_a_local_cluster(make_cluster, tmp_path):
    import sys
    py = sys.executable
    cluster = make_cluster(nodes=2)
    (tmp_path / "w.yaml").write_text(workloads(py))
    cluster.apply([tmp_path / "w.yaml"])
    cluster.wait_ready(namespace="mesh", min_pods=4)
    cluster.wait_ready(namespace="legacy", min_pods=1)
    pods = {f"{p['namespace']}/{p['name']}": p for p in cluster.status()["pods"]}
    server, near, client = pods["mesh/server"], pods["mesh/near"], pods["mesh/client"]
    mesh = LocalMesh(cluster, namespaces={"mesh"}, resources=list(POLICIES))
    try:
        mesh.start()
        # cross node, pod IP: mTLS, and the server sees the client's own address
        assert call(cluster, "mesh/client", server["ip"], 8080, py) == client["ip"]
        # the intruder's identity is not allowed
        assert call(cluster, "mesh/intruder", server["ip"], 8080, py) in (
            "EOF", "ConnectionResetError")
        # an unenrolled caller is plaintext: STRICT refuses it
        assert call(cluster, "legacy/outsider", server["ip"], 8080, py) in (
            "EOF", "ConnectionResetError", "TimeoutError")
        # the same node: decided in-process, source kept
        assert call(cluster, "mesh/client", near["ip"], 8080, py) == client["ip"]
        # through the Service's cluster IP, load-balanced over both
        vip = next(s for s in cluster.status()["services"] if s["name"] == "server")["clusterIP"]
        seen = {call(cluster, "mesh/client", vip, 80, py) for _ in range(4)}
        assert seen == {client["ip"]}

        out = mesh.access_log("node0")
        kinds = {(e["kind"], e["decision"]) for e in out}
        assert ("tunnel", "allow") in kinds and ("same_node", "allow") in kinds
        assert ("tunnel", "deny") in kinds          # the intruder, refused by node1
        # tunnel reuse (on by default): the client's later calls to node1 rode a TLS
        # connection an earlier call had opened
        assert any(e["tunnel_reused"] for e in out if e["kind"] == "tunnel"
                   and e["decision"] == "allow")
        assert re.search(r'lacewing_tunnel_inner_connections_total\{side="client",'
                         r'tunnel="reused"\} [1-9]', mesh.metrics("node0"))
        inb = mesh.access_log("node1")
        allowed = [e for e in inb if e["decision"] == "allow" and e["listener"] == "inbound"]
        assert allowed and allowed[0]["src_identity"] == "spiffe://cluster.local/ns/mesh/sa/client"
        assert allowed[0]["dst_identity"] == "spiffe://cluster.local/ns/mesh/sa/server"
        assert any(e["listener"] == "inbound_plaintext" and "STRICT" in e["reason"] for e in inb)
        # garbage and plaintext at node1's :15008, from a pod: refused and counted
        node1_ip = next(n for n in cluster.status()["nodes"] if n["name"] == "node1")["underlayIP"]
        garbage = cluster.exec("legacy/outsider", [py, "-c", GARBAGE, node1_ip],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        assert garbage in ("EOF", "ConnectionResetError"), garbage
        assert call(cluster, "mesh/client", server["ip"], 8080, py) == client["ip"]  # unaffected

        metrics = mesh.metrics("node1")
        assert 'reason="handshake_failed' in metrics
        m = re.search(r'istio_tcp_connections_opened_total\{[^}]*connection_security_policy='
                      r'"mutual_tls"[^}]*source_principal="spiffe://cluster.local/ns/mesh/sa/'
                      r'client"[^}]*\} (\S+)', metrics)
        assert m and float(m.group(1)) >= 1
        assert 'reason="policy"' in metrics
    finally:
        mesh.stop()
        uninstall_capture(cluster)
