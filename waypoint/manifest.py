"""The resources that declare a waypoint, as Istio declares one (pure; no I/O).

Before: `lacewing waypoint apply|generate` was given a namespace and a name. After: a Gateway
API `Gateway` with `gatewayClassName: lacewing-waypoint` — the same shape as
`istioctl waypoint generate` writes, with Lacewing's class — and, for `--enroll-namespace`,
the label change that sends the namespace's traffic through it
(`lacewing.dev/use-waypoint=<name>`).
"""

from __future__ import annotations

import re
from typing import Any

from control.snapshot import WAYPOINT_LABEL

GATEWAY_CLASS = "lacewing-waypoint"
TUNNEL_PORT = 15008
WAYPOINT_FOR = "lacewing.dev/waypoint-for"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def check_name(value: str, what: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a valid name: lower-case letters, digits and "
                         "'-', starting and ending with a letter or digit, at most 63 characters")
    return value


def gateway(namespace: str, name: str = "waypoint", *, traffic: str = "service"
            ) -> dict[str, Any]:
    check_name(namespace, "namespace")
    check_name(name, "waypoint name")
    if traffic not in ("service", "workload", "all", "none"):
        raise ValueError(f"--for {traffic!r}: use service, workload, all or none")
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {WAYPOINT_FOR: traffic}},
        "spec": {
            "gatewayClassName": GATEWAY_CLASS,
            "listeners": [{"name": "mesh", "port": TUNNEL_PORT, "protocol": "HBONE"}],
        },
    }


INSTANCE_LABEL = "lacewing.dev/waypoint"      # the control plane finds waypoints by it
DATAPLANE_LABEL = "lacewing.dev/dataplane-mode"


def local_pod(namespace: str, name: str, *, node: str, python: str, control_plane: str,
              credentials: str) -> list[dict[str, Any]]:
    """Local mode: the waypoint as a pod of its namespace (ServiceAccount + Pod).

    The pod carries the instance label the control plane compiles waypoints from, is never
    captured itself (`dataplane-mode: none`), follows the control plane over xDS with its
    node's credential, and has its SVID issued (and renewed) by the control plane's CA with
    that credential — the CA's key stays with the control plane."""
    check_name(namespace, "namespace")
    check_name(name, "waypoint name")
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": name, "namespace": namespace}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": f"{name}-waypoint", "namespace": namespace,
                      "labels": {INSTANCE_LABEL: name, DATAPLANE_LABEL: "none"}},
         "spec": {"nodeName": node, "serviceAccountName": name,
                  "containers": [{"name": "waypoint", "command": [
                      python, "-m", "waypoint", "--xds", control_plane,
                      "--credentials", credentials, "--node", node,
                      "--waypoint", f"{namespace}/{name}",
                      "--listen", f"0.0.0.0:{TUNNEL_PORT}", "--metrics", "0.0.0.0:15020"],
                      "ports": [{"containerPort": TUNNEL_PORT}, {"containerPort": 15020}]}]}},
    ]


def enroll_label(name: str) -> dict[str, str]:
    return {WAYPOINT_LABEL: name}
