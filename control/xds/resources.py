"""Lacewing's xDS resources: type URLs, and the snapshot types to and from protobuf.

Before: the compiler has typed `control.snapshot` objects (Workload, Service, Waypoint) and
validated mesh resources (`control.config.model`). After: `encode(obj)` gives the protobuf
message of `control/api/mesh.proto`; `pack` serializes it once (sent as the value of a `google.protobuf.Any`) with a
stable per-resource version (a hash of the deterministic encoding, so two control plane
replicas give the same resource the same version); the receiver (node agent, waypoint) calls
`decode(type_url, any)` to get the typed object back, or a `ResourceError` that it reports in
its NACK. Pure functions; the one place the wire format is defined.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from control.api import mesh_pb2
from control.config import codec
from control.config.model import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    RateLimitPolicy,
    Resource,
    VirtualService,
)
from control.snapshot import Endpoint, Service, ServicePort, Waypoint, Workload

PREFIX = "type.googleapis.com/lacewing.mesh.v1."
WORKLOAD = PREFIX + "Workload"
SERVICE = PREFIX + "Service"
WAYPOINT = PREFIX + "Waypoint"
MESH = PREFIX + "Mesh"
PEER_AUTHENTICATION = PREFIX + "PeerAuthentication"
AUTHORIZATION_POLICY = PREFIX + "AuthorizationPolicy"
VIRTUAL_SERVICE = PREFIX + "VirtualService"
DESTINATION_RULE = PREFIX + "DestinationRule"
RATE_LIMIT_POLICY = PREFIX + "RateLimitPolicy"

CONFIG_TYPES: dict[str, type[Resource]] = {
    PEER_AUTHENTICATION: PeerAuthentication,
    AUTHORIZATION_POLICY: AuthorizationPolicy,
    VIRTUAL_SERVICE: VirtualService,
    DESTINATION_RULE: DestinationRule,
    RATE_LIMIT_POLICY: RateLimitPolicy,
}
TYPE_OF_CONFIG: dict[type[Resource], str] = {cls: url for url, cls in CONFIG_TYPES.items()}

# What each kind of client subscribes to (ADS: one stream, one subscription per type).
NODE_TYPES = (MESH, WORKLOAD, SERVICE, WAYPOINT, PEER_AUTHENTICATION, AUTHORIZATION_POLICY)
WAYPOINT_TYPES = (MESH, WORKLOAD, SERVICE, WAYPOINT, VIRTUAL_SERVICE, DESTINATION_RULE,
                  AUTHORIZATION_POLICY, RATE_LIMIT_POLICY)
ALL_TYPES = tuple(dict.fromkeys(NODE_TYPES + WAYPOINT_TYPES))

SHORT_NAMES = {url: url[len(PREFIX):] for url in ALL_TYPES}


class ResourceError(ValueError):
    """A resource that cannot be decoded; the receiver rejects it (NACK) and keeps the rest."""


@dataclass(frozen=True)
class Mesh:
    trust_domain: str = "cluster.local"


@dataclass(frozen=True)
class Packed:
    """One resource ready for the wire: its name, version and payload (serialized once)."""

    type_url: str
    name: str
    version: str
    payload: bytes  # the serialized message; the `Any` value

    def as_any(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=self.type_url, value=self.payload)

    @cached_property
    def resource(self) -> discovery_pb2.Resource:
        """The xDS `Resource` message, built once and copied into every response."""
        return discovery_pb2.Resource(name=self.name, version=self.version,
                                      resource=self.as_any())


def resource_name(obj: Any) -> str:
    if isinstance(obj, Mesh):
        return "mesh"
    if isinstance(obj, Resource):
        return f"{obj.namespace}/{obj.name}"
    return f"{obj.namespace}/{obj.name}"


def type_url_of(obj: Any) -> str:
    if isinstance(obj, Workload):
        return WORKLOAD
    if isinstance(obj, Service):
        return SERVICE
    if isinstance(obj, Waypoint):
        return WAYPOINT
    if isinstance(obj, Mesh):
        return MESH
    if isinstance(obj, Resource):
        return TYPE_OF_CONFIG[type(obj)]
    raise TypeError(f"not a Lacewing xDS resource: {type(obj).__name__}")


# --- encoding -----------------------------------------------------------------------------------


def encode(obj: Any) -> Any:
    """The protobuf message of a snapshot object or mesh resource."""
    if isinstance(obj, Workload):
        return mesh_pb2.Workload(
            namespace=obj.namespace, name=obj.name, node=obj.node, ip=obj.ip,
            node_ip=obj.node_ip, service_account=obj.service_account, identity=obj.identity,
            labels=dict(obj.labels), enrolled=obj.enrolled, ready=obj.ready,
            waypoint=obj.waypoint or "",
            exclude_outbound_ports=sorted(obj.exclude_outbound_ports),
            exclude_inbound_ports=sorted(obj.exclude_inbound_ports))
    if isinstance(obj, Service):
        ports = []
        for p in obj.ports:
            msg = mesh_pb2.ServicePort(port=p.port, name=p.name, app_protocol=p.app_protocol)
            if isinstance(p.target_port, int):
                msg.target_port_number = p.target_port
            else:
                msg.target_port_name = p.target_port
            ports.append(msg)
        return mesh_pb2.Service(
            namespace=obj.namespace, name=obj.name, vip=obj.vip, ports=ports,
            endpoints=[mesh_pb2.Endpoint(workload=e.workload, ip=e.ip, ports=dict(e.ports))
                       for e in obj.endpoints],
            waypoint=obj.waypoint or "", labels=dict(obj.labels))
    if isinstance(obj, Waypoint):
        return mesh_pb2.Waypoint(namespace=obj.namespace, name=obj.name, identity=obj.identity,
                                 addresses=list(obj.addresses))
    if isinstance(obj, Mesh):
        return mesh_pb2.Mesh(trust_domain=obj.trust_domain)
    if isinstance(obj, Resource):
        message = getattr(mesh_pb2, type(obj).KIND)
        return message(json=json.dumps(obj.to_dict(), sort_keys=True, separators=(",", ":")))
    raise TypeError(f"not a Lacewing xDS resource: {type(obj).__name__}")


def pack(obj: Any) -> Packed:
    """Encode, wrap in `Any`, and version by content."""
    type_url = type_url_of(obj)
    payload = encode(obj).SerializeToString(deterministic=True)
    version = hashlib.blake2b(payload, digest_size=8).hexdigest()
    return Packed(type_url, resource_name(obj), version, payload)


# --- decoding -----------------------------------------------------------------------------------


def _frozen(d: Any) -> MappingProxyType:
    return MappingProxyType(dict(d))


def decode(type_url: str, any_msg: any_pb2.Any) -> Any:
    """The typed object of one received resource, or `ResourceError` saying why not."""
    if any_msg.type_url != type_url:
        raise ResourceError(f"resource of type {any_msg.type_url!r} in a {type_url!r} response")
    try:
        if type_url == WORKLOAD:
            m = mesh_pb2.Workload.FromString(any_msg.value)
            if not (m.namespace and m.name and m.ip):
                raise ResourceError("a Workload needs namespace, name and ip")
            return Workload(
                namespace=m.namespace, name=m.name, node=m.node, ip=m.ip, node_ip=m.node_ip,
                service_account=m.service_account, identity=m.identity,
                labels=_frozen(m.labels), enrolled=m.enrolled, ready=m.ready,
                waypoint=m.waypoint or None,
                exclude_outbound_ports=frozenset(m.exclude_outbound_ports),
                exclude_inbound_ports=frozenset(m.exclude_inbound_ports))
        if type_url == SERVICE:
            m = mesh_pb2.Service.FromString(any_msg.value)
            if not (m.namespace and m.name):
                raise ResourceError("a Service needs namespace and name")
            ports = tuple(
                ServicePort(port=p.port, name=p.name, app_protocol=p.app_protocol,
                            target_port=(p.target_port_name if p.WhichOneof("target")
                                         == "target_port_name" else p.target_port_number or p.port))
                for p in m.ports)
            endpoints = tuple(Endpoint(workload=e.workload, ip=e.ip, ports=_frozen(e.ports))
                              for e in m.endpoints)
            return Service(namespace=m.namespace, name=m.name, vip=m.vip, ports=ports,
                           endpoints=endpoints, waypoint=m.waypoint or None,
                           labels=_frozen(m.labels))
        if type_url == WAYPOINT:
            m = mesh_pb2.Waypoint.FromString(any_msg.value)
            return Waypoint(namespace=m.namespace, name=m.name, identity=m.identity,
                            addresses=tuple(m.addresses))
        if type_url == MESH:
            m = mesh_pb2.Mesh.FromString(any_msg.value)
            return Mesh(trust_domain=m.trust_domain or "cluster.local")
        cls = CONFIG_TYPES.get(type_url)
        if cls is None:
            raise ResourceError(f"unknown resource type {type_url!r}")
        m = getattr(mesh_pb2, cls.KIND).FromString(any_msg.value)
        obj = json.loads(m.json)
        if not isinstance(obj, dict) or obj.get("kind") != cls.KIND:
            raise ResourceError(f"not a {cls.KIND}: kind is {obj.get('kind') if isinstance(obj, dict) else obj!r}")
        return codec.decode_resource(cls, obj, source=None)
    except ResourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any undecodable payload is a rejected resource
        raise ResourceError(f"cannot decode {SHORT_NAMES.get(type_url, type_url)}: "
                            f"{type(exc).__name__}: {exc}") from None
