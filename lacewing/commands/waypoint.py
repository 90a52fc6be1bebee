"""`lacewing waypoint apply|generate|delete`: declare a namespace's waypoint, like
`istioctl waypoint`.

Before: a namespace (and, for apply/delete, a local cluster that is up). After: `generate`
prints the Gateway (`gatewayClassName: lacewing-waypoint`) as YAML; `apply` writes it into
the local cluster and, with `--enroll-namespace`, labels the namespace
`lacewing.dev/use-waypoint=<name>` so its traffic goes through the waypoint; `delete` removes
both. The resource itself comes from `waypoint.manifest`. `canary` runs the canary tour on
loopback: v1 (two pods, one failing 30 %) and v2 of a sample-app Service behind a real
waypoint, a 90/10 VirtualService, a header (`x-user: tester`) that always reaches v2, retries
hiding the flaky pod — and prints the observed split.
"""

from __future__ import annotations

import argparse
import sys

from lacewing.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("waypoint", help="declare a namespace's waypoint (L7 proxy)",
                       description="Declare the waypoint that gives a namespace L7 routing, "
                       "resilience, policy and telemetry, as `istioctl waypoint` does.")
    wsub = p.add_subparsers(dest="waypoint_command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func, *, cluster: bool) -> argparse.ArgumentParser:
        sp = wsub.add_parser(name, help=help, description=help)
        sp.add_argument("-n", "--namespace", required=True, help="the waypoint's namespace")
        sp.add_argument("--name", default="waypoint", help="waypoint name (default waypoint)")
        if cluster:
            from lacewing.local.names import DEFAULT_CLUSTER

            sp.add_argument("--cluster", default=DEFAULT_CLUSTER,
                            help=f"local cluster name (default {DEFAULT_CLUSTER})")
        sp.set_defaults(func=func)
        return sp

    g = add("generate", "print the waypoint's Gateway as YAML", _generate, cluster=False)
    g.add_argument("--for", dest="traffic", default="service",
                   choices=("service", "workload", "all", "none"),
                   help="which traffic the waypoint handles (default service)")
    a = add("apply", "write the waypoint's Gateway into the local cluster", _apply, cluster=True)
    a.add_argument("--enroll-namespace", action="store_true",
                   help="also label the namespace lacewing.dev/use-waypoint=NAME")
    a.add_argument("--for", dest="traffic", default="service",
                   choices=("service", "workload", "all", "none"))
    add("delete", "remove the waypoint (and the namespace's label if it names it)", _delete,
        cluster=True)
    c = wsub.add_parser("canary", help="the canary tour on loopback: a 90/10 split, header "
                        "routing and retries hiding a flaky pod, with the observed split",
                        description="Run v1 (one pod failing 30%%) and v2 of a sample-app "
                        "Service behind a waypoint on loopback and show what it does.")
    c.add_argument("--requests", type=int, default=2000)
    c.set_defaults(func=lambda args: (run_canary(requests=args.requests), 0)[1])


# --- the canary tour (what `lacewing demo` can show for the waypoint) ------------------

CONFIG = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: demo}
spec:
  hosts: [reviews]
  http:
  - name: testers
    match: [{headers: {x-user: {exact: tester}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: canary
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
    retries: {attempts: 3, retryOn: "5xx,reset"}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: demo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def run_canary(*, requests: int = 2000, out=print) -> dict:
    from lacewing.sample_app import Behaviour, Identity, SampleServer, run_load
    from waypoint import bootstrap
    from waypoint.proxy import WaypointThread

    pods = [("reviews-v1-0", "v1", Behaviour()), ("reviews-v1-1", "v1", Behaviour(fail_rate=0.3)),
            ("reviews-v2-0", "v2", Behaviour())]
    servers = []
    try:
        for name, version, behaviour in pods:
            s = SampleServer(identity=Identity(pod=name, namespace="demo", node="local",
                                               version=version),
                             behaviour=behaviour, host="127.0.0.1", port=0, quiet=True)
            s.start()
            servers.append((name, version, s))
        service = {"name": "reviews", "namespace": "demo", "ports": [{"port": 9080}],
                   "endpoints": [{"name": n, "ip": "127.0.0.1", "port": s.port,
                                  "labels": {"app": "reviews", "version": v}}
                                 for n, v, s in servers]}
        snap = bootstrap.snapshot(waypoint=("demo", "waypoint"), services=[service],
                                  resources=bootstrap.parse_resources(CONFIG))
        with WaypointThread(snap, metrics_port=None) as wp:
            url = f"http://127.0.0.1:{wp.port}/"
            split = run_load(url, requests=requests, concurrency=4,
                             headers={"Host": "reviews.demo:9080"})
            testers = run_load(url, requests=200, concurrency=2,
                               headers={"Host": "reviews.demo:9080", "x-user": "tester"})
        flaky_direct = run_load(f"http://127.0.0.1:{servers[1][2].port}/", requests=400,
                                concurrency=2)
    finally:
        for _, _, s in servers:
            s.stop()
    v2 = split.versions.get("v2", 0)
    result = {
        "requests": requests,
        "v1_percent": round(100 * split.versions.get("v1", 0) / requests, 1),
        "v2_percent": round(100 * v2 / requests, 1),
        "success_percent": round(100 * split.count(200) / requests, 2),
        "tester_v2_percent": round(100 * testers.versions.get("v2", 0) / 200, 1),
        "flaky_pod_direct_success_percent": round(100 * flaky_direct.count(200) / 400, 1),
        "pods": split.pods,
    }
    out("canary through the waypoint (VirtualService 90/10, retries 3 × 5xx,reset)")
    out(f"  split         v1 {result['v1_percent']}%  v2 {result['v2_percent']}%  "
        f"over {requests} requests  (pods: {', '.join(f'{k} {v}' for k, v in sorted(split.pods.items()))})")
    out(f"  x-user:tester v2 {result['tester_v2_percent']}% of 200")
    out(f"  success       {result['success_percent']}% through the waypoint; the flaky pod "
        f"alone answers {result['flaky_pod_direct_success_percent']}%")
    return result



# --- declaring a waypoint ----------------------------------------------------------------


def _manifest(args) -> dict:
    from waypoint.manifest import gateway

    try:
        return gateway(args.namespace, args.name, traffic=getattr(args, "traffic", "service"))
    except ValueError as e:
        raise UserError(str(e)) from None


def _yaml(obj: dict) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def _generate(args) -> int:
    print(_yaml(_manifest(args)), end="")
    return 0


def _document(obj: dict):
    from control.config.loader import Document

    return Document("<lacewing waypoint>", 0, obj)


def _cluster(args):
    from lacewing.local.cluster import LocalCluster

    return LocalCluster(args.cluster)


def _pod_docs(args, cluster) -> list:
    """Local mode runs the waypoint as a pod of its namespace, on the first node."""
    import sys

    from lacewing.local.components import CONTROL_PLANE_GRPC_PORT
    from waypoint.manifest import local_pod

    record = cluster.status()
    node = record["nodes"][0]["name"]
    state = cluster.store.root
    address = ((cluster.store.read_cluster() or {}).get("controlPlane") or {}).get("address", "")
    docs = local_pod(args.namespace, args.name, node=node, python=sys.executable,
                     control_plane=f"{address}:{CONTROL_PLANE_GRPC_PORT}",
                     credentials=str(state / "nodes" / node))
    return [_document(d) for d in docs]


def _apply(args) -> int:
    from control.config.errors import ConfigError

    obj = _manifest(args)
    cluster = _cluster(args)
    try:
        cluster.apply(_pod_docs(args, cluster))
    except ConfigError as e:
        raise UserError(f"the local cluster refused the waypoint pod: {e}") from None
    try:
        cluster.apply([_document(obj)])
    except ConfigError as e:
        print(f"warning: the Gateway was not stored: {e} (the waypoint pod runs without it)",
              file=sys.stderr)
    print(f"waypoint {args.namespace}/{args.name} applied (pod {args.name}-waypoint)")
    if args.enroll_namespace:
        from waypoint.manifest import enroll_label

        cluster.label("namespace", args.namespace, enroll_label(args.name))
        print(f"namespace {args.namespace} labeled lacewing.dev/use-waypoint={args.name}")
    return 0


def _delete(args) -> int:
    from control.snapshot import WAYPOINT_LABEL

    obj = _manifest(args)
    cluster = _cluster(args)
    cluster.delete([_document(obj)] + _pod_docs(args, cluster))
    ns = next((o for o in cluster.store.objects().values()
               if o.get("kind") == "Namespace"
               and o.get("metadata", {}).get("name") == args.namespace), None)
    labels = ((ns or {}).get("metadata", {}).get("labels") or {})
    if labels.get(WAYPOINT_LABEL) == args.name:
        cluster.label("namespace", args.namespace, {WAYPOINT_LABEL: None})
        print(f"namespace {args.namespace}: label {WAYPOINT_LABEL} removed")
    print(f"waypoint {args.namespace}/{args.name} deleted")
    return 0
