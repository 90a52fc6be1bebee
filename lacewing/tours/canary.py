"""The canary step of `lacewing demo`: L7 traffic management through a waypoint, on the mesh.

Before: a local cluster with the mesh running (control plane, node agents). After
`canary_tour(cluster, say=...)`: namespace `shop` holds `web` v1 (two pods, one of which fails
30% of its requests) and v2, a client pod, a DestinationRule with the two subsets and a
VirtualService — `x-canary: always` goes to v2, everything else 90/10 with retries on 5xx — and
a waypoint made by `lacewing waypoint apply -n shop --enroll-namespace`, the way a user does it.
It shows the observed split, the header route and the success rate the retries give. Returns
True when all three came out as configured (split within ±3 points of 90/10).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PY = sys.executable
REQUESTS = 2000


def _serve(version: str, *flags: str) -> str:
    args = ", ".join(f'"{a}"' for a in [PY, "-m", "lacewing.sample_app", "serve", "--port",
                                        "8080", "--version", version, "-q", *flags])
    return f"[{args}]"


MANIFEST = f"""apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{lacewing.dev/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: web, namespace: shop}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: client, namespace: shop}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web-v1, namespace: shop}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web, version: v1, flaky: "no"}}}}
  template:
    metadata: {{labels: {{app: web, version: v1, flaky: "no"}}}}
    spec:
      serviceAccountName: web
      containers: [{{name: web, command: {_serve("v1")}, ports: [{{containerPort: 8080}}]}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web-v1-flaky, namespace: shop}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web, version: v1, flaky: "yes"}}}}
  template:
    metadata: {{labels: {{app: web, version: v1, flaky: "yes"}}}}
    spec:
      serviceAccountName: web
      containers: [{{name: web, command: {_serve("v1", "--fail-rate", "0.3")},
                     ports: [{{containerPort: 8080}}]}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web-v2, namespace: shop}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web, version: v2}}}}
  template:
    metadata: {{labels: {{app: web, version: v2}}}}
    spec:
      serviceAccountName: web
      containers: [{{name: web, command: {_serve("v2")}, ports: [{{containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, name: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: shop}}
spec:
  serviceAccountName: client
  containers: [{{name: client, command: [sleep, infinity]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: shop}}
spec:
  host: web
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: shop}}
spec:
  hosts: [web]
  http:
  - name: canary-testers
    match: [{{headers: {{x-canary: {{exact: always}}}}}}]
    route: [{{destination: {{host: web, subset: v2}}}}]
  - name: canary
    route:
    - {{destination: {{host: web, subset: v1}}, weight: 90}}
    - {{destination: {{host: web, subset: v2}}, weight: 10}}
    retries: {{attempts: 3, retryOn: "5xx,reset"}}
"""


def _load(cluster, *args: str) -> dict:
    out = cluster.exec("shop/client", [PY, "-m", "lacewing.sample_app", "load",
                                       "http://web.shop.svc.cluster.local/", "-o", "json",
                                       "--timeout", "10s", *args],
                       capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"load from shop/client failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def _waypoint_serving(cluster) -> bool:
    """The waypoint's snapshot names Service shop/web with its route (it follows xDS)."""
    pods = [p for p in cluster.pods(namespace="shop")
            if p["labels"].get("lacewing.dev/waypoint")]
    if not pods or not pods[0]["ready"]:
        return False
    got = cluster.exec(f"shop/{pods[0]['name']}", [PY, "-c", (
        "import urllib.request;print(urllib.request.urlopen("
        "'http://127.0.0.1:15020/debug/snapshot',timeout=5).read().decode())")],
        capture_output=True, text=True, timeout=30)
    try:
        web = json.loads(got.stdout)["services"]["shop/web"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(web.get("endpoints")) and web.get("routes", 0) >= 1


def canary_tour(cluster, *, say: Callable[[str], None], out: Callable[[str], None] = print,
                requests: int = REQUESTS) -> bool:
    say("Canary through a waypoint: web v1 (one pod fails 30%) and v2, a 90/10 VirtualService, "
        "x-canary: always → v2, retries on 5xx")
    with tempfile.TemporaryDirectory(prefix="lw-demo-") as tmp:
        path = Path(tmp) / "shop.yaml"
        path.write_text(MANIFEST)
        cluster.apply([path])
    cluster.wait_ready(namespace="shop", min_pods=4, timeout=120)
    made = subprocess.run([PY, "-m", "lacewing.cli", "waypoint", "apply", "-n", "shop",
                           "--enroll-namespace", "--cluster", cluster.name],
                          capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        raise RuntimeError(f"lacewing waypoint apply failed: {made.stderr.strip()[-500:]}")
    out("  $ lacewing waypoint apply -n shop --enroll-namespace")
    for line in made.stdout.strip().splitlines():
        out(f"    {line}")
    # Converged when the waypoint has its routes and the client's node tunnel sends Service
    # traffic to it: the header route is only honoured on that path.
    deadline = time.monotonic() + 90
    while not (_waypoint_serving(cluster) and
               _load(cluster, "-n", "10", "-H", "x-canary:always").get("versions") == {"v2": 10}):
        if time.monotonic() > deadline:
            raise RuntimeError("traffic to shop/web did not pass the waypoint within 90 s")
        time.sleep(0.5)

    split = _load(cluster, "-n", str(requests), "-c", "4")
    testers = _load(cluster, "-n", "100", "-H", "x-canary:always")
    versions = split.get("versions", {})
    ok = split.get("status", {}).get("200", 0)
    v2_share = versions.get("v2", 0) / requests
    out(f"  {requests} requests from shop/client to http://web.shop/:")
    for version in sorted(versions):
        out(f"    {version}: {versions[version]:>5}  ({100 * versions[version] / requests:5.1f}%)"
            "   configured: " + ("90%" if version == "v1" else "10%"))
    flaky = {p: c for p, c in split.get("pods", {}).items() if "flaky" in p}
    out(f"  success {100 * ok / requests:.2f}% — the flaky pod answered "
        f"{sum(flaky.values())} of them; the waypoint retried the ones it failed")
    out(f"  with x-canary: always: {testers.get('versions', {})} of 100")
    return (abs(v2_share - 0.10) <= 0.03 and ok / requests >= 0.99
            and testers.get("versions") == {"v2": 100})
