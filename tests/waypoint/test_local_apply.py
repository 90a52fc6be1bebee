"""Tier 3: `lacewing waypoint apply` on a local cluster runs the waypoint as a pod of its
namespace; that pod follows the cluster's real control plane over xDS (the Service that uses
it, its endpoints, routes and policies arrive in its snapshot), and the node tunnels send the
namespace's traffic through it — the whole product path, nothing hand-made."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.timeout(240), pytest.mark.netns]

PY = sys.executable

OBJECTS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-v1, namespace: shop, labels: {{app: web, version: v1}}}}
spec:
  containers:
  - name: web
    command: [{PY}, -m, lacewing.sample_app, serve, --port, "8080", -q]
    ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: shop}}
spec:
  hosts: [web]
  http: [{{route: [{{destination: {{host: web}}}}], timeout: 5s}}]
"""


def lacewing(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "lacewing.cli", *argv], capture_output=True, text=True,
                          timeout=120)


def fetch_snapshot(cluster) -> dict:
    got = cluster.exec("shop/waypoint-waypoint", [PY, "-c", (
        "import urllib.request;print(urllib.request.urlopen("
        "'http://127.0.0.1:15020/debug/snapshot',timeout=5).read().decode())")],
        capture_output=True, text=True, timeout=30)
    return json.loads(got.stdout) if got.returncode == 0 and got.stdout.strip() else {}


