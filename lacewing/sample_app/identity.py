"""Who a sample-app server says it is: pod, namespace, node, version and pod IP.

Before: the `serve` flags (any may be absent) and the process environment, which local mode
fills with the Kubernetes downward-API names (`POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`,
`POD_IP`, `POD_VERSION`). After: one frozen `Identity` that every response reports. A flag
wins over the environment; with neither, the pod and node are the host name, the namespace
is `default`, the version `unknown`, and the pod IP is left empty so that the server reports
the local address each connection arrived on.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

ENV_POD = "POD_NAME"
ENV_NAMESPACE = "POD_NAMESPACE"
ENV_NODE = "NODE_NAME"
ENV_POD_IP = "POD_IP"
ENV_VERSION = "POD_VERSION"


@dataclass(frozen=True)
class Identity:
    pod: str
    namespace: str
    node: str
    version: str
    pod_ip: str = ""  # empty: report the local address of each connection


def resolve_identity(
    *,
    pod: str | None = None,
    namespace: str | None = None,
    node: str | None = None,
    version: str | None = None,
    pod_ip: str | None = None,
    environ: Mapping[str, str],
    hostname: str | None = None,
) -> Identity:
    """Flags first, then `environ`, then the defaults in the module docstring."""
    host = hostname if hostname is not None else socket.gethostname()

    def pick(flag: str | None, env_name: str, default: str) -> str:
        if flag:
            return flag
        return environ.get(env_name) or default

    return Identity(
        pod=pick(pod, ENV_POD, host),
        namespace=pick(namespace, ENV_NAMESPACE, "default"),
        node=pick(node, ENV_NODE, host),
        version=pick(version, ENV_VERSION, "unknown"),
        pod_ip=pick(pod_ip, ENV_POD_IP, ""),
    )
