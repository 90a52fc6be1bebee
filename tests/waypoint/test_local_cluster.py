"""Tier 3: the waypoint on a 2-node local cluster, behind the real node tunnels.

A client pod calls a Service's cluster IP; the eBPF capture hands the connection to node0's
tunnel, which sends it over mutual TLS (the client's SVID) to the waypoint pod, declared for
the Service. The waypoint reads the tunnel header (the Service called), applies L7 policy and
routes, and reaches the chosen endpoint through that endpoint's node tunnel with its own SVID.
Every part is a real process in its namespace; only the snapshots are files (the xDS client
is not in the waypoint yet).
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from control.ca.authority import CertificateAuthority
from node_agent.ztunnel.localmesh import LocalMesh

pytestmark = [pytest.mark.timeout(300), pytest.mark.netns, pytest.mark.bpf]

PY = sys.executable
NS = "shop"


def pod(name: str, node: str, sa: str, cmd: list[str], labels: dict | None = None) -> str:
    return "---\n" + yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": {"nodeName": node, "serviceAccountName": sa,
                 "containers": [{"name": "main", "command": cmd}]}})


def serve(version: str) -> list[str]:
    return [PY, "-m", "lacewing.sample_app", "serve", "--port", "8080", "--version", version,
            "-q"]


WORKLOADS = "".join([
    f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n",
    *[f"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {NS}}}\n"
      for sa in ("client", "intruder", "web", "waypoint")],
    pod("client", "node0", "client", ["sleep", "infinity"]),
    pod("intruder", "node0", "intruder", ["sleep", "infinity"]),
    pod("web-v1-0", "node1", "web", serve("v1"), {"app": "web", "version": "v1"}),
    pod("web-v1-1", "node1", "web", serve("v1"), {"app": "web", "version": "v1"}),
    pod("web-v2-0", "node0", "web", serve("v2"), {"app": "web", "version": "v2"}),
    f"""---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""])

CONFIG = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http:
  - match: [{headers: {x-user: {exact: tester}}}]
    route: [{destination: {host: web, subset: v2}}]
  - route:
    - {destination: {host: web, subset: v1}, weight: 90}
    - {destination: {host: web, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
    to: [{operation: {methods: [GET]}}]
"""


def bootstrap(status: dict) -> str:
    underlay = {n["name"]: n["underlayIP"] for n in status["nodes"]}
    pods = {p["ip"]: p for p in status["pods"] if p.get("ip")}
    svc = next(s for s in status["services"] if s["name"] == "web")
    endpoints = []
    for e in svc["endpoints"]:
        ip, _, port = e.rpartition(":")
        p = pods[ip]
        endpoints.append({"name": p["name"], "ip": ip, "port": int(port), "enrolled": True,
                          "nodeIP": underlay[p["node"]], "serviceAccount": "web",
                          "labels": p.get("labels") or {}})
    services = {"apiVersion": "lacewing.dev/v1alpha1", "kind": "WaypointServices",
                "waypoint": {"namespace": NS, "name": "waypoint"},
                "services": [{"name": "web", "namespace": NS, "vip": svc["clusterIP"],
                              "ports": [{"port": 80, "targetPort": 8080}],
                              "endpoints": endpoints}]}
    return yaml.safe_dump(services) + "---" + CONFIG


class MeshWithWaypoint(LocalMesh):
    """The node tunnels' snapshots, plus the waypoint the control plane would announce."""

    waypoint_ip = ""

    def _write_snapshots(self, status) -> None:
        super()._write_snapshots(status)
        for node in status["nodes"]:
            path = self.workdir / f"snapshot-{node['name']}.json"
            snap = json.loads(path.read_text())
            snap["waypoints"] = [{"namespace": NS, "name": "waypoint",
                                  "identity": f"spiffe://cluster.local/ns/{NS}/sa/waypoint",
                                  "addresses": [f"{self.waypoint_ip}:15008"]}]
            for s in snap["services"]:
                if s["namespace"] == NS and s["name"] == "web":
                    s["waypoint"] = f"{NS}/waypoint"
            path.write_text(json.dumps(snap))


def load(cluster, client: str, url: str, *args: str) -> dict:
    out = cluster.exec(f"{NS}/{client}", [PY, "-m", "lacewing.sample_app", "load", url, "-o",
                                          "json", "--timeout", "10s", *args],
                       capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_waypoint_behind_node_tunnels(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    (tmp_path / "w.yaml").write_text(WORKLOADS)
    cluster.apply([tmp_path / "w.yaml"])
    cluster.wait_ready(namespace=NS, min_pods=5, timeout=90)
    status = cluster.status()
    workdir = tmp_path / "mesh"
    workdir.mkdir()
    ca_dir = workdir / "mesh-ca"
    CertificateAuthority.load_or_generate(ca_dir)
    (tmp_path / "waypoint.yaml").write_text(bootstrap(status))
    (tmp_path / "wp-pod.yaml").write_text(pod(
        "waypoint", "node0", "waypoint",
        [PY, "-m", "waypoint", "--bootstrap", str(tmp_path / "waypoint.yaml"),
         "--listen", "0.0.0.0:15008", "--metrics", "127.0.0.1:15020", "--ca-dir", str(ca_dir),
         "--trace-sample", "0"])[4:])
    cluster.apply([tmp_path / "wp-pod.yaml"])
    cluster.wait_ready(namespace=NS, min_pods=6, timeout=90)
    status = cluster.status()
    pods = {p["name"]: p for p in status["pods"] if p["namespace"] == NS}
    vip = next(s for s in status["services"] if s["name"] == "web")["clusterIP"]
    mesh = MeshWithWaypoint(cluster, workdir, enrolled={
        f"{NS}/{n}" for n in ("client", "intruder", "web-v1-0", "web-v1-1", "web-v2-0")})
    mesh.waypoint_ip = pods["waypoint"]["ip"]
    try:
        mesh.start()
        url = f"http://{vip}:80/"
        split = load(cluster, "client", url, "-n", "2000", "-c", "4")
        assert split["status"] == {"200": 2000}, split
        assert abs(split["versions"].get("v2", 0) / 2000 - 0.10) <= 0.03, split["versions"]
        tester = load(cluster, "client", url, "-n", "100", "-H", "x-user:tester")
        assert tester["versions"] == {"v2": 100}
        # L7 policy at the waypoint: the principal comes from the tunnel's mTLS identity.
        denied = load(cluster, "intruder", url, "-n", "20")
        assert denied["status"] == {"403": 20}
        post = load(cluster, "client", url, "-n", "10", "-X", "POST")
        assert post["status"] == {"403": 10}
        # The path really went through both tunnels and the waypoint.
        kinds = {(e["kind"], e["decision"]) for e in mesh.access_log("node0")}
        assert ("waypoint", "allow") in kinds
        metrics = cluster.exec(f"{NS}/waypoint", [PY, "-c", (
            "import urllib.request;print(urllib.request.urlopen("
            "'http://127.0.0.1:15020/metrics',timeout=5).read().decode())")],
            capture_output=True, text=True, timeout=30).stdout
        line = next(ln for ln in metrics.splitlines() if ln.startswith("istio_requests_total{")
                    and 'response_code="200"' in ln and 'destination_version="v1"' in ln)
        assert 'source_principal="cluster.local/ns/shop/sa/client"' in line
        assert 'connection_security_policy="mutual_tls"' in line
    finally:
        mesh.stop()
