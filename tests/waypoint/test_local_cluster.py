"""Tier 3: the waypoint on a 2-node local cluster, behind the real node tunnels.

`lacewing local up` runs the control plane and the node agents (tunnel + eBPF capture). A
client pod calls a Service's cluster IP; the capture hands the connection to node0's tunnel,
which — told by the control plane that the namespace uses waypoint shop/waypoint, found by its
instance pod's label — sends it over mutual TLS (the client's SVID) to the waypoint pod. The
waypoint reads the tunnel header (the Service called), applies L7 policy and routes, and
reaches the chosen endpoint through that endpoint's node tunnel with its own SVID. Every part
is a real process in its namespace. The waypoint pod here gets its snapshot from a bootstrap
file, so that every setting the assertions depend on is pinned in this file;
test_local_apply.py covers the same path with the snapshot pushed by the control plane.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from lacewing.local import netns
from lacewing.local.mesh import LocalMesh

pytestmark = [pytest.mark.timeout(300), pytest.mark.netns, pytest.mark.bpf]

PY = sys.executable
NS = "shop"


def pod(name: str, node: str, sa: str, cmd: list[str], labels: dict | None = None) -> str:
    return "---\n" + yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": {"nodeName": node, "serviceAccountName": sa,
                 "containers": [{"name": "main", "command": cmd}]}})


def serve(version: str, *flags: str) -> list[str]:
    return [PY, "-m", "lacewing.sample_app", "serve", "--port", "8080", "--version", version,
            "-q", *flags]


def service(name: str) -> str:
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


SERVICES = ("web", "flaky", "eject", "slow", "limited")


WORKLOADS = "".join([
    f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n",
    *[f"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {NS}}}\n"
      for sa in ("client", "intruder", "web", "waypoint")],
    pod("client", "node0", "client", ["sleep", "infinity"]),
    pod("intruder", "node0", "intruder", ["sleep", "infinity"]),
    pod("web-v1-0", "node1", "web", serve("v1"), {"app": "web", "version": "v1"}),
    pod("web-v1-1", "node1", "web", serve("v1"), {"app": "web", "version": "v1"}),
    pod("web-v2-0", "node0", "web", serve("v2"), {"app": "web", "version": "v2"}),
    pod("flaky-0", "node1", "web", serve("v1", "--fail-rate", "0.3"), {"app": "flaky"}),
    pod("eject-0", "node1", "web", serve("v1"), {"app": "eject"}),
    pod("eject-1", "node0", "web", serve("v1"), {"app": "eject"}),
    pod("eject-bad", "node1", "web", serve("v1", "--fail-rate", "1"), {"app": "eject"}),
    pod("slow-0", "node1", "web", serve("v1", "--latency", "300ms"), {"app": "slow"}),
    pod("limited-0", "node1", "web", serve("v1"), {"app": "limited"}),
    *[service(n) for n in SERVICES]])
MESH_PODS = ("client", "intruder", "web-v1-0", "web-v1-1", "web-v2-0", "flaky-0", "eject-0",
             "eject-1", "eject-bad", "slow-0", "limited-0")

CONFIG = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /slow}}]
    timeout: 200ms
    route: [{destination: {host: web, subset: v1}}]
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
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-admin, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: shop}
spec:
  hosts: [flaky]
  http: [{route: [{destination: {host: flaky}}], retries: {attempts: 4, retryOn: 5xx}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: eject, namespace: shop}
spec:
  hosts: [eject]
  http: [{route: [{destination: {host: eject}}], retries: {attempts: 0}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: eject, namespace: shop}
spec:
  host: eject
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 3, interval: 100ms, baseEjectionTime: 3s,
                       maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow, namespace: shop}
spec:
  hosts: [slow]
  http: [{route: [{destination: {host: slow}}], retries: {attempts: 0}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: slow, namespace: shop}
spec:
  host: slow
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
---
apiVersion: lacewing.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: limited, namespace: shop}
spec:
  targetRef: {kind: Service, group: "", name: limited}
  tokenBucket: {maxTokens: 25, fillInterval: 1h}
"""


def bootstrap(status: dict) -> str:
    underlay = {n["name"]: n["underlayIP"] for n in status["nodes"]}
    pods = {p["ip"]: p for p in status["pods"] if p.get("ip")}
    services = []
    for svc in status["services"]:
        if svc["namespace"] != NS:
            continue
        endpoints = []
        for e in svc["endpoints"]:
            ip, _, port = e.rpartition(":")
            p = pods[ip]
            endpoints.append({"name": p["name"], "ip": ip, "port": int(port), "enrolled": True,
                              "nodeIP": underlay[p["node"]], "serviceAccount": "web",
                              "labels": p.get("labels") or {}})
        services.append({"name": svc["name"], "namespace": NS, "vip": svc["clusterIP"],
                         "ports": [{"port": 80, "targetPort": 8080}], "endpoints": endpoints})
    doc = {"apiVersion": "lacewing.dev/v1alpha1", "kind": "WaypointServices",
           "waypoint": {"namespace": NS, "name": "waypoint"}, "services": services}
    return yaml.safe_dump(doc) + "---" + CONFIG


