"""The canary tour: `python -m waypoint.canary` (what `lacewing demo` can show for the waypoint).

Before: nothing running. After: v1 (two pods, one of them failing 30 % of requests) and v2
(one pod) of a sample-app Service behind a waypoint on loopback, a 90/10 VirtualService, a
header (`x-user: tester`) that always reaches v2, and retries hiding the flaky pod — with the
observed split and success rates printed; everything stopped again.
"""

from __future__ import annotations

import argparse
import sys

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


def run(*, requests: int = 2000, out=print) -> dict:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m waypoint.canary", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args(argv)
    run(requests=args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
