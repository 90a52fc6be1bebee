"""What the control plane gives each data plane: the snapshot types every part shares.

Before: the control plane has compiled its workload state and the mesh configuration
(`control.config.model`). After: a `NodeSnapshot` per node (node agent: eBPF enrollment and the
node tunnel) and a `WaypointSnapshot` per waypoint. The data planes read only these — never
Kubernetes objects or raw YAML. They are frozen: a new version is a new snapshot, applied
atomically by the one writer of a data plane's state (the xDS client), read by everyone else.

Over the wire they travel as protobuf (`control/api/`), converted at the edges; inside a
process, these classes are the contract. Fields are only added.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from control.config.model import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    RateLimitPolicy,
    VirtualService,
)

DATAPLANE_LABEL = "lacewing.dev/dataplane-mode"
DATAPLANE_AMBIENT = "ambient"
WAYPOINT_LABEL = "lacewing.dev/use-waypoint"
EXCLUDE_OUTBOUND = "lacewing.dev/exclude-outbound-ports"
EXCLUDE_INBOUND = "lacewing.dev/exclude-inbound-ports"


def _map() -> Any:
    return field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Workload:
    """One pod. `uid` is `<namespace>/<name>`; `identity` its SPIFFE ID."""

    namespace: str
    name: str
    node: str
    ip: str
    node_ip: str                     # where this pod's node tunnel listens (15008)
    service_account: str
    identity: str                    # spiffe://<td>/ns/<ns>/sa/<sa>
    labels: Mapping[str, str] = _map()
    enrolled: bool = False           # captured by the mesh (namespace label, pod label wins)
    ready: bool = False
    waypoint: str | None = None      # "<namespace>/<name>" of the waypoint in front of it
    exclude_outbound_ports: frozenset[int] = frozenset()
    exclude_inbound_ports: frozenset[int] = frozenset()

    @property
    def uid(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str           # a number, or a container port name
    name: str = ""
    app_protocol: str = ""           # "http", "http2", "grpc", "tcp" or "" (unknown: TCP)


@dataclass(frozen=True)
class Endpoint:
    """A ready workload behind a Service, with the target port resolved per service port."""

    workload: str                    # Workload.uid
    ip: str
    ports: Mapping[int, int] = _map()  # service port → workload port


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    vip: str                         # the cluster IP
    ports: tuple[ServicePort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    waypoint: str | None = None      # "<namespace>/<name>" when the Service uses a waypoint
    labels: Mapping[str, str] = _map()

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"

    @property
    def uid(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Waypoint:
    namespace: str
    name: str
    identity: str
    addresses: tuple[str, ...] = ()  # where its tunnel port (15008) is reached


@dataclass(frozen=True)
class NodeSnapshot:
    """Everything one node agent needs. A node never receives another node's secrets:
    certificates are not in here at all (the agent asks the CA for its own)."""

    version: str
    node: str
    trust_domain: str = "cluster.local"
    workloads: Mapping[str, Workload] = _map()       # by uid: local ones and every destination
    services: Mapping[str, Service] = _map()         # by uid
    waypoints: Mapping[str, Waypoint] = _map()       # by "<namespace>/<name>"
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()

    def local_workloads(self) -> list[Workload]:
        return [w for w in self.workloads.values() if w.node == self.node]


@dataclass(frozen=True)
class WaypointSnapshot:
    """Everything one waypoint needs for L7: its services' routes, destinations, policies."""

    version: str
    waypoint: Waypoint
    trust_domain: str = "cluster.local"
    services: Mapping[str, Service] = _map()
    workloads: Mapping[str, Workload] = _map()
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    rate_limit_policies: tuple[RateLimitPolicy, ...] = ()