def start_prometheus(cluster, tmp_path) -> subprocess.Popen:
    """Debian's Prometheus in the waypoint pod's namespace, scraping it every second."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed: run `make setup`")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n- job_name: waypoint\n"
                   "  static_configs: [{targets: ['127.0.0.1:15020']}]\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(cluster.exec_argv(f"{NS}/waypoint", [
        exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        "--web.listen-address=127.0.0.1:9090"]), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, env=netns.clean_env())
    log.close()
    return proc


def prometheus_value(cluster, promql: str, *, want: dict, timeout: float = 30) -> dict:
    code = ("import json,sys,urllib.parse,urllib.request\n"
            "u='http://127.0.0.1:9090/api/v1/query?'+urllib.parse.urlencode({'query':sys.argv[1]})\n"
            "r=json.loads(urllib.request.urlopen(u,timeout=5).read())['data']['result']\n"
            "print(json.dumps({s['metric']['response_code']:int(float(s['value'][1])) for s in r}))")
    got: dict = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.exec(f"{NS}/waypoint", [PY, "-c", code, promql], capture_output=True,
                           text=True, timeout=30)
        if out.returncode == 0:
            got = json.loads(out.stdout)
            if got == want:
                break
        time.sleep(0.5)
    return got


def load(cluster, client: str, url: str, *args: str) -> dict:
    out = cluster.exec(f"{NS}/{client}", [PY, "-m", "lacewing.sample_app", "load", url, "-o",
                                          "json", "--timeout", "10s", *args],
                       capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_waypoint_behind_node_tunnels(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)        # runs the control plane and a node agent per node
    (tmp_path / "w.yaml").write_text(WORKLOADS)
    cluster.apply([tmp_path / "w.yaml"])
    cluster.wait_ready(namespace=NS, min_pods=len(MESH_PODS), timeout=120)
    # The waypoint pod: the instance label tells the control plane (and so every node tunnel)
    # where waypoint shop/waypoint is; the namespace label sends the Services' traffic to it.
    # Its own snapshot comes from a bootstrap file (test_local_apply.py: from the control plane).
    (tmp_path / "waypoint.yaml").write_text(bootstrap(cluster.status()))
    ca_dir = cluster.store.read_cluster()["caDir"]
    (tmp_path / "wp-pod.yaml").write_text(pod(
        "waypoint", "node0", "waypoint",
        [PY, "-m", "waypoint", "--bootstrap", str(tmp_path / "waypoint.yaml"),
         "--listen", "0.0.0.0:15008", "--metrics", "127.0.0.1:15020", "--ca-dir", ca_dir,
         "--trace-sample", "0"],
        {"lacewing.dev/waypoint": "waypoint", "lacewing.dev/dataplane-mode": "none"})[4:])
    cluster.apply([tmp_path / "wp-pod.yaml"])
    cluster.wait_ready(namespace=NS, min_pods=len(MESH_PODS) + 1, timeout=120)
    cluster.label("namespace", NS, {"lacewing.dev/use-waypoint": "waypoint"})
    status = cluster.status()
    vips = {s["name"]: s["clusterIP"] for s in status["services"] if s["namespace"] == NS}
    vip = vips["web"]
    mesh = LocalMesh(cluster, namespaces=set(), pods={f"{NS}/{n}" for n in MESH_PODS})
    prom = start_prometheus(cluster, tmp_path)
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
        for path in ("admin", "admin/x", "/admin", "public/..%2Fadmin", "public%5C..%5Cadmin",
                     "./admin", "%61dmin"):
            denied = load(cluster, "client", url + path, "-n", "1")
            assert denied["status"] == {"403": 1}, path
        # Timeouts: the /slow route's 200 ms, the pod told to take 2 s.
        slow = load(cluster, "client", url + "slow", "-n", "3", "-H", "x-sample-delay:2s")
        assert slow["status"] == {"504": 3}
        # Retries hide a pod that fails 30 % of requests.
        flaky = load(cluster, "client", f"http://{vips['flaky']}/", "-n", "500", "-c", "4")
        assert flaky["status"].get("200", 0) / 500 >= 0.99, flaky["status"]
        # Outlier detection: the failing pod is ejected after 3 errors, then returns.
        ej = load(cluster, "client", f"http://{vips['eject']}/", "-n", "30")
        assert ej["pod_status"]["eject-bad"] == {"503": 3}, ej["pod_status"]
        returned = False
        deadline = time.monotonic() + 20          # baseEjectionTime is 3 s
        while not returned and time.monotonic() < deadline:
            ej = load(cluster, "client", f"http://{vips['eject']}/", "-n", "6")
            returned = "eject-bad" in ej["pods"]
            time.sleep(0.2)
        assert returned
        # Pool overflow: one connection, one pending request; the rest get 503.
        over = load(cluster, "client", f"http://{vips['slow']}/", "-n", "24", "-c", "6")
        assert over["status"].get("503", 0) > 0 and over["status"].get("200", 0) > 0
        # Rate limit: 25 tokens, no refill within the test.
        lim = load(cluster, "client", f"http://{vips['limited']}/", "-n", "100", "-c", "4")
        assert lim["status"] == {"200": 25, "429": 75}
        # A real Prometheus, scraping the waypoint, agrees with what the clients saw.
        promql = ('sum by (response_code) (istio_requests_total{reporter="waypoint",'
                  'destination_service_name="limited"})')
        assert prometheus_value(cluster, promql, want={"200": 25, "429": 75}) == \
            {"200": 25, "429": 75}
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
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        mesh.stop()
