"""The benchmark topology: a 2-node local cluster, a client pod on node0, a server pod on node1.

Before: root, `make setup` done. After `start()`: the cluster is up; the server pod runs nginx
(one worker, a fixed small answer on :80) and `iperf3 -s` on :5201; the client pod idles so
that load tools run inside it with `exec`. `stop()` removes all of it, whatever happened.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lacewing.local import netns
from lacewing.local.cluster import LocalCluster

NGINX_CONF = """user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {dir}/body;
  server {{
    listen 80 backlog=8192;
    location / {{ return 200 "hello from the lacewing perf server\\n"; }}
  }}
}}
"""

WORKLOADS = """apiVersion: v1
kind: Namespace
metadata: {{name: perf}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: perf, labels: {{app: server}}}}
spec:
  nodeName: node1
  containers:
  - name: nginx
    command: [nginx, -p, {dir}, -c, {dir}/nginx.conf, -g, "daemon off;"]
    ports: [{{containerPort: 80}}]
  - name: iperf
    command: [iperf3, -s, -p, "5201"]
    ports: [{{containerPort: 5201}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: perf}}
spec:
  nodeName: node0
  containers:
  - name: idle
    command: [sleep, infinity]
"""

TCP_SYSCTLS = {"net.ipv4.tcp_tw_reuse": "1", "net.core.somaxconn": "8192",
               "net.ipv4.tcp_max_syn_backlog": "8192"}
# Disjoint ephemeral port ranges for pods and nodes. The node tunnel connects to a server from
# the *client's* address with a port from the node's range; the server keeps those tuples in
# TIME_WAIT for 60 s. Were the ranges shared, a later scenario in which the client pod connects
# itself (direct) would reuse such tuples, the server would drop its SYNs (PAWS: the timestamps
# come from another namespace) and every hit would cost a 1 s retransmission — measured: direct's
# new connections/s fell from ~11,000 to ~90 right after lacewing-l4.
POD_PORTS = "1024 32767"
NODE_PORTS = "32768 65000"


@dataclass
class PerfTopology:
    cluster: LocalCluster
    workdir: Path
    client_pod: str = "perf/client"
    server_pod: str = "perf/server"

    @classmethod
    def start(cls, *, mesh: bool = True) -> PerfTopology:
        """`mesh=False`: no control plane or node agents (a benchmark that drives one data
        plane part itself)."""
        cluster = LocalCluster("pf" + secrets.token_hex(3))
        workdir = Path(tempfile.mkdtemp(prefix="lw-perf-"))
        topo = cls(cluster, workdir)
        try:
            cluster.up(nodes=2, mesh=mesh)
            (workdir / "body").mkdir()
            (workdir / "nginx.conf").write_text(NGINX_CONF.format(dir=workdir))
            (workdir / "workloads.yaml").write_text(WORKLOADS.format(dir=workdir))
            cluster.apply([workdir / "workloads.yaml"])
            cluster.wait_ready(namespace="perf", min_pods=2)
            for ns in [topo.netns(topo.client_pod), topo.netns(topo.server_pod)]:
                netns.sysctl(ns, {**TCP_SYSCTLS, "net.ipv4.ip_local_port_range": POD_PORTS})
            for node in cluster.status()["nodes"]:
                netns.sysctl(node["netns"], {**TCP_SYSCTLS,
                                             "net.ipv4.ip_local_port_range": NODE_PORTS})
        except BaseException:
            topo.stop()
            raise
        return topo

    def stop(self) -> None:
        try:
            self.cluster.down()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def netns(self, pod: str) -> str:
        return self.cluster.pod(pod)["netns"]

    @property
    def server_ip(self) -> str:
        return self.cluster.pod(self.server_pod)["ip"]

    def node(self, index: int) -> dict:
        return self.cluster.status()["nodes"][index]

    def run_in_client(self, argv: list[str], *, timeout: float) -> str:
        out = subprocess.run(netns.netns_exec_argv(self.netns(self.client_pod), argv),
                             capture_output=True, text=True, timeout=timeout,
                             env=netns.clean_env())
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
        return out.stdout
