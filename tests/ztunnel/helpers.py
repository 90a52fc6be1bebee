"""Shared builders for the tunnel tests: mesh config from Istio YAML (through the real validator)
and snapshots from `control.snapshot` dataclasses — data, not stand-ins."""

from __future__ import annotations

from types import MappingProxyType

import yaml

from control.config.loader import Document
from control.config.validate import validate_document
from control.snapshot import Endpoint, NodeSnapshot, Service, ServicePort, Waypoint, Workload

TD = "cluster.local"


def resource(text: str):
    obj = yaml.safe_load(text)
    res, problems = validate_document(Document("test.yaml", 0, obj))
    assert res is not None and all(p.kind == "warning" for p in problems), problems
    return res


def ident(ns: str, sa: str) -> str:
    return f"spiffe://{TD}/ns/{ns}/sa/{sa}"


def workload(name: str, ip: str, *, ns: str = "default", sa: str | None = None,
             node: str = "node0", node_ip: str = "127.0.0.1", enrolled: bool = True,
             ready: bool = True, labels: dict | None = None, waypoint: str | None = None,
             exclude_inbound: frozenset[int] = frozenset()) -> Workload:
    sa = sa or name
    return Workload(namespace=ns, name=name, node=node, ip=ip, node_ip=node_ip,
                    service_account=sa, identity=ident(ns, sa),
                    labels=MappingProxyType(labels or {"app": name}), enrolled=enrolled,
                    ready=ready, waypoint=waypoint, exclude_inbound_ports=exclude_inbound)


def service(name: str, vip: str, endpoints: list[Workload], *, ns: str = "default",
            port: int = 80, target_port: int = 8080, waypoint: str | None = None) -> Service:
    return Service(namespace=ns, name=name, vip=vip,
                   ports=(ServicePort(port=port, target_port=target_port, name="http"),),
                   endpoints=tuple(Endpoint(workload=w.uid, ip=w.ip,
                                            ports=MappingProxyType({port: target_port}))
                                   for w in endpoints),
                   waypoint=waypoint)


def snapshot(node: str, workloads: list[Workload], *, services: list[Service] = (),
             waypoints: list[Waypoint] = (), policies: list = (), peer_auth: list = (),
             version: str = "1") -> NodeSnapshot:
    return NodeSnapshot(
        version=version, node=node,
        workloads=MappingProxyType({w.uid: w for w in workloads}),
        services=MappingProxyType({s.uid: s for s in services}),
        waypoints=MappingProxyType({f"{w.namespace}/{w.name}": w for w in waypoints}),
        authorization_policies=tuple(policies), peer_authentications=tuple(peer_auth))
