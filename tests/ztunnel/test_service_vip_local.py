"""Tier 3: an unenrolled pod calling a Service whose endpoint is an enrolled pod of its own node —
the path where the node's DNAT used to carry plaintext past the capture (NOTES.md gap 1). A
2-node local cluster with its own control plane, node agents, real eBPF programs and tunnels:
the VIP is captured at the caller's veth before the DNAT and :15006 balances it, so STRICT
refuses and PERMISSIVE passes it labelled plaintext; endpoints on the other node or not
enrolled are relayed to with the caller's address (replies find the tunnel through the
uplink and through an unenrolled pod's veth); a Service with no enrolled endpoint here is left
to the DNAT (no lw_vips entry); enrolled callers go through :15001 as before; pods leaving the
mesh take their VIPs out of the map."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from lacewing.local.mesh import LocalMesh, uninstall_capture
from node_agent.bpf import layout
from node_agent.datapath import Datapath

pytestmark = pytest.mark.timeout(240)

PY = sys.executable

# answers "<its own name> <the peer address it sees>"
SERVE = ("import socket,sys\n"
         "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
         "s.bind(('0.0.0.0',8080));s.listen(64)\n"
         "while True:\n"
         "  c,a=s.accept();c.sendall((sys.argv[1]+' '+a[0]+'\\n').encode());c.close()\n")

CALL = ("import socket,sys\n"
        "try:\n"
        "  c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n"
        "  d=c.recv(100)\n"
        "  print(d.decode().strip() or 'EOF')\n"
        "except Exception as e:\n"
        "  print(type(e).__name__)\n")

REFUSED = ("EOF", "ConnectionResetError")


def pod(ns: str, name: str, node: str, cmd: list[str], labels: dict | None = None) -> str:
    return (f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, "
            f"labels: {json.dumps(labels or {})}}}\nspec:\n  nodeName: {node}\n"
            f"  containers:\n  - name: main\n    command: {json.dumps(cmd)}\n")


def svc(ns: str, name: str, selector: dict) -> str:
    return (f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n  selector: {json.dumps(selector)}\n  ports: [{{port: 80, targetPort: 8080}}]\n")


WORKLOADS = "".join([
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh}\n",
    "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n",
    pod("mesh", "near", "node0", [PY, "-c", SERVE, "near"], {"app": "near", "tier": "web"}),
    pod("mesh", "far", "node1", [PY, "-c", SERVE, "far"], {"app": "far", "tier": "web"}),
    pod("mesh", "client", "node0", ["sleep", "infinity"]),
    # behind the same Service, on the caller's node, but not enrolled
    pod("mesh", "odd", "node0", [PY, "-c", SERVE, "odd"], {"tier": "web"}),
    pod("legacy", "plain", "node0", [PY, "-c", SERVE, "plain"], {"app": "plain"}),
    pod("legacy", "outsider", "node0", ["sleep", "infinity"]),
    svc("mesh", "near", {"app": "near"}),          # its only endpoint: enrolled, same node
    svc("mesh", "web", {"tier": "web"}),           # enrolled here and on node1, unenrolled here
    svc("legacy", "plain", {"app": "plain"}),      # nothing enrolled behind it
])

STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "strict", "namespace": "mesh"},
          "spec": {"mtls": {"mode": "STRICT"}}}


def call(cluster, who: str, host: str, port: int = 80) -> str:
    out = cluster.exec(who, [PY, "-c", CALL, host, str(port)], capture_output=True, text=True,
                       timeout=30)
    return out.stdout.strip()


def wait_for(what, check, *, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:.0f} s")
        time.sleep(0.2)


def test_unenrolled_caller_through_a_service_vip(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    (tmp_path / "w.yaml").write_text(WORKLOADS)
    cluster.apply([tmp_path / "w.yaml"])
    cluster.wait_ready(namespace="mesh", min_pods=4)
    cluster.wait_ready(namespace="legacy", min_pods=2)
    status = cluster.status()
    pods = {f"{p['namespace']}/{p['name']}": p for p in status["pods"]}
    vips = {f"{s['namespace']}/{s['name']}": s["clusterIP"] for s in status["services"]}
    node0 = next(n for n in status["nodes"] if n["name"] == "node0")
    outsider, client = pods["legacy/outsider"]["ip"], pods["mesh/client"]["ip"]
    dp = Datapath(cluster.name, "node0", netns=node0["netns"])
    mesh = LocalMesh(cluster, namespaces=set(), pods={"mesh/near", "mesh/far", "mesh/client"})
    try:
        mesh.start()
        # node0's capture takes the VIPs of Services with an enrolled endpoint on node0, and
        # knows their endpoints (near here, far on node1, odd unenrolled) the tunnel may dial
        want = {(vips["mesh/near"], 80): layout.VIP_SERVICE,
                (vips["mesh/web"], 80): layout.VIP_SERVICE,
                (pods["mesh/near"]["ip"], 8080): layout.VIP_BACKEND,
                (pods["mesh/far"]["ip"], 8080): layout.VIP_BACKEND,
                (pods["mesh/odd"]["ip"], 8080): layout.VIP_BACKEND}
        wait_for("node0's lw_vips", lambda: dp.services() == want)
        shown = subprocess.run([sys.executable, "-m", "node_agent.bpf.show", "--cluster",
                                cluster.name, "--node", "node0", "--netns", node0["netns"]],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert f"service capture {vips['mesh/near']}:80" in shown.stdout
        assert re.search(rf"service capture {pods['mesh/far']['ip']}:8080 +backend",
                         shown.stdout), shown.stdout

        # PERMISSIVE (no policy): by name, balanced by the tunnel, the server sees the caller
        assert call(cluster, "legacy/outsider", "near.mesh") == f"near {outsider}"
        seen = {call(cluster, "legacy/outsider", "web.mesh") for _ in range(6)}
        assert seen == {f"near {outsider}", f"far {outsider}", f"odd {outsider}"}, seen
        # a Service with nothing enrolled behind it: untouched (the DNAT's, not the tunnel's)
        captured = dp.stats()["captured_service"]
        assert call(cluster, "legacy/outsider", vips["legacy/plain"]) == f"plain {outsider}"
        assert dp.stats()["captured_service"] == captured
        # an enrolled caller through the VIP: the outbound path, as before
        assert call(cluster, "mesh/client", vips["mesh/near"]) == f"near {client}"

        def plaintext_allowed():
            return [e for e in mesh.access_log("node0")
                    if e["listener"] == "inbound_plaintext" and e.get("service") == "mesh/near"
                    and e["decision"] == "allow"]
        entry = wait_for("node0's access log of the VIP connection", plaintext_allowed)[0]
        assert entry["dst_workload"] == "mesh/near" and entry["src"].startswith(outsider + ":")
        assert entry["connection_security_policy"] == "none" and entry["kind"] == "inbound"
        assert entry["target"] == f"{pods['mesh/near']['ip']}:8080"
        assert entry["dst"] == f"{vips['mesh/near']}:80"
        assert (entry["bytes_sent"], entry["bytes_received"]) == (0, len(f"near {outsider}\n"))
        metrics = mesh.metrics("node0")
        assert re.search(r'istio_tcp_connections_opened_total\{[^}]*connection_security_policy='
                         r'"none"[^}]*destination_service_name="near"', metrics), metrics[-2000:]
        # the connection node0 relayed to far (node1) is reported once, by far's node: node0
        # logs it but keeps it out of its istio_* series
        assert any(e.get("kind") == "service_relay" and e.get("dst_workload") == "mesh/far"
                   for e in mesh.access_log("node0"))
        far_opened = r'istio_tcp_connections_opened_total\{[^}]*destination_workload="far"'
        assert not re.search(far_opened, metrics)
        assert re.search(far_opened, mesh.metrics("node1"))

        # STRICT: refused through the VIP, on node0 (near) and by node1 (far) alike; the
        # unenrolled endpoint has no policy (round robin: each endpoint twice in six calls)
        mesh.apply([STRICT])
        assert call(cluster, "legacy/outsider", "near.mesh") in REFUSED
        assert call(cluster, "legacy/outsider", vips["mesh/near"]) in REFUSED
        answers = [call(cluster, "legacy/outsider", "web.mesh") for _ in range(6)]
        assert answers.count(f"odd {outsider}") == 2, answers
        assert all(a in REFUSED for a in answers if a != f"odd {outsider}"), answers
        assert call(cluster, "mesh/client", "near.mesh") == f"near {client}"
        assert call(cluster, "legacy/outsider", "plain.legacy") == f"plain {outsider}"

        def refused_for_strict():
            return [e for e in mesh.access_log("node0")
                    if e["listener"] == "inbound_plaintext" and e.get("service") == "mesh/near"
                    and e["decision"] == "deny" and "STRICT" in e["reason"]]
        wait_for("node0's access log of the refusal", refused_for_strict)
        m = re.search(r'lacewing_tunnel_refused_connections_total\{listener="inbound_plaintext",'
                      r'reason="policy"\} (\S+)', mesh.metrics("node0"))
        assert m and float(m.group(1)) >= 2
        assert any(e["listener"] == "inbound_plaintext" and "STRICT" in e["reason"]
                   and e["dst_workload"] == "mesh/far" for e in mesh.access_log("node1"))

        # the pods leave the mesh: their VIPs leave node0's map, the DNAT serves them again
        mesh.stop()
        try:
            wait_for("node0's lw_vips emptied", lambda: dp.services() == {} or None)
        except AssertionError as e:   # say what kept an entry draining
            from node_agent.open_sockets import connected
            owned = connected("/run/netns/" + node0["netns"])
            raise AssertionError(f"{e}: {dp.services()}, the node's owned connections: "
                                 f"{owned}") from None
        assert call(cluster, "legacy/outsider", "near.mesh") == f"near {outsider}"
    finally:
        dp.close()
        mesh.stop()
        uninstall_capture(cluster)
