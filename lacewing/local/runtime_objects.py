"""The cluster's running pods and nodes as Kubernetes objects, for the control plane to read.

Before: the supervisor's status (pods with node, address, readiness, labels) and the nodes'
underlay addresses. After: `<state>/runtime/` holds one YAML file per `v1` Pod (with `spec.nodeName`,
`status.podIP`, `status.hostIP`, `status.phase` and the `Ready` condition) and per `v1` Node, and
nothing else — so a control plane reading `config/` + `runtime/` sees what it would see from a
Kubernetes API server. Written only by the supervisor; each file is replaced atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lacewing.local.store import atomic_write


def pod_object(pod: dict[str, Any], host_ip: str) -> dict[str, Any]:
    ready = "True" if pod["ready"] else "False"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod["name"], "namespace": pod["namespace"],
                     "labels": dict(pod["labels"]), "annotations": dict(pod.get("annotations", {})),
                     **({"ownerReferences": [{"kind": pod["owner"].split("/")[0],
                                              "name": pod["owner"].split("/", 1)[1]}]}
                        if pod.get("owner") else {})},
        "spec": {"nodeName": pod["node"], "serviceAccountName": pod["serviceAccount"],
                 "containers": [{"name": c["name"]} for c in pod["containers"]]},
        "status": {"phase": "Running" if pod["phase"] == "Running" else "Pending",
                   "podIP": pod["ip"], "podIPs": [{"ip": pod["ip"]}], "hostIP": host_ip,
                   "conditions": [{"type": "Ready", "status": ready}]},
    }


def node_object(name: str, address: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]}}


def write(folder: Path, status: dict[str, Any], underlay: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    want: dict[str, str] = {}
    for node, address in underlay.items():
        want[f"Node_{node}.yaml"] = yaml.safe_dump(node_object(node, address), sort_keys=False)
    for pod in status.get("pods", []):
        obj = pod_object(pod, underlay.get(pod["node"], ""))
        want[f"Pod_{pod['namespace']}_{pod['name']}.yaml"] = yaml.safe_dump(obj, sort_keys=False)
    for path in folder.glob("*.yaml"):
        if path.name not in want:
            path.unlink(missing_ok=True)
    for name, text in want.items():
        path = folder / name
        try:
            if path.read_text() == text:
                continue
        except FileNotFoundError:
            pass
        atomic_write(path, text)
