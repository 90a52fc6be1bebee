"""lacewing-l7: the waypoint (one Python process, one event loop) doing L7 routing.

The waypoint runs in node0's namespace (where the client pod's traffic first lands) and
forwards over keep-alive HTTP/1.1 to the nginx server pod on node1. Its routing work per
request matches `haproxy-http`: a VirtualService whose first two routes (a header match and
a path-prefix match) miss and whose last route goes to subset v1 of the server with retries
(2 attempts on 5xx and connect failures) and a 10 s timeout; a DestinationRule with subsets,
ROUND_ROBIN, connection-pool limits and outlier detection; request metrics and trace
propagation on (1 % of new traces sampled, no exporter), as deployed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lacewing.local import netns
from perf.scenarios.base import Scenario, Target
from perf.topology import PerfTopology

PORT = 18081
GATEWAY = "10.244.0.1"  # node0's address its pods reach first (topology.py)

BOOTSTRAP = """apiVersion: lacewing.dev/v1alpha1
kind: WaypointServices
waypoint: {{namespace: perf, name: waypoint}}
services:
- name: server
  namespace: perf
  ports: [{{port: 80}}]
  endpoints:
  - {{name: server, ip: {server}, port: 80, labels: {{app: server, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: server, namespace: perf}}
spec:
  hosts: [server]
  http:
  - match: [{{headers: {{x-canary: {{exact: always}}}}}}]
    route: [{{destination: {{host: server, subset: v2}}}}]
  - match: [{{uri: {{prefix: /api/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: server, subset: v1}}}}]
  - route: [{{destination: {{host: server, subset: v1}}}}]
    timeout: 10s
    retries: {{attempts: 2, retryOn: "5xx,connect-failure"}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: server, namespace: perf}}
spec:
  host: server
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    connectionPool: {{tcp: {{maxConnections: 1024}}, http: {{http1MaxPendingRequests: 1024}}}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def wait_listening(ns: str, host: str, port: int, procs: list[subprocess.Popen],
                   logs: list[Path], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if netns.tcp_probe(ns, host, port):
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    text = "".join(p.read_text() for p in logs if p.exists())
    raise RuntimeError(f"{what} did not start listening on {host}:{port}:\n{text[-1500:]}")


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class LacewingL7(Scenario):
    name = "lacewing-l7"
    description = "the waypoint (1 Python process): VirtualService routing, retries, metrics"

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, topo: PerfTopology) -> Target:
        d = topo.workdir / "waypoint"
        d.mkdir(exist_ok=True)
        (d / "bootstrap.yaml").write_text(BOOTSTRAP.format(server=topo.server_ip))
        n0 = topo.node(0)
        log_path = d / "waypoint.log"
        log = open(log_path, "wb")
        argv = [sys.executable, "-m", "waypoint", "--bootstrap", str(d / "bootstrap.yaml"),
                "--listen", f"{GATEWAY}:{PORT}", "--metrics", "127.0.0.1:0",
                "--default-service", "perf/server"]
        self.procs.append(subprocess.Popen(
            netns.nsenter_argv(n0["netns"], argv), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, env=netns.clean_env()))
        log.close()
        wait_listening(n0["netns"], GATEWAY, PORT, self.procs, [log_path], "the waypoint")
        # No iperf3 through an HTTP proxy: bulk goes direct (the table marks it as such).
        return Target(f"http://{GATEWAY}:{PORT}/", topo.server_ip, 5201)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None] + self._children()

    def _children(self) -> list[int]:
        out = []
        for p in self.procs:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split():
                    out.append(int(line))
        return out

    def stop(self) -> None:
        stop_all(self.procs)
        self.procs = []
