"""Tier 3: the node agents' istio_tcp_*_bytes come from the kernel, exactly.

A 2-node local cluster with its own control plane and node agents (tunnel + eBPF capture,
node_agent/ztunnel/wiring.py). Several MB go each way over three paths — cross node (node0's
tunnel reports as source, node1's as destination over :15008), same node (node0 decides in
process) and plaintext from an unenrolled pod (node1's :15006) — and each reporter's
istio_tcp_received_bytes_total / istio_tcp_sent_bytes_total for that workload pair moves by
exactly the application's bytes, read from the agent's :15020; the access-log line carries the
same figures with `bytes_source: kernel`; the flow records of those connections are gone from
the kernel map once read (the tunnel consumed them), and the record of a refused connection,
which the tunnel never reads, is reaped by the agent.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lacewing.local.mesh import LocalMesh, uninstall_capture
from node_agent.datapath import Datapath

pytestmark = pytest.mark.timeout(300)
PY = sys.executable

# per connection: "N M\n", then read until N bytes in all arrived, send M bytes, wait for EOF
SERVE = ("import socket,threading\n"
         "def serve(c):\n"
         "  f=c.makefile('rb');h=f.readline();n,m=map(int,h.split());left=n-len(h)\n"
         "  while left>0:\n"
         "    d=f.read1(min(left,262144))\n"
         "    if not d: return\n"
         "    left-=len(d)\n"
         "  b=b'r'*65536\n"
         "  while m>0:\n"
         "    k=min(m,len(b));c.sendall(b[:k]);m-=k\n"
         "  while f.read1(65536): pass\n"
         "  c.close()\n"
         "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
         "s.bind(('0.0.0.0',8080));s.listen(64)\n"
         "while True:\n"
         "  c,a=s.accept();threading.Thread(target=serve,args=(c,),daemon=True).start()\n")

# send N bytes in all (header included), read exactly M, close first
CALL = ("import socket,sys,json\n"
        "ip,port,n,m=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4])\n"
        "c=socket.create_connection((ip,port),timeout=20)\n"
        "h=f'{n} {m}\\n'.encode();c.sendall(h);left=n-len(h);b=b's'*65536\n"
        "while left>0:\n"
        "  k=min(left,len(b));c.sendall(b[:k]);left-=k\n"
        "got=0\n"
        "while got<m:\n"
        "  d=c.recv(min(262144,m-got))\n"
        "  if not d: break\n"
        "  got+=len(d)\n"
        "me=c.getsockname();c.close()\n"
        "print(json.dumps({'got':got,'port':me[1]}))\n")


# print our port, then connect (captured; the tunnel refuses it, maybe before connect returns)
REFUSED = ("import socket,sys\n"
           "c=socket.socket();c.bind(('0.0.0.0',0));c.settimeout(10)\n"
           "print(c.getsockname()[1],flush=True)\n"
           "try:\n"
           "  c.connect((sys.argv[1],8080));c.sendall(b'1 1\\n');c.recv(10)\n"
           "except OSError:\n"
           "  pass\n")


def workloads() -> str:
    def pod(ns, name, node, cmd, labels="{}"):
        return (f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, "
                f"labels: {labels}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: main\n"
                f"    command: {json.dumps(cmd)}\n")
    serve, idle = [PY, "-c", SERVE], ["sleep", "infinity"]
    return "".join([
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: kb}\n",
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: kblegacy}\n",
        pod("kb", "client", "node0", idle),
        pod("kb", "server", "node1", serve, "{app: server}"),
        pod("kb", "near", "node0", serve, "{app: near}"),
        pod("kblegacy", "outsider", "node0", idle),
    ])


def byte_counters(text: str) -> dict[tuple, float]:
    """(metric, reporter, source_workload, destination_workload, security policy) -> value."""
    out: dict[tuple, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"):
                lb = s.labels
                key = (s.name, lb["reporter"], lb["source_workload"],
                       lb["destination_workload"], lb["connection_security_policy"])
                out[key] = out.get(key, 0.0) + s.value
    return out


def gauge(text: str, name: str) -> float | None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                return s.value
    return None


def wait_log(mesh: LocalMesh, node: str, **match) -> dict:
    deadline = time.monotonic() + 20
    while True:
        lines = [e for e in mesh.access_log(node)
                 if all(e.get(k) == v for k, v in match.items())]
        if lines:
            assert len(lines) == 1, lines
            return lines[0]
        assert time.monotonic() < deadline, (match, mesh.access_log(node)[-5:])
        time.sleep(0.2)


def test_istio_tcp_bytes_are_the_kernels_exact_counts(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    (tmp_path / "w.yaml").write_text(workloads())
    cluster.apply([tmp_path / "w.yaml"])
    cluster.wait_ready(namespace="kb", min_pods=3)
    cluster.wait_ready(namespace="kblegacy", min_pods=1)
    server, near = cluster.pod("kb/server"), cluster.pod("kb/near")
    client, outsider = cluster.pod("kb/client"), cluster.pod("kblegacy/outsider")
    nodes = {n["name"]: n for n in cluster.status()["nodes"]}
    mesh = LocalMesh(cluster, namespaces={"kb"})
    try:
        mesh.start()
        before = {n: byte_counters(mesh.metrics(n)) for n in ("node0", "node1")}
        for n in ("node0", "node1"):
            assert gauge(mesh.metrics(n), "lacewing_tunnel_kernel_byte_counts") == 1.0, n

        def call(pod: str, ip: str, n: int, m: int) -> int:
            out = cluster.exec(pod, [PY, "-c", CALL, ip, "8080", str(n), str(m)],
                               capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr[-1500:]
            res = json.loads(out.stdout)
            assert res["got"] == m
            return res["port"]

        flows = {   # name: (from pod, to pod, bytes up, bytes back)
            "cross": (client, server, 4 * 2**20 + 1231, 3 * 2**20 + 77),
            "same": (client, near, 3 * 2**20 + 4567, 5 * 2**20 + 1),
            "plain": (outsider, server, 2 * 2**20 + 89, 2 * 2**20 + 333),
        }
        ports = {}
        for name, (src, dst, up, back) in flows.items():
            ports[name] = call(f"{src['namespace']}/{src['name']}", dst["ip"], up, back)

        # the access-log lines: the same figures, counted in the kernel
        expect_logs = {
            ("node0", "cross"): dict(listener="outbound", kind="tunnel"),
            ("node1", "cross"): dict(listener="inbound", kind="inbound"),
            ("node0", "same"): dict(listener="outbound", kind="same_node"),
            ("node1", "plain"): dict(listener="inbound_plaintext", kind="inbound"),
        }
        for (node, name), match in expect_logs.items():
            src, dst, up, back = flows[name]
            line = wait_log(mesh, node, dst=f"{dst['ip']}:8080",
                            src=f"{src['ip']}:{ports[name]}", **match)
            assert (line["bytes_sent"], line["bytes_received"]) == (up, back), (node, name, line)
            assert line["bytes_source"] == "kernel", (node, name, line)

        # the counters moved by exactly the application's bytes, per reporter and pair
        after = {n: byte_counters(mesh.metrics(n)) for n in ("node0", "node1")}
        expect_metrics = [
            ("node0", "source", "client", "server", "mutual_tls", "cross"),
            ("node1", "destination", "client", "server", "mutual_tls", "cross"),
            ("node0", "source", "client", "near", "mutual_tls", "same"),
            ("node1", "destination", "outsider", "server", "none", "plain"),
        ]
        for node, reporter, sw, dw, sec, name in expect_metrics:
            _src, _dst, up, back = flows[name]
            for metric, want in (("istio_tcp_received_bytes_total", up),
                                 ("istio_tcp_sent_bytes_total", back)):
                key = (metric, reporter, sw, dw, sec)
                if sw == "outsider" and key not in after[node]:
                    key = (metric, reporter, "unknown", dw, sec)     # an unenrolled source
                moved = after[node].get(key, 0.0) - before[node].get(key, 0.0)
                assert moved == want, (node, key, moved, want, sorted(after[node]))

        # read to the end, the records of these connections left the kernel map
        def records(node: str, pred) -> list:
            dp = Datapath(cluster.name, node, netns=nodes[node]["netns"])
            try:
                return [f for f in dp.read_flows() if pred(f)]
            finally:
                dp.close()

        for node in ("node0", "node1"):
            left = records(node, lambda f: f.dport == 8080
                           and f.src in (client["ip"], outsider["ip"]))
            assert left == [], (node, left)

        # a refused connection is never read by the tunnel: the agent's reaper removes its
        # record once it has been closed for a while (wiring.REAP_AFTER), so floods of refused
        # connections cannot fill the map
        mesh.apply([{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                     "metadata": {"name": "strict", "namespace": "kb"},
                     "spec": {"mtls": {"mode": "STRICT"}}}])
        out = cluster.exec("kblegacy/outsider", [PY, "-c", REFUSED, server["ip"]],
                           capture_output=True, text=True, timeout=60)
        assert out.stdout.strip().isdigit(), out.stderr[-1500:]
        port = int(out.stdout.split()[0])
        mine = lambda f: f.src == outsider["ip"] and f.sport == port    # noqa: E731
        deadline = time.monotonic() + 10
        while not [f for f in records("node1", mine) if not f.open]:
            assert time.monotonic() < deadline, records("node1", mine)
            time.sleep(0.2)
        assert wait_log(mesh, "node1", src=f"{outsider['ip']}:{port}")["decision"] == "deny"
        deadline = time.monotonic() + 60
        while records("node1", mine):
            assert time.monotonic() < deadline, "the refused connection's record stayed"
            time.sleep(1)
    finally:
        mesh.stop()
        uninstall_capture(cluster)