def test_waypoint_apply_and_delete_a_pod_of_the_namespace(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    (tmp_path / "objects.yaml").write_text(OBJECTS)
    cluster.apply([tmp_path / "objects.yaml"])
    out = lacewing("waypoint", "apply", "-n", "shop", "--enroll-namespace",
                   "--cluster", cluster.name)
    assert out.returncode == 0, out.stderr
    assert "labeled lacewing.dev/use-waypoint=waypoint" in out.stdout
    pods = {p["name"]: p for p in cluster.wait_ready(namespace="shop", min_pods=2, timeout=90)}
    wp = pods["waypoint-waypoint"]
    assert wp["labels"]["lacewing.dev/waypoint"] == "waypoint"       # what the compiler reads
    assert wp["labels"]["lacewing.dev/dataplane-mode"] == "none"     # never captured itself
    assert wp["serviceAccount"] == "waypoint"
    assert fetch_snapshot(cluster)["waypoint"]["identity"] == \
        "spiffe://cluster.local/ns/shop/sa/waypoint"
    ns = cluster.store.objects()["Namespace.core_-_shop"]
    assert ns["metadata"]["labels"]["lacewing.dev/use-waypoint"] == "waypoint"
    out = lacewing("waypoint", "delete", "-n", "shop", "--cluster", cluster.name)
    assert out.returncode == 0, out.stderr
    assert "Pod.core_shop_waypoint-waypoint" not in cluster.store.objects()
    ns = cluster.store.objects()["Namespace.core_-_shop"]
    assert "lacewing.dev/use-waypoint" not in (ns["metadata"].get("labels") or {})


def test_waypoint_apply_runs_a_pod_that_follows_the_control_plane(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    (tmp_path / "objects.yaml").write_text(OBJECTS)
    cluster.apply([tmp_path / "objects.yaml"])
    out = lacewing("waypoint", "apply", "-n", "shop", "--enroll-namespace",
                   "--cluster", cluster.name)
    assert out.returncode == 0, out.stderr
    assert "labeled lacewing.dev/use-waypoint=waypoint" in out.stdout
    cluster.wait_ready(namespace="shop", min_pods=2, timeout=90)
    snap: dict = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        snap = fetch_snapshot(cluster)
        web = snap.get("services", {}).get("shop/web")
        if web and web["endpoints"] and web["routes"] == 1:
            break
        time.sleep(0.5)
    assert snap.get("waypoint", {}).get("identity") == "spiffe://cluster.local/ns/shop/sa/waypoint"
    # its SVID came from the control plane's CA over gRPC (the pod is not given the CA's key)
    cert = snap.get("certificate") or {}
    assert cert.get("identity") == "spiffe://cluster.local/ns/shop/sa/waypoint", cert
    web = snap["services"]["shop/web"]
    assert web["endpoints"] == ["shop/web-v1"] and web["routes"] == 1, snap
    assert snap["virtualServices"] == ["shop/web"]


WORKLOADS = "".join([
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    *[f"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: shop}}\n"
      for sa in ("client", "intruder", "web")],
])


def test_the_product_path_apply_xds_tunnels(make_cluster, tmp_path):
    """`lacewing waypoint apply --enroll-namespace`, mesh config applied to the cluster, pods
    enrolled: the control plane pushes the waypoint its snapshot, the node tunnels send the
    namespace's Service traffic to it, and it routes and authorizes."""
    from tests.waypoint.test_local_cluster import load, pod, serve

    cluster = make_cluster(nodes=2)
    (tmp_path / "w.yaml").write_text(WORKLOADS + "".join([
        pod("client", "node0", "client", ["sleep", "infinity"]),
        pod("intruder", "node0", "intruder", ["sleep", "infinity"]),
        pod("web-v1-0", "node1", "web", serve("v1"), {"app": "web", "version": "v1"}),
        pod("web-v1-1", "node1", "web", serve("v1"), {"app": "web", "version": "v1"}),
        pod("web-v2-0", "node0", "web", serve("v2"), {"app": "web", "version": "v2"}),
        """---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
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
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]
"""]))
    cluster.apply([tmp_path / "w.yaml"])
    cluster.wait_ready(namespace="shop", min_pods=5, timeout=120)
    out = lacewing("waypoint", "apply", "-n", "shop", "--enroll-namespace",
                   "--cluster", cluster.name)
    assert out.returncode == 0, out.stderr
    cluster.wait_ready(namespace="shop", min_pods=6, timeout=120)
    from lacewing.local.mesh import LocalMesh

    mesh = LocalMesh(cluster, namespaces=set(), pods={
        f"shop/{n}" for n in ("client", "intruder", "web-v1-0", "web-v1-1", "web-v2-0")})
    try:
        mesh.start()
        deadline = time.monotonic() + 60
        snap: dict = {}
        while time.monotonic() < deadline:
            snap = fetch_snapshot(cluster)
            web = snap.get("services", {}).get("shop/web")
            if web and len(web["endpoints"]) == 3 and web["routes"] == 2 \
                    and snap.get("authorizationPolicies"):
                break
            time.sleep(0.5)
        vip = next(s for s in cluster.status()["services"] if s["name"] == "web")["clusterIP"]
        url = f"http://{vip}:80/"
        split = load(cluster, "client", url, "-n", "2000", "-c", "4")
        assert split["status"] == {"200": 2000}, split
        assert abs(split["versions"].get("v2", 0) / 2000 - 0.10) <= 0.03, split["versions"]
        tester = load(cluster, "client", url, "-n", "50", "-H", "x-user:tester")
        assert tester["versions"] == {"v2": 50}
        assert load(cluster, "intruder", url, "-n", "10")["status"] == {"403": 10}
    finally:
        mesh.stop()


GRPC_SERVER = """
import os, grpc
from concurrent import futures
name = os.environ["POD_NAME"].encode()
def say(request, context):
    return name + b":" + request
h = grpc.method_handlers_generic_handler("lacewing.test.Echo", {
    "Say": grpc.unary_unary_rpc_method_handler(say)})
s = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(h,))
s.add_insecure_port("0.0.0.0:9090")
s.start()
s.wait_for_termination()
"""

GRPC_CLIENT = """
import sys, grpc, collections
ch = grpc.insecure_channel(sys.argv[1])
say = ch.unary_unary("/lacewing.test.Echo/Say")
seen = collections.Counter()
for i in range(int(sys.argv[2])):
    reply = say(b"hi", timeout=10)
    seen[reply.split(b":")[0].decode()] += 1
print(dict(seen))
"""


def test_grpc_through_tunnels_and_waypoint_spreads_per_request(make_cluster, tmp_path):
    """One gRPC channel (one HTTP/2 connection) from a client pod, through node0's tunnel to
    the waypoint, and from it over HTTP/2 through the servers' node tunnels: calls spread."""
    import ast

    from tests.waypoint.test_local_cluster import pod

    cluster = make_cluster(nodes=2)
    server = [PY, "-c", GRPC_SERVER]
    (tmp_path / "w.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n" + "".join([
            *[f"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, "
              "namespace: shop}\n" for sa in ("client", "echo")],
            pod("client", "node0", "client", ["sleep", "infinity"]),
            pod("echo-0", "node1", "echo", server, {"app": "echo"}),
            pod("echo-1", "node0", "echo", server, {"app": "echo"}),
            """---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: grpc, port: 9090, targetPort: 9090}]   # the name says gRPC (Istio's rule)
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: shop}
spec:
  host: echo
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"""]))
    cluster.apply([tmp_path / "w.yaml"])
    cluster.wait_ready(namespace="shop", min_pods=3, timeout=120)
    assert lacewing("waypoint", "apply", "-n", "shop", "--enroll-namespace",
                    "--cluster", cluster.name).returncode == 0
    cluster.wait_ready(namespace="shop", min_pods=4, timeout=120)
    from lacewing.local.mesh import LocalMesh

    mesh = LocalMesh(cluster, namespaces=set(),
                     pods={"shop/client", "shop/echo-0", "shop/echo-1"})
    try:
        mesh.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            echo = fetch_snapshot(cluster).get("services", {}).get("shop/echo")
            if echo and len(echo["endpoints"]) == 2:
                break
            time.sleep(0.5)
        vip = next(s for s in cluster.status()["services"] if s["name"] == "echo")["clusterIP"]
        # Converged when a call makes it end to end (the waypoint, both node tunnels and their
        # enrollments are updated by separate pushes); then the 20 calls that are judged.
        deadline = time.monotonic() + 30
        while True:
            probe = cluster.exec("shop/client", [PY, "-c", GRPC_CLIENT, f"{vip}:9090", "2"],
                                 capture_output=True, text=True, timeout=60)
            if probe.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        out = cluster.exec("shop/client", [PY, "-c", GRPC_CLIENT, f"{vip}:9090", "20"],
                           capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        seen = ast.literal_eval(out.stdout.strip())
        assert seen == {"echo-0": 10, "echo-1": 10}
    finally:
        mesh.stop()


def test_the_local_waypoint_pod_never_holds_the_ca_key():
    from waypoint.manifest import local_pod

    docs = local_pod("shop", "waypoint", node="node0", python="python3",
                     control_plane="172.18.0.2:15012", credentials="/state/nodes/node0")
    command = docs[1]["spec"]["containers"][0]["command"]
    assert "--ca-dir" not in command and "--credentials" in command
