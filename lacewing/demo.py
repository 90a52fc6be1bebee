"""`lacewing demo`: the one-minute tour of a local mesh.

Before: root, `make setup` done. After: the tour was printed and everything it made is gone —
also on Ctrl-C or an error — unless `keep=True`. It makes a 2-node cluster named `demo`, runs
the sample app behind a Service with pods on both nodes, calls it from a client pod, and shows
which pods answered. Then (unless `mesh=False`) it turns the mesh on and shows it: enrollment by
label, mTLS identities, a STRICT PeerAuthentication and an AuthorizationPolicy at work, their
metrics (`lacewing.tours.mesh`), and a canary through a waypoint (`lacewing.tours.canary`).
"""

from __future__ import annotations

import json
import signal
import time
from importlib import resources

from lacewing.errors import UserError
from lacewing.local.cluster import LocalCluster

CLUSTER = "demo"


def _say(step: str) -> None:
    print(f"\n▶ {step}", flush=True)


def _load_from_client(cluster: LocalCluster, url: str, requests: int) -> dict:
    out = cluster.exec("demo/client", ["lacewing", "sample-app", "load", url, "-n",
                                       str(requests), "-c", "4", "--no-keepalive", "-o", "json"],
                       capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise UserError(f"the client could not reach {url}: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def run(*, requests: int = 200, keep: bool = False, name: str = CLUSTER, mesh: bool = True) -> int:
    cluster = LocalCluster(name)
    if cluster.is_up():
        raise UserError(f"a demo is already running (cluster {name!r}); stop it with "
                        f"`lacewing local down --name {name}`")
    # Ctrl-C and SIGTERM both end in the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        _say("Making a local cluster: 2 nodes as network namespaces, joined by an underlay")
        cluster.up(nodes=2, mesh=mesh)
        for n in cluster.status()["nodes"]:
            print(f"  {n['name']}: namespace {n['netns']}, underlay {n['underlayIP']}, "
                  f"pods {n['podCIDR']}")

        _say("Deploying the sample app (2 replicas) behind Service demo/hello, and a client pod")
        manifest = resources.files("lacewing.samples") / "hello.yaml"
        with resources.as_file(manifest) as path:
            cluster.apply([path])
        pods = cluster.wait_ready(namespace="demo", min_pods=3)
        for p in pods:
            print(f"  pod {p['namespace']}/{p['name']:<24} {p['node']}  {p['ip']}")
        svc = next(s for s in cluster.status()["services"] if s["name"] == "hello")
        print(f"  service demo/hello: cluster IP {svc['clusterIP']} → {', '.join(svc['endpoints'])}")

        url = "http://hello.demo.svc.cluster.local/"
        _say(f"From demo/client: {requests} requests to {url}, a new connection each "
             "(the node balances connections over ready endpoints)")
        report = _load_from_client(cluster, url, requests)
        nodes = {p["name"]: p["node"] for p in pods}
        total = sum(report.get("pods", {}).values()) or 1
        print(f"  {'answered by':<32} {'node':<7} {'requests':>8}")
        for pod, count in sorted(report.get("pods", {}).items()):
            print(f"  {pod:<32} {nodes.get(pod, '?'):<7} {count:>8}  {count * 100 / total:5.1f}%")
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(report.get("status", {}).items()))
        print(f"  statuses: {statuses}; errors: {report.get('failed', 0)}")
        lat = report.get("latency_ms", {})
        if lat:
            print(f"  latency p50 {lat.get('p50', 0):.2f} ms, p99 {lat.get('p99', 0):.2f} ms")
        answered_nodes = {nodes.get(p) for p in report.get("pods", {})}
        results = {"Service demo/hello answered from both nodes": len(answered_nodes) == 2}
        if mesh:
            from lacewing.tours.canary import canary_tour
            from lacewing.tours.mesh import mesh_tour

            results["mesh: mTLS identities, STRICT, authorization, metrics"] = mesh_tour(
                cluster, say=_say)
            results["canary through a waypoint: 90/10 split, header route, retries"] = \
                canary_tour(cluster, say=_say)
        _say("Summary")
        for what, ok in results.items():
            print(f"  {'✔' if ok else '✘'} {what}")
        print(f"  tour took {time.monotonic() - started:.0f}s")
        if keep:
            print(f"\n  The cluster stays up: try `lacewing local status --name {name}`, "
                  f"`lacewing local exec --name {name} demo/client -- curl -s hello`; "
                  f"remove it with `lacewing local down --name {name}`.")
        return 0 if all(results.values()) else 1
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", flush=True)
        keep = False
        return 130
    finally:
        if not keep:
            _say("Tearing down")
            removed = cluster.down()
            print(f"  removed {', '.join(removed) if removed else 'nothing'}")
