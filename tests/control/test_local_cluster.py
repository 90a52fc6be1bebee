"""Tier 3: a real local cluster (`local up` runs the control plane and a node agent per node as
components, in their own network namespaces, over the underlay with real mTLS). An apply reaches
every node agent's /config_dump; with the control plane killed the agents keep serving their
configuration, and they converge on what changed once it is back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from lacewing.local.netns import socket_in_netns

pytestmark = pytest.mark.netns

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {lacewing.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, name: http}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]
"""


def http_get(netns: str, port: int, path: str) -> tuple[int, bytes]:
    sock = socket_in_netns(netns)
    try:
        sock.settimeout(3)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def config_dump(netns: str) -> dict | None:
    try:
        code, body = http_get(netns, 15000, "/config_dump")
    except OSError:
        return None
    return json.loads(body) if code == 200 else None


def wait_for(check, *, timeout: float = 30.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def has_policy(dump: dict | None) -> bool:
    if not dump:
        return False
    return [p["metadata"]["name"] for p in dump["snapshot"]["authorizationPolicies"]] == ["allow-web"]


def test_apply_reaches_every_node_agent_and_survives_a_control_plane_kill(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2)
    node_ns = {n["name"]: n["netns"] for n in cluster.status()["nodes"]}
    manifest = tmp_path / "shop.yaml"
    manifest.write_text(MANIFEST)
    cluster.apply([str(manifest)])
    for name, ns in node_ns.items():
        dump = wait_for(lambda ns=ns: (d := config_dump(ns)) and has_policy(d) and
                        "shop/web" in d["snapshot"]["services"] and d,
                        what=f"the apply on {name}")
        assert dump["snapshot"]["node"] == name
        assert dump["snapshot"]["services"]["shop/web"]["vip"].startswith("10.96.")
        assert http_get(ns, 15021, "/healthz/ready")[0] == 200

    # `lacewing status` reaches the control plane in the fabric namespace: both agents in sync.
    def status_ok():
        out = subprocess.run([sys.executable, "-m", "lacewing.cli", "status", "--name",
                              cluster.name], capture_output=True, text=True, timeout=30)
        return out if out.returncode == 0 else None
    out = wait_for(status_ok, what="lacewing status exit 0")
    rows = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("node-agent")]
    assert sorted((r[1], r[3]) for r in rows) == [(n, "SYNCED") for n in sorted(node_ns)]

    # Kill the control plane (SIGKILL: no goodbye on the streams).
    comp = {c["name"]: c for c in cluster.status()["components"]}
    cp_pid = comp["control-plane"]["pid"]
    os.kill(cp_pid, signal.SIGKILL)
    for ns in node_ns.values():
        dump = config_dump(ns)
        assert has_policy(dump), "a node agent dropped its configuration with the control plane"
        assert http_get(ns, 15021, "/healthz/ready")[0] == 200
    # A change made while it is down (or restarting)...
    cluster.delete([str(_policy_only(tmp_path))])
    # ...reaches every agent once the supervisor has restarted it.
    for name, ns in node_ns.items():
        wait_for(lambda ns=ns: (d := config_dump(ns)) is not None and not
                 d["snapshot"]["authorizationPolicies"] and d["xds"]["connects"] >= 2,
                 what=f"convergence on {name} after the restart")
    comp = {c["name"]: c for c in cluster.status()["components"]}
    assert comp["control-plane"]["pid"] != cp_pid and comp["control-plane"]["restarts"] >= 1


def _policy_only(tmp_path):
    docs = [d for d in yaml.safe_load_all(MANIFEST) if d["kind"] == "AuthorizationPolicy"]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path
