"""Addresses of a local cluster; pure functions, no I/O.

Every cluster uses the same ranges: they live only inside the cluster's own network
namespaces, so clusters never see each other and nothing is routed off the host.
- underlay: 172.18.0.0/16, node i at 172.18.0.(10+i)
- pods: 10.244.i.0/24 on node i; 10.244.i.1 is the node's gateway address; pods from .2
- services: cluster IPs from 10.96.0.0/16, starting at 10.96.0.10
- the control plane: 172.18.0.2 on the underlay bridge, in the fabric namespace
"""

from __future__ import annotations

import ipaddress

UNDERLAY = ipaddress.ip_network("172.18.0.0/16")
POD_SUPERNET = ipaddress.ip_network("10.244.0.0/16")
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
CONTROL_PLANE_IP = "172.18.0.2"
MAX_NODES = 16
MAX_PODS_PER_NODE = 250


def node_underlay_ip(index: int) -> str:
    return str(UNDERLAY.network_address + 10 + index)


def node_pod_cidr(index: int) -> str:
    return f"10.244.{index}.0/24"


def node_gateway_ip(index: int) -> str:
    return f"10.244.{index}.1"


def pod_ip(node_index: int, slot: int) -> str:
    """The address of the pod in `slot` (0-based) on node `node_index`."""
    if not 0 <= slot < MAX_PODS_PER_NODE:
        raise ValueError(f"pod slot {slot} out of range")
    return f"10.244.{node_index}.{slot + 2}"


def cluster_ip(slot: int) -> str:
    return str(SERVICE_CIDR.network_address + 10 + slot)


def is_cluster_ip(address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in SERVICE_CIDR
    except ValueError:
        return False
