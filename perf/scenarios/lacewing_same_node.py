"""lacewing-same-node: the client pod and a server pod on the same node (node0), both enrolled.
The tunnel on node0 decides identity and policy in-process (STRICT, the same identities as
lacewing-l4) and relays the bytes to the pod without any TLS (see docs/tunnel.md for the choice
between a user-space copy and a kernel splice). The server pod is added next to the client at
the first start; the harness's `direct` baseline stays the cross-node pair. The access log is
on (as in production); it costs a line per connection.
"""

from __future__ import annotations

from lacewing.local import netns
from perf.scenarios.lacewing_l4 import LacewingL4
from perf.topology import NGINX_CONF, TCP_SYSCTLS, PerfTopology

NEAR = """apiVersion: v1
kind: Pod
metadata: {{name: server-near, namespace: perf, labels: {{app: server-near}}}}
spec:
  nodeName: node0
  containers:
  - name: nginx
    command: [nginx, -p, {dir}, -c, {dir}/nginx.conf, -g, "daemon off;"]
  - name: iperf
    command: [iperf3, -s, -p, "5201"]
"""


class LacewingSameNode(LacewingL4):
    name = "lacewing-same-node"
    description = "Lacewing, client and server on one node: policy in-process, plain relay"
    pod = "perf/server-near"

    def _server(self, topo: PerfTopology) -> tuple[str, str]:
        names = {f"{p['namespace']}/{p['name']}" for p in topo.cluster.status()["pods"]}
        if self.pod not in names:
            d = topo.workdir / "near"
            (d / "body").mkdir(parents=True, exist_ok=True)
            (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d))
            (d / "near.yaml").write_text(NEAR.format(dir=d))
            topo.cluster.apply([d / "near.yaml"])
            topo.cluster.wait_ready(namespace="perf", min_pods=3)
            netns.sysctl(topo.netns(self.pod), TCP_SYSCTLS)
        return self.pod, topo.cluster.pod(self.pod)["ip"]
