"""The mesh part of `lacewing demo`: on the demo's cluster (sample app `demo/hello` on both nodes
behind a Service, `demo/client`), turn the mesh on and show what it does.

Before: `lacewing demo` made the cluster and deployed `lacewing/samples/hello.yaml` (its caller
passes the cluster and a `say(step)` printer). After `mesh_tour(...)` returns True, it showed:
1. namespace `demo` enrolled by its label — every pod captured by its node's eBPF programs;
2. client → hello across nodes over mutual TLS: the identities from the tunnels' access log;
3. a STRICT PeerAuthentication refusing an unenrolled caller (`legacy/outsider`, plaintext)
   that calls the Service `hello.demo` — whichever node's pod it lands on;
4. an AuthorizationPolicy allowing `demo/client` and denying `demo/intruder`;
5. the metrics that prove it (`istio_tcp_connections_opened_total` by
   connection_security_policy, refusals by reason) from the node agents' :15020.
It adds two pods (`legacy/outsider`, `demo/intruder`) and three resources, and leaves them: the
demo tears the cluster down. Wiring: `lacewing/demo.py` calls it after its own tour.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from lacewing.local.mesh import LocalMesh

EXTRA = """apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: outsider, namespace: legacy}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: intruder, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: legacy}
spec:
  serviceAccountName: outsider
  containers: [{name: main, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: demo}
spec:
  serviceAccountName: intruder
  containers: [{name: main, command: [sleep, infinity]}]
"""

STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "strict", "namespace": "demo"},
          "spec": {"mtls": {"mode": "STRICT"}}}
ONLY_CLIENT = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "hello-from-client", "namespace": "demo"},
               "spec": {"selector": {"matchLabels": {"app": "hello"}}, "action": "ALLOW",
                        "rules": [{"from": [{"source": {
                            "principals": ["cluster.local/ns/demo/sa/client"]}}]}]}}

CALL = ("import socket,sys\n"
        "try:\n"
        "  c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n"
        "  c.sendall(b'GET / HTTP/1.1\\r\\nHost: hello\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "  d=c.recv(200)\n"
        "  print(d.split(b'\\r\\n')[0].decode() if d else 'connection closed without an answer')\n"
        "except Exception as e:\n"
        "  print('refused: '+type(e).__name__)\n")


def _call(cluster, pod: str, host: str, port: int = 80) -> str:
    out = cluster.exec(pod, [sys.executable, "-c", CALL, host, str(port)], capture_output=True,
                       text=True, timeout=30)
    return (out.stdout.strip() or out.stderr.strip()[-200:])


def _metric_lines(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            pol = re.search(r'connection_security_policy="([^"]*)"', labels)
            reason = re.search(r'reason="([^"]*)"', labels)
            key = (pol or reason).group(1) if (pol or reason) else "?"
            out[key] = out.get(key, 0.0) + float(value)
    return out


def mesh_tour(cluster, *, say: Callable[[str], None], out: Callable[[str], None] = print) -> bool:
    ok = True
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "extra.yaml").write_text(EXTRA)
        cluster.apply([Path(d) / "extra.yaml"])
    cluster.wait_ready(namespace="legacy", min_pods=1)
    cluster.wait_ready(namespace="demo", min_pods=4)
    vip = next(s for s in cluster.status()["services"] if s["name"] == "hello")["clusterIP"]

    say("Enrolling namespace demo in the mesh: `lacewing local label namespace demo "
        "lacewing.dev/dataplane-mode=ambient`")
    mesh = LocalMesh(cluster, namespaces={"demo"})
    mesh.start()
    for p in cluster.pods(namespace="demo"):
        out(f"  {p['namespace']}/{p['name']:<24} {p['node']}  {p['ip']}  captured by its node")

    say("demo/client → Service hello: now over mutual TLS between the node tunnels")
    for _ in range(4):
        out(f"  demo/client: {_call(cluster, 'demo/client', vip)}")
    seen = {}
    for node in ("node0", "node1"):
        for e in mesh.access_log(node):
            if e["decision"] != "allow":
                continue
            if e["listener"] == "inbound":
                how = f"{node} accepted over mTLS"
            elif e["kind"].startswith("same_node"):
                how = f"{node} (same node) decided in-process"
            else:
                continue
            seen[(how, e["src_identity"], e["dst_identity"], e["dst_workload"])] = True
    for how, src, dst, wl in sorted(seen):
        out(f"  {how}: {src} → {dst} ({wl}), connection_security_policy=mutual_tls")
    ok &= bool(seen)

    say("STRICT PeerAuthentication in demo: plaintext from an unenrolled pod is refused")
    mesh.apply([STRICT])
    # through the Service: the caller's node captures the cluster IP before its DNAT and
    # balances it at :15006 (docs/tunnel.md, "Service VIPs from unenrolled pods"), so the
    # endpoint on the caller's own node refuses it there and the other node's refuses it too
    for _ in range(4):
        answer = _call(cluster, "legacy/outsider", "hello.demo")
        out(f"  legacy/outsider (not in the mesh) → Service hello.demo: {answer}")
        ok &= not answer.startswith("HTTP/1.1 200")
    refused = sorted({f"{e['dst_workload']} refused by {node}"
                      for node in ("node0", "node1") for e in mesh.access_log(node)
                      if e["listener"] == "inbound_plaintext" and e["decision"] == "deny"})
    for line in refused:
        out(f"  {line}: PeerAuthentication STRICT, plaintext")

    say("AuthorizationPolicy: only cluster.local/ns/demo/sa/client may call hello")
    mesh.apply([STRICT, ONLY_CLIENT])
    allowed, denied = _call(cluster, "demo/client", vip), _call(cluster, "demo/intruder", vip)
    out(f"  demo/client:   {allowed}")
    out(f"  demo/intruder: {denied}")
    ok &= allowed.startswith("HTTP/1.1 200") and not denied.startswith("HTTP/1.1 200")

    say("The metrics that prove it (node agents' :15020/metrics)")
    for node in ("node0", "node1"):
        text = mesh.metrics(node)
        opened = _metric_lines(text, "istio_tcp_connections_opened_total")
        refused = _metric_lines(text, "lacewing_tunnel_refused_connections_total")
        out(f"  {node}: istio_tcp_connections_opened_total by connection_security_policy "
            f"{dict(sorted(opened.items()))}; refused by reason {dict(sorted(refused.items()))}")
    return bool(ok)
